//! The command line parser: one beanstalkd command line (without its
//! `\r\n`) in, one [`Cmd`] out.
//!
//! It follows beanstalkd 1.12's `prot.c` rule by rule, because clients and
//! their test suites depend on the exact error each malformed line gets:
//!
//! 1. The command is found by *prefix*, in beanstalkd's order
//!    (`which_cmd`): `"put "`, `"peek "`, `"peek-ready"`, ... so
//!    `"reservefoo"` is a `reserve` with trailing garbage (`BAD_FORMAT`), and
//!    `"putx"` is unknown (`UNKNOWN_COMMAND`).
//! 2. Commands without arguments must be exactly their name
//!    (`BAD_FORMAT` otherwise), except `quit`, which beanstalkd accepts with
//!    anything after it.
//! 3. Numbers (`read_u32`/`read_u64`): spaces are skipped, then a decimal
//!    digit must follow, and the value must fit. A number that ends the
//!    command must end the line.
//! 4. Tube names: 1–200 bytes of `A-Za-z0-9-+/;.$_()`, not starting with `-`.
//! 5. `kick` reads its bound with C's `strtoul`, which skips whitespace,
//!    accepts a sign and ignores trailing garbage; we copy that.
//!
//! The parser is pure and allocation-free except for tube names and
//! extension keys; `fuzz/` runs it on arbitrary bytes.

/// The longest command line, `\r\n` included (beanstalkd's `LINE_BUF_SIZE`).
pub const LINE_MAX: usize = 224;

/// The longest tube name (beanstalkd's `MAX_TUBE_NAME_LEN - 1`).
pub const TUBE_MAX: usize = 200;

/// Characters allowed in tube names (beanstalkd's `NAME_CHARS`).
const NAME_CHARS: &[u8] =
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-+/;.$_()";

/// The most jobs one `put-batch` may carry.
pub const BATCH_PUT_MAX: u32 = 100_000;
/// The most jobs one `reserve-batch` may return.
pub const BATCH_RESERVE_MAX: u32 = 1000;

/// A parsed command. Fields are the wire arguments, in order; durations
/// are whole seconds, as on the wire.
#[allow(missing_docs)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cmd {
    /// `put <pri> <delay> <ttr> <bytes>`; the body follows. `garbage`: the
    /// line had more after the size, which beanstalkd answers `BAD_FORMAT`
    /// only after its size check (so an oversized body is still skipped
    /// with `JOB_TOO_BIG`).
    Put { pri: u32, delay: u32, ttr: u32, bytes: u32, garbage: bool },
    /// `use <tube>`
    Use(String),
    /// `reserve`
    Reserve,
    /// `reserve-with-timeout <seconds>`, read with C's `strtol` as
    /// beanstalkd does: a negative value waits forever, garbage reads as 0.
    ReserveTimeout(i64),
    /// `reserve-job <id>`
    ReserveJob(u64),
    /// `delete <id>`
    Delete(u64),
    /// `release <id> <pri> <delay>`
    Release { id: u64, pri: u32, delay: u32 },
    /// `bury <id> <pri>`
    Bury { id: u64, pri: u32 },
    /// `touch <id>`
    Touch(u64),
    /// `watch <tube>`
    Watch(String),
    /// `ignore <tube>`
    Ignore(String),
    /// `peek <id>`
    Peek(u64),
    /// `peek-ready`
    PeekReady,
    /// `peek-delayed`
    PeekDelayed,
    /// `peek-buried`
    PeekBuried,
    /// `kick <bound>`
    Kick(u64),
    /// `kick-job <id>`
    KickJob(u64),
    /// `stats-job <id>`
    StatsJob(u64),
    /// `stats-tube <tube>`
    StatsTube(String),
    /// `stats`
    Stats,
    /// `list-tubes`
    ListTubes,
    /// `list-tube-used`
    ListTubeUsed,
    /// `list-tubes-watched`
    ListTubesWatched,
    /// `pause-tube <tube> <seconds>`
    PauseTube { tube: String, delay: u32 },
    /// `quit`
    Quit,
    // ---- extensions (docs/protocol.md) ----
    /// `put-batch <pri> <delay> <ttr> <count>`; `count` frames follow.
    PutBatch { pri: u32, delay: u32, ttr: u32, count: u32 },
    /// `reserve-batch <max> <timeout>`
    ReserveBatch { max: u32, timeout: u32 },
    /// `put-unique <key> <pri> <delay> <ttr> <bytes>`; the body follows.
    PutUnique { key: String, pri: u32, delay: u32, ttr: u32, bytes: u32 },
    /// `fail <id> <bytes>`; the error text follows.
    Fail { id: u64, bytes: u32 },
    /// `tube-config <tube> <max-attempts> <backoff-ms> <backoff-max-ms>`
    TubeConfig { tube: String, max_attempts: u32, backoff_ms: u64, backoff_max_ms: u64 },
    /// `clear-tube <tube> <states>`
    ClearTube { tube: String, ready: bool, delayed: bool, buried: bool },
    /// `stats-tube-ext <tube>`
    StatsTubeExt(String),
    /// `stats-job-ext <id>`
    StatsJobExt(u64),
    /// `metrics`
    Metrics,
    /// `lease <id>`: the fencing token of a job this connection reserved.
    Lease(u64),
    /// `delete-lease`, `release-lease`, `bury-lease`, `touch-lease`,
    /// `fail-lease`: `inner` (a `Delete`, `Release`, `Bury`, `Touch` or
    /// `Fail`) on behalf of whichever connection holds the job, if its
    /// reservation's token is `token`.
    Fenced { token: u64, inner: Box<Cmd> },
    /// `put-deadline <deadline> <pri> <delay> <ttr> <bytes>`; the body
    /// follows. `deadline` is `@<ms since the epoch>` or `+<ms from now>`.
    PutDeadline { deadline: Deadline, pri: u32, delay: u32, ttr: u32, bytes: u32 },
    /// `cancel <id>`
    Cancel(u64),
    /// `tube-limit <tube> <concurrency> <rate> <on-expiry>`: `rate` is `-`
    /// or `<starts>/<period-ms>[/<burst>]`, `on-expiry` `delete` or `bury`.
    TubeLimit { tube: String, concurrency: u32, rate: Option<RateArg>, bury: bool },
    /// `schedule-add <tube> <name> <pri> <ttr> <options> <bytes> <rule>`;
    /// the payload follows. `options` is `-` or a comma list of
    /// `skip-missed`, `no-overlap`; `rule` is `every <ms>` or
    /// `cron <time-zone> <expression>` (the rest of the line).
    ScheduleAdd(Box<ScheduleArgs>),
    /// `schedule-list`
    ScheduleList,
    /// `schedule-pause <tube> <name>` (`paused`) or `schedule-resume`.
    SchedulePause { tube: String, name: String, paused: bool },
    /// `schedule-rm <tube> <name>`
    ScheduleRm { tube: String, name: String },
}

