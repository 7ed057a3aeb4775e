//! Step 4, status: what a person reads — conditions with reasons and messages they can act
//! on, pod counts, the printer-column summary — and what the reconcile does next.
//! [`plan`] decides it all from the other steps' results, a pure function with table-driven
//! tests; [`write`] patches the result by server-side apply, only when it changed.

use std::{collections::HashMap, time::Duration};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams},
};
use servicelog_api::{
    v1alpha1::{Condition, PodCounts, ServiceLog, ServiceLogStatus},
    wire::InstanceState,
};

use super::{
    Context, Error, FIELD_MANAGER, ROLLOUT_REFRESH_INTERVAL, ROLLOUT_STATUS_INTERVAL, memory::Key,
    observe::Observed,
};
use crate::{cache, cache::CachedServiceLog, zk::InstanceRecord};

pub const VALID: &str = "Valid";
pub const PUBLISHED: &str = "Published";
pub const READY: &str = "Ready";

/// The longest condition message and Event note, in bytes. The API server refuses an
/// Event whose note is over 1 KiB, and a condition naming every one of a thousand
/// rejecting pods would make the status (and each watch event of it) tens of kilobytes
/// that nobody reads to the end.
pub const MESSAGE_LIMIT: usize = 1024;

/// `message` cut to at most `limit` bytes at a char boundary, ending with how many bytes
/// were left out; unchanged when it fits.
pub fn cap_message(mut message: String, limit: usize) -> String {
    if message.len() <= limit {
        return message;
    }
    let marker = |cut: usize| format!("… ({cut} more bytes)");
    // The marker for the whole length is at least as long as the final one.
    let mut keep = limit.saturating_sub(marker(message.len()).len());
    while !message.is_char_boundary(keep) {
        keep -= 1;
    }
    let cut = message.len() - keep;
    message.truncate(keep);
    message.push_str(&marker(cut));
    message
}

/// A condition without its transition time, which [`merge_conditions`] decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cond {
    pub type_: &'static str,
    pub ok: bool,
    pub reason: &'static str,
    pub message: String,
}

impl Cond {
    pub fn new(
        type_: &'static str,
        ok: bool,
        reason: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            type_,
            ok,
            reason,
            message: cap_message(message.into(), MESSAGE_LIMIT),
        }
    }
}

/// The new conditions, keeping `lastTransitionTime` of those whose status did not change
/// (metav1.Condition semantics), so an unchanged world writes an unchanged status.
pub fn merge_conditions(
    old: &[Condition],
    new: &[Cond],
    generation: Option<i64>,
    now: &str,
) -> Vec<Condition> {
    new.iter()
        .map(|c| {
            let status = if c.ok { "True" } else { "False" };
            let since = old
                .iter()
                .find(|o| o.r#type == c.type_ && o.status == status)
                .map(|o| o.last_transition_time.clone())
                .unwrap_or_else(|| now.to_owned());
            Condition {
                r#type: c.type_.to_owned(),
                status: status.to_owned(),
                observed_generation: generation,
                last_transition_time: since,
                reason: c.reason.to_owned(),
                message: c.message.clone(),
            }
        })
        .collect()
}

/// Rollout of one config across the injected pods.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Rollout {
    pub counts: PodCounts,
    /// `pod: error` of sidecars that rejected the current config.
    pub rejected: Vec<String>,
}

/// Counts pods: `matched` by the selector, `injected` carrying our sidecar, `applied` those
/// injected pods whose instance znode acks `hash` with state ok.
pub fn rollout(
    matched: u32,
    injected: &[String],
    instances: &[(String, InstanceRecord)],
    hash: &str,
) -> Rollout {
    let mut applied = 0;
    let mut rejected = Vec::new();
    // By name, once: a lookup per injected pod in the list was 500,000 string
    // comparisons per reconcile at 1,000 pods, and the reconcile runs per ack.
    let mut by_pod: HashMap<&str, &InstanceRecord> = HashMap::with_capacity(instances.len());
    for (name, record) in instances {
        by_pod.entry(name.as_str()).or_insert(record);
    }
    for pod in injected {
        match by_pod.get(pod.as_str()).copied() {
            Some(Ok(i)) if i.hash == hash && i.state == InstanceState::Ok => applied += 1,
            Some(Ok(i)) if i.state == InstanceState::Error => {
                rejected.push(format!(
                    "{pod}: {}",
                    i.error.as_deref().unwrap_or("rejected the config")
                ));
            }
            Some(Err(e)) => rejected.push(format!("{pod}: unreadable instance record: {e}")),
            _ => {}
        }
    }
    let injected = u32::try_from(injected.len()).unwrap_or(u32::MAX);
    Rollout {
        counts: PodCounts {
            matched,
            injected,
            applied,
            summary: format!("{applied}/{injected}"),
        },
        rejected,
    }
}

