//! Staged rollout, the operator's decision: from what ZooKeeper holds (the stable config's
//! hash, the candidate znode) and what the canaries' instance records say, the next write
//! and `status.rollout`. A pure function over values, table-tested; the reconcile does the
//! write (docs/architecture.md, "Staged rollout").
//!
//! Everything it needs survives an operator restart: the step is in the candidate znode,
//! each ack's time in its record's `since`, so a new leader resumes a rollout — a pause
//! included — where the old one was.

use std::time::{Duration, Instant, SystemTime};

use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams},
    runtime::events::EventType,
};
use servicelog_api::{
    rollout::{self, Command},
    v1alpha1::{
        CanaryCounts, PreviewCounts, RollbackOn, Rollout, RolloutPhase, RolloutStatus, ServiceLog,
    },
    wire::{Candidate, Envelope, Health, Instance, InstanceState},
    zkauth::Node,
};
use zookeeper_client::{Acls, CreateMode};

use super::{
    Context,
    memory::Key,
    publish::{PublishError, publish_config},
    status::{Cond, READY},
};
use crate::zk::{Published, ZkError};

/// While canaries are pending and no record changed for this long, their records are read
/// again from ZooKeeper (and the resource looked at again after twice this).
const ACK_REFRESH: Duration = Duration::from_secs(1);

/// What the reconcile does with a resource that has `spec.rollout`.
#[derive(Clone, Debug, PartialEq)]
pub enum Staged {
    /// Publish the config as without a rollout: nothing was published yet, or the config
    /// znode already is this spec (promoted, or never changed). `status.rollout` to report,
    /// if any.
    AsUsual(Option<RolloutStatus>),
    /// The stable config stays in the config znode while the candidate rolls out.
    Rolling {
        /// Hash and data version of the config znode.
        stable_hash: String,
        version: i32,
        status: RolloutStatus,
        /// Look again then (a pause ends, a step was just written); `None`: when a record
        /// changes.
        requeue: Option<Duration>,
    },
}

/// Deletes the candidate znode, whatever its version; gone already is done.
async fn withdraw(ctx: &Context, key: &Key) -> Result<(), PublishError> {
    let path = ctx
        .layout
        .candidate(&key.0, &key.1)
        .map_err(|e| ZkError::Unavailable(e.to_string()))?;
    let client = ctx.zk.client()?;
    ctx.zk.authorize(&client, &key.0).await?;
    match ctx.leadership.write(client.delete(&path, None)).await? {
        Ok(()) | Err(zookeeper_client::Error::NoNode) => Ok(()),
        Err(source) => Err(ZkError::Op {
            op: "delete",
            path,
            source,
        }
        .into()),
    }
}

/// What the reconcile's publish step did.
pub struct Publish {
    pub published: Result<Published, PublishError>,
    /// Hash of the config in the config znode: the stable one while a rollout is partway.
    pub hash: String,
    /// `status.rollout`, and when to look again (`None`: when something changes).
    pub rollout: Option<(RolloutStatus, Option<Duration>)>,
}

/// The reconcile's publish step: the config znode as without a rollout, or, while a
/// change of a resource with `spec.rollout` rolls out, the rollout's next write
/// ([`advance`]) with the stable config left where it is. Posts the rollout's Events and
/// clears a [`rollout::ANNOTATION`] command once done.
///
/// ZooKeeper unreachable mid-rollout pauses it (`Paused`, the reason naming ZooKeeper):
/// nothing can be read or written, the pods keep what they run, nothing is rolled back.
pub async fn publish(
    ctx: &Context,
    obj: &ServiceLog,
    key: &Key,
    envelope: &Envelope,
    last: Option<&RolloutStatus>,
) -> Publish {
    let command = obj
        .annotations()
        .get(rollout::ANNOTATION)
        .map(|value| Command::parse(value));
    let done = match advance(ctx, obj, key, envelope, last, command.as_ref()).await {
        Ok(Staged::AsUsual(status)) => Publish {
            published: publish_config(ctx, obj, key, envelope).await,
            hash: envelope.hash.clone(),
            rollout: status.map(|s| (s, None)),
        },
        Ok(Staged::Rolling {
            stable_hash,
            version,
            status,
            requeue,
        }) => Publish {
            published: Ok(Published::Unchanged { version }),
            hash: stable_hash,
            rollout: Some((status, requeue)),
        },
        Err(e) => {
            let held = match &e {
                PublishError::Zk(zk) => last.filter(|l| partway(l.phase)).map(|l| {
                    let mut held = l.clone();
                    held.phase = RolloutPhase::Paused;
                    held.reason = format!(
                        "ZooKeeper unavailable ({zk}); step {} holds, every pod keeps what it runs",
                        l.step
                    );
                    let steps = obj.spec.rollout.as_ref().map_or(0, |r| r.steps.len());
                    held.summary = summary(&held, steps);
                    (held, None)
                }),
                PublishError::NotLeading(_) => None,
            };
            Publish {
                published: Err(e),
                hash: envelope.hash.clone(),
                rollout: held,
            }
        }
    };
    if let Some((status, _)) = &done.rollout {
        for (type_, reason, note) in events(last, status) {
            ctx.event(obj, type_, reason, "Rollout", &note);
        }
        let finished = !partway(status.phase);
        let cleared = match command {
            Some(Ok(Command::Resume)) => true,
            Some(Ok(Command::Promote | Command::Abort)) => finished,
            _ => false,
        };
        if cleared && done.published.is_ok() {
            clear_annotation(ctx, obj, key).await;
        }
    }
    done
}

fn partway(phase: RolloutPhase) -> bool {
    matches!(phase, RolloutPhase::Progressing | RolloutPhase::Paused)
}

/// The Events a change of `status.rollout` from `last` to `now` is worth: a new step, a
/// pause and its end, the promotion, the rollback with its reason, a bad annotation.
pub fn events(
    last: Option<&RolloutStatus>,
    now: &RolloutStatus,
) -> Vec<(EventType, &'static str, String)> {
    let same_candidate = last.is_some_and(|l| l.candidate_hash == now.candidate_hash);
    let was = last.filter(|_| same_candidate).map(|l| l.phase);
    let candidate = now.candidate_hash.as_deref().unwrap_or("");
    let mut events = Vec::new();
    match now.phase {
        RolloutPhase::Progressing
            if was == Some(RolloutPhase::Paused) && last.is_some_and(|l| l.step == now.step) =>
        {
            events.push((
                EventType::Normal,
                "RolloutResumed",
                format!("step {} of {candidate} goes on", now.step),
            ));
        }
        RolloutPhase::Progressing
            if !matches!(was, Some(RolloutPhase::Progressing | RolloutPhase::Paused))
                || last.is_some_and(|l| l.step != now.step) =>
        {
            events.push((
                EventType::Normal,
                "RolloutStep",
                format!(
                    "step {}: {} canary pods run {candidate} (stable {})",
                    now.step, now.canary.total, now.stable_hash
                ),
            ));
        }
        RolloutPhase::Paused if was != Some(RolloutPhase::Paused) => {
            events.push((EventType::Normal, "RolloutPaused", now.reason.clone()));
        }
        RolloutPhase::Complete
            if last.is_some_and(|l| partway(l.phase))
                && last.and_then(|l| l.candidate_hash.as_deref())
                    == Some(now.stable_hash.as_str()) =>
        {
            let mut note = format!("{} is the stable config of every pod", now.stable_hash);
            if !now.reason.is_empty() {
                note = format!("{note} ({})", now.reason);
            }
            events.push((EventType::Normal, "RolloutPromoted", note));
        }
        RolloutPhase::RolledBack if was != Some(RolloutPhase::RolledBack) => {
            events.push((
                EventType::Warning,
                "RolloutRolledBack",
                format!(
                    "{candidate} withdrawn, every pod runs {}: {}",
                    now.stable_hash, now.reason
                ),
            ));
        }
        _ => {}
    }
    if now
        .reason
        .starts_with(&format!("annotation {}", rollout::ANNOTATION))
        && last.is_none_or(|l| l.reason != now.reason)
    {
        events.push((
            EventType::Warning,
            "RolloutAnnotationInvalid",
            now.reason.clone(),
        ));
    }
    events
}

