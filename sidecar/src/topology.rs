//! The pipeline in force and how a new config replaces it.
//!
//! A [`Pipeline`] is one config made runnable: its compiled [`Router`], the running sinks
//! its sink indices refer to, the file sources to read and the syslog sockets to listen
//! on. It is immutable; the file reader takes the current one for each chunk it routes
//! (syslog for each batch of messages), so a chunk is routed entirely by the rules it
//! started with, and lines are never routed twice or skipped across a swap.
//!
//! [`Topology::apply`] compiles a new config aside and, only if it compiles, its sinks
//! start and its syslog ports bind, swaps it in. Sinks whose definition did not change are
//! carried over running (same file handle, same queue), and so are syslog sockets whose
//! port and protocol did not change; the others are started new, and the sinks left behind
//! end once the last chunk routed with the old pipeline has reached them.
//!
//! A swap is in two steps: [`Topology::swap`] puts the pipeline in force (every chunk read
//! from then on is routed by it), and the [`Swapped`] it returns tells the reader threads
//! to look at it (new file paths, new syslog sockets) when announced or dropped. The
//! ZooKeeper config acks in between, so that waking those threads does not compete with
//! the ack for the CPU.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
        mpsc::Sender,
    },
    time::Duration,
};

use arc_swap::ArcSwapOption;
use servicelog_api::{
    Router, ValidationErrors,
    v1alpha1::{Format, Multiline},
    validate::parse_duration,
    wire::Envelope,
};

use crate::{
    metrics::Metrics,
    sinks::{self, SinkError, SinkHandle, SinkShared},
    sources::syslog::{BindError, Listener},
    state,
};

/// A file source of the config in force.
#[derive(Clone, Debug)]
pub struct FileSourceSpec {
    pub name: String,
    pub paths: Vec<String>,
    pub format: Format,
    pub multiline: Option<Arc<MultilineSpec>>,
}

/// `multiline` of a file source, compiled.
#[derive(Debug)]
pub struct MultilineSpec {
    pub start: regex::bytes::Regex,
    pub max_lines: u32,
    pub timeout: Duration,
}

impl MultilineSpec {
    pub const DEFAULT_MAX_LINES: u32 = 500;
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);

    fn compile(source: &str, m: &Multiline) -> Result<Self, ApplyError> {
        let invalid = |message: String| ApplyError::Multiline {
            name: source.to_owned(),
            message,
        };
        let start = regex::bytes::Regex::new(&m.start_pattern)
            .map_err(|e| invalid(format!("startPattern: {e}")))?;
        let timeout = match &m.timeout {
            Some(t) => parse_duration(t).map_err(|e| invalid(format!("timeout: {e}")))?,
            None => Self::DEFAULT_TIMEOUT,
        };
        Ok(Self {
            start,
            max_lines: m.max_lines.unwrap_or(Self::DEFAULT_MAX_LINES).max(1),
            timeout,
        })
    }
}

/// A syslog source of the config in force and its bound socket.
#[derive(Clone, Debug)]
pub struct SyslogSourceSpec {
    pub name: String,
    pub listener: Arc<Listener>,
}

/// One config, runnable.
#[derive(Debug)]
pub struct Pipeline {
    /// Unique per pipeline built by this process.
    pub id: u64,
    pub router: Router,
    /// Indexed like `router.sink_names()`.
    pub sinks: Vec<Arc<SinkHandle>>,
    pub sources: Vec<FileSourceSpec>,
    pub syslog: Vec<SyslogSourceSpec>,
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
    #[error("source {name}: multiline: {message}")]
    Multiline { name: String, message: String },
}

/// A pipeline put in force by [`Topology::swap`] that the file reader and the syslog
/// listeners have not been told about yet. They are told by [`Swapped::announce`] or, so
/// that they are never left out, when this is dropped.
#[must_use = "the readers look at the new pipeline once this is announced or dropped"]
pub struct Swapped {
    pipeline: Arc<Pipeline>,
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
        let p = &self.pipeline;
        tracing::info!(hash = %p.hash, generation = p.generation, sinks = ?p.router.sink_names(), "config applied");
        self.changes.send_replace(p.id);
        let _ = self.wake.send(());
    }
}

