//! Staged rollout, the operator's decision: from what ZooKeeper holds (the stable config's
//! hash, the candidate znode) and what the canaries' instance records say, the next write
//! and `status.rollout`. A pure function over values, table-tested; the reconcile does the
//! write (docs/architecture.md, "Staged rollout").
//!
//! Everything it needs survives an operator restart: the step is in the candidate znode,
//! each ack's time in its record's `since`, so a new leader resumes a rollout — a pause
//! included — where the old one was.

use std::time::{Duration, SystemTime};

use servicelog_api::{
    rollout,
    v1alpha1::{CanaryCounts, Rollout, RolloutPhase, RolloutStatus, ServiceLog},
    wire::{Candidate, Envelope, Instance, InstanceState},
    zkauth::Node,
};
use zookeeper_client::{Acls, CreateMode};

use super::{
    Context,
    memory::Key,
    publish::{PublishError, publish_config},
};
use crate::zk::{Published, ZkError};

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
/// ([`advance`]) with the stable config left where it is.
pub async fn publish(
    ctx: &Context,
    obj: &ServiceLog,
    key: &Key,
    envelope: &Envelope,
    last: Option<&RolloutStatus>,
) -> Publish {
    match advance(ctx, obj, key, envelope, last).await {
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
        Err(e) => Publish {
            published: Err(e),
            hash: envelope.hash.clone(),
            rollout: None,
        },
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
    pub now: SystemTime,
}

/// The write the rollout needs next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Nothing to write; look again when a record changes.
    Wait,
    /// Nothing to write; look again at this time (a step's pause ends).
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
    let steps = &f.rollout.steps;
    let status = |phase, step, canary, reason: String| RolloutStatus {
        phase,
        step,
        stable_hash: f.stable.to_owned(),
        candidate_hash: (f.desired != f.stable).then(|| f.desired.to_owned()),
        canary,
        reason,
    };
    if f.desired == f.stable {
        let action = if f.candidate.is_some() {
            Action::Withdraw
        } else {
            Action::Wait
        };
        let done = u32::try_from(steps.len()).unwrap_or(u32::MAX);
        return (
            action,
            status(
                RolloutPhase::Complete,
                done,
                CanaryCounts::default(),
                String::new(),
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
    let Some(candidate) = f
        .candidate
        .filter(|c| c.hash == f.desired && c.stable_hash == f.stable)
    else {
        // A new change (or one over a stable config edited since): its first step.
        let percent = steps.first().map_or(100, |s| s.percent);
        let total = members(f, percent).count();
        let counts = CanaryCounts {
            applied: 0,
            total: count(total),
        };
        return (
            Action::WriteCandidate { step: 1, percent },
            status(RolloutPhase::Progressing, 1, counts, String::new()),
        );
    };
    let step = candidate.step.clamp(1, count(steps.len()).max(1));
    let want_percent = steps
        .get(usize::try_from(step - 1).unwrap_or(0))
        .map_or(100, |s| s.percent);
    if candidate.percent != want_percent {
        // The steps were edited mid-rollout: this step as the spec says it now.
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
    let mut last_ack = f.candidate_written;
    for (pod, record) in members(f, candidate.percent) {
        total += 1;
        if record.candidate.as_deref() != Some(f.desired) {
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
            let acked = humantime::parse_rfc3339(&record.since).ok();
            last_ack = last_ack.max(acked);
        }
    }
    let counts = CanaryCounts {
        applied,
        total: count(total),
    };
    if usize::try_from(applied).unwrap_or(0) < total {
        return (
            Action::Wait,
            status(RolloutPhase::Progressing, step, counts, String::new()),
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
    fn given_a_step_partly_acked_then_it_waits_and_counts() {
        let r = spec_rollout(&[(40, None), (100, None)]);
        let c = candidate(1, 40);
        let mut instances = records(40, InstanceState::Ok, t(10));
        let first_member = instances
            .iter()
            .position(|(_, i)| i.candidate.is_some())
            .expect("a member");
        instances[first_member].1.hash = STABLE.into();
        let (action, status) = plan(&found(&r, Some(&c), &instances, t(20)));
        assert_eq!(action, Action::Wait);
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
}
