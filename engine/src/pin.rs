//! Pinning shard threads to cores.
//!
//! The allowed cores are read once, on the thread that builds the engine
//! (threads inherit affinity, and `core_affinity::get_core_ids()` returns only
//! the calling thread's allowed cores). Shard `i` is pinned to the `i`-th
//! allowed core when there are at least as many cores as shards; with more
//! shards than cores, shards run unpinned and the OS shares the cores.
//! Pinning is verified with `sched_getcpu`, and failures are reported.

/// The cores this process may run on.
pub(crate) fn allowed_cores() -> Vec<usize> {
    core_affinity::get_core_ids()
        .map(|ids| ids.into_iter().map(|c| c.id).collect())
        .unwrap_or_default()
}

/// Pins the calling thread to `core`; returns whether it now runs there.
pub(crate) fn pin_current(core: usize) -> bool {
    if !core_affinity::set_for_current(core_affinity::CoreId { id: core }) {
        return false;
    }
    current_cpu() == Some(core)
}

/// The CPU the calling thread runs on now.
#[allow(unsafe_code)]
pub(crate) fn current_cpu() -> Option<usize> {
    // SAFETY: sched_getcpu takes no arguments and only returns a number.
    let cpu = unsafe { libc::sched_getcpu() };
    usize::try_from(cpu).ok()
}