/// The current pipeline and what is needed to build the next one.
#[derive(Clone)]
pub struct Topology {
    current: Arc<ArcSwapOption<Pipeline>>,
    shared: Arc<SinkShared>,
    metrics: Metrics,
    state_dir: PathBuf,
    wake: Sender<()>,
    /// The id of the pipeline in force (0: none), for the syslog listeners to follow.
    changes: Arc<tokio::sync::watch::Sender<u64>>,
    next_id: Arc<AtomicU64>,
}

impl Topology {
    pub fn new(metrics: Metrics, state_dir: &Path, wake: Sender<()>) -> Self {
        Self {
            current: Arc::default(),
            shared: Arc::new(SinkShared::new(state_dir.to_owned())),
            metrics,
            state_dir: state_dir.to_owned(),
            wake,
            changes: Arc::new(tokio::sync::watch::Sender::new(0)),
            next_id: Arc::new(AtomicU64::new(1)),
        }
    }

    /// Where the reader takes the pipeline for each chunk.
    pub fn current(&self) -> Arc<ArcSwapOption<Pipeline>> {
        self.current.clone()
    }

    /// Changes whenever another pipeline is put in force (or none is).
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn shared(&self) -> Arc<SinkShared> {
        self.shared.clone()
    }

    /// Hash of the config in force, if any.
    pub fn hash(&self) -> Option<String> {
        self.current.load().as_ref().map(|p| p.hash.clone())
    }

    /// Validates, builds and swaps in `config`, and tells the readers at once; on error
    /// the pipeline in force stays. `persist` writes it as the last-known-good config (not
    /// when it was read from there).
    pub fn apply(&self, config: &Envelope, persist: bool) -> Result<(), ApplyError> {
        let Some(swapped) = self.swap(config)? else {
            return Ok(());
        };
        swapped.announce();
        if persist && let Err(e) = state::save_last_good(&self.state_dir, config) {
            tracing::warn!(error = %e, "writing the last-known-good config");
        }
        Ok(())
    }

    /// Validates, builds and swaps in `config`, leaving the readers to be told by the
    /// returned [`Swapped`]; `None` when that config is already in force. On error the
    /// pipeline in force stays.
    pub fn swap(&self, config: &Envelope) -> Result<Option<Swapped>, ApplyError> {
        let old = self.current.load_full();
        if old.as_ref().is_some_and(|p| p.hash == config.hash) {
            return Ok(None);
        }
        let result = self.build(config, old.as_deref());
        self.metrics.config_result(result.is_ok());
        let pipeline = match result {
            Ok(p) => Arc::new(p),
            Err(e) => {
                tracing::error!(hash = %config.hash, generation = config.generation, error = %e, "config rejected; the rules in force stay");
                return Err(e);
            }
        };
        self.metrics.config_generation.set(pipeline.generation);
        self.current.store(Some(pipeline.clone()));
        self.metrics.set_ready(true);
        Ok(Some(Swapped {
            pipeline,
            changes: self.changes.clone(),
            wake: self.wake.clone(),
        }))
    }

    fn build(&self, config: &Envelope, old: Option<&Pipeline>) -> Result<Pipeline, ApplyError> {
        let router = Router::compile(&config.spec)?;
        let mut running: HashMap<&str, &Arc<SinkHandle>> = HashMap::new();
        if let Some(old) = old {
            for s in &old.sinks {
                running.insert(s.name.as_str(), s);
            }
        }
        // The router numbers sinks in declaration order, so `sinks[i]` is sink index `i`.
        let mut sinks = Vec::with_capacity(config.spec.sinks.len());
        for def in &config.spec.sinks {
            match running.get(def.name.as_str()) {
                Some(handle) if handle.def == *def => sinks.push(Arc::clone(handle)),
                // Sinks started here and not swapped in end when `sinks` is dropped.
                _ => sinks.push(sinks::build(def, &self.metrics, &self.shared)?),
            }
        }
        let mut sources = Vec::new();
        let mut syslog = Vec::new();
        for s in &config.spec.sources {
            if let Some(f) = &s.file {
                let multiline = match &f.multiline {
                    Some(m) => Some(Arc::new(MultilineSpec::compile(&s.name, m)?)),
                    None => None,
                };
                sources.push(FileSourceSpec {
                    name: s.name.clone(),
                    paths: f.paths.clone(),
                    format: f.format,
                    multiline,
                });
            }
            if let Some(def) = &s.syslog {
                // A socket whose port and protocol did not change stays open, whichever
                // source it now belongs to; a new one binds now, so a port that cannot be
                // bound rejects the config (see `sources::syslog`).
                let carried = old.and_then(|p| {
                    p.syslog.iter().find(|o| {
                        o.listener.port == def.port && o.listener.protocol == def.protocol
                    })
                });
                let listener = match carried {
                    Some(o) => o.listener.clone(),
                    None => Arc::new(Listener::bind(&s.name, def.port, def.protocol)?),
                };
                syslog.push(SyslogSourceSpec {
                    name: s.name.clone(),
                    listener,
                });
            }
        }
        Ok(Pipeline {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            router,
            sinks,
            sources,
            syslog,
            hash: config.hash.clone(),
            generation: config.generation,
        })
    }

