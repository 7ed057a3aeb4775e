//! Where events come from: files on a volume shared with the application ([`file`](mod@file)) and
//! syslog senders ([`syslog`]).
//!
//! Both hand their events to a [`Batcher`] in runs: a run is routed under one pipeline
//! (so a config swap falls between runs), each event is encoded for every sink its rules
//! chose, and the run ends by sending one [`Batch`] per sink that got anything. The
//! returned [`BatchAck`] completes once all of them are written; the file reader
//! checkpoints behind it, syslog (which has no acknowledgement to give its senders) does
//! not wait for it.

pub mod checkpoint;
pub mod file;
pub mod syslog;

use std::{sync::Arc, time::Instant};

use prometheus_client::metrics::counter::Counter;
use servicelog_api::{
    Router,
    rules::{DropReason, Event},
    v1alpha1::{Format, LineEncoding},
};

use crate::{
    metrics::Metrics,
    pipeline::Pipeline,
    sinks::{Batch, BatchAck, BufferPool, encode},
};

/// Buffers reused from run to run, so routing does not allocate per run.
#[derive(Debug, Default)]
pub struct Batcher {
    outs: Vec<Vec<u8>>,
    counts: Vec<u64>,
    drops: Vec<(Option<u16>, DropReason, u64)>,
    encodings: Vec<LineEncoding>,
}

impl Batcher {
    /// Starts a run of events of source `source` (an index of `pipeline.router`).
    /// `meta` is the source's `_servicelog` member (see [`encode::meta_member`]); a sink's
    /// buffer, when it needs a new one, is taken from `pool` with `capacity`.
    pub fn run<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        source: usize,
        meta: &'a [u8],
        pool: &'a BufferPool,
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
        let router = &pipeline.router;
        Run {
            format: router.source_format(source).unwrap_or(Format::Text),
            batcher: self,
            pipeline,
            router,
            source,
            meta,
            pool,
            capacity,
            now: Instant::now(),
            events: 0,
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
    meta: &'a [u8],
    pool: &'a BufferPool,
    capacity: usize,
    now: Instant,
    events: u64,
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
        let event = self.router.parse(self.source, line);
        self.push(&event, &event, with_nl, false);
    }

    /// Routes `routed` and writes `written` to the sinks it goes to: `raw` (newline
    /// terminated) for `raw` sinks, `written` encoded for `json` sinks. They differ when
    /// the fields that decide are not the whole event (a multi-line event routed by its
    /// first line). `flatten` turns raw newlines inside a structured `written` (a
    /// pretty-printed JSON object; JSON strings cannot hold raw newlines) into spaces, so
    /// it stays one line.
    #[inline]
    pub fn push(&mut self, routed: &Event<'_>, written: &Event<'_>, raw: &[u8], flatten: bool) {
        self.events += 1;
        let decision = self.router.route(routed, self.now);
        let b = &mut *self.batcher;
        if let Some(reason) = decision.drop {
            count_drop(&mut b.drops, decision.rule, reason);
            return;
        }
        for sink in decision.sinks {
            let Some(out) = b.outs.get_mut(sink) else {
                continue;
            };
            if out.capacity() == 0 {
                *out = self.pool.take(self.capacity);
            }
            match b.encodings[sink] {
                LineEncoding::Raw => out.extend_from_slice(raw),
                LineEncoding::Json => {
                    let from = out.len();
                    encode::encode_json(out, written, self.format, self.meta);
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

    /// Counts the run's events and drops, and sends one batch per sink that got events.
    /// Blocks while a sink's queue is full (backpressure). The ack completes when every
    /// batch is written; a batch a sink refused (it gave up at shutdown) leaves it
    /// incomplete for good.
    pub fn finish(self, metrics: &Metrics, events_in: &Counter) -> Arc<BatchAck> {
        let b = self.batcher;
        events_in.inc_by(self.events);
        for (rule, reason, n) in b.drops.drain(..) {
            let rule = rule
                .and_then(|r| self.router.rule_names().get(usize::from(r)))
                .map_or("default", String::as_str);
            metrics.dropped(rule, reason.as_str(), n);
        }
        let sinks = self.pipeline.sinks.len();
        let targets = b.outs[..sinks].iter().filter(|o| !o.is_empty()).count();
        let ack = Arc::new(BatchAck::new(targets));
        for (sink, out) in b.outs[..sinks].iter_mut().enumerate() {
            if out.is_empty() {
                continue;
            }
            let batch = Batch {
                data: std::mem::take(out),
                events: std::mem::take(&mut b.counts[sink]),
                ack: ack.clone(),
            };
            if let Err(batch) = self.pipeline.sinks[sink].send(batch) {
                self.pool.give(batch.data);
            }
        }
        ack
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