/// The Ready condition from a rollout of a published config.
pub fn ready(rollout: &Rollout, hash: &str) -> Cond {
    let c = &rollout.counts;
    if c.injected == 0 {
        return Cond::new(
            READY,
            true,
            "NoPods",
            "published; no pod carries the sidecar yet",
        );
    }
    if c.applied == c.injected {
        return Cond::new(
            READY,
            true,
            "Applied",
            format!("all {} sidecars run {hash}", c.injected),
        );
    }
    let mut message = format!("{}/{} sidecars run {hash}", c.applied, c.injected);
    if !rollout.rejected.is_empty() {
        message.push_str("; rejected by ");
        message.push_str(&rollout.rejected.join("; "));
        return Cond::new(READY, false, "Rejected", message);
    }
    Cond::new(READY, false, "RollingOut", message)
}

/// How the publish step went, as status reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishOutcome {
    /// The config znode holds `hash` at `version` (written now or already).
    Published {
        hash: String,
        version: i32,
        path: String,
    },
    /// Not published; `reason` is the condition's, `message` says why.
    Failed {
        reason: &'static str,
        message: String,
    },
}

/// What the reconcile does after writing status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Nothing to do until the resource, its pods or its znodes change.
    AwaitChange,
    Requeue(Duration),
}

/// The status to write and what to do next.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The new status without its conditions, which [`write`] merges from `conds`.
    pub status: ServiceLogStatus,
    pub conds: Vec<Cond>,
    pub next: Next,
    /// Some injected pods do not run the config yet, and none rejected it.
    pub partway: bool,
    /// The message of a `Rejected` Event to post: an invalid spec at a new generation.
    pub rejected: Option<String>,
}

/// What the other steps found for one resource.
pub struct Findings<'a> {
    pub generation: Option<i64>,
    /// The status the reconcile starts from.
    pub old: &'a ServiceLogStatus,
    /// The problems of an invalid spec, or the publish outcome of a valid one.
    pub validity: Result<&'a PublishOutcome, &'a [String]>,
    /// `None` when the spec was invalid (nothing is observed then).
    pub observed: Option<&'a Observed>,
}

