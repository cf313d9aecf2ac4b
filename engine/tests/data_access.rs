//! Who may read the engine's data: the data directory, its `shard-NNN`
//! directories and their log files are private to this user (0700, 0600)
//! by default, readable by one group with `data_access(FileAccess::Group)`
//! (0750, 0640), and an older world-readable data directory is tightened
//! when the engine opens it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use spindle_engine::{Durability, Engine, FileAccess, Job};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Builds an engine on `dir`, submits a few jobs (each logged before
/// `submit` returns), shuts it down.
fn run(dir: &Path, access: Option<FileAccess>) {
    let mut b = Engine::builder()
        .data_dir(dir)
        .durability(Durability::Sync)
        .shards(2)
        .pin_threads(false)
        .segment_size(64 << 10);
    if let Some(a) = access {
        b = b.data_access(a);
    }
    let engine = b.build().unwrap();
    for i in 0..20u8 {
        engine.submit(Job::new("q", vec![i; 100])).unwrap();
    }
    engine.shutdown().unwrap();
}

/// Every path under `dir` (itself included) with its mode and gid.
fn walk(dir: &Path) -> Vec<(PathBuf, bool, u32, u32)> {
    let meta = std::fs::metadata(dir).unwrap();
    let mut out = vec![(dir.to_path_buf(), true, meta.mode() & 0o7777, meta.gid())];
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let m = e.metadata().unwrap();
        if m.is_dir() {
            out.extend(walk(&e.path()));
        } else {
            out.push((e.path(), false, m.mode() & 0o7777, m.gid()));
        }
    }
    out
}

fn assert_modes(dir: &Path, dir_mode: u32, file_mode: u32, gid: Option<u32>) {
    let all = walk(dir);
    let logs = all.iter().filter(|e| e.0.extension().is_some_and(|x| x == "wal")).count();
    assert!(logs >= 2, "each shard has a log: {all:?}");
    assert!(all.iter().filter(|e| e.1).count() >= 3, "data dir and 2 shard dirs: {all:?}");
    for (path, is_dir, mode, g) in &all {
        let want = if *is_dir { dir_mode } else { file_mode };
        assert_eq!(*mode, want, "{} is {mode:04o}", path.display());
        if let Some(gid) = gid {
            assert_eq!(*g, gid, "{} group", path.display());
        }
    }
}

#[test]
fn the_data_directory_and_logs_are_private_by_default() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    run(&dir, None);
    assert_modes(&dir, 0o700, 0o600, None);
}

#[test]
fn a_group_may_read_the_data() {
    let tmp = tempfile::tempdir().unwrap();
    // Root may give files to any group: use one it is not in (nogroup).
    // Anyone else may only use their own.
    let root = std::fs::metadata("/proc/self").unwrap().uid() == 0;
    let gid = if root { 65534 } else { std::fs::metadata(tmp.path()).unwrap().gid() };
    let dir = tmp.path().join("data");
    run(&dir, Some(FileAccess::Group(gid)));
    assert_modes(&dir, 0o750, 0o640, Some(gid));
    // Back to private: the group loses access to all of it.
    run(&dir, None);
    assert_modes(&dir, 0o700, 0o600, None);
}

#[test]
fn a_world_readable_data_directory_from_before_is_tightened() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    run(&dir, None);
    // As an engine that did not set modes left it.
    for (path, is_dir, _, _) in walk(&dir) {
        let mode = if is_dir { 0o755 } else { 0o644 };
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    run(&dir, None);
    assert_modes(&dir, 0o700, 0o600, None);
}
