//! Removing a container's or pod's folders off the async workers (the rest
//! of what the manager does to the host goes through `crate::host::Host`).
use super::*;

/// Removes folders on a blocking thread: a writable layer can hold
/// millions of files.
pub(super) async fn remove_trees(dirs: Vec<PathBuf>) {
    let _ = tokio::task::spawn_blocking(move || {
        for d in dirs {
            let _ = std::fs::remove_dir_all(d);
        }
    })
    .await;
}
