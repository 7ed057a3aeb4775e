//! servicelog-agent: the node agent. It reads what the containers of its node's pods print
//! (the kubelet's CRI log files under `/var/log/pods`) for pods whose ServiceLog has a
//! `containerLogs` source, and routes it with the sidecar's pipeline, one per pod.
//!
//! ```text
//! kube-apiserver ──pods of this node──▶ agent ──start/stop──▶ PodRun (per pod: Topology +
//!                                         │                    file reader + sink threads)
//! ZooKeeper config ──one watch per ServiceLog──▶ apply to each of its pods ──▶ instances/<pod>
//! ```
//!
//! [`pods`] decides which pods are served (a pure function of the Pod object), [`run`] is
//! one pod's pipeline built from the sidecar crate, [`zk`] the ZooKeeper side (config
//! watches, instance records) and [`agent`] ties them together.
#![forbid(unsafe_code)]

pub mod agent;
pub mod pods;
pub mod run;
pub mod zk;
