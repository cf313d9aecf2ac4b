//! Priority bands: a queue with [`crate::QueueConfig::priority_bands`] has a
//! subject and a durable consumer per band, and each worker's pump pulls
//! strictly by band, with aging.
//!
//! 1. The pump owns one inbox subscription (`<inbox>.>`) for all its pull
//!    requests, so a delivery never goes to an inbox that is gone: every
//!    message that arrives is handed out (or settled), never lost to a TTR.
//! 2. To hand out a lease it takes the most urgent band that has (or may
//!    have) jobs: a lease already here from that band, or else a `no_wait`
//!    pull of as many as the worker has room for. A band found empty gets
//!    a standing pull for one message (expiring after [`POLL`]), so it
//!    wakes the pump when a job arrives and is skipped meanwhile; it is
//!    pulled afresh once that message (or the expiry) arrives.
//! 3. Aging: each band counts the leases handed out from more urgent bands
//!    while it had (or may have had) jobs; at [`crate::QueueConfig::aging`]
//!    the most starved band goes first once.
//! 4. When every band is empty the pump waits for the first delivery or
//!    status on its inbox, or for a standing pull's expiry (a server that
//!    restarted forgot the pulls: they are made again after it).

use crate::lease::{admit, Dead, Lease};
use crate::node::Inner;
use crate::queue::QueueConfig;
use async_nats::jetstream::consumer::pull::BatchConfig;
use async_nats::{Message, StatusCode, Subscriber};
use futures_util::StreamExt;
use std::collections::VecDeque;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio::time::{Duration, Instant};

/// How long a standing pull on an empty band waits on the server.
const POLL: Duration = Duration::from_secs(5);
/// How long a `no_wait` pull may go unanswered (a server restarting).
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a band whose pull was refused (409: too many leases pending,
/// too many pulls waiting) is left alone.
const REFUSED_PAUSE: Duration = Duration::from_millis(250);

/// What a pump needs to pull one queue's bands.
pub(crate) struct Bands {
    client: async_nats::Client,
    js: async_nats::jetstream::Context,
    /// `$JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer>`, per band.
    next_subjects: Vec<String>,
    /// Each band's subject: a delivery's subject names its band.
    subjects: Vec<String>,
    aging: u32,
}

impl Bands {
    pub(crate) fn new(inner: &Inner, queue: &str, cfg: &QueueConfig) -> Self {
        let n = cfg.bands.len() + 1;
        let stream = inner.names.stream();
        Bands {
            client: inner.client.clone(),
            js: inner.js.clone(),
            next_subjects: (0..n)
                .map(|b| {
                    format!(
                        "$JS.API.CONSUMER.MSG.NEXT.{stream}.{}",
                        inner.names.band_consumer(queue, b)
                    )
                })
                .collect(),
            subjects: (0..n).map(|b| inner.names.band_subject(queue, b)).collect(),
            aging: cfg.aging,
        }
    }
}

/// One band's state in a pump.
#[derive(Debug, Default)]
struct Band {
    /// Deliveries here, not yet handed out.
    ready: VecDeque<Message>,
    /// A standing pull (request id) or a pause, until this instant: the band
    /// is known empty meanwhile.
    waiting: Option<(u64, Instant)>,
    /// Leases handed out from more urgent bands while this one may have had
    /// jobs.
    skipped: u32,
}

impl Band {
    /// Has jobs here, or may have on the server.
    fn may_have(&self) -> bool {
        !self.ready.is_empty() || self.waiting.is_none()
    }
}

/// What to do next.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// Hand out a delivery already here from this band.
    Ready(usize),
    /// Pull this band (`no_wait`).
    Fetch(usize),
    /// Every band is empty: wait for a delivery, or until this instant.
    Wait(Option<Instant>),
}

/// The bands' states and the choice between them (no I/O: unit-tested).
#[derive(Debug)]
struct Picker {
    bands: Vec<Band>,
    aging: u32,
}

