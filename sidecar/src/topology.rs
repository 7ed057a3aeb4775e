//! The topology: the config in force, made of a pipeline and the sources that feed it, and
//! how a new config replaces it.
//!
//! [`Topology::apply`] compiles a new config aside and, only if it compiles, its sinks
//! start and its syslog ports bind, swaps it in. Sinks whose definition did not change are
//! carried over running (same file handle, same queue), and so are syslog sockets whose
//! port and protocol did not change; the others are started new, and the sinks left behind
//! end once the last run routed with the old pipeline has reached them. The sinks left
//! behind are retired: one that cannot write (its path is the broken thing the new config
//! fixes) gives up [`sinks::buffer::RETIRE_DEADLINE`] later and fails what it holds, so
//! the file reader reads those lines again into the sinks now in force.
//!
//! Each source gets its own view of the config in force — the [`Pipeline`] together with
//! what that source reads under it ([`FileSources`], [`SyslogSources`]) — and takes it
//! fresh for each run it routes, so a run is routed entirely by the rules it started with
//! and lines are never routed twice or skipped across a swap.
//!
//! A swap is in two steps: [`Topology::swap`] puts the config in force (every run read
//! from then on is routed by it), and the [`Swapped`] it returns tells the reader threads
//! to look at it (new file paths, new syslog sockets) when announced or dropped. The
//! ZooKeeper config acks in between, so that waking those threads does not compete with
//! the ack for the CPU.
//!
//! This module is above the sources, the pipeline and the sinks: it is the one place that
//! names all three.

use std::{
    collections::{HashMap, HashSet},
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
        mpsc::Sender,
    },
};

use arc_swap::ArcSwapOption;
use servicelog_api::{
    Router, ValidationErrors,
    v1alpha1::{LogLevel, Sink, StdoutSink},
    wire::Envelope,
};

use crate::{
    metrics::Metrics,
    pipeline::{Feed, Origin, Pipeline},
    sinks::{self, SinkError, SinkHandle, SinkShared},
    sources::{
        cri::PodLogs,
        file::{FileSourceSpec, FileSources, MultilineError},
        syslog::{BindError, Listener, SyslogSourceSpec, SyslogSources},
    },
};

/// The sinks that `containerLogs` events can reach: `defaultTo` and the sinks of every rule
/// whose `when.source` is absent or names a `containerLogs` source. Conservative: a rule
/// whose `any` branches name only other sources still counts.
fn reached_by_container_logs(config: &Envelope) -> HashSet<&str> {
    let spec = &config.spec;
    let container_logs: HashSet<&str> = spec
        .sources
        .iter()
        .filter(|s| s.container_logs.is_some())
        .map(|s| s.name.as_str())
        .collect();
    if container_logs.is_empty() {
        return HashSet::new();
    }
    let mut reached: HashSet<&str> = spec.default_to.iter().map(String::as_str).collect();
    for rule in &spec.rules {
        let source = rule.when.as_ref().and_then(|w| w.source.as_deref());
        if source.is_none_or(|s| container_logs.contains(s)) {
            reached.extend(rule.to.iter().flatten().map(String::as_str));
        }
    }
    reached
}

/// One config, running: its pipeline and what its sources read.
#[derive(Debug)]
pub struct Running {
    pub pipeline: Arc<Pipeline>,
    pub files: Arc<FileSources>,
    pub syslog: Arc<SyslogSources>,
    pub hash: String,
    pub generation: i64,
}

/// Why a config was not applied. The text goes to logs and to the instance znode.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("the config is invalid:\n{0}")]
    Invalid(#[from] ValidationErrors),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error(transparent)]
    Multiline(#[from] MultilineError),
    /// Node agent only: the agent runs as root with the node's pod logs and every pod's
    /// state dir at hand, so a path chosen by a tenant is never opened by it.
    #[error(
        "spec.sinks[{index}].file: a file sink cannot be served by the node agent (it runs as root on the node); sink {name:?} is reached by containerLogs events: route them to a network sink, or read the files with the pod's sidecar"
    )]
    AgentFileSink { index: usize, name: String },
}

/// A config put in force by [`Topology::swap`] that the file reader and the syslog
/// listeners have not been told about yet. They are told by [`Swapped::announce`] or, so
/// that they are never left out, when this is dropped.
#[must_use = "the readers look at the new pipeline once this is announced or dropped"]
pub struct Swapped {
    running: Arc<Running>,
    changes: Arc<tokio::sync::watch::Sender<u64>>,
    wake: Sender<()>,
}

