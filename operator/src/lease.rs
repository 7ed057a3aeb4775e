//! Leader election on a `coordination.k8s.io/v1` Lease, as client-go's `leaderelection`
//! does it, so that two replicas never write at once.
//!
//! - **Expiry by local observation.** A standby judges another holder's lease by when *it*
//!   last saw the Lease record change (its own monotonic clock), never by comparing the
//!   holder's `renewTime` with its own wall clock: clocks of two nodes may disagree by more
//!   than a lease.
//! - **The leader stops first.** A renewal sent at `t` lets the leader write until
//!   `t + renew deadline`; a standby that saw that renewal at some `t' ≥ t` takes over no
//!   earlier than `t' + lease duration`. The renew deadline is shorter than the lease (10 s
//!   and 15 s by default), so the old leader has stopped at least 5 s before the new one
//!   starts — whether its renewals failed, hung (every request has a timeout) or the
//!   process was paused.
//! - **Every write asks.** [`Leadership::write`] runs one write only while leading and
//!   checks again before each step of it, so a process that wakes from a pause past its
//!   deadline sends nothing, whichever of its tasks runs first.
//! - **A clean stop hands over at once.** On SIGTERM the leader stops writing, waits for
//!   the writes in flight, and releases the Lease (no holder, 1 s), so a standby takes
//!   over at its next retry instead of after the lease.
//!
//! Losing the lease ends the process (crash-only); its Deployment restarts it as a
//! standby. The one window left: a write that passed its check and then sat in a paused
//! process for longer than the margin (lease duration − renew deadline) before reaching
//! the server. Only fencing on the server side could close that.

use std::{
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
    task::Poll,
    time::{Duration, Instant},
};

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::Timestamp,
};
use kube::{
    Api, Client,
    api::{PostParams, ResourceExt},
};
use tokio::sync::RwLock;

/// Where, and the three durations of client-go's leader election.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    /// How long a standby waits, after it last saw the Lease change, before taking over.
    pub duration: Duration,
    /// How long the leader goes on without a successful renewal; shorter than `duration`.
    pub renew_deadline: Duration,
    /// How often the leader renews and a standby tries to acquire.
    pub retry_period: Duration,
}

impl LeaseConfig {
    /// client-go's proportions (15 s, 10 s, 2 s) for a given lease duration: the renew
    /// deadline two thirds of it, the retry period two fifteenths.
    pub fn renew_deadline_for(duration: Duration) -> Duration {
        duration * 2 / 3
    }

    pub fn retry_period_for(duration: Duration) -> Duration {
        duration * 2 / 15
    }

    /// Every request to the API server gives up after this: half the renew deadline, so a
    /// hung request still leaves time for another attempt before the deadline.
    pub fn request_timeout(&self) -> Duration {
        self.renew_deadline / 2
    }

    /// Checks the durations against each other.
    ///
    /// Notable errors: [`LeaseError::Config`] when the renew deadline is not shorter than
    /// the lease, or the retry period not shorter than the renew deadline.
    pub fn check(&self) -> Result<(), LeaseError> {
        let problem = if self.duration < Duration::from_secs(1) {
            Some("--lease-duration must be at least 1s".to_owned())
        } else if self.renew_deadline >= self.duration {
            Some(format!(
                "--lease-renew-deadline ({:?}) must be shorter than --lease-duration ({:?}), or the leader could still write after a standby took over",
                self.renew_deadline, self.duration
            ))
        } else if self.retry_period.is_zero() || self.retry_period >= self.renew_deadline {
            Some(format!(
                "--lease-retry-period ({:?}) must be above zero and shorter than --lease-renew-deadline ({:?})",
                self.retry_period, self.renew_deadline
            ))
        } else {
            None
        };
        problem.map_or(Ok(()), |why| Err(LeaseError::Config(why)))
    }

    fn seconds(&self) -> i32 {
        i32::try_from(self.duration.as_secs().max(1)).unwrap_or(i32::MAX)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("leader election: {0}")]
    Config(String),
    #[error("lease {namespace}/{name}: {source}")]
    Kube {
        namespace: String,
        name: String,
        #[source]
        source: Box<kube::Error>,
    },
    #[error("lease {namespace}/{name}: no answer from the API server within {after:?}")]
    Timeout {
        namespace: String,
        name: String,
        after: Duration,
    },
    #[error("lost the lease {namespace}/{name}: {why}")]
    Lost {
        namespace: String,
        name: String,
        why: String,
    },
}

