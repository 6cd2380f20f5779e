//! Structured logging for the daemons: slog key-value records on stderr,
//! with the `log` records of dependencies bridged in, at a level SIGHUP can
//! change.
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use slog::{o, Drain, Level, Logger};

/// Parses a level name (`error`, `warn`, `info`, `debug`, `trace`).
pub fn parse_level(s: &str) -> Option<Level> {
    match s.to_ascii_lowercase().as_str() {
        "error" => Some(Level::Error),
        "warn" | "warning" => Some(Level::Warning),
        "info" => Some(Level::Info),
        "debug" => Some(Level::Debug),
        "trace" => Some(Level::Trace),
        _ => None,
    }
}

/// The level records must reach to be written; changed at run time.
#[derive(Clone)]
pub struct LevelHandle(Arc<AtomicUsize>);

impl LevelHandle {
    /// Sets the level from now on.
    pub fn set(&self, level: Level) {
        self.0.store(level.as_usize(), Ordering::Relaxed);
    }

    /// The level in force.
    pub fn get(&self) -> Level {
        Level::from_usize(self.0.load(Ordering::Relaxed)).unwrap_or(Level::Info)
    }
}

struct LevelFilter<D> {
    drain: D,
    level: LevelHandle,
}

impl<D: Drain> Drain for LevelFilter<D> {
    type Ok = Option<D::Ok>;
    type Err = D::Err;

    fn log(&self, record: &slog::Record, values: &slog::OwnedKVList) -> Result<Self::Ok, Self::Err> {
        if record.level().is_at_least(self.level.get()) {
            self.drain.log(record, values).map(Some)
        } else {
            Ok(None)
        }
    }
}

/// Records that could not be written (a full or broken log device).
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// How many log records could not be written so far.
pub fn dropped_records() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// A drain whose failures are counted and dropped: a log device that fills
/// up or goes away must not stop berthd (a fused drain panics on the first
/// failed write).
struct Tolerant<D>(D);

impl<D: Drain> Drain for Tolerant<D> {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &slog::Record, values: &slog::OwnedKVList) -> Result<(), slog::Never> {
        if self.0.log(record, values).is_err() {
            DROPPED.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }
}

/// A root logger at `level`, the guard that keeps `log` bridged to it, and
/// the handle that changes its level.
pub fn init(level: Level) -> (Logger, slog_scope::GlobalLoggerGuard, LevelHandle) {
    let handle = LevelHandle(Arc::new(AtomicUsize::new(level.as_usize())));
    let decorator = slog_term::TermDecorator::new().stderr().build();
    let drain = Tolerant(slog_term::FullFormat::new(decorator).build());
    let drain = Tolerant(slog_async::Async::new(drain).chan_size(4096).build());
    let drain = Tolerant(LevelFilter { drain, level: handle.clone() });
    let log = Logger::root(drain, o!());
    // Dependencies (tonic, h2) log through `log`; keep them quieter than ours.
    let bridge = log.new(o!("component" => "deps"));
    let guard = slog_scope::set_global_logger(bridge);
    let _ = slog_stdlog::init_with_level(log::Level::Warn);
    (log, guard, handle)
}