impl Picker {
    fn new(n: usize, aging: u32) -> Self {
        Picker { bands: (0..n).map(|_| Band::default()).collect(), aging }
    }

    /// The band to serve: the most starved one at the aging limit, else the
    /// most urgent that may have jobs.
    fn step(&self) -> Step {
        let aged = (self.aging > 0)
            .then(|| {
                self.bands
                    .iter()
                    .enumerate()
                    .filter(|(_, b)| b.may_have() && b.skipped >= self.aging)
                    // Most starved first; among equals the more urgent.
                    .max_by_key(|(i, b)| (b.skipped, std::cmp::Reverse(*i)))
                    .map(|(i, _)| i)
            })
            .flatten();
        let pick = aged.or_else(|| self.bands.iter().position(Band::may_have));
        match pick {
            Some(i) if !self.bands[i].ready.is_empty() => Step::Ready(i),
            Some(i) => Step::Fetch(i),
            None => Step::Wait(self.bands.iter().filter_map(|b| b.waiting.map(|w| w.1)).min()),
        }
    }

    /// A lease from band `i` was handed out: the less urgent bands that may
    /// have jobs waited once more.
    fn took(&mut self, i: usize) {
        self.bands[i].skipped = 0;
        for b in self.bands.iter_mut().skip(i + 1) {
            if b.may_have() {
                b.skipped = b.skipped.saturating_add(1);
            }
        }
    }

    /// Band `i` was found empty: it waits on a standing pull (or a pause)
    /// until `until`, and has not starved.
    fn empty(&mut self, i: usize, req: u64, until: Instant) {
        self.bands[i].skipped = 0;
        self.bands[i].waiting = Some((req, until));
    }

    /// Forgets standing pulls and pauses past their time.
    fn expire(&mut self, now: Instant) {
        for b in &mut self.bands {
            if b.waiting.is_some_and(|w| w.1 <= now) {
                b.waiting = None;
            }
        }
    }
}

/// Where a message on the pump's inbox belongs.
enum Arrival {
    /// A delivery from band `.0`.
    Job(usize, Message),
    /// A status (no messages, expired, refused) ending request `.1` of band `.0`.
    End(usize, u64, StatusCode),
    /// A heartbeat or something not ours.
    Other,
}

/// The pump's connection side: its inbox and pull requests.
struct Puller {
    bands: Bands,
    inbox: String,
    sub: Subscriber,
    next_req: u64,
}

impl Puller {
    /// Sends a pull request for band `band`; returns its id (the last token
    /// of its reply subject, `<inbox>.<band>.<id>`).
    async fn request(&mut self, band: usize, batch: usize, wait: bool) -> u64 {
        self.next_req += 1;
        let id = self.next_req;
        let req = BatchConfig {
            batch,
            no_wait: !wait,
            expires: wait.then_some(POLL),
            ..Default::default()
        };
        let body = serde_json::to_vec(&req).unwrap_or_default();
        let reply = format!("{}.{band}.{id}", self.inbox);
        if let Err(e) = self
            .bands
            .client
            .publish_with_reply(self.bands.next_subjects[band].clone(), reply, body.into())
            .await
        {
            // Answered by nothing: the fetch times out or the pull expires.
            tracing::debug!(band, error = %e, "pull request not sent");
        }
        id
    }

    fn classify(&self, m: Message) -> Arrival {
        match m.status {
            None | Some(StatusCode::OK) => {
                let band =
                    self.bands.subjects.iter().position(|s| s.as_str() == m.subject.as_str());
                // A subject of no band cannot come from these consumers'
                // filters; served with the most urgent rather than lost.
                Arrival::Job(band.unwrap_or(0), m)
            }
            Some(StatusCode::IDLE_HEARTBEAT) => Arrival::Other,
            Some(status) => {
                let mut tokens = m.subject.as_str().rsplit('.');
                let id = tokens.next().and_then(|t| t.parse::<u64>().ok());
                let band = tokens.next().and_then(|t| t.parse::<usize>().ok());
                match (band, id) {
                    (Some(b), Some(id)) if b < self.bands.subjects.len() => {
                        Arrival::End(b, id, status)
                    }
                    _ => Arrival::Other,
                }
            }
        }
    }
}