/// Decides the status and the next action from the steps' findings.
pub fn plan(f: &Findings<'_>) -> Plan {
    let mut status = ServiceLogStatus {
        observed_generation: f.generation,
        ..f.old.clone()
    };
    let publish = match f.validity {
        Err(problems) => {
            let message = problems.join("; ");
            let kept = f
                .old
                .config_hash
                .as_deref()
                .map(|h| format!("sidecars keep {h}"))
                .unwrap_or_else(|| "nothing was ever published".into());
            let conds = vec![
                Cond::new(VALID, false, "InvalidSpec", message.clone()),
                Cond::new(
                    PUBLISHED,
                    false,
                    "InvalidSpec",
                    format!(
                        "generation {} not published; {kept}",
                        f.generation.unwrap_or(0)
                    ),
                ),
            ];
            return Plan {
                status,
                conds,
                next: Next::AwaitChange,
                partway: false,
                rejected: (f.old.observed_generation != f.generation).then_some(message),
            };
        }
        Ok(publish) => publish,
    };
    let mut conds = vec![Cond::new(
        VALID,
        true,
        "Validated",
        "the spec compiles; every sidecar can run it",
    )];
    let mut next = Next::AwaitChange;
    match publish {
        PublishOutcome::Published {
            hash,
            version,
            path,
        } => {
            status.config_hash = Some(hash.clone());
            status.published_version = Some(*version);
            conds.push(Cond::new(
                PUBLISHED,
                true,
                "Published",
                format!("{hash} at {path} (version {version})"),
            ));
        }
        PublishOutcome::Failed { reason, message } => {
            conds.push(Cond::new(
                PUBLISHED,
                false,
                reason,
                format!("{message}; retrying"),
            ));
            // The reconcile returns the failure as its error: the resource's backoff
            // decides when to retry.
        }
    }
    let hash = status.config_hash.clone().unwrap_or_default();
    let mut partway = false;
    let observed = f.observed;
    match observed.and_then(|o| o.instances.as_deref().map(|i| (o, i))) {
        Some((o, instances)) => {
            let rollout = rollout(o.pods.matched, &o.pods.injected, instances, &hash);
            partway =
                rollout.counts.applied < rollout.counts.injected && rollout.rejected.is_empty();
            status.pods = Some(rollout.counts.clone());
            if matches!(publish, PublishOutcome::Published { .. }) {
                conds.push(ready(&rollout, &hash));
            } else {
                conds.push(Cond::new(
                    READY,
                    false,
                    "NotPublished",
                    "waiting for the config to be published",
                ));
            }
        }
        None => {
            let mut counts = f.old.pods.clone().unwrap_or_default();
            if let Some(o) = observed {
                counts.matched = o.pods.matched;
                counts.injected = u32::try_from(o.pods.injected.len()).unwrap_or(u32::MAX);
            }
            counts.summary = format!("{}/{}", counts.applied, counts.injected);
            status.pods = Some(counts);
            conds.push(Cond::new(
                READY,
                false,
                "ZooKeeperUnavailable",
                "cannot read the sidecars' acks",
            ));
        }
    }
    if observed.is_some_and(|o| o.behind) {
        next = Next::Requeue(ROLLOUT_REFRESH_INTERVAL);
    }
    Plan {
        status,
        conds,
        next,
        partway,
        rejected: None,
    }
}

/// While a rollout of an unchanged config is partway, status is written at most every
/// [`ROLLOUT_STATUS_INTERVAL`]: how long to wait before writing, if at all.
pub fn throttle(
    partway: bool,
    same_config: bool,
    since_last_write: Option<Duration>,
) -> Option<Duration> {
    if !(partway && same_config) {
        return None;
    }
    since_last_write
        .and_then(|t| ROLLOUT_STATUS_INTERVAL.checked_sub(t))
        .filter(|wait| !wait.is_zero())
}

/// The status a reconcile starts from: the one this process last wrote, or the cache's
/// (without reasons and messages), with the hash of the whole.
pub struct OldStatus {
    pub status: ServiceLogStatus,
    pub hash: Option<u64>,
}

