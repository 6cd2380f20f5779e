//! Writes a container's stdout and stderr to its CRI log file:
//! `<RFC3339Nano UTC> <stdout|stderr> <P|F> <content>\n`. Lines longer than
//! the maximum are split into P records ending with an F; a last line the
//! stream never terminated is written as P when the stream closes, so joining
//! records gives back exactly the bytes the container wrote.
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use protocol::cri_log::{rfc3339_nano, write_record};

/// Default longest line content written in one record (containerd's choice).
pub const DEFAULT_MAX_LINE: usize = protocol::shim_launch::DEFAULT_MAX_LOG_LINE;

/// Which output stream a record came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    /// The container's stdout.
    Stdout,
    /// The container's stderr.
    Stderr,
}

impl Stream {
    fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// One container's log file, shared by its stdout and stderr forwarders.
pub struct LogSink {
    path: Option<PathBuf>,
    /// The pod's log directory, where no-follow resolution starts.
    root: Option<PathBuf>,
    out: Mutex<Output>,
    max_line: usize,
    /// Output copied to attached clients, made at the first attach (its
    /// 256 slots are 14 KiB, which most containers never need). A slow
    /// client loses chunks (lagging receiver); the log never waits for it.
    attached: std::sync::OnceLock<tokio::sync::broadcast::Sender<(Stream, Vec<u8>)>>,
}

/// The open file and whether writing to it is failing: one lock per write.
struct Output {
    file: Option<File>,
    /// The last write error, cleared when a write succeeds again.
    error: Option<String>,
    /// Record bytes that reached the file, and that it could not take.
    written: u64,
    dropped: u64,
}

/// Opens (creating) a log file for appending. Below `root` (the pod's log
/// directory, kubelet's) every folder and the file itself are opened with
/// O_NOFOLLOW, one component at a time from the folder before it, so a
/// symlink planted on the way fails the open instead of sending the log,
/// written as root, where it points. Without a root only the file itself
/// is opened with O_NOFOLLOW.
fn open_log(path: &Path, root: Option<&Path>) -> std::io::Result<File> {
    use nix::fcntl::{openat, OFlag};
    use nix::sys::stat::Mode;
    let Some(rel) = root.and_then(|r| path.strip_prefix(r).ok()) else {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        return OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o640)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path);
    };
    let root = root.unwrap_or(Path::new("/"));
    std::fs::create_dir_all(root)?;
    let mut dir: std::os::fd::OwnedFd = File::open(root)?.into();
    let parts: Vec<_> = rel.components().collect();
    let Some((file, dirs)) = parts.split_last() else {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "empty log path"));
    };
    for c in dirs {
        let std::path::Component::Normal(name) = c else {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "log path leaves its folder"));
        };
        match nix::sys::stat::mkdirat(&dir, *name, Mode::from_bits_truncate(0o755)) {
            Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
            Err(e) => return Err(e.into()),
        }
        dir = openat(
            &dir,
            *name,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
    }
    let std::path::Component::Normal(name) = file else {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "log path leaves its folder"));
    };
    let fd = openat(
        &dir,
        *name,
        OFlag::O_WRONLY | OFlag::O_APPEND | OFlag::O_CREAT | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NOCTTY,
        Mode::from_bits_truncate(0o640),
    )?;
    Ok(File::from(fd))
}

impl LogSink {
    /// Opens (creating) the log file below `root` (see [`open_log`]);
    /// `None` discards everything.
    pub fn open(path: Option<PathBuf>, root: Option<PathBuf>, max_line: usize) -> std::io::Result<Self> {
        let file = match &path {
            Some(p) => Some(open_log(p, root.as_deref())?),
            None => None,
        };
        Ok(LogSink {
            path,
            root,
            out: Mutex::new(Output { file, error: None, written: 0, dropped: 0 }),
            max_line: max_line.max(1),
            attached: std::sync::OnceLock::new(),
        })
    }

