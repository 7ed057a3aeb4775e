//! Leader election on a `coordination.k8s.io/v1` Lease, so two replicas never reconcile at
//! once. Optimistic concurrency on the Lease's resourceVersion decides races; a standby
//! takes over once the holder has not renewed for the lease duration.
//!
//! Losing the lease ends the process (crash-only): a leader that cannot prove it still
//! leads must stop writing, and its Deployment restarts it as a standby.

use std::time::Duration;

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::Timestamp,
};
use kube::{
    Api, Client,
    api::{PostParams, entry::Entry},
};

/// Where and how long.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    pub duration: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("lease {namespace}/{name}: {source}")]
    Kube {
        namespace: String,
        name: String,
        #[source]
        source: Box<kube::Error>,
    },
    #[error("lost the lease {namespace}/{name}: {why}")]
    Lost {
        namespace: String,
        name: String,
        why: String,
    },
}

/// Blocks until this identity holds the lease.
pub async fn acquire(client: &Client, config: &LeaseConfig) -> Result<(), LeaseError> {
    let api: Api<Lease> = Api::namespaced(client.clone(), &config.namespace);
    let retry = config.duration / 4;
    loop {
        match try_acquire(&api, config).await {
            Ok(true) => {
                tracing::info!(lease = %config.name, identity = %config.identity, "acquired the lease; leading");
                return Ok(());
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "lease attempt failed"),
        }
        tokio::time::sleep(retry).await;
    }
}

/// Renews the lease every third of its duration; returns when it is lost (another holder,
/// or no successful renewal within the duration).
pub async fn hold(client: &Client, config: &LeaseConfig) -> LeaseError {
    let api: Api<Lease> = Api::namespaced(client.clone(), &config.namespace);
    let mut last_ok = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(config.duration / 3).await;
        match try_acquire(&api, config).await {
            Ok(true) => last_ok = tokio::time::Instant::now(),
            Ok(false) => {
                return LeaseError::Lost {
                    namespace: config.namespace.clone(),
                    name: config.name.clone(),
                    why: "another replica holds it".into(),
                };
            }
            Err(e) => {
                tracing::warn!(error = %e, "lease renewal failed");
                if last_ok.elapsed() >= config.duration {
                    return LeaseError::Lost {
                        namespace: config.namespace.clone(),
                        name: config.name.clone(),
                        why: format!("no renewal for {:?}: {e}", config.duration),
                    };
                }
            }
        }
    }
}

/// One attempt: create, renew (we hold it) or take over (expired). `Ok(false)` when
/// someone else validly holds it or won the race.
async fn try_acquire(api: &Api<Lease>, config: &LeaseConfig) -> Result<bool, LeaseError> {
    let err = |e: kube::Error| LeaseError::Kube {
        namespace: config.namespace.clone(),
        name: config.name.clone(),
        source: Box::new(e),
    };
    let now = Timestamp::now();
    let seconds = i32::try_from(config.duration.as_secs())
        .unwrap_or(i32::MAX)
        .max(1);
    match api.entry(&config.name).await.map_err(err)? {
        Entry::Vacant(vacant) => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(config.name.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(config.identity.clone()),
                    lease_duration_seconds: Some(seconds),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            match vacant.insert(lease).commit(&PostParams::default()).await {
                Ok(()) => Ok(true),
                Err(kube::api::entry::CommitError::Save(kube::Error::Api(s))) if s.code == 409 => {
                    Ok(false)
                }
                Err(e) => Err(LeaseError::Lost {
                    namespace: config.namespace.clone(),
                    name: config.name.clone(),
                    why: e.to_string(),
                }),
            }
        }
        Entry::Occupied(mut occupied) => {
            let spec = occupied.get().spec.clone().unwrap_or_default();
            let ours = spec.holder_identity.as_deref() == Some(config.identity.as_str());
            let expired = match (&spec.renew_time, spec.lease_duration_seconds) {
                (Some(renewed), Some(d)) => now.duration_since(renewed.0).as_secs() >= i64::from(d),
                _ => true,
            };
            if !ours && !expired && spec.holder_identity.is_some() {
                return Ok(false);
            }
            occupied.get_mut().spec = Some(LeaseSpec {
                holder_identity: Some(config.identity.clone()),
                lease_duration_seconds: Some(seconds),
                acquire_time: if ours {
                    spec.acquire_time.clone()
                } else {
                    Some(MicroTime(now))
                },
                renew_time: Some(MicroTime(now)),
                lease_transitions: Some(spec.lease_transitions.unwrap_or(0) + i32::from(!ours)),
                ..spec
            });
            match occupied.commit(&PostParams::default()).await {
                Ok(()) => Ok(true),
                Err(kube::api::entry::CommitError::Save(kube::Error::Api(s))) if s.code == 409 => {
                    Ok(false)
                }
                Err(e) => Err(LeaseError::Lost {
                    namespace: config.namespace.clone(),
                    name: config.name.clone(),
                    why: e.to_string(),
                }),
            }
        }
    }
}
