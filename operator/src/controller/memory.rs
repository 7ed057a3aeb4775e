//! What this process remembers about each ServiceLog between reconciles, in one place with
//! one [`Memory::forget`].
//!
//! The watch cache lags behind this process's own writes: the hash it last published (so
//! drift is still recognised as drift before the status says it), the status it last wrote
//! (so conditions are merged into that, not into a stale copy that would rewrite every
//! `lastTransitionTime`), when a partway rollout's status was last written and its
//! instance records last re-read (pacing), and the retry backoff of a failing reconcile.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use kube::runtime::reflector::{ObjectRef, Store};
use servicelog_api::v1alpha1::ServiceLogStatus;

use crate::cache::CachedServiceLog;

/// How long a written status is remembered at most: the entry goes as soon as the cache
/// holds the resourceVersion the write returned, and after this however it stands.
pub const STATUS_MEMORY: Duration = Duration::from_secs(60);

/// First and longest wait before a failed reconcile is retried.
pub const RETRY_MIN: Duration = Duration::from_secs(1);
pub const RETRY_MAX: Duration = Duration::from_secs(60);

/// `(namespace, name)`.
pub type Key = (String, String);

#[derive(Default)]
pub struct Memory {
    entries: Mutex<Entries>,
}

#[derive(Default)]
struct Entries {
    by_key: HashMap<Key, Remembered>,
    pruned: Option<Instant>,
}

/// Every resource has one of these while it exists, so what most of them never hold (a
/// status not yet in the cache, a retry backoff) is boxed: about 80 bytes a resource instead
/// of 400 (3 MiB at 10,000 ServiceLogs).
#[derive(Default)]
struct Remembered {
    /// The hash this process last published.
    published: Option<Box<str>>,
    status: Option<Box<Written>>,
    /// When status was last written while the rollout was partway.
    rollout_written: Option<Instant>,
    /// When the instance records were last re-read while the rollout was partway.
    rollout_refreshed: Option<Instant>,
    /// Retry delays while reconciles fail; `None` after a success.
    retry: Option<Box<ExponentialBackoff>>,
}

impl Remembered {
    fn is_empty(&self) -> bool {
        self.published.is_none()
            && self.status.is_none()
            && self.rollout_written.is_none()
            && self.rollout_refreshed.is_none()
            && self.retry.is_none()
    }
}

struct Written {
    at: Instant,
    /// The resourceVersion the status write returned.
    revision: Option<u64>,
    status: ServiceLogStatus,
}

impl Written {
    fn current(&self, cached: Option<u64>) -> bool {
        self.at.elapsed() < STATUS_MEMORY && !caught_up(cached, self.revision)
    }
}

/// Whether the cache's copy (at `cached`) already includes a write that returned `written`.
fn caught_up(cached: Option<u64>, written: Option<u64>) -> bool {
    matches!((cached, written), (Some(c), Some(w)) if c >= w)
}

impl Memory {
    fn with<T>(&self, f: impl FnOnce(&mut Entries) -> T) -> Option<T> {
        self.entries.lock().ok().map(|mut e| f(&mut e))
    }

    fn update(&self, key: &Key, f: impl FnOnce(&mut Remembered)) {
        self.with(|e| {
            let entry = e.by_key.entry(key.clone()).or_default();
            f(entry);
            if entry.is_empty() {
                e.by_key.remove(key);
            }
        });
    }

    fn read<T>(&self, key: &Key, f: impl FnOnce(&Remembered) -> Option<T>) -> Option<T> {
        self.with(|e| e.by_key.get(key).and_then(f)).flatten()
    }

    /// Drops everything remembered about a resource that is gone.
    pub fn forget(&self, key: &Key) {
        self.with(|e| e.by_key.remove(key));
    }

    pub fn published(&self, key: &Key) -> Option<String> {
        self.read(key, |r| r.published.as_deref().map(str::to_owned))
    }

    pub fn set_published(&self, key: &Key, hash: &str) {
        self.update(key, |r| r.published = Some(hash.into()));
    }

    /// The status this process wrote, unless the cache (at revision `cached`) holds it
    /// already or it is older than [`STATUS_MEMORY`].
    pub fn status(&self, key: &Key, cached: Option<u64>) -> Option<ServiceLogStatus> {
        self.read(key, |r| {
            r.status
                .as_ref()
                .filter(|w| w.current(cached))
                .map(|w| w.status.clone())
        })
    }

    /// Remembers a status write; at most once a second, forgets those the cache caught up
    /// with.
    pub fn set_status(
        &self,
        key: &Key,
        revision: Option<u64>,
        status: ServiceLogStatus,
        cache: &Store<CachedServiceLog>,
    ) {
        self.with(|e| {
            if e.pruned
                .is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
            {
                e.by_key.retain(|(ns, name), r| {
                    if let Some(w) = &r.status {
                        let cached = cache
                            .get(&ObjectRef::new(name).within(ns))
                            .and_then(|s| s.revision());
                        if !w.current(cached) {
                            r.status = None;
                        }
                    }
                    !r.is_empty()
                });
                e.pruned = Some(Instant::now());
            }
            e.by_key.entry(key.clone()).or_default().status = Some(Box::new(Written {
                at: Instant::now(),
                revision,
                status,
            }));
        });
    }

