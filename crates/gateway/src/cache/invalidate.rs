//! The consumers that keep the cache current, two per cached domain, both on
//! `cim_streams::PullLoop`: the shared invalidator (one durable consumer for all gateway
//! instances, bumping the generations in Redis) and this instance's ordered subscription
//! (bumping its first level). Each sets its own flag, so a domain whose stream or consumer is
//! down bypasses only its own routes.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use async_nats::jetstream::{AckKind, Context, Message};
use cim_core::SubjectPrefix;
use cim_streams::{Binding, Bound, ConsumerMetrics, PullLoop};

use super::shared::{Bumps, MAX_BUMPS};
use super::{DomainCache, canonical_id};

/// The shared invalidator's durable name, the same on every domain's stream (consumer names are
/// per stream): the gateway user's NATS permissions and its deny of deleting it name it once for
/// all, and its dead letters share `<prefix>.dlq.gateway-cache` (each keeps its original subject).
pub const DURABLE: &str = "gateway-cache";

/// What a domain's shared invalidator works with: the events' subjects, the generations it
/// bumps, and the domain's cache, whose flag tells the middleware it runs.
#[derive(Debug)]
pub struct Invalidator {
    pub prefix: SubjectPrefix,
    pub bumps: Bumps,
    pub cache: Arc<DomainCache>,
}

/// Consumes the domain's events and invalidates the cache of each aggregate they touch. One
/// durable consumer for all gateway instances: the cache is shared, so one invalidation is enough.
pub async fn invalidator(state: Invalidator, js: Context, stop: cim_runtime::Shutdown) {
    let (prefix, domain) = (&state.prefix, state.cache.domain);
    // The consumer's metrics are told apart by domain: the durable name is the same on each stream.
    let metrics = ConsumerMetrics::new(&format!("{DURABLE}-{domain}"));
    let consumer = PullLoop {
        name: format!("{DURABLE} ({domain})"),
        stream: prefix.stream_name(domain),
        binding: Binding::Durable(pull::Config {
            durable_name: Some(DURABLE.to_owned()),
            filter_subject: prefix.domain_events(domain),
            deliver_policy: DeliverPolicy::New,
            ack_policy: AckPolicy::Explicit,
            ack_wait: Duration::from_secs(10),
            ..Default::default()
        }),
        // Several events at once, so that their bumps share a Redis round trip (bumps commute;
        // each message is acked after its own).
        concurrency: MAX_BUMPS,
        metrics: Some(metrics.clone()),
    };
    // Until the consumer is back after a loss, changes made elsewhere would go unnoticed.
    let live = |bound: Bound| forget_if_created(&state, &stop, bound);
    consumer
        .run(&js, &stop, live, |msg| async {
            handle(&state, &js, &metrics, msg).await;
            Ok(())
        })
        .await;
}

