//! The sidecar's Prometheus metrics, named as DESIGN.md promises.
//!
//! The hot path never touches a metric per line: the file reader counts into locals for a
//! whole chunk and adds them here once, and sinks add a batch's count after writing it.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    pub source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SinkLabels {
    pub sink: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DropLabels {
    /// The deciding rule, or `default` for events no rule took.
    pub rule: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SinkDropLabels {
    pub sink: String,
    /// `buffer_full` (a `dropNewest` buffer was full) or `rejected` (the receiver refused
    /// the events for good, e.g. HTTP 400).
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FileRefusedLabels {
    pub source: String,
    /// `outside_directory`: the path is a symlink (or under one) that resolves outside the
    /// directory the source's glob names.
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectionClosedLabels {
    pub source: String,
    /// `frame_timeout` (a frame begun and not finished in time), `idle_timeout` (nothing
    /// sent between frames for too long) or `evicted` (the longest idle, to make room for
    /// a new connection at the cap).
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: String,
}

/// Every metric of the process, cheap to clone (each is an `Arc` inside).
#[derive(Clone, Debug)]
pub struct Metrics {
    registry: Arc<Registry>,
    pub events_in: Family<SourceLabels, Counter>,
    /// Syslog frames skipped as not syslog, by source.
    pub syslog_malformed: Family<SourceLabels, Counter>,
    /// Files a glob matched that were not read, by source and reason.
    pub files_refused: Family<FileRefusedLabels, Counter>,
    /// Lines (or syslog messages) cut at `maxLineBytes`, by source.
    pub lines_truncated: Family<SourceLabels, Counter>,
    /// Syslog TCP connections the sidecar closed, by source and reason.
    pub syslog_connections_closed: Family<ConnectionClosedLabels, Counter>,
    pub events_out: Family<SinkLabels, Counter>,
    pub events_dropped: Family<DropLabels, Counter>,
    pub config_applied: Family<ResultLabels, Counter>,
    /// Events a sink took but did not deliver, by reason.
    pub sink_dropped: Family<SinkDropLabels, Counter>,
    /// Failed delivery attempts that will be retried.
    pub sink_retries: Family<SinkLabels, Counter>,
    /// Bytes queued in a sink's buffer.
    pub buffer_bytes: Family<SinkLabels, Gauge>,
    /// Failed writes of a batch (a file sink, stdout, a disk buffer's segment), retried.
    pub sink_write_errors: Family<SinkLabels, Counter>,
    /// Disk buffer records found corrupt on reading, skipped.
    pub buffer_records_corrupt: Family<SinkLabels, Counter>,
    pub config_generation: Gauge,
    pub zookeeper_connected: Gauge,
    ready: Arc<AtomicBool>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let events_in = Family::<SourceLabels, Counter>::default();
        let syslog_malformed = Family::<SourceLabels, Counter>::default();
        let files_refused = Family::<FileRefusedLabels, Counter>::default();
        let lines_truncated = Family::<SourceLabels, Counter>::default();
        let syslog_connections_closed = Family::<ConnectionClosedLabels, Counter>::default();
        let events_out = Family::<SinkLabels, Counter>::default();
        let events_dropped = Family::<DropLabels, Counter>::default();
        let config_applied = Family::<ResultLabels, Counter>::default();
        let sink_dropped = Family::<SinkDropLabels, Counter>::default();
        let sink_retries = Family::<SinkLabels, Counter>::default();
        let buffer_bytes = Family::<SinkLabels, Gauge>::default();
        let sink_write_errors = Family::<SinkLabels, Counter>::default();
        let buffer_records_corrupt = Family::<SinkLabels, Counter>::default();
        let config_generation = Gauge::default();
        let zookeeper_connected = Gauge::default();
        registry.register(
            "servicelog_events_in",
            "Lines read, by source",
            events_in.clone(),
        );
        registry.register(
            "servicelog_syslog_malformed",
            "Syslog frames skipped because they were not syslog messages (bad framing, no <PRI>), by source",
            syslog_malformed.clone(),
        );
        registry.register(
            "servicelog_files_refused",
            "Files a source's glob matched that were not read (a symlink out of the source's directory), by source and reason; each counted once while it stays",
            files_refused.clone(),
        );
        registry.register(
            "servicelog_lines_truncated",
            "Lines (or syslog messages) longer than their source's maxLineBytes, routed cut to that size, by source",
            lines_truncated.clone(),
        );
        registry.register(
            "servicelog_syslog_connections_closed",
            "Syslog TCP connections closed by the sidecar, by source and reason (frame_timeout, idle_timeout, evicted)",
            syslog_connections_closed.clone(),
        );
        registry.register(
            "servicelog_events_out",
            "Events written and flushed, by sink",
            events_out.clone(),
        );
        registry.register(
            "servicelog_events_dropped",
            "Events no sink got, by deciding rule and reason",
            events_dropped.clone(),
        );
        registry.register(
            "servicelog_config_applied",
            "Configs applied (ok) or rejected (error)",
            config_applied.clone(),
        );
        registry.register(
            "servicelog_sink_dropped",
            "Events a sink took but did not deliver: its buffer was full (dropNewest) or the receiver rejected them for good",
            sink_dropped.clone(),
        );
        registry.register(
            "servicelog_sink_retries",
            "Failed deliveries that are retried, by sink",
            sink_retries.clone(),
        );
        registry.register(
            "servicelog_buffer_bytes",
            "Bytes queued in a sink's buffer",
            buffer_bytes.clone(),
        );
        registry.register(
            "servicelog_sink_write_errors",
            "Failed writes of a batch to a file sink, stdout or a disk buffer, by sink; each is retried with backoff",
            sink_write_errors.clone(),
        );
        registry.register(
            "servicelog_buffer_records_corrupt",
            "Disk buffer records that failed their checksum (or a run of bytes that was no record), skipped on reading, by sink",
            buffer_records_corrupt.clone(),
        );
        registry.register(
            "servicelog_config_generation",
            "Generation of the config in force",
            config_generation.clone(),
        );
        registry.register(
            "servicelog_zookeeper_connected",
            "1 while the ZooKeeper session is connected",
            zookeeper_connected.clone(),
        );
        Self {
            registry: Arc::new(registry),
            events_in,
            syslog_malformed,
            files_refused,
            lines_truncated,
            syslog_connections_closed,
            events_out,
            events_dropped,
            config_applied,
            sink_dropped,
            sink_retries,
            buffer_bytes,
            sink_write_errors,
            buffer_records_corrupt,
            config_generation,
            zookeeper_connected,
            ready: Arc::default(),
        }
    }

    /// The exposition text for `GET /metrics`.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }

    pub fn source_counter(&self, source: &str) -> Counter {
        self.events_in
            .get_or_create(&SourceLabels {
                source: source.to_owned(),
            })
            .clone()
    }

    pub fn syslog_malformed(&self, source: &str, n: u64) {
        self.syslog_malformed
            .get_or_create(&SourceLabels {
                source: source.to_owned(),
            })
            .inc_by(n);
    }

    /// One line of `source` cut at `maxLineBytes`.
    pub fn line_truncated(&self, source: &str) {
        self.lines_truncated
            .get_or_create(&SourceLabels {
                source: source.to_owned(),
            })
            .inc();
    }

    /// Counts a syslog connection of `source` the sidecar closed, for `reason`.
    pub fn syslog_connection_closed(&self, source: &str, reason: &str) {
        self.syslog_connections_closed
            .get_or_create(&ConnectionClosedLabels {
                source: source.to_owned(),
                reason: reason.to_owned(),
            })
            .inc();
    }

    pub fn file_refused(&self, source: &str, reason: &str) {
        self.files_refused
            .get_or_create(&FileRefusedLabels {
                source: source.to_owned(),
                reason: reason.to_owned(),
            })
            .inc();
    }

    pub fn sink_counter(&self, sink: &str) -> Counter {
        self.events_out
            .get_or_create(&SinkLabels {
                sink: sink.to_owned(),
            })
            .clone()
    }

    pub fn dropped(&self, rule: &str, reason: &str, n: u64) {
        self.events_dropped
            .get_or_create(&DropLabels {
                rule: rule.to_owned(),
                reason: reason.to_owned(),
            })
            .inc_by(n);
    }

    /// Counts `n` events sink `sink` took and gave up on, for `reason`.
    pub fn sink_dropped(&self, sink: &str, reason: &str, n: u64) {
        self.sink_dropped
            .get_or_create(&SinkDropLabels {
                sink: sink.to_owned(),
                reason: reason.to_owned(),
            })
            .inc_by(n);
    }

    pub fn sink_retry(&self, sink: &str) {
        self.sink_retries
            .get_or_create(&SinkLabels {
                sink: sink.to_owned(),
            })
            .inc();
    }

    pub fn sink_write_error(&self, sink: &str) {
        self.sink_write_errors
            .get_or_create(&SinkLabels {
                sink: sink.to_owned(),
            })
            .inc();
    }

    pub fn buffer_record_corrupt(&self, sink: &str) {
        self.buffer_records_corrupt
            .get_or_create(&SinkLabels {
                sink: sink.to_owned(),
            })
            .inc();
    }

    pub fn buffer_gauge(&self, sink: &str) -> Gauge {
        self.buffer_bytes
            .get_or_create(&SinkLabels {
                sink: sink.to_owned(),
            })
            .clone()
    }

    pub fn config_result(&self, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.config_applied
            .get_or_create(&ResultLabels {
                result: result.to_owned(),
            })
            .inc();
    }

    /// Ready once a config is in force, until shutdown begins.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }
}

impl servicelog_api::serve::Probe for Metrics {
    fn metrics(&self) -> String {
        self.render()
    }

    fn ready(&self) -> Result<(), &'static str> {
        if self.is_ready() {
            Ok(())
        } else {
            Err("no config in force")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_documented_names() {
        let m = Metrics::new();
        m.source_counter("app").inc_by(3);
        m.sink_counter("alerts").inc();
        m.dropped("drop-debug", "rule", 2);
        m.config_result(true);
        m.config_generation.set(7);
        m.zookeeper_connected.set(1);
        m.syslog_connection_closed("sys", "evicted");
        let text = m.render();
        for want in [
            r#"servicelog_events_in_total{source="app"} 3"#,
            r#"servicelog_events_out_total{sink="alerts"} 1"#,
            r#"servicelog_events_dropped_total{rule="drop-debug",reason="rule"} 2"#,
            r#"servicelog_config_applied_total{result="ok"} 1"#,
            "servicelog_config_generation 7",
            "servicelog_zookeeper_connected 1",
            r#"servicelog_syslog_connections_closed_total{source="sys",reason="evicted"} 1"#,
        ] {
            assert!(text.contains(want), "metrics text lacks {want:?}:\n{text}");
        }
    }
}
