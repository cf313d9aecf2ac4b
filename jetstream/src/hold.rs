//! The hold log: delayed jobs a node holds until due (servers without `@at`
//! schedules, before 2.12), kept in a file so a node restarted on the same
//! directory publishes what a crashed one held.
//!
//! 1. A hold appends `Hold { msg_id, subject, due, expires, payload }` to
//!    `DIR/held.log` and syncs it before the put returns `Receipt::Held`.
//! 2. Once the server acknowledges the published job, a `Done { msg_id }`
//!    is appended (not synced: a lost one means one more publish of the same
//!    `Nats-Msg-Id`, a duplicate the server drops within its window).
//! 3. When nothing is held any more the file is cut to empty.
//! 4. [`HoldLog::open`] replays the file: every hold without its done is
//!    held again (due times kept), and the file is rewritten with only them.
//!
//! Each record: kind (1 byte), body length (u32 LE), body, CRC-32C of kind
//! and body (u32 LE). A torn or corrupt tail ends the replay (it is the
//! last hold of a crashed put, which never returned `Held`). One node per
//! directory: two nodes on one would both publish (harmless within the
//! duplicate window, doubled after it).

use crate::error::Error;
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const HOLD: u8 = 1;
const DONE: u8 = 2;

/// A held job, as logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Held {
    pub(crate) msg_id: String,
    pub(crate) subject: String,
    pub(crate) due: SystemTime,
    pub(crate) payload: Vec<u8>,
    /// The job's deadline (Unix ms), if it has one.
    pub(crate) expires_ms: Option<u64>,
}

pub(crate) struct HoldLog {
    path: PathBuf,
    inner: Mutex<(File, usize)>,
}

fn io(path: &Path, e: std::io::Error) -> Error {
    Error::HoldLog { path: path.to_path_buf(), reason: e.to_string() }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn frame(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 9);
    out.push(kind);
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(body);
    let crc = crc32c::crc32c_append(crc32c::crc32c(&[kind]), body);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

fn hold_body(h: &Held) -> Vec<u8> {
    let mut b = Vec::with_capacity(h.payload.len() + 64);
    put_str(&mut b, &h.msg_id);
    put_str(&mut b, &h.subject);
    let ms = h.due.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    b.extend_from_slice(&ms.to_le_bytes());
    // 0: no deadline.
    b.extend_from_slice(&h.expires_ms.unwrap_or(0).to_le_bytes());
    b.extend_from_slice(&h.payload);
    b
}

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4).and_then(|b| b.try_into().ok()).map(u32::from_le_bytes)
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes)
    }
    fn str(&mut self) -> Option<String> {
        let n = self.u32()? as usize;
        self.take(n).and_then(|b| String::from_utf8(b.to_vec()).ok())
    }
}

fn parse_hold(body: &[u8]) -> Option<Held> {
    let mut c = Cursor(body);
    let msg_id = c.str()?;
    let subject = c.str()?;
    let due = UNIX_EPOCH + Duration::from_millis(c.u64()?);
    let expires_ms = Some(c.u64()?).filter(|&ms| ms > 0);
    Some(Held { msg_id, subject, due, payload: c.0.to_vec(), expires_ms })
}

/// Reads every intact record; holds without their done, in order.
fn replay(bytes: &[u8]) -> Vec<Held> {
    let mut c = Cursor(bytes);
    let mut order = Vec::new();
    let mut live: HashMap<String, Held> = HashMap::new();
    while let Some(kind) = c.take(1).map(|k| k[0]) {
        let Some(len) = c.u32() else { break };
        let Some(body) = c.take(len as usize) else { break };
        let Some(crc) = c.u32() else { break };
        if crc != crc32c::crc32c_append(crc32c::crc32c(&[kind]), body) {
            break;
        }
        match kind {
            HOLD => match parse_hold(body) {
                Some(h) => {
                    order.push(h.msg_id.clone());
                    live.insert(h.msg_id.clone(), h);
                }
                None => break,
            },
            DONE => {
                if let Ok(id) = std::str::from_utf8(body) {
                    live.remove(id);
                }
            }
            _ => break,
        }
    }
    order.into_iter().filter_map(|id| live.remove(&id)).collect()
}

impl HoldLog {
    /// Opens `dir/held.log` (creating `dir`), returning the log, rewritten
    /// with only the holds still pending, and those holds. A directory it
    /// creates is 0700 and the log 0600: jobs are private to their owner.
    pub(crate) fn open(dir: &Path) -> Result<(HoldLog, Vec<Held>), Error> {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| io(dir, e))?;
        let path = dir.join("held.log");
        let mut bytes = Vec::new();
        match File::open(&path) {
            Ok(mut f) => {
                f.read_to_end(&mut bytes).map_err(|e| io(&path, e))?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&path, e)),
        }
        let pending = replay(&bytes);
        // Rewrite with only the pending holds: temp file, sync, rename.
        let tmp = dir.join("held.log.tmp");
        let mut out = Vec::new();
        for h in &pending {
            out.extend_from_slice(&frame(HOLD, &hold_body(h)));
        }
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| io(&tmp, e))?;
        f.write_all(&out).and_then(|_| f.sync_data()).map_err(|e| io(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| io(&path, e))?;
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        let file = OpenOptions::new().append(true).open(&path).map_err(|e| io(&path, e))?;
        let n = pending.len();
        Ok((HoldLog { path, inner: Mutex::new((file, n)) }, pending))
    }

    /// Logs a hold and syncs it.
    pub(crate) fn hold(&self, h: &Held) -> Result<(), Error> {
        let mut g = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let rec = frame(HOLD, &hold_body(h));
        g.0.write_all(&rec).and_then(|_| g.0.sync_data()).map_err(|e| io(&self.path, e))?;
        g.1 += 1;
        Ok(())
    }

    /// Logs that a held job was published; empties the file when nothing
    /// is held any more.
    pub(crate) fn done(&self, msg_id: &str) {
        let mut g = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        g.1 = g.1.saturating_sub(1);
        let r =
            if g.1 == 0 { g.0.set_len(0) } else { g.0.write_all(&frame(DONE, msg_id.as_bytes())) };
        if let Err(e) = r {
            tracing::warn!(path = %self.path.display(), error = %e, "hold log: recording a publish failed (it may be published again after a restart)");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(id: &str) -> Held {
        Held {
            msg_id: id.into(),
            subject: "spindle.t.q.a".into(),
            due: UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
            payload: vec![1, 2, 3],
            expires_ms: Some(1_700_000_005_000),
        }
    }

    #[test]
    fn replays_pending_holds_and_stops_at_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        {
            let (log, pending) = HoldLog::open(dir.path()).unwrap_or_else(|e| panic!("{e}"));
            assert!(pending.is_empty());
            for id in ["a", "b", "c"] {
                log.hold(&held(id)).unwrap_or_else(|e| panic!("{e}"));
            }
            log.done("b");
        }
        // A torn record at the end (a put that crashed mid-write).
        let path = dir.path().join("held.log");
        let mut f = OpenOptions::new().append(true).open(&path).unwrap_or_else(|e| panic!("{e}"));
        f.write_all(&frame(HOLD, &hold_body(&held("d")))[..10]).unwrap_or_else(|e| panic!("{e}"));
        drop(f);
        let (log, pending) = HoldLog::open(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(pending, vec![held("a"), held("c")]);
        log.done("a");
        log.done("c");
        assert_eq!(std::fs::metadata(&path).map(|m| m.len()).unwrap_or(1), 0);
    }
}