/// A deadline on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deadline {
    /// `@<ms>`: milliseconds since the Unix epoch.
    At(u64),
    /// `+<ms>`: milliseconds after the put.
    In(u64),
}

/// A rate on the wire: starts per period, with a burst.
#[allow(missing_docs)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateArg {
    pub starts: u32,
    pub period_ms: u64,
    pub burst: u32,
}

/// The arguments of `schedule-add`.
#[allow(missing_docs)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleArgs {
    pub tube: String,
    pub name: String,
    pub pri: u32,
    pub ttr: u32,
    pub skip_missed: bool,
    pub no_overlap: bool,
    pub bytes: u32,
    pub rule: RuleArg,
}

/// A schedule's rule on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleArg {
    /// `every <ms>`
    Every(u64),
    /// `cron <time-zone> <expression>`
    Cron {
        /// The IANA time zone.
        tz: String,
        /// The expression.
        expr: String,
    },
}

impl Cmd {
    /// Whether this is an extension of schedules, limits, expiry or
    /// cancellation (`store_paid.rs`).
    pub fn is_paid(&self) -> bool {
        matches!(
            self,
            Cmd::PutDeadline { .. }
                | Cmd::Cancel(_)
                | Cmd::TubeLimit { .. }
                | Cmd::ScheduleAdd(_)
                | Cmd::ScheduleList
                | Cmd::SchedulePause { .. }
                | Cmd::ScheduleRm { .. }
        )
    }

    /// The size of the body that follows the line, for extensions that
    /// carry one (`put` is handled on its own: beanstalkd's rules).
    pub fn ext_body(&self) -> Option<u32> {
        match self {
            Cmd::PutUnique { bytes, .. }
            | Cmd::Fail { bytes, .. }
            | Cmd::PutDeadline { bytes, .. } => Some(*bytes),
            Cmd::ScheduleAdd(a) => Some(a.bytes),
            Cmd::Fenced { inner, .. } => inner.ext_body(),
            _ => None,
        }
    }
}

/// The fenced commands' names and which command they wrap.
const FENCED: &[(&[u8], u8)] = &[
    (b"delete-lease ", b'd'),
    (b"release-lease ", b'r'),
    (b"bury-lease ", b'b'),
    (b"touch-lease ", b't'),
    (b"fail-lease ", b'f'),
];

/// Why a line is not a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    /// `BAD_FORMAT`
    BadFormat,
    /// `UNKNOWN_COMMAND`
    Unknown,
}

