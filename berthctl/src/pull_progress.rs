//! berthctl's view of a pull's progress: on a terminal, one bar per layer
//! (indicatif, as wide as the terminal) with bytes and rate; on anything
//! else, one line per layer each time its state changes.
use std::collections::HashMap;
use std::io::Write;
use std::time::Instant;

use protocol::images::LayerProgress;

const BAR: usize = 30;

/// Draws successive progress messages.
pub struct ProgressView<W: Write> {
    out: W,
    bars: Option<Bars>,
    started: HashMap<String, (Instant, u64)>,
    states: HashMap<String, String>,
}

/// A terminal's bars (indicatif), one per layer, as wide as the terminal.
struct Bars {
    multi: indicatif::MultiProgress,
    by_digest: HashMap<String, indicatif::ProgressBar>,
}

fn human(bytes: f64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = bytes;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{v:.0} {}", UNITS[u])
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn short_digest(digest: &str) -> &str {
    let short = digest.trim_start_matches("sha256:");
    &short[..short.len().min(12)]
}

impl<W: Write> ProgressView<W> {
    /// A view writing to `out`; with `tty`, bars redrawn in place on stderr
    /// (sized to the terminal's width).
    pub fn new(out: W, tty: bool) -> Self {
        let target = if tty { Some(indicatif::ProgressDrawTarget::stderr()) } else { None };
        Self::with_target(out, target)
    }

    fn with_target(out: W, target: Option<indicatif::ProgressDrawTarget>) -> Self {
        let bars =
            target.map(|t| Bars { multi: indicatif::MultiProgress::with_draw_target(t), by_digest: HashMap::new() });
        ProgressView { out, bars, started: HashMap::new(), states: HashMap::new() }
    }

    fn line(&mut self, l: &LayerProgress) -> String {
        let now = Instant::now();
        let (t0, d0) = *self.started.entry(l.digest.clone()).or_insert((now, l.done));
        let secs = now.duration_since(t0).as_secs_f64();
        let rate = if secs > 0.2 { (l.done.saturating_sub(d0)) as f64 / secs } else { 0.0 };
        let frac = if l.size == 0 { 1.0 } else { (l.done as f64 / l.size as f64).min(1.0) };
        // frac is clamped to 0..=1, so this is 0..=BAR.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let filled = (frac * BAR as f64).round() as usize;
        let rate = if l.state == "downloading" { format!("{}/s", human(rate)) } else { String::new() };
        format!(
            "{}  [{}{}]  {:>10} / {:<10} {:>12}  {}",
            short_digest(&l.digest),
            "#".repeat(filled),
            ".".repeat(BAR - filled),
            human(l.done as f64),
            human(l.size as f64),
            rate,
            l.state
        )
    }

    /// Shows one progress message.
    pub fn show(&mut self, layers: &[LayerProgress]) -> std::io::Result<()> {
        if let Some(b) = self.bars.as_mut() {
            let style = indicatif::ProgressStyle::with_template(
                "{prefix}  [{wide_bar}]  {bytes:>10} / {total_bytes:<10} {bytes_per_sec:>12}  {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("#>.");
            for l in layers {
                let bar = b.by_digest.entry(l.digest.clone()).or_insert_with(|| {
                    let bar = b.multi.add(indicatif::ProgressBar::new(l.size));
                    bar.set_style(style.clone());
                    bar.set_prefix(short_digest(&l.digest).to_string());
                    bar
                });
                bar.set_length(l.size);
                bar.set_position(l.done);
                bar.set_message(l.state.clone());
                if l.state == "done" && !bar.is_finished() {
                    bar.finish();
                }
            }
            return Ok(());
        }
        for l in layers {
            if self.states.get(&l.digest) != Some(&l.state) {
                self.states.insert(l.digest.clone(), l.state.clone());
                let line = self.line(l);
                writeln!(self.out, "{line}")?;
            }
        }
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(state: &str, done: u64) -> LayerProgress {
        LayerProgress { digest: format!("sha256:{}", "ab".repeat(32)), size: 2048, done, state: state.into() }
    }

    #[test]
    fn plain_output_prints_state_changes_only() {
        let mut v = ProgressView::new(Vec::new(), false);
        v.show(&[layer("downloading", 0)]).unwrap();
        v.show(&[layer("downloading", 1024)]).unwrap();
        v.show(&[layer("done", 2048)]).unwrap();
        let out = String::from_utf8(v.out).unwrap();
        assert_eq!(out.lines().count(), 2, "{out}");
        let last = out.lines().last().unwrap();
        assert!(last.contains("[##############################]") && last.contains("2.0 KiB / 2.0 KiB"), "{last}");
        assert!(out.contains("abababababab"));
    }

    #[test]
    fn terminal_output_has_one_bar_per_layer() {
        let mut v = ProgressView::with_target(Vec::new(), Some(indicatif::ProgressDrawTarget::hidden()));
        let other =
            LayerProgress { digest: format!("sha256:{}", "cd".repeat(32)), size: 10, done: 0, state: "waiting".into() };
        v.show(&[layer("downloading", 0), other.clone()]).unwrap();
        v.show(&[layer("done", 2048), other]).unwrap();
        let b = v.bars.as_ref().unwrap();
        assert_eq!(b.by_digest.len(), 2);
        let bar = &b.by_digest[&format!("sha256:{}", "ab".repeat(32))];
        assert_eq!((bar.position(), bar.length()), (2048, Some(2048)));
        assert!(bar.is_finished());
        assert!(v.out.is_empty(), "bars do not write to the plain output");
    }
}
