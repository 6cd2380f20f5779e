//! berthctl's view of a pull's progress: one line per layer with a bar,
//! bytes and rate, redrawn in place on a terminal; on anything else, one
//! line per layer each time its state changes.
use std::collections::HashMap;
use std::io::Write;
use std::time::Instant;

use protocol::images::LayerProgress;

const BAR: usize = 30;

/// Draws successive progress messages.
pub struct ProgressView<W: Write> {
    out: W,
    tty: bool,
    drawn: usize,
    started: HashMap<String, (Instant, u64)>,
    states: HashMap<String, String>,
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

impl<W: Write> ProgressView<W> {
    /// A view writing to `out`; `tty` redraws in place.
    pub fn new(out: W, tty: bool) -> Self {
        ProgressView { out, tty, drawn: 0, started: HashMap::new(), states: HashMap::new() }
    }

    fn line(&mut self, l: &LayerProgress) -> String {
        let now = Instant::now();
        let (t0, d0) = *self.started.entry(l.digest.clone()).or_insert((now, l.done));
        let secs = now.duration_since(t0).as_secs_f64();
        let rate = if secs > 0.2 { (l.done.saturating_sub(d0)) as f64 / secs } else { 0.0 };
        let frac = if l.size == 0 { 1.0 } else { (l.done as f64 / l.size as f64).min(1.0) };
        let filled = (frac * BAR as f64).round() as usize;
        let short = l.digest.trim_start_matches("sha256:");
        let short = &short[..short.len().min(12)];
        let rate = if l.state == "downloading" { format!("{}/s", human(rate)) } else { String::new() };
        format!(
            "{short}  [{}{}]  {:>10} / {:<10} {:>12}  {}",
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
        if self.tty {
            if self.drawn > 0 {
                write!(self.out, "\x1b[{}A", self.drawn)?;
            }
            for l in layers {
                let line = self.line(l);
                writeln!(self.out, "\x1b[2K{line}")?;
            }
            self.drawn = layers.len();
        } else {
            for l in layers {
                if self.states.get(&l.digest) != Some(&l.state) {
                    self.states.insert(l.digest.clone(), l.state.clone());
                    let line = self.line(l);
                    writeln!(self.out, "{line}")?;
                }
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
    fn terminal_output_redraws_in_place() {
        let mut v = ProgressView::new(Vec::new(), true);
        v.show(&[layer("downloading", 0), layer("waiting", 0)]).unwrap();
        v.show(&[layer("downloading", 1024), layer("waiting", 0)]).unwrap();
        let out = String::from_utf8(v.out).unwrap();
        assert_eq!(out.matches("\x1b[2A").count(), 1);
        assert!(out.contains("1.0 KiB / 2.0 KiB"));
    }
}
