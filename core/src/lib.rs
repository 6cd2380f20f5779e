//! What the manager-side crates share: one error vocabulary (the kinds a
//! CRI client tells apart), the ids Berth makes and the checks names pass
//! before they become paths, failpoints for crash tests, and Go-style
//! durations (the config file and berthctl both read them).
pub mod duration;
pub mod error;
pub mod failpoint;
pub mod ids;

pub use error::{Error, IoContext, Kind, Result};
