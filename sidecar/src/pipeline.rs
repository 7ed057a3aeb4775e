//! The pipeline in force and how a new config replaces it.
//!
//! A [`Pipeline`] is one config made runnable: its compiled [`Router`], the running sinks
//! its sink indices refer to, and the file sources to read. It is immutable; the reader
//! takes the current one for each chunk it routes, so a chunk is routed entirely by the
//! rules it started with, and lines are never routed twice or skipped across a swap.
//!
//! [`Topology::apply`] compiles a new config aside and, only if it compiles and its sinks
//! start, swaps it in. Sinks whose definition did not change are carried over running (same
//! file handle, same queue); the others are started new, and the sinks left behind end
//! once the last chunk routed with the old pipeline has reached them.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
        mpsc::Sender,
    },
};

use arc_swap::ArcSwapOption;
use servicelog_api::{Router, ValidationErrors, v1alpha1::Format, wire::Envelope};

use crate::{
    metrics::Metrics,
    sinks::{self, SinkError, SinkHandle, SinkShared},
    state,
};

/// A file source of the config in force.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileSourceSpec {
    pub name: String,
    pub paths: Vec<String>,
    pub format: Format,
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
}

/// The current pipeline and what is needed to build the next one.
#[derive(Clone)]
pub struct Topology {
    current: Arc<ArcSwapOption<Pipeline>>,
    shared: Arc<SinkShared>,
    metrics: Metrics,
    state_dir: PathBuf,
    wake: Sender<()>,
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
            next_id: Arc::new(AtomicU64::new(1)),
        }
    }

    /// Where the reader takes the pipeline for each chunk.
    pub fn current(&self) -> Arc<ArcSwapOption<Pipeline>> {
        self.current.clone()
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

    /// Validates, builds and swaps in `config`; on error the pipeline in force stays.
    /// `persist` writes it as the last-known-good config (not when it was read from there).
    pub fn apply(&self, config: &Envelope, persist: bool) -> Result<(), ApplyError> {
        let old = self.current.load_full();
        if old.as_ref().is_some_and(|p| p.hash == config.hash) {
            return Ok(());
        }
        let result = self.build(config, old.as_deref());
        self.metrics.config_result(result.is_ok());
        let pipeline = match result {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(hash = %config.hash, generation = config.generation, error = %e, "config rejected; the rules in force stay");
                return Err(e);
            }
        };
        let unsupported: Vec<&str> = config
            .spec
            .sources
            .iter()
            .filter(|s| s.file.is_none())
            .map(|s| s.name.as_str())
            .collect();
        if !unsupported.is_empty() {
            tracing::warn!(sources = ?unsupported, "syslog sources are not read by this sidecar build yet");
        }
        tracing::info!(hash = %pipeline.hash, generation = pipeline.generation, sinks = ?pipeline.router.sink_names(), "config applied");
        self.metrics.config_generation.set(pipeline.generation);
        self.current.store(Some(Arc::new(pipeline)));
        self.metrics.set_ready(true);
        let _ = self.wake.send(());
        if persist && let Err(e) = state::save_last_good(&self.state_dir, config) {
            tracing::warn!(error = %e, "writing the last-known-good config");
        }
        Ok(())
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
        let sources = config
            .spec
            .sources
            .iter()
            .filter_map(|s| {
                s.file.as_ref().map(|f| FileSourceSpec {
                    name: s.name.clone(),
                    paths: f.paths.clone(),
                    format: f.format,
                })
            })
            .collect();
        Ok(Pipeline {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            router,
            sinks,
            sources,
            hash: config.hash.clone(),
            generation: config.generation,
        })
    }

    /// Drops the pipeline in force: once the reader has let go too, every sink drains and
    /// ends.
    pub fn clear(&self) {
        self.metrics.set_ready(false);
        self.current.store(None);
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
