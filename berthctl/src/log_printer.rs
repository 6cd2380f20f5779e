//! What `berthctl logs` does with a CRI log file, with crictl's options:
//! `--tail`, `--since`, `--timestamps`, `--limit-bytes`, `--stream`, and a
//! follower that keeps reading through rotation (rename, then reopen).
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use berth_core::duration::parse_duration;
use protocol::cri_log::parse_line;

/// Which streams to print.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StreamFilter {
    /// Both.
    #[default]
    All,
    /// Only stdout.
    Stdout,
    /// Only stderr.
    Stderr,
}

/// Printing options.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Only the last N lines of the file (P parts count as lines, as crictl counts them).
    pub tail: Option<usize>,
    /// Only records at or after this time (Unix nanoseconds).
    pub since: Option<i64>,
    /// Prefix each line with its timestamp.
    pub timestamps: bool,
    /// Stop after this many bytes of output.
    pub limit_bytes: Option<u64>,
    /// Streams to print.
    pub stream: StreamFilter,
}

/// Parses an RFC3339 timestamp (any fraction width, any offset) to Unix nanoseconds.
pub fn parse_rfc3339(ts: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(ts).ok().and_then(|t| t.timestamp_nanos_opt())
}

/// `--since`: RFC3339, a duration before `now`, or Unix seconds.
pub fn parse_since(s: &str, now_nanos: i64) -> Option<i64> {
    if let Some(t) = parse_rfc3339(s) {
        return Some(t);
    }
    if let Some(d) = parse_duration(s) {
        return Some(now_nanos.saturating_sub(protocol::cri_time::nanos(d)));
    }
    // Whole (or fractional) Unix seconds; `as` saturates a float that big.
    #[allow(clippy::cast_possible_truncation)]
    s.parse::<f64>().ok().filter(|secs| secs.is_finite()).map(|secs| (secs * 1e9) as i64)
}

/// Turns records into output.
pub struct Printer<O: Write, E: Write> {
    opts: Options,
    out: O,
    err: E,
    written: u64,
    /// Whether the next content starts a line, per stream.
    at_line_start: [bool; 2],
}

impl<O: Write, E: Write> Printer<O, E> {
    /// A printer writing stdout records to `out` and stderr ones to `err`.
    pub fn new(opts: Options, out: O, err: E) -> Self {
        Printer { opts, out, err, written: 0, at_line_start: [true, true] }
    }

    /// Whether `--limit-bytes` has been reached.
    pub fn done(&self) -> bool {
        self.opts.limit_bytes.is_some_and(|l| self.written >= l)
    }

    /// Prints one file line (without its newline).
    pub fn line(&mut self, line: &[u8]) -> std::io::Result<()> {
        let Some(r) = parse_line(line) else { return Ok(()) };
        let idx = if r.stream == "stderr" { 1 } else { 0 };
        match (self.opts.stream, idx) {
            (StreamFilter::Stdout, 1) | (StreamFilter::Stderr, 0) => return Ok(()),
            _ => {}
        }
        if let Some(since) = self.opts.since {
            if parse_rfc3339(r.timestamp).is_some_and(|t| t < since) {
                return Ok(());
            }
        }
        let mut buf = Vec::with_capacity(r.content.len() + 40);
        if self.opts.timestamps && self.at_line_start[idx] {
            buf.extend_from_slice(r.timestamp.as_bytes());
            buf.push(b' ');
        }
        buf.extend_from_slice(r.content);
        if r.full {
            buf.push(b'\n');
        }
        self.at_line_start[idx] = r.full;
        if let Some(limit) = self.opts.limit_bytes {
            let room = usize::try_from(limit.saturating_sub(self.written)).unwrap_or(usize::MAX);
            buf.truncate(room);
        }
        self.written += buf.len() as u64;
        if idx == 1 {
            self.err.write_all(&buf)
        } else {
            self.out.write_all(&buf)
        }
    }

    /// Flushes both outputs.
    pub fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()?;
        self.err.flush()
    }
}

/// Reads a log file as it grows and across rotation: when the path comes
/// back as a new file (after ReopenContainerLog), the old one is read to its
/// end first, so no line is lost or read twice.
pub struct Follower {
    path: PathBuf,
    file: Option<File>,
    ino: u64,
    pending: Vec<u8>,
}

impl Follower {
    /// Opens `path`, positioned for `tail` (None: from the start).
    pub fn open(path: &Path, tail: Option<usize>) -> std::io::Result<Self> {
        let mut f = Follower { path: path.to_path_buf(), file: None, ino: 0, pending: Vec::new() };
        if let Ok(file) = File::open(path) {
            f.ino = file.metadata()?.ino();
            f.file = Some(file);
            if let Some(n) = tail {
                f.seek_tail(n)?;
            }
        }
        Ok(f)
    }