/// A write refused because this process does not lead (any more).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not leading: the write was not sent")]
pub struct NotLeading;

/// Whether this process may write, shared by every writer: the controller, the fast path,
/// the orphan sweep, status and Events.
#[derive(Clone, Debug)]
pub struct Leadership {
    inner: Arc<LeadershipInner>,
}

#[derive(Debug)]
struct LeadershipInner {
    state: Mutex<State>,
    /// Each write holds a read guard; [`Leadership::resign`] takes the write lock, so it
    /// returns once the writes in flight are done and no new one can start.
    writes: Arc<RwLock<()>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    NotLeading,
    /// Leading until this instant unless a renewal moves it on.
    Until(Instant),
    /// No leader election: the only replica.
    Always,
}

impl Leadership {
    fn with_state(state: State) -> Self {
        Self {
            inner: Arc::new(LeadershipInner {
                state: Mutex::new(state),
                writes: Arc::new(RwLock::new(())),
            }),
        }
    }

    /// Not leading until an election says so.
    pub fn elected() -> Self {
        Self::with_state(State::NotLeading)
    }

    /// Leading for good (`--leader-election=false`).
    pub fn always() -> Self {
        Self::with_state(State::Always)
    }

    fn state(&self) -> State {
        self.inner
            .state
            .lock()
            .map(|s| *s)
            .unwrap_or(State::NotLeading)
    }

    fn set(&self, state: State) {
        if let Ok(mut s) = self.inner.state.lock() {
            *s = state;
        }
    }

    /// Whether this process may write at `now`.
    pub fn leading_at(&self, now: Instant) -> bool {
        match self.state() {
            State::NotLeading => false,
            State::Until(until) => now < until,
            State::Always => true,
        }
    }

    pub fn is_leading(&self) -> bool {
        self.leading_at(Instant::now())
    }

    /// Leads until `until` (an acquisition, or a renewal while still leading).
    fn lead_until(&self, until: Instant) {
        self.set(State::Until(until));
    }

    /// Stops leading now.
    fn lose(&self) {
        self.set(State::NotLeading);
    }

    /// Stops leading and waits (at most `grace`) for the writes in flight to finish.
    /// Returns whether they all did.
    pub async fn resign(&self, grace: Duration) -> bool {
        self.lose();
        tokio::time::timeout(grace, self.inner.writes.write())
            .await
            .is_ok()
    }

    /// Runs one write (a request to the API server or to ZooKeeper, or a few that belong
    /// together) while leading.
    ///
    /// Leadership is checked before every poll of `write`, not only before the first: a
    /// process paused past its deadline resumes with its writes refused, before any of
    /// them sends another byte. The write is abandoned at the deadline.
    ///
    /// Notable errors: [`NotLeading`] when this process does not lead, stops leading
    /// during the write, or is resigning.
    pub async fn write<F: Future>(&self, write: F) -> Result<F::Output, NotLeading> {
        let _guard = self
            .inner
            .writes
            .clone()
            .try_read_owned()
            .map_err(|_| NotLeading)?;
        let mut write = std::pin::pin!(write);
        let mut deadline: Option<Pin<Box<tokio::time::Sleep>>> = None;
        std::future::poll_fn(|cx| {
            let until = match self.state() {
                State::NotLeading => return Poll::Ready(Err(NotLeading)),
                State::Always => None,
                State::Until(until) if until <= Instant::now() => {
                    return Poll::Ready(Err(NotLeading));
                }
                State::Until(until) => Some(tokio::time::Instant::from_std(until)),
            };
            if let Poll::Ready(out) = write.as_mut().poll(cx) {
                return Poll::Ready(Ok(out));
            }
            if let Some(until) = until {
                let sleep =
                    deadline.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(until)));
                if sleep.deadline() != until {
                    sleep.as_mut().reset(until);
                }
                // Wakes this write at the deadline, to give it up then.
                if sleep.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Err(NotLeading));
                }
            }
            Poll::Pending
        })
        .await
    }
}

