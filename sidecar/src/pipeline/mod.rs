//! The pipeline: routes what the sources read to the sinks, and tells them when it is
//! written.
//!
//! A [`Pipeline`] is one config's routing made runnable: its compiled [`Router`], the
//! running sinks its sink indices refer to, and per source the `_servicelog` member and
//! the `events_in` counter. It is immutable; a source takes the one in force for each run
//! of events it hands over (a file chunk, a batch of syslog messages), so a run is routed
//! entirely by the rules it started with and a config swap falls between runs.
//!
//! A source hands a run to a [`Batcher`]: lines (parsed in the source's format) or events
//! it parsed itself. Each is routed, encoded for every sink its rules chose ([`encode`]
//! for `json` sinks, the line as read for `raw` ones) into one buffer per sink, and the
//! run ends by sending one batch per sink that got anything. The returned [`Ack`]
//! completes once all of them are written; the file source checkpoints behind it, syslog
//! (which has no acknowledgement to give its senders) does not wait for it.
//!
//! Sources sit above this module and sinks below it: a source never names a sink, and
//! building a pipeline (which sinks to carry over, which to start) is the topology's job.

pub mod encode;
pub mod podinfo;
pub mod shadow;

use std::{
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use prometheus_client::metrics::counter::Counter;
use servicelog_api::{
    Router,
    rules::{DropReason, Event, Fields, Members, SinkSet, Spare},
    v1alpha1::{Format, LineEncoding},
};

use crate::{
    metrics::Metrics,
    sinks::{Batch, BatchAck, BufferPool, SinkHandle, SinkShared, buffer::Unsent},
};

/// Whose logs these are, for the `_servicelog` member of `json` sinks' lines.
#[derive(Clone, Debug, Default)]
pub struct Origin {
    pub pod: String,
    pub namespace: String,
    /// The app container, when the sidecar was injected for exactly one.
    pub container: Option<String>,
    /// The pod's labels (none outside Kubernetes).
    pub labels: Arc<podinfo::PodLabels>,
}

impl Origin {
    /// The `_servicelog` member of `source`'s events, with the labels in force.
    fn meta(&self, source: &str) -> (u64, Arc<[u8]>) {
        let (generation, labels) = self.labels.snapshot();
        let meta = encode::meta_member(
            source,
            &self.pod,
            &self.namespace,
            self.container.as_deref(),
            &labels,
        );
        (generation, meta.into())
    }
}

/// What a source's events take along, whatever their run.
#[derive(Debug)]
struct SourceOut {
    name: String,
    /// Its `_servicelog` member (see [`encode::meta_member`]), rendered again when the
    /// pod's labels change, with the labels generation it was rendered at.
    meta: Mutex<(u64, Arc<[u8]>)>,
    events_in: Counter,
    /// `servicelog_source_read_bytes_total`: the raw bytes of its events.
    read_bytes: Counter,
    /// Lines that did not parse in the source's format.
    unparsed: Counter,
    /// Whether the source can read a run again if a sink fails it (see [`Ack::is_failed`]).
    rereadable: bool,
}

/// One config's routing, runnable.
#[derive(Debug)]
pub struct Pipeline {
    /// Unique per pipeline built by this process.
    pub id: u64,
    pub router: Router,
    /// Indexed like `router.sink_names()`.
    pub sinks: Vec<Arc<SinkHandle>>,
    /// Indexed like the router's sources.
    sources: Vec<SourceOut>,
    /// Where sink buffers come from and go back to.
    shared: Arc<SinkShared>,
    metrics: Metrics,
    origin: Origin,
    /// A staged rollout's preview in shadow, while one runs (see [`shadow`]).
    pub shadow: arc_swap::ArcSwapOption<shadow::Shadow>,
    /// The hash of a preview candidate that did not compile on this pipeline: not
    /// compiled (nor warned about) again on every update while it stays the candidate.
    pub shadow_refused: std::sync::Mutex<Option<String>>,
    /// Events each rule decided since this pipeline was built (a canary's health); shared
    /// so a health tracker can keep them past the pipeline.
    pub matched: Arc<shadow::RuleCounts>,
    /// Events the rules dropped since this pipeline was built: with `matched` (whose sum
    /// is the events routed), a health counted by the pipeline, not the process's metrics
    /// — the node agent's metrics sum all its pods.
    pub dropped: AtomicU64,
}

impl Pipeline {
    /// `sinks` must be indexed like `router.sink_names()`.
    pub fn new(
        id: u64,
        router: Router,
        sinks: Vec<Arc<SinkHandle>>,
        origin: &Origin,
        shared: Arc<SinkShared>,
        metrics: &Metrics,
    ) -> Self {
        let sources = router
            .source_names()
            .iter()
            .map(|name| SourceOut {
                name: name.clone(),
                meta: Mutex::new(origin.meta(name)),
                events_in: metrics.source_counter(name),
                read_bytes: metrics.source_bytes_counter(name),
                unparsed: metrics.unparsed_counter(name),
                rereadable: true,
            })
            .collect();
        let matched = Arc::new(shadow::RuleCounts::new(&router));
        Self {
            id,
            router,
            sinks,
            sources,
            shared,
            metrics: metrics.clone(),
            origin: origin.clone(),
            shadow: arc_swap::ArcSwapOption::empty(),
            shadow_refused: std::sync::Mutex::default(),
            matched,
            dropped: AtomicU64::new(0),
        }
    }

    /// Source `source`'s `_servicelog` member, re-rendered first if the labels changed.
    fn meta(&self, source: usize) -> Arc<[u8]> {
        let Some(s) = self.sources.get(source) else {
            return Arc::from(&b""[..]);
        };
        let generation = self.origin.labels.generation();
        let mut meta = s.meta.lock().unwrap_or_else(PoisonError::into_inner);
        if meta.0 != generation {
            *meta = self.origin.meta(&s.name);
        }
        meta.1.clone()
    }

    /// Source `source` cannot read a run again (syslog): a sink that fails one of its
    /// batches counts the events dropped.
    pub fn read_once(&mut self, source: usize) {
        if let Some(s) = self.sources.get_mut(source) {
            s.rereadable = false;
        }
    }

    /// The process's metrics, for what a source counts outside routing.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }
}

/// What one kind of source reads under the config in force (file globs, bound syslog
/// sockets), with the pipeline that routes it: a source takes both at once for each run.
#[derive(Debug)]
pub struct Feed<S> {
    pub pipeline: Arc<Pipeline>,
    pub sources: Vec<S>,
}

/// Completes once every sink a run's events went to has written them.
#[derive(Clone, Debug)]
pub struct Ack(Arc<BatchAck>);

impl Ack {
    pub fn is_complete(&self) -> bool {
        self.0.is_complete()
    }

    /// Complete, but a sink gave the batch up unwritten: its events must be read again.
    pub fn is_failed(&self) -> bool {
        self.0.is_failed()
    }
}

/// Buffers reused from run to run, so routing does not allocate per run.
#[derive(Debug, Default)]
pub struct Batcher {
    outs: Vec<Vec<u8>>,
    counts: Vec<u64>,
    drops: Vec<(Option<u16>, DropReason, u64)>,
    /// The run's events per deciding rule, indexed like [`Pipeline::matched`].
    matched: Vec<u64>,
    encodings: Vec<LineEncoding>,
    /// The current event's transforming rules and their sinks.
    transformed: Vec<(u16, SinkSet)>,
    /// The last transformed event's member list, for the next one's.
    spare: Spare,
    /// The members of the line [`Run::push_line`] parsed last, when some rule transforms.
    members: Members,
}

impl Batcher {
    /// Starts a run of events of source `source` (an index of `pipeline.router`); a
    /// sink's buffer, when it needs a new one, is allocated with `capacity`.
    pub fn run<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        source: usize,
        capacity: usize,
    ) -> Run<'a> {
        let sinks = pipeline.sinks.len();
        if self.outs.len() < sinks {
            self.outs.resize_with(sinks, Vec::new);
            self.counts.resize(sinks, 0);
        }
        self.encodings.clear();
        self.encodings
            .extend(pipeline.sinks.iter().map(|h| h.encoding));
        self.matched.clear();
        self.matched.resize(pipeline.matched.slots(), 0);
        let router = &pipeline.router;
        Run {
            format: router.source_format(source).unwrap_or(Format::Text),
            meta: pipeline.meta(source),
            batcher: self,
            pipeline,
            router,
            source,
            capacity,
            now: Instant::now(),
            events: 0,
            bytes: 0,
            unparsed: 0,
            shadow: pipeline.shadow.load_full(),
        }
    }
}

