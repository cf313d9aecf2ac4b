//! [`FileAccess`]: who may read a log's directory and files, and the code
//! that makes them exactly so.

use crate::WalError;
use std::fs::{DirBuilder, File, OpenOptions, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Who may read the directory and files a log writes.
///
/// Job bodies sit in the log as plain bytes, so the files are private to
/// the process's user by default (directory 0700, files 0600), or readable
/// by one group besides ([`FileAccess::Group`]: 0750 and 0640, chgrp'd to
/// the group). Modes are given at creation and then set explicitly, so a
/// umask neither widens nor narrows the result.
///
/// An existing directory is brought to exactly the mode and group when it
/// belongs to the process's effective user and is not a shared directory
/// (sticky bit, like `/tmp`), with a `tracing` warning saying what changed;
/// otherwise it is left as it is, with a warning
/// when it is wider than asked. Files the log writes (segments, `LOCK`) are
/// always set exactly, on creation and on every open, so a log written
/// before files were private is tightened the next time it is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FileAccess {
    /// Only the owner: directories 0700, files 0600. The default.
    #[default]
    Private,
    /// The owner, and members of this group (a gid) read-only:
    /// directories 0750, files 0640, each given to the group.
    Group(u32),
}

/// The sticky bit: in such a directory (`/tmp`) users share the namespace.
const STICKY: u32 = 0o1000;

impl FileAccess {
    /// The group named `name` (a group name, or a numeric gid).
    pub fn group_named(name: &str) -> Result<FileAccess, WalError> {
        if let Ok(gid) = name.parse::<u32>() {
            return Ok(FileAccess::Group(gid));
        }
        match lookup_group(name) {
            Ok(Some(gid)) => Ok(FileAccess::Group(gid)),
            Ok(None) => Err(WalError::UnknownGroup { name: name.to_owned() }),
            Err(e) => Err(WalError::Config(format!("cannot look up group {name:?}: {e}"))),
        }
    }

    /// The mode of a directory: 0700, or 0750 with a group.
    pub fn dir_mode(self) -> u32 {
        match self {
            FileAccess::Private => 0o700,
            FileAccess::Group(_) => 0o750,
        }
    }

    /// The mode of a file: 0600, or 0640 with a group.
    pub fn file_mode(self) -> u32 {
        match self {
            FileAccess::Private => 0o600,
            FileAccess::Group(_) => 0o640,
        }
    }

    /// The group files are given to, if any.
    pub fn gid(self) -> Option<u32> {
        match self {
            FileAccess::Private => None,
            FileAccess::Group(gid) => Some(gid),
        }
    }