type R = Result<Cmd, ParseError>;

/// Parses one command line (the bytes before `\r\n`).
pub fn parse(line: &[u8]) -> R {
    use ParseError::BadFormat;
    // beanstalkd NUL-terminates the line and rejects it if that shortens it
    // ("check for possible maliciousness").
    if line.contains(&0) {
        return Err(BadFormat);
    }
    // The commands of the job cycle first: no other command's name is a
    // prefix of a line that starts with one of these, so which_cmd()'s
    // order gives them the same meaning here, without the ~40 names
    // tried before theirs.
    if let Some(rest) = line.strip_prefix(b"put ") {
        let (pri, r) = num_u32(rest)?;
        let (delay, r) = num_u32(r)?;
        let (ttr, r) = num_u32(r)?;
        let (bytes, r) = num_u32(r)?;
        return Ok(Cmd::Put { pri, delay, ttr, bytes, garbage: !r.is_empty() });
    }
    if let Some(rest) = line.strip_prefix(b"delete ") {
        return Ok(Cmd::Delete(last_u64(rest)?));
    }
    if let Some(rest) = line.strip_prefix(b"reserve-with-timeout ") {
        // The `long` is stored in an `int`: it wraps.
        return Ok(Cmd::ReserveTimeout(i64::from(strtol(rest)? as i32)));
    }
    // Extensions first: their names are not prefixes of beanstalkd's
    // commands in a way that changes what old commands parse to, except
    // `put-batch`/`put-unique` (start with "put" but not "put ") and
    // `reserve-batch` (starts with "reserve"), which beanstalkd would answer
    // BAD_FORMAT (reserve + garbage) or UNKNOWN_COMMAND (putx); old clients
    // never send them.
    if let Some(rest) = line.strip_prefix(b"put-batch ") {
        let (pri, r) = num_u32(rest)?;
        let (delay, r) = num_u32(r)?;
        let (ttr, r) = num_u32(r)?;
        let count = last_u32(r)?;
        if count == 0 || count > BATCH_PUT_MAX {
            return Err(BadFormat);
        }
        return Ok(Cmd::PutBatch { pri, delay, ttr, count });
    }
    if let Some(rest) = line.strip_prefix(b"put-unique ") {
        let (key, r) = word(rest)?;
        if key.is_empty() || key.len() > TUBE_MAX || !key.iter().all(|b| b.is_ascii_graphic()) {
            return Err(BadFormat);
        }
        let (pri, r) = num_u32(r)?;
        let (delay, r) = num_u32(r)?;
        let (ttr, r) = num_u32(r)?;
        let bytes = last_u32(r)?;
        let key = String::from_utf8_lossy(key).into_owned();
        return Ok(Cmd::PutUnique { key, pri, delay, ttr, bytes });
    }
    if let Some(rest) = line.strip_prefix(b"reserve-batch ") {
        let (max, r) = num_u32(rest)?;
        let timeout = last_u32(r)?;
        if max == 0 || max > BATCH_RESERVE_MAX {
            return Err(BadFormat);
        }
        return Ok(Cmd::ReserveBatch { max, timeout });
    }
    if let Some(rest) = line.strip_prefix(b"fail ") {
        let (id, r) = num_u64(rest)?;
        let bytes = last_u32(r)?;
        return Ok(Cmd::Fail { id, bytes });
    }
    if let Some(rest) = line.strip_prefix(b"tube-config ") {
        let (tube, r) = word(rest)?;
        let tube = tube_name(tube)?;
        let (max_attempts, r) = num_u32(r)?;
        let (backoff_ms, r) = num_u64(r)?;
        let backoff_max_ms = last_u64(r)?;
        if max_attempts == 0 {
            return Err(BadFormat);
        }
        return Ok(Cmd::TubeConfig { tube, max_attempts, backoff_ms, backoff_max_ms });
    }
    if let Some(rest) = line.strip_prefix(b"clear-tube ") {
        let (tube, r) = word(rest)?;
        let tube = tube_name(tube)?;
        let (states, r) = word(r)?;
        if !r.is_empty() || states.is_empty() {
            return Err(BadFormat);
        }
        let (mut ready, mut delayed, mut buried) = (false, false, false);
        for s in states.split(|&b| b == b',') {
            match s {
                b"ready" => ready = true,
                b"delayed" => delayed = true,
                b"buried" => buried = true,
                b"all" => (ready, delayed, buried) = (true, true, true),
                _ => return Err(BadFormat),
            }
        }
        return Ok(Cmd::ClearTube { tube, ready, delayed, buried });
    }
    if let Some(r) = parse_paid(line) {
        return r;
    }
    if let Some(rest) = line.strip_prefix(b"stats-tube-ext ") {
        return Ok(Cmd::StatsTubeExt(tube_name(rest)?));
    }
    if let Some(rest) = line.strip_prefix(b"stats-job-ext ") {
        return Ok(Cmd::StatsJobExt(last_u64(rest)?));
    }
    if line == b"metrics" {
        return Ok(Cmd::Metrics);
    }
    if let Some(rest) = line.strip_prefix(b"lease ") {
        return Ok(Cmd::Lease(last_u64(rest)?));
    }
    for (name, op) in FENCED {
        if let Some(rest) = line.strip_prefix(*name) {
            let (id, r) = num_u64(rest)?;
            let (token, inner) = match op {
                b'd' => (last_u64(r)?, Cmd::Delete(id)),
                b't' => (last_u64(r)?, Cmd::Touch(id)),
                b'r' => {
                    let (token, r) = num_u64(r)?;
                    let (pri, r) = num_u32(r)?;
                    (token, Cmd::Release { id, pri, delay: last_u32(r)? })
                }
                b'b' => {
                    let (token, r) = num_u64(r)?;
                    (token, Cmd::Bury { id, pri: last_u32(r)? })
                }
                _ => {
                    let (token, r) = num_u64(r)?;
                    (token, Cmd::Fail { id, bytes: last_u32(r)? })
                }
            };
            return Ok(Cmd::Fenced { token, inner: Box::new(inner) });
        }
    }

    // beanstalkd 1.12's which_cmd(), in its order (`put `, `delete ` and
    // `reserve-with-timeout ` are taken first, above).
    if let Some(rest) = line.strip_prefix(b"peek ") {
        return Ok(Cmd::Peek(last_u64(rest)?));
    }
    if line.starts_with(b"peek-ready") {
        return exact(line, b"peek-ready", Cmd::PeekReady);
    }
    if line.starts_with(b"peek-delayed") {
        return exact(line, b"peek-delayed", Cmd::PeekDelayed);
    }
    if line.starts_with(b"peek-buried") {
        return exact(line, b"peek-buried", Cmd::PeekBuried);
    }
    if let Some(rest) = line.strip_prefix(b"reserve-job ") {
        return Ok(Cmd::ReserveJob(last_u64(rest)?));
    }
    if line.starts_with(b"reserve") {
        return exact(line, b"reserve", Cmd::Reserve);
    }
    if let Some(rest) = line.strip_prefix(b"release ") {
        let (id, r) = num_u64(rest)?;
        let (pri, r) = num_u32(r)?;
        let delay = last_u32(r)?;
        return Ok(Cmd::Release { id, pri, delay });
    }
    if let Some(rest) = line.strip_prefix(b"bury ") {
        let (id, r) = num_u64(rest)?;
        let pri = last_u32(r)?;
        return Ok(Cmd::Bury { id, pri });
    }
    if let Some(rest) = line.strip_prefix(b"kick ") {
        // beanstalkd passes the bound on as a C `uint`: it wraps.
        return Ok(Cmd::Kick(u64::from(strtoul(rest)? as u32)));
    }
    if let Some(rest) = line.strip_prefix(b"kick-job ") {
        return Ok(Cmd::KickJob(last_u64(rest)?));
    }
    if let Some(rest) = line.strip_prefix(b"touch ") {
        return Ok(Cmd::Touch(last_u64(rest)?));
    }
    if let Some(rest) = line.strip_prefix(b"stats-job ") {
        return Ok(Cmd::StatsJob(last_u64(rest)?));
    }
    if let Some(rest) = line.strip_prefix(b"stats-tube ") {
        return Ok(Cmd::StatsTube(tube_name(rest)?));
    }
    if line.starts_with(b"stats") {
        return exact(line, b"stats", Cmd::Stats);
    }
    if let Some(rest) = line.strip_prefix(b"use ") {
        return Ok(Cmd::Use(tube_name(rest)?));
    }
    if let Some(rest) = line.strip_prefix(b"watch ") {
        return Ok(Cmd::Watch(tube_name(rest)?));
    }
    if let Some(rest) = line.strip_prefix(b"ignore ") {
        return Ok(Cmd::Ignore(tube_name(rest)?));
    }
    if line.starts_with(b"list-tubes-watched") {
        return exact(line, b"list-tubes-watched", Cmd::ListTubesWatched);
    }
    if line.starts_with(b"list-tube-used") {
        return exact(line, b"list-tube-used", Cmd::ListTubeUsed);
    }
    if line.starts_with(b"list-tubes") {
        return exact(line, b"list-tubes", Cmd::ListTubes);
    }
    if line.starts_with(b"quit") {
        return Ok(Cmd::Quit);
    }
    if let Some(rest) = line.strip_prefix(b"pause-tube") {
        // read_tube_name: skip spaces, take the longest run of name
        // characters (at least one); then a duration ending the line.
        let rest = skip_spaces(rest);
        let len = rest.iter().take_while(|b| NAME_CHARS.contains(b)).count();
        if len == 0 {
            return Err(BadFormat);
        }
        let delay = last_u32(&rest[len..])?;
        // The store counts the command, then checks the name with
        // name_is_ok (no leading '-', at most 200 bytes).
        let tube = String::from_utf8_lossy(&rest[..len]).into_owned();
        return Ok(Cmd::PauseTube { tube, delay });
    }
    Err(ParseError::Unknown)
}