    fn seek_tail(&mut self, n: usize) -> std::io::Result<()> {
        let Some(file) = self.file.as_mut() else { return Ok(()) };
        let mut data = Vec::new();
        file.read_to_end(&mut data)?;
        let mut count = 0;
        let mut start = data.len();
        // Walk back over n newline-terminated lines.
        let body = if data.ends_with(b"\n") { &data[..data.len() - 1] } else { &data[..] };
        for (i, b) in body.iter().enumerate().rev() {
            if *b == b'\n' {
                count += 1;
                if count == n {
                    start = i + 1;
                    break;
                }
            }
        }
        if count < n {
            start = 0;
        }
        if n == 0 {
            start = data.len();
        }
        file.seek(SeekFrom::Start(start as u64))?;
        Ok(())
    }

    /// Reads what is there now; calls `line` for each complete line.
    pub fn poll(&mut self, mut line: impl FnMut(&[u8]) -> std::io::Result<()>) -> std::io::Result<()> {
        loop {
            self.drain(&mut line)?;
            // Rotated? Only switch once the path names a new file: until
            // then the writer may still be appending to the one we hold.
            match std::fs::metadata(&self.path) {
                Ok(m) if self.file.is_none() || m.ino() != self.ino => {
                    // Read what the old file got before the switch.
                    self.drain(&mut line)?;
                    self.pending.clear();
                    self.file = Some(File::open(&self.path)?);
                    self.ino = m.ino();
                }
                _ => return Ok(()),
            }
        }
    }

    fn drain(&mut self, line: &mut impl FnMut(&[u8]) -> std::io::Result<()>) -> std::io::Result<()> {
        let Some(file) = self.file.as_mut() else { return Ok(()) };
        let mut buf = [0u8; 64 * 1024];
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                return Ok(());
            }
            self.pending.extend_from_slice(&buf[..n]);
            let mut start = 0;
            while let Some(nl) = self.pending[start..].iter().position(|&b| b == b'\n') {
                line(&self.pending[start..start + nl])?;
                start += nl + 1;
            }
            self.pending.drain(..start);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: &str = "2026-01-01T00:00:00.000000000Z";
    const T1: &str = "2026-01-01T00:00:10.000000000Z";

    fn print(opts: Options, data: &str) -> (String, String) {
        let (mut o, mut e) = (Vec::new(), Vec::new());
        {
            let mut p = Printer::new(opts, &mut o, &mut e);
            for l in data.lines() {
                p.line(l.as_bytes()).unwrap();
            }
        }
        (String::from_utf8(o).unwrap(), String::from_utf8(e).unwrap())
    }

    #[test]
    fn joins_filters_and_limits() {
        let data = format!("{T0} stdout P ab\n{T0} stdout F c\n{T1} stderr F late\n{T1} stdout F x\n");
        assert_eq!(print(Options::default(), &data), ("abc\nx\n".into(), "late\n".into()));
        let since = Options { since: parse_rfc3339(T1), ..Default::default() };
        assert_eq!(print(since, &data), ("x\n".into(), "late\n".into()));
        let only_err = Options { stream: StreamFilter::Stderr, ..Default::default() };
        assert_eq!(print(only_err, &data).0, "");
        let limited = Options { limit_bytes: Some(2), ..Default::default() };
        assert_eq!(print(limited, &data).0, "ab");
        let ts = Options { timestamps: true, ..Default::default() };
        assert_eq!(print(ts, &data).0, format!("{T0} abc\n{T1} x\n"));
    }

    #[test]
    fn since() {
        assert_eq!(parse_since("10s", 20_000_000_000), Some(10_000_000_000));
        assert_eq!(parse_since("2016-10-06T00:17:09.669794202Z", 0), Some(1_475_713_029_669_794_202));
        assert_eq!(parse_since("2016-10-06T02:17:09+02:00", 0), Some(1_475_713_029_000_000_000));
    }

    #[test]
    fn follower_tails_and_survives_rotation() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("0.log");
        std::fs::write(&p, "a\nb\nc\n").unwrap();
        let mut f = Follower::open(&p, Some(2)).unwrap();
        let mut got = Vec::new();
        f.poll(|l| {
            got.push(String::from_utf8_lossy(l).to_string());
            Ok(())
        })
        .unwrap();
        assert_eq!(got, vec!["b", "c"]);
        // Rename; the writer still appends to the old file; then reopen.
        let mut old = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
        std::fs::rename(&p, d.path().join("0.log.1")).unwrap();
        old.write_all(b"d\n").unwrap();
        std::fs::write(&p, "e\n").unwrap();
        got.clear();
        f.poll(|l| {
            got.push(String::from_utf8_lossy(l).to_string());
            Ok(())
        })
        .unwrap();
        assert_eq!(got, vec!["d", "e"]);
    }
}
