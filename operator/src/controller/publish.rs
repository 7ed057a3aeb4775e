//! Step 2, publish: the config znode of a valid resource, created or set with the version
//! just read; nothing is written when the bytes are unchanged (idempotent); a hand-edited
//! or deleted znode is restored (drift repair) with a Warning Event. The reconcile and the
//! watch's fast path ([`super::fast`]) both publish through [`publish_config`].

use kube::runtime::{events::EventType, reflector::ObjectRef};
use servicelog_api::{v1alpha1::ServiceLog, wire::Envelope};

use super::{Context, memory::Key};
use crate::{
    cache::CachedServiceLog,
    zk::{self, Published, ZkError},
};

/// Publishes a valid resource's config znode (see [`zk::publish`]), remembers the hash, and
/// posts the Event for what changed.
///
/// Notable behaviors: returns [`Published::Superseded`] without writing when ZooKeeper
/// holds a newer generation of the same resource that the cache vouches for.
pub async fn publish_config(
    ctx: &Context,
    obj: &ServiceLog,
    key: &Key,
    envelope: &Envelope,
) -> Result<Published, ZkError> {
    let (namespace, name) = (key.0.as_str(), key.1.as_str());
    let known = ctx
        .memory
        .published(key)
        .or_else(|| obj.status.as_ref().and_then(|s| s.config_hash.clone()));
    let client = ctx.zk.client()?;
    let uid = obj.metadata.uid.clone();
    let reference = ObjectRef::<CachedServiceLog>::new(name).within(namespace);
    let newest = || {
        ctx.slogs
            .get(&reference)
            .filter(|s| s.metadata.uid == uid)
            .and_then(|s| s.metadata.generation)
    };
    let outcome = zk::publish(
        &client,
        &ctx.layout,
        namespace,
        name,
        envelope,
        known.as_deref(),
        &newest,
    )
    .await?;
    if matches!(outcome, Published::Superseded { .. }) {
        return Ok(outcome);
    }
    ctx.memory.set_published(key, &envelope.hash);
    let path = ctx.layout.config(namespace, name).unwrap_or_default();
    let drift = match outcome {
        Published::Unchanged { .. } | Published::Superseded { .. } => return Ok(outcome),
        Published::Created { .. } if known.is_some() => Some("deleted"),
        Published::Updated { drift: true, .. } => Some("changed"),
        Published::Created { .. } | Published::Updated { .. } => None,
    };
    match drift {
        Some(how) => ctx.event(
            obj,
            EventType::Warning,
            "DriftRepaired",
            "Publish",
            &format!(
                "{path} had been {how} outside the operator; restored {}",
                envelope.hash
            ),
        ),
        None => ctx.event(
            obj,
            EventType::Normal,
            "Published",
            "Publish",
            &format!(
                "{} published to {path} (version {})",
                envelope.hash,
                outcome.version()
            ),
        ),
    }
    Ok(outcome)
}
