//! Stream, subject and consumer names for a namespace and its queues.
//!
//! Queue names may hold `.` (a subject separator) and `/` (not allowed in
//! consumer names), so a name with anything beyond `A-Za-z0-9_-` is written
//! as `~` and its bytes in hex; `~` is not a queue-name character, so two
//! queues never share a token.

use crate::error::Error;

/// Encodes a name as one subject token that is also a valid consumer name.
pub(crate) fn token(name: &str) -> String {
    if name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
        return name.to_owned();
    }
    let mut s = String::with_capacity(1 + 2 * name.len());
    s.push('~');
    for b in name.bytes() {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// Checks a namespace: it names streams, so `A-Za-z0-9_-`, 1-32 bytes.
pub(crate) fn check_namespace(ns: &str) -> Result<(), Error> {
    let ok = !ns.is_empty()
        && ns.len() <= 32
        && ns.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidName {
            what: "namespace",
            name: ns.to_owned(),
            reason: "use 1-32 bytes of A-Za-z0-9_-",
        })
    }
}

/// Checks a queue name against DESIGN.md's rules.
pub(crate) fn check_queue(q: &str) -> Result<(), Error> {
    spindle_core::validate_queue_name(q).map_err(|e| match e {
        spindle_core::NameError::Invalid { name, reason } => {
            Error::InvalidName { what: "queue", name, reason }
        }
    })
}

/// The names one namespace uses on the server.
#[derive(Debug, Clone)]
pub(crate) struct Names {
    ns: String,
}

impl Names {
    pub(crate) fn new(ns: &str) -> Self {
        Names { ns: ns.to_owned() }
    }

    /// The namespace.
    pub(crate) fn ns(&self) -> &str {
        &self.ns
    }

    /// The work-queue stream holding every queue's jobs.
    pub(crate) fn stream(&self) -> String {
        format!("SPINDLE_{}", self.ns)
    }

    /// The stream holding dead letters (limits retention: kept for reading).
    pub(crate) fn dead_stream(&self) -> String {
        format!("SPINDLE_{}_DEAD", self.ns)
    }

    /// The work stream's subjects: jobs, and pending schedules.
    pub(crate) fn stream_subjects(&self) -> Vec<String> {
        vec![format!("spindle.{}.q.*", self.ns), format!("spindle.{}.sched.>", self.ns)]
    }

    pub(crate) fn dead_subjects(&self) -> Vec<String> {
        vec![format!("spindle-dead.{}.*", self.ns)]
    }

    /// Where a queue's ready jobs are published.
    pub(crate) fn queue_subject(&self, queue: &str) -> String {
        format!("spindle.{}.q.{}", self.ns, token(queue))
    }

    /// Where a queue's jobs of priority band `band` are published: band 0
    /// is the queue's own subject (a queue of one band is a plain queue);
    /// band `b` > 0 is `<token>~band<b>` (`~` never occurs in a plain
    /// token, and only once, followed by hex, in an encoded one).
    pub(crate) fn band_subject(&self, queue: &str, band: usize) -> String {
        match band {
            0 => self.queue_subject(queue),
            b => format!("{}~band{b}", self.queue_subject(queue)),
        }
    }

    /// The durable consumer of a queue's band `band` (band 0: the queue's
    /// own consumer).
    pub(crate) fn band_consumer(&self, queue: &str, band: usize) -> String {
        match band {
            0 => self.consumer(queue),
            b => format!("{}~band{b}", self.consumer(queue)),
        }
    }

    /// Where a server-side schedule for a queue waits (one subject per
    /// schedule: the server keeps one schedule per subject).
    pub(crate) fn schedule_subject(&self, queue: &str, id: &str) -> String {
        format!("spindle.{}.sched.{}.{}", self.ns, token(queue), token(id))
    }

    /// Where a queue's buried jobs go.
    pub(crate) fn dead_subject(&self, queue: &str) -> String {
        format!("spindle-dead.{}.{}", self.ns, token(queue))
    }

    /// The durable consumer every node shares for a queue.
    pub(crate) fn consumer(&self, queue: &str) -> String {
        format!("q-{}", token(queue))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_never_collide_and_stay_single() {
        assert_eq!(token("emails"), "emails");
        assert_eq!(token("a.b"), "~612e62");
        assert_ne!(token("a.b"), token("a_b"));
        assert!(!token("x/y;z$(1)").contains(['.', '/', '*', '>', ' ']));
        let n = Names::new("t1");
        assert_eq!(n.queue_subject("a.b"), "spindle.t1.q.~612e62");
        assert!(check_namespace("ok_1-2").is_ok());
        assert!(check_namespace("no.dots").is_err());
        assert!(check_queue("-bad").is_err());
        assert_eq!(n.band_subject("a.b", 0), n.queue_subject("a.b"));
        assert_eq!(n.band_subject("e", 2), "spindle.t1.q.e~band2");
        assert_eq!(n.band_consumer("e", 1), "q-e~band1");
    }
}
