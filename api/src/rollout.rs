//! Staged rollout: which pods are canaries, and what a `spec.rollout` may say.
//!
//! Membership is a pure function of the candidate, the pod and the step's percent, so the
//! operator (counting a step's pods), the sidecar (deciding what it runs) and the node
//! agent agree without a per-pod write, and a pod that restarts comes back in the same
//! group. Each pod has a bucket in `0..BUCKETS`; a step of `p` percent takes the buckets
//! below `p * BUCKETS / 100`, so raising the percent only adds pods. The bucket is salted
//! with the candidate's hash: each rollout lands its risk on a different set of pods
//! (with a StatefulSet, `web-0` is not every rollout's canary). See docs/architecture.md,
//! "Staged rollout".

use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::{v1alpha1::Rollout, validate::FieldError};

/// Buckets a pod falls in: basis points, so a share is exact to 0.01%.
pub const BUCKETS: u32 = 10_000;

/// Most steps a rollout may have.
pub const MAX_STEPS: usize = 10;

/// Longest pause of a step: longer holds are a person's decision (the
/// `servicelog.io/rollout` annotation), not a timer's.
pub const MAX_PAUSE: Duration = Duration::from_secs(24 * 3600);

/// How long a step's canaries have to run the candidate unless
/// `spec.rollout.progressDeadline` says otherwise.
pub const DEFAULT_PROGRESS_DEADLINE: Duration = Duration::from_secs(600);

/// The annotation through which a person steers a rollout on the ServiceLog.
pub const ANNOTATION: &str = "servicelog.io/rollout";

/// What a person asks of a rollout through [`ANNOTATION`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// Hold the step in force: no pod joins the candidate, nothing is promoted, until
    /// the annotation is `resume` (or removed). A rejection still rolls back.
    Pause,
    /// Go on after a pause; the step's progress deadline starts again.
    Resume,
    /// Make the candidate the stable config now, whatever the steps and acks.
    Promote,
    /// Roll the candidate back now.
    Abort,
}