impl Swapped {
    pub fn announce(self) {
        drop(self);
    }
}

impl Drop for Swapped {
    fn drop(&mut self) {
        let r = &self.running;
        tracing::info!(hash = %r.hash, generation = r.generation, sinks = ?r.pipeline.router.sink_names(), "config applied");
        self.changes.send_replace(r.pipeline.id);
        let _ = self.wake.send(());
    }
}

/// The config in force and what is needed to build the next one.
#[derive(Clone)]
pub struct Topology {
    running: Arc<ArcSwapOption<Running>>,
    /// The views of it the file reader and the syslog router take.
    files: Arc<ArcSwapOption<FileSources>>,
    syslog: Arc<ArcSwapOption<SyslogSources>>,
    shared: Arc<SinkShared>,
    metrics: Metrics,
    origin: Origin,
    wake: Sender<()>,
    /// The id of the pipeline in force (0: none), for the syslog listeners to follow.
    changes: Arc<tokio::sync::watch::Sender<u64>>,
    next_id: Arc<AtomicU64>,
    /// The pod's container log files, in the node agent; a sidecar has none and does not
    /// read `containerLogs` sources.
    pod_logs: Option<Arc<PodLogs>>,
}

impl Topology {
    /// `state_dir` holds the sinks' disk buffers, `credentials_dir` the http sinks'
    /// mounted Secrets; `wake` wakes the file reader.
    pub fn new(
        metrics: Metrics,
        state_dir: &Path,
        credentials_dir: &Path,
        origin: Origin,
        wake: Sender<()>,
    ) -> Self {
        Self {
            running: Arc::default(),
            files: Arc::default(),
            syslog: Arc::default(),
            shared: Arc::new(SinkShared::new(
                state_dir.to_owned(),
                credentials_dir.to_owned(),
            )),
            metrics,
            origin,
            wake,
            changes: Arc::new(tokio::sync::watch::Sender::new(0)),
            next_id: Arc::new(AtomicU64::new(1)),
            pod_logs: None,
        }
    }

    /// For the node agent: `containerLogs` sources read `logs`.
    pub fn with_pod_logs(mut self, logs: PodLogs) -> Self {
        self.pod_logs = Some(Arc::new(logs));
        self
    }

    /// Where the file reader takes its sources and pipeline for each chunk.
    pub fn files(&self) -> Arc<ArcSwapOption<FileSources>> {
        self.files.clone()
    }

    /// Where the syslog router takes its sources and pipeline for each batch.
    pub fn syslog(&self) -> Arc<ArcSwapOption<SyslogSources>> {
        self.syslog.clone()
    }

    /// Changes whenever another pipeline is put in force (or none is).
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The config in force, if any.
    pub fn running(&self) -> Option<Arc<Running>> {
        self.running.load_full()
    }

    /// Hash of the config in force, if any.
    pub fn hash(&self) -> Option<String> {
        self.running.load().as_ref().map(|r| r.hash.clone())
    }

    /// Why sinks are not delivering now (see [`sinks::SinkErrors`]).
    pub fn sink_errors(&self) -> sinks::SinkErrors {
        self.shared.errors.clone()
    }

    /// Sink threads still running (after [`Topology::clear`], those still draining).
    pub fn sinks_running(&self) -> Vec<String> {
        self.shared.running()
    }

    /// Tells the sinks to give up on what they cannot write (past the shutdown deadline).
    pub fn abandon_sinks(&self) {
        self.shared.abandon.store(true, Ordering::Relaxed);
    }

    /// Validates, builds and swaps in `config`, and tells the readers at once; false when
    /// that config is already in force. On error the config in force stays.
    pub fn apply(&self, config: &Envelope) -> Result<bool, ApplyError> {
        let Some(swapped) = self.swap(config)? else {
            return Ok(false);
        };
        swapped.announce();
        Ok(true)
    }

