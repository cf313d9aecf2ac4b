//! What beanstalkd client libraries read besides the replies: the socket's
//! name as a peer sees it, the socket's mode from the moment it exists,
//! and a `version` in `stats` that semver comparisons against beanstalkd
//! releases accept (Spindle's own version under `spindle-version`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Addr, Server};
use spindle::client::Client;

const SPINDLED: &str = env!("CARGO_BIN_EXE_spindled");

fn sock(s: &Server) -> std::path::PathBuf {
    match s.addr() {
        Addr::Unix(p) => p.clone(),
        Addr::Tcp(_) => unreachable!("unix socket expected"),
    }
}

#[test]
fn a_client_sees_the_socket_path_as_its_peer_name() {
    let s = Server::spindled(&[]);
    let path = sock(&s);
    let c = UnixStream::connect(&path).unwrap();
    let peer = c.peer_addr().unwrap();
    assert_eq!(peer.as_pathname(), Some(path.as_path()), "bound under another name: {peer:?}");
}

#[test]
fn the_socket_is_never_wider_than_its_mode_even_under_umask_0() {
    let dir = common::tempdir();
    let path = dir.path().join("s.sock");
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!("umask 000; exec {SPINDLED} -l unix:{}", path.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    // The first moment the file is seen, it already has 0600; no other
    // name ever appears in the directory.
    let mode = loop {
        for e in std::fs::read_dir(dir.path()).unwrap() {
            let name = e.unwrap().file_name();
            assert_eq!(name, "s.sock", "another file appeared: {name:?}");
        }
        if let Ok(m) = std::fs::symlink_metadata(&path) {
            break m.permissions().mode() & 0o777;
        }
        assert!(Instant::now() < deadline, "no socket within 30 s");
        assert!(child.try_wait().unwrap().is_none(), "spindled exited");
    };
    assert_eq!(mode, 0o600, "socket mode {mode:o} under umask 000");
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn stats_version_is_semver_of_the_beanstalkd_release_and_spindle_version_is_kept() {
    let s = Server::spindled(&[]);
    let mut c = Client::connect_unix(sock(&s)).unwrap();
    let st = c.stats().unwrap();
    let v = st.get("version").unwrap();
    let parts: Vec<u64> = v.split('.').map(|p| p.parse().unwrap()).collect();
    assert_eq!(parts.len(), 3, "not MAJOR.MINOR.PATCH: {v:?}");
    assert!(parts >= vec![1, 8, 0], "{v} < 1.8.0");
    let own = st.get("spindle-version").unwrap();
    assert_eq!(own, format!("spindled {}", env!("CARGO_PKG_VERSION")));
    // The YAML quotes both, as beanstalkd quotes `version`.
    let raw = s.connect().cmd_str("stats\r\n");
    assert!(raw.contains(&format!("\nversion: \"{v}\"\n")), "{raw}");
}
