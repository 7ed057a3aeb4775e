//! Where events come from. Today: files on a volume shared with the application.

pub mod checkpoint;
pub mod file;