impl Command {
    /// The annotation's value as a command.
    ///
    /// Notable errors: any value other than `pause`, `resume`, `promote`, `abort`, with
    /// the annotation named.
    pub fn parse(value: &str) -> Result<Self, String> {
        match value.trim() {
            "pause" => Ok(Self::Pause),
            "resume" => Ok(Self::Resume),
            "promote" => Ok(Self::Promote),
            "abort" => Ok(Self::Abort),
            other => Err(format!(
                "annotation {ANNOTATION}={other:?} is not one of pause, resume, promote, abort; ignored"
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pause => "pause",
            Self::Resume => "resume",
            Self::Promote => "promote",
            Self::Abort => "abort",
        }
    }
}

/// `spec.rollout.progressDeadline` as a duration ([`DEFAULT_PROGRESS_DEADLINE`] when
/// absent or unreadable, which validation refuses before it gets here).
pub fn progress_deadline(rollout: &Rollout) -> Duration {
    rollout
        .progress_deadline
        .as_deref()
        .and_then(|text| parse_pause(Some(text)).ok())
        .filter(|d| !d.is_zero())
        .unwrap_or(DEFAULT_PROGRESS_DEADLINE)
}

/// Events a canary must have handled before the health gates judge it, unless
/// `rollbackOn.minEvents` says otherwise.
pub const DEFAULT_MIN_EVENTS: u64 = 100;

/// The bucket of pod `namespace/pod` for the candidate `candidate_hash`: the first 8 bytes
/// of SHA-256 over `"<candidate_hash>\n<namespace>/<pod>"`, big-endian, modulo
/// [`BUCKETS`]. Any tool can compute it.
pub fn bucket(candidate_hash: &str, namespace: &str, pod: &str) -> u32 {
    let mut hasher = Sha256::new();
    hasher.update(candidate_hash.as_bytes());
    hasher.update(b"\n");
    hasher.update(namespace.as_bytes());
    hasher.update(b"/");
    hasher.update(pod.as_bytes());
    let digest = hasher.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    // The remainder is below BUCKETS, so it fits.
    u32::try_from(u64::from_be_bytes(first) % u64::from(BUCKETS)).unwrap_or(0)
}

/// Whether pod `namespace/pod` runs the candidate `candidate_hash` in a step of `percent`
/// (0 to 100; above 100 counts as 100).
pub fn is_member(candidate_hash: &str, namespace: &str, pod: &str, percent: u32) -> bool {
    bucket(candidate_hash, namespace, pod) < percent.min(100) * (BUCKETS / 100)
}

/// A step's pause as a duration (absent: none).
///
/// Notable errors: the text is not a duration like `30s` or `5m`, or is over
/// [`MAX_PAUSE`].
pub fn parse_pause(text: Option<&str>) -> Result<Duration, String> {
    let Some(text) = text else {
        return Ok(Duration::ZERO);
    };
    let pause = humantime::parse_duration(text.trim())
        .map_err(|e| format!("{text:?} is not a duration like 30s, 5m or 1h: {e}"))?;
    if pause > MAX_PAUSE {
        return Err(format!("{text:?} is longer than 24h"));
    }
    Ok(pause)
}

/// Every problem of `spec.rollout`, by field path.
pub(crate) fn check(rollout: &Rollout) -> Vec<FieldError> {
    let mut problems = Vec::new();
    let steps = &rollout.steps;
    if steps.is_empty() {
        problems.push(FieldError::new(
            "spec.rollout.steps",
            "must list at least one step (leave spec.rollout out to change every pod at once)",
        ));
    }
    if steps.len() > MAX_STEPS {
        problems.push(FieldError::new(
            "spec.rollout.steps",
            format!("has {} steps; at most {MAX_STEPS}", steps.len()),
        ));
    }
    let mut previous = 0;
    for (i, step) in steps.iter().enumerate() {
        let path = format!("spec.rollout.steps[{i}]");
        if !(1..=100).contains(&step.percent) {
            problems.push(FieldError::new(
                format!("{path}.percent"),
                format!("is {}; must be 1 to 100", step.percent),
            ));
        } else if step.percent <= previous {
            problems.push(FieldError::new(
                format!("{path}.percent"),
                format!(
                    "is {}; each step must take more pods than the one before ({previous})",
                    step.percent
                ),
            ));
        }
        previous = previous.max(step.percent);
        if let Err(e) = parse_pause(step.pause.as_deref()) {
            problems.push(FieldError::new(format!("{path}.pause"), e));
        }
    }
    if let Some(text) = rollout.progress_deadline.as_deref() {
        match parse_pause(Some(text)) {
            Ok(d) if d.is_zero() => problems.push(FieldError::new(
                "spec.rollout.progressDeadline",
                format!("{text:?} is zero; leave it out for the default of 10m"),
            )),
            Ok(_) => {}
            Err(e) => problems.push(FieldError::new("spec.rollout.progressDeadline", e)),
        }
    }
    if let Some(gates) = &rollout.rollback_on {
        for (field, ratio) in [
            ("rejectedRatio", gates.rejected_ratio),
            ("droppedRatio", gates.dropped_ratio),
        ] {
            if let Some(r) = ratio
                && !(0.0..=1.0).contains(&r)
            {
                problems.push(FieldError::new(
                    format!("spec.rollout.rollbackOn.{field}"),
                    format!("is {r}; must be 0 to 1"),
                ));
            }
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1alpha1::{RollbackOn, RolloutStep};

    const CANDIDATE: &str = "sha256:5a1d0c0ffee";

    fn pods(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("checkout-7d9f8c-{i:05}")).collect()
    }

    #[test]
    fn given_the_same_inputs_when_asked_twice_then_the_bucket_is_the_same_and_in_range() {
        for pod in pods(100) {
            let b = bucket(CANDIDATE, "shop", &pod);
            assert!(b < BUCKETS, "{pod}: bucket {b} out of range");
            assert_eq!(
                b,
                bucket(CANDIDATE, "shop", &pod),
                "{pod}: not deterministic"
            );
        }
        // A pinned value, so any tool reimplementing the bucket can check itself.
        assert_eq!(bucket("sha256:00", "shop", "web-0"), bucket_reference());
    }

    /// The bucket recomputed by hand from its documented definition.
    fn bucket_reference() -> u32 {
        let digest = Sha256::digest(b"sha256:00\nshop/web-0");
        let n = digest[..8]
            .iter()
            .fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
        u32::try_from(n % 10_000).unwrap()
    }

    #[test]
    fn given_a_growing_percent_then_members_are_only_added() {
        let pods = pods(2_000);
        let mut before: Vec<bool> = vec![false; pods.len()];
        for percent in 0..=100 {
            let now: Vec<bool> = pods
                .iter()
                .map(|p| is_member(CANDIDATE, "shop", p, percent))
                .collect();
            for (i, (was, is)) in before.iter().zip(&now).enumerate() {
                assert!(
                    !was || *is,
                    "{} left the canaries when the percent grew to {percent}",
                    pods[i]
                );
            }
            before = now;
        }
        assert!(before.iter().all(|m| *m), "at 100% every pod is a member");
        assert!(
            pods.iter().all(|p| !is_member(CANDIDATE, "shop", p, 0)),
            "at 0% no pod is a member"
        );
    }

    #[test]
    fn given_10000_pods_then_each_step_takes_its_share_within_two_points() {
        let pods = pods(10_000);
        for percent in [1, 5, 10, 25, 50, 75, 90, 99] {
            let members = pods
                .iter()
                .filter(|p| is_member(CANDIDATE, "shop", p, percent))
                .count();
            let share = members as f64 / 100.0;
            assert!(
                (share - f64::from(percent)).abs() <= 2.0,
                "{percent}%: {members} of 10,000 pods are members ({share:.2}%)"
            );
        }
    }

    #[test]
    fn given_another_candidate_then_other_pods_are_the_canaries() {
        let pods = pods(1_000);
        let a: Vec<bool> = pods
            .iter()
            .map(|p| is_member("sha256:aa", "shop", p, 10))
            .collect();
        let b: Vec<bool> = pods
            .iter()
            .map(|p| is_member("sha256:bb", "shop", p, 10))
            .collect();
        assert_ne!(a, b, "the salt must move the canaries");
    }

    fn rollout(steps: &[(u32, Option<&str>)]) -> Rollout {
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

    #[test]
    fn given_increasing_steps_with_pauses_then_the_rollout_is_valid() {
        let ok = rollout(&[(10, Some("60s")), (50, Some("5m")), (100, None)]);
        assert_eq!(check(&ok), vec![]);
        assert_eq!(parse_pause(Some("5m")), Ok(Duration::from_secs(300)));
        assert_eq!(parse_pause(None), Ok(Duration::ZERO));
    }

    #[test]
    fn given_bad_steps_then_each_problem_names_its_field() {
        let bad = rollout(&[
            (50, Some("1m")),
            (50, None),
            (20, Some("soon")),
            (101, Some("48h")),
        ]);
        let paths: Vec<String> = check(&bad).into_iter().map(|e| e.path).collect();
        assert_eq!(
            paths,
            [
                "spec.rollout.steps[1].percent",
                "spec.rollout.steps[2].percent",
                "spec.rollout.steps[2].pause",
                "spec.rollout.steps[3].percent",
                "spec.rollout.steps[3].pause",
            ]
        );
        let none = check(&rollout(&[]));
        assert_eq!(none[0].path, "spec.rollout.steps");
        let many: Vec<(u32, Option<&str>)> = (1..=11).map(|p| (p, None)).collect();
        let too_many = check(&rollout(&many));
        assert_eq!(too_many.len(), 1, "{too_many:?}");
        assert!(too_many[0].message.contains("at most 10"), "{too_many:?}");
    }

    #[test]
    fn given_a_bad_progress_deadline_then_it_is_refused_by_name_and_absent_is_ten_minutes() {
        let mut r = rollout(&[(10, None)]);
        assert_eq!(progress_deadline(&r), DEFAULT_PROGRESS_DEADLINE);
        r.progress_deadline = Some("90s".into());
        assert_eq!(check(&r), vec![]);
        assert_eq!(progress_deadline(&r), Duration::from_secs(90));
        for bad in ["soon", "0s", "25h"] {
            r.progress_deadline = Some(bad.into());
            let problems = check(&r);
            assert_eq!(problems.len(), 1, "{bad}: {problems:?}");
            assert_eq!(problems[0].path, "spec.rollout.progressDeadline");
        }
    }

    #[test]
    fn given_annotation_values_then_the_four_commands_parse_and_others_name_the_annotation() {
        for c in [
            Command::Pause,
            Command::Resume,
            Command::Promote,
            Command::Abort,
        ] {
            assert_eq!(Command::parse(c.as_str()), Ok(c));
        }
        let e = Command::parse("rollback").expect_err("not a command");
        assert!(
            e.contains(ANNOTATION) && e.contains("rollback"),
            "the error names the annotation and the value: {e}"
        );
    }

    #[test]
    fn given_a_ratio_outside_zero_to_one_then_the_gate_is_refused_by_name() {
        let mut r = rollout(&[(10, None)]);
        r.rollback_on = Some(RollbackOn {
            rejected_ratio: Some(1.5),
            dropped_ratio: Some(0.5),
            min_events: None,
            quiet_sinks: false,
            quiet_rules: false,
        });
        let problems = check(&r);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].path, "spec.rollout.rollbackOn.rejectedRatio");
    }
}
