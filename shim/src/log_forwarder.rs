//! Moves a container's output from its pipe (or pty) into its [`LogSink`],
//! cheaply in memory while idle and in CPU while busy.
//!
//! - Memory: a forwarder waits for readiness holding no buffer, and reads
//!   into the shim's one scratch buffer (the shim runs on one thread), which
//!   is made at the first output and never zeroed. An idle pod's containers
//!   cost no buffer pages at all, and a shim's buffers do not grow with its
//!   container count.
//! - CPU: a producer that writes in many small chunks (busybox writes 4 KiB
//!   at a time) would cost a wakeup, a read and a file write per chunk. Once
//!   a stream shows it is busy (a burst of at least [`BUSY_BURST`] bytes that
//!   did not fill [`BURST_LIMIT`]), its pipe is grown to [`BUSY_PIPE_SIZE`]
//!   once and the forwarder waits [`COALESCE`] before reading again, so one
//!   wakeup takes many chunks. While it waits its descriptor is out of the
//!   shim's epoll set: tokio registers descriptors edge-triggered, and a pipe
//!   signals an edge at every write, so a registered pipe would still wake
//!   the shim once per chunk. A stream whose pipe could not be grown, or
//!   whose burst took half the pipe or more, is not held back (the wait
//!   would block its producer: with a 64 KiB pipe, busybox's logs ran at 35
//!   MB/s instead of 150), nor is a pty. A producer faster than the shim
//!   fills the burst limit and is read again at once; quiet streams (short
//!   lines, prompts) are never delayed.
#![allow(unsafe_code)] // read(2) into a buffer's spare capacity, and epoll registration; each block has its SAFETY note
use std::cell::RefCell;
use std::io::ErrorKind;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use crate::cri_log::{LineSplitter, LogSink, Stream};

/// Bytes taken from the stream per read.
const READ_SIZE: usize = 128 * 1024;
/// What the records of one read take, kept between reads: 100-byte lines
/// grow by their 36-byte prefix. Output of short lines (a read of empty
/// lines is 37 times larger as records) grows the buffer for that read, and
/// it is given back afterwards.
const OUT_SIZE: usize = READ_SIZE + READ_SIZE / 2;
/// Most bytes one wakeup takes before it lets other tasks run.
pub const BURST_LIMIT: usize = 1024 * 1024;
/// A burst this large marks the stream as busy.
pub const BUSY_BURST: usize = 4096;
/// What a busy stream's pipe is grown to (Linux's default `pipe-max-size`,
/// settable without CAP_SYS_RESOURCE), so the producer need not block while
/// the forwarder waits: 1 MiB holds 7 ms of a 150 MB/s producer.
pub const BUSY_PIPE_SIZE: i32 = 1024 * 1024;
/// The least pipe size a stream is held back with: a 64 KiB pipe fills in
/// well under a millisecond at 150 MB/s, and the producer would block.
const BUSY_PIPE_SIZE_MIN: usize = 512 * 1024;
/// How long a busy stream's forwarder lets output gather before reading.
pub const COALESCE: Duration = Duration::from_millis(1);

/// What a container's output comes through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// A pipe: grown when busy.
    Pipe,
    /// A pty master: never held back (its buffer is a few KiB).
    Pty,
}

/// The shim's buffers for moving output, shared by all its forwarders:
/// each uses them only between two awaits.
struct Scratch {
    read: Vec<u8>,
    out: Vec<u8>,
}

thread_local! {
    static SCRATCH: RefCell<Option<Scratch>> = const { RefCell::new(None) };
}

/// The stream's descriptor: in the shim's epoll set, or out of it while a
/// busy stream's output gathers.
enum Held {
    Watched(AsyncFd<OwnedFd>),
    Unwatched(OwnedFd),
}

/// What one wakeup read.
enum Burst {
    /// This many bytes; the stream is still open.
    Open(usize),
    /// The stream ended (or failed).
    Closed,
}