/// The parts of a Lease that matter to the election; any change of them (a renewal
/// changes `renewTime` and the resourceVersion) counts as the holder being alive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// `None` when nobody holds it (never held, or released).
    pub holder: Option<String>,
    pub duration_seconds: Option<i32>,
    pub renew_time: Option<String>,
    pub transitions: i32,
    pub resource_version: Option<String>,
}

impl Record {
    pub fn of(lease: &Lease) -> Self {
        let spec = lease.spec.clone().unwrap_or_default();
        Self {
            holder: spec.holder_identity.filter(|h| !h.is_empty()),
            duration_seconds: spec.lease_duration_seconds,
            renew_time: spec.renew_time.map(|t| t.0.to_string()),
            transitions: spec.lease_transitions.unwrap_or(0),
            resource_version: lease.resource_version(),
        }
    }
}

/// What to do about the Lease as it stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Ours: renew it.
    Renew,
    /// Free (released, or its holder has not renewed for its duration as we saw it):
    /// take it.
    TakeOver,
    /// Another holder's, alive as far as we saw; it expires at `expires` unless it
    /// changes before.
    Wait { holder: String, expires: Instant },
}

/// The Lease record this process last saw and when it saw it change.
#[derive(Debug, Default)]
pub struct Observer {
    seen: Option<(Record, Instant)>,
}

impl Observer {
    /// Notes `record` as read at `now` and decides. `fallback` is the lease duration
    /// assumed when the record has none.
    pub fn decide(
        &mut self,
        record: &Record,
        identity: &str,
        now: Instant,
        fallback: Duration,
    ) -> Decision {
        let changed_at = match &self.seen {
            Some((seen, at)) if seen == record => *at,
            _ => {
                self.seen = Some((record.clone(), now));
                now
            }
        };
        match record.holder.as_deref() {
            None => Decision::TakeOver,
            Some(holder) if holder == identity => Decision::Renew,
            Some(holder) => {
                let duration = record
                    .duration_seconds
                    .and_then(|s| u64::try_from(s).ok())
                    .map_or(fallback, Duration::from_secs);
                let expires = changed_at + duration;
                if now >= expires {
                    Decision::TakeOver
                } else {
                    Decision::Wait {
                        holder: holder.to_owned(),
                        expires,
                    }
                }
            }
        }
    }

    /// Notes our own successful write of `record` at `now`.
    pub fn wrote(&mut self, record: Record, now: Instant) {
        self.seen = Some((record, now));
    }
}

/// How one attempt went.
#[derive(Debug)]
enum Attempt {
    Leading,
    /// Someone else holds it (or won a race for it).
    Standby(Option<String>),
}

/// One replica's part in the election.
pub struct Elector {
    api: Api<Lease>,
    config: LeaseConfig,
    observer: Observer,
    leadership: Leadership,
}

impl Elector {
    /// Notable errors: [`LeaseError::Config`] for durations that could let two leaders
    /// overlap ([`LeaseConfig::check`]).
    pub fn new(client: Client, config: LeaseConfig) -> Result<Self, LeaseError> {
        config.check()?;
        Ok(Self {
            api: Api::namespaced(client, &config.namespace),
            config,
            observer: Observer::default(),
            leadership: Leadership::elected(),
        })
    }

    /// The handle every writer checks.
    pub fn leadership(&self) -> Leadership {
        self.leadership.clone()
    }

    /// Blocks until this replica leads.
    pub async fn acquire(&mut self) {
        let mut waiting_for = None;
        loop {
            let started = Instant::now();
            match self.attempt(started).await {
                Ok(Attempt::Leading) => {
                    tracing::info!(lease = %self.config.name, identity = %self.config.identity, "acquired the lease; leading");
                    return;
                }
                Ok(Attempt::Standby(holder)) => {
                    if holder != waiting_for {
                        tracing::info!(holder = ?holder, "the lease is held; standing by");
                        waiting_for = holder;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "lease attempt failed"),
            }
            tokio::time::sleep_until((started + self.config.retry_period).into()).await;
        }
    }

    /// Renews every retry period while leading; returns when leadership is over: another
    /// holder took the Lease, or no renewal succeeded within the renew deadline. Writers
    /// are refused from the deadline on, whether or not this has returned yet.
    pub async fn hold(&mut self) -> LeaseError {
        let mut last = Instant::now();
        loop {
            let next = last + self.config.retry_period;
            let until = match self.leadership.state() {
                State::Until(until) => until,
                State::NotLeading | State::Always => return self.lost("not leading".into()),
            };
            tokio::time::sleep_until(next.min(until).into()).await;
            let started = Instant::now();
            if started >= until {
                return self.missed_deadline();
            }
            if started < next {
                continue;
            }
            last = started;
            // An attempt still running at the deadline ends leadership: once over, it is
            // over, even if the renewal lands later.
            match tokio::time::timeout_at(until.into(), self.attempt(started)).await {
                Err(_) => return self.missed_deadline(),
                Ok(Ok(Attempt::Leading)) => {}
                Ok(Ok(Attempt::Standby(holder))) => {
                    self.leadership.lose();
                    return self.lost(format!(
                        "{} holds it now",
                        holder.as_deref().unwrap_or("nobody")
                    ));
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "lease renewal failed; retrying until the renew deadline")
                }
            }
        }
    }

