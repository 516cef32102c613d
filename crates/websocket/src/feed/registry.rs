//! One domain's live feed and the subscriptions it routes to, by tenant and aggregate: the
//! feed's position, dispatching, and the hand-over from catch-up to live.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use cim_core::{AggregateId, Domain, TenantId};

use crate::event::FeedEvent;
use crate::metrics::{FEED_POSITION, Metrics, SKIPPED_EVENTS_TOTAL};
use crate::protocol::{Filter, ServerFrame};
use crate::queue::{ClientQueue, Outbound};

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
pub(super) struct Feed {
    pub(super) domain: Domain,
    pub(super) stream: String,
    registry: Mutex<Registry>,
    pub(super) metrics: Metrics,
    position_gauge: metrics::Gauge,
    pub(super) skipped: metrics::Counter,
}

impl std::fmt::Debug for Feed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Feed").field("domain", &self.domain).field("stream", &self.stream).finish_non_exhaustive()
    }
}

/// What registering decided.
pub(super) enum Start {
    Live,
    /// Read `(from, until]` from the stream, then go live.
    CatchUp {
        from: u64,
        until: u64,
    },
}

/// Who a subscription delivers to, and what.
#[derive(Debug, Clone)]
pub(super) struct Target {
    pub(super) client: Arc<ClientQueue>,
    pub(super) tenant: TenantId,
    pub(super) key: u64,
    pub(super) id_json: Arc<str>,
    pub(super) filter: Filter,
}

impl Feed {
    pub(super) fn new(domain: Domain, stream: String, position: u64, metrics: Metrics) -> Feed {
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

    /// The last stream position dispatched.
    pub(super) fn position(&self) -> u64 {
        self.lock().position
    }

    /// Hands one stream message to the matching subscriptions. `event` is `None` for a message
    /// that is not a readable event: its position still counts.
    pub(super) fn dispatch(&self, position: u64, event: Option<Arc<FeedEvent>>) {
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
    pub(super) fn register(&self, target: &Target, id: &str, from: Option<u64>) -> Start {
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
    pub(super) fn go_live(&self, tenant: TenantId, key: u64) {
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
    pub(super) fn remove(&self, tenant: TenantId, key: u64) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::decode;
    use crate::event::tests::envelope;
    use tokio::sync::mpsc;

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
