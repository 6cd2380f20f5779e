//! CRI calls that outlive their client. A tonic handler is dropped the
//! moment its client's deadline passes or it hangs up, and code after an
//! `.await` never runs: a RunPodSandbox dropped between its CNI ADD and its
//! record would leak the shim, the mounts and the name reservation. So
//! every mutating call runs in a task of its own, which finishes (or rolls
//! back) whatever the client does. And kubelet retries the same
//! RunPodSandbox or CreateContainer after a deadline: a retry of a call
//! still running (or finished with nobody there to hear it) joins it and
//! gets its answer, the same id, instead of AlreadyExists.
use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::future::{BoxFuture, FutureExt, Shared};

use berth_core::error::{Error, Result};

/// How long an answer nobody collected waits for a retry.
const UNCLAIMED_TTL: Duration = Duration::from_secs(300);

type Answer = Shared<BoxFuture<'static, std::result::Result<String, Error>>>;

/// Runs `work` in a task of its own and waits for it; the work goes on if
/// this wait is dropped.
pub async fn detached<T: Send + 'static>(work: impl Future<Output = Result<T>> + Send + 'static) -> Result<T> {
    tokio::spawn(work).await.map_err(|e| Error::internal(format!("the call's task failed: {e}")))?
}

/// Calls in flight (or answered to nobody yet), by what identifies a retry.
#[derive(Default)]
pub struct Retries {
    calls: Mutex<HashMap<String, (Instant, Answer)>>,
}

impl Retries {
    /// Runs `work` for `key` (detached), or joins the call already made for
    /// it; the first caller to get the answer takes it out.
    pub async fn run(
        &self,
        key: String,
        work: impl Future<Output = Result<String>> + Send + 'static,
    ) -> Result<String> {
        let answer = {
            let mut calls = self.calls.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            calls.retain(|_, (at, f)| f.peek().is_none() || now.duration_since(*at) < UNCLAIMED_TTL);
            match calls.get(&key) {
                Some((_, f)) => f.clone(),
                None => {
                    let f: Answer = detached(work).boxed().shared();
                    calls.insert(key.clone(), (now, f.clone()));
                    f
                }
            }
        };
        let r = answer.clone().await;
        let mut calls = self.calls.lock().unwrap_or_else(|e| e.into_inner());
        if calls.get(&key).is_some_and(|(_, f)| f.ptr_eq(&answer)) {
            calls.remove(&key);
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[tokio::test]
    async fn a_retry_joins_the_call_its_client_gave_up_on() {
        let retries = Arc::new(Retries::default());
        let runs = Arc::new(AtomicUsize::new(0));
        let work = |runs: Arc<AtomicUsize>| async move {
            runs.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(200)).await;
            Ok::<_, Error>("id-1".to_string())
        };
        // The first client gives up after 50 ms; the work goes on.
        let first = tokio::time::timeout(Duration::from_millis(50), retries.run("k".into(), work(runs.clone()))).await;
        assert!(first.is_err());
        // The retry gets the same answer, and the work ran once.
        assert_eq!(retries.run("k".into(), work(runs.clone())).await.unwrap(), "id-1");
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        // Once answered, the next call for the key is a new call.
        assert_eq!(retries.run("k".into(), work(runs.clone())).await.unwrap(), "id-1");
        assert_eq!(runs.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn detached_work_finishes_without_its_caller() {
        let done = Arc::new(AtomicUsize::new(0));
        let d = done.clone();
        let wait = detached(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            d.fetch_add(1, Ordering::SeqCst);
            Ok::<_, Error>(())
        });
        let _ = tokio::time::timeout(Duration::from_millis(10), wait).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(done.load(Ordering::SeqCst), 1);
    }
}
