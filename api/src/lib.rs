//! servicelog-api: what the operator and the sidecar share.
//!
//! - [`v1alpha1`]: the `ServiceLog` resource (the CRD with the `kube` feature).
//! - [`validate`]: every problem of a spec, each with its field path.
//! - [`rules`]: the rule language compiled into an immutable [`rules::Router`], and the
//!   borrowed event views the sidecar's hot path routes.
//! - [`quantity`]: byte sizes written as integers or Kubernetes quantities (`256Mi`).
//! - [`pod`]: the pod contract of the webhook and the sidecar — annotations, env, directories.
//! - `logging` (feature `logging`): both binaries' logs — format, level, live level changes.
//! - `serve` (feature `serve`): the `/metrics`, `/healthz`, `/readyz` server of both binaries.
//! - [`zkauth`]: ZooKeeper identities (the operator's, each namespace's, derived) and ACLs.
//! - `zktls` (feature `zk-tls`): TLS to ZooKeeper — settings, PEM files, handshake diagnosis.
//! - [`rollout`]: staged rollout — which pods are canaries, the checks of `spec.rollout`.
//! - [`wire`]: the ZooKeeper contract — znode paths, the config envelope, canonical JSON and
//!   its `sha256:` hash, the instance record.
#![forbid(unsafe_code)]

#[cfg(feature = "logging")]
pub mod logging;
pub mod pod;
pub mod quantity;
pub mod rollout;
pub mod rules;
#[cfg(feature = "serve")]
pub mod serve;
pub mod v1alpha1;
pub mod validate;
pub mod wire;
pub mod zkauth;
#[cfg(feature = "zk-tls")]
pub mod zktls;

pub use rules::{Decision, Router};
pub use v1alpha1::ServiceLogSpec;
pub use validate::{FieldError, ValidationErrors, parse_spec, read_spec, validate};
