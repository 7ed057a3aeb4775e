//! Step 2, publish: the config znode of a valid resource, created or set with the version
//! just read; nothing is written when the bytes are unchanged (idempotent); a hand-edited
//! or deleted znode is restored (drift repair) with a Warning Event. The reconcile and the
//! watch's fast path ([`super::fast`]) both publish through [`publish_config`].

use std::{collections::HashSet, sync::Mutex};

use k8s_openapi::{ByteString, api::core::v1::Secret};
use kube::{
    Api,
    api::{ObjectMeta, Patch, PatchParams},
    runtime::{events::EventType, reflector::ObjectRef},
};
use servicelog_api::{pod, v1alpha1::ServiceLog, wire::Envelope};

use super::{Context, FIELD_MANAGER, memory::Key};
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
    ctx.zk.authorize(&client, namespace).await?;
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
        ctx.zk.guard(),
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

/// Namespaces whose ZooKeeper identity Secret this process has written.
#[derive(Default)]
pub struct Identities {
    written: Mutex<HashSet<String>>,
}

/// Writes `namespace`'s ZooKeeper identity ([`servicelog_api::zkauth`]) into the Secret
/// the webhook mounts into its sidecars, once per namespace and process, when ZooKeeper
/// ACLs are on. The operator only writes this Secret (server-side apply); it never reads
/// one.
///
/// Notable behaviors: a failure is logged and tried again at the next reconcile of the
/// namespace; publishing goes on (the sidecars keep routing with what they have).
pub async fn ensure_identity(ctx: &Context, namespace: &str) {
    let Some(operator) = ctx.zk.guard().operator() else {
        return;
    };
    if ctx
        .identities
        .written
        .lock()
        .is_ok_and(|w| w.contains(namespace))
    {
        return;
    }
    let identity = operator.for_namespace(namespace);
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(pod::ZK_AUTH_SECRET.into()),
            namespace: Some(namespace.into()),
            labels: Some(
                [(
                    "app.kubernetes.io/managed-by".to_owned(),
                    "servicelog-operator".to_owned(),
                )]
                .into(),
            ),
            ..Default::default()
        },
        data: Some(
            [(
                pod::ZK_AUTH_KEY.to_owned(),
                ByteString(format!("{}\n", identity.to_line()).into_bytes()),
            )]
            .into(),
        ),
        type_: Some("Opaque".into()),
        ..Default::default()
    };
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    match api
        .patch(
            pod::ZK_AUTH_SECRET,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&secret),
        )
        .await
    {
        Ok(_) => {
            if let Ok(mut w) = ctx.identities.written.lock() {
                w.insert(namespace.to_owned());
            }
            tracing::info!(%namespace, user = %identity.user(), "wrote the namespace's ZooKeeper identity Secret");
        }
        Err(e) => {
            tracing::warn!(%namespace, error = %e, "cannot write the namespace's ZooKeeper identity Secret; its sidecars cannot read their config until it exists");
        }
    }
}
