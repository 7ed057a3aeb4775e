//! Per-rule counts: what each rule of a router decided. Every pipeline keeps one for its
//! own router (a canary's `health.rules`), and a staged rollout's preview keeps two: the
//! candidate's router run in shadow on the live events, writing nowhere, beside the router
//! in force.
//!
//! A pipeline's counts cost an event one add into its run's array; the run adds them to
//! the shared atomics once, when it finishes. Only while a preview runs does the pipeline
//! hold a [`Shadow`]; each run loads it once, and without one an event pays one untaken
//! branch. With one, an event is routed a second time (re-read by the candidate's router,
//! whose field slots differ) and two relaxed atomic adds are made.

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use servicelog_api::{
    Router,
    rules::{Decision, Event},
    wire::{Candidate, Preview},
};

use super::Pipeline;

/// The name the counts give events no rule decided (routed by `defaultTo` or dropped as
/// unrouted).
pub const DEFAULT: &str = "(default)";

/// Events decided per rule of one router, then those no rule decided ([`DEFAULT`]).
#[derive(Debug)]
pub struct RuleCounts {
    names: Vec<String>,
    slots: Box<[AtomicU64]>,
}

impl RuleCounts {
    pub fn new(router: &Router) -> Self {
        Self {
            names: router.rule_names().to_vec(),
            slots: (0..=router.rule_names().len())
                .map(|_| AtomicU64::new(0))
                .collect(),
        }
    }

    /// Slots a run counts into, one per rule and one for [`DEFAULT`]: see
    /// [`RuleCounts::slot`] and [`RuleCounts::add`].
    pub fn slots(&self) -> usize {
        self.slots.len()
    }

    /// The slot of the deciding rule `rule` (an index of the router's rules) in an array
    /// of [`RuleCounts::slots`].
    #[inline]
    pub fn slot(len: usize, rule: Option<u16>) -> usize {
        rule.map_or(len.saturating_sub(1), usize::from)
    }

    #[inline]
    fn bump(&self, rule: Option<u16>) {
        if let Some(n) = self.slots.get(Self::slot(self.slots.len(), rule)) {
            n.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Adds a run's counts (indexed like the slots) and zeroes them.
    pub fn add(&self, run: &mut [u64]) {
        for (slot, n) in self.slots.iter().zip(run) {
            if *n > 0 {
                slot.fetch_add(std::mem::take(n), Ordering::Relaxed);
            }
        }
    }

    /// By rule name ([`DEFAULT`] for none), rules that decided nothing included.
    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        self.names
            .iter()
            .map(String::as_str)
            .chain([DEFAULT])
            .zip(&self.slots)
            .map(|(name, n)| (name.to_owned(), n.load(Ordering::Relaxed)))
            .collect()
    }
}

/// The candidate's router and the per-rule counts of both.
#[derive(Debug)]
pub struct Shadow {
    /// The candidate's hash.
    pub hash: String,
    router: Router,
    stable: RuleCounts,
    candidate: RuleCounts,
    started: Instant,
}

impl Shadow {
    /// A shadow of `candidate` (hash `hash`) beside `stable`, the router in force.
    pub fn new(hash: String, candidate: Router, stable: &Router) -> Self {
        Self {
            hash,
            stable: RuleCounts::new(stable),
            candidate: RuleCounts::new(&candidate),
            router: candidate,
            started: Instant::now(),
        }
    }

    /// Counts what the router in force decided for `event` and what the candidate decides.
    #[inline]
    pub fn observe(&self, event: &Event<'_>, decided: &Decision, now: Instant) {
        self.stable.bump(decided.rule);
        let shadow = self.router.route(event, now);
        self.candidate.bump(shadow.rule);
    }

    /// Events decided by each rule since the shadow started, for the instance record: by
    /// rule name ([`DEFAULT`] for none), rules that decided nothing included, with the
    /// time they took (which makes them rates).
    pub fn preview(&self) -> Preview {
        Preview {
            hash: self.hash.clone(),
            stable: self.stable.snapshot(),
            candidate: self.candidate.snapshot(),
            elapsed_ms: u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
        }
    }
}

/// Runs a preview `candidate` in shadow on `pipeline` (routing config `hash`) while it
/// previews that config — `stable` is the config znode's hash — and stops the shadow
/// otherwise. A candidate that does not compile is not previewed (a step would reject
/// it). The sidecar and the node agent (per pod) both keep their shadows with it.
pub fn sync(pipeline: &Pipeline, hash: &str, stable: &str, candidate: Option<&Candidate>) {
    let want = candidate.filter(|c| c.preview && c.stable_hash == stable && hash == stable);
    let have = pipeline.shadow.load_full();
    match (want, have) {
        (Some(c), Some(s)) if s.hash == c.hash => {}
        (Some(c), _) if refused(pipeline).as_deref() == Some(c.hash.as_str()) => {}
        (Some(c), _) => {
            let compiled = c
                .config()
                .map_err(|e| e.to_string())
                .and_then(|config| Router::compile(&config.spec).map_err(|e| e.to_string()));
            match compiled {
                Ok(router) => {
                    tracing::info!(candidate = %c.hash, "staged rollout: previewing the candidate in shadow");
                    pipeline.shadow.store(Some(Arc::new(Shadow::new(
                        c.hash.clone(),
                        router,
                        &pipeline.router,
                    ))));
                }
                Err(e) => {
                    tracing::warn!(candidate = %c.hash, error = %e, "staged rollout: the preview candidate does not compile; not previewed");
                    *refused(pipeline) = Some(c.hash.clone());
                }
            }
        }
        (None, Some(_)) => {
            tracing::info!("staged rollout: preview ended");
            pipeline.shadow.store(None);
        }
        (None, None) => {}
    }
}

/// The preview candidate `pipeline` could not compile (see [`Pipeline::shadow_refused`]).
fn refused(pipeline: &Pipeline) -> std::sync::MutexGuard<'_, Option<String>> {
    // The value is a plain hash: one left by a panicking holder is still whole.
    pipeline
        .shadow_refused
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
