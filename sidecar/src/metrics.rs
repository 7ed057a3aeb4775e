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
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
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

/// `servicelog_build_info`'s labels, the same in both binaries.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    pub binary: String,
    pub version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConfigLabels {
    /// The config hash (`sha256:…`) the ServiceLog's status shows as `configHash`.
    pub hash: String,
}

/// A histogram family's constructor.
type NewHistogram = fn() -> Histogram;

/// Request (or write-and-flush) durations: 1 ms to about 33 s, doubling.
fn request_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
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
    /// Lines that did not parse in their source's format (routed as text events).
    pub lines_unparsed: Family<SourceLabels, Counter>,
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
    /// Bytes of lines read, by source.
    pub source_read_bytes: Family<SourceLabels, Counter>,
    /// Bytes of encoded batches a sink is done with — delivered, or refused for good —
    /// (the sink's own framing, compression and protocol overhead not counted), by sink.
    pub sink_sent_bytes: Family<SinkLabels, Counter>,
    /// How long one delivery attempt took (a request, or a write and flush), by sink.
    pub sink_request_duration: Family<SinkLabels, Histogram, NewHistogram>,
    /// Most bytes a sink's buffer holds.
    pub buffer_capacity_bytes: Family<SinkLabels, Gauge>,
    /// 1 for the hash of the config in force.
    pub config_info: Family<ConfigLabels, Gauge>,
    /// When the config in force was applied (Unix seconds).
    pub config_applied_timestamp: Gauge,
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
        let lines_unparsed = Family::<SourceLabels, Counter>::default();
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
        let build_info = Family::<BuildLabels, Gauge>::default();
        build_info
            .get_or_create(&BuildLabels {
                binary: "sidecar".into(),
                version: env!("CARGO_PKG_VERSION").into(),
            })
            .set(1);
        let source_read_bytes = Family::<SourceLabels, Counter>::default();
        let sink_sent_bytes = Family::<SinkLabels, Counter>::default();
        let sink_request_duration =
            Family::<SinkLabels, Histogram, NewHistogram>::new_with_constructor(
                request_histogram as NewHistogram,
            );
        let buffer_capacity_bytes = Family::<SinkLabels, Gauge>::default();
        let config_info = Family::<ConfigLabels, Gauge>::default();
        let config_applied_timestamp = Gauge::default();
        registry.register(
            "servicelog_build_info",
            "1, labelled with the binary (operator, sidecar) and its version",
            build_info,
        );
        registry.register(
            "servicelog_source_read_bytes",
            "Bytes of lines read (newlines included), by source",
            source_read_bytes.clone(),
        );
        registry.register(
            "servicelog_sink_sent_bytes",
            "Bytes of encoded events a sink is done with, by sink (before compression, without protocol framing): delivered, or refused for good by the receiver (see servicelog_sink_dropped_total{reason=\"rejected\"})",
            sink_sent_bytes.clone(),
        );
        registry.register(
            "servicelog_sink_request_duration_seconds",
            "Duration of one delivery attempt, by sink: an HTTP, OTLP or Kafka request, or a file or stdout batch written and flushed (its retries included)",
            sink_request_duration.clone(),
        );
        registry.register(
            "servicelog_buffer_capacity_bytes",
            "Most bytes a sink's buffer holds (its maxBytes), beside servicelog_buffer_bytes",
            buffer_capacity_bytes.clone(),
        );
        registry.register(
            "servicelog_config_info",
            "1, labelled with the hash of the config in force (the ServiceLog status's configHash)",
            config_info.clone(),
        );
        registry.register(
            "servicelog_config_applied_timestamp_seconds",
            "When the config in force was applied, in Unix seconds",
            config_applied_timestamp.clone(),
        );
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
            "servicelog_lines_unparsed",
            "Lines of json, logfmt and regex sources that did not parse in that format (a regex that did not match), routed as text events {\"message\": <line>}, by source",
            lines_unparsed.clone(),
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
            lines_unparsed,
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
            source_read_bytes,
            sink_sent_bytes,
            sink_request_duration,
            buffer_capacity_bytes,
            config_info,
            config_applied_timestamp,
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

    /// The counter of `source`'s lines that did not parse in its format.
    pub fn unparsed_counter(&self, source: &str) -> Counter {
        self.lines_unparsed
            .get_or_create(&SourceLabels {
                source: source.to_owned(),
            })
            .clone()
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

    /// The counter of bytes `source` read.
    pub fn source_bytes_counter(&self, source: &str) -> Counter {
        self.source_read_bytes
            .get_or_create(&SourceLabels {
                source: source.to_owned(),
            })
            .clone()
    }

    /// The counter of bytes `sink` delivered.
    pub fn sent_bytes_counter(&self, sink: &str) -> Counter {
        self.sink_sent_bytes
            .get_or_create(&SinkLabels {
                sink: sink.to_owned(),
            })
            .clone()
    }

    /// The histogram of `sink`'s delivery attempts.
    pub fn request_duration(&self, sink: &str) -> Histogram {
        self.sink_request_duration
            .get_or_create(&SinkLabels {
                sink: sink.to_owned(),
            })
            .clone()
    }

    pub fn set_buffer_capacity(&self, sink: &str, bytes: u64) {
        self.buffer_capacity_bytes
            .get_or_create(&SinkLabels {
                sink: sink.to_owned(),
            })
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    /// Records the config `hash` as the one in force, applied now.
    pub fn config_in_force(&self, hash: &str) {
        self.config_info.clear();
        self.config_info
            .get_or_create(&ConfigLabels {
                hash: hash.to_owned(),
            })
            .set(1);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.config_applied_timestamp
            .set(i64::try_from(now).unwrap_or(i64::MAX));
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
        m.sent_bytes_counter("alerts").inc_by(120);
        m.source_bytes_counter("app").inc_by(300);
        m.request_duration("alerts").observe(0.003);
        m.set_buffer_capacity("alerts", 2 << 20);
        m.config_in_force("sha256:old");
        m.config_in_force("sha256:abc");
        let text = m.render();
        assert!(
            !text.contains("sha256:old"),
            "a replaced config's hash stays:\n{text}"
        );
        for want in [
            r#"servicelog_events_in_total{source="app"} 3"#,
            r#"servicelog_events_out_total{sink="alerts"} 1"#,
            r#"servicelog_events_dropped_total{rule="drop-debug",reason="rule"} 2"#,
            r#"servicelog_config_applied_total{result="ok"} 1"#,
            "servicelog_config_generation 7",
            "servicelog_zookeeper_connected 1",
            r#"servicelog_syslog_connections_closed_total{source="sys",reason="evicted"} 1"#,
            &format!(
                r#"servicelog_build_info{{binary="sidecar",version="{}"}} 1"#,
                env!("CARGO_PKG_VERSION")
            ),
            r#"servicelog_sink_sent_bytes_total{sink="alerts"} 120"#,
            r#"servicelog_source_read_bytes_total{source="app"} 300"#,
            r#"servicelog_sink_request_duration_seconds_bucket{le="0.004",sink="alerts"} 1"#,
            r#"servicelog_buffer_capacity_bytes{sink="alerts"} 2097152"#,
            r#"servicelog_config_info{hash="sha256:abc"} 1"#,
            "servicelog_config_applied_timestamp_seconds ",
        ] {
            assert!(text.contains(want), "metrics text lacks {want:?}:\n{text}");
        }
    }
}
