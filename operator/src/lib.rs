//! servicelog-operator: reconciles `ServiceLog` resources into ZooKeeper config znodes,
//! reports rollout status and serves the admission webhooks. `main.rs` is the CLI; the
//! pieces live here so tests can drive them.
#![forbid(unsafe_code)]

pub mod cache;
pub mod certs;
pub mod controller;
pub mod crd;
pub mod inject;
pub mod lease;
pub mod manifests;
pub mod metrics;
pub mod prepull;
pub mod webhook;
pub mod zk;
