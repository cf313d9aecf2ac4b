//! # spindle
//!
//! Facade crate: re-exports the public API of Spindle's crates. See the
//! repository README and `docs/`.

#![deny(unsafe_code)]

pub use spindle_engine as engine;
pub use spindle_wal as wal;
