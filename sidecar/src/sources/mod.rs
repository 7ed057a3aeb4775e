//! Where events come from: files on a volume shared with the application ([`file`](mod@file)),
//! syslog senders ([`syslog`]) and, in the node agent, the kubelet's container log files
//! ([`cri`], read by the file reader).
//!
//! A source reads, takes the pipeline in force for each run of what it read (a file chunk,
//! a batch of syslog messages) and hands the run's lines or events to a
//! [`Batcher`](crate::pipeline::Batcher); it gets back an [`Ack`](crate::pipeline::Ack),
//! behind which the file source checkpoints its offsets. Sources never name a sink. What a
//! source reads under a config (file globs and multiline, bound syslog sockets) is built by
//! the topology and handed over with the pipeline that routes it.

pub mod checkpoint;
pub mod cri;
pub mod file;
pub mod syslog;
