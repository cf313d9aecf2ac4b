//! Where benchmark files go: a fresh directory on a real filesystem.
//!
//! Durability numbers on tmpfs (or /dev/shm) are meaningless, because a sync
//! there writes nothing. The default is a temporary directory under
//! `./target` (or `/var/tmp`, then `/tmp`), skipping any that is tmpfs.

use crate::BoxResult;
use std::path::{Path, PathBuf};
use tempfile::TempDir;

/// A scratch directory, deleted on drop, with the filesystem it lives on.
#[derive(Debug)]
pub struct BenchDir {
    dir: TempDir,
    /// Filesystem type from `/proc/self/mountinfo` (e.g. `ext4`).
    pub fs_type: String,
    /// The mount point holding the directory.
    pub mount_point: PathBuf,
}

impl BenchDir {
    /// A new scratch directory inside `parent`, or inside the first
    /// non-tmpfs default location when `parent` is `None`.
    pub fn create(parent: Option<&Path>) -> BoxResult<BenchDir> {
        let parent = match parent {
            Some(p) => {
                std::fs::create_dir_all(p)?;
                p.to_path_buf()
            }
            None => default_parent()?,
        };
        let dir = tempfile::Builder::new().prefix("spindle-bench-").tempdir_in(&parent)?;
        let (mount_point, fs_type) = filesystem_of(dir.path())?;
        Ok(BenchDir { dir, fs_type, mount_point })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A fresh, empty subdirectory for one measurement.
    pub fn sub(&self, name: &str) -> BoxResult<PathBuf> {
        let p = self.dir.path().join(name);
        if p.exists() {
            std::fs::remove_dir_all(&p)?;
        }
        std::fs::create_dir_all(&p)?;
        Ok(p)
    }

    /// True when syncs here do not reach a disk.
    pub fn is_memory_fs(&self) -> bool {
        matches!(self.fs_type.as_str(), "tmpfs" | "ramfs" | "devtmpfs")
    }
}

fn default_parent() -> BoxResult<PathBuf> {
    let cwd = std::env::current_dir()?;
    let candidates = [cwd.join("target"), PathBuf::from("/var/tmp"), PathBuf::from("/tmp")];
    for c in &candidates {
        if c.is_dir() {
            let (_, fs) = filesystem_of(c)?;
            if fs != "tmpfs" && fs != "ramfs" {
                return Ok(c.clone());
            }
        }
    }
    Err("no non-tmpfs directory among ./target, /var/tmp, /tmp: pass --dir".into())
}

/// The mount point and filesystem type holding `path` (longest matching
/// mount point in `/proc/self/mountinfo`).
pub fn filesystem_of(path: &Path) -> BoxResult<(PathBuf, String)> {
    let path = path.canonicalize()?;
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    let mut best: Option<(PathBuf, String)> = None;
    for line in info.lines() {
        // id parent maj:min root mount-point options [optional...] - fstype source super
        let mut halves = line.splitn(2, " - ");
        let (Some(left), Some(right)) = (halves.next(), halves.next()) else { continue };
        let Some(mount) = left.split(' ').nth(4) else { continue };
        let Some(fs) = right.split(' ').next() else { continue };
        let mount = PathBuf::from(unescape_mountinfo(mount));
        if path.starts_with(&mount)
            && best.as_ref().is_none_or(|(b, _)| mount.as_os_str().len() >= b.as_os_str().len())
        {
            best = Some((mount, fs.to_string()));
        }
    }
    best.ok_or_else(|| format!("no mount found for {}", path.display()).into())
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| c.is_ascii_digit()) {
            let d = |k: usize| u32::from(b[i + k] - b'0');
            out.push((d(1) * 64 + d(2) * 8 + d(3)) as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_has_a_filesystem() {
        let (mount, fs) = filesystem_of(Path::new("/")).unwrap();
        assert_eq!(mount, PathBuf::from("/"));
        assert!(!fs.is_empty());
    }

    #[test]
    fn unescapes_octal() {
        assert_eq!(unescape_mountinfo(r"/a\040b"), "/a b");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
    }
}