fn exact(line: &[u8], name: &[u8], cmd: Cmd) -> R {
    if line == name {
        Ok(cmd)
    } else {
        Err(ParseError::BadFormat)
    }
}

/// The extensions of schedules, limits, expiry and cancellation; `None`
/// if the line is none of them.
fn parse_paid(line: &[u8]) -> Option<R> {
    use ParseError::BadFormat;
    let two_names = |rest: &[u8]| -> Result<(String, String), ParseError> {
        let (tube, r) = word(rest)?;
        let (name, r) = word(r)?;
        if !r.is_empty() {
            return Err(BadFormat);
        }
        Ok((tube_name(tube)?, tube_name(name)?))
    };
    if let Some(rest) = line.strip_prefix(b"put-deadline ") {
        return Some((|| {
            let (d, r) = word(rest)?;
            let deadline = match d {
                [b'@', ms @ ..] => Deadline::At(last_u64(ms)?),
                [b'+', ms @ ..] => Deadline::In(last_u64(ms)?),
                _ => return Err(BadFormat),
            };
            let (pri, r) = num_u32(r)?;
            let (delay, r) = num_u32(r)?;
            let (ttr, r) = num_u32(r)?;
            let bytes = last_u32(r)?;
            Ok(Cmd::PutDeadline { deadline, pri, delay, ttr, bytes })
        })());
    }
    if let Some(rest) = line.strip_prefix(b"cancel ") {
        return Some(last_u64(rest).map(Cmd::Cancel));
    }
    if let Some(rest) = line.strip_prefix(b"tube-limit ") {
        return Some((|| {
            let (tube, r) = word(rest)?;
            let tube = tube_name(tube)?;
            let (concurrency, r) = num_u32(r)?;
            let (rate, r) = word(r)?;
            let rate = if rate == b"-" {
                None
            } else {
                let mut parts = rate.split(|&b| b == b'/');
                let starts = last_u32(parts.next().ok_or(BadFormat)?)?;
                let period_ms = last_u64(parts.next().ok_or(BadFormat)?)?;
                let burst = match parts.next() {
                    Some(b) => last_u32(b)?,
                    None => spindle_core::Rate::default_burst(starts),
                };
                if parts.next().is_some() {
                    return Err(BadFormat);
                }
                Some(RateArg { starts, period_ms, burst })
            };
            let (exp, r) = word(r)?;
            if !r.is_empty() {
                return Err(BadFormat);
            }
            let bury = match exp {
                b"delete" => false,
                b"bury" => true,
                _ => return Err(BadFormat),
            };
            Ok(Cmd::TubeLimit { tube, concurrency, rate, bury })
        })());
    }
    if let Some(rest) = line.strip_prefix(b"schedule-add ") {
        return Some((|| {
            let (tube, r) = word(rest)?;
            let (name, r) = word(r)?;
            let (pri, r) = num_u32(r)?;
            let (ttr, r) = num_u32(r)?;
            let (opts, r) = word(r)?;
            let (mut skip_missed, mut no_overlap) = (false, false);
            if opts != b"-" {
                for o in opts.split(|&b| b == b',') {
                    match o {
                        b"skip-missed" => skip_missed = true,
                        b"no-overlap" => no_overlap = true,
                        _ => return Err(BadFormat),
                    }
                }
            }
            let (bytes, r) = num_u32(r)?;
            let (kind, r) = word(r)?;
            let rule = match kind {
                b"every" => RuleArg::Every(last_u64(skip_spaces(r))?),
                b"cron" => {
                    let (tz, r) = word(r)?;
                    let expr = skip_spaces(r);
                    if expr.is_empty() || !expr.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
                        return Err(BadFormat);
                    }
                    RuleArg::Cron {
                        tz: String::from_utf8_lossy(tz).into_owned(),
                        expr: String::from_utf8_lossy(expr).into_owned(),
                    }
                }
                _ => return Err(BadFormat),
            };
            Ok(Cmd::ScheduleAdd(Box::new(ScheduleArgs {
                tube: tube_name(tube)?,
                name: tube_name(name)?,
                pri,
                ttr,
                skip_missed,
                no_overlap,
                bytes,
                rule,
            })))
        })());
    }
    if line == b"schedule-list" {
        return Some(Ok(Cmd::ScheduleList));
    }
    for (prefix, paused) in [(&b"schedule-pause "[..], true), (&b"schedule-resume "[..], false)] {
        if let Some(rest) = line.strip_prefix(prefix) {
            return Some(two_names(rest).map(|(tube, name)| Cmd::SchedulePause {
                tube,
                name,
                paused,
            }));
        }
    }
    if let Some(rest) = line.strip_prefix(b"schedule-rm ") {
        return Some(two_names(rest).map(|(tube, name)| Cmd::ScheduleRm { tube, name }));
    }
    None
}

