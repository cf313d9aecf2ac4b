//! A real, small tmpfs for full-disk tests, shared by the WAL's, the
//! engine's and the daemon's tests (each includes this file with
//! `#[path]`).
//!
//! Mounting needs root (CAP_SYS_ADMIN). Without it a test fails loudly,
//! unless `SPINDLE_SKIP_TMPFS=1` is set, in which case [`mount_or_skip`]
//! prints `SKIPPED: cannot mount tmpfs: <error>` and returns `None`.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::ffi::CString;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use tempfile::TempDir;

/// Set to `1` to skip (not fail) where tmpfs cannot be mounted.
pub const SKIP_ENV: &str = "SPINDLE_SKIP_TMPFS";

fn c_path(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("path without NUL")
}

/// A tmpfs mounted on a fresh temporary directory. Dropping it unmounts
/// (lazily if something still holds it) and removes the directory, so a
/// failing assertion cleans up too.
pub struct Tmpfs {
    dir: Option<TempDir>,
    mounted: bool,
}

impl Tmpfs {
    pub fn mount(bytes: u64) -> io::Result<Tmpfs> {
        let dir = tempfile::tempdir()?;
        let target = c_path(dir.path());
        let data = CString::new(format!("size={bytes},mode=0700")).expect("no NUL");
        // SAFETY: every pointer is a valid NUL-terminated string that outlives
        // the call; mount(2) only reads them.
        let rc = unsafe {
            libc::mount(
                c"tmpfs".as_ptr(),
                target.as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                data.as_ptr().cast(),
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Tmpfs { dir: Some(dir), mounted: true })
    }

    pub fn path(&self) -> &Path {
        self.dir.as_ref().expect("not finished").path()
    }

    fn unmount(&mut self) -> io::Result<()> {
        if !self.mounted {
            return Ok(());
        }
        let target = c_path(self.path());
        // SAFETY: `target` is a valid NUL-terminated path for the call.
        let mut rc = unsafe { libc::umount2(target.as_ptr(), 0) };
        let mut err = io::Error::last_os_error();
        if rc != 0 && err.raw_os_error() == Some(libc::EBUSY) {
            // Something (a leaked mapping after a panic) still holds it:
            // detach now, the kernel frees it when the last user goes.
            // SAFETY: as above.
            rc = unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
            err = io::Error::last_os_error();
        }
        if rc != 0 {
            return Err(err);
        }
        self.mounted = false;
        Ok(())
    }

    /// Unmounts and removes the directory, asserting both worked.
    pub fn finish(mut self) {
        let path = self.path().to_path_buf();
        self.unmount().expect("unmount tmpfs");
        self.dir.take().expect("dir").close().expect("remove mount point");
        assert!(!path.exists(), "{} must be gone", path.display());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if let Err(e) = self.unmount() {
            eprintln!("cannot unmount tmpfs at {}: {e}", self.path().display());
        }
    }
}

/// Mounts a tmpfs of `bytes`, or skips (only with `SPINDLE_SKIP_TMPFS=1`).
pub fn mount_or_skip(bytes: u64) -> Option<Tmpfs> {
    match Tmpfs::mount(bytes) {
        Ok(fs) => {
            let (total, _) = space(fs.path());
            assert_eq!(total, bytes, "the tmpfs must have the size asked for");
            Some(fs)
        }
        Err(e) if std::env::var(SKIP_ENV).as_deref() == Ok("1") => {
            // Straight to fd 2, past the harness's capture, so it shows.
            let _ = writeln!(io::stderr(), "SKIPPED: cannot mount tmpfs: {e}");
            None
        }
        Err(e) => panic!(
            "cannot mount tmpfs: {e}. This test mounts a {bytes}-byte tmpfs and needs root \
             (CAP_SYS_ADMIN); set {SKIP_ENV}=1 to skip it explicitly"
        ),
    }
}

/// Total and available bytes of the filesystem holding `p`.
#[allow(clippy::unnecessary_cast)] // statvfs field types differ between targets
pub fn space(p: &Path) -> (u64, u64) {
    let path = c_path(p);
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `path` is a valid C string and `st` is writable memory of the
    // right type for statvfs to fill.
    let rc = unsafe { libc::statvfs(path.as_ptr(), st.as_mut_ptr()) };
    assert_eq!(rc, 0, "statvfs {}: {}", p.display(), io::Error::last_os_error());
    // SAFETY: statvfs returned 0, so it initialised `st`.
    let st = unsafe { st.assume_init() };
    let frsize = st.f_frsize as u64;
    (st.f_blocks as u64 * frsize, st.f_bavail as u64 * frsize)
}