/// Removes [`rollout::ANNOTATION`] once its command is done, only if it still says what
/// was acted on (a person's newer command stays).
async fn clear_annotation(ctx: &Context, obj: &ServiceLog, key: &Key) {
    let Some(value) = obj.annotations().get(rollout::ANNOTATION) else {
        return;
    };
    let path = json_patch::jsonptr::PointerBuf::from_tokens([
        "metadata",
        "annotations",
        rollout::ANNOTATION,
    ]);
    let patch = json_patch::Patch(vec![
        json_patch::PatchOperation::Test(json_patch::TestOperation {
            path: path.clone(),
            value: value.clone().into(),
        }),
        json_patch::PatchOperation::Remove(json_patch::RemoveOperation { path }),
    ]);
    let api: Api<ServiceLog> = Api::namespaced(ctx.client.clone(), &key.0);
    match ctx
        .leadership
        .write(api.patch(&key.1, &PatchParams::default(), &Patch::Json::<()>(patch)))
        .await
    {
        Ok(Ok(_)) => {
            tracing::info!(servicelog = %format!("{}/{}", key.0, key.1), command = %value, "staged rollout: annotation command done, cleared");
        }
        Ok(Err(e)) => {
            tracing::warn!(servicelog = %format!("{}/{}", key.0, key.1), error = %e, "cannot clear the rollout annotation; the next reconcile tries again");
        }
        Err(_) => {}
    }
}

/// Ready while a rollout is partway or rolled back: `False`, as the spec asked for is not
/// what every pod runs (`RollingOut` / `RolloutPaused` / `RolledBack`, the message saying
/// where the rollout is). `None` once complete: Ready is then about the config as always.
pub fn ready(status: &RolloutStatus) -> Option<Cond> {
    let candidate = status.candidate_hash.as_deref().unwrap_or("");
    let c = &status.canary;
    match status.phase {
        RolloutPhase::Complete => None,
        RolloutPhase::Progressing => Some(Cond::new(
            READY,
            false,
            "RollingOut",
            format!(
                "staged rollout at step {}: {}/{} canaries run {candidate}, the other pods {}",
                status.step, c.applied, c.total, status.stable_hash
            ),
        )),
        RolloutPhase::Paused => Some(Cond::new(
            READY,
            false,
            "RolloutPaused",
            format!(
                "staged rollout paused at step {}: {}",
                status.step, status.reason
            ),
        )),
        RolloutPhase::RolledBack => Some(Cond::new(
            READY,
            false,
            "RolledBack",
            format!(
                "{candidate} rolled back, every pod runs {}: {}",
                status.stable_hash, status.reason
            ),
        )),
    }
}

/// Puts [`ready`]'s condition in place of the Ready condition `conds` has, if any.
pub fn hold_ready(conds: &mut [Cond], status: &RolloutStatus) {
    if let Some(held) = ready(status)
        && let Some(c) = conds.iter_mut().find(|c| c.type_ == READY)
    {
        *c = held;
    }
}

/// Reads the config and candidate znodes and the instance records, [`plan`]s, and makes
/// the write the plan asks for (each version-checked, as the leader).
///
/// Notable errors: ZooKeeper unavailable or a write refused — the reconcile reports it and
/// retries; nothing advances meanwhile.
pub async fn advance(
    ctx: &Context,
    obj: &ServiceLog,
    key: &Key,
    envelope: &Envelope,
    last: Option<&RolloutStatus>,
    command: Option<&Result<Command, String>>,
) -> Result<Staged, PublishError> {
    let Some(spec_rollout) = obj.spec.rollout.as_ref() else {
        if last.is_some_and(|r| r.phase == RolloutPhase::Progressing) {
            // `spec.rollout` removed mid-way: the change goes to every pod at once, and the
            // candidate (which sidecars would ignore, its stable config replaced) goes.
            withdraw(ctx, key).await?;
        }
        return Ok(Staged::AsUsual(None));
    };
    let (namespace, name) = (key.0.as_str(), key.1.as_str());
    let bad_path = |e: servicelog_api::wire::WireError| ZkError::Unavailable(e.to_string());
    let config_path = ctx.layout.config(namespace, name).map_err(bad_path)?;
    let candidate_path = ctx.layout.candidate(namespace, name).map_err(bad_path)?;
    let client = ctx.zk.client()?;
    ctx.zk.authorize(&client, namespace).await?;
    let (stable, version) = match client.get_data(&config_path).await {
        Ok((data, stat)) => match Envelope::from_slice(&data) {
            Ok(stable) => (stable, stat.version),
            // Unreadable: drift repair puts this spec there.
            Err(_) => return Ok(Staged::AsUsual(None)),
        },
        Err(zookeeper_client::Error::NoNode) => return Ok(Staged::AsUsual(None)),
        Err(e) => {
            return Err(ZkError::Op {
                op: "get",
                path: config_path,
                source: e,
            }
            .into());
        }
    };
    let (candidate, candidate_stat) = match client.get_data(&candidate_path).await {
        Ok((data, stat)) => (Candidate::from_slice(&data).ok(), Some(stat)),
        Err(zookeeper_client::Error::NoNode) => (None, None),
        Err(e) => {
            return Err(ZkError::Op {
                op: "get",
                path: candidate_path,
                source: e,
            }
            .into());
        }
    };
    let waiting = last
        .is_some_and(|l| l.phase == RolloutPhase::Progressing && l.canary.applied < l.canary.total);
    let quiet = |t: Option<Instant>| t.is_none_or(|t| t.elapsed() >= ACK_REFRESH);
    if waiting && quiet(ctx.zk.instances_updated(namespace, name)) {
        // The watch's copy may have missed acks across a reconnect (ZOOKEEPER-4698), and
        // the plan would wait for them until the deadline: while canaries are pending and
        // the watch is quiet, their records are read again.
        if let Err(e) = ctx.zk.refresh_instances(&ctx.layout, namespace, name).await {
            tracing::debug!(error = %e, "staged rollout: re-reading the instance records");
        }
    }
    let instances: Vec<(String, Instance)> = ctx
        .zk
        .instances(namespace, name)?
        .into_iter()
        .filter_map(|(pod, record)| record.ok().map(|r| (pod, r)))
        .collect();
    let now = SystemTime::now();
    let found = Found {
        rollout: spec_rollout,
        namespace,
        desired: &envelope.hash,
        stable: &stable.hash,
        candidate: candidate.as_ref(),
        candidate_written: candidate_stat.as_ref().map(|s| {
            SystemTime::UNIX_EPOCH + Duration::from_millis(u64::try_from(s.mtime).unwrap_or(0))
        }),
        instances: &instances,
        last,
        command,
        deadline: rollout::progress_deadline(spec_rollout),
        now,
    };
    let (action, mut status) = plan(&found);
    let candidate_version = candidate_stat.as_ref().map(|s| s.version);
    let op = |op: &'static str, path: &str| {
        let path = path.to_owned();
        move |source| ZkError::Op { op, path, source }
    };
    let requeue = match action {
        Action::Wait => None,
        Action::WaitUntil(at) if status.canary.applied < status.canary.total => Some(
            at.duration_since(now)
                .unwrap_or_default()
                .min(ACK_REFRESH * 2),
        ),
        Action::WaitUntil(at) => Some(at.duration_since(now).unwrap_or_default()),
        Action::WriteCandidate { step, percent } => {
            let data = Candidate::new(&stable.hash, step, percent, spec_rollout.preview, envelope)
                .and_then(|c| c.to_bytes())
                .map_err(bad_path)?;
            let write = async {
                match candidate_version {
                    Some(v) => client
                        .set_data(&candidate_path, &data, Some(v))
                        .await
                        .map(|_| ()),
                    None => {
                        let acl = ctx.zk.guard().acl(Some(namespace), Node::Config);
                        let mode = CreateMode::Persistent.with_acls(Acls::new(&acl));
                        client
                            .create(&candidate_path, &data, &mode)
                            .await
                            .map(|_| ())
                    }
                }
            };
            ctx.leadership
                .write(write)
                .await?
                .map_err(op("write", &candidate_path))?;
            tracing::info!(servicelog = %format!("{namespace}/{name}"), step, percent, candidate = %envelope.hash, "staged rollout: step written");
            Some(Duration::from_secs(1))
        }
        Action::Promote => {
            let data = envelope.to_bytes().map_err(bad_path)?;
            let mut multi = client.new_multi_writer();
            multi
                .add_set_data(&config_path, &data, Some(version))
                .map_err(op("set", &config_path))?;
            multi
                .add_delete(&candidate_path, candidate_version)
                .map_err(op("delete", &candidate_path))?;
            ctx.leadership
                .write(multi.commit())
                .await?
                .map_err(|e| ZkError::Unavailable(format!("promoting {candidate_path}: {e}")))?;
            tracing::info!(servicelog = %format!("{namespace}/{name}"), hash = %envelope.hash, "staged rollout: candidate promoted");
            ctx.memory.set_published(key, &envelope.hash);
            status.phase = RolloutPhase::Complete;
            status.stable_hash = envelope.hash.clone();
            status.candidate_hash = None;
            status.summary = summary(&status, spec_rollout.steps.len());
            return Ok(Staged::AsUsual(Some(status)));
        }
        Action::Withdraw => {
            match ctx
                .leadership
                .write(client.delete(&candidate_path, candidate_version))
                .await?
            {
                Ok(()) | Err(zookeeper_client::Error::NoNode) => {}
                Err(e) => return Err(op("delete", &candidate_path)(e).into()),
            }
            tracing::warn!(servicelog = %format!("{namespace}/{name}"), reason = %status.reason, "staged rollout: candidate withdrawn");
            None
        }
    };
    if status.phase == RolloutPhase::Complete {
        return Ok(Staged::AsUsual(Some(status)));
    }
    Ok(Staged::Rolling {
        stable_hash: stable.hash,
        version,
        status,
        requeue,
    })
}

