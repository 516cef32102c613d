//! Events from JetStream to subscriptions.
//!
//! - One live feed per domain per instance: an ordered push consumer on the whole domain stream,
//!   shared by every client. Each event is decoded once and handed (as an `Arc`) to the
//!   subscriptions of its tenant whose filter matches; other tenants' subscriptions are never
//!   looked at, because the registry is keyed by tenant.
//! - Positions are stream sequences. The feed remembers the last one it dispatched; a
//!   subscription delivers only events after its own `after` mark, so nothing is sent twice.
//! - Resume: a subscription with `from` below the feed's position P is registered in catch-up
//!   mode under the feed's lock (live events after P are buffered for it from then on), the
//!   events in `(from, P]` are read from the stream with a filtered, short-lived consumer, and
//!   then, again under the lock, the buffer is flushed and the subscription goes live. Every
//!   position is covered once: `(from, P]` by the stream read, `(P, ...)` by the live feed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use async_nats::jetstream::{self, consumer::DeliverPolicy, consumer::push};
use cim_core::{AggregateId, Domain, SubjectPrefix, TenantId};
use cim_runtime::Shutdown;
use futures::StreamExt;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::event::{FeedEvent, decode_message};
use crate::metrics::{FEED_POSITION, Metrics, SKIPPED_EVENTS_TOTAL};
use crate::protocol::{Code, Filter, Refusal, ServerFrame, error_frame};
use crate::queue::{ClientQueue, Outbound};

/// How long a catch-up read waits for the next message before giving up.
const CATCHUP_STALL: Duration = Duration::from_secs(10);
/// Catch-up reads running at once per instance: after a restart every client resumes at once,
/// and each read is a consumer on the server.
const CATCHUP_CONCURRENCY: usize = 16;

enum Mode {
    Live,
    /// Live events after `after` wait here until the stream read has covered the positions
    /// before them.
    CatchingUp(Vec<Arc<FeedEvent>>),
}

struct Entry {
    filter: Filter,
    /// Only events after this position are delivered.
    after: u64,
    id_json: Arc<str>,
    client: Arc<ClientQueue>,
    mode: Mode,
}

/// One tenant's subscriptions, those naming an aggregate indexed by it: an event is checked
/// against the subscriptions of its own aggregate and the broader ones, not against all.
#[derive(Default)]
struct TenantSubs {
    by_aggregate: HashMap<AggregateId, HashMap<u64, Entry>>,
    broad: HashMap<u64, Entry>,
    /// Where each key lives.
    keys: HashMap<u64, Option<AggregateId>>,
}

impl TenantSubs {
    fn insert(&mut self, key: u64, entry: Entry) {
        let aggregate = entry.filter.aggregate_id;
        self.keys.insert(key, aggregate);
        match aggregate {
            Some(id) => self.by_aggregate.entry(id).or_default().insert(key, entry),
            None => self.broad.insert(key, entry),
        };
    }

    fn get_mut(&mut self, key: u64) -> Option<&mut Entry> {
        match self.keys.get(&key)? {
            Some(id) => self.by_aggregate.get_mut(id)?.get_mut(&key),
            None => self.broad.get_mut(&key),
        }
    }

    fn remove(&mut self, key: u64) -> bool {
        match self.keys.remove(&key) {
            Some(Some(id)) => {
                let Some(subs) = self.by_aggregate.get_mut(&id) else { return false };
                let removed = subs.remove(&key).is_some();
                if subs.is_empty() {
                    self.by_aggregate.remove(&id);
                }
                removed
            }
            Some(None) => self.broad.remove(&key).is_some(),
            None => false,
        }
    }

    fn candidates(&mut self, aggregate: &AggregateId) -> impl Iterator<Item = &mut Entry> {
        self.broad.values_mut().chain(self.by_aggregate.get_mut(aggregate).into_iter().flat_map(|m| m.values_mut()))
    }

    fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

struct Registry {
    /// The last stream sequence dispatched.
    position: u64,
    by_tenant: HashMap<TenantId, TenantSubs>,
}

/// The live feed of one domain and the subscriptions it serves.
pub struct Feed {
    domain: Domain,
    stream: String,
    registry: Mutex<Registry>,
    metrics: Metrics,
    position_gauge: metrics::Gauge,
    skipped: metrics::Counter,
}

impl std::fmt::Debug for Feed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Feed").field("domain", &self.domain).field("stream", &self.stream).finish_non_exhaustive()
    }
}

