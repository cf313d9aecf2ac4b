//! Creating a namespace's streams and a queue's consumer, and reading each
//! back: an old server (2.9.10) silently drops settings it does not know,
//! and an existing stream or consumer may carry other settings, so nothing
//! is used until the server's copy matches what was asked.

use crate::error::Error;
use crate::node::Inner;
use crate::queue::QueueConfig;
use async_nats::jetstream::consumer::{self, pull, AckPolicy, DeliverPolicy};
use async_nats::jetstream::stream::{self, RetentionPolicy, StorageType};
use std::fmt::Debug;
use std::sync::PoisonError;

/// Creates or finds the streams (once per node) and the queue's consumer.
pub(crate) async fn declare(node: &Inner, queue: &str, cfg: &QueueConfig) -> Result<(), Error> {
    ensure_streams(node).await?;
    ensure_consumer(node, queue, cfg).await
}

/// Creates or finds the namespace's two streams and checks them, once per
/// node (puts need only these: a queue's jobs wait in the work stream until
/// some node declares the queue's consumer).
pub(crate) async fn ensure_streams(node: &Inner) -> Result<(), Error> {
    let ready = *node.streams_ready.lock().unwrap_or_else(PoisonError::into_inner);
    if !ready {
        ensure_stream(node, work_stream(node)).await?;
        ensure_stream(node, dead_stream(node)).await?;
        *node.streams_ready.lock().unwrap_or_else(PoisonError::into_inner) = true;
    }
    Ok(())
}

fn work_stream(node: &Inner) -> stream::Config {
    stream::Config {
        name: node.names.stream(),
        subjects: node.names.stream_subjects(),
        // A job is gone once acknowledged; one consumer per subject.
        retention: RetentionPolicy::WorkQueue,
        storage: StorageType::File,
        duplicate_window: node.duplicate_window,
        max_message_size: i32::try_from(node.max_payload + 4096).unwrap_or(i32::MAX),
        // Delayed jobs as server-side `@at` schedules, where the server has
        // them (2.12+); older servers get no such field at all.
        allow_message_schedules: node.features.schedule_at,
        // Per-message TTL for jobs with a deadline, where the server has it
        // (2.11+); older servers get no such field.
        allow_message_ttl: node.features.message_ttl,
        ..Default::default()
    }
}

fn dead_stream(node: &Inner) -> stream::Config {
    stream::Config {
        name: node.names.dead_stream(),
        subjects: node.names.dead_subjects(),
        // Dead letters stay for people to read (and kick by republishing).
        retention: RetentionPolicy::Limits,
        storage: StorageType::File,
        duplicate_window: node.duplicate_window,
        ..Default::default()
    }
}

/// Compares the settings the server kept with the ones asked for, one by
/// one: the first that differs is [`Error::SettingMismatch`].
struct ReadBack<'a> {
    node: &'a Inner,
    what: &'static str,
    name: &'a str,
}

impl ReadBack<'_> {
    fn check<T: Debug + PartialEq>(
        &self,
        setting: &'static str,
        wanted: T,
        got: T,
    ) -> Result<(), Error> {
        if wanted == got {
            return Ok(());
        }
        Err(Error::SettingMismatch {
            what: self.what,
            name: self.name.to_owned(),
            setting,
            wanted: format!("{wanted:?}"),
            got: format!("{got:?}"),
            server: self.node.version,
        })
    }
}

/// How many times a stream's creation is tried while the server fails it
/// on its side (status 500: nats-server 2.9.10 once answered "error creating
/// store for stream", code 10049, to one of the test suite's creations in CI).
/// Creating a stream that exists returns it, so a retry is harmless.
const CREATE_TRIES: u32 = 4;

async fn ensure_stream(node: &Inner, want: stream::Config) -> Result<(), Error> {
    let mut tried = 0;
    let stream = loop {
        tried += 1;
        match node.js.get_or_create_stream(want.clone()).await {
            Ok(s) => break s,
            Err(e) if tried < CREATE_TRIES && server_side(&e) => {
                tracing::warn!(stream = %want.name, error = %e, tried, "stream create failed on the server; retrying");
                tokio::time::sleep(std::time::Duration::from_millis(25 << tried)).await;
            }
            Err(e) => return Err(Error::api("stream create", e)),
        }
    };
    let got = stream.get_info().await.map_err(|e| Error::api("stream info", e))?.config;
    let rb = ReadBack { node, what: "stream", name: want.name.as_str() };
    rb.check("retention", want.retention, got.retention)?;
    let mut want_subjects = want.subjects.clone();
    let mut got_subjects = got.subjects.clone();
    want_subjects.sort();
    got_subjects.sort();
    rb.check("subjects", want_subjects, got_subjects)?;
    rb.check("duplicate_window", want.duplicate_window, got.duplicate_window)?;
    rb.check("allow_msg_ttl", want.allow_message_ttl, got.allow_message_ttl)?;
    rb.check("allow_msg_schedules", want.allow_message_schedules, got.allow_message_schedules)?;
    Ok(())
}

