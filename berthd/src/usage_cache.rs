//! Disk usage of folders (writable layers, the image store), measured in
//! the background and cached, as containerd's snapshotters do: a stats call
//! never walks a million files itself. Each folder has at most one walk at
//! a time, and at most [`WALKS`] folders are walked at once, on blocking
//! threads.
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Folders walked at once.
const WALKS: usize = 2;
/// How long a first measurement is waited for before a call answers
/// without it (a small folder is measured well within this).
const FIRST_WAIT: Duration = Duration::from_millis(200);

/// A measured usage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Usage {
    /// Bytes of regular files.
    pub bytes: u64,
    /// Inodes (files, folders, links).
    pub inodes: u64,
    /// When the walk that measured it ended (Unix ns).
    pub at: i64,
}

#[derive(Default)]
struct Entry {
    usage: Option<Usage>,
    measured: Option<Instant>,
    walking: bool,
}

/// The cache.
pub struct UsageCache {
    entries: Mutex<HashMap<PathBuf, Entry>>,
    walks: tokio::sync::Semaphore,
    max_age: Duration,
}

impl UsageCache {
    /// A cache whose figures are refreshed once they are `max_age` old.
    pub fn new(max_age: Duration) -> Arc<Self> {
        Arc::new(UsageCache { entries: Mutex::new(HashMap::new()), walks: tokio::sync::Semaphore::new(WALKS), max_age })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The usage of `dir`: the cached figure (refreshed in the background
    /// when old), or, the first time, the walk's result if it ends soon.
    /// None only while a first walk of a big folder is running.
    pub async fn get(self: &Arc<Self>, dir: &Path) -> Option<Usage> {
        match self.refresh(dir) {
            (None, Some(walk)) => {
                // The walk goes on in the background if it takes longer.
                let _ = tokio::time::timeout(FIRST_WAIT, walk).await;
                self.lock().get(dir).and_then(|e| e.usage)
            }
            (cached, _) => cached,
        }
    }

    /// The cached figure, and the walk started now (when it was old).
    fn refresh(self: &Arc<Self>, dir: &Path) -> (Option<Usage>, Option<tokio::task::JoinHandle<()>>) {
        let mut entries = self.lock();
        let e = entries.entry(dir.to_path_buf()).or_default();
        let stale = e.measured.is_none_or(|t| t.elapsed() >= self.max_age);
        if !stale || e.walking {
            return (e.usage, None);
        }
        e.walking = true;
        let cached = e.usage;
        drop(entries);
        let me = self.clone();
        let dir = dir.to_path_buf();
        let walk = tokio::spawn(async move {
            let measured = match me.walks.acquire().await {
                Ok(_permit) => {
                    let d = dir.clone();
                    tokio::task::spawn_blocking(move || crate::stats::disk_usage(&d)).await.ok()
                }
                Err(_) => None,
            };
            let mut entries = me.lock();
            // Forgotten while it walked (the container was removed): gone.
            if let Some(e) = entries.get_mut(&dir) {
                e.walking = false;
                if let Some((bytes, inodes)) = measured {
                    e.usage = Some(Usage { bytes, inodes, at: crate::manager::now_nanos() });
                    e.measured = Some(Instant::now());
                }
            }
        });
        (cached, Some(walk))
    }

    /// Drops a folder that is gone (a removed container's layer).
    pub fn forget(&self, dir: &Path) {
        self.lock().remove(dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn measures_once_then_serves_the_cache_until_it_is_old() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("f"), vec![0u8; 1000]).unwrap();
        let cache = UsageCache::new(Duration::from_millis(300));
        let first = cache.get(d.path()).await.expect("a small folder is measured at once");
        assert_eq!((first.bytes, first.inodes), (1000, 1));
        std::fs::write(d.path().join("g"), vec![0u8; 500]).unwrap();
        // Fresh: the cached figure, without a walk.
        assert_eq!(cache.get(d.path()).await, Some(first));
        tokio::time::sleep(Duration::from_millis(350)).await;
        // Old: still the cached figure now, the new one once the walk ends.
        assert_eq!(cache.get(d.path()).await, Some(first));
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let u = cache.get(d.path()).await.unwrap();
            if u.bytes == 1500 {
                assert_eq!(u.inodes, 2);
                break;
            }
            assert!(Instant::now() < deadline, "never refreshed: {u:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        cache.forget(d.path());
        assert!(cache.lock().is_empty());
    }
}
