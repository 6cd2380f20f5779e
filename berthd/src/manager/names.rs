//! The pod and container names in use (CRI makes a name and attempt unique
//! per node, and per pod for containers), and the reservation a creating
//! call holds on one: released when it is dropped, unless the call kept it,
//! so an early return or a dropped future never leaves a name taken. Each
//! reservation has a token, so a late drop never releases the name a later
//! call reserved after this one's rollback let it go.
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

/// Names in use, each with the token of whoever took it.
#[derive(Default)]
pub struct Names {
    taken: Mutex<HashMap<String, u64>>,
    next: AtomicU64,
}

/// A name held by a call that is still creating its object.
#[must_use = "a reservation dropped at once releases its name"]
pub struct Reservation<'a> {
    names: &'a Names,
    key: String,
    token: u64,
    kept: bool,
}

impl Names {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, u64>> {
        // Each operation is one insert or remove: a panic cannot leave the
        // map half-changed.
        self.taken.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes `key` for a call creating its object; None when it is in use.
    pub fn reserve(&self, key: String) -> Option<Reservation<'_>> {
        let token = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let mut taken = self.lock();
        if taken.contains_key(&key) {
            return None;
        }
        taken.insert(key.clone(), token);
        Some(Reservation { names: self, key, token, kept: false })
    }

    /// Marks `key` as the name of an object that exists (read at start).
    pub fn hold(&self, key: String) {
        self.lock().insert(key, 0);
    }

    /// Frees `key`: its object is gone.
    pub fn release(&self, key: &str) {
        self.lock().remove(key);
    }
}

impl Reservation<'_> {
    /// The object exists: its name stays taken until [`Names::release`].
    pub fn keep(mut self) {
        self.kept = true;
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        let mut taken = self.names.lock();
        if taken.get(&self.key) == Some(&self.token) {
            taken.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dropped_reservation_frees_its_name_and_only_its_own() {
        let names = Names::default();
        let first = names.reserve("pod/a".into()).expect("free");
        assert!(names.reserve("pod/a".into()).is_none(), "a name is taken once");
        drop(first);
        let kept = names.reserve("pod/a".into()).expect("freed by the drop");
        kept.keep();
        assert!(names.reserve("pod/a".into()).is_none(), "a kept name stays taken");

        // A rollback released the name, a retry took it, then the failed
        // call's reservation is dropped: the retry keeps its name.
        names.release("pod/a");
        let failed = Reservation { names: &names, key: "pod/b".into(), token: 999, kept: false };
        let retry = names.reserve("pod/b".into()).expect("free");
        drop(failed);
        assert!(names.reserve("pod/b".into()).is_none(), "the retry's name was released by another's drop");
        drop(retry);
        assert!(names.reserve("pod/b".into()).is_some());
    }
}