/// A pump's pulls and the deliveries it has not handed out. When the pump
/// stops (its worker is dropped, a pool shrinks) every delivery here or
/// already in its inbox is released at once (a Nak), so another worker or
/// node gets it now rather than after its TTR.
struct Unsent {
    pl: Puller,
    p: Picker,
}

impl Drop for Unsent {
    fn drop(&mut self) {
        let mut unsent: Vec<Message> =
            self.p.bands.iter_mut().flat_map(|b| b.ready.drain(..)).collect();
        while let Some(Some(m)) = futures_util::FutureExt::now_or_never(self.pl.sub.next()) {
            if matches!(m.status, None | Some(StatusCode::OK)) {
                unsent.push(m);
            }
        }
        let replies: Vec<_> = unsent.into_iter().filter_map(|m| m.reply).collect();
        if replies.is_empty() {
            return;
        }
        let client = self.pl.bands.client.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            drop(rt.spawn(async move {
                for r in replies {
                    let _ = client.publish(r, bytes::Bytes::from_static(b"-NAK")).await;
                }
            }));
        }
    }
}

/// Files an arrival outside a fetch: a delivery joins its band's ready
/// list (and ends its standing pull, which asked for one); a status ends
/// the standing pull it answers (a refusal pauses the band).
fn file(p: &mut Picker, a: Arrival) {
    match a {
        Arrival::Job(b, m) => {
            let band = &mut p.bands[b];
            band.ready.push_back(m);
            band.waiting = None;
        }
        Arrival::End(b, id, status) => {
            let band = &mut p.bands[b];
            if band.waiting.is_some_and(|w| w.0 == id) {
                band.waiting = refused(status).then(|| (0, Instant::now() + REFUSED_PAUSE));
            }
        }
        Arrival::Other => {}
    }
}

/// A status that refuses a pull (as opposed to "no messages" or "expired").
fn refused(status: StatusCode) -> bool {
    status != StatusCode::NOT_FOUND && status != StatusCode::TIMEOUT
}

/// Pulls band `b` once (`no_wait`, up to `room`): returns how many arrived
/// from it, and whether the server refused the pull.
async fn fetch(pl: &mut Puller, p: &mut Picker, b: usize, room: usize) -> (usize, bool) {
    let id = pl.request(b, room, false).await;
    let deadline = Instant::now() + FETCH_TIMEOUT;
    let mut got = 0;
    while got < room {
        let next = tokio::time::timeout_at(deadline, pl.sub.next()).await;
        let m = match next {
            Ok(Some(m)) => m,
            // Unanswered (a server restarting): the band pauses.
            Ok(None) | Err(_) => return (got, true),
        };
        match pl.classify(m) {
            Arrival::Job(band, m) if band == b => {
                p.bands[b].ready.push_back(m);
                got += 1;
            }
            Arrival::End(band, rid, status) if band == b && rid == id => {
                return (got, refused(status) && got == 0);
            }
            other => file(p, other),
        }
    }
    (got, false)
}

