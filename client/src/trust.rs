//! Whose server a Unix socket leads to: the check the client makes before
//! it connects, so that a socket another user bound first (the default
//! `/tmp/spindled-$UID.sock` can be squatted) never receives our jobs.
//!
//! A socket is trusted when its file belongs to the calling user (the
//! effective uid) or to root, and its directory is not one where any user
//! may create and replace entries (writable by others without the sticky
//! bit). A symbolic link at the path must belong to the caller or root
//! too, since its owner can repoint it. [`ConnectOptions::allow_foreign_socket`]
//! (the CLI's `--allow-foreign-socket`) skips the check for a server the
//! user has decided to trust.

use super::ClientError;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// How to connect ([`Client::connect_with`](super::Client::connect_with),
/// [`Client::connect_unix_with`](super::Client::connect_unix_with)).
/// `ConnectOptions::default()` is what [`Client::connect`](super::Client::connect) uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectOptions {
    /// Connect to a Unix socket even when it belongs to a user who is
    /// neither this process's user nor root, or lies in a directory any
    /// user may write to (default false: such a socket is refused with
    /// [`ClientError::ForeignSocket`] or [`ClientError::OpenSocketDir`]).
    /// Turn it on only for a server whose owner you trust.
    pub allow_foreign_socket: bool,
}

impl ConnectOptions {
    /// Sets [`ConnectOptions::allow_foreign_socket`].
    pub fn allow_foreign_socket(mut self, allow: bool) -> Self {
        self.allow_foreign_socket = allow;
        self
    }
}

/// Whether a socket may be used, from what `stat` says about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Connect.
    Trusted,
    /// The file (or the link to it) belongs to this uid: neither the
    /// caller nor root.
    ForeignOwner(u32),
    /// The directory holding it may be written by anyone (this mode).
    OpenDirectory(u32),
}

/// The decision, apart from the file system: `owners` are the uids of the
/// socket file and of a symbolic link at its path (if any), `dir_mode` the
/// mode of the directory holding the path (if known).
pub(crate) fn verdict(owners: &[u32], dir_mode: Option<u32>, caller: u32, allow: bool) -> Verdict {
    if allow {
        return Verdict::Trusted;
    }
    if let Some(&other) = owners.iter().find(|&&uid| uid != caller && uid != 0) {
        return Verdict::ForeignOwner(other);
    }
    match dir_mode {
        // World-writable and not sticky: anyone may replace the socket.
        Some(mode) if mode & 0o002 != 0 && mode & 0o1000 == 0 => Verdict::OpenDirectory(mode),
        _ => Verdict::Trusted,
    }
}

/// Checks the socket at `path` before connecting. A path that does not
/// exist, or is not a socket, passes: connecting then reports why.
pub(super) fn check(path: &Path, opts: ConnectOptions) -> Result<(), ClientError> {
    if opts.allow_foreign_socket {
        return Ok(());
    }
    let Ok(meta) = std::fs::metadata(path) else { return Ok(()) };
    if !meta.file_type().is_socket() {
        return Ok(());
    }
    let mut owners = vec![meta.uid()];
    if let Ok(link) = std::fs::symlink_metadata(path) {
        if link.file_type().is_symlink() {
            owners.push(link.uid());
        }
    }
    let dir = match path.parent() {
        Some(p) if p.as_os_str().is_empty() => PathBuf::from("."),
        Some(p) => p.to_path_buf(),
        None => PathBuf::from("/"),
    };
    let dir_mode = std::fs::metadata(&dir).ok().map(|m| m.mode() & 0o7777);
    let caller = effective_uid();
    match verdict(&owners, dir_mode, caller, false) {
        Verdict::Trusted => Ok(()),
        Verdict::ForeignOwner(owner) => Err(ClientError::ForeignSocket {
            path: path.to_path_buf(),
            owner,
            owner_name: user_name(owner),
            caller,
        }),
        Verdict::OpenDirectory(mode) => {
            Err(ClientError::OpenSocketDir { path: path.to_path_buf(), dir, mode })
        }
    }
}

