//! A staged rollout's preview: the candidate's router run in shadow on the live events,
//! writing nowhere, counting per rule what it and the router in force decide.
//!
//! Only while a preview runs does the pipeline hold a [`Shadow`]; each run loads it once,
//! and without one an event pays one untaken branch. With one, an event is routed a second
//! time (re-read by the candidate's router, whose field slots differ) and two relaxed
//! atomic adds are made.

use std::{
    collections::BTreeMap,
    sync::atomic::{AtomicU64, Ordering},
    time::Instant,
};

use servicelog_api::{
    Router,
    rules::{Decision, Event},
};

/// The name the counts give events no rule decided (routed by `defaultTo` or dropped as
/// unrouted).
pub const DEFAULT: &str = "(default)";

/// The candidate's router and the per-rule counts of both.
#[derive(Debug)]
pub struct Shadow {
    /// The candidate's hash.
    pub hash: String,
    router: Router,
    /// Indexed by the router in force's rule, then one for [`DEFAULT`].
    stable: Vec<AtomicU64>,
    /// Likewise for the candidate's rules.
    candidate: Vec<AtomicU64>,
    /// The rule names of the router in force, for [`Shadow::counts`].
    stable_rules: Vec<String>,
}

impl Shadow {
    /// A shadow of `candidate` (hash `hash`) beside `stable`, the router in force.
    pub fn new(hash: String, candidate: Router, stable: &Router) -> Self {
        let slots = |r: &Router| {
            (0..=r.rule_names().len())
                .map(|_| AtomicU64::new(0))
                .collect()
        };
        Self {
            hash,
            stable: slots(stable),
            candidate: slots(&candidate),
            stable_rules: stable.rule_names().to_vec(),
            router: candidate,
        }
    }

    /// Counts what the router in force decided for `event` and what the candidate decides.
    #[inline]
    pub fn observe(&self, event: &Event<'_>, decided: &Decision, now: Instant) {
        bump(&self.stable, decided.rule);
        let shadow = self.router.route(event, now);
        bump(&self.candidate, shadow.rule);
    }

    /// Events decided by each rule since the shadow started: `(stable, candidate)`, by
    /// rule name ([`DEFAULT`] for none), rules that decided nothing included.
    pub fn counts(&self) -> (BTreeMap<String, u64>, BTreeMap<String, u64>) {
        let named = |names: &[String], slots: &[AtomicU64]| {
            names
                .iter()
                .map(String::as_str)
                .chain([DEFAULT])
                .zip(slots)
                .map(|(name, n)| (name.to_owned(), n.load(Ordering::Relaxed)))
                .collect()
        };
        (
            named(&self.stable_rules, &self.stable),
            named(self.router.rule_names(), &self.candidate),
        )
    }
}

fn bump(slots: &[AtomicU64], rule: Option<u16>) {
    let i = rule.map_or(slots.len() - 1, usize::from);
    if let Some(n) = slots.get(i) {
        n.fetch_add(1, Ordering::Relaxed);
    }
}