fn skip_spaces(mut b: &[u8]) -> &[u8] {
    while let [b' ', rest @ ..] = b {
        b = rest;
    }
    b
}

/// A space-delimited word after optional spaces.
fn word(b: &[u8]) -> Result<(&[u8], &[u8]), ParseError> {
    let b = skip_spaces(b);
    let len = b.iter().position(|&c| c == b' ').unwrap_or(b.len());
    if len == 0 {
        return Err(ParseError::BadFormat);
    }
    Ok((&b[..len], &b[len..]))
}

/// `read_u64` with an end pointer: spaces, then digits that fit.
fn num_u64(b: &[u8]) -> Result<(u64, &[u8]), ParseError> {
    let b = skip_spaces(b);
    let digits = b.iter().take_while(|c| c.is_ascii_digit()).count();
    if digits == 0 {
        return Err(ParseError::BadFormat);
    }
    let mut v: u64 = 0;
    for &d in &b[..digits] {
        v = v
            .checked_mul(10)
            .and_then(|v| v.checked_add(u64::from(d - b'0')))
            .ok_or(ParseError::BadFormat)?;
    }
    Ok((v, &b[digits..]))
}

fn num_u32(b: &[u8]) -> Result<(u32, &[u8]), ParseError> {
    let (v, r) = num_u64(b)?;
    let v = u32::try_from(v).map_err(|_| ParseError::BadFormat)?;
    Ok((v, r))
}