/// "uid 65534 (nobody)", or "uid 65534" when the name is unknown.
pub(super) fn describe_user(uid: &u32, name: &Option<String>) -> String {
    match name {
        Some(n) => format!("uid {uid} ({n})"),
        None => format!("uid {uid}"),
    }
}

/// Who is trusted: "you (uid 1000) or root", or "root" when the caller
/// is root.
pub(super) fn describe_trusted(caller: &u32) -> String {
    match caller {
        0 => "root (you)".to_string(),
        uid => format!("you (uid {uid}) or root"),
    }
}

/// The process's effective uid (the one the kernel checks file access with).
fn effective_uid() -> u32 {
    #[allow(unsafe_code)]
    // SAFETY: geteuid takes no arguments, cannot fail and touches no memory
    // of ours.
    let uid = unsafe { libc::geteuid() };
    uid
}

/// The login name of `uid` (`getpwuid_r`, so NSS sources count), if any.
fn user_name(uid: u32) -> Option<String> {
    let mut buf = vec![0u8; 1024];
    loop {
        let mut pw = std::mem::MaybeUninit::<libc::passwd>::uninit();
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        #[allow(unsafe_code)]
        // SAFETY: `pw` has room for one `passwd`, `buf` for `buf.len()`
        // bytes and `found` for one pointer; getpwuid_r writes only into
        // them.
        let rc = unsafe {
            libc::getpwuid_r(uid, pw.as_mut_ptr(), buf.as_mut_ptr().cast(), buf.len(), &mut found)
        };
        if rc == libc::ERANGE && buf.len() < 1 << 20 {
            buf.resize(buf.len() * 2, 0);
            continue;
        }
        if rc != 0 || found.is_null() {
            return None;
        }
        #[allow(unsafe_code)]
        // SAFETY: on success with a result, `found` points at `pw`, whose
        // `pw_name` is a NUL-terminated string inside `buf`, alive here.
        let name = unsafe { std::ffi::CStr::from_ptr((*found).pw_name) };
        return Some(name.to_string_lossy().into_owned());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_caller_and_root_are_trusted_anyone_else_only_when_allowed() {
        let me = 1000;
        assert_eq!(verdict(&[me], None, me, false), Verdict::Trusted);
        assert_eq!(verdict(&[0], None, me, false), Verdict::Trusted);
        assert_eq!(verdict(&[0], None, 0, false), Verdict::Trusted);
        assert_eq!(verdict(&[65534], None, me, false), Verdict::ForeignOwner(65534));
        assert_eq!(verdict(&[65534], None, 0, false), Verdict::ForeignOwner(65534));
        assert_eq!(verdict(&[65534], None, me, true), Verdict::Trusted);
        // A link someone else owns leads wherever they like.
        assert_eq!(verdict(&[0, 1001], None, me, false), Verdict::ForeignOwner(1001));
        assert_eq!(verdict(&[me, 0], None, me, false), Verdict::Trusted);
    }

    #[test]
    fn a_directory_anyone_may_write_without_the_sticky_bit_is_refused() {
        let me = 1000;
        for ok in [0o700, 0o755, 0o775, 0o1777, 0o1733] {
            assert_eq!(verdict(&[me], Some(ok), me, false), Verdict::Trusted, "{ok:o}");
        }
        for bad in [0o777, 0o757, 0o703] {
            assert_eq!(verdict(&[me], Some(bad), me, false), Verdict::OpenDirectory(bad));
            assert_eq!(verdict(&[me], Some(bad), me, true), Verdict::Trusted);
        }
        // The owner is reported first.
        assert_eq!(verdict(&[7], Some(0o777), me, false), Verdict::ForeignOwner(7));
    }

    #[test]
    fn users_are_named_when_known() {
        assert_eq!(user_name(0).as_deref(), Some("root"));
        assert_eq!(describe_user(&0, &Some("root".into())), "uid 0 (root)");
        assert_eq!(describe_user(&4_000_000_000, &None), "uid 4000000000");
        assert_eq!(describe_trusted(&0), "root (you)");
        assert_eq!(describe_trusted(&1000), "you (uid 1000) or root");
        assert!(ConnectOptions::default().allow_foreign_socket(true).allow_foreign_socket);
        assert!(!ConnectOptions::default().allow_foreign_socket);
    }
}
