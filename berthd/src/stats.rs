//! Turning raw usage figures into CRI stats: CPU rate from two samples,
//! and the disk usage of a writable layer.
use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use protocol::cri;

/// Bytes and inodes under `dir` (not following symlinks).
pub fn disk_usage(dir: &Path) -> (u64, u64) {
    fn walk(p: &Path, acc: &mut (u64, u64)) {
        let Ok(entries) = std::fs::read_dir(p) else { return };
        for e in entries.flatten() {
            let Ok(m) = e.path().symlink_metadata() else { continue };
            acc.1 += 1;
            if m.is_dir() {
                walk(&e.path(), acc);
            } else {
                acc.0 += m.len();
            }
        }
    }
    let mut acc = (0, 0);
    walk(dir, &mut acc);
    acc
}

/// The previous CPU sample of each container, for usage_nano_cores.
#[derive(Default)]
pub struct CpuRates {
    last: Mutex<HashMap<String, (i64, u64)>>,
}

impl CpuRates {
    /// CPU usage for `id` at `now` (ns) with cumulative `cpu` (ns); the rate
    /// is over the time since the previous sample (none on the first).
    pub fn usage(&self, id: &str, now: i64, cpu: u64) -> cri::CpuUsage {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let rate = match last.get(id) {
            // A rate of CPU nanoseconds per second: finite and not negative
            // here; `as` saturates a float beyond u64.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            Some((t, c)) if now > *t && cpu >= *c => Some(((cpu - c) as f64 / (now - t) as f64 * 1e9) as u64),
            _ => None,
        };
        last.insert(id.to_string(), (now, cpu));
        cri::CpuUsage {
            timestamp: now,
            usage_core_nano_seconds: Some(cri::UInt64Value { value: cpu }),
            usage_nano_cores: rate.map(|value| cri::UInt64Value { value }),
            psi: None,
        }
    }

    /// Forgets a removed container.
    pub fn forget(&self, id: &str) {
        self.last.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_from_two_samples() {
        let r = CpuRates::default();
        assert!(r.usage("c", 1_000_000_000, 0).usage_nano_cores.is_none());
        // Half a core over one second.
        assert_eq!(r.usage("c", 2_000_000_000, 500_000_000).usage_nano_cores.unwrap().value, 500_000_000);
    }

    #[test]
    fn du_counts_files_and_dirs() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("a")).unwrap();
        std::fs::write(d.path().join("a/f"), vec![0u8; 1000]).unwrap();
        assert_eq!(disk_usage(d.path()), (1000, 2));
    }
}
