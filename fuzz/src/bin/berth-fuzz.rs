//! berth-fuzz: runs Berth's fuzz targets for a while each and reports
//! executions per second. `berth-fuzz [--seconds N] [TARGET...]`; every
//! corpus file runs first. A failing input is written to
//! `fuzz/corpus/<target>/crash-<n>` and berth-fuzz exits non-zero.
use std::time::{Duration, Instant};

use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::TestRunner;

fn main() {
    let mut seconds = 10u64;
    let mut names = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--seconds" => seconds = args.next().and_then(|s| s.parse().ok()).unwrap_or(seconds),
            other => names.push(other.to_string()),
        }
    }
    let corpus = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let mut failed = false;
    for t in berth_fuzz::TARGETS.iter().filter(|t| names.is_empty() || names.iter().any(|n| n == t.name)) {
        let ran = berth_fuzz::run_corpus(t, &corpus);
        let mut runner = TestRunner::default();
        let deadline = Instant::now() + Duration::from_secs(seconds);
        let started = Instant::now();
        let mut execs = 0u64;
        let strategy = (t.strategy)();
        while Instant::now() < deadline {
            let Ok(tree) = strategy.new_tree(&mut runner) else { continue };
            let input = tree.current();
            if std::panic::catch_unwind(|| (t.run)(&input)).is_err() {
                let dir = corpus.join(t.name);
                let _ = std::fs::create_dir_all(&dir);
                let path = dir.join(format!("crash-{execs}"));
                let _ = std::fs::write(&path, &input);
                eprintln!("{}: failed on the input saved as {}", t.name, path.display());
                failed = true;
                break;
            }
            execs += 1;
        }
        let secs = started.elapsed().as_secs_f64().max(1e-9);
        println!("{:<22} {:>10} execs  {:>10.0} execs/s  (corpus: {ran})", t.name, execs, execs as f64 / secs);
    }
    if failed {
        std::process::exit(1);
    }
}