/// What the reconcile found for one ServiceLog with `spec.rollout`.
#[derive(Clone, Copy, Debug)]
pub struct Found<'a> {
    pub rollout: &'a Rollout,
    pub namespace: &'a str,
    /// Hash of the config the resource asks for (its spec without `rollout`).
    pub desired: &'a str,
    /// Hash of the config znode.
    pub stable: &'a str,
    /// The candidate znode, if there is one.
    pub candidate: Option<&'a Candidate>,
    /// When the candidate znode was last written (its `mtime`): the start of its step.
    pub candidate_written: Option<SystemTime>,
    /// The instance records, by pod.
    pub instances: &'a [(String, Instance)],
    /// `status.rollout` as last written: a candidate it says was rolled back is not
    /// tried again until the spec changes.
    pub last: Option<&'a RolloutStatus>,
    /// The [`rollout::ANNOTATION`] on the resource, read (`Err`: a value that is no
    /// command, with why).
    pub command: Option<&'a Result<Command, String>>,
    /// How long a step's canaries have to run the candidate.
    pub deadline: Duration,
    pub now: SystemTime,
}

/// The write the rollout needs next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Nothing to write; look again when a record changes.
    Wait,
    /// Nothing to write; look again at this time (a step's pause or deadline ends).
    WaitUntil(SystemTime),
    /// Write the candidate znode for step `step` (1-based) of `percent`.
    WriteCandidate { step: u32, percent: u32 },
    /// Make the candidate the config znode and delete it, in one multi.
    Promote,
    /// Delete the candidate znode: canaries return to the stable config.
    Withdraw,
}

/// The next action and the status to report.
pub fn plan(f: &Found<'_>) -> (Action, RolloutStatus) {
    let (action, mut status) = decide(f);
    status.summary = summary(&status, f.rollout.steps.len());
    if status.reason.is_empty()
        && let Some(Err(bad)) = f.command
    {
        status.reason = bad.clone();
    }
    (action, status)
}

