//! A canary's health during a staged rollout: what the config in force did since it was
//! applied, for the operator's gates (`spec.rollout.rollbackOn`).
//!
//! Nothing is added to the event path: the metrics already count events read, dropped by
//! the rules, delivered and rejected by each sink. Their values are read when a config is
//! swapped in (the base) and when the instance record is refreshed (at most every
//! [`INTERVAL`], only on a canary); the record carries the difference. The counters are
//! the process's, so a sink of the same name in the config before is counted from the
//! swap on, and what the config before delivered per sink is kept as `sinksBefore`.
//!
//! Per rule, the pipeline counts what each rule decided (no metric does: a label per rule
//! on every event's counter would cost more than the one add the pipeline makes), since
//! it was built; what the config before decided is kept as `rulesBefore`, for the gate
//! `quietRules`.
//!
//! The node agent runs one pipeline per pod under one set of metrics, summed over its
//! pods: its trackers ([`Tracker::start_in_pipeline`]) take events and drops from the
//! pod's pipeline (the sum of its per-rule counts, its drop count) and carry no per-sink
//! counts, which only the metrics have.

use std::{collections::BTreeMap, sync::atomic::Ordering, time::Duration};

use servicelog_api::{
    rules::DropReason,
    wire::{Health, SinkHealth},
};

use crate::{
    metrics::{DropLabels, Metrics, SinkDropLabels, SinkLabels, SourceLabels},
    pipeline::shadow::RuleCounts,
    topology::Running,
};

/// How often a canary's record is refreshed with its counters, at most.
pub const INTERVAL: Duration = Duration::from_secs(5);

const DROP_REASONS: [DropReason; 4] = [
    DropReason::Rule,
    DropReason::Sampled,
    DropReason::RateLimited,
    DropReason::NoRoute,
];

/// The metrics' values that concern one running config.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Counters {
    events: u64,
    dropped: u64,
    sinks: BTreeMap<String, SinkHealth>,
}

impl Counters {
    fn read(metrics: &Metrics, running: &Running) -> Self {
        let router = &running.pipeline.router;
        let events = router
            .source_names()
            .iter()
            .filter_map(|source| {
                metrics.events_in.get(&SourceLabels {
                    source: source.clone(),
                })
            })
            .map(|c| c.get())
            .sum();
        let dropped = router
            .rule_names()
            .iter()
            .map(String::as_str)
            .chain(["default"])
            .flat_map(|rule| {
                DROP_REASONS
                    .iter()
                    .map(move |reason| (rule, reason.as_str()))
            })
            .filter_map(|(rule, reason)| {
                metrics.events_dropped.get(&DropLabels {
                    rule: rule.to_owned(),
                    reason: reason.to_owned(),
                })
            })
            .map(|c| c.get())
            .sum();
        let sinks = router
            .sink_names()
            .iter()
            .map(|sink| {
                let delivered = metrics
                    .events_out
                    .get(&SinkLabels { sink: sink.clone() })
                    .map_or(0, |c| c.get());
                let rejected = metrics
                    .sink_dropped
                    .get(&SinkDropLabels {
                        sink: sink.clone(),
                        reason: "rejected".into(),
                    })
                    .map_or(0, |c| c.get());
                (
                    sink.clone(),
                    SinkHealth {
                        delivered,
                        rejected,
                    },
                )
            })
            .collect();
        Self {
            events,
            dropped,
            sinks,
        }
    }

    fn since(&self, base: &Self) -> (u64, u64, BTreeMap<String, SinkHealth>) {
        let sinks = self
            .sinks
            .iter()
            .map(|(name, now)| {
                let then = base.sinks.get(name).copied().unwrap_or_default();
                (
                    name.clone(),
                    SinkHealth {
                        delivered: now.delivered.saturating_sub(then.delivered),
                        rejected: now.rejected.saturating_sub(then.rejected),
                    },
                )
            })
            .collect();
        (
            self.events.saturating_sub(base.events),
            self.dropped.saturating_sub(base.dropped),
            sinks,
        )
    }
}

/// The counters of the config in force since it was swapped in.
#[derive(Clone, Debug)]
pub struct Tracker {
    hash: String,
    /// The metrics' values at the swap; `None`: counted by the pipeline since it was
    /// built (see [`Tracker::start_in_pipeline`]).
    base: Option<Counters>,
    /// Per sink, what the config before delivered while it ran here.
    before: BTreeMap<String, u64>,
    /// The per-rule counts of the pipeline it started with: the next tracker's
    /// `rulesBefore`.
    rules: std::sync::Arc<RuleCounts>,
    /// Per rule, what the config before decided while it ran here.
    rules_before: BTreeMap<String, u64>,
}

impl Tracker {
    /// Starts counting for `running`, just swapped in; `previous` counted the config
    /// before it.
    pub fn start(metrics: &Metrics, running: &Running, previous: Option<&Tracker>) -> Self {
        let base = Counters::read(metrics, running);
        let before = previous
            .and_then(|p| p.base.as_ref())
            .map(|then| {
                let now = Counters {
                    sinks: base.sinks.clone(),
                    ..Counters::default()
                };
                let (_, _, sinks) = now.since(then);
                sinks
                    .into_iter()
                    .filter(|(name, _)| then.sinks.contains_key(name))
                    .map(|(name, s)| (name, s.delivered))
                    .collect()
            })
            .unwrap_or_default();
        Self {
            base: Some(base),
            before,
            ..Self::start_in_pipeline(running, previous)
        }
    }

    /// Starts counting for `running`, just swapped in, from its own pipeline's counts
    /// rather than the process's metrics: for the node agent, whose metrics sum all its
    /// pods. Its health has no per-sink counts.
    pub fn start_in_pipeline(running: &Running, previous: Option<&Tracker>) -> Self {
        Self {
            hash: running.hash.clone(),
            base: None,
            before: BTreeMap::new(),
            rules: running.pipeline.matched.clone(),
            rules_before: previous.map(|p| p.rules.snapshot()).unwrap_or_default(),
        }
    }

    pub fn hash(&self) -> &str {
        &self.hash
    }

    /// What `running` (the config this tracker started with) did since.
    pub fn health(&self, metrics: &Metrics, running: &Running) -> Health {
        let rules = running.pipeline.matched.snapshot();
        let (events, dropped, sinks) = match &self.base {
            Some(base) => Counters::read(metrics, running).since(base),
            None => (
                rules.values().sum(),
                running.pipeline.dropped.load(Ordering::Relaxed),
                BTreeMap::new(),
            ),
        };
        Health {
            events,
            dropped,
            sinks,
            sinks_before: self.before.clone(),
            rules,
            rules_before: self.rules_before.clone(),
            preview: None,
        }
    }

    /// The health a record routing with `hash` carries: on a canary, or on any pod while a
    /// preview runs in shadow (with its per-rule counts); else none.
    pub fn report(
        &self,
        metrics: &Metrics,
        running: &Running,
        hash: &str,
        canary: bool,
    ) -> Option<Health> {
        let shadow = running.pipeline.shadow.load_full();
        if running.hash != hash || self.hash != hash || !(canary || shadow.is_some()) {
            return None;
        }
        let mut health = self.health(metrics, running);
        health.preview = shadow.map(|s| s.preview());
        Some(health)
    }
}
