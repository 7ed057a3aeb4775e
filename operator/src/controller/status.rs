//! Building the status a person reads: conditions with reasons and messages they can act
//! on, pod counts, the printer-column summary. Pure functions; the controller patches the
//! result by server-side apply.

use std::collections::BTreeMap;

use servicelog_api::{
    v1alpha1::{Condition, LabelSelector, LabelSelectorRequirement, PodCounts},
    wire::{Instance, InstanceState},
};

pub const VALID: &str = "Valid";
pub const PUBLISHED: &str = "Published";
pub const READY: &str = "Ready";

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
            message: message.into(),
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

/// Whether a label selector matches a pod's labels (`metav1.LabelSelector` semantics; no
/// selector matches nothing, an empty one everything).
pub fn selector_matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    selector
        .match_labels
        .iter()
        .all(|(k, v)| labels.get(k) == Some(v))
        && expressions_match(&selector.match_expressions, labels)
}

/// Whether every `matchExpressions` requirement holds for a pod's labels.
pub fn expressions_match(
    expressions: &[LabelSelectorRequirement],
    labels: &BTreeMap<String, String>,
) -> bool {
    expressions.iter().all(|e| {
        let value = labels.get(&e.key);
        match e.operator.as_str() {
            "In" => value.is_some_and(|v| e.values.contains(v)),
            "NotIn" => value.is_none_or(|v| !e.values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        }
    })
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
    instances: &[(String, Result<Instance, String>)],
    hash: &str,
) -> Rollout {
    let mut applied = 0;
    let mut rejected = Vec::new();
    for pod in injected {
        match instances
            .iter()
            .find(|(name, _)| name == pod)
            .map(|(_, i)| i)
        {
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

#[cfg(test)]
mod tests {
    use super::*;
    use servicelog_api::v1alpha1::LabelSelectorRequirement;

    fn instance(hash: &str, state: InstanceState, error: Option<&str>) -> Instance {
        Instance {
            pod: String::new(),
            hash: hash.into(),
            state,
            error: error.map(Into::into),
            since: "2026-11-25T00:00:00Z".into(),
        }
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
    fn selector_semantics() {
        let labels: BTreeMap<String, String> = [("app".to_string(), "checkout".to_string())].into();
        let mut s = LabelSelector::default();
        assert!(
            selector_matches(&s, &labels),
            "an empty selector matches everything"
        );
        s.match_labels.insert("app".into(), "checkout".into());
        assert!(selector_matches(&s, &labels));
        s.match_expressions.push(LabelSelectorRequirement {
            key: "tier".into(),
            operator: "DoesNotExist".into(),
            values: vec![],
        });
        assert!(selector_matches(&s, &labels));
        s.match_expressions.push(LabelSelectorRequirement {
            key: "app".into(),
            operator: "NotIn".into(),
            values: vec!["checkout".into()],
        });
        assert!(!selector_matches(&s, &labels));
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
}