/// A run of events being routed under one pipeline.
pub struct Run<'a> {
    batcher: &'a mut Batcher,
    pipeline: &'a Pipeline,
    router: &'a Router,
    source: usize,
    format: Format,
    meta: Arc<[u8]>,
    capacity: usize,
    now: Instant,
    events: u64,
    /// Raw bytes of the events pushed (newlines included).
    bytes: u64,
    unparsed: u64,
    shadow: Option<Arc<shadow::Shadow>>,
}

impl<'a> Run<'a> {
    pub fn router(&self) -> &'a Router {
        self.router
    }

    pub fn source(&self) -> usize {
        self.source
    }

    /// Events pushed so far.
    pub fn events(&self) -> u64 {
        self.events
    }

    /// Parses `line` (without its newline) in the source's format and routes it;
    /// `with_nl` is the line with its newline, what `raw` sinks write.
    #[inline]
    pub fn push_line(&mut self, line: &[u8], with_nl: &[u8]) {
        let event = if self.router.has_transforms() {
            self.router
                .parse_keeping(self.source, line, &mut self.batcher.members)
        } else {
            self.router.parse(self.source, line)
        };
        if event.is_text() && self.format != Format::Text {
            self.unparsed += 1;
        }
        self.push(&event, &event, with_nl, false);
    }

    /// Routes `routed` and writes `written` to the sinks it goes to: `raw` (newline
    /// terminated) for `raw` sinks, `written` encoded for `json` sinks. They differ when
    /// the fields that decide are not the whole event (a multi-line event routed by its
    /// first line). `flatten` turns raw newlines inside a structured `written` (a
    /// pretty-printed JSON object; JSON strings cannot hold raw newlines) into spaces, so
    /// it stays one line.
    ///
    /// Sinks a transforming rule routed the event to get its transformed copy instead
    /// (see [`Run::push_transformed`]).
    #[inline]
    pub fn push(&mut self, routed: &Event<'_>, written: &Event<'_>, raw: &[u8], flatten: bool) {
        self.events += 1;
        self.bytes += raw.len() as u64;
        let b = &mut *self.batcher;
        let transforms = self.router.has_transforms();
        let decision = if transforms {
            self.router
                .route_transformed(routed, self.now, Some(&mut b.transformed))
        } else {
            self.router.route(routed, self.now)
        };
        if let Some(shadow) = &self.shadow {
            shadow.observe(routed, &decision, self.now);
        }
        let slot = shadow::RuleCounts::slot(b.matched.len(), decision.rule);
        if let Some(n) = b.matched.get_mut(slot) {
            *n += 1;
        }
        if let Some(reason) = decision.drop {
            count_drop(&mut b.drops, decision.rule, reason);
            return;
        }
        let mut plain = decision.sinks;
        if transforms && !b.transformed.is_empty() {
            for (_, sinks) in &b.transformed {
                plain = plain.minus(*sinks);
            }
            self.push_transformed(written);
        }
        let b = &mut *self.batcher;
        for sink in plain {
            let Some(out) = b.outs.get_mut(sink) else {
                continue;
            };
            if out.capacity() == 0 {
                *out = self.pipeline.shared.pool.take(self.capacity);
            }
            match b.encodings[sink] {
                LineEncoding::Raw => out.extend_from_slice(raw),
                LineEncoding::Json if self.format == Format::Regex && !written.is_text() => {
                    let fields = self.router.fields(written);
                    encode::encode_fields_json(out, &fields, &self.meta);
                }
                LineEncoding::Json => {
                    let from = out.len();
                    encode::encode_json(out, written, self.format, &self.meta);
                    if flatten && !written.is_text() {
                        let end = out.len() - 1;
                        for c in &mut out[from..end] {
                            if *c == b'\n' || *c == b'\r' {
                                *c = b' ';
                            }
                        }
                    }
                }
            }
            b.counts[sink] += 1;
        }
    }

    /// Writes each transforming rule's copy of `written` to the sinks it routed it to.
    #[cold]
    fn push_transformed(&mut self, written: &Event<'_>) {
        let b = &mut *self.batcher;
        let router = self.router;
        for &(rule, sinks) in &b.transformed {
            let mut fields: Fields<'_> = router.fields_for(rule, written, &mut b.spare, &b.members);
            router.transform(rule, self.source, &mut fields);
            for sink in sinks {
                let Some(out) = b.outs.get_mut(sink) else {
                    continue;
                };
                if out.capacity() == 0 {
                    *out = self.pipeline.shared.pool.take(self.capacity);
                }
                match b.encodings[sink] {
                    LineEncoding::Raw => encode::encode_fields_raw(out, &fields),
                    LineEncoding::Json => encode::encode_fields_json(out, &fields, &self.meta),
                }
                b.counts[sink] += 1;
            }
            b.spare = fields.into_spare();
        }
    }

    /// Counts the run's events and drops, and sends one batch per sink that got events.
    /// Blocks while a sink's queue is full (backpressure). The ack completes when every
    /// batch is written; a batch a sink refused (it gave up at shutdown) leaves it
    /// incomplete for good.
    pub fn finish(self) -> Ack {
        self.finish_with(|sink, batch, pool| {
            if let Err(batch) = sink.send(batch) {
                pool.give(batch.data);
            }
        })
    }

    /// Like [`Run::finish`], without waiting: a batch a sink's buffer cannot take now is
    /// handed back with its sink, to be sent again later ([`Parked::retry`]); its ack
    /// stays incomplete until then. The file reader uses this so that one full sink stops
    /// only the files routed to it.
    pub fn finish_parking(self, parked: &mut Vec<Parked>) -> Ack {
        self.finish_with(|sink, batch, pool| match sink.try_send(batch) {
            Ok(()) => {}
            Err(Unsent::Full(batch)) => parked.push(Parked {
                sink: sink.clone(),
                batch,
            }),
            Err(Unsent::Closed(batch)) => pool.give(batch.data),
        })
    }

    fn finish_with(self, mut send: impl FnMut(&Arc<SinkHandle>, Batch, &BufferPool)) -> Ack {
        let b = self.batcher;
        let pipeline = self.pipeline;
        if let Some(s) = pipeline.sources.get(self.source) {
            s.events_in.inc_by(self.events);
            s.read_bytes.inc_by(self.bytes);
            if self.unparsed > 0 {
                s.unparsed.inc_by(self.unparsed);
            }
        }
        let mut dropped = 0;
        for (rule, reason, n) in b.drops.drain(..) {
            let rule = rule
                .and_then(|r| self.router.rule_names().get(usize::from(r)))
                .map_or("default", String::as_str);
            pipeline.metrics.dropped(rule, reason.as_str(), n);
            dropped += n;
        }
        if dropped > 0 {
            pipeline.dropped.fetch_add(dropped, Ordering::Relaxed);
        }
        pipeline.matched.add(&mut b.matched);
        let sinks = pipeline.sinks.len();
        let targets = b.outs[..sinks].iter().filter(|o| !o.is_empty()).count();
        let ack = Arc::new(match pipeline.sources.get(self.source) {
            Some(s) if !s.rereadable => BatchAck::once(targets),
            _ => BatchAck::new(targets),
        });
        for (sink, out) in b.outs[..sinks].iter_mut().enumerate() {
            if out.is_empty() {
                continue;
            }
            let batch = Batch {
                data: std::mem::take(out),
                events: std::mem::take(&mut b.counts[sink]),
                ack: ack.clone(),
            };
            send(&pipeline.sinks[sink], batch, &pipeline.shared.pool);
        }
        Ack(ack)
    }
}

/// A batch a sink's buffer could not take yet (see [`Run::finish_parking`]).
#[derive(Debug)]
pub struct Parked {
    sink: Arc<SinkHandle>,
    batch: Batch,
}

impl Parked {
    /// Sends it again without waiting: `Some` (itself) while the sink still cannot take
    /// it. A sink that has ended drops it unacked (its file is read again at the next
    /// start).
    pub fn retry(self) -> Option<Parked> {
        match self.sink.try_send(self.batch) {
            Ok(()) => None,
            Err(Unsent::Full(batch)) => Some(Parked {
                sink: self.sink,
                batch,
            }),
            Err(Unsent::Closed(_)) => None,
        }
    }
}

fn count_drop(
    drops: &mut Vec<(Option<u16>, DropReason, u64)>,
    rule: Option<u16>,
    reason: DropReason,
) {
    if let Some(last) = drops.last_mut()
        && last.0 == rule
        && last.1 == reason
    {
        last.2 += 1;
        return;
    }
    match drops.iter_mut().find(|d| d.0 == rule && d.1 == reason) {
        Some(d) => d.2 += 1,
        None => drops.push((rule, reason, 1)),
    }
}
