//! Structured logging for the daemons: slog key-value records on stderr,
//! with the `log` records of dependencies bridged in, at a level SIGHUP can
//! change.
use std::sync::atomic::{AtomicUsize, Ordering};
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

/// A root logger at `level`, the guard that keeps `log` bridged to it, and
/// the handle that changes its level.
pub fn init(level: Level) -> (Logger, slog_scope::GlobalLoggerGuard, LevelHandle) {
    let handle = LevelHandle(Arc::new(AtomicUsize::new(level.as_usize())));
    let decorator = slog_term::TermDecorator::new().stderr().build();
    let drain = slog_term::FullFormat::new(decorator).build().fuse();
    let drain = slog_async::Async::new(drain).chan_size(4096).build().fuse();
    let drain = LevelFilter { drain, level: handle.clone() }.fuse();
    let log = Logger::root(drain, o!());
    // Dependencies (tonic, h2) log through `log`; keep them quieter than ours.
    let bridge = log.new(o!("component" => "deps"));
    let guard = slog_scope::set_global_logger(bridge);
    let _ = slog_stdlog::init_with_level(log::Level::Warn);
    (log, guard, handle)
}
