//! The backend's own limit for `spindle-bench cluster`: the raw async-nats
//! client against the same server in the same run. Pipelined publish (up to
//! 1,000 PubAcks in flight), then pull and plain ack in batches of 1,000;
//! and publish → receive latency at a fixed rate.

use crate::cluster_server::{now_ns, open_loop};
use crate::latency::{Latency, Percentiles};
use crate::BoxResult;
use async_nats::jetstream::{self, consumer::pull, stream};
use futures_util::StreamExt;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// What the raw client did.
pub struct Raw {
    /// Pipelined publishes per second.
    pub publish_per_sec: f64,
    /// Pulled and acked per second.
    pub consume_per_sec: f64,
    /// `jobs / (publish time + consume time)`: one put and one run per job,
    /// measured the way the nodes are.
    pub jobs_per_sec: f64,
    /// Publish → receive at the fixed rate.
    pub latency: Percentiles,
}

fn err(e: impl std::fmt::Display) -> crate::BoxError {
    e.to_string().into()
}

/// Runs the raw baseline on a stream of its own.
pub fn run(url: &str, jobs: u64, rate: u64, seconds: f64) -> BoxResult<Raw> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let name = format!("RAW_{}", std::process::id());
    let subject = format!("raw.{}", std::process::id());
    let (js, consumer) = rt.block_on(async {
        let client = async_nats::connect(url).await.map_err(err)?;
        let js = jetstream::new(client);
        let s = js
            .get_or_create_stream(stream::Config {
                name: name.clone(),
                subjects: vec![subject.clone()],
                retention: stream::RetentionPolicy::WorkQueue,
                ..Default::default()
            })
            .await
            .map_err(err)?;
        let c: jetstream::consumer::PullConsumer = s
            .get_or_create_consumer(
                "raw",
                pull::Config {
                    durable_name: Some("raw".into()),
                    ack_policy: jetstream::consumer::AckPolicy::Explicit,
                    max_ack_pending: 20_000,
                    ..Default::default()
                },
            )
            .await
            .map_err(err)?;
        BoxResult::Ok((js, c))
    })?;
    let payload = bytes::Bytes::from(vec![0u8; 16]);

    // Throughput: publish all, then pull + ack all.
    let started = Instant::now();
    rt.block_on(async {
        let mut acks = VecDeque::with_capacity(1000);
        for _ in 0..jobs {
            if acks.len() >= 1000 {
                if let Some(a) = acks.pop_front() {
                    let a: jetstream::context::PublishAckFuture = a;
                    a.await.map_err(err)?;
                }
            }
            acks.push_back(js.publish(subject.clone(), payload.clone()).await.map_err(err)?);
        }
        for a in acks {
            a.await.map_err(err)?;
        }
        BoxResult::Ok(())
    })?;
    let t_pub = started.elapsed();
    let started = Instant::now();
    rt.block_on(async {
        let mut msgs =
            consumer.stream().max_messages_per_batch(1000).messages().await.map_err(err)?;
        let mut n = 0;
        while n < jobs {
            let Some(m) = msgs.next().await else { break };
            m.map_err(err)?.ack().await.map_err(err)?;
            n += 1;
        }
        BoxResult::Ok(())
    })?;
    let t_cons = started.elapsed();

    // Latency: a receiver acking as it goes, a publisher at `rate`.
    let recv = {
        let consumer = consumer.clone();
        let total = (rate as f64 * seconds) as u64;
        rt.spawn(async move {
            let mut lat = Latency::new().map_err(err)?;
            let mut msgs =
                consumer.stream().max_messages_per_batch(1000).messages().await.map_err(err)?;
            let mut n = 0;
            while n < total {
                let Some(m) = msgs.next().await else { break };
                let m = m.map_err(err)?;
                let now = now_ns();
                let sent =
                    m.payload.get(..8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes);
                lat.record(Duration::from_nanos(now.saturating_sub(sent.unwrap_or(now))));
                m.ack().await.map_err(err)?;
                n += 1;
            }
            BoxResult::Ok(lat)
        })
    };
    open_loop(rate, seconds, |due| {
        rt.block_on(async {
            let mut acks = Vec::with_capacity(due.len());
            for t in due {
                let mut p = t.to_le_bytes().to_vec();
                p.resize(16, 0);
                acks.push(js.publish(subject.clone(), p.into()).await.map_err(err)?);
            }
            for a in acks {
                a.await.map_err(err)?;
            }
            BoxResult::Ok(())
        })
    })?;
    let lat = rt.block_on(recv).map_err(err)??;
    rt.block_on(async { js.delete_stream(&name).await.map_err(err) })?;
    let secs = |d: Duration| d.as_secs_f64().max(1e-9);
    Ok(Raw {
        publish_per_sec: jobs as f64 / secs(t_pub),
        consume_per_sec: jobs as f64 / secs(t_cons),
        jobs_per_sec: jobs as f64 / secs(t_pub + t_cons),
        latency: lat.percentiles(),
    })
}