/// A resumed consumer goes on where it was: the cache is trusted again at once. A created one
/// (the first start, or its stream was lost and rebuilt by `cim streams rebuild`, with
/// `DeliverPolicy::New` skipping what was republished) never saw the changes made while no
/// consumer existed: every cached response is bumped before the cache is trusted again.
async fn forget_if_created(state: &Invalidator, stop: &cim_runtime::Shutdown, bound: Bound) {
    let domain = state.cache.domain;
    match bound {
        Bound::Lost => state.cache.set_shared_live(false),
        Bound::Resumed => state.cache.set_shared_live(true),
        Bound::Created => {
            state.cache.set_shared_live(false);
            let mut backoff = Duration::from_millis(100);
            loop {
                match state.bumps.bump_every_entry().await {
                    Ok(bumped) => {
                        tracing::info!(%domain, bumped, "cache invalidator created: every cached response forgotten");
                        state.cache.set_shared_live(true);
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(%domain, error = %e, ?backoff, "forgetting the cache failed; the domain stays uncached")
                    }
                }
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = stop.wait() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// The aggregates whose cached responses an event makes stale: its own (the aggregate-id header
/// the relay sets, else the envelope's `aggregate_id`: a message published by other means), and
/// every aggregate id its payload names at its top level, since a record may show what another
/// aggregate's events change (an agent's `running_tasks` moves with the task events that name it).
/// `None` when the event names no aggregate of its own.
fn touched(msg: &Message) -> Option<BTreeSet<String>> {
    #[derive(serde::Deserialize)]
    struct Envelope {
        aggregate_id: Option<String>,
        #[serde(default)]
        payload: serde_json::Value,
    }
    let header = msg.headers.as_ref().and_then(|h| h.get(cim_core::subject::headers::AGGREGATE_ID));
    let envelope = serde_json::from_slice::<Envelope>(&msg.payload).ok();
    let own = header
        .and_then(|v| canonical_id(v.as_str()))
        .or_else(|| envelope.as_ref().and_then(|e| e.aggregate_id.as_deref()).and_then(canonical_id))?;
    let mut touched = BTreeSet::from([own]);
    if let Some(fields) = envelope.as_ref().and_then(|e| e.payload.as_object()) {
        touched.extend(fields.values().filter_map(|v| v.as_str()).filter_map(canonical_id));
    }
    Some(touched)
}

async fn handle(state: &Invalidator, js: &Context, metrics: &ConsumerMetrics, msg: Message) {
    let Some(aggregates) = touched(&msg) else {
        // No aggregate to invalidate, now or on any redelivery: kept in the dead-letter stream
        // for an operator instead of silently leaving some aggregate's cache stale.
        let reason = "gateway-cache: no readable aggregate id in the headers or the payload";
        match cim_streams::publish_dead_letter(js, &state.prefix, DURABLE, &msg, reason).await {
            Ok(()) => {
                tracing::error!(subject = %msg.subject, "{reason}; sent to the dead-letter stream");
                let _ = msg.ack_with(AckKind::Term).await;
                metrics.dead_letters.increment(1);
            }
            Err(e) => {
                tracing::warn!(error = %e, "dead-letter publish failed; will be redelivered");
                let _ = msg.ack_with(AckKind::Nak(Some(Duration::from_secs(1)))).await;
                metrics.retried.increment(1);
            }
        }
        return;
    };
    let bumped = futures::future::try_join_all(aggregates.iter().map(|a| state.bumps.bump(a))).await;
    match bumped {
        Ok(_) => {
            let _ = msg.ack().await;
            metrics.applied.increment(1);
        }
        Err(e) => {
            tracing::warn!(error = %e, "cache invalidation failed; will be redelivered");
            let _ = msg.ack_with(AckKind::Nak(Some(Duration::from_secs(1)))).await;
            metrics.retried.increment(1);
        }
    }
}

/// This instance's own ordered subscription to the domain's events, for its first-level cache.
pub async fn local_invalidator(
    cache: Arc<DomainCache>,
    prefix: SubjectPrefix,
    js: Context,
    stop: cim_runtime::Shutdown,
) {
    let domain = cache.domain;
    let consumer = PullLoop {
        name: format!("gateway-local-cache ({domain})"),
        stream: prefix.stream_name(domain),
        binding: Binding::Ordered(pull::OrderedConfig {
            filter_subject: prefix.domain_events(domain),
            deliver_policy: DeliverPolicy::New,
            ..Default::default()
        }),
        concurrency: 1,
        metrics: None,
    };
    // An ordered consumer is created at each bind and starts at new messages: `set_live` clears
    // what the first level held.
    let live = |bound: Bound| {
        cache.local.set_live(bound != Bound::Lost);
        std::future::ready(())
    };
    consumer
        .run(&js, &stop, live, |msg| {
            for aggregate in touched(&msg).unwrap_or_default() {
                cache.local.bump(&aggregate);
            }
            std::future::ready(Ok(()))
        })
        .await;
}