    fn missed_deadline(&self) -> LeaseError {
        self.leadership.lose();
        self.lost(format!(
            "no renewal succeeded within the renew deadline ({:?})",
            self.config.renew_deadline
        ))
    }

    /// Stops writing (waiting up to `grace` for the writes in flight) and gives the Lease
    /// up, so that a standby takes it at its next try: no holder and a 1 s duration, as
    /// client-go's `ReleaseOnCancel`.
    pub async fn release(&mut self, grace: Duration) {
        let was_leading = self.leadership.is_leading();
        if !self.leadership.resign(grace).await {
            tracing::warn!(
                ?grace,
                "writes still in flight at the release; releasing anyway"
            );
        }
        if !was_leading {
            return;
        }
        let result = self
            .bounded(async {
                let Some(mut lease) = self.api.get_opt(&self.config.name).await? else {
                    return Ok(false);
                };
                let spec = lease.spec.clone().unwrap_or_default();
                if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
                    return Ok(false);
                }
                let now = MicroTime(Timestamp::now());
                lease.spec = Some(LeaseSpec {
                    holder_identity: None,
                    lease_duration_seconds: Some(1),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    ..spec
                });
                self.api
                    .replace(&self.config.name, &PostParams::default(), &lease)
                    .await
                    .map(|_| true)
            })
            .await;
        match result {
            Ok(true) => {
                tracing::info!(lease = %self.config.name, "released the lease for a standby")
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(error = %e, "cannot release the lease; a standby takes over when it expires")
            }
        }
    }

    fn lost(&self, why: String) -> LeaseError {
        LeaseError::Lost {
            namespace: self.config.namespace.clone(),
            name: self.config.name.clone(),
            why,
        }
    }

    /// One request (or a read and a write) with [`LeaseConfig::request_timeout`].
    async fn bounded<T>(
        &self,
        request: impl Future<Output = Result<T, kube::Error>>,
    ) -> Result<T, LeaseError> {
        let after = self.config.request_timeout();
        match tokio::time::timeout(after, request).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(LeaseError::Kube {
                namespace: self.config.namespace.clone(),
                name: self.config.name.clone(),
                source: Box::new(e),
            }),
            Err(_) => Err(LeaseError::Timeout {
                namespace: self.config.namespace.clone(),
                name: self.config.name.clone(),
                after,
            }),
        }
    }

    /// One attempt to create, renew or take over the Lease, begun at `started`; on success
    /// this replica leads until `started` + the renew deadline.
    async fn attempt(&mut self, started: Instant) -> Result<Attempt, LeaseError> {
        let current = self.bounded(self.api.get_opt(&self.config.name)).await?;
        let now = MicroTime(Timestamp::now());
        let written = match current {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.config.name.clone()),
                        ..Default::default()
                    },
                    spec: Some(LeaseSpec {
                        holder_identity: Some(self.config.identity.clone()),
                        lease_duration_seconds: Some(self.config.seconds()),
                        acquire_time: Some(now.clone()),
                        renew_time: Some(now),
                        lease_transitions: Some(0),
                        ..Default::default()
                    }),
                };
                self.bounded(self.api.create(&PostParams::default(), &lease))
                    .await
            }
            Some(mut lease) => {
                let record = Record::of(&lease);
                let decision = self.observer.decide(
                    &record,
                    &self.config.identity,
                    Instant::now(),
                    self.config.duration,
                );
                let ours = match decision {
                    Decision::Wait { holder, .. } => return Ok(Attempt::Standby(Some(holder))),
                    Decision::Renew => true,
                    Decision::TakeOver => false,
                };
                let spec = lease.spec.clone().unwrap_or_default();
                lease.spec = Some(LeaseSpec {
                    holder_identity: Some(self.config.identity.clone()),
                    lease_duration_seconds: Some(self.config.seconds()),
                    acquire_time: if ours {
                        spec.acquire_time.clone()
                    } else {
                        Some(now.clone())
                    },
                    renew_time: Some(now),
                    lease_transitions: Some(record.transitions + i32::from(!ours)),
                    ..spec
                });
                self.bounded(
                    self.api
                        .replace(&self.config.name, &PostParams::default(), &lease),
                )
                .await
            }
        };
        match written {
            Ok(lease) => {
                self.observer.wrote(Record::of(&lease), Instant::now());
                self.leadership
                    .lead_until(started + self.config.renew_deadline);
                Ok(Attempt::Leading)
            }
            // Someone else wrote it between our read and our write.
            Err(LeaseError::Kube { source, .. }) if matches!(&*source, kube::Error::Api(s) if s.code == 409) => {
                Ok(Attempt::Standby(None))
            }
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_secs(15);

    fn record(holder: Option<&str>, renewed: &str, version: &str) -> Record {
        Record {
            holder: holder.map(Into::into),
            duration_seconds: Some(15),
            renew_time: Some(renewed.into()),
            transitions: 0,
            resource_version: Some(version.into()),
        }
    }

    #[test]
    fn given_each_lease_state_and_observation_history_then_the_decision_follows_local_time() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        // A renewTime far in our past (the holder's clock behind ours, or ours ahead): by
        // wall clocks it looks expired; by observation it was renewed just now.
        let skewed = "2020-01-01T00:00:00Z";
        struct Row {
            name: &'static str,
            /// (record, seconds after t0 it was read)
            reads: Vec<(Record, u64)>,
            expect: fn(&Decision) -> bool,
        }
        let rows = vec![
            Row {
                name: "first sight of another holder: wait a whole lease from now, whatever its renewTime says",
                reads: vec![(record(Some("a"), skewed, "1"), 0)],
                expect: |d| matches!(d, Decision::Wait { holder, .. } if holder == "a"),
            },
            Row {
                name: "unchanged for less than the lease: wait",
                reads: vec![
                    (record(Some("a"), skewed, "1"), 0),
                    (record(Some("a"), skewed, "1"), 14),
                ],
                expect: |d| matches!(d, Decision::Wait { .. }),
            },
            Row {
                name: "unchanged for the whole lease as we saw it: take over",
                reads: vec![
                    (record(Some("a"), skewed, "1"), 0),
                    (record(Some("a"), skewed, "1"), 15),
                ],
                expect: |d| *d == Decision::TakeOver,
            },
            Row {
                name: "renewed (changed) in between: the wait starts again from that sight",
                reads: vec![
                    (record(Some("a"), skewed, "1"), 0),
                    (record(Some("a"), "2020-01-01T00:00:10Z", "2"), 10),
                    (record(Some("a"), "2020-01-01T00:00:10Z", "2"), 20),
                ],
                expect: |d| matches!(d, Decision::Wait { .. }),
            },
            Row {
                name: "released (no holder): take over at once",
                reads: vec![(record(None, skewed, "3"), 0)],
                expect: |d| *d == Decision::TakeOver,
            },
            Row {
                name: "ours: renew",
                reads: vec![(record(Some("me"), skewed, "4"), 0)],
                expect: |d| *d == Decision::Renew,
            },
        ];
        for row in rows {
            let mut observer = Observer::default();
            let mut last = None;
            for (rec, at) in &row.reads {
                last = Some(observer.decide(rec, "me", t0 + s(*at), LEASE));
            }
            let last = last.expect("a read");
            assert!((row.expect)(&last), "{}: got {last:?}", row.name);
        }
    }

    #[test]
    fn given_a_holder_seen_at_t_then_it_expires_at_t_plus_its_own_duration() {
        let t0 = Instant::now();
        let mut observer = Observer::default();
        let mut rec = record(Some("a"), "x", "1");
        rec.duration_seconds = Some(4);
        let d = observer.decide(&rec, "me", t0 + Duration::from_secs(2), LEASE);
        assert_eq!(
            d,
            Decision::Wait {
                holder: "a".into(),
                expires: t0 + Duration::from_secs(6)
            }
        );
        rec.duration_seconds = None;
        rec.resource_version = Some("2".into());
        let d = observer.decide(&rec, "me", t0 + Duration::from_secs(3), LEASE);
        assert_eq!(
            d,
            Decision::Wait {
                holder: "a".into(),
                expires: t0 + Duration::from_secs(18)
            },
            "without a duration in the record, our own"
        );
    }

    #[test]
    fn given_a_renewal_then_the_leader_writes_until_the_renew_deadline_and_not_after() {
        let l = Leadership::elected();
        let t0 = Instant::now();
        assert!(!l.leading_at(t0), "not before an election");
        l.lead_until(t0 + Duration::from_secs(10));
        for (at, leading) in [(0, true), (9, true), (10, false), (16, false)] {
            assert_eq!(
                l.leading_at(t0 + Duration::from_secs(at)),
                leading,
                "at {at}s after a renewal with a 10s deadline"
            );
        }
        l.lose();
        assert!(!l.leading_at(t0));
        assert!(Leadership::always().leading_at(t0 + Duration::from_secs(1_000_000)));
    }

    #[test]
    fn given_durations_that_could_overlap_then_the_config_is_refused_naming_the_flag() {
        let config = |lease: u64, renew: u64, retry: u64| LeaseConfig {
            namespace: "ns".into(),
            name: "l".into(),
            identity: "me".into(),
            duration: Duration::from_secs(lease),
            renew_deadline: Duration::from_secs(renew),
            retry_period: Duration::from_secs(retry),
        };
        assert!(config(15, 10, 2).check().is_ok());
        let e = config(15, 15, 2).check().expect_err("renew = lease");
        assert!(e.to_string().contains("--lease-renew-deadline"), "{e}");
        let e = config(15, 10, 10).check().expect_err("retry = renew");
        assert!(e.to_string().contains("--lease-retry-period"), "{e}");
        assert_eq!(
            LeaseConfig::renew_deadline_for(Duration::from_secs(15)),
            Duration::from_secs(10)
        );
        assert_eq!(
            LeaseConfig::retry_period_for(Duration::from_secs(15)),
            Duration::from_secs(2)
        );
    }

    #[tokio::test]
    async fn given_a_write_when_the_deadline_passes_before_it_is_polled_again_then_it_never_continues()
     {
        let l = Leadership::elected();
        l.lead_until(Instant::now() + Duration::from_millis(100));
        let steps = Arc::new(Mutex::new(Vec::new()));
        let log = steps.clone();
        let result = l
            .write(async move {
                log.lock().expect("log").push("first request");
                // A pause past the deadline between two requests of one write.
                std::thread::sleep(Duration::from_millis(150));
                tokio::task::yield_now().await;
                log.lock().expect("log").push("second request");
            })
            .await;
        assert_eq!(result, Err(NotLeading));
        assert_eq!(*steps.lock().expect("log"), vec!["first request"]);
        assert_eq!(l.write(async {}).await, Err(NotLeading), "and none after");
    }

    #[tokio::test]
    async fn given_a_slow_write_then_it_is_abandoned_at_the_deadline() {
        let l = Leadership::elected();
        l.lead_until(Instant::now() + Duration::from_millis(100));
        let started = Instant::now();
        let result = l.write(tokio::time::sleep(Duration::from_secs(30))).await;
        assert_eq!(result, Err(NotLeading));
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "gave up after {:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn given_a_write_in_flight_when_resigning_then_resign_waits_for_it_and_refuses_new_ones()
    {
        let l = Leadership::always();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let writer = l.clone();
        let in_flight = tokio::spawn(async move { writer.write(rx).await });
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        let resigner = l.clone();
        let resign = tokio::spawn(async move { resigner.resign(Duration::from_secs(5)).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !resign.is_finished(),
            "resign waits for the write in flight"
        );
        assert_eq!(l.write(async {}).await, Err(NotLeading));
        tx.send(()).expect("send");
        let done = in_flight.await.expect("join");
        assert_eq!(
            done.map(|r| r.is_ok()),
            Err(NotLeading),
            "the write in flight is refused at its next poll once resigning began"
        );
        assert!(resign.await.expect("join"), "resign finished");
    }
}