    /// Output from now on, for an attached client.
    pub fn attach(&self) -> tokio::sync::broadcast::Receiver<(Stream, Vec<u8>)> {
        self.attached.get_or_init(|| tokio::sync::broadcast::channel(256).0).subscribe()
    }

    /// Reopens the file by path, for rotation: the old file keeps what was
    /// written before, the new one gets everything after.
    pub fn reopen(&self) -> std::io::Result<()> {
        let Some(path) = &self.path else { return Ok(()) };
        let file = open_log(path, self.root.as_deref())?;
        self.out.lock().unwrap_or_else(|e| e.into_inner()).file = Some(file);
        Ok(())
    }

    /// The last write error, if logging is currently failing.
    pub fn error(&self) -> Option<String> {
        self.out.lock().unwrap_or_else(|e| e.into_inner()).error.clone()
    }

    /// Record bytes written to the file so far, and dropped.
    pub fn counts(&self) -> (u64, u64) {
        let out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        (out.written, out.dropped)
    }

    /// The longest line content of one record.
    pub fn max_line(&self) -> usize {
        self.max_line
    }

    /// Copies output to the attached clients, if any.
    pub fn copy_to_attached(&self, stream: Stream, data: &[u8]) {
        if let Some(tx) = self.attached.get().filter(|tx| tx.receiver_count() > 0) {
            let _ = tx.send((stream, data.to_vec()));
        }
    }

