//! Bytes written and page faults, as the kernel counts them:
//! `/proc/self/io` and `/proc/self/stat` for this process, and
//! `/sys/dev/block/MAJ:MIN/stat` for the device under the bench directory.
//!
//! `write_bytes` in `/proc/self/io` is charged when a page-cache folio turns
//! dirty, by the folio's size: a 64-byte store through a mapping that
//! dirties a 1 MiB large folio is charged 1 MiB. That is exactly the write
//! amplification the strategy study looks for. The device counter adds what
//! the filesystem itself writes (journal, metadata) but is machine-wide, so
//! other processes' writes land in it too.

use crate::BoxResult;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Cumulative counters at one instant (or the difference of two).
#[derive(Debug, Clone, Copy, Default)]
pub struct IoSnapshot {
    /// `write_bytes` of this process.
    pub write_bytes: u64,
    /// `read_bytes` of this process.
    pub read_bytes: u64,
    /// Minor page faults of this process.
    pub minor_faults: u64,
    /// Major page faults (faults that waited for a read) of this process.
    pub major_faults: u64,
    /// Sectors written to the device times 512, if the device was found.
    pub device_write_bytes: Option<u64>,
}

impl IoSnapshot {
    /// Counters accumulated between `earlier` and `self`.
    pub fn since(&self, earlier: &IoSnapshot) -> IoSnapshot {
        IoSnapshot {
            write_bytes: self.write_bytes.saturating_sub(earlier.write_bytes),
            read_bytes: self.read_bytes.saturating_sub(earlier.read_bytes),
            minor_faults: self.minor_faults.saturating_sub(earlier.minor_faults),
            major_faults: self.major_faults.saturating_sub(earlier.major_faults),
            device_write_bytes: match (self.device_write_bytes, earlier.device_write_bytes) {
                (Some(a), Some(b)) => Some(a.saturating_sub(b)),
                _ => None,
            },
        }
    }

    /// Adds a difference to an accumulator.
    pub fn add(&mut self, d: &IoSnapshot) {
        self.write_bytes += d.write_bytes;
        self.read_bytes += d.read_bytes;
        self.minor_faults += d.minor_faults;
        self.major_faults += d.major_faults;
        self.device_write_bytes = match (self.device_write_bytes, d.device_write_bytes) {
            (Some(a), Some(b)) => Some(a + b),
            (None, b) => b,
            (a, None) => a,
        };
    }
}

/// Reads the counters for a directory's device.
#[derive(Debug, Clone)]
pub struct IoCounters {
    device_stat: Option<PathBuf>,
}

impl IoCounters {
    /// Counters for the device holding `dir` (the device counter is omitted
    /// if its sysfs entry cannot be found, e.g. on overlay filesystems).
    pub fn for_dir(dir: &Path) -> BoxResult<IoCounters> {
        let dev = std::fs::metadata(dir)?.dev();
        // glibc's gnu_dev_major / gnu_dev_minor encoding.
        let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
        let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
        let stat = PathBuf::from(format!("/sys/dev/block/{major}:{minor}/stat"));
        let device_stat = stat.exists().then_some(stat);
        Ok(IoCounters { device_stat })
    }

    /// The device's sysfs stat file, if found.
    pub fn device_stat(&self) -> Option<&Path> {
        self.device_stat.as_deref()
    }

    /// Reads every counter now.
    pub fn snapshot(&self) -> BoxResult<IoSnapshot> {
        let io = std::fs::read_to_string("/proc/self/io")?;
        let field = |name| parse_field(&io, name).ok_or(format!("no {name} in /proc/self/io"));
        let (minor_faults, major_faults) = faults()?;
        let device_write_bytes = match &self.device_stat {
            Some(p) => Some(device_fields(p)?.0 * 512),
            None => None,
        };
        Ok(IoSnapshot {
            write_bytes: field("write_bytes")?,
            read_bytes: field("read_bytes")?,
            minor_faults,
            major_faults,
            device_write_bytes,
        })
    }

    /// Waits (at most `max`) until the device has no request in flight and
    /// wrote nothing for 100 ms, so earlier phases' writeback does not leak
    /// into a latency measurement. Returns the time waited; gives up quietly
    /// (other processes may keep the disk busy).
    pub fn settle(&self, max: Duration) -> BoxResult<Duration> {
        let start = Instant::now();
        let Some(p) = &self.device_stat else { return Ok(Duration::ZERO) };
        let mut last = device_fields(p)?;
        while start.elapsed() < max {
            std::thread::sleep(Duration::from_millis(100));
            let now = device_fields(p)?;
            if now.0 == last.0 && now.1 == 0 {
                break;
            }
            last = now;
        }
        Ok(start.elapsed())
    }
}

fn parse_field(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == name).then(|| v.trim().parse().ok()).flatten()
    })
}

/// (minflt, majflt) from `/proc/self/stat` (fields 10 and 12).
fn faults() -> BoxResult<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // The command name may contain spaces: count fields after its ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).ok_or("bad /proc/self/stat")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); field n is f[n - 3].
    let get = |n: usize| -> BoxResult<u64> { Ok(f.get(n - 3).ok_or("short stat")?.parse()?) };
    Ok((get(10)?, get(12)?))
}

/// (sectors written, requests in flight) from a block device stat file.
fn device_fields(path: &Path) -> BoxResult<(u64, u64)> {
    let text = std::fs::read_to_string(path)?;
    let f: Vec<&str> = text.split_whitespace().collect();
    let get = |i: usize| -> BoxResult<u64> { Ok(f.get(i).ok_or("short block stat")?.parse()?) };
    Ok((get(6)?, get(8)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_io() {
        let t = "rchar: 1\nwchar: 2\nwrite_bytes: 4096\ncancelled_write_bytes: 0\n";
        assert_eq!(parse_field(t, "write_bytes"), Some(4096));
        assert_eq!(parse_field(t, "read_bytes"), None);
    }

    #[test]
    fn reads_own_counters() {
        let io = IoCounters::for_dir(Path::new(".")).unwrap();
        let s = io.snapshot().unwrap();
        assert!(s.minor_faults > 0);
    }
}
