//! Prometheus metrics of the operator, served with `/healthz` and `/readyz` by the server
//! both binaries share (`servicelog_api::serve`).

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

/// `servicelog_build_info`'s labels, the same in both binaries.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    binary: &'static str,
    version: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConditionLabels {
    /// Not `namespace`: Prometheus sets that target label to the operator pod's
    /// namespace, which would rename this one to `exported_namespace`.
    servicelog_namespace: String,
    servicelog: String,
    /// `Valid`, `Published` or `Ready`.
    condition: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PodsLabels {
    servicelog_namespace: String,
    servicelog: String,
    /// `matched`, `injected` or `applied`, as in the status' `pods`.
    state: &'static str,
}

/// The operator's metrics (names from DESIGN.md).
pub struct Metrics {
    registry: Registry,
    reconcile_total: Family<ResultLabel, Counter>,
    reconcile_duration: Histogram,
    webhook_duration: Family<ResultLabel, Histogram>,
    zookeeper_connected: Gauge,
    leader: Gauge,
    events_dropped: Counter,
    /// The leader's view of each ServiceLog's status, so dashboards and alerts need no
    /// kube-state-metrics configuration for a custom resource. Set by the reconcile that
    /// plans the status, removed with the resource.
    servicelog_condition: Family<ConditionLabels, Gauge>,
    servicelog_pods: Family<PodsLabels, Gauge>,
    ready: AtomicBool,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let build_info = Family::<BuildLabels, Gauge>::default();
        build_info
            .get_or_create(&BuildLabels {
                binary: "operator",
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        registry.register(
            "servicelog_build_info",
            "1, labelled with the binary (operator, sidecar) and its version",
            build_info,
        );
        let reconcile_total = Family::<ResultLabel, Counter>::default();
        registry.register(
            "servicelog_reconcile",
            "ServiceLog reconciles by result (ok or an error category)",
            reconcile_total.clone(),
        );
        let reconcile_duration = Histogram::new([
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        ]);
        registry.register(
            "servicelog_reconcile_duration_seconds",
            "Time of one reconcile",
            reconcile_duration.clone(),
        );
        let webhook_duration = Family::<ResultLabel, Histogram>::new_with_constructor(|| {
            Histogram::new([0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25])
        });
        registry.register(
            "servicelog_webhook_duration_seconds",
            "Time to answer one admission review",
            webhook_duration.clone(),
        );
        let zookeeper_connected = Gauge::default();
        registry.register(
            "servicelog_zookeeper_connected",
            "Whether the operator's ZooKeeper session is connected",
            zookeeper_connected.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "servicelog_leader",
            "Whether this replica holds the lease and reconciles",
            leader.clone(),
        );
        let events_dropped = Counter::default();
        registry.register(
            "servicelog_kube_events_dropped",
            "Kubernetes Events not published because the API server fell behind",
            events_dropped.clone(),
        );
        let servicelog_condition = Family::<ConditionLabels, Gauge>::default();
        registry.register(
            "servicelog_servicelog_condition",
            "1 while the ServiceLog's condition (Valid, Published, Ready) is True, else 0; served by the leader",
            servicelog_condition.clone(),
        );
        let servicelog_pods = Family::<PodsLabels, Gauge>::default();
        registry.register(
            "servicelog_servicelog_pods",
            "Pods of a ServiceLog by state: matched by its selector, injected with its sidecar, applied (acking its configHash); served by the leader",
            servicelog_pods.clone(),
        );
        Self {
            registry,
            reconcile_total,
            reconcile_duration,
            webhook_duration,
            zookeeper_connected,
            leader,
            events_dropped,
            servicelog_condition,
            servicelog_pods,
            ready: AtomicBool::new(false),
        }
    }

    pub fn reconciled(&self, result: &'static str, took: Duration) {
        self.reconcile_total
            .get_or_create(&ResultLabel { result })
            .inc();
        self.reconcile_duration.observe(took.as_secs_f64());
    }

    pub fn webhook_answered(&self, result: &'static str, took: Duration) {
        self.webhook_duration
            .get_or_create(&ResultLabel { result })
            .observe(took.as_secs_f64());
    }

    pub fn event_dropped(&self) {
        self.events_dropped.inc();
    }

    pub fn set_zookeeper_connected(&self, connected: bool) {
        self.zookeeper_connected.set(i64::from(connected));
    }

    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    /// Records the conditions (`(type, ok)`) and pod counts a reconcile planned for one
    /// ServiceLog.
    pub fn servicelog_status(
        &self,
        namespace: &str,
        servicelog: &str,
        conditions: &[(&'static str, bool)],
        pods: Option<&servicelog_api::v1alpha1::PodCounts>,
    ) {
        for (condition, ok) in conditions {
            self.servicelog_condition
                .get_or_create(&ConditionLabels {
                    servicelog_namespace: namespace.to_owned(),
                    servicelog: servicelog.to_owned(),
                    condition,
                })
                .set(i64::from(*ok));
        }
        if let Some(pods) = pods {
            for (state, n) in [
                ("matched", pods.matched),
                ("injected", pods.injected),
                ("applied", pods.applied),
            ] {
                self.servicelog_pods
                    .get_or_create(&PodsLabels {
                        servicelog_namespace: namespace.to_owned(),
                        servicelog: servicelog.to_owned(),
                        state,
                    })
                    .set(i64::from(n));
            }
        }
    }

    /// Drops a deleted ServiceLog's series.
    pub fn forget_servicelog(&self, namespace: &str, servicelog: &str) {
        for condition in ["Valid", "Published", "Ready"] {
            self.servicelog_condition.remove(&ConditionLabels {
                servicelog_namespace: namespace.to_owned(),
                servicelog: servicelog.to_owned(),
                condition,
            });
        }
        for state in ["matched", "injected", "applied"] {
            self.servicelog_pods.remove(&PodsLabels {
                servicelog_namespace: namespace.to_owned(),
                servicelog: servicelog.to_owned(),
                state,
            });
        }
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    fn encode(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl servicelog_api::serve::Probe for Metrics {
    fn metrics(&self) -> String {
        self.encode()
    }

    fn ready(&self) -> Result<(), &'static str> {
        if self.ready.load(Ordering::Relaxed) {
            Ok(())
        } else {
            Err("starting")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_use_the_documented_names() {
        let m = Metrics::new();
        m.reconciled("ok", Duration::from_millis(3));
        m.webhook_answered("allowed", Duration::from_millis(1));
        let text = m.encode();
        for name in [
            "servicelog_reconcile_total{result=\"ok\"} 1",
            "servicelog_reconcile_duration_seconds_count 1",
            "servicelog_webhook_duration_seconds_count{result=\"allowed\"} 1",
            "servicelog_zookeeper_connected",
            &format!(
                "servicelog_build_info{{binary=\"operator\",version=\"{}\"}} 1",
                env!("CARGO_PKG_VERSION")
            ),
        ] {
            assert!(text.contains(name), "metrics lack {name}:\n{text}");
        }
    }

    #[test]
    fn given_a_planned_status_when_rendered_then_conditions_and_pods_are_series_until_forgotten() {
        let m = Metrics::new();
        let pods = servicelog_api::v1alpha1::PodCounts {
            matched: 3,
            injected: 2,
            applied: 1,
            summary: "1/2".into(),
        };
        m.servicelog_status(
            "team",
            "app",
            &[("Valid", true), ("Ready", false)],
            Some(&pods),
        );
        let text = m.encode();
        for want in [
            r#"servicelog_servicelog_condition{servicelog_namespace="team",servicelog="app",condition="Valid"} 1"#,
            r#"servicelog_servicelog_condition{servicelog_namespace="team",servicelog="app",condition="Ready"} 0"#,
            r#"servicelog_servicelog_pods{servicelog_namespace="team",servicelog="app",state="injected"} 2"#,
            r#"servicelog_servicelog_pods{servicelog_namespace="team",servicelog="app",state="applied"} 1"#,
        ] {
            assert!(text.contains(want), "metrics lack {want}:\n{text}");
        }
        m.forget_servicelog("team", "app");
        let text = m.encode();
        assert!(
            !text.contains(r#"servicelog="app""#),
            "a deleted ServiceLog's series stay:\n{text}"
        );
    }

    #[test]
    fn readyz_follows_readiness() {
        use servicelog_api::serve::Probe;
        let m = Metrics::new();
        assert_eq!(m.ready(), Err("starting"));
        m.set_ready(true);
        assert_eq!(m.ready(), Ok(()));
    }
}