    /// Appends whole records to the file; a full disk drops them (and says so
    /// in [`LogSink::error`]) rather than blocking the container.
    pub fn write_records(&self, buf: &[u8]) {
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        let Output { file, error, written: total, dropped } = &mut *out;
        let Some(file) = file.as_mut() else { return };
        let mut written = 0;
        let result = loop {
            match file.write(&buf[written..]) {
                Ok(0) => break Err(std::io::Error::from(std::io::ErrorKind::WriteZero)),
                Ok(n) => {
                    written += n;
                    if written == buf.len() {
                        break Ok(());
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        match result {
            Ok(()) => {
                *error = None;
                *total += buf.len() as u64;
            }
            Err(e) => {
                // A full disk took part of a record: cut the file back to the
                // last whole record so it stays parseable. The bytes are
                // dropped, never blocking the container.
                let whole = buf[..written].iter().rposition(|&b| b == b'\n').map(|i| i + 1).unwrap_or(0);
                if written > whole {
                    if let Ok(m) = file.metadata() {
                        let _ = file.set_len(m.len().saturating_sub((written - whole) as u64));
                    }
                }
                *total += whole as u64;
                *dropped += (buf.len() - whole) as u64;
                let path = self.path.as_deref().unwrap_or(Path::new(""));
                *error = Some(format!("writing log {}: {e}; output is being dropped", path.display()));
            }
        }
    }
}

/// Splits a byte stream into CRI log records.
pub struct LineSplitter {
    stream: Stream,
    max_line: usize,
    pending: Vec<u8>,
}

impl LineSplitter {
    /// A splitter for one stream.
    pub fn new(stream: Stream, max_line: usize) -> Self {
        LineSplitter { stream, max_line: max_line.max(1), pending: Vec::new() }
    }

    /// Adds bytes read at `ts` and appends every complete record to `out`.
    pub fn push(&mut self, data: &[u8], ts: SystemTime, out: &mut Vec<u8>) {
        // One timestamp for everything this read brought.
        let stamp = rfc3339_nano(ts);
        if self.pending.is_empty() {
            // The common case: no copy of the input, only of what is left over.
            let used = self.split(data, stamp.as_bytes(), out);
            self.pending.extend_from_slice(&data[used..]);
        } else {
            self.pending.extend_from_slice(data);
            let pending = std::mem::take(&mut self.pending);
            let used = self.split(&pending, stamp.as_bytes(), out);
            self.pending = pending;
            self.pending.drain(..used);
        }
    }

    /// Writes the complete records at the start of `data`; returns how many
    /// bytes they used.
    fn split(&self, data: &[u8], stamp: &[u8], out: &mut Vec<u8>) -> usize {
        let mut start = 0;
        loop {
            let rest = &data[start..];
            let limit = rest.len().min(self.max_line);
            if let Some(nl) = memchr::memchr(b'\n', &rest[..limit]) {
                write_record(out, stamp, self.stream.name(), true, &rest[..nl]);
                start += nl + 1;
            } else if rest.len() >= self.max_line {
                // A full-size chunk without a newline: a partial record. When
                // the newline comes right after it, it ends an empty F record.
                write_record(out, stamp, self.stream.name(), false, &rest[..self.max_line]);
                start += self.max_line;
            } else {
                return start;
            }
        }
    }

    /// Flushes an unterminated last line when the stream closes.
    pub fn finish(&mut self, ts: SystemTime, out: &mut Vec<u8>) {
        if !self.pending.is_empty() {
            write_record(out, rfc3339_nano(ts).as_bytes(), self.stream.name(), false, &self.pending);
            self.pending.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(stream: Stream, max: usize, chunks: &[&[u8]]) -> Vec<(String, String, Vec<u8>)> {
        let mut s = LineSplitter::new(stream, max);
        let mut out = Vec::new();
        for c in chunks {
            s.push(c, SystemTime::UNIX_EPOCH, &mut out);
        }
        s.finish(SystemTime::UNIX_EPOCH, &mut out);
        let mut recs = Vec::new();
        let mut rest = &out[..];
        while !rest.is_empty() {
            let nl = rest.iter().position(|&b| b == b'\n').unwrap();
            let line = &rest[..nl];
            let mut parts = line.splitn(4, |&b| b == b' ');
            let ts = String::from_utf8(parts.next().unwrap().to_vec()).unwrap();
            assert_eq!(ts, "1970-01-01T00:00:00.000000000Z");
            let st = String::from_utf8(parts.next().unwrap().to_vec()).unwrap();
            let tag = String::from_utf8(parts.next().unwrap().to_vec()).unwrap();
            recs.push((st, tag, parts.next().unwrap_or(b"").to_vec()));
            rest = &rest[nl + 1..];
        }
        recs
    }

    #[test]
    fn lines_split_across_reads_join() {
        let r = records(Stream::Stdout, 100, &[b"hel", b"lo\nwor", b"ld\n\n"]);
        let tags: Vec<_> = r.iter().map(|x| (x.1.as_str(), x.2.as_slice())).collect();
        assert_eq!(tags, vec![("F", &b"hello"[..]), ("F", b"world"), ("F", b"")]);
        assert!(r.iter().all(|x| x.0 == "stdout"));
    }

    #[test]
    fn long_line_becomes_partials_then_full() {
        let r = records(Stream::Stderr, 4, &[b"abcdefghij\n"]);
        let tags: Vec<_> = r.iter().map(|x| (x.1.as_str(), x.2.as_slice())).collect();
        assert_eq!(tags, vec![("P", &b"abcd"[..]), ("P", b"efgh"), ("F", b"ij")]);
    }

    #[test]
    fn exact_multiple_ends_with_empty_full() {
        let r = records(Stream::Stdout, 4, &[b"abcd", b"\n"]);
        let tags: Vec<_> = r.iter().map(|x| (x.1.as_str(), x.2.as_slice())).collect();
        assert_eq!(tags, vec![("P", &b"abcd"[..]), ("F", b"")]);
    }

    #[test]
    fn unterminated_last_line_is_partial() {
        let r = records(Stream::Stdout, 100, &[b"done\nno newline"]);
        let tags: Vec<_> = r.iter().map(|x| (x.1.as_str(), x.2.as_slice())).collect();
        assert_eq!(tags, vec![("F", &b"done"[..]), ("P", b"no newline")]);
    }

    #[test]
    fn timestamps_are_utc_with_nanoseconds() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::new(1_475_713_029, 669_794_202);
        assert_eq!(rfc3339_nano(t), "2016-10-06T00:17:09.669794202Z");
    }
}