/// The durable consumer of one priority band of a queue (band 0 of a
/// queue without bands is its only consumer). Every band consumer carries
/// the queue's bands in its description, read back like the rest.
fn consumer_config(node: &Inner, queue: &str, cfg: &QueueConfig, band: usize) -> pull::Config {
    pull::Config {
        durable_name: Some(node.names.band_consumer(queue, band)),
        description: crate::queue::bands_description(&cfg.bands),
        filter_subject: node.names.band_subject(queue, band),
        deliver_policy: DeliverPolicy::All,
        ack_policy: AckPolicy::Explicit,
        ack_wait: cfg.ttr,
        max_deliver: cfg.max_deliver(),
        max_ack_pending: cfg.max_ack_pending,
        ..Default::default()
    }
}

/// Creates or finds the consumer of every band of the queue (one consumer
/// per band on every server version: a consumer with several
/// `filter_subjects` delivers in stream order, not by band, and a
/// work-queue stream refuses consumers whose filters overlap) and reads
/// each back.
async fn ensure_consumer(node: &Inner, queue: &str, cfg: &QueueConfig) -> Result<(), Error> {
    let stream = node
        .js
        .get_stream_no_info(node.names.stream())
        .await
        .map_err(|e| Error::api("stream lookup", e))?;
    for band in 0..=cfg.bands.len() {
        let want = consumer_config(node, queue, cfg, band);
        let name = node.names.band_consumer(queue, band);
        let c: consumer::Consumer<pull::Config> = stream
            .get_or_create_consumer(&name, want.clone())
            .await
            .map_err(|e| Error::api("consumer create", e))?;
        let got = c.get_info().await.map_err(|e| Error::api("consumer info", e))?.config;
        let rb = ReadBack { node, what: "consumer", name: &name };
        rb.check("description (priority bands)", &want.description, &got.description)?;
        rb.check("filter_subject", &want.filter_subject, &got.filter_subject)?;
        rb.check("ack_policy", want.ack_policy, got.ack_policy)?;
        rb.check("ack_wait (TTR)", want.ack_wait, got.ack_wait)?;
        rb.check("max_deliver (attempts + 1)", want.max_deliver, got.max_deliver)?;
        rb.check("max_ack_pending", want.max_ack_pending, got.max_ack_pending)?;
    }
    Ok(())
}

/// The priority bands of a queue this node did not declare, from its band-0
/// consumer's description on the server: `Ok(None)` when no node has
/// declared the queue yet, `Ok(Some(vec![]))` for a queue of one band.
pub(crate) async fn find_bands(node: &Inner, queue: &str) -> Result<Option<Vec<u32>>, Error> {
    use async_nats::jetstream::context::ConsumerInfoErrorKind;
    let stream = node
        .js
        .get_stream_no_info(node.names.stream())
        .await
        .map_err(|e| Error::api("stream lookup", e))?;
    match stream.consumer_info(node.names.consumer(queue)).await {
        Ok(info) => Ok(Some(
            info.config
                .description
                .as_deref()
                .and_then(crate::queue::parse_bands_description)
                .unwrap_or_default(),
        )),
        Err(e) if e.kind() == ConsumerInfoErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::api("consumer info", e)),
    }
}

/// Whether the server failed a stream creation on its side (status 500),
/// rather than refusing what was asked.
fn server_side(e: &async_nats::jetstream::context::CreateStreamError) -> bool {
    matches!(
        e.kind(),
        async_nats::jetstream::context::CreateStreamErrorKind::JetStream(j) if j.code() == 500
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_nats::jetstream::context::{CreateStreamError, CreateStreamErrorKind};

    fn answered(json: &str) -> CreateStreamError {
        let e: async_nats::jetstream::Error = serde_json::from_str(json).unwrap_or_else(|e| {
            panic!("not a JetStream error: {e}");
        });
        CreateStreamError::new(CreateStreamErrorKind::JetStream(e))
    }

    #[test]
    fn only_a_server_side_failure_is_retried() {
        let store =
            r#"{"code":500,"err_code":10049,"description":"error creating store for stream"}"#;
        assert!(server_side(&answered(store)));
        let refused = r#"{"code":400,"err_code":10058,"description":"stream name already in use with a different configuration"}"#;
        assert!(!server_side(&answered(refused)));
        assert!(!server_side(&CreateStreamError::new(CreateStreamErrorKind::TimedOut)));
    }
}