fn decide(f: &Found<'_>) -> (Action, RolloutStatus) {
    let steps = &f.rollout.steps;
    let status = |phase, step, canary, reason: String| RolloutStatus {
        phase,
        step,
        stable_hash: f.stable.to_owned(),
        candidate_hash: (f.desired != f.stable).then(|| f.desired.to_owned()),
        canary,
        reason,
        summary: String::new(),
        preview: None,
    };
    let command = f.command.as_ref().and_then(|c| c.as_ref().ok()).copied();
    if f.desired == f.stable {
        let action = if f.candidate.is_some() {
            Action::Withdraw
        } else {
            Action::Wait
        };
        let done = u32::try_from(steps.len()).unwrap_or(u32::MAX);
        // How it completed (promoted by a person, say) stays said.
        let reason = f
            .last
            .filter(|l| l.phase == RolloutPhase::Complete && l.stable_hash == f.stable)
            .map(|l| l.reason.clone())
            .unwrap_or_default();
        return (
            action,
            status(
                RolloutPhase::Complete,
                done,
                CanaryCounts::default(),
                reason,
            ),
        );
    }
    if let Some(last) = f.last
        && last.phase == RolloutPhase::RolledBack
        && last.candidate_hash.as_deref() == Some(f.desired)
    {
        let action = if f.candidate.is_some_and(|c| c.hash == f.desired) {
            Action::Withdraw
        } else {
            Action::Wait
        };
        return (action, last.clone());
    }
    let by = |c: Command| format!("{}={}", rollout::ANNOTATION, c.as_str());
    let Some(candidate) = f
        .candidate
        .filter(|c| c.hash == f.desired && c.stable_hash == f.stable)
    else {
        // A new change (or one over a stable config edited since): its first step.
        if let Some(held) = preview(f, None, command) {
            return held;
        }
        let percent = steps.first().map_or(100, |s| s.percent);
        let total = members(f, percent).count();
        let counts = CanaryCounts {
            applied: 0,
            total: count(total),
        };
        return match command {
            Some(c @ Command::Abort) => (
                Action::Wait,
                status(
                    RolloutPhase::RolledBack,
                    0,
                    CanaryCounts::default(),
                    format!("aborted by {} before any pod ran it", by(c)),
                ),
            ),
            Some(c @ Command::Pause) => (
                Action::Wait,
                status(
                    RolloutPhase::Paused,
                    0,
                    CanaryCounts::default(),
                    format!("paused by {}; no pod runs the candidate yet", by(c)),
                ),
            ),
            _ => (
                Action::WriteCandidate { step: 1, percent },
                status(RolloutPhase::Progressing, 1, counts, String::new()),
            ),
        };
    };
    if let Some(held) = preview(f, Some(candidate), command) {
        return held;
    }
    let step = candidate.step.clamp(1, count(steps.len()).max(1));
    let steps_text = format!("step {step}/{}", steps.len());
    match command {
        Some(c @ Command::Abort) => {
            return (
                Action::Withdraw,
                status(
                    RolloutPhase::RolledBack,
                    step,
                    CanaryCounts::default(),
                    format!("aborted by {} at {steps_text}", by(c)),
                ),
            );
        }
        Some(c @ Command::Promote) => {
            return (
                Action::Promote,
                status(
                    RolloutPhase::Progressing,
                    step,
                    CanaryCounts::default(),
                    format!("promoted by {} at {steps_text}", by(c)),
                ),
            );
        }
        _ => {}
    }
    let want_percent = steps
        .get(usize::try_from(step - 1).unwrap_or(0))
        .map_or(100, |s| s.percent);
    let paused = command == Some(Command::Pause);
    let resumed = !paused && f.last.is_some_and(|l| l.phase == RolloutPhase::Paused);
    if candidate.percent != want_percent || candidate.preview || resumed {
        // The steps were edited mid-rollout (or preview turned off): this step as the
        // spec says it now. Or the rollout goes on after a pause: the same step written again, so that its
        // progress deadline (from the znode's mtime) starts again.
        return (
            Action::WriteCandidate {
                step,
                percent: want_percent,
            },
            status(
                RolloutPhase::Progressing,
                step,
                CanaryCounts::default(),
                String::new(),
            ),
        );
    }
    let mut total = 0;
    let mut applied = 0;
    let mut late = Vec::new();
    let mut healths = Vec::new();
    let mut last_ack = f.candidate_written;
    for (pod, record) in members(f, candidate.percent) {
        total += 1;
        if record.candidate.as_deref() != Some(f.desired) {
            late.push(pod);
            continue;
        }
        if record.state == InstanceState::Error {
            let why = record.error.as_deref().unwrap_or("no reason given");
            let reason = format!("pod {pod} rejected the candidate: {why}");
            let counts = CanaryCounts {
                applied,
                total: count(total),
            };
            return (
                Action::Withdraw,
                status(RolloutPhase::RolledBack, step, counts, reason),
            );
        }
        if record.hash == f.desired {
            applied += 1;
            if let Some(health) = &record.health {
                healths.push((pod, health));
            }
            let acked = humantime::parse_rfc3339(&record.since).ok();
            last_ack = last_ack.max(acked);
        } else {
            late.push(pod);
        }
    }
    let counts = CanaryCounts {
        applied,
        total: count(total),
    };
    if let Some(gates) = &f.rollout.rollback_on
        && let Some(reason) = tripped(gates, &healths)
    {
        return (
            Action::Withdraw,
            status(
                RolloutPhase::RolledBack,
                step,
                counts,
                format!("{reason} at {steps_text}"),
            ),
        );
    }
    if paused {
        return (
            Action::Wait,
            status(
                RolloutPhase::Paused,
                step,
                counts,
                format!("paused by {} at {steps_text}", by(Command::Pause)),
            ),
        );
    }
    if !late.is_empty() {
        let deadline = f.candidate_written.unwrap_or(f.now) + f.deadline;
        if f.now < deadline {
            return (
                Action::WaitUntil(deadline),
                status(RolloutPhase::Progressing, step, counts, String::new()),
            );
        }
        let reason = format!(
            "progress deadline {} passed at {steps_text}: {} of {} canaries do not run the candidate: {}",
            humantime::format_duration(f.deadline),
            late.len(),
            total,
            named(&late)
        );
        return (
            Action::Withdraw,
            status(RolloutPhase::RolledBack, step, counts, reason),
        );
    }
    let pause = steps
        .get(usize::try_from(step - 1).unwrap_or(0))
        .and_then(|s| rollout::parse_pause(s.pause.as_deref()).ok())
        .unwrap_or(Duration::ZERO);
    let until = last_ack.unwrap_or(f.now) + pause;
    if f.now < until {
        return (
            Action::WaitUntil(until),
            status(RolloutPhase::Progressing, step, counts, String::new()),
        );
    }
    if usize::try_from(step).unwrap_or(usize::MAX) < steps.len() {
        let next = step + 1;
        let percent = steps[usize::try_from(step).unwrap_or(0)].percent;
        let counts = CanaryCounts {
            applied: 0,
            total: count(members(f, percent).count()),
        };
        return (
            Action::WriteCandidate {
                step: next,
                percent,
            },
            status(RolloutPhase::Progressing, next, counts, String::new()),
        );
    }
    (
        Action::Promote,
        status(RolloutPhase::Progressing, step, counts, String::new()),
    )
}

/// The first health gate the canaries' counters trip, as a reason naming the gate by its
/// field, the numbers and the pods past it; `None` while they handled fewer than
/// `minEvents` events together.
pub fn tripped(gates: &RollbackOn, canaries: &[(&str, &Health)]) -> Option<String> {
    let min = gates.min_events.unwrap_or(rollout::DEFAULT_MIN_EVENTS);
    let events: u64 = canaries.iter().map(|(_, h)| h.events).sum();
    if canaries.is_empty() || events < min.max(1) {
        return None;
    }
    let ratio = |part: u64, whole: u64| part as f64 / whole.max(1) as f64;
    let gate = |field: &str| format!("health gate spec.rollout.rollbackOn.{field}");
    if let Some(limit) = gates.dropped_ratio {
        let dropped: u64 = canaries.iter().map(|(_, h)| h.dropped).sum();
        let r = ratio(dropped, events);
        if r > limit {
            let pods: Vec<&str> = canaries
                .iter()
                .filter(|(_, h)| ratio(h.dropped, h.events) > limit)
                .map(|(pod, _)| *pod)
                .collect();
            return Some(format!(
                "{} {limit}: the canaries dropped {dropped} of {events} events ({r:.3}; pods {})",
                gate("droppedRatio"),
                named(&pods)
            ));
        }
    }
    if let Some(limit) = gates.rejected_ratio {
        let (mut rejected, mut handed) = (0, 0);
        for (_, h) in canaries {
            for s in h.sinks.values() {
                rejected += s.rejected;
                handed += s.delivered + s.rejected;
            }
        }
        let r = ratio(rejected, handed);
        if handed > 0 && r > limit {
            let pods: Vec<&str> = canaries
                .iter()
                .filter(|(_, h)| {
                    let rejected: u64 = h.sinks.values().map(|s| s.rejected).sum();
                    let handed: u64 = h.sinks.values().map(|s| s.delivered + s.rejected).sum();
                    ratio(rejected, handed) > limit
                })
                .map(|(pod, _)| *pod)
                .collect();
            return Some(format!(
                "{} {limit}: the sinks rejected {rejected} of {handed} events ({r:.3}; pods {})",
                gate("rejectedRatio"),
                named(&pods)
            ));
        }
    }
    if gates.quiet_sinks {
        let mut before: std::collections::BTreeMap<&str, (u64, u64)> = Default::default();
        for (_, h) in canaries {
            for (sink, n) in &h.sinks_before {
                let now = h.sinks.get(sink).map_or(0, |s| s.delivered + s.rejected);
                let e = before.entry(sink).or_default();
                e.0 += n;
                e.1 += now;
            }
        }
        if let Some((sink, (was, _))) = before.iter().find(|(_, (was, now))| *was > 0 && *now == 0)
        {
            let pods: Vec<&str> = canaries
                .iter()
                .filter(|(_, h)| h.sinks_before.get(*sink).is_some_and(|n| *n > 0))
                .map(|(pod, _)| *pod)
                .collect();
            return Some(format!(
                "{}: sink {sink:?} received {was} events under the stable config and none of {events} under the candidate (pods {})",
                gate("quietSinks"),
                named(&pods)
            ));
        }
    }
    if gates.quiet_rules {
        // Per rule the candidate has (a removed or renamed one is not judged): what it
        // decided under the stable config and under the candidate, over the canaries.
        let mut rules: std::collections::BTreeMap<&str, (u64, u64)> = Default::default();
        for (_, h) in canaries {
            for (rule, now) in &h.rules {
                let e = rules.entry(rule).or_default();
                e.0 += h.rules_before.get(rule).copied().unwrap_or(0);
                e.1 += now;
            }
        }
        // A rule is judged only when, at its stable share of events, the candidate's
        // events should have given it a few: `rulesBefore` can span days, and a rule that
        // decided 3 events in a week deciding none of the candidate's first 100 says
        // nothing.
        let before: u64 = rules.values().map(|(was, _)| was).sum();
        let expected = |was: u64| was as f64 / before.max(1) as f64 * events as f64;
        if let Some((rule, (was, _))) = rules.iter().find(|(rule, (was, now))| {
            **rule != DEFAULT_RULE && *now == 0 && expected(*was) >= QUIET_RULE_EXPECTED
        }) {
            let pods: Vec<&str> = canaries
                .iter()
                .filter(|(_, h)| h.rules_before.get(*rule).is_some_and(|n| *n > 0))
                .map(|(pod, _)| *pod)
                .collect();
            return Some(format!(
                "{}: rule {rule:?} decided {was} events under the stable config and none of {events} under the candidate (pods {})",
                gate("quietRules"),
                named(&pods)
            ));
        }
    }
    None
}