/// Merges `conds` into the status and patches it by server-side apply, unless it hashes
/// the same as `old`. Returns whether it wrote.
pub async fn write(
    ctx: &Context,
    obj: &ServiceLog,
    key: &Key,
    mut status: ServiceLogStatus,
    conds: &[Cond],
    old: &OldStatus,
) -> Result<bool, Error> {
    let now = Time(k8s_openapi::jiff::Timestamp::now()).0.to_string();
    status.conditions = merge_conditions(
        &old.status.conditions,
        conds,
        status.observed_generation,
        &now,
    );
    if old.hash == Some(cache::status_hash(&status)) {
        return Ok(false);
    }
    let api: Api<CachedServiceLog> = Api::namespaced(ctx.client.clone(), &key.0);
    let counts = status
        .pods
        .as_ref()
        .map(|p| (p.applied, p.injected))
        .unwrap_or_default();
    let sent = std::time::Instant::now();
    let patch = serde_json::json!({
        "apiVersion": "servicelog.io/v1alpha1",
        "kind": "ServiceLog",
        "status": status,
    });
    let updated = ctx
        .leadership
        .write(api.patch_status(
            &obj.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        ))
        .await??;
    // With the watch's "instance records read", the timeline of a rollout (the fleet bench
    // reads both from the log).
    tracing::debug!(
        servicelog = %format!("{}/{}", key.0, key.1),
        applied = counts.0,
        injected = counts.1,
        patch_ms = sent.elapsed().as_secs_f64() * 1e3,
        "status written"
    );
    ctx.memory
        .set_status(key, updated.revision(), status, &ctx.slogs);
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::observe::Pods;
    use servicelog_api::wire::Instance;

    fn instance(hash: &str, state: InstanceState, error: Option<&str>) -> Instance {
        Instance {
            pod: String::new(),
            hash: hash.into(),
            state,
            error: error.map(Into::into),
            since: "2026-11-25T00:00:00Z".into(),
            sink_errors: Default::default(),
            candidate: None,
            health: None,
        }
    }

    #[test]
    fn given_messages_of_every_length_then_each_fits_the_limit_and_says_what_was_cut() {
        let limit = 64;
        for (name, message) in [
            ("ascii", "x".repeat(1000)),
            ("two-byte chars", "é".repeat(500)),
            ("four-byte chars", "🦀".repeat(300)),
            ("mixed", "aé🦀".repeat(100)),
            ("just over", "y".repeat(limit + 1)),
        ] {
            let capped = cap_message(message.clone(), limit);
            assert!(capped.len() <= limit, "{name}: {} bytes", capped.len());
            let (kept, marker) = capped.split_once('…').expect("a marker");
            assert!(message.starts_with(kept), "{name}: a prefix is kept");
            assert_eq!(
                marker,
                format!(" ({} more bytes)", message.len() - kept.len()),
                "{name}"
            );
        }
        assert_eq!(cap_message("short".into(), limit), "short");
        let exact = "z".repeat(limit);
        assert_eq!(cap_message(exact.clone(), limit), exact);
    }

    #[test]
    fn given_a_thousand_pods_rejecting_the_config_then_the_ready_message_stays_under_1kib() {
        let injected: Vec<String> = (0..1000).map(|i| format!("checkout-{i}")).collect();
        let instances: Vec<(String, InstanceRecord)> = injected
            .iter()
            .map(|p| {
                (
                    p.clone(),
                    Ok(instance(
                        "h1",
                        InstanceState::Error,
                        Some("spec.rules[0].when.message.matches: regex too big"),
                    )),
                )
            })
            .collect();
        let cond = ready(&rollout(1000, &injected, &instances, "h2"), "h2");
        assert_eq!(cond.reason, "Rejected");
        assert!(
            cond.message.len() <= MESSAGE_LIMIT,
            "{} bytes",
            cond.message.len()
        );
        assert!(
            cond.message
                .starts_with("0/1000 sidecars run h2; rejected by checkout-0: ")
        );
        assert!(cond.message.ends_with(" more bytes)"), "{}", cond.message);
    }

    #[test]
    fn transition_time_is_kept_while_status_holds_and_moves_when_it_flips() {
        let first = merge_conditions(
            &[],
            &[Cond::new(VALID, true, "Validated", "ok")],
            Some(1),
            "t1",
        );
        let again = merge_conditions(
            &first,
            &[Cond::new(VALID, true, "Validated", "ok")],
            Some(2),
            "t2",
        );
        assert_eq!(again[0].last_transition_time, "t1");
        let flipped = merge_conditions(
            &again,
            &[Cond::new(VALID, false, "InvalidSpec", "bad")],
            Some(3),
            "t3",
        );
        assert_eq!(flipped[0].last_transition_time, "t3");
        assert_eq!(flipped[0].status, "False");
    }

    #[test]
    fn rollout_counts_only_injected_pods_acking_the_hash() {
        let injected = vec!["a".to_string(), "b".to_string(), "c".to_string()];
        let instances = vec![
            ("a".to_string(), Ok(instance("h2", InstanceState::Ok, None))),
            (
                "b".to_string(),
                Ok(instance(
                    "h1",
                    InstanceState::Error,
                    Some("spec.rules[0]: bad"),
                )),
            ),
            ("c".to_string(), Ok(instance("h1", InstanceState::Ok, None))),
            (
                "stray".to_string(),
                Ok(instance("h2", InstanceState::Ok, None)),
            ),
        ];
        let r = rollout(4, &injected, &instances, "h2");
        assert_eq!(
            (r.counts.matched, r.counts.injected, r.counts.applied),
            (4, 3, 1)
        );
        assert_eq!(r.counts.summary, "1/3");
        let cond = ready(&r, "h2");
        assert_eq!((cond.ok, cond.reason), (false, "Rejected"));
        assert!(
            cond.message.contains("b: spec.rules[0]: bad"),
            "{}",
            cond.message
        );
    }

    #[test]
    fn ready_when_all_applied_or_no_pods() {
        let r = rollout(0, &[], &[], "h");
        assert_eq!(ready(&r, "h").reason, "NoPods");
        let r = rollout(
            1,
            &["a".into()],
            &[("a".into(), Ok(instance("h", InstanceState::Ok, None)))],
            "h",
        );
        assert_eq!(
            (ready(&r, "h").ok, ready(&r, "h").reason),
            (true, "Applied")
        );
    }

    fn published(hash: &str) -> PublishOutcome {
        PublishOutcome::Published {
            hash: hash.into(),
            version: 7,
            path: "/servicelog/namespaces/shop/checkout/config".into(),
        }
    }

    fn observed(injected: &[&str], acks: &[(&str, &str, InstanceState)]) -> Observed {
        let instances: Vec<(String, InstanceRecord)> = acks
            .iter()
            .map(|(pod, hash, state)| {
                let error = (*state == InstanceState::Error).then_some("spec.rules[0]: bad");
                ((*pod).to_owned(), Ok(instance(hash, *state, error)))
            })
            .collect();
        let pods = Pods {
            matched: u32::try_from(injected.len()).unwrap_or(0),
            injected: injected.iter().map(|p| (*p).to_owned()).collect(),
        };
        let r = rollout(pods.matched, &pods.injected, &instances, "h2");
        let behind = r.counts.applied < r.counts.injected;
        Observed {
            pods,
            instances: Some(instances),
            behind,
        }
    }

    fn old(generation: i64, hash: Option<&str>, applied: u32, injected: u32) -> ServiceLogStatus {
        ServiceLogStatus {
            observed_generation: Some(generation),
            config_hash: hash.map(Into::into),
            published_version: Some(6),
            pods: Some(PodCounts {
                matched: injected,
                injected,
                applied,
                summary: format!("{applied}/{injected}"),
            }),
            rollout: None,
            conditions: Vec::new(),
        }
    }

    /// One row: the findings, then what the plan must say.
    struct Row {
        name: &'static str,
        generation: i64,
        old: ServiceLogStatus,
        validity: Result<PublishOutcome, Vec<String>>,
        observed: Option<Observed>,
        conds: &'static [(&'static str, bool, &'static str)],
        summary: &'static str,
        hash: Option<&'static str>,
        next: Next,
        partway: bool,
        rejected: bool,
    }

    #[test]
    fn the_plan_for_each_kind_of_finding() {
        use InstanceState::{Error as Rejected, Ok as Acked};
        let rows = vec![
            Row {
                name: "invalid at a new generation: not published, the old hash kept, an Event",
                generation: 3,
                old: old(2, Some("h1"), 2, 2),
                validity: Err(vec!["spec.rules[0].to[0]: unknown sink \"x\"".into()]),
                observed: None,
                conds: &[
                    (VALID, false, "InvalidSpec"),
                    (PUBLISHED, false, "InvalidSpec"),
                ],
                summary: "2/2",
                hash: Some("h1"),
                next: Next::AwaitChange,
                partway: false,
                rejected: true,
            },
            Row {
                name: "invalid, seen before: no second Event",
                generation: 3,
                old: old(3, Some("h1"), 2, 2),
                validity: Err(vec!["spec: bad".into()]),
                observed: None,
                conds: &[
                    (VALID, false, "InvalidSpec"),
                    (PUBLISHED, false, "InvalidSpec"),
                ],
                summary: "2/2",
                hash: Some("h1"),
                next: Next::AwaitChange,
                partway: false,
                rejected: false,
            },
            Row {
                name: "published and every sidecar acks it: ready",
                generation: 3,
                old: old(2, Some("h1"), 2, 2),
                validity: Ok(published("h2")),
                observed: Some(observed(
                    &["a", "b"],
                    &[("a", "h2", Acked), ("b", "h2", Acked)],
                )),
                conds: &[
                    (VALID, true, "Validated"),
                    (PUBLISHED, true, "Published"),
                    (READY, true, "Applied"),
                ],
                summary: "2/2",
                hash: Some("h2"),
                next: Next::AwaitChange,
                partway: false,
                rejected: false,
            },
            Row {
                name: "published, one sidecar still on the old hash: rolling out, look again soon",
                generation: 3,
                old: old(2, Some("h1"), 2, 2),
                validity: Ok(published("h2")),
                observed: Some(observed(
                    &["a", "b"],
                    &[("a", "h2", Acked), ("b", "h1", Acked)],
                )),
                conds: &[
                    (VALID, true, "Validated"),
                    (PUBLISHED, true, "Published"),
                    (READY, false, "RollingOut"),
                ],
                summary: "1/2",
                hash: Some("h2"),
                next: Next::Requeue(ROLLOUT_REFRESH_INTERVAL),
                partway: true,
                rejected: false,
            },
            Row {
                name: "a sidecar rejected the config: not ready, not partway",
                generation: 3,
                old: old(2, Some("h1"), 2, 2),
                validity: Ok(published("h2")),
                observed: Some(observed(
                    &["a", "b"],
                    &[("a", "h2", Acked), ("b", "h1", Rejected)],
                )),
                conds: &[
                    (VALID, true, "Validated"),
                    (PUBLISHED, true, "Published"),
                    (READY, false, "Rejected"),
                ],
                summary: "1/2",
                hash: Some("h2"),
                next: Next::Requeue(ROLLOUT_REFRESH_INTERVAL),
                partway: false,
                rejected: false,
            },
            Row {
                name: "published, no pod yet",
                generation: 1,
                old: ServiceLogStatus::default(),
                validity: Ok(published("h2")),
                observed: Some(observed(&[], &[])),
                conds: &[
                    (VALID, true, "Validated"),
                    (PUBLISHED, true, "Published"),
                    (READY, true, "NoPods"),
                ],
                summary: "0/0",
                hash: Some("h2"),
                next: Next::AwaitChange,
                partway: false,
                rejected: false,
            },
            Row {
                name: "ZooKeeper down: not published, the old counts kept (the retry is the error's backoff)",
                generation: 3,
                old: old(2, Some("h1"), 2, 2),
                validity: Ok(PublishOutcome::Failed {
                    reason: "ZooKeeperUnavailable",
                    message: "ZooKeeper is unavailable".into(),
                }),
                observed: Some(Observed {
                    pods: Pods {
                        matched: 3,
                        injected: vec!["a".into(), "b".into(), "c".into()],
                    },
                    instances: None,
                    behind: false,
                }),
                conds: &[
                    (VALID, true, "Validated"),
                    (PUBLISHED, false, "ZooKeeperUnavailable"),
                    (READY, false, "ZooKeeperUnavailable"),
                ],
                summary: "2/3",
                hash: Some("h1"),
                next: Next::AwaitChange,
                partway: false,
                rejected: false,
            },
        ];
        for row in &rows {
            let validity = match &row.validity {
                Ok(p) => Ok(p),
                Err(problems) => Err(problems.as_slice()),
            };
            let plan = plan(&Findings {
                generation: Some(row.generation),
                old: &row.old,
                validity,
                observed: row.observed.as_ref(),
            });
            let conds: Vec<(&str, bool, &str)> = plan
                .conds
                .iter()
                .map(|c| (c.type_, c.ok, c.reason))
                .collect();
            assert_eq!(conds, row.conds, "{}: conditions", row.name);
            let pods = plan.status.pods.as_ref().map(|p| p.summary.as_str());
            assert_eq!(pods, Some(row.summary), "{}: pods", row.name);
            assert_eq!(
                plan.status.config_hash.as_deref(),
                row.hash,
                "{}: hash",
                row.name
            );
            assert_eq!(
                plan.status.observed_generation,
                Some(row.generation),
                "{}",
                row.name
            );
            assert_eq!(plan.next, row.next, "{}: next", row.name);
            assert_eq!(plan.partway, row.partway, "{}: partway", row.name);
            assert_eq!(plan.rejected.is_some(), row.rejected, "{}: Event", row.name);
        }
    }

    #[test]
    fn a_partway_rollout_of_the_same_config_is_written_at_most_every_interval() {
        let soon = Duration::from_millis(10);
        assert_eq!(throttle(false, true, Some(soon)), None);
        assert_eq!(
            throttle(true, false, Some(soon)),
            None,
            "a new config is written at once"
        );
        assert_eq!(
            throttle(true, true, None),
            None,
            "the first write is not held"
        );
        assert_eq!(
            throttle(true, true, Some(soon)),
            Some(ROLLOUT_STATUS_INTERVAL - soon)
        );
        assert_eq!(throttle(true, true, Some(ROLLOUT_STATUS_INTERVAL)), None);
    }
}
