//! Who may read a log: the directory 0700 and every file 0600 by default,
//! 0750/0640 and a group with `FileAccess::Group`, an existing log's
//! directory and files tightened, a shared (sticky) directory left alone.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use spindle_wal::{FileAccess, FsStorage, SyncPolicy, Wal, WalOptions};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

fn opts(access: FileAccess) -> WalOptions {
    WalOptions { segment_size: 8192, sync: SyncPolicy::Always, access, ..WalOptions::default() }
}

/// Opens the log, appends enough to roll over a few segments, closes it.
fn write_log(dir: &Path, access: FileAccess) {
    let (wal, _) = Wal::open(dir, opts(access)).unwrap();
    let mut app = wal.appender();
    for i in 0..100u32 {
        let lsn = app.append(1, &[i as u8; 300]).unwrap();
        wal.wait_durable(lsn).unwrap();
    }
    assert!(wal.stats().segments_created > 2);
    wal.close().unwrap();
}

/// (mode, gid) of the directory and of every file in it, sorted by name.
fn modes(dir: &Path) -> (u32, u32, Vec<(String, u32, u32)>) {
    let meta = std::fs::metadata(dir).unwrap();
    let mut files: Vec<(String, u32, u32)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            (e.file_name().to_string_lossy().into_owned(), m.mode() & 0o7777, m.gid())
        })
        .collect();
    files.sort();
    (meta.mode() & 0o7777, meta.gid(), files)
}

fn assert_all(dir: &Path, dir_mode: u32, file_mode: u32, gid: Option<u32>) {
    let (mode, dgid, files) = modes(dir);
    assert_eq!(mode, dir_mode, "{} is {mode:04o}", dir.display());
    if let Some(g) = gid {
        assert_eq!(dgid, g, "{} group", dir.display());
    }
    assert!(files.iter().any(|f| f.0 == "LOCK"), "{files:?}");
    assert!(files.iter().filter(|f| f.0.ends_with(".wal")).count() > 2, "{files:?}");
    for (name, m, g) in &files {
        assert_eq!(*m, file_mode, "{name} is {m:04o}");
        if let Some(want) = gid {
            assert_eq!(*g, want, "{name} group");
        }
    }
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self").unwrap().uid() == 0
}

/// A group other than the one files get anyway where possible: root may
/// give files to any group (`nogroup`, 65534); anyone else to their own.
fn some_group(tmp: &Path) -> u32 {
    if is_root() {
        65534
    } else {
        std::fs::metadata(tmp).unwrap().gid()
    }
}

#[test]
fn a_new_log_is_private_to_its_user() {
    let tmp = tempfile::tempdir().unwrap();
    // Missing parents are created too.
    let dir = tmp.path().join("a/b/log");
    write_log(&dir, FileAccess::Private);
    assert_all(&dir, 0o700, 0o600, None);
    let parent = std::fs::metadata(tmp.path().join("a/b")).unwrap().mode() & 0o777;
    assert_eq!(parent & 0o077, 0, "a created parent is {parent:04o}");
    // Reopening (recovery maps the old segments) keeps it so.
    write_log(&dir, FileAccess::Private);
    assert_all(&dir, 0o700, 0o600, None);
}

#[test]
fn a_group_gets_read_access_and_the_files() {
    let tmp = tempfile::tempdir().unwrap();
    let gid = some_group(tmp.path());
    let dir = tmp.path().join("log");
    write_log(&dir, FileAccess::Group(gid));
    assert_all(&dir, 0o750, 0o640, Some(gid));
    // FsStorage takes the same setting.
    let other = tmp.path().join("fs");
    let s = FsStorage::with_access(&other, FileAccess::Group(gid)).unwrap();
    assert_eq!(s.access(), FileAccess::Group(gid));
    let (mode, g, files) = modes(&other);
    assert_eq!((mode, g), (0o750, gid));
    assert_eq!(files, [("LOCK".to_string(), 0o640, gid)]);
    // And back to private: the group loses access.
    drop(s);
    write_log(&dir, FileAccess::Private);
    assert_all(&dir, 0o700, 0o600, None);
}

#[test]
fn an_old_world_readable_log_is_tightened_on_open() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    write_log(&dir, FileAccess::Private);
    // As a log written before files were private looked.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    write_log(&dir, FileAccess::Private);
    assert_all(&dir, 0o700, 0o600, None);
}

#[test]
fn a_shared_sticky_directory_is_left_alone_but_the_files_are_private() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("shared");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777)).unwrap();
    write_log(&dir, FileAccess::Private);
    let (mode, _, files) = modes(&dir);
    assert_eq!(mode, 0o1777, "a shared directory is not chmodded");
    assert!(files.iter().all(|f| f.1 == 0o600), "{files:?}");
}

#[test]
fn a_file_where_the_directory_should_be_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("file");
    std::fs::write(&path, b"keep").unwrap();
    let err = Wal::open(&path, opts(FileAccess::Private)).unwrap_err().to_string();
    assert!(err.contains("not a directory") && err.contains("file"), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), b"keep");
}
