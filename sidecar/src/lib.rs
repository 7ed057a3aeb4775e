//! servicelog-sidecar: reads a service's log files, routes each line by its ServiceLog's
//! rules and writes it to sinks, swapping the rules live when the config changes.
//!
//! ```text
//! config ──(zk | file | last-known-good)──▶ Topology::apply ──▶ Pipeline (Router + sinks)
//!                                                                  ▲ taken per chunk
//! files ──sources::file::Tailer──(chunk: parse, route, encode)────┘──▶ sink threads
//!    ▲                                                                      │ ack
//!    └──────────── checkpoints (state dir) ◀── offsets every sink acked ◀───┘
//! ```
//!
//! The hot path is one reader thread and one thread per sink; the control plane (ZooKeeper,
//! the config file, HTTP, signals) runs on a single-threaded tokio runtime.
#![forbid(unsafe_code)]

pub mod app;
pub mod config;
pub mod http;
pub mod metrics;
pub mod pipeline;
pub mod sinks;
pub mod sources;
pub mod state;