/// Events a rule should have decided of the candidate's, at its share under the stable
/// config, before `quietRules` takes none for a sign.
const QUIET_RULE_EXPECTED: f64 = 5.0;

/// The name the sidecars' per-rule counts give events no rule decided; `defaultTo` is not
/// a rule, so `quietRules` does not judge it.
const DEFAULT_RULE: &str = "(default)";

/// With `spec.rollout.preview`, the change is published as a preview candidate (which no
/// pod runs) and the rollout holds, `Paused` at step 0, until `preview` is set to false
/// (then step 1 is written over it); `abort` and `promote` act as on any step.
fn preview(
    f: &Found<'_>,
    candidate: Option<&Candidate>,
    command: Option<Command>,
) -> Option<(Action, RolloutStatus)> {
    if !f.rollout.preview || matches!(command, Some(Command::Abort | Command::Promote)) {
        return None;
    }
    let status = RolloutStatus {
        phase: RolloutPhase::Paused,
        step: 0,
        stable_hash: f.stable.to_owned(),
        candidate_hash: Some(f.desired.to_owned()),
        canary: CanaryCounts::default(),
        reason: String::new(),
        summary: String::new(),
        preview: None,
    };
    let mut status = status;
    let counts = preview_counts(f);
    status.reason = format!(
        "preview: no pod runs the change; {}; set spec.rollout.preview to false to start the steps",
        preview_text(&counts)
    );
    status.preview = Some(counts);
    let percent = f.rollout.steps.first().map_or(100, |s| s.percent);
    let action = if candidate.is_some_and(|c| c.preview) {
        Action::Wait
    } else {
        Action::WriteCandidate { step: 1, percent }
    };
    Some((action, status))
}

/// The preview's per-rule counts summed over the records that report the candidate, and
/// their rates: each pod's count over the time its shadow ran, summed over the pods (the
/// fleet's events per second; a pod that does not say how long it counted adds none).
fn preview_counts(f: &Found<'_>) -> PreviewCounts {
    let mut counts = PreviewCounts::default();
    for (_, record) in f.instances {
        let Some(p) = record
            .health
            .as_ref()
            .and_then(|h| h.preview.as_ref())
            .filter(|p| p.hash == f.desired)
        else {
            continue;
        };
        counts.pods += 1;
        let seconds = p.elapsed_ms as f64 / 1000.0;
        for (into, rates, from) in [
            (&mut counts.stable, &mut counts.stable_per_second, &p.stable),
            (
                &mut counts.candidate,
                &mut counts.candidate_per_second,
                &p.candidate,
            ),
        ] {
            for (rule, n) in from {
                *into.entry(rule.clone()).or_default() += n;
                if p.elapsed_ms > 0 {
                    *rates.entry(rule.clone()).or_default() += *n as f64 / seconds;
                }
            }
        }
    }
    for rate in counts
        .stable_per_second
        .values_mut()
        .chain(counts.candidate_per_second.values_mut())
    {
        *rate = (*rate * 100.0).round() / 100.0;
    }
    counts
}