/// The pump of a worker on a queue with priority bands: hands leases to
/// the worker's channel strictly by band, with aging, until the worker is
/// gone.
pub(crate) async fn pump(
    bands: Bands,
    tx: mpsc::Sender<Lease>,
    queue: Arc<str>,
    cfg: Arc<QueueConfig>,
    dead: Arc<Dead>,
) {
    let inbox = bands.client.new_inbox();
    let sub = loop {
        match bands.client.subscribe(format!("{inbox}.>")).await {
            Ok(s) => break s,
            Err(e) => {
                tracing::warn!(%queue, error = %e, "subscribing the pull inbox failed; retrying");
                if tx.is_closed() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    };
    let js = bands.js.clone();
    let picker = Picker::new(bands.subjects.len(), bands.aging);
    let mut state = Unsent { pl: Puller { bands, inbox, sub, next_req: 0 }, p: picker };
    let Unsent { pl, p } = &mut state;
    loop {
        let Ok(permit) = tx.reserve().await else { return };
        let room = tx.capacity() + 1;
        let (band, msg) = loop {
            // File what has arrived meanwhile, without waiting.
            while let Some(Some(m)) = futures_util::FutureExt::now_or_never(pl.sub.next()) {
                let a = pl.classify(m);
                file(p, a);
            }
            p.expire(Instant::now());
            match p.step() {
                Step::Ready(b) => {
                    if let Some(m) = p.bands[b].ready.pop_front() {
                        break (b, m);
                    }
                }
                Step::Fetch(b) => {
                    let (got, refused) = fetch(pl, p, b, room).await;
                    if got == 0 {
                        if refused {
                            p.empty(b, 0, Instant::now() + REFUSED_PAUSE);
                        } else {
                            // Empty: a standing pull wakes the pump when a job
                            // arrives (a little after its expiry it is dropped).
                            let id = pl.request(b, 1, true).await;
                            p.empty(b, id, Instant::now() + POLL + Duration::from_secs(1));
                        }
                    }
                }
                Step::Wait(until) => {
                    let until = until.unwrap_or_else(|| Instant::now() + POLL);
                    match tokio::time::timeout_at(until, pl.sub.next()).await {
                        Ok(Some(m)) => {
                            let a = pl.classify(m);
                            file(p, a);
                        }
                        Ok(None) => return,
                        Err(_) => {}
                    }
                }
            }
            if tx.is_closed() {
                return;
            }
        };
        let msg = async_nats::jetstream::Message { message: msg, context: js.clone() };
        if let Some(lease) = admit(msg, &queue, &cfg, &dead).await {
            p.took(band);
            permit.send(lease);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg() -> Message {
        Message {
            subject: "s".into(),
            reply: None,
            payload: Default::default(),
            headers: None,
            status: None,
            description: None,
            length: 0,
        }
    }

    #[test]
    fn strict_by_band_then_aging_lets_the_starved_band_through() {
        let mut p = Picker::new(3, 2);
        // Nothing known: the most urgent band is pulled first.
        assert_eq!(p.step(), Step::Fetch(0));
        p.bands[0].ready.extend([msg(), msg(), msg(), msg()]);
        assert_eq!(p.step(), Step::Ready(0));
        p.bands[0].ready.pop_front();
        p.took(0);
        assert_eq!(p.step(), Step::Ready(0));
        p.bands[0].ready.pop_front();
        p.took(0);
        // Bands 1 and 2 waited twice each: band 1 (more urgent) goes first.
        assert_eq!(p.step(), Step::Fetch(1));
        let now = Instant::now();
        p.empty(1, 7, now + POLL);
        // Band 2 waited twice too and may have jobs.
        assert_eq!(p.step(), Step::Fetch(2));
        p.bands[2].ready.push_back(msg());
        assert_eq!(p.step(), Step::Ready(2));
        p.bands[2].ready.pop_front();
        p.took(2);
        assert_eq!(p.step(), Step::Ready(0));
    }

    #[test]
    fn empty_bands_wait_and_wake_on_a_delivery() {
        let mut p = Picker::new(2, 0);
        let now = Instant::now();
        p.empty(0, 1, now + POLL);
        p.empty(1, 2, now + POLL * 2);
        assert_eq!(p.step(), Step::Wait(Some(now + POLL)));
        file(&mut p, Arrival::Job(1, msg()));
        assert_eq!(p.step(), Step::Ready(1));
        // A stale status (another request) leaves band 0 waiting.
        file(&mut p, Arrival::End(0, 99, StatusCode::TIMEOUT));
        assert!(p.bands[0].waiting.is_some());
        file(&mut p, Arrival::End(0, 1, StatusCode::TIMEOUT));
        assert_eq!(p.step(), Step::Fetch(0));
        p.empty(0, 3, now);
        p.expire(now);
        assert_eq!(p.step(), Step::Fetch(0));
    }
}
