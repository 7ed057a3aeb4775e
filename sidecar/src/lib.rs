//! servicelog-sidecar: reads a service's logs (files, syslog), routes each event by its
//! ServiceLog's rules and writes it to sinks, swapping the rules live when the config
//! changes.
//!
//! ```text
//! config ──(zk | file | last-known-good)──▶ topology: build, diff, swap
//!                  │ FileSources / SyslogSources: the Pipeline (Router + sinks) and what
//!                  ▼ each source reads under it (globs + multiline, bound sockets)
//! files ──sources::file::Tailer──(chunk[, multiline])──▶ pipeline::Batcher ──▶ sink threads
//!    ▲                                                  (route, encode per sink)      │ ack
//!    └──────────── checkpoints (state dir) ◀── offsets every sink acked ◀──────────────┘
//! syslog (udp/tcp) ──sources::syslog: syslog-io ─▶ syslog-router (parse) ─▶ Batcher ─▶ sinks
//! ```
//!
//! Dependencies point one way: `sources` → `pipeline` → `sinks`, with `topology` above all
//! three and `config` above `topology`; `metrics`, `state` and `json` are leaves.
//!
//! The hot path is one reader thread and one thread per sink, plus, for syslog, one I/O
//! thread (a current-thread tokio runtime) and one routing thread; the control plane (the
//! config file, HTTP, signals) runs on a single-threaded tokio runtime, and the ZooKeeper
//! config on a thread of its own that waits on the client's socket itself
//! (`config::zk_thread`).
#![forbid(unsafe_code)]

pub mod app;
pub mod config;
pub mod json;
pub mod metrics;
pub mod pipeline;
pub mod sinks;
pub mod sources;
pub mod state;
pub mod topology;
