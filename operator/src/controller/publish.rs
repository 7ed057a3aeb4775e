//! Step 2, publish: the config znode of a valid resource, created or set with the version
//! just read; nothing is written when the bytes are unchanged (idempotent); a hand-edited
//! or deleted znode is restored (drift repair) with a Warning Event. The reconcile and the
//! watch's fast path ([`super::fast`]) both publish through [`publish_config`].

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

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
    lease::NotLeading,
    zk::{self, Published, ZkError},
};

/// Why a config was not published.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(transparent)]
    Zk(#[from] ZkError),
    #[error(transparent)]
    NotLeading(#[from] NotLeading),
}

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
) -> Result<Published, PublishError> {
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
    let outcome = ctx
        .leadership
        .write(zk::publish(
            &client,
            &ctx.layout,
            ctx.zk.guard(),
            namespace,
            name,
            envelope,
            known.as_deref(),
            &newest,
        ))
        .await??;
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

/// How often a namespace's identity Secret is applied again, so that one deleted or
/// edited by hand comes back without an operator restart. The operator may not read
/// Secrets (by design), so it cannot notice the deletion; applying the same content is a
/// no-op for the API server (no new resourceVersion, no watch event), one request per
/// namespace per interval.
pub const IDENTITY_REFRESH: Duration = Duration::from_secs(600);

/// When this process last wrote each namespace's ZooKeeper identity Secret.
#[derive(Default)]
pub struct Identities {
    written: Mutex<HashMap<String, Instant>>,
}

impl Identities {
    /// Whether `namespace`'s Secret is to be applied (again) at `now`.
    pub fn due(&self, namespace: &str, now: Instant) -> bool {
        self.written.lock().map_or(true, |w| {
            w.get(namespace)
                .is_none_or(|at| now.saturating_duration_since(*at) >= IDENTITY_REFRESH)
        })
    }

    fn wrote(&self, namespace: &str, at: Instant) {
        if let Ok(mut w) = self.written.lock() {
            w.insert(namespace.to_owned(), at);
        }
    }
}

/// Writes `namespace`'s ZooKeeper identity ([`servicelog_api::zkauth`]) into the Secret
/// the webhook mounts into its sidecars, when ZooKeeper ACLs are on (and the ZooKeeper CA,
/// when the operator is asked to give it to the sidecars, [`SidecarCa`]): at the first
/// reconcile of the namespace, and again at the first one after each [`IDENTITY_REFRESH`]
/// (every resource is reconciled at least every [`super::RESYNC_INTERVAL`]). The operator
/// only writes this Secret (server-side apply); it never reads one.
///
/// Notable behaviors: a failure is logged and tried again at the next reconcile of the
/// namespace; publishing goes on (the sidecars keep routing with what they have).
pub async fn ensure_identity(ctx: &Context, namespace: &str) {
    let operator = ctx.zk.guard().operator();
    if (operator.is_none() && ctx.sidecar_ca.is_none())
        || !ctx.identities.due(namespace, Instant::now())
    {
        return;
    }
    let ca_written = match &ctx.sidecar_ca {
        Some(ca) => ensure_ca(ctx, namespace, ca).await,
        None => true,
    };
    let Some(operator) = operator else {
        if ca_written {
            ctx.identities.wrote(namespace, Instant::now());
        }
        return;
    };
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
    let written = ctx
        .leadership
        .write(api.patch(
            pod::ZK_AUTH_SECRET,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&secret),
        ))
        .await;
    match written {
        Err(NotLeading) => {}
        Ok(Ok(_)) => {
            if ca_written {
                ctx.identities.wrote(namespace, Instant::now());
            }
            tracing::debug!(%namespace, user = %identity.user(), "applied the namespace's ZooKeeper identity Secret");
        }
        Ok(Err(e)) => {
            tracing::warn!(%namespace, error = %e, "cannot write the namespace's ZooKeeper identity Secret; its sidecars cannot read their config until it exists");
        }
    }
}

/// The ZooKeeper CA the operator copies into each namespace for its sidecars: its own
/// `--zk-tls-ca-file`, into the Secret the webhook mounts (`--sidecar-zk-tls-secret`,
/// key `ca.crt`), so users need not create that Secret in every namespace. Only the CA:
/// client certificates (mutual TLS) stay the user's to provide.
#[derive(Clone, Debug)]
pub struct SidecarCa {
    /// The Secret's name in each namespace.
    pub secret: String,
    /// Read at every write, so a CA replaced on disk reaches the namespaces at their next
    /// refresh.
    pub ca_file: std::path::PathBuf,
}

/// Applies `ca` into `namespace` (server-side apply, never a read); false when it could
/// not be written (tried again at the namespace's next reconcile).
async fn ensure_ca(ctx: &Context, namespace: &str, ca: &SidecarCa) -> bool {
    let pem = match std::fs::read(&ca.ca_file) {
        Ok(pem) => pem,
        Err(e) => {
            tracing::warn!(%namespace, file = %ca.ca_file.display(), error = %e, "cannot read the ZooKeeper CA to give the namespace's sidecars");
            return false;
        }
    };
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(ca.secret.clone()),
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
        data: Some([(pod::ZK_TLS_CA_KEY.to_owned(), ByteString(pem))].into()),
        type_: Some("Opaque".into()),
        ..Default::default()
    };
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let written = ctx
        .leadership
        .write(api.patch(
            &ca.secret,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&secret),
        ))
        .await;
    match written {
        Err(NotLeading) => false,
        Ok(Ok(_)) => {
            tracing::debug!(%namespace, secret = %ca.secret, "applied the ZooKeeper CA Secret for the namespace's sidecars");
            true
        }
        Ok(Err(e)) => {
            tracing::warn!(%namespace, secret = %ca.secret, error = %e, "cannot write the ZooKeeper CA Secret; the namespace's sidecars cannot connect over TLS until it exists");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_an_identity_secret_written_then_it_is_applied_again_after_the_refresh_interval() {
        let ids = Identities::default();
        let t0 = Instant::now();
        assert!(ids.due("shop", t0), "never written: due");
        ids.wrote("shop", t0);
        assert!(!ids.due("shop", t0 + Duration::from_secs(1)));
        assert!(!ids.due("shop", t0 + IDENTITY_REFRESH - Duration::from_secs(1)));
        assert!(
            ids.due("shop", t0 + IDENTITY_REFRESH),
            "a Secret deleted by hand comes back within the interval"
        );
        assert!(ids.due("other", t0), "per namespace");
    }
}