/// `rules on 3 pods, stable → candidate: all 120/s → –, errors 0/s → 4,300/s`: each rule
/// of either config, `–` where a config does not have it; counts where no pod said how
/// long it counted.
fn preview_text(c: &PreviewCounts) -> String {
    if c.pods == 0 {
        return "no pod reported its shadow's counts yet".into();
    }
    let rates = !c.stable_per_second.is_empty() || !c.candidate_per_second.is_empty();
    let value = |rates_of: &std::collections::BTreeMap<String, f64>,
                 counts_of: &std::collections::BTreeMap<String, u64>,
                 rule: &str| {
        if rates {
            rates_of
                .get(rule)
                .map_or_else(|| "–".to_owned(), |r| format!("{}/s", per_second(*r)))
        } else {
            counts_of
                .get(rule)
                .map_or_else(|| "–".to_owned(), ToString::to_string)
        }
    };
    let rules: std::collections::BTreeSet<&String> =
        c.stable.keys().chain(c.candidate.keys()).collect();
    let list = rules
        .iter()
        .map(|rule| {
            format!(
                "{rule} {} → {}",
                value(&c.stable_per_second, &c.stable, rule),
                value(&c.candidate_per_second, &c.candidate, rule)
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    let unit = if rates { "rules" } else { "events per rule" };
    format!("{unit} on {} pods, stable → candidate: {list}", c.pods)
}

/// A rate for people: `4,300` (whole from 10 up, thousands separated), `2.5`, `0`.
fn per_second(rate: f64) -> String {
    let text = format!("{rate:.1}");
    if text.len() < 4 {
        return text.strip_suffix(".0").unwrap_or(&text).to_owned();
    }
    let whole = format!("{:.0}", rate);
    let mut out = String::new();
    for (i, c) in whole.chars().enumerate() {
        if i > 0 && (whole.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Pod names for a reason: the first [`NAMED_PODS`], then how many more.
fn named(pods: &[&str]) -> String {
    let mut text = pods
        .iter()
        .take(NAMED_PODS)
        .copied()
        .collect::<Vec<_>>()
        .join(", ");
    if pods.len() > NAMED_PODS {
        text.push_str(&format!(" and {} more", pods.len() - NAMED_PODS));
    }
    text
}

/// Pods a reason names at most (a condition message is capped at 1 KiB anyway).
const NAMED_PODS: usize = 10;

/// The printer column: `Progressing 1/3 4/5`, `Paused 2/3 9/10`, `Complete 3/3`,
/// `RolledBack 1/3`.
pub fn summary(status: &RolloutStatus, steps: usize) -> String {
    let c = &status.canary;
    match status.phase {
        RolloutPhase::Progressing | RolloutPhase::Paused => format!(
            "{:?} {}/{steps} {}/{}",
            status.phase, status.step, c.applied, c.total
        ),
        RolloutPhase::Complete | RolloutPhase::RolledBack => {
            format!("{:?} {}/{steps}", status.phase, status.step)
        }
    }
}

/// The pods with a record that a step of `percent` selects.
fn members<'a>(
    f: &'a Found<'_>,
    percent: u32,
) -> impl Iterator<Item = (&'a str, &'a Instance)> + 'a {
    f.instances
        .iter()
        .filter(move |(pod, _)| rollout::is_member(f.desired, f.namespace, pod, percent))
        .map(|(pod, record)| (pod.as_str(), record))
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use servicelog_api::v1alpha1::RolloutStep;

    use super::*;

    const STABLE: &str = "sha256:stable";
    const NEW: &str = "sha256:new";
    const NS: &str = "shop";

    fn spec_rollout(steps: &[(u32, Option<&str>)]) -> Rollout {
        Rollout {
            steps: steps
                .iter()
                .map(|(percent, pause)| RolloutStep {
                    percent: *percent,
                    pause: pause.map(Into::into),
                })
                .collect(),
            ..Default::default()
        }
    }

    fn pods() -> Vec<String> {
        (0..50).map(|i| format!("web-{i}")).collect()
    }

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
    }

    fn rfc3339(at: SystemTime) -> String {
        humantime::format_rfc3339_seconds(at).to_string()
    }

    /// Records of every pod: members of `percent` in `member_state` (on the candidate
    /// when ok), since `acked`; the rest on stable.
    fn records(
        percent: u32,
        member_state: InstanceState,
        acked: SystemTime,
    ) -> Vec<(String, Instance)> {
        pods()
            .into_iter()
            .map(|pod| {
                let member = rollout::is_member(NEW, NS, &pod, percent);
                let record = Instance {
                    pod: pod.clone(),
                    hash: if member && member_state == InstanceState::Ok {
                        NEW.into()
                    } else {
                        STABLE.into()
                    },
                    state: if member {
                        member_state
                    } else {
                        InstanceState::Ok
                    },
                    error: (member && member_state == InstanceState::Error)
                        .then(|| "spec.rules[0].to[0]: unknown sink \"nowhere\"".into()),
                    since: rfc3339(acked),
                    sink_errors: Default::default(),
                    candidate: member.then(|| NEW.into()),
                    health: None,
                };
                (pod, record)
            })
            .collect()
    }

    /// A candidate of hash [`NEW`] (the hash is what `selects` and the plan compare).
    fn candidate(step: u32, percent: u32) -> Candidate {
        let data = format!(
            r#"{{"config":{{"hash":"{NEW}"}},"percent":{percent},"schema":1,"stableHash":"{STABLE}","step":{step}}}"#
        );
        Candidate::from_slice(data.as_bytes()).expect("a candidate")
    }

    fn found<'a>(
        rollout: &'a Rollout,
        candidate: Option<&'a Candidate>,
        instances: &'a [(String, Instance)],
        now: SystemTime,
    ) -> Found<'a> {
        Found {
            rollout,
            namespace: NS,
            desired: NEW,
            stable: STABLE,
            candidate,
            candidate_written: Some(t(0)),
            instances,
            last: None,
            command: None,
            deadline: rollout::DEFAULT_PROGRESS_DEADLINE,
            now,
        }
    }

    fn members_of(percent: u32) -> u32 {
        count(
            pods()
                .iter()
                .filter(|p| rollout::is_member(NEW, NS, p, percent))
                .count(),
        )
    }

    #[test]
    fn given_a_new_spec_when_no_candidate_then_step_one_is_written_with_its_pods_counted() {
        let r = spec_rollout(&[(10, Some("1m")), (50, None)]);
        let instances = records(0, InstanceState::Ok, t(0));
        let (action, status) = plan(&found(&r, None, &instances, t(5)));
        assert_eq!(
            action,
            Action::WriteCandidate {
                step: 1,
                percent: 10
            }
        );
        assert_eq!(status.phase, RolloutPhase::Progressing);
        assert_eq!((status.step, status.canary.applied), (1, 0));
        assert_eq!(status.canary.total, members_of(10));
        assert_eq!(status.candidate_hash.as_deref(), Some(NEW));
    }

    #[test]
    fn given_a_step_partly_acked_then_it_waits_until_the_deadline_and_counts() {
        let r = spec_rollout(&[(40, None), (100, None)]);
        let c = candidate(1, 40);
        let mut instances = records(40, InstanceState::Ok, t(10));
        let first_member = instances
            .iter()
            .position(|(_, i)| i.candidate.is_some())
            .expect("a member");
        instances[first_member].1.hash = STABLE.into();
        let (action, status) = plan(&found(&r, Some(&c), &instances, t(20)));
        assert_eq!(
            action,
            Action::WaitUntil(t(0) + rollout::DEFAULT_PROGRESS_DEADLINE)
        );
        assert_eq!(status.canary.total, members_of(40));
        assert_eq!(status.canary.applied, members_of(40) - 1);
    }

    #[test]
    fn given_a_step_acked_then_it_holds_for_its_pause_from_the_last_ack_then_advances() {
        let r = spec_rollout(&[(20, Some("60s")), (60, None)]);
        let c = candidate(1, 20);
        let instances = records(20, InstanceState::Ok, t(10));
        let (action, status) = plan(&found(&r, Some(&c), &instances, t(30)));
        assert_eq!(action, Action::WaitUntil(t(70)), "60s after the last ack");
        assert_eq!(status.canary.applied, status.canary.total);
        let (action, status) = plan(&found(&r, Some(&c), &instances, t(70)));
        assert_eq!(
            action,
            Action::WriteCandidate {
                step: 2,
                percent: 60
            }
        );
        assert_eq!((status.step, status.canary.total), (2, members_of(60)));
    }

    #[test]
    fn given_the_last_step_acked_then_the_candidate_is_promoted() {
        let r = spec_rollout(&[(20, None), (60, None)]);
        let c = candidate(2, 60);
        let instances = records(60, InstanceState::Ok, t(10));
        let (action, _) = plan(&found(&r, Some(&c), &instances, t(11)));
        assert_eq!(action, Action::Promote);
    }

    #[test]
    fn given_a_canary_rejecting_the_candidate_then_it_is_withdrawn_and_not_retried() {
        let r = spec_rollout(&[(30, None)]);
        let c = candidate(1, 30);
        let instances = records(30, InstanceState::Error, t(10));
        let (action, status) = plan(&found(&r, Some(&c), &instances, t(11)));
        assert_eq!(action, Action::Withdraw);
        assert_eq!(status.phase, RolloutPhase::RolledBack);
        assert!(
            status.reason.contains("rejected the candidate") && status.reason.contains("nowhere"),
            "{}",
            status.reason
        );
        // Withdrawn: the same spec is not rolled out again.
        let stable = records(0, InstanceState::Ok, t(12));
        let mut after = found(&r, None, &stable, t(13));
        after.last = Some(&status);
        let (action, again) = plan(&after);
        assert_eq!(action, Action::Wait);
        assert_eq!(again, status);
    }

    #[test]
    fn given_the_spec_back_to_the_stable_config_then_a_candidate_is_withdrawn() {
        let r = spec_rollout(&[(30, None)]);
        let c = candidate(1, 30);
        let instances = records(30, InstanceState::Ok, t(10));
        let mut f = found(&r, Some(&c), &instances, t(11));
        f.desired = STABLE;
        let (action, status) = plan(&f);
        assert_eq!(action, Action::Withdraw);
        assert_eq!(status.phase, RolloutPhase::Complete);
        assert_eq!(status.candidate_hash, None);
    }

    #[test]
    fn given_steps_edited_mid_rollout_then_the_step_is_rewritten_with_the_new_percent() {
        let r = spec_rollout(&[(25, None), (50, None)]);
        let c = candidate(1, 10);
        let instances = records(10, InstanceState::Ok, t(10));
        let (action, _) = plan(&found(&r, Some(&c), &instances, t(11)));
        assert_eq!(
            action,
            Action::WriteCandidate {
                step: 1,
                percent: 25
            }
        );
    }

    #[test]
    fn given_canaries_that_never_ack_when_the_deadline_passes_then_it_rolls_back_naming_them() {
        let r = spec_rollout(&[(40, None)]);
        let c = candidate(1, 40);
        let mut instances = records(0, InstanceState::Ok, t(0));
        let mut f = found(&r, Some(&c), &instances, t(30));
        f.deadline = Duration::from_secs(60);
        let (action, status) = plan(&f);
        assert_eq!(
            action,
            Action::WaitUntil(t(60)),
            "look again at the deadline"
        );
        assert_eq!(status.phase, RolloutPhase::Progressing);
        f.now = t(61);
        let (action, status) = plan(&f);
        assert_eq!(action, Action::Withdraw);
        assert_eq!(status.phase, RolloutPhase::RolledBack);
        let first = pods()
            .into_iter()
            .find(|p| rollout::is_member(NEW, NS, p, 40))
            .expect("a member");
        assert!(
            status.reason.contains("progress deadline 1m")
                && status.reason.contains(&first)
                && status
                    .reason
                    .contains(&format!("{} of {}", members_of(40), members_of(40))),
            "{}",
            status.reason
        );
        // Acked in time: no rollback, whatever the time.
        instances = records(40, InstanceState::Ok, t(10));
        let mut f = found(&r, Some(&c), &instances, t(600));
        f.deadline = Duration::from_secs(60);
        assert_eq!(plan(&f).0, Action::Promote);
    }

    #[test]
    fn given_the_pause_annotation_then_the_step_holds_without_deadline_and_resume_restarts_its_clock()
     {
        let r = spec_rollout(&[(20, None), (60, None)]);
        let c = candidate(1, 20);
        let instances = records(20, InstanceState::Ok, t(10));
        let pause = Ok(Command::Pause);
        let mut f = found(&r, Some(&c), &instances, t(10_000));
        f.command = Some(&pause);
        let (action, paused) = plan(&f);
        assert_eq!(action, Action::Wait, "acked, but held");
        assert_eq!(paused.phase, RolloutPhase::Paused);
        assert!(
            paused.reason.contains("servicelog.io/rollout=pause"),
            "{}",
            paused.reason
        );
        assert_eq!(
            paused.summary,
            format!("Paused 1/2 {0}/{0}", members_of(20))
        );
        // Paused before the change started: no pod gets it.
        let (action, status) = plan(&Found {
            candidate: None,
            ..f
        });
        assert_eq!(
            (action, status.phase, status.step),
            (Action::Wait, RolloutPhase::Paused, 0)
        );
        // Annotation gone after a pause: the same step written again (a new mtime).
        let mut f = found(&r, Some(&c), &instances, t(10_000));
        f.last = Some(&paused);
        let (action, status) = plan(&f);
        assert_eq!(
            action,
            Action::WriteCandidate {
                step: 1,
                percent: 20
            }
        );
        assert_eq!(status.phase, RolloutPhase::Progressing);
    }

    #[test]
    fn given_promote_or_abort_annotations_then_the_candidate_is_promoted_or_withdrawn_now() {
        let r = spec_rollout(&[(20, Some("1h")), (60, None)]);
        let c = candidate(1, 20);
        let instances = records(0, InstanceState::Ok, t(0));
        let promote = Ok(Command::Promote);
        let mut f = found(&r, Some(&c), &instances, t(1));
        f.command = Some(&promote);
        let (action, status) = plan(&f);
        assert_eq!(action, Action::Promote, "no ack needed");
        assert!(
            status
                .reason
                .contains("promoted by servicelog.io/rollout=promote at step 1/2")
        );
        let abort = Ok(Command::Abort);
        f.command = Some(&abort);
        let (action, status) = plan(&f);
        assert_eq!(action, Action::Withdraw);
        assert_eq!(status.phase, RolloutPhase::RolledBack);
        assert!(
            status
                .reason
                .contains("aborted by servicelog.io/rollout=abort")
        );
        // Aborted before it started: remembered as rolled back, nothing written.
        let (action, status) = plan(&Found {
            candidate: None,
            ..f
        });
        assert_eq!(
            (action, status.phase),
            (Action::Wait, RolloutPhase::RolledBack)
        );
    }

    #[test]
    fn given_a_bad_annotation_then_the_rollout_goes_on_and_the_reason_names_the_annotation() {
        let r = spec_rollout(&[(20, None)]);
        let instances = records(0, InstanceState::Ok, t(0));
        let bad = Command::parse("stop");
        let mut f = found(&r, None, &instances, t(1));
        f.command = Some(&bad);
        let (action, status) = plan(&f);
        assert_eq!(
            action,
            Action::WriteCandidate {
                step: 1,
                percent: 20
            }
        );
        assert!(
            status.reason.contains("servicelog.io/rollout=\"stop\""),
            "{}",
            status.reason
        );
        let posted = events(None, &status);
        assert!(
            posted
                .iter()
                .any(|(t, r, _)| *t == EventType::Warning && *r == "RolloutAnnotationInvalid"),
            "{posted:?}"
        );
        assert!(
            events(Some(&status), &status).is_empty(),
            "once, not per reconcile"
        );
    }

    #[test]
    fn given_status_transitions_then_each_step_promotion_and_rollback_is_one_event() {
        let r = spec_rollout(&[(20, None), (60, None)]);
        let instances = records(0, InstanceState::Ok, t(0));
        let (_, step1) = plan(&found(&r, None, &instances, t(1)));
        let reasons = |last: Option<&RolloutStatus>, now: &RolloutStatus| -> Vec<&'static str> {
            events(last, now).into_iter().map(|(_, r, _)| r).collect()
        };
        assert_eq!(reasons(None, &step1), ["RolloutStep"]);
        assert!(reasons(Some(&step1), &step1).is_empty());
        let step2 = RolloutStatus {
            step: 2,
            ..step1.clone()
        };
        assert_eq!(reasons(Some(&step1), &step2), ["RolloutStep"]);
        let paused = RolloutStatus {
            phase: RolloutPhase::Paused,
            ..step2.clone()
        };
        assert_eq!(reasons(Some(&step2), &paused), ["RolloutPaused"]);
        assert_eq!(reasons(Some(&paused), &step2), ["RolloutResumed"]);
        let complete = RolloutStatus {
            phase: RolloutPhase::Complete,
            stable_hash: NEW.into(),
            candidate_hash: None,
            ..step2.clone()
        };
        assert_eq!(reasons(Some(&step2), &complete), ["RolloutPromoted"]);
        assert!(reasons(Some(&complete), &complete).is_empty());
        let back = RolloutStatus {
            phase: RolloutPhase::RolledBack,
            reason: "pod web-1 rejected".into(),
            ..step2.clone()
        };
        let e = events(Some(&step2), &back);
        assert_eq!(e.len(), 1);
        assert_eq!((e[0].0, e[0].1), (EventType::Warning, "RolloutRolledBack"));
        assert!(e[0].2.contains("pod web-1 rejected"), "{}", e[0].2);
        assert!(reasons(Some(&back), &back).is_empty());
    }

    #[test]
    fn given_a_rollout_partway_or_rolled_back_then_ready_is_false_and_complete_leaves_it() {
        let r = spec_rollout(&[(20, None)]);
        let instances = records(0, InstanceState::Ok, t(0));
        let (_, progressing) = plan(&found(&r, None, &instances, t(1)));
        let mut conds = vec![Cond::new(READY, true, "Applied", "all 50 sidecars run it")];
        hold_ready(&mut conds, &progressing);
        assert_eq!((conds[0].ok, conds[0].reason), (false, "RollingOut"));
        for (phase, reason) in [
            (RolloutPhase::Paused, "RolloutPaused"),
            (RolloutPhase::RolledBack, "RolledBack"),
        ] {
            let s = RolloutStatus {
                phase,
                ..progressing.clone()
            };
            assert_eq!(ready(&s).map(|c| (c.ok, c.reason)), Some((false, reason)));
        }
        let done = RolloutStatus {
            phase: RolloutPhase::Complete,
            ..progressing
        };
        assert_eq!(ready(&done), None);
    }

    fn health(events: u64, dropped: u64, sink: (u64, u64), before: u64) -> Health {
        Health {
            events,
            dropped,
            sinks: [(
                "a".to_owned(),
                servicelog_api::wire::SinkHealth {
                    delivered: sink.0,
                    rejected: sink.1,
                },
            )]
            .into(),
            sinks_before: [("a".to_owned(), before)].into(),
            rules: Default::default(),
            rules_before: Default::default(),
            preview: None,
        }
    }

    #[test]
    fn given_a_rule_that_decided_events_under_stable_when_it_decides_none_under_the_candidate_then_quiet_rules_trips()
     {
        let gates = RollbackOn {
            min_events: Some(100),
            quiet_rules: true,
            ..RollbackOn::default()
        };
        let canary = |before: &[(&str, u64)], now: &[(&str, u64)]| Health {
            events: now.iter().map(|(_, n)| n).sum(),
            rules: now.iter().map(|(r, n)| ((*r).to_owned(), *n)).collect(),
            rules_before: before.iter().map(|(r, n)| ((*r).to_owned(), *n)).collect(),
            ..health(0, 0, (0, 0), 0)
        };
        let before = [("drop-all", 0), ("errors", 30), ("(default)", 70)];
        let swallowed = canary(
            &before,
            &[("drop-all", 60), ("errors", 0), ("(default)", 0)],
        );
        assert_eq!(
            tripped(&gates, &[("web-1", &swallowed)]),
            None,
            "60 events < minEvents 100: not judged yet"
        );
        let reason =
            tripped(&gates, &[("web-1", &swallowed), ("web-2", &swallowed)]).expect("tripped");
        assert!(
            reason.contains("spec.rollout.rollbackOn.quietRules")
                && reason.contains("rule \"errors\" decided 60 events")
                && reason.contains("none of 120")
                && reason.contains("web-1, web-2"),
            "{reason}"
        );
        let healthy = canary(
            &before,
            &[("drop-all", 0), ("errors", 1), ("(default)", 119)],
        );
        assert_eq!(
            tripped(&gates, &[("web-1", &healthy), ("web-2", &swallowed)]),
            None,
            "the rule still decides events on one canary: not quiet over the canaries"
        );
        let rare = canary(
            &[("drop-all", 0), ("errors", 1), ("(default)", 99)],
            &[("drop-all", 0), ("errors", 0), ("(default)", 120)],
        );
        assert_eq!(
            tripped(&gates, &[("web-1", &rare), ("web-2", &rare)]),
            None,
            "a rule with 1% of the events before should have decided 2.4 of 240: too few to judge"
        );
        let renamed = canary(&before, &[("errors-v2", 0), ("(default)", 120)]);
        assert_eq!(
            tripped(&gates, &[("web-3", &renamed)]),
            None,
            "a rule the candidate does not have is not judged, nor is (default)"
        );
        let off = RollbackOn {
            quiet_rules: false,
            ..gates
        };
        assert_eq!(
            tripped(&off, &[("web-1", &swallowed), ("web-2", &swallowed)]),
            None
        );
    }

    #[test]
    fn given_canary_counters_then_each_gate_trips_past_its_limit_and_not_before_min_events() {
        let gates = RollbackOn {
            rejected_ratio: Some(0.1),
            dropped_ratio: Some(0.5),
            min_events: Some(100),
            quiet_sinks: true,
            quiet_rules: false,
        };
        let healthy = health(80, 10, (70, 0), 500);
        let dropping = health(80, 70, (10, 0), 500);
        assert_eq!(
            tripped(&gates, &[("web-1", &healthy), ("web-2", &healthy)]),
            None
        );
        assert_eq!(
            tripped(&gates, &[("web-1", &dropping)]),
            None,
            "80 events < minEvents 100: not judged yet"
        );
        assert_eq!(
            tripped(&gates, &[("web-1", &healthy), ("web-2", &dropping)]),
            None,
            "80 of 160 dropped is 0.5: at the limit, not past it"
        );
        let reason =
            tripped(&gates, &[("web-2", &dropping), ("web-3", &dropping)]).expect("tripped");
        assert!(
            reason.contains("spec.rollout.rollbackOn.droppedRatio 0.5")
                && reason.contains("140 of 160")
                && reason.contains("web-2, web-3"),
            "{reason}"
        );
        let rejecting = health(100, 0, (50, 50), 500);
        let reason = tripped(&gates, &[("web-4", &rejecting)]).expect("tripped");
        assert!(
            reason.contains("rejectedRatio 0.1")
                && reason.contains("50 of 100")
                && reason.contains("web-4"),
            "{reason}"
        );
        let quiet = health(200, 0, (0, 0), 500);
        let reason = tripped(&gates, &[("web-5", &quiet)]).expect("tripped");
        assert!(
            reason.contains("quietSinks") && reason.contains("\"a\"") && reason.contains("web-5"),
            "{reason}"
        );
        let never = health(200, 0, (0, 0), 0);
        assert_eq!(
            tripped(&gates, &[("web-6", &never)]),
            None,
            "quiet before too"
        );
    }

    #[test]
    fn given_rates_then_they_read_as_people_write_them() {
        for (rate, text) in [
            (0.0, "0"),
            (0.04, "0"),
            (2.5, "2.5"),
            (9.96, "10"),
            (120.0, "120"),
            (4300.4, "4,300"),
            (1_234_567.0, "1,234,567"),
        ] {
            assert_eq!(per_second(rate), text, "{rate}");
        }
    }

    #[test]
    fn given_preview_then_the_candidate_is_written_for_no_pod_and_held_until_preview_is_off() {
        let mut r = spec_rollout(&[(20, None)]);
        r.preview = true;
        let instances = records(0, InstanceState::Ok, t(0));
        let (action, status) = plan(&found(&r, None, &instances, t(1)));
        assert_eq!(
            action,
            Action::WriteCandidate {
                step: 1,
                percent: 20
            }
        );
        assert_eq!((status.phase, status.step), (RolloutPhase::Paused, 0));
        assert!(status.reason.contains("preview"), "{}", status.reason);
        // Two pods counted the same events, one over 2 s and one over 3 s.
        let mut reporting = records(0, InstanceState::Ok, t(0));
        for ((_, r), elapsed_ms) in reporting.iter_mut().zip([2000, 3000]) {
            r.health = Some(Health {
                preview: Some(servicelog_api::wire::Preview {
                    hash: NEW.into(),
                    stable: [("all".to_owned(), 60)].into(),
                    candidate: [("(default)".to_owned(), 55), ("errors".to_owned(), 5)].into(),
                    elapsed_ms,
                }),
                ..Health::default()
            });
        }
        let (_, counted) = plan(&found(&r, None, &reporting, t(1)));
        let counts = counted.preview.expect("preview counts");
        assert_eq!(counts.pods, 2);
        assert_eq!(counts.stable.get("all"), Some(&120));
        assert_eq!(counts.candidate.get("errors"), Some(&10));
        assert_eq!(
            counts.stable_per_second.get("all"),
            Some(&50.0),
            "30/s + 20/s"
        );
        assert_eq!(counts.candidate_per_second.get("errors"), Some(&4.17));
        assert_eq!(counts.candidate_per_second.get("(default)"), Some(&45.83));
        assert!(
            counted.reason.contains(
                "rules on 2 pods, stable → candidate: (default) – → 46/s, all 50/s → –, errors – → 4.2/s"
            ),
            "{}",
            counted.reason
        );
        // A record that does not say how long it counted: counts, no rates.
        for (_, r) in &mut reporting {
            if let Some(p) = r.health.as_mut().and_then(|h| h.preview.as_mut()) {
                p.elapsed_ms = 0;
            }
        }
        let (_, counted) = plan(&found(&r, None, &reporting, t(1)));
        assert!(
            counted.reason.contains(
                "events per rule on 2 pods, stable → candidate: (default) – → 110, all 120 → –, errors – → 10"
            ),
            "{}",
            counted.reason
        );
        let data = format!(
            r#"{{"config":{{"hash":"{NEW}"}},"percent":20,"preview":true,"schema":1,"stableHash":"{STABLE}","step":1}}"#
        );
        let shadow = Candidate::from_slice(data.as_bytes()).expect("a candidate");
        let mut f = found(&r, Some(&shadow), &instances, t(10_000));
        assert_eq!(plan(&f).0, Action::Wait, "held, no deadline");
        let off = spec_rollout(&[(20, None)]);
        f.rollout = &off;
        f.last = Some(&status);
        assert_eq!(
            plan(&f).0,
            Action::WriteCandidate {
                step: 1,
                percent: 20
            },
            "preview off: step 1"
        );
    }
}