    /// Validates, builds and swaps in `config`, leaving the readers to be told by the
    /// returned [`Swapped`]; `None` when that config is already in force. On error the
    /// config in force stays.
    pub fn swap(&self, config: &Envelope) -> Result<Option<Swapped>, ApplyError> {
        let old = self.running.load_full();
        if old.as_ref().is_some_and(|r| r.hash == config.hash) {
            return Ok(None);
        }
        let result = self.build(config, old.as_deref());
        self.metrics.config_result(result.is_ok());
        let running = match result {
            Ok(r) => Arc::new(r),
            Err(e) => {
                tracing::error!(hash = %config.hash, generation = config.generation, error = %e, "config rejected; the rules in force stay");
                return Err(e);
            }
        };
        // Only now do the new sinks' buffers become theirs: a config rejected above must
        // leave a disk buffer to the build in force (see `buffer::new_pending`).
        for sink in &running.pipeline.sinks {
            sink.activate();
        }
        self.metrics.config_generation.set(running.generation);
        self.metrics.config_in_force(&running.hash);
        let level = config
            .spec
            .sidecar
            .as_ref()
            .and_then(|s| s.log_level)
            .map(LogLevel::as_str);
        match servicelog_api::logging::set_level(level) {
            Ok(true) => tracing::info!(
                log_level = level.unwrap_or("the --log-level one"),
                "log level changed by the config"
            ),
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "cannot change the log level"),
        }
        tracing::debug!(hash = %running.hash, "config in force");
        self.files.store(Some(running.files.clone()));
        self.syslog.store(Some(running.syslog.clone()));
        self.running.store(Some(running.clone()));
        self.metrics.set_ready(true);
        // The sinks the new config does not carry over stop retrying within a deadline and
        // fail what they could not write, for the file reader to read it again into these.
        if let Some(old) = &old {
            for sink in &old.pipeline.sinks {
                if !running.pipeline.sinks.iter().any(|s| Arc::ptr_eq(s, sink)) {
                    sink.retire();
                }
            }
        }
        Ok(Some(Swapped {
            running,
            changes: self.changes.clone(),
            wake: self.wake.clone(),
        }))
    }

    fn build(&self, config: &Envelope, old: Option<&Running>) -> Result<Running, ApplyError> {
        let router = Router::compile(&config.spec)?;
        let mut running: HashMap<&str, &Arc<SinkHandle>> = HashMap::new();
        if let Some(old) = old {
            for s in &old.pipeline.sinks {
                running.insert(s.name.as_str(), s);
            }
        }
        let reached = self
            .pod_logs
            .as_ref()
            .map(|_| reached_by_container_logs(config));
        // The router numbers sinks in declaration order, so `sinks[i]` is sink index `i`.
        let mut sinks = Vec::with_capacity(config.spec.sinks.len());
        for (index, def) in config.spec.sinks.iter().enumerate() {
            // In the node agent a file sink is refused when containerLogs events reach it,
            // and otherwise stands in as a stdout sink that nothing is routed to (the
            // pod's sidecar serves it): the agent opens no path a tenant chose.
            let placeholder;
            let def = match &reached {
                Some(reached)
                    if def.file.is_some()
                        && !self.pod_logs.as_ref().is_some_and(|l| l.allow_file_sinks) =>
                {
                    if reached.contains(def.name.as_str()) {
                        return Err(ApplyError::AgentFileSink {
                            index,
                            name: def.name.clone(),
                        });
                    }
                    placeholder = Sink {
                        name: def.name.clone(),
                        stdout: Some(StdoutSink::default()),
                        ..Sink::default()
                    };
                    &placeholder
                }
                _ => def,
            };
            match running.get(def.name.as_str()) {
                Some(handle) if handle.def == *def => sinks.push(Arc::clone(handle)),
                // Sinks started here and not swapped in end when `sinks` is dropped.
                _ => sinks.push(sinks::build(def, &self.metrics, &self.shared)?),
            }
        }
        // Sources too, so source `index` is the router's source `index`.
        let mut files = Vec::new();
        let mut syslog = Vec::new();
        for (index, s) in config.spec.sources.iter().enumerate() {
            // The node agent reads containerLogs sources only: file and syslog sources are
            // the pod's sidecar's (as root, the agent would read any namespace's files).
            if self.pod_logs.is_some() && s.container_logs.is_none() {
                continue;
            }
            if let Some(def) = &s.file {
                files.push(FileSourceSpec::new(
                    &s.name,
                    index,
                    def,
                    s.max_line_bytes(),
                )?);
            }
            if let (Some(def), Some(logs)) = (&s.container_logs, &self.pod_logs) {
                files.push(FileSourceSpec::container_logs(
                    &s.name,
                    index,
                    def,
                    logs,
                    s.max_line_bytes(),
                ));
            }
            if let Some(def) = &s.syslog {
                // A socket whose port, protocol and address did not change stays open,
                // whichever source it now belongs to; a new one binds now, so a port that
                // cannot be bound rejects the config (see `sources::syslog`).
                let carried =
                    old.and_then(|r| r.syslog.sources.iter().find(|o| o.listener.is_for(def)));
                let listener = match carried {
                    Some(o) => o.listener.clone(),
                    None => Arc::new(Listener::bind(&s.name, def)?),
                };
                syslog.push(SyslogSourceSpec {
                    name: s.name.clone(),
                    index,
                    listener,
                    max_line: s.max_line_bytes(),
                });
            }
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut pipeline = Pipeline::new(
            id,
            router,
            sinks,
            &self.origin,
            self.shared.clone(),
            &self.metrics,
        );
        for s in &syslog {
            pipeline.read_once(s.index);
        }
        let pipeline = Arc::new(pipeline);
        Ok(Running {
            files: Arc::new(Feed {
                pipeline: pipeline.clone(),
                sources: files,
            }),
            syslog: Arc::new(Feed {
                pipeline: pipeline.clone(),
                sources: syslog,
            }),
            pipeline,
            hash: config.hash.clone(),
            generation: config.generation,
        })
    }

    /// Drops the config in force: once the readers have let go too, every sink drains and
    /// ends.
    pub fn clear(&self) {
        self.metrics.set_ready(false);
        self.files.store(None);
        self.syslog.store(None);
        self.running.store(None);
        self.changes.send_replace(0);
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::mpsc::{Receiver, channel},
        time::Duration,
    };

    use servicelog_api::ServiceLogSpec;

    use super::*;

    fn config(yaml: &str) -> Envelope {
        let spec: ServiceLogSpec = serde_yaml::from_str(yaml).unwrap();
        Envelope::new("", 1, spec).unwrap()
    }

    /// A topology over `dir`, and the file reader's end of its wake-ups.
    fn topology(dir: &tempfile::TempDir) -> (Topology, Receiver<()>) {
        let (tx, wake) = channel();
        let creds = dir.path().join("credentials");
        let topo = Topology::new(Metrics::new(), dir.path(), &creds, Origin::default(), tx);
        (topo, wake)
    }

    #[test]
    fn unchanged_sinks_are_carried_over_and_changed_ones_rebuilt() {
        let dir = tempfile::tempdir().unwrap();
        let (topo, _wake) = topology(&dir);
        let a = dir.path().join("a.log").display().to_string();
        let b = dir.path().join("b.log").display().to_string();
        let first = config(&format!(
            "sources: [{{name: app, file: {{paths: [/x/*.log]}}}}]\n\
             sinks: [{{name: a, file: {{path: {a}}}}}, {{name: b, file: {{path: {b}}}}}]\n\
             defaultTo: [a]\n"
        ));
        assert!(topo.apply(&first).unwrap());
        let p1 = topo.running().unwrap().pipeline.clone();
        let second = config(&format!(
            "sources: [{{name: app, file: {{paths: [/x/*.log]}}}}]\n\
             sinks: [{{name: a, file: {{path: {a}}}}}, {{name: b, file: {{path: {b}, encoding: json}}}}]\n\
             defaultTo: [b]\n"
        ));
        assert!(topo.apply(&second).unwrap());
        let p2 = topo.running().unwrap().pipeline.clone();
        assert!(
            Arc::ptr_eq(&p1.sinks[0], &p2.sinks[0]),
            "sink a did not change and must keep running"
        );
        assert!(
            !Arc::ptr_eq(&p1.sinks[1], &p2.sinks[1]),
            "sink b changed and must be rebuilt"
        );
        assert!(
            !topo.apply(&second).unwrap(),
            "the config in force is not applied again"
        );
    }

    #[test]
    fn given_a_disk_buffered_sink_changed_by_a_config_that_is_rejected_then_the_sink_in_force_keeps_its_buffer()
     {
        let dir = tempfile::tempdir().unwrap();
        let (topo, _wake) = topology(&dir);
        let a = dir.path().join("a.log");
        let b = dir.path().join("b.log");
        let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let spec = |path: &std::path::Path, syslog: &str| {
            config(&format!(
                "sources: [{{name: app, file: {{paths: [/x/*.log]}}}}{syslog}]\n\
                 sinks: [{{name: out, file: {{path: {}}}, buffer: {{type: disk}}}}]\n\
                 defaultTo: [out]\n",
                path.display()
            ))
        };
        assert!(topo.apply(&spec(&a, "")).unwrap());
        let pipeline = topo.running().unwrap().pipeline.clone();
        // Sink `out` changes (another path) and is built, but the config is rejected
        // after it: its syslog port is taken.
        let rejected = spec(&b, &format!(", {{name: sys, syslog: {{port: {port}}}}}"));
        assert!(topo.apply(&rejected).is_err());
        let ack = Arc::new(sinks::BatchAck::new(1));
        pipeline.sinks[0]
            .send(sinks::Batch {
                data: b"still routed by the config in force\n".to_vec(),
                events: 1,
                ack: ack.clone(),
            })
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !ack.is_complete() {
            assert!(
                std::time::Instant::now() < deadline,
                "the sink in force did not write its batch"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(
            std::fs::read_to_string(&a).unwrap_or_default(),
            "still routed by the config in force\n"
        );
        assert!(
            std::fs::read_to_string(&b).unwrap_or_default().is_empty(),
            "the rejected config's build of the sink took the buffer"
        );
        drop(taken);
    }

    #[test]
    fn a_swap_is_in_force_at_once_and_the_readers_are_told_when_it_is_announced() {
        let dir = tempfile::tempdir().unwrap();
        let (topo, wake) = topology(&dir);
        let mut changes = topo.changes();
        let good = config(
            "sources: [{name: app, file: {paths: [/x/*.log]}}]\nsinks: [{name: out, stdout: {}}]\ndefaultTo: [out]\n",
        );
        let swapped = topo
            .swap(&good)
            .unwrap()
            .expect("a new config is swapped in");
        assert_eq!(
            topo.hash(),
            Some(good.hash.clone()),
            "in force before the announcement"
        );
        assert!(
            !changes.has_changed().unwrap(),
            "the syslog listeners are not told yet"
        );
        assert!(wake.try_recv().is_err(), "the file reader is not woken yet");
        swapped.announce();
        assert!(
            changes.has_changed().unwrap(),
            "the syslog listeners are told"
        );
        assert_eq!(
            *changes.borrow_and_update(),
            topo.running().unwrap().pipeline.id
        );
        assert!(wake.try_recv().is_ok(), "the file reader is woken");
        assert!(
            topo.swap(&good).unwrap().is_none(),
            "the config in force is not swapped again"
        );
    }

    #[test]
    fn given_a_sink_that_cannot_write_when_a_config_change_replaces_it_then_its_batches_fail_within_the_deadline()
     {
        let dir = tempfile::tempdir().unwrap();
        let (topo, _wake) = topology(&dir);
        let broken = dir.path().join("broken.log");
        std::os::unix::fs::symlink("/dev/full", &broken).unwrap();
        let fixed = dir.path().join("fixed.log").display().to_string();
        let spec = |path: &str| {
            config(&format!(
                "sources: [{{name: app, file: {{paths: [/x/*.log]}}}}]\n\
                 sinks: [{{name: out, file: {{path: {path}}}}}, {{name: keep, stdout: {{}}}}]\n\
                 defaultTo: [out]\n"
            ))
        };
        assert!(topo.apply(&spec(&broken.display().to_string())).unwrap());
        let pipeline = topo.running().unwrap().pipeline.clone();
        let send = |ack: &Arc<sinks::BatchAck>| {
            pipeline.sinks[0]
                .send(sinks::Batch {
                    data: b"x\n".to_vec(),
                    events: 1,
                    ack: ack.clone(),
                })
                .unwrap();
        };
        let file = Arc::new(sinks::BatchAck::new(1));
        let syslog = Arc::new(sinks::BatchAck::once(1));
        send(&file);
        send(&syslog);
        let started = std::time::Instant::now();
        assert!(topo.apply(&spec(&fixed)).unwrap());
        let p2 = topo.running().unwrap().pipeline.clone();
        assert!(
            Arc::ptr_eq(&pipeline.sinks[1], &p2.sinks[1]),
            "keep is carried over"
        );
        while !(file.is_failed() && syslog.is_failed()) {
            assert!(
                started.elapsed() < sinks::buffer::RETIRE_DEADLINE + Duration::from_secs(3),
                "the replaced sink's batches did not fail within its deadline"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let text = topo.metrics().render();
        assert!(
            text.contains(r#"servicelog_sink_dropped_total{sink="out",reason="sink_retired"} 1"#),
            "the syslog batch is counted dropped:\n{text}"
        );
    }

    /// The node agent's topology over `dir`, serving pod logs under `dir/pod`.
    fn agent_topology(dir: &tempfile::TempDir) -> (Topology, Receiver<()>) {
        let (topo, wake) = topology(dir);
        let logs = PodLogs {
            dir: dir.path().join("pod"),
            containers: vec!["app".into()],
            allow_file_sinks: false,
        };
        (topo.with_pod_logs(logs), wake)
    }

    #[test]
    fn given_the_node_agent_when_a_config_has_file_and_syslog_sources_then_only_container_logs_are_read()
     {
        let dir = tempfile::tempdir().unwrap();
        let (topo, _wake) = agent_topology(&dir);
        let other = dir.path().join("other.log");
        std::fs::write(&other, "another namespace's line\n").unwrap();
        let unused = dir.path().join("unused.log");
        // Taken: binding it would reject the config.
        let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let cfg = config(&format!(
            "sources: [{{name: stdout, containerLogs: {{}}}}, {{name: files, file: {{paths: [{}]}}}}, \
                       {{name: sys, syslog: {{port: {port}}}}}]\n\
             sinks: [{{name: out, stdout: {{}}}}, {{name: local, file: {{path: {}}}}}]\n\
             rules: [{{name: mine, when: {{source: files}}, to: [local]}}]\n\
             defaultTo: [out]\n",
            other.display(),
            unused.display()
        ));
        assert!(topo.apply(&cfg).unwrap());
        let running = topo.running().unwrap();
        let read: Vec<&str> = running
            .files
            .sources
            .iter()
            .map(|s| s.name.as_str())
            .collect();
        assert_eq!(read, ["stdout"], "the file source is the sidecar's");
        assert!(running.syslog.sources.is_empty(), "no syslog port is bound");
        assert!(
            !unused.exists(),
            "a file sink no containerLogs event reaches is not opened"
        );
        drop(taken);
    }

    #[test]
    fn given_the_node_agent_when_container_logs_reach_a_file_sink_then_the_config_is_refused_naming_the_sink()
     {
        let dir = tempfile::tempdir().unwrap();
        let (topo, _wake) = agent_topology(&dir);
        let target = dir.path().join("other-pod-checkpoints");
        for (why, routing) in [
            ("by defaultTo", "defaultTo: [grab]\n".to_owned()),
            (
                "by a rule on the source",
                "rules: [{name: r, when: {source: stdout}, to: [grab]}]\ndefaultTo: [out]\n"
                    .to_owned(),
            ),
            (
                "by a rule on every source",
                "rules: [{name: r, to: [grab]}]\ndefaultTo: [out]\n".to_owned(),
            ),
        ] {
            let cfg = config(&format!(
                "sources: [{{name: stdout, containerLogs: {{}}}}]\n\
                 sinks: [{{name: out, stdout: {{}}}}, {{name: grab, file: {{path: {}}}}}]\n{routing}",
                target.display()
            ));
            let err = topo.apply(&cfg).unwrap_err().to_string();
            assert!(
                err.starts_with(
                    "spec.sinks[1].file: a file sink cannot be served by the node agent"
                ) && err.contains("\"grab\""),
                "{why}: {err}"
            );
            assert!(!target.exists(), "{why}: the path was opened");
        }
        assert_eq!(topo.hash(), None, "nothing was put in force");
    }

    #[test]
    fn a_bad_config_leaves_the_pipeline_in_force() {
        let dir = tempfile::tempdir().unwrap();
        let (topo, _wake) = topology(&dir);
        let good = config(
            "sources: [{name: app, file: {paths: [/x/*.log]}}]\nsinks: [{name: out, stdout: {}}]\ndefaultTo: [out]\n",
        );
        topo.apply(&good).unwrap();
        let bad = config(
            "sources: [{name: app, file: {paths: [/x/*.log]}}]\nsinks: [{name: out, stdout: {}}]\ndefaultTo: [nowhere]\n",
        );
        let err = topo.apply(&bad).unwrap_err();
        assert!(err.to_string().contains("nowhere"), "{err}");
        assert_eq!(topo.hash(), Some(good.hash.clone()));
    }
}