/// Copies `fd` (the read end of a container's stdout or stderr pipe, or its
/// pty master) into `sink` as `stream` records until it closes.
pub async fn forward(stream: Stream, fd: OwnedFd, source: Source, sink: Arc<LogSink>) {
    let mut splitter = LineSplitter::new(stream, sink.max_line());
    if nonblocking(&fd).is_err() {
        return;
    }
    // What the pipe holds, once the stream was busy and its pipe was grown
    // (or could not be).
    let mut capacity: Option<usize> = None;
    let mut held = Held::Unwatched(fd);
    loop {
        let afd = match held {
            Held::Watched(afd) => afd,
            Held::Unwatched(fd) => match watch(fd) {
                Ok(afd) => afd,
                Err(_) => break,
            },
        };
        if afd.readable().await.is_err() {
            break;
        }
        let burst = SCRATCH.with_borrow_mut(|scratch| {
            let scratch = scratch.get_or_insert_with(|| Scratch {
                read: Vec::with_capacity(READ_SIZE),
                out: Vec::with_capacity(OUT_SIZE),
            });
            read_burst(&afd, stream, &mut splitter, &sink, scratch)
        });
        match burst {
            Burst::Closed => break,
            Burst::Open(n) if n >= BURST_LIMIT => {
                held = Held::Watched(afd);
                tokio::task::yield_now().await;
            }
            Burst::Open(n) if n >= BUSY_BURST && source == Source::Pipe => {
                let capacity = *capacity.get_or_insert_with(|| grow(afd.get_ref()));
                if holds_back(n, capacity) {
                    // Out of epoll while output gathers (see the module doc).
                    held = Held::Unwatched(afd.into_inner());
                    tokio::time::sleep(COALESCE).await;
                } else {
                    held = Held::Watched(afd);
                }
            }
            Burst::Open(_) => held = Held::Watched(afd),
        }
    }
    let mut out = Vec::new();
    splitter.finish(SystemTime::now(), &mut out);
    if !out.is_empty() {
        sink.write_records(&out);
    }
}

/// Whether a pipe of `capacity` bytes whose last burst was `burst` bytes is
/// left to fill for [`COALESCE`]: only a grown pipe, with room to spare.
fn holds_back(burst: usize, capacity: usize) -> bool {
    burst >= BUSY_BURST && capacity >= BUSY_PIPE_SIZE_MIN && burst < capacity / 2
}

/// A pipe's size before it is grown (Linux's default).
const DEFAULT_PIPE_SIZE: usize = 64 * 1024;

/// Grows a busy stream's pipe to [`BUSY_PIPE_SIZE`]; what it holds now.
/// Refused past pipe-max-size or the user's pipe quota: the stream keeps its
/// pipe, and is not held back.
fn grow(fd: &OwnedFd) -> usize {
    use nix::fcntl::{fcntl, FcntlArg};
    fcntl(fd, FcntlArg::F_SETPIPE_SZ(BUSY_PIPE_SIZE))
        .or_else(|_| fcntl(fd, FcntlArg::F_GETPIPE_SZ))
        .ok()
        .and_then(|s| usize::try_from(s).ok())
        .unwrap_or(DEFAULT_PIPE_SIZE)
}

fn nonblocking(fd: &OwnedFd) -> nix::Result<()> {
    let flags = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFL)?;
    let flags = nix::fcntl::OFlag::from_bits_retain(flags) | nix::fcntl::OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFL(flags)).map(drop)
}

/// Puts `fd` in the shim's epoll set, for reading.
fn watch(fd: OwnedFd) -> std::io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: the OwnedFd moves into the AsyncFd, so the descriptor stays
    // open for as long as it is registered.
    unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }.map_err(|e| e.into_parts().1)
}

/// Appends what can be read from `fd` now to `buf`'s spare capacity,
/// without zeroing it first (the pages of a buffer never filled are never
/// touched): 0 at end of file.
fn read_spare(fd: &OwnedFd, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    let spare = buf.spare_capacity_mut();
    // SAFETY: read(2) writes at most `spare.len()` bytes into the spare
    // capacity, memory `buf` owns and nothing else references meanwhile.
    let n = unsafe { libc::read(fd.as_raw_fd(), spare.as_mut_ptr().cast(), spare.len()) };
    let n = usize::try_from(n).map_err(|_| std::io::Error::last_os_error())?;
    // SAFETY: the kernel initialized the first `n` bytes after the length.
    unsafe { buf.set_len(buf.len() + n) };
    Ok(n)
}