    /// Makes `dir` a directory with this access: creates it (and any
    /// missing parents, with the same mode) or adopts an existing one, as
    /// the [type's docs](FileAccess) describe.
    pub fn prepare_dir(self, dir: &Path) -> Result<(), WalError> {
        let meta = match std::fs::metadata(dir) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                DirBuilder::new()
                    .recursive(true)
                    .mode(self.dir_mode())
                    .create(dir)
                    .map_err(|e| WalError::io("create directory", dir, e))?;
                return self.set_dir(dir);
            }
            Err(e) => return Err(WalError::io("inspect directory", dir, e)),
        };
        if !meta.is_dir() {
            let e =
                io::Error::new(io::ErrorKind::NotADirectory, "it exists and is not a directory");
            return Err(WalError::io("use as a directory", dir, e));
        }
        let mode = meta.mode() & 0o7777;
        if mode == self.dir_mode() && self.gid().is_none_or(|g| g == meta.gid()) {
            return Ok(());
        }
        if meta.uid() == effective_uid() && mode & STICKY == 0 {
            self.set_dir(dir)?;
            // Once, when an existing directory is changed: say so.
            tracing::warn!(
                dir = %dir.display(),
                "directory mode {mode:04o} set to {:04o}{}",
                self.dir_mode(),
                self.gid().map(|g| format!(", group {g}")).unwrap_or_default()
            );
        } else if mode & 0o777 & !self.dir_mode() != 0 {
            tracing::warn!(
                dir = %dir.display(),
                "directory is mode {mode:04o}, wider than {:04o}, and is left as it is because \
                 {}; its log files are still private, but other users can list them: give the \
                 log a directory of its own",
                self.dir_mode(),
                if mode & STICKY != 0 {
                    "it is a shared directory (sticky bit)".to_string()
                } else {
                    format!("it belongs to uid {}", meta.uid())
                }
            );
        }
        Ok(())
    }

    fn set_dir(self, dir: &Path) -> Result<(), WalError> {
        if let Some(gid) = self.gid() {
            std::os::unix::fs::chown(dir, None, Some(gid))
                .map_err(|e| WalError::io("give directory to group", dir, e))?;
        }
        // After chown, which may clear set-id bits; exact whatever the umask.
        std::fs::set_permissions(dir, Permissions::from_mode(self.dir_mode()))
            .map_err(|e| WalError::io("set directory mode", dir, e))
    }

    /// Opens `path` with `opts`, creating it (if `opts` says so) with this
    /// access's file mode, then gives it exactly this access. `op` names
    /// the operation in errors.
    pub fn open_file(
        self,
        op: &'static str,
        path: &Path,
        opts: &mut OpenOptions,
    ) -> Result<File, WalError> {
        let file = opts.mode(self.file_mode()).open(path).map_err(|e| WalError::io(op, path, e))?;
        self.apply_to_file(&file, path)?;
        Ok(file)
    }

    /// Gives an open file exactly this access (mode, and group if any);
    /// does nothing when it already has it.
    pub fn apply_to_file(self, file: &File, path: &Path) -> Result<(), WalError> {
        let meta = file.metadata().map_err(|e| WalError::io("inspect file", path, e))?;
        let group_ok = self.gid().is_none_or(|g| g == meta.gid());
        if meta.mode() & 0o7777 == self.file_mode() && group_ok {
            return Ok(());
        }
        if !group_ok {
            std::os::unix::fs::fchown(file, None, self.gid())
                .map_err(|e| WalError::io("give file to group", path, e))?;
        }
        file.set_permissions(Permissions::from_mode(self.file_mode()))
            .map_err(|e| WalError::io("set file mode", path, e))
    }
}

/// The process's effective uid.
fn effective_uid() -> u32 {
    #[allow(unsafe_code)]
    // SAFETY: geteuid takes no arguments, cannot fail and touches no memory
    // of ours.
    let uid = unsafe { libc::geteuid() };
    uid
}

/// The gid of the group called `name` (`getgrnam_r`, so NSS sources such
/// as LDAP count), or `None` when there is no such group.
fn lookup_group(name: &str) -> io::Result<Option<u32>> {
    let cname = std::ffi::CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "the name contains NUL"))?;
    let mut buf = vec![0u8; 1024];
    loop {
        let mut grp = std::mem::MaybeUninit::<libc::group>::uninit();
        let mut found: *mut libc::group = std::ptr::null_mut();
        #[allow(unsafe_code)]
        // SAFETY: every pointer is valid for the call: `cname` is a NUL-
        // terminated string, `grp` has room for one `group`, `buf` for
        // `buf.len()` bytes, `found` for one pointer. getgrnam_r writes only
        // into them.
        let rc = unsafe {
            libc::getgrnam_r(
                cname.as_ptr(),
                grp.as_mut_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut found,
            )
        };
        if rc == libc::ERANGE && buf.len() < 1 << 20 {
            buf.resize(buf.len() * 2, 0);
            continue;
        }
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        if found.is_null() {
            return Ok(None);
        }
        #[allow(unsafe_code)]
        // SAFETY: on success with a result, getgrnam_r initialised `grp`
        // and pointed `found` at it; `gr_gid` is a plain integer.
        let gid = unsafe { (*found).gr_gid };
        return Ok(Some(gid));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_and_groups() {
        assert_eq!(FileAccess::default(), FileAccess::Private);
        assert_eq!(
            (FileAccess::Private.dir_mode(), FileAccess::Private.file_mode()),
            (0o700, 0o600)
        );
        let g = FileAccess::Group(7);
        assert_eq!((g.dir_mode(), g.file_mode(), g.gid()), (0o750, 0o640, Some(7)));
        assert_eq!(FileAccess::group_named("42").ok(), Some(FileAccess::Group(42)));
        assert_eq!(FileAccess::group_named("root").ok(), Some(FileAccess::Group(0)));
        let err = FileAccess::group_named("no-such-group-spindle").unwrap_err().to_string();
        assert!(err.contains("no group named"), "{err}");
    }
}