/// A number that must end the line (`read_u64(..., NULL)`).
fn last_u64(b: &[u8]) -> Result<u64, ParseError> {
    let (v, r) = num_u64(b)?;
    if r.is_empty() {
        Ok(v)
    } else {
        Err(ParseError::BadFormat)
    }
}

fn last_u32(b: &[u8]) -> Result<u32, ParseError> {
    let v = last_u64(b)?;
    u32::try_from(v).map_err(|_| ParseError::BadFormat)
}

/// C's `strtoul(s, &end, 10)` as `kick` uses it: leading whitespace, an
/// optional sign (a minus negates modulo 2^64), digits (saturating at
/// `ULONG_MAX` with `ERANGE`, which beanstalkd answers `BAD_FORMAT`), and
/// anything after is ignored. No digits at all is `BAD_FORMAT`.
fn strtoul(b: &[u8]) -> Result<u64, ParseError> {
    let (neg, digits) = c_sign(b);
    let n = digits.iter().take_while(|c| c.is_ascii_digit()).count();
    if n == 0 {
        return Err(ParseError::BadFormat);
    }
    let mut v: u64 = 0;
    for &d in &digits[..n] {
        v = v
            .checked_mul(10)
            .and_then(|v| v.checked_add(u64::from(d - b'0')))
            .ok_or(ParseError::BadFormat)?;
    }
    Ok(if neg { v.wrapping_neg() } else { v })
}

/// What C's `strto*` skip before the digits: whitespace (`isspace`), then
/// an optional sign. Returns whether it was `-`, and the rest.
fn c_sign(mut b: &[u8]) -> (bool, &[u8]) {
    while let [b' ' | b'\t' | b'\n' | b'\x0b' | b'\x0c' | b'\r', rest @ ..] = b {
        b = rest;
    }
    match b {
        [b'-', rest @ ..] => (true, rest),
        [b'+', rest @ ..] => (false, rest),
        _ => (false, b),
    }
}

/// C's `strtol(s, &end, 10)` as `reserve-with-timeout` uses it: leading
/// whitespace, an optional sign, digits; no digits reads as 0; only an
/// out-of-range value (`ERANGE`) is `BAD_FORMAT`; the rest of the line is
/// ignored.
fn strtol(b: &[u8]) -> Result<i64, ParseError> {
    let (neg, digits) = c_sign(b);
    let mut v: i64 = 0;
    for &d in digits.iter().take_while(|c| c.is_ascii_digit()) {
        let d = i64::from(d - b'0');
        v = v
            .checked_mul(10)
            .and_then(|v| if neg { v.checked_sub(d) } else { v.checked_add(d) })
            .ok_or(ParseError::BadFormat)?;
    }
    Ok(v)
}

