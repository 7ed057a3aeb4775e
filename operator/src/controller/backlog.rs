//! The reconciles the controller owes, handed to kube's scheduler a window at a time.
//!
//! kube's scheduler keeps each request in a delay queue, a map and a set whose capacity
//! never shrinks: given the 10,000 resources of a cold start at once, they kept about 9 MB
//! for the life of the process (a heaptrack profile, docs/benchmarks.md). The backlog keeps
//! what is owed as (namespace, name) in a queue that gives its memory back when it drains,
//! and passes at most a window of it on, each until the controller reports its reconcile
//! done (or [`STALE`] passes: a lost report must not close the window for good).

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use futures::{Stream, stream};
use kube::runtime::reflector::ObjectRef;
use tokio::sync::Notify;

use crate::cache::CachedServiceLog;

/// After this long a passed-on resource no longer counts against the window, reported
/// done or not.
pub const STALE: Duration = Duration::from_secs(60);

/// `namespace/name` (neither can hold a `/`), one allocation shared by the queue and the
/// set: about 100 bytes a queued resource.
type Key = Arc<str>;

fn key(namespace: &str, name: &str) -> Key {
    format!("{namespace}/{name}").into()
}

/// Owed reconciles, in the order they were owed, each at most once.
pub struct Backlog {
    state: Mutex<State>,
    changed: Notify,
    window: usize,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Key>,
    /// What `queue` holds.
    queued: HashSet<Key>,
    /// Passed on and not reported done, with when.
    open: HashMap<Key, Instant>,
}

impl Backlog {
    /// A backlog that lets `window` reconciles be open at once (at least one).
    pub fn new(window: usize) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::default(),
            changed: Notify::new(),
            window: window.max(1),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // The state stays consistent if a holder panicked: every change is one call.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Owes a reconcile of `namespace/name`; a no-op when one is already queued (one
    /// reconcile sees every change before it), not when one is open (it may have read the
    /// resource before this change).
    pub fn push(&self, namespace: &str, name: &str) {
        let key = key(namespace, name);
        let mut state = self.state();
        if state.queued.insert(key.clone()) {
            state.queue.push_back(key);
            drop(state);
            self.changed.notify_one();
        }
    }

    /// The reconcile of `namespace/name` completed (whatever its outcome).
    pub fn done(&self, namespace: &str, name: &str) {
        if self.state().open.remove(&*key(namespace, name)).is_some() {
            self.changed.notify_one();
        }
    }

    /// How many are queued and how many open.
    #[cfg(test)]
    fn len(&self) -> (usize, usize) {
        let state = self.state();
        (state.queue.len(), state.open.len())
    }

    /// The next owed reconcile, if the window has room.
    fn next(&self) -> Option<Key> {
        let mut state = self.state();
        if state.open.len() >= self.window {
            state.open.retain(|_, at| at.elapsed() < STALE);
            if state.open.len() >= self.window {
                return None;
            }
        }
        let key = state.queue.pop_front()?;
        state.queued.remove(&key);
        if state.queue.is_empty() {
            // A cold start queues every resource once; do not keep room for them all.
            state.queue.shrink_to_fit();
            state.queued.shrink_to_fit();
        }
        state.open.insert(key.clone(), Instant::now());
        Some(key)
    }

    /// The owed reconciles, as the window lets them through; never ends.
    pub fn stream(self: Arc<Self>) -> impl Stream<Item = ObjectRef<CachedServiceLog>> + Send {
        stream::unfold(self, |backlog| async move {
            loop {
                if let Some(key) = backlog.next() {
                    let (namespace, name) = key.split_once('/').unwrap_or(("", &key));
                    return Some((ObjectRef::new(name).within(namespace), backlog));
                }
                // A change since `next` left a permit (`notify_one`), so it is not missed;
                // woken at least every second so that stale entries are let go.
                let changed = backlog.changed.notified();
                let _ = tokio::time::timeout(Duration::from_secs(1), changed).await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;

    fn names(refs: &[ObjectRef<CachedServiceLog>]) -> Vec<String> {
        refs.iter().map(|r| r.name.clone()).collect()
    }

    #[tokio::test]
    async fn passes_a_window_at_a_time_in_order_and_once_each() {
        let backlog = Backlog::new(2);
        for name in ["a", "b", "a", "c"] {
            backlog.push("ns", name);
        }
        let mut out = backlog.clone().stream().boxed();
        let first: Vec<_> = (&mut out).take(2).collect().await;
        assert_eq!(names(&first), ["a", "b"]);
        assert_eq!(backlog.len(), (1, 2));
        assert!(
            tokio::time::timeout(Duration::from_millis(50), out.next())
                .await
                .is_err(),
            "the window is full"
        );
        backlog.done("ns", "a");
        let next = tokio::time::timeout(Duration::from_secs(1), out.next())
            .await
            .expect("a slot opened")
            .expect("never ends");
        assert_eq!(next.name, "c");
        assert_eq!(next.namespace.as_deref(), Some("ns"));
    }

    #[tokio::test]
    async fn a_change_during_an_open_reconcile_is_owed_again() {
        let backlog = Backlog::new(4);
        backlog.push("ns", "a");
        let mut out = backlog.clone().stream().boxed();
        assert_eq!(out.next().await.map(|r| r.name).as_deref(), Some("a"));
        backlog.push("ns", "a");
        let again = tokio::time::timeout(Duration::from_secs(1), out.next())
            .await
            .expect("owed again while open")
            .expect("never ends");
        assert_eq!(again.name, "a");
        backlog.done("ns", "a");
        assert_eq!(backlog.len(), (0, 0));
    }
}
