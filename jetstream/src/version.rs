//! The server's version, read from its INFO, and the features gated on it.

use std::fmt;

/// A nats-server version, `major.minor.patch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ServerVersion {
    /// Major.
    pub major: u32,
    /// Minor.
    pub minor: u32,
    /// Patch.
    pub patch: u32,
}

impl ServerVersion {
    /// Reads `2.15.1` (a `-suffix` such as `-beta.1` is ignored).
    pub fn parse(s: &str) -> Option<Self> {
        let core = s.trim().trim_start_matches('v').split(['-', '+']).next()?;
        let mut it = core.split('.').map(|p| p.parse::<u32>().ok());
        let v = ServerVersion { major: it.next()??, minor: it.next()??, patch: it.next()?? };
        Some(v)
    }

    const fn at_least(self, major: u32, minor: u32) -> bool {
        self.major > major || (self.major == major && self.minor >= minor)
    }

    /// The features this server has, by version.
    pub fn features(self) -> Features {
        Features {
            filter_subjects: self.at_least(2, 10),
            message_ttl: self.at_least(2, 11),
            schedule_at: self.at_least(2, 12),
            schedule_every: self.at_least(2, 14),
        }
    }
}

impl fmt::Display for ServerVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// What the connected server can do (`docs/jetstream.md` has the table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Features {
    /// Consumers with several filter subjects (2.10+).
    pub filter_subjects: bool,
    /// Per-message TTL, `Nats-TTL` (2.11+).
    pub message_ttl: bool,
    /// One-shot server-side schedules, `Nats-Schedule: @at` (2.12+): delayed
    /// jobs live on the server rather than in a node.
    pub schedule_at: bool,
    /// Repeating server-side schedules, `@every` and cron (2.14+): periodic
    /// jobs on a distributed queue.
    pub schedule_every: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_gate_features() {
        let old = ServerVersion::parse("2.9.10");
        assert_eq!(old, Some(ServerVersion { major: 2, minor: 9, patch: 10 }));
        let f = old.map(ServerVersion::features);
        assert_eq!(
            f,
            Some(Features {
                filter_subjects: false,
                message_ttl: false,
                schedule_at: false,
                schedule_every: false
            })
        );
        let new = ServerVersion::parse("2.15.1").map(ServerVersion::features);
        assert!(new.is_some_and(|f| f.schedule_at && f.schedule_every && f.message_ttl));
        let mid = ServerVersion::parse("2.12.0-beta.2").map(ServerVersion::features);
        assert!(mid.is_some_and(|f| f.schedule_at && !f.schedule_every));
        assert_eq!(ServerVersion::parse("two"), None);
        assert_eq!(ServerVersion::parse("2.10"), None);
    }
}