/// beanstalkd's `name_is_ok`.
pub fn tube_name(b: &[u8]) -> Result<String, ParseError> {
    if valid_tube(b) {
        Ok(String::from_utf8_lossy(b).into_owned())
    } else {
        Err(ParseError::BadFormat)
    }
}

/// Whether `b` is a valid tube name.
pub fn valid_tube(b: &[u8]) -> bool {
    !b.is_empty() && b.len() <= TUBE_MAX && b[0] != b'-' && b.iter().all(|c| NAME_CHARS.contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_and_its_numbers() {
        let put = |garbage| Ok(Cmd::Put { pri: 1, delay: 2, ttr: 3, bytes: 4, garbage });
        assert_eq!(parse(b"put 1 2 3 4"), put(false));
        assert_eq!(parse(b"put  1  2 3 4"), put(false));
        assert_eq!(parse(b"put 1 2 3 4 x"), put(true));
        assert_eq!(parse(b"put 1 2 3"), Err(ParseError::BadFormat));
        assert_eq!(parse(b"put -1 2 3 4"), Err(ParseError::BadFormat));
        assert_eq!(parse(b"put 4294967296 0 1 1"), Err(ParseError::BadFormat));
        assert_eq!(parse(b"put 4294967295 0 1 1").map(|_| ()), Ok(()));
        assert_eq!(parse(b"putx"), Err(ParseError::Unknown));
    }

    #[test]
    fn argless_commands_are_exact_except_quit() {
        assert_eq!(parse(b"reserve"), Ok(Cmd::Reserve));
        assert_eq!(parse(b"reserve "), Err(ParseError::BadFormat));
        assert_eq!(parse(b"reservex"), Err(ParseError::BadFormat));
        assert_eq!(parse(b"stats"), Ok(Cmd::Stats));
        assert_eq!(parse(b"statsx"), Err(ParseError::BadFormat));
        assert_eq!(parse(b"quit now"), Ok(Cmd::Quit));
        assert_eq!(parse(b"list-tubes-watched"), Ok(Cmd::ListTubesWatched));
        assert_eq!(parse(b"frobnicate"), Err(ParseError::Unknown));
    }

    #[test]
    fn tube_names_follow_beanstalkd() {
        assert_eq!(parse(b"use a-b"), Ok(Cmd::Use("a-b".into())));
        assert_eq!(parse(b"use -a"), Err(ParseError::BadFormat));
        assert_eq!(parse(b"use a b"), Err(ParseError::BadFormat));
        let long = [b'a'; 201];
        let mut line = b"watch ".to_vec();
        line.extend_from_slice(&long[..200]);
        assert!(parse(&line).is_ok());
        line.push(b'a');
        assert_eq!(parse(&line), Err(ParseError::BadFormat));
        assert_eq!(
            parse(b"pause-tube foo 10"),
            Ok(Cmd::PauseTube { tube: "foo".into(), delay: 10 })
        );
        assert_eq!(
            parse(b"pause-tubefoo 10"),
            Ok(Cmd::PauseTube { tube: "foo".into(), delay: 10 })
        );
    }

    #[test]
    fn kick_is_strtoul() {
        assert_eq!(parse(b"kick 5"), Ok(Cmd::Kick(5)));
        assert_eq!(parse(b"kick 5x"), Ok(Cmd::Kick(5)));
        assert_eq!(parse(b"kick -1"), Ok(Cmd::Kick(u64::from(u32::MAX))));
        assert_eq!(parse(b"kick 4294967297"), Ok(Cmd::Kick(1)));
        assert_eq!(parse(b"stats\0"), Err(ParseError::BadFormat));
        assert_eq!(parse(b"pause-tube -x 1"), Ok(Cmd::PauseTube { tube: "-x".into(), delay: 1 }));
        assert_eq!(parse(b"kick x"), Err(ParseError::BadFormat));
        assert_eq!(parse(b"reserve-with-timeout -1"), Ok(Cmd::ReserveTimeout(-1)));
        assert_eq!(parse(b"reserve-with-timeout 4294967296"), Ok(Cmd::ReserveTimeout(0)));
        assert_eq!(parse(b"reserve-with-timeout abc"), Ok(Cmd::ReserveTimeout(0)));
        assert_eq!(parse(b"reserve-with-timeout 99999999999999999999"), Err(ParseError::BadFormat));
    }

    #[test]
    fn fenced_commands() {
        let f = |token, inner| Ok(Cmd::Fenced { token, inner: Box::new(inner) });
        assert_eq!(parse(b"lease 7"), Ok(Cmd::Lease(7)));
        assert_eq!(parse(b"delete-lease 1 2"), f(2, Cmd::Delete(1)));
        assert_eq!(parse(b"touch-lease 1 2"), f(2, Cmd::Touch(1)));
        assert_eq!(parse(b"release-lease 1 2 3 4"), f(2, Cmd::Release { id: 1, pri: 3, delay: 4 }));
        assert_eq!(parse(b"bury-lease 1 2 3"), f(2, Cmd::Bury { id: 1, pri: 3 }));
        let fail = parse(b"fail-lease 1 2 5");
        assert_eq!(fail, f(2, Cmd::Fail { id: 1, bytes: 5 }));
        assert_eq!(fail.map(|c| c.ext_body()), Ok(Some(5)));
        for bad in ["lease x", "touch-lease 1", "delete-lease 1 2 3", "release-lease 1 2 3"] {
            assert_eq!(parse(bad.as_bytes()), Err(ParseError::BadFormat), "{bad}");
        }
    }

    #[test]
    fn paid_tier_extensions() {
        assert_eq!(
            parse(b"put-deadline @1700000000000 1 0 60 3"),
            Ok(Cmd::PutDeadline {
                deadline: Deadline::At(1_700_000_000_000),
                pri: 1,
                delay: 0,
                ttr: 60,
                bytes: 3
            })
        );
        assert_eq!(parse(b"put-deadline +500 1 0 60 3").map(|c| c.ext_body()), Ok(Some(3)));
        assert_eq!(parse(b"put-deadline 500 1 0 60 3"), Err(ParseError::BadFormat));
        assert_eq!(parse(b"cancel 42"), Ok(Cmd::Cancel(42)));
        assert_eq!(
            parse(b"tube-limit emails 4 100/1000/10 bury"),
            Ok(Cmd::TubeLimit {
                tube: "emails".into(),
                concurrency: 4,
                rate: Some(RateArg { starts: 100, period_ms: 1000, burst: 10 }),
                bury: true
            })
        );
        assert_eq!(
            parse(b"tube-limit emails 0 - delete"),
            Ok(Cmd::TubeLimit { tube: "emails".into(), concurrency: 0, rate: None, bury: false })
        );
        assert_eq!(parse(b"tube-limit emails 0 5/x delete"), Err(ParseError::BadFormat));
        let Ok(Cmd::ScheduleAdd(a)) =
            parse(b"schedule-add q nightly 5 60 skip-missed,no-overlap 2 cron Europe/Stockholm 0 0 3 * * *")
        else {
            panic!("not parsed");
        };
        assert_eq!(
            (a.skip_missed, a.no_overlap, a.bytes, a.rule),
            (
                true,
                true,
                2,
                RuleArg::Cron { tz: "Europe/Stockholm".into(), expr: "0 0 3 * * *".into() }
            )
        );
        assert!(matches!(
            parse(b"schedule-add q s 0 0 - 0 every 1000"),
            Ok(Cmd::ScheduleAdd(a)) if a.rule == RuleArg::Every(1000)
        ));
        assert_eq!(
            parse(b"schedule-add q s 0 0 sometimes 0 every 1000"),
            Err(ParseError::BadFormat)
        );
        assert_eq!(parse(b"schedule-list"), Ok(Cmd::ScheduleList));
        assert_eq!(
            parse(b"schedule-resume q s"),
            Ok(Cmd::SchedulePause { tube: "q".into(), name: "s".into(), paused: false })
        );
        assert_eq!(
            parse(b"schedule-rm q s"),
            Ok(Cmd::ScheduleRm { tube: "q".into(), name: "s".into() })
        );
        assert_eq!(parse(b"schedule-rm q"), Err(ParseError::BadFormat));
    }

    #[test]
    fn extensions() {
        assert_eq!(
            parse(b"put-batch 1 0 60 3"),
            Ok(Cmd::PutBatch { pri: 1, delay: 0, ttr: 60, count: 3 })
        );
        assert_eq!(parse(b"put-batch 1 0 60 0"), Err(ParseError::BadFormat));
        assert_eq!(
            parse(b"clear-tube t ready,buried"),
            Ok(Cmd::ClearTube { tube: "t".into(), ready: true, delayed: false, buried: true })
        );
        assert_eq!(parse(b"clear-tube t frozen"), Err(ParseError::BadFormat));
        assert_eq!(
            parse(b"put-unique k1 0 0 10 5"),
            Ok(Cmd::PutUnique { key: "k1".into(), pri: 0, delay: 0, ttr: 10, bytes: 5 })
        );
        assert_eq!(parse(b"reserve-batch 10 0"), Ok(Cmd::ReserveBatch { max: 10, timeout: 0 }));
    }
}
