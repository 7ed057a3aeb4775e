//! Kubernetes Events about ServiceLogs, published off the reconcile path.
//!
//! An Event is a note for a person, not state: a reconcile must not wait for one, and a
//! cold start over 10,000 ServiceLogs must not hold 10,000 Events in memory. Reconciles
//! hand events to a bounded queue and go on; one task posts them with a few requests in
//! flight. When the queue is full (the API server is slower than the events come), the
//! newest are dropped and counted (`servicelog_kube_events_dropped_total`), never blocking.
//!
//! Unlike kube's `Recorder`, nothing is cached to aggregate repeats into a series: the
//! operator emits an event per change it made (publish, drift repair, rejection,
//! cleanup), not per reconcile, so repeats are rare and each is worth its own line.

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::{
    api::{core::v1::ObjectReference, events::v1::Event as K8sEvent},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::Timestamp,
};
use kube::{
    Api, Client,
    api::PostParams,
    runtime::events::{Event, EventType},
};
use tokio::sync::{mpsc, watch};

use crate::{lease::Leadership, metrics::Metrics};

/// Events waiting to be posted before new ones are dropped: about a second of posting.
/// A cold start that publishes 10,000 new ServiceLogs drops most of their Events either way;
/// each waiting one costs about 500 bytes.
const QUEUE: usize = 1024;
/// Event creations in flight at once.
const IN_FLIGHT: usize = 8;

/// Where reconciles send events; cheap to clone.
#[derive(Clone)]
pub struct Events {
    tx: mpsc::Sender<Queued>,
    metrics: Arc<Metrics>,
}

/// An event as it waits: what varies, made into an `Event` object when it is posted.
struct Queued {
    at: Timestamp,
    type_: EventType,
    reason: Box<str>,
    action: Box<str>,
    note: Option<Box<str>>,
    regarding: ObjectReference,
    related: Option<Box<ObjectReference>>,
}

/// Who reports the events.
struct Reporter {
    controller: String,
    instance: String,
}

impl Events {
    /// Starts the posting task; events are reported by `controller` (and this replica's
    /// `instance`).
    /// Nothing is posted before `warm` turns true (or [`super::fast::WARMUP_LIMIT`]): on a
    /// cold start the API server's CPU goes to nothing ahead of the fast path.
    pub fn start(
        client: Client,
        controller: &str,
        instance: &str,
        metrics: Arc<Metrics>,
        warm: watch::Receiver<bool>,
        leadership: Leadership,
    ) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        let reporter = Reporter {
            controller: controller.to_owned(),
            instance: instance.to_owned(),
        };
        tokio::spawn(async move {
            super::fast::wait_warm(warm).await;
            post_all(client, reporter, rx, leadership).await;
        });
        Self { tx, metrics }
    }

    /// Queues an event about `regarding`; never waits.
    pub fn publish(&self, event: &Event, regarding: &ObjectReference) {
        let queued = Queued {
            at: Timestamp::now(),
            type_: event.type_,
            reason: event.reason.as_str().into(),
            action: event.action.as_str().into(),
            note: event.note.as_deref().map(Into::into),
            regarding: regarding.clone(),
            related: event.secondary.clone().map(Box::new),
        };
        if self.tx.try_send(queued).is_err() {
            self.metrics.event_dropped();
        }
    }
}

impl Reporter {
    fn build(&self, ev: Queued) -> K8sEvent {
        K8sEvent {
            action: Some(ev.action.into()),
            reason: Some(ev.reason.into()),
            event_time: Some(MicroTime(ev.at)),
            note: ev.note.map(Into::into),
            metadata: ObjectMeta {
                namespace: ev.regarding.namespace.clone(),
                name: Some(format!(
                    "{}.{:x}",
                    ev.regarding.name.as_deref().unwrap_or(&self.controller),
                    ev.at.as_nanosecond()
                )),
                ..Default::default()
            },
            regarding: Some(ev.regarding),
            reporting_controller: Some(self.controller.clone()),
            reporting_instance: Some(self.instance.clone()),
            type_: Some(
                match ev.type_ {
                    EventType::Normal => "Normal",
                    EventType::Warning => "Warning",
                }
                .into(),
            ),
            related: ev.related.map(|r| *r),
            ..Default::default()
        }
    }
}

/// Posts while leading; a replica that stopped leading drops what is queued.
async fn post_all(
    client: Client,
    reporter: Reporter,
    rx: mpsc::Receiver<Queued>,
    leadership: Leadership,
) {
    let mut rx = rx;
    let queued = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
    queued
        .map(|queued| {
            let client = client.clone();
            let leadership = leadership.clone();
            let event = reporter.build(queued);
            async move {
                let namespace = event.metadata.namespace.as_deref().unwrap_or("default");
                let api: Api<K8sEvent> = Api::namespaced(client, namespace);
                match leadership
                    .write(api.create(&PostParams::default(), &event))
                    .await
                {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, reason = ?event.reason, "cannot publish event")
                    }
                    Err(e) => tracing::debug!(error = %e, reason = ?event.reason, "event dropped"),
                }
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .for_each(|()| async {})
        .await;
}
