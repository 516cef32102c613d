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
//!
//! This file: the hub (every domain's feed) and subscribing. `registry`: one domain's feed and
//! the subscriptions it routes to; `live`: following a domain's stream; `catchup`: the stream
//! read a resume starts with.

mod catchup;
mod live;
mod registry;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_nats::jetstream;
use cim_core::{Domain, SubjectPrefix, TenantId};
use cim_runtime::Shutdown;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::protocol::{Filter, Refusal, error_frame};
use crate::queue::{ClientQueue, Outbound};
use catchup::CatchUp;
use registry::{Feed, Start, Target};

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct HubError(String);

/// The feeds of every domain, and subscribing to them.
pub struct Hub {
    js: jetstream::Context,
    prefix: SubjectPrefix,
    feeds: Vec<Arc<Feed>>,
    catchup: CatchUp,
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
                Err(e) if live::stream_missing(&e) => {
                    tracing::info!(%domain, stream = %name, "stream not created yet; its feed starts when it is");
                    0
                }
                Err(e) => return Err(HubError(format!("stream {name}: {e}"))),
            };
            feeds.push(Arc::new(Feed::new(domain, name, last, metrics.clone())));
        }
        Ok(Arc::new(Hub {
            catchup: CatchUp::new(js.clone(), prefix.clone()),
            js,
            prefix,
            feeds,
            next_key: AtomicU64::new(1),
        }))
    }

    /// Runs one domain's live feed until `stop`, re-creating its consumer after failures from
    /// the last position dispatched.
    pub async fn run_feed(self: Arc<Self>, domain: Domain, stop: Shutdown) {
        live::follow(&self.js, &self.prefix, self.feed(domain), &stop).await;
    }

    /// NATS itself and the subject prefix, for what is not in the streams.
    pub fn nats(&self) -> (async_nats::Client, &SubjectPrefix) {
        (self.js.client(), &self.prefix)
    }

    fn feed(&self, domain: Domain) -> &Arc<Feed> {
        // `feeds` is built from `Domain::ALL`, in order.
        let i = Domain::ALL.iter().position(|d| *d == domain).unwrap_or(0);
        &self.feeds[i]
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
            self.catchup.check_resumable(&feed, from).await?;
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
                r = hub.catchup.read_range(&feed, &target, from, until) => r,
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
}
