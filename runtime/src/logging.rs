//! Structured logging for the daemons: slog key-value records on stderr,
//! with the `log` records of dependencies bridged in.
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

/// A root logger at `level`, plus the guard that keeps `log` bridged to it.
pub fn init(level: Level) -> (Logger, slog_scope::GlobalLoggerGuard) {
    let decorator = slog_term::TermDecorator::new().stderr().build();
    let drain = slog_term::FullFormat::new(decorator).build().fuse();
    let drain = slog_async::Async::new(drain).chan_size(4096).build().fuse();
    let drain = drain.filter_level(level).fuse();
    let log = Logger::root(drain, o!());
    // Dependencies (tonic, h2) log through `log`; keep them quieter than ours.
    let bridge = log.new(o!("component" => "deps"));
    let guard = slog_scope::set_global_logger(bridge);
    let _ = slog_stdlog::init_with_level(log::Level::Warn);
    (log, guard)
}