/// Reads what `afd` holds now, up to [`BURST_LIMIT`], writing its complete
/// records to `sink`. A short read ends the burst: the stream is drained,
/// and reading on would only chase the producer a few bytes at a time. Any
/// error but EINTR ends the stream (a pty's EIO: every slave end closed).
fn read_burst(
    afd: &AsyncFd<OwnedFd>,
    stream: Stream,
    splitter: &mut LineSplitter,
    sink: &LogSink,
    scratch: &mut Scratch,
) -> Burst {
    let mut total = 0;
    while total < BURST_LIMIT {
        scratch.read.clear();
        let n = match afd.try_io(Interest::READABLE, |fd| read_spare(fd, &mut scratch.read)) {
            Ok(0) => return Burst::Closed,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return Burst::Closed,
        };
        total += n;
        let data = &scratch.read[..n];
        sink.copy_to_attached(stream, data);
        splitter.push(data, SystemTime::now(), &mut scratch.out);
        if !scratch.out.is_empty() {
            sink.write_records(&scratch.out);
            scratch.out.clear();
            scratch.out.shrink_to(OUT_SIZE);
        }
        if n < READ_SIZE {
            break;
        }
    }
    Burst::Open(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    async fn run(data: Vec<u8>, chunk: usize) -> String {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.log");
        let sink = Arc::new(LogSink::open(Some(path.clone()), None, 16 * 1024).unwrap());
        let (rx, tx) = nix::unistd::pipe().unwrap();
        let writer = std::thread::spawn(move || {
            let mut tx = std::fs::File::from(tx);
            for c in data.chunks(chunk) {
                tx.write_all(c).unwrap();
            }
        });
        forward(Stream::Stdout, rx, Source::Pipe, sink).await;
        writer.join().unwrap();
        std::fs::read_to_string(path).unwrap()
    }

    fn contents(log: &str) -> String {
        let mut joined = String::new();
        for rec in log.lines() {
            let mut parts = rec.splitn(4, ' ');
            let (_ts, st, tag) = (parts.next().unwrap(), parts.next().unwrap(), parts.next().unwrap());
            assert_eq!(st, "stdout");
            joined.push_str(parts.next().unwrap_or(""));
            if tag == "F" {
                joined.push('\n');
            }
        }
        joined
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_busy_stream_is_logged_whole_and_in_order() {
        // Many 4 KiB writes: the stream turns busy, its pipe grows and reads
        // coalesce; every line still arrives, in order.
        let mut data = Vec::new();
        for i in 0..60_000 {
            data.extend_from_slice(format!("line {i:08} {}\n", "x".repeat(80)).as_bytes());
        }
        let want = String::from_utf8(data.clone()).unwrap();
        let log = run(data, 4096).await;
        assert_eq!(contents(&log), want);
    }

    #[test]
    fn only_a_grown_pipe_with_room_is_held_back() {
        let mib = 1024 * 1024;
        assert!(!holds_back(100, mib), "a quiet stream waits for nothing");
        assert!(holds_back(BUSY_BURST, mib));
        assert!(holds_back(300 * 1024, mib));
        assert!(!holds_back(mib / 2, mib), "a burst of half the pipe: the producer would block");
        assert!(!holds_back(BUSY_BURST, DEFAULT_PIPE_SIZE), "an ungrown pipe fills within the wait");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn reads_of_empty_lines_become_every_record() {
        // A read of newlines is ~37 times larger as records: the buffer
        // grows for it, and every record still arrives.
        let log = run(vec![b'\n'; 300_000], 64 * 1024).await;
        assert_eq!(log.lines().count(), 300_000);
        assert!(log.lines().all(|l| l.ends_with(" stdout F ")));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_last_line_without_newline_is_kept() {
        let log = run(b"one\ntwo".to_vec(), 3).await;
        let tags: Vec<&str> = log.lines().map(|l| l.split(' ').nth(2).unwrap()).collect();
        assert_eq!(tags, ["F", "P"]);
        assert_eq!(contents(&log), "one\ntwo");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn forwarders_share_one_scratch_and_keep_their_streams_apart() {
        let dir = tempfile::tempdir().unwrap();
        let mut tasks = Vec::new();
        let mut writers = Vec::new();
        for n in 0..4 {
            let path = dir.path().join(format!("{n}.log"));
            let sink = Arc::new(LogSink::open(Some(path), None, 16 * 1024).unwrap());
            let (rx, tx) = nix::unistd::pipe().unwrap();
            writers.push(std::thread::spawn(move || {
                let mut tx = std::fs::File::from(tx);
                for i in 0..20_000 {
                    tx.write_all(format!("{n}-{i}\n").as_bytes()).unwrap();
                }
            }));
            tasks.push(tokio::spawn(forward(Stream::Stdout, rx, Source::Pipe, sink)));
        }
        for t in tasks {
            t.await.unwrap();
        }
        for w in writers {
            w.join().unwrap();
        }
        for n in 0..4 {
            let log = std::fs::read_to_string(dir.path().join(format!("{n}.log"))).unwrap();
            let want: String = (0..20_000).map(|i| format!("{n}-{i}\n")).collect();
            assert_eq!(contents(&log), want);
        }
    }
}
