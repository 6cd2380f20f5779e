//! berthd-side container log rotation, for nodes without kubelet (which
//! rotates by itself): kubelet's naming and semantics. When a running
//! container's log reaches the maximum size: stray temp files go, rotated
//! files beyond `max_files - 2` go (oldest first), the rest are gzipped, the
//! log is renamed to `<log>.YYYYMMDD-HHMMSS` and the shim reopens it by path
//! (renamed back if that fails). So at most `max_files` files exist: the
//! current one, the newest rotated one, and `max_files - 2` compressed ones.
use std::path::{Path, PathBuf};

use berth_core::error::{Error, Result};

const GZ: &str = ".gz";
const TMP: &str = ".tmp";

/// Rotation policy.
#[derive(Clone, Copy, Debug)]
pub struct Policy {
    /// Rotate when the log reaches this many bytes.
    pub max_size: u64,
    /// Files kept per container, the current one included (at least 2).
    pub max_files: usize,
}

/// Parses a size: bytes, or with a Kubernetes quantity suffix (Ki, Mi, Gi,
/// K, M, G).
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mult) =
        [("Ki", 1u64 << 10), ("Mi", 1 << 20), ("Gi", 1 << 30), ("K", 1000), ("M", 1_000_000), ("G", 1_000_000_000)]
            .iter()
            .find_map(|(suf, m)| s.strip_suffix(suf).map(|n| (n, *m)))
            .unwrap_or((s, 1));
    num.trim().parse::<u64>().ok().map(|n| n * mult).filter(|n| *n > 0)
}

/// Rotated files of `log`, oldest first (names sort by their timestamps).
fn rotated(log: &Path) -> Vec<PathBuf> {
    let (Some(dir), Some(name)) = (log.parent(), log.file_name().and_then(|n| n.to_str())) else { return Vec::new() };
    let prefix = format!("{name}.");
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|it| {
            it.flatten()
                .filter(|e| e.file_name().to_str().is_some_and(|n| n.starts_with(&prefix)))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn compress(path: &Path) -> Result<()> {
    let gz = PathBuf::from(format!("{}{GZ}", path.display()));
    let tmp = PathBuf::from(format!("{}{TMP}", gz.display()));
    use std::os::unix::fs::OpenOptionsExt;
    // A rotated file planted as a symlink is not followed (berthd runs as
    // root and would copy what it points at into the log folder), and the
    // copy streams: a rotated file is as large as the container made it.
    let mut src = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| Error::internal(format!("reading {}: {e}", path.display())))?;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o640)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&tmp)
        .map_err(|e| Error::internal(format!("creating {}: {e}", tmp.display())))?;
    let mut enc = flate2::write::GzEncoder::new(f, flate2::Compression::default());
    std::io::copy(&mut src, &mut enc)
        .and_then(|_| enc.finish().map(|_| ()))
        .map_err(|e| Error::internal(format!("compressing {}: {e}", path.display())))?;
    std::fs::rename(&tmp, &gz).map_err(|e| Error::internal(format!("renaming {}: {e}", tmp.display())))?;
    let _ = std::fs::remove_file(path);
    Ok(())
}

/// Prepares the rotated files before a rotation: removes temp files and
/// uncompressed copies of compressed ones, the oldest beyond
/// `max_files - 2`, and compresses the rest.
fn tidy(log: &Path, policy: Policy) -> Result<()> {
    let mut files = rotated(log);
    files.retain(|f| {
        let name = f.display().to_string();
        let stale = name.ends_with(TMP) || (!name.ends_with(GZ) && Path::new(&format!("{name}{GZ}")).exists());
        if stale {
            let _ = std::fs::remove_file(f);
        }
        !stale
    });
    let keep = policy.max_files.saturating_sub(2);
    while files.len() > keep {
        let f = files.remove(0);
        std::fs::remove_file(&f).map_err(|e| Error::internal(format!("removing {}: {e}", f.display())))?;
    }
    for f in files.iter().filter(|f| !f.display().to_string().ends_with(GZ)) {
        compress(f)?;
    }
    Ok(())
}

/// Whether `log` is due for rotation.
pub fn due(log: &Path, policy: Policy) -> bool {
    std::fs::metadata(log).map(|m| m.len() >= policy.max_size).unwrap_or(false)
}

/// Rotates `log`; `reopen` asks the shim to reopen it by path.
pub async fn rotate<F, Fut>(
    log: &Path,
    policy: Policy,
    now: chrono::DateTime<chrono::Utc>,
    reopen: F,
) -> Result<Option<PathBuf>>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    tidy(log, policy)?;
    let target = PathBuf::from(format!("{}.{}", log.display(), now.format("%Y%m%d-%H%M%S")));
    if target.exists() || PathBuf::from(format!("{}{GZ}", target.display())).exists() {
        // Rotated within this second already (the file may be compressed by
        // now): a second file of the same name would sort wrongly. The next
        // check will rotate.
        return Ok(None);
    }
    std::fs::rename(log, &target).map_err(|e| Error::internal(format!("renaming {}: {e}", log.display())))?;
    berth_core::failpoint::hit("rotate-log/renamed");
    if let Err(e) = reopen().await {
        let _ = std::fs::rename(&target, log);
        return Err(e.context(format!("reopening {}", log.display())));
    }
    Ok(Some(target))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("10Mi"), Some(10 << 20));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("2K"), Some(2000));
        assert_eq!(parse_size("0"), None);
        assert_eq!(parse_size("x"), None);
    }

    #[tokio::test]
    async fn keeps_max_files_and_compresses_older_ones() {
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("0.log");
        let policy = Policy { max_size: 1, max_files: 3 };
        let t0 = chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        for i in 0..5 {
            std::fs::write(&log, format!("gen {i}\n")).unwrap();
            let l = log.clone();
            let r = rotate(&log, policy, t0 + chrono::Duration::seconds(i), || async move {
                std::fs::write(&l, b"").map_err(|e| Error::internal(e.to_string()))
            })
            .await
            .unwrap();
            assert!(r.is_some());
        }
        let files = rotated(&log);
        assert_eq!(files.len(), 2, "{files:?}");
        assert!(files[0].display().to_string().ends_with(".gz"));
        assert!(!files[1].display().to_string().ends_with(".gz"));
        assert_eq!(std::fs::read_to_string(&files[1]).unwrap(), "gen 4\n");
        // A failed reopen puts the log back.
        std::fs::write(&log, "current\n").unwrap();
        let r = rotate(&log, policy, t0 + chrono::Duration::seconds(10), || async { Err(Error::internal("no")) }).await;
        assert!(r.is_err());
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "current\n");
    }
}
