//! The parts of berth-shim that other crates test: the CRI log writer (its
//! fuzz target checks that the reader gives back what the writer was given).
pub mod cri_log;