    pub fn rollout_written(&self, key: &Key) -> Option<Instant> {
        self.read(key, |r| r.rollout_written)
    }

    /// Records a status write of a partway rollout, or (`None`) that the rollout is not
    /// partway any more.
    pub fn set_rollout_written(&self, key: &Key, at: Option<Instant>) {
        self.update(key, |r| r.rollout_written = at);
    }

    pub fn rollout_refreshed(&self, key: &Key) -> Option<Instant> {
        self.read(key, |r| r.rollout_refreshed)
    }

    pub fn set_rollout_refreshed(&self, key: &Key, at: Option<Instant>) {
        self.update(key, |r| r.rollout_refreshed = at);
    }

    /// The wait before retrying a reconcile that failed again: exponential from
    /// [`RETRY_MIN`] to [`RETRY_MAX`], with jitter so that resources failing together do
    /// not retry together.
    pub fn retry_after_failure(&self, key: &Key) -> Duration {
        let mut delay = RETRY_MAX;
        self.update(key, |r| {
            let backoff = r.retry.get_or_insert_with(|| {
                Box::new(
                    ExponentialBuilder::default()
                        .with_min_delay(RETRY_MIN)
                        .with_max_delay(RETRY_MAX)
                        .with_jitter()
                        .without_max_times()
                        .build(),
                )
            });
            delay = backoff.next().unwrap_or(RETRY_MAX);
        });
        delay
    }

    /// A reconcile succeeded: the next failure starts from [`RETRY_MIN`] again.
    pub fn succeeded(&self, key: &Key) {
        self.with(|e| {
            if let Some(r) = e.by_key.get_mut(key) {
                r.retry = None;
                if r.is_empty() {
                    e.by_key.remove(key);
                }
            }
        });
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.with(|e| e.by_key.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> Key {
        ("ns".to_owned(), name.to_owned())
    }

    #[test]
    fn forget_drops_every_kind_of_memory_at_once() {
        let m = Memory::default();
        let k = key("a");
        m.set_published(&k, "sha256:1");
        m.set_rollout_written(&k, Some(Instant::now()));
        m.set_rollout_refreshed(&k, Some(Instant::now()));
        let _ = m.retry_after_failure(&k);
        assert_eq!(m.published(&k).as_deref(), Some("sha256:1"));
        m.forget(&k);
        assert_eq!(m.published(&k), None);
        assert_eq!(m.rollout_written(&k), None);
        assert_eq!(m.rollout_refreshed(&k), None);
        assert_eq!(m.len(), 0);
    }

    #[test]
    fn an_entry_with_nothing_left_in_it_goes() {
        let m = Memory::default();
        let k = key("a");
        m.set_rollout_written(&k, Some(Instant::now()));
        m.set_rollout_written(&k, None);
        assert_eq!(m.len(), 0);
    }

    #[test]
    fn a_written_status_is_kept_until_the_cache_holds_its_revision() {
        let m = Memory::default();
        let k = key("a");
        let (store, _writer) = kube::runtime::reflector::store::<CachedServiceLog>();
        let status = ServiceLogStatus {
            observed_generation: Some(3),
            ..Default::default()
        };
        m.set_status(&k, Some(10), status.clone(), &store);
        assert_eq!(m.status(&k, Some(9)), Some(status.clone()));
        assert_eq!(m.status(&k, None), Some(status));
        assert_eq!(m.status(&k, Some(10)), None, "the cache caught up");
    }

    #[test]
    fn given_a_success_then_only_the_backoff_is_dropped_and_no_entry_is_made() {
        let m = Memory::default();
        m.succeeded(&key("never-failed"));
        assert_eq!(
            m.len(),
            0,
            "a success of a resource with nothing remembered"
        );
        let k = key("a");
        let _ = m.retry_after_failure(&k);
        m.succeeded(&k);
        assert_eq!(m.len(), 0, "the entry held only the backoff");
        m.set_published(&k, "sha256:1");
        let _ = m.retry_after_failure(&k);
        m.succeeded(&k);
        assert_eq!(m.published(&k).as_deref(), Some("sha256:1"));
        assert!(
            m.retry_after_failure(&k) < RETRY_MIN * 3,
            "the backoff starts over"
        );
    }

    #[test]
    fn retries_back_off_and_start_over_after_a_success() {
        let m = Memory::default();
        let k = key("a");
        let delays: Vec<Duration> = (0..8).map(|_| m.retry_after_failure(&k)).collect();
        assert!(
            delays
                .iter()
                .all(|d| *d >= RETRY_MIN && *d <= RETRY_MAX * 2)
        );
        assert!(
            delays[7] > delays[0],
            "later retries wait longer: {delays:?}"
        );
        m.succeeded(&k);
        assert!(m.retry_after_failure(&k) < RETRY_MIN * 3);
    }
}