    /// Drops the pipeline in force: once the reader has let go too, every sink drains and
    /// ends.
    pub fn clear(&self) {
        self.metrics.set_ready(false);
        self.current.store(None);
        self.changes.send_replace(0);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc::channel;

    use servicelog_api::ServiceLogSpec;

    use super::*;

    fn config(yaml: &str) -> Envelope {
        let spec: ServiceLogSpec = serde_yaml::from_str(yaml).unwrap();
        Envelope::new("", 1, spec).unwrap()
    }

    #[test]
    fn unchanged_sinks_are_carried_over_and_changed_ones_rebuilt() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, _rx) = channel();
        let topo = Topology::new(Metrics::new(), dir.path(), tx);
        let a = dir.path().join("a.log").display().to_string();
        let b = dir.path().join("b.log").display().to_string();
        let first = config(&format!(
            "sources: [{{name: app, file: {{paths: [/x/*.log]}}}}]\n\
             sinks: [{{name: a, file: {{path: {a}}}}}, {{name: b, file: {{path: {b}}}}}]\n\
             defaultTo: [a]\n"
        ));
        topo.apply(&first, true).unwrap();
        let p1 = topo.current().load_full().unwrap();
        let second = config(&format!(
            "sources: [{{name: app, file: {{paths: [/x/*.log]}}}}]\n\
             sinks: [{{name: a, file: {{path: {a}}}}}, {{name: b, file: {{path: {b}, encoding: json}}}}]\n\
             defaultTo: [b]\n"
        ));
        topo.apply(&second, true).unwrap();
        let p2 = topo.current().load_full().unwrap();
        assert!(
            Arc::ptr_eq(&p1.sinks[0], &p2.sinks[0]),
            "sink a did not change and must keep running"
        );
        assert!(
            !Arc::ptr_eq(&p1.sinks[1], &p2.sinks[1]),
            "sink b changed and must be rebuilt"
        );
        assert_eq!(
            state::load_last_good(dir.path()).unwrap().unwrap().hash,
            second.hash
        );
    }

    #[test]
    fn a_swap_is_in_force_at_once_and_the_readers_are_told_when_it_is_announced() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, wake) = channel();
        let topo = Topology::new(Metrics::new(), dir.path(), tx);
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
            topo.current().load_full().unwrap().id
        );
        assert!(wake.try_recv().is_ok(), "the file reader is woken");
        assert!(
            topo.swap(&good).unwrap().is_none(),
            "the config in force is not swapped again"
        );
    }

    #[test]
    fn a_bad_config_leaves_the_pipeline_in_force() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, _rx) = channel();
        let topo = Topology::new(Metrics::new(), dir.path(), tx);
        let good = config(
            "sources: [{name: app, file: {paths: [/x/*.log]}}]\nsinks: [{name: out, stdout: {}}]\ndefaultTo: [out]\n",
        );
        topo.apply(&good, false).unwrap();
        let bad = config(
            "sources: [{name: app, file: {paths: [/x/*.log]}}]\nsinks: [{name: out, stdout: {}}]\ndefaultTo: [nowhere]\n",
        );
        let err = topo.apply(&bad, false).unwrap_err();
        assert!(err.to_string().contains("nowhere"), "{err}");
        assert_eq!(topo.hash(), Some(good.hash.clone()));
    }
}