/// What registering decided.
enum Start {
    Live,
    /// Read `(from, until]` from the stream, then go live.
    CatchUp {
        from: u64,
        until: u64,
    },
}

/// Who a subscription delivers to, and what.
#[derive(Debug, Clone)]
struct Target {
    client: Arc<ClientQueue>,
    tenant: TenantId,
    key: u64,
    id_json: Arc<str>,
    filter: Filter,
}

impl Feed {
    fn new(domain: Domain, stream: String, position: u64, metrics: Metrics) -> Feed {
        let position_gauge = metrics::gauge!(FEED_POSITION, "domain" => domain.as_str());
        position_gauge.set(position as f64);
        Feed {
            domain,
            stream,
            registry: Mutex::new(Registry { position, by_tenant: HashMap::new() }),
            metrics,
            position_gauge,
            skipped: metrics::counter!(SKIPPED_EVENTS_TOTAL, "domain" => domain.as_str()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Registry> {
        // Nothing under this lock can leave the registry half-updated, so a panic elsewhere
        // while holding it does not make it unusable.
        self.registry.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn domain(&self) -> Domain {
        self.domain
    }

    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// The last stream position dispatched.
    pub fn position(&self) -> u64 {
        self.lock().position
    }

    /// Hands one stream message to the matching subscriptions. `event` is `None` for a message
    /// that is not a readable event: its position still counts.
    fn dispatch(&self, position: u64, event: Option<Arc<FeedEvent>>) {
        let mut reg = self.lock();
        // An ordered consumer recreated before its first delivery starts over from the stream's
        // beginning; what was dispatched already is skipped.
        if position <= reg.position {
            return;
        }
        reg.position = position;
        self.position_gauge.set(position as f64);
        let Some(event) = event else { return };
        let Some(subs) = reg.by_tenant.get_mut(&event.tenant) else { return };
        for entry in subs.candidates(&event.aggregate_id) {
            if position <= entry.after
                || !entry.filter.matches(&event.aggregate_type, &event.aggregate_id, &event.event_type)
            {
                continue;
            }
            match &mut entry.mode {
                Mode::Live => {
                    // A full queue marks the client lagging; its connection removes it.
                    let _ = entry.client.push(Outbound::Event { id_json: entry.id_json.clone(), event: event.clone() });
                }
                Mode::CatchingUp(buffer) => {
                    if buffer.len() >= entry.client.bound() {
                        entry.client.mark_lagging();
                    } else {
                        buffer.push(event.clone());
                    }
                }
            }
        }
    }

    /// Adds a subscription and queues its `subscribed` reply, both under the lock so no event
    /// frame of it can precede the reply.
    fn register(&self, target: &Target, id: &str, from: Option<u64>) -> Start {
        let mut reg = self.lock();
        let now = reg.position;
        let (after, start) = match from {
            None => (now, Start::Live),
            Some(from) if from >= now => (from, Start::Live),
            Some(from) => (now, Start::CatchUp { from, until: now }),
        };
        let mode = match start {
            Start::Live => Mode::Live,
            Start::CatchUp { .. } => Mode::CatchingUp(Vec::new()),
        };
        let reply = ServerFrame::Subscribed { id, position: from.unwrap_or(now) }.to_json();
        let _ = target.client.push(Outbound::Control(reply));
        let entry = Entry {
            filter: target.filter.clone(),
            after,
            id_json: target.id_json.clone(),
            client: target.client.clone(),
            mode,
        };
        reg.by_tenant.entry(target.tenant).or_default().insert(target.key, entry);
        self.metrics.subscriptions.increment(1.0);
        start
    }

    /// Ends catch-up: the buffered live events follow the stream read, then events flow directly.
    fn go_live(&self, tenant: TenantId, key: u64) {
        let mut reg = self.lock();
        let Some(entry) = reg.by_tenant.get_mut(&tenant).and_then(|subs| subs.get_mut(key)) else { return };
        if let Mode::CatchingUp(buffer) = std::mem::replace(&mut entry.mode, Mode::Live) {
            for event in buffer {
                if entry.client.push(Outbound::Event { id_json: entry.id_json.clone(), event }).is_err() {
                    break;
                }
            }
        }
    }

    /// Removes a subscription; false if it was already gone.
    fn remove(&self, tenant: TenantId, key: u64) -> bool {
        let mut reg = self.lock();
        let Some(subs) = reg.by_tenant.get_mut(&tenant) else { return false };
        let removed = subs.remove(key);
        if subs.is_empty() {
            reg.by_tenant.remove(&tenant);
        }
        if removed {
            self.metrics.subscriptions.decrement(1.0);
        }
        removed
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct HubError(String);

/// The feeds of every domain, and subscribing to them.
pub struct Hub {
    js: jetstream::Context,
    prefix: SubjectPrefix,
    feeds: Vec<Arc<Feed>>,
    catchups: Semaphore,
    next_key: AtomicU64,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub").field("prefix", &self.prefix).field("feeds", &self.feeds).finish_non_exhaustive()
    }
}

/// An active subscription as its connection holds it.
#[derive(Debug)]
pub struct Subscription {
    pub key: u64,
    domain: Domain,
    tenant: TenantId,
    catchup: Option<(CancellationToken, JoinHandle<()>)>,
}

/// Why a live feed stopped.
#[derive(Debug)]
enum FeedError {
    /// The domain's stream does not exist (yet): its service creates it.
    NoStream,
    Other(String),
}

impl From<String> for FeedError {
    fn from(e: String) -> Self {
        FeedError::Other(e)
    }
}

/// Whether JetStream said the stream does not exist.
fn stream_missing(e: &jetstream::context::GetStreamError) -> bool {
    matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(j)
        if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND)
}

/// A subscription that ended on its own (its catch-up failed): the connection forgets it.
#[derive(Debug, Clone)]
pub struct Ended {
    pub id: String,
    pub key: u64,
}

impl Hub {
    /// Notes where every domain's stream ends: the live feeds start there. The websocket only
    /// binds to streams: each domain service creates and owns its own (so the websocket's NATS
    /// user needs no right to create or change streams). A stream that does not exist yet (its
    /// domain is not deployed, or starts later) is followed from its first event once it does.
    pub async fn open(js: jetstream::Context, prefix: SubjectPrefix, metrics: Metrics) -> Result<Arc<Hub>, HubError> {
        let mut feeds = Vec::with_capacity(Domain::ALL.len());
        for domain in Domain::ALL {
            let name = prefix.stream_name(domain);
            let last = match js.get_stream(&name).await {
                Ok(stream) => stream.cached_info().state.last_sequence,
                Err(e) if stream_missing(&e) => {
                    tracing::info!(%domain, stream = %name, "stream not created yet; its feed starts when it is");
                    0
                }
                Err(e) => return Err(HubError(format!("stream {name}: {e}"))),
            };
            feeds.push(Arc::new(Feed::new(domain, name, last, metrics.clone())));
        }
        Ok(Arc::new(Hub {
            js,
            prefix,
            feeds,
            catchups: Semaphore::new(CATCHUP_CONCURRENCY),
            next_key: AtomicU64::new(1),
        }))
    }

    pub fn feed(&self, domain: Domain) -> &Arc<Feed> {
        // `feeds` is built from `Domain::ALL`, in order.
        let i = Domain::ALL.iter().position(|d| *d == domain).unwrap_or(0);
        &self.feeds[i]
    }

    pub fn feeds(&self) -> &[Arc<Feed>] {
        &self.feeds
    }

    /// Runs one domain's live feed until `stop`, re-creating its consumer after failures from
    /// the last position dispatched.
    pub async fn run_feed(self: Arc<Self>, domain: Domain, stop: Shutdown) {
        let feed = self.feed(domain).clone();
        let mut backoff = Duration::from_millis(100);
        while !stop.is_triggered() {
            match self.consume(&feed, &stop).await {
                Ok(()) => break,
                Err(FeedError::NoStream) => {
                    // Expected while the domain's service has not started (or is not deployed).
                    tracing::debug!(domain = %domain, ?backoff, "stream not created yet; waiting");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop.wait() => break,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                Err(FeedError::Other(e)) => {
                    tracing::warn!(domain = %domain, error = %e, ?backoff, "live feed interrupted; restarting");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop.wait() => break,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    async fn consume(&self, feed: &Feed, stop: &Shutdown) -> Result<(), FeedError> {
        let stream = self.js.get_stream(&feed.stream).await.map_err(|e| {
            if stream_missing(&e) {
                FeedError::NoStream
            } else {
                FeedError::Other(format!("stream {}: {e}", feed.stream))
            }
        })?;
        let start = feed.position() + 1;
        let consumer = stream
            .create_consumer(push::OrderedConfig {
                deliver_subject: self.js.client().new_inbox(),
                filter_subject: self.prefix.domain_events(feed.domain),
                deliver_policy: DeliverPolicy::ByStartSequence { start_sequence: start },
                description: Some("cim-websocket live feed".into()),
                ..Default::default()
            })
            .await
            .map_err(|e| format!("creating the feed consumer: {e}"))?;
        let name = consumer.cached_info().name.clone();
        let mut messages = consumer.messages().await.map_err(|e| format!("subscribing the feed: {e}"))?;
        tracing::info!(domain = %feed.domain, stream = %feed.stream, start, "live feed started");
        let outcome = loop {
            let next = tokio::select! {
                next = messages.next() => next,
                _ = stop.wait() => break Ok(()),
            };
            match next {
                None => break Err(FeedError::Other("the feed subscription ended".to_owned())),
                // The ordered consumer re-creates itself after these (heartbeats missed, NATS
                // reconnected) and continues after the last message it delivered.
                Some(Err(e)) => tracing::debug!(domain = %feed.domain, error = %e, "live feed hiccup"),
                Some(Ok(message)) => {
                    let Ok(position) = message.info().map(|i| i.stream_sequence) else { continue };
                    let event = match decode_message(position, &message) {
                        Ok(e) => {
                            let delay = SystemTime::now().duration_since(e.occurred_at).unwrap_or_default();
                            feed.metrics.feed_delay.record(delay.as_secs_f64());
                            Some(Arc::new(e))
                        }
                        Err(e) => {
                            feed.skipped.increment(1);
                            tracing::warn!(domain = %feed.domain, position, error = %e, "skipping a stream message");
                            None
                        }
                    };
                    feed.dispatch(position, event);
                }
            }
        };
        let _ = stream.delete_consumer(&name).await;
        outcome
    }

    /// Checks that a resume from `from` can be gap-free.
    async fn check_resumable(&self, feed: &Feed, from: u64) -> Result<(), Refusal> {
        let stream = self
            .js
            .get_stream(&feed.stream)
            .await
            .map_err(|e| Refusal::new(Code::Unavailable, format!("reading stream state: {e}")))?;
        let state = &stream.cached_info().state;
        if from > state.last_sequence {
            return Err(Refusal::new(
                Code::PositionAhead,
                format!(
                    "from {from} is beyond the last position {} of the {} stream",
                    state.last_sequence, feed.domain
                ),
            ));
        }
        if state.first_sequence > from.saturating_add(1) {
            return Err(Refusal::new(
                Code::PositionExpired,
                format!(
                    "events after {from} are no longer kept; the {} stream starts at {}",
                    feed.domain, state.first_sequence
                ),
            ));
        }
        Ok(())
    }

    /// Starts a subscription: replies `subscribed`, then delivers every matching event after
    /// `from` (or after the current position when `from` is absent) in stream order. `ended`
    /// hears of it if it ends on its own.
    pub async fn subscribe(
        self: &Arc<Self>,
        client: &Arc<ClientQueue>,
        tenant: TenantId,
        id: &str,
        filter: Filter,
        from: Option<u64>,
        ended: &mpsc::UnboundedSender<Ended>,
    ) -> Result<Subscription, Refusal> {
        let feed = self.feed(filter.domain).clone();
        if let Some(from) = from
            && from != feed.position()
        {
            self.check_resumable(&feed, from).await?;
        }
        let key = self.next_key.fetch_add(1, Ordering::Relaxed);
        let id_json: Arc<str> = serde_json::to_string(id).unwrap_or_default().into();
        let domain = filter.domain;
        let target = Target { client: client.clone(), tenant, key, id_json, filter };
        let Start::CatchUp { from, until } = feed.register(&target, id, from) else {
            return Ok(Subscription { key, domain, tenant, catchup: None });
        };
        let cancel = CancellationToken::new();
        let (hub, stop, ended, id) = (self.clone(), cancel.clone(), ended.clone(), id.to_owned());
        let task = tokio::spawn(async move {
            let outcome = tokio::select! {
                r = hub.read_range(&feed, &target, from, until) => r,
                _ = stop.cancelled() => return,
            };
            match outcome {
                Ok(()) => feed.go_live(tenant, key),
                Err(None) => {}
                Err(Some(refusal)) => {
                    tracing::warn!(tenant = %tenant, error = %refusal.message, "catch-up failed");
                    feed.remove(tenant, key);
                    let _ = target.client.push(Outbound::Control(error_frame(Some(&id), &refusal)));
                    let _ = ended.send(Ended { id, key });
                }
            }
        });
        Ok(Subscription { key, domain, tenant, catchup: Some((cancel, task)) })
    }

    /// Ends a subscription: no frame of it is queued after this returns.
    pub async fn unsubscribe(&self, sub: Subscription) {
        if let Some((cancel, task)) = sub.catchup {
            cancel.cancel();
            let _ = task.await;
        }
        self.feed(sub.domain).remove(sub.tenant, sub.key);
    }

    /// Sends the target's events in `(from, until]` from the stream. `Err(None)`: the client
    /// went away.
    async fn read_range(&self, feed: &Feed, target: &Target, from: u64, until: u64) -> Result<(), Option<Refusal>> {
        let unavailable = |what: &str, e: &dyn std::fmt::Display| {
            Some(Refusal::new(Code::Unavailable, format!("{what}: {e}; the subscription ended, subscribe again")))
        };
        let _permit = self.catchups.acquire().await.map_err(|e| unavailable("catch-up", &e))?;
        let stream = self.js.get_stream(&feed.stream).await.map_err(|e| unavailable("reading the stream", &e))?;
        let consumer = stream
            .create_consumer(push::OrderedConfig {
                deliver_subject: self.js.client().new_inbox(),
                filter_subject: target.filter.subject(&self.prefix),
                deliver_policy: DeliverPolicy::ByStartSequence { start_sequence: from + 1 },
                description: Some("cim-websocket catch-up".into()),
                ..Default::default()
            })
            .await
            .map_err(|e| unavailable("reading the stream", &e))?;
        let name = consumer.cached_info().name.clone();
        let mut result = Ok(());
        if consumer.cached_info().num_pending > 0 {
            result = async {
                let mut messages = consumer.messages().await.map_err(|e| unavailable("reading the stream", &e))?;
                loop {
                    let message = match tokio::time::timeout(CATCHUP_STALL, messages.next()).await {
                        Err(_) => return Err(unavailable("reading the stream", &"no message in time")),
                        Ok(None) => return Err(unavailable("reading the stream", &"subscription ended")),
                        Ok(Some(Err(e))) => {
                            tracing::debug!(error = %e, "catch-up hiccup");
                            continue;
                        }
                        Ok(Some(Ok(m))) => m,
                    };
                    let Ok((position, pending)) = message.info().map(|i| (i.stream_sequence, i.pending)) else {
                        continue;
                    };
                    if position <= from {
                        continue;
                    }
                    if position > until {
                        return Ok(());
                    }
                    if let Ok(event) = decode_message(position, &message)
                        && event.tenant == target.tenant
                        && target.filter.matches(&event.aggregate_type, &event.aggregate_id, &event.event_type)
                    {
                        let item = Outbound::Event { id_json: target.id_json.clone(), event: Arc::new(event) };
                        target.client.push_patiently(item).await.map_err(|_| None)?;
                        feed.metrics.catchup_events.increment(1);
                    }
                    if position == until || pending == 0 {
                        return Ok(());
                    }
                }
            }
            .await;
        }
        // Ephemeral consumers also expire on their own; deleting now keeps the server tidy.
        let _ = stream.delete_consumer(&name).await;
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::decode;
    use chrono::Utc;
    use cim_core::{EventContext, EventEnvelope, EventHash, NewEvent};

    fn envelope(tenant: TenantId) -> EventEnvelope {
        let ctx = EventContext {
            domain: Domain::Graph,
            aggregate_type: "graph".parse().unwrap(),
            aggregate_id: AggregateId::new(),
            tenant_id: tenant,
            actor: "user:a".parse().unwrap(),
            correlation_id: cim_core::CorrelationId::new(),
            causation_id: cim_core::CausationId::new(),
        };
        let new =
            NewEvent { event_type: "node_added".parse().unwrap(), schema_version: 1, payload: serde_json::json!({}) };
        EventEnvelope::seal(&ctx, new, 1, EventHash::GENESIS, Utc::now())
    }

    #[test]
    fn decoding_keeps_the_envelope_and_checks_the_tenant_header() {
        let tenant = TenantId::new();
        let body = serde_json::to_vec(&envelope(tenant)).unwrap();
        let e = decode(5, &body, Some(&tenant.to_string())).unwrap();
        assert_eq!((e.position, e.tenant), (5, tenant));
        assert_eq!(e.envelope.as_bytes(), body.as_slice());
        let err = decode(5, &body, Some(&TenantId::new().to_string())).unwrap_err();
        assert!(err.contains("differs"), "{err}");
        assert!(decode(5, b"{}", None).is_err());
        assert!(decode(5, &[0xff], None).is_err());
    }

    fn filter() -> Filter {
        Filter { domain: Domain::Graph, aggregate_type: None, aggregate_id: None, event_types: Vec::new() }
    }

    fn target(client: &Arc<ClientQueue>, tenant: TenantId, key: u64) -> Target {
        Target { client: client.clone(), tenant, key, id_json: format!("\"{key}\"").into(), filter: filter() }
    }

    fn event(position: u64, tenant: TenantId) -> Arc<FeedEvent> {
        let body = serde_json::to_vec(&envelope(tenant)).unwrap();
        Arc::new(decode(position, &body, None).unwrap())
    }

    fn drain(rx: &mut mpsc::UnboundedReceiver<Outbound>) -> Vec<u64> {
        let mut seen = Vec::new();
        while let Ok(item) = rx.try_recv() {
            if let Outbound::Event { event, .. } = item {
                seen.push(event.position);
            }
        }
        seen
    }

    #[test]
    fn the_registry_routes_by_tenant_and_hands_over_without_gap_or_duplicate() {
        let feed = Feed::new(Domain::Graph, "S".into(), 10, Metrics::new());
        let (a, b) = (TenantId::new(), TenantId::new());
        let (qa, mut ra) = ClientQueue::new(100);
        let (qb, mut rb) = ClientQueue::new(100);
        assert!(matches!(feed.register(&target(&qa, a, 1), "x", None), Start::Live));
        // Resuming from 4: positions 5..=10 come from the stream, later ones are buffered.
        let start = feed.register(&target(&qb, b, 2), "y", Some(4));
        assert!(matches!(start, Start::CatchUp { from: 4, until: 10 }));
        for p in 11..=13 {
            let tenant = if p == 12 { b } else { a };
            feed.dispatch(p, Some(event(p, tenant)));
        }
        feed.dispatch(12, Some(event(12, a)));
        assert_eq!(drain(&mut ra), [11, 13]);
        assert_eq!(drain(&mut rb), Vec::<u64>::new());
        feed.go_live(b, 2);
        feed.dispatch(14, Some(event(14, b)));
        assert_eq!(drain(&mut rb), [12, 14]);
        assert!(feed.remove(b, 2));
        assert!(!feed.remove(b, 2));
        feed.dispatch(15, Some(event(15, b)));
        assert_eq!(drain(&mut rb), Vec::<u64>::new());
        assert_eq!(feed.position(), 15);
    }

    #[test]
    fn subscriptions_naming_an_aggregate_see_only_it() {
        let feed = Feed::new(Domain::Graph, "S".into(), 5, Metrics::new());
        let t = TenantId::new();
        let (mine, other) = (event(6, t), event(7, t));
        let (q, mut rx) = ClientQueue::new(100);
        let narrow = Filter { aggregate_id: Some(mine.aggregate_id), ..filter() };
        let target = Target { client: q, tenant: t, key: 7, id_json: "\"n\"".into(), filter: narrow };
        feed.register(&target, "n", None);
        assert!(matches!(feed.register(&Target { key: 8, ..target }, "r", Some(0)), Start::CatchUp { .. }));
        feed.dispatch(6, Some(mine));
        feed.dispatch(7, Some(other));
        assert_eq!(drain(&mut rx), [6]);
        feed.go_live(t, 8);
        assert_eq!(drain(&mut rx), [6]);
        assert!(feed.remove(t, 7) && feed.remove(t, 8));
        assert!(!feed.remove(t, 7));
    }

    #[test]
    fn a_full_queue_marks_only_that_client_lagging() {
        let feed = Feed::new(Domain::Graph, "S".into(), 0, Metrics::new());
        let t = TenantId::new();
        let (slow, _keep_slow) = ClientQueue::new(2);
        let (fast, mut rf) = ClientQueue::new(100);
        feed.register(&target(&slow, t, 1), "s", None);
        feed.register(&target(&fast, t, 2), "f", None);
        for p in 1..=5 {
            feed.dispatch(p, Some(event(p, t)));
        }
        assert!(slow.is_lagging());
        assert!(!fast.is_lagging());
        assert_eq!(drain(&mut rf), [1, 2, 3, 4, 5]);
    }
}
