//! # spindle-engine
//!
//! The job engine (pinned shards, job lifecycle, durable submit, recovery,
//! work stealing) is specified in issue #3 and has not landed yet. This crate
//! exists so the workspace layout is in place; today it only re-exports the
//! write-ahead log it will be built on.

#![deny(unsafe_code)]

pub use spindle_wal as wal;
