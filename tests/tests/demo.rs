//! The README's first command, `scripts/demo.sh`, as a person runs it: in a
//! terminal, stopped with Ctrl-C. Nothing it started may stay behind.
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use berth_tests::{alive, kill_tree, mounts_under, workspace};

fn pids_in(state: &std::path::Path) -> Vec<i32> {
    let mut pids = Vec::new();
    if let Ok(entries) = std::fs::read_dir(state.join("sandboxes")) {
        for e in entries.flatten() {
            if let Some(p) = std::fs::read_to_string(e.path().join("shim.pid")).ok().and_then(|s| s.trim().parse().ok())
            {
                pids.push(p);
            }
        }
    }
    pids
}

#[test]
fn ctrl_c_in_the_demo_removes_everything() {
    if !berth_tests::have_commands(&["script", "setsid"]) {
        berth_tests::skip(false, "script(1) or setsid(1) missing (util-linux)");
        return;
    }
    let dir = tempfile::Builder::new().prefix("demo").tempdir_in("/tmp").unwrap();
    let (root, state) = (dir.path().join("r"), dir.path().join("s"));
    let mut child = Command::new("script")
        .args(["-qfec", "exec bash scripts/demo.sh", "/dev/null"])
        .current_dir(workspace())
        .env("DEMO_ROOT", &root)
        .env("DEMO_STATE", &state)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(300);
    while !seen.iter().any(|l: &String| l.contains("hello from demo, line 1")) {
        match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(l) => seen.push(l),
            Err(_) if Instant::now() < deadline => {}
            Err(_) => break,
        }
    }
    let shims = pids_in(&state);
    let berthd: Option<i32> =
        std::fs::read_to_string(state.join("berthd.pid")).ok().and_then(|s| s.trim().parse().ok());
    let berthd_running = !shims.is_empty();
    // Ctrl-C, typed into the terminal.
    stdin.write_all(b"\x03").unwrap();
    let exit = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break Some(st);
        }
        if Instant::now() > deadline + Duration::from_secs(30) {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    while let Ok(l) = rx.recv_timeout(Duration::from_millis(500)) {
        seen.push(l);
    }
    let leftover_shims: Vec<i32> = shims.iter().copied().filter(|p| alive(*p)).collect();
    let berthd_left = berthd.filter(|p| alive(*p));
    let mounts = mounts_under(dir.path());
    // Clean up whatever a failure left, by pid and by mount point.
    if exit.is_none() {
        let _ = child.kill();
    }
    for p in leftover_shims.iter().chain(berthd_left.iter()) {
        kill_tree(*p);
    }
    for m in mounts.iter().rev() {
        let _ = nix::mount::umount2(std::path::Path::new(m), nix::mount::MntFlags::MNT_DETACH);
    }
    let text = seen.join("\n");
    assert!(berthd_running, "the demo never ran its pod:\n{text}");
    let exit = exit.expect("the demo did not end after Ctrl-C");
    assert!(exit.success(), "the demo's exit {exit:?}:\n{text}");
    assert!(text.contains("stopped and removed"), "{text}");
    assert!(leftover_shims.is_empty(), "shims left: {leftover_shims:?}\n{text}");
    assert_eq!(berthd_left, None, "berthd still running\n{text}");
    assert!(mounts.is_empty(), "mounts left: {mounts:?}\n{text}");
    let pods: Vec<_> = std::fs::read_dir(state.join("sandboxes")).map(|d| d.flatten().collect()).unwrap_or_default();
    assert!(pods.is_empty(), "pod folders left: {pods:?}");
}
