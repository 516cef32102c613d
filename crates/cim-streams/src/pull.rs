//! The consuming loop every JetStream reader in CIM runs: bind a pull consumer, hand each
//! message to a handler (a bounded number at once; or, with [`PullLoop::run_batches`], the
//! messages already arrived together, in stream order), and after any interruption (the stream
//! not created yet, a lost connection, a handler that cannot go on) bind again with backoff,
//! until shutdown. The event store's inbox consumer, the gateway's cache invalidators, the
//! workflow listener and the webhook intake are handlers on it; only what they do differs.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use async_nats::jetstream::consumer::pull;
use async_nats::jetstream::{self, Message};
use cim_core::{Domain, SubjectPrefix};
use cim_runtime::Shutdown;
use futures::FutureExt;
use futures::stream::{FuturesUnordered, Stream, StreamExt};

use crate::ConsumerMetrics;

/// Which consumer the loop pulls from.
#[derive(Debug, Clone)]
pub enum Binding {
    /// A durable consumer (created if missing): every instance that binds it shares its work,
    /// and acknowledged messages are not seen again.
    Durable(pull::Config),
    /// This instance's own ordered consumer: every message, in order, none acknowledged.
    Ordered(pull::OrderedConfig),
}

/// A consumer kept running.
#[derive(Debug, Clone)]
pub struct PullLoop {
    /// For logs.
    pub name: String,
    pub stream: String,
    pub binding: Binding,
    /// Messages handled at once; 1 handles them strictly one after another.
    pub concurrency: usize,
    /// Lag and redeliveries are recorded here, from each message's delivery info.
    pub metrics: Option<ConsumerMetrics>,
}

/// What the loop tells its owner about its binding, before any message of it is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    /// Bound to a durable consumer that was there: it goes on from its acknowledged position.
    Resumed,
    /// Bound to a consumer this bind created: the first start, an ordered consumer, or a durable
    /// whose stream was lost (and rebuilt) with it. What its deliver policy skips was never
    /// seen: a reader that must not miss a change forgets what it knew.
    Created,
    /// The binding is gone until the next bind.
    Lost,
}

type Messages = Pin<Box<dyn Stream<Item = Result<Message, String>> + Send>>;

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

impl PullLoop {
    /// A durable consumer `name` on the whole of one domain's stream, explicitly acknowledged,
    /// handled one message (or, run with [`PullLoop::run_batches`], one batch) at a time in
    /// stream order by each instance (the workflow listener's and the webhook intake's
    /// consumers). Across instances, and after an instance died holding a message, order holds
    /// only with [`PullLoop::one_outstanding`]; without it, the owner restores order itself (the
    /// webhook sender waits for the consumer's ack floor).
    pub fn domain_durable(name: &str, prefix: &SubjectPrefix, domain: Domain, ack_wait: Duration) -> PullLoop {
        PullLoop {
            name: name.to_owned(),
            stream: prefix.stream_name(domain),
            binding: Binding::Durable(pull::Config {
                durable_name: Some(name.to_owned()),
                filter_subject: prefix.domain_events(domain),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ack_wait,
                ..Default::default()
            }),
            concurrency: 1,
            metrics: Some(ConsumerMetrics::new(name)),
        }
    }

    /// At most one message of a durable consumer unacknowledged at a time, across every instance
    /// bound to it: the server hands out the next message only once the last one is acknowledged,
    /// or, when its holder died, after redelivering it (at the ack wait). So no replica and no
    /// restarted instance handles an aggregate's later event before an earlier one. The price is
    /// one round trip to the server per message, and a pause of up to the ack wait after a crash.
    pub fn one_outstanding(mut self) -> PullLoop {
        if let Binding::Durable(config) = &mut self.binding {
            config.max_ack_pending = 1;
        }
        self
    }

    /// Runs until `stop`. `live` is told each time the consumer is bound (and awaited before the
    /// binding's first message) and each time it is lost (a reader that must not miss messages,
    /// like a cache, stops trusting itself in between). A handler's `Err` means "cannot go on
    /// with this binding": the loop binds again (unacknowledged messages are redelivered).
    pub async fn run<H, F, L, G>(&self, js: &jetstream::Context, stop: &Shutdown, live: L, handle: H)
    where
        H: Fn(Message) -> F,
        F: Future<Output = Result<(), String>>,
        L: Fn(Bound) -> G,
        G: Future<Output = ()>,
    {
        let handle = &handle;
        self.keep_bound(js, stop, live, move |messages| self.consume(messages, stop, handle)).await
    }

    /// [`PullLoop::run`] handing over batches: each the next message and those after it that
    /// have already arrived (at most `max`), in stream order, one batch at a time. A batch never
    /// waits to fill, so a message alone is handed over as soon as it arrives. For a handler
    /// whose cost is per call rather than per message (one statement and one commit for the
    /// whole batch: the webhook intake). `concurrency` does not apply.
    pub async fn run_batches<H, F, L, G>(
        &self,
        js: &jetstream::Context,
        stop: &Shutdown,
        live: L,
        max: usize,
        handle: H,
    ) where
        H: Fn(Vec<Message>) -> F,
        F: Future<Output = Result<(), String>>,
        L: Fn(Bound) -> G,
        G: Future<Output = ()>,
    {
        let handle = &handle;
        self.keep_bound(js, stop, live, move |messages| self.consume_batches(messages, stop, max.max(1), handle)).await
    }

    /// Binds, consumes with `consume` until it fails, and binds again with backoff, until `stop`.
    async fn keep_bound<C, CF, L, G>(&self, js: &jetstream::Context, stop: &Shutdown, live: L, consume: C)
    where
        C: Fn(Messages) -> CF,
        CF: Future<Output = Result<(), String>>,
        L: Fn(Bound) -> G,
        G: Future<Output = ()>,
    {
        let mut backoff = FIRST_BACKOFF;
        while !stop.is_triggered() {
            let outcome = tokio::select! {
                bound = self.bind(js) => match bound {
                    Ok((messages, bound)) => {
                        live(bound).await;
                        backoff = FIRST_BACKOFF;
                        let outcome = consume(messages).await;
                        live(Bound::Lost).await;
                        outcome
                    }
                    Err(e) => Err(e),
                },
                () = stop.wait() => return,
            };
            if let Err(e) = outcome {
                tracing::warn!(consumer = %self.name, stream = %self.stream, error = %e, ?backoff, "consumer interrupted; binding again");
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = stop.wait() => return,
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }

    async fn bind(&self, js: &jetstream::Context) -> Result<(Messages, Bound), String> {
        let stream = js.get_stream(&self.stream).await.map_err(|e| format!("stream {}: {e}", self.stream))?;
        let consumer = |e: &dyn std::fmt::Display| format!("consumer {} on {}: {e}", self.name, self.stream);
        let pulling = |e: &dyn std::fmt::Display| format!("pulling from {}: {e}", self.stream);
        Ok(match &self.binding {
            Binding::Durable(config) => {
                let name = config.durable_name.clone().unwrap_or_else(|| self.name.clone());
                // Any failure to find it counts as creating it: forgetting once too often is safe.
                let (c, bound) = match stream.get_consumer::<pull::Config>(&name).await {
                    // Made by an earlier version with other limits: brought to this one's (the
                    // server edits these in place; acknowledged positions stay).
                    Ok(mut c) if !same_limits(&c.cached_info().config, config) => {
                        c = stream.create_consumer(config.clone()).await.map_err(|e| consumer(&e))?;
                        (c, Bound::Resumed)
                    }
                    Ok(c) => (c, Bound::Resumed),
                    Err(_) => (stream.create_consumer(config.clone()).await.map_err(|e| consumer(&e))?, Bound::Created),
                };
                let messages = c.messages().await.map_err(|e| pulling(&e))?;
                (Box::pin(messages.map(|m| m.map_err(|e| e.to_string()))), bound)
            }
            Binding::Ordered(config) => {
                let c = stream.create_consumer(config.clone()).await.map_err(|e| consumer(&e))?;
                let messages = c.messages().await.map_err(|e| pulling(&e))?;
                (Box::pin(messages.map(|m| m.map_err(|e| e.to_string()))), Bound::Created)
            }
        })
    }

    async fn consume<H, F>(&self, mut messages: Messages, stop: &Shutdown, handle: &H) -> Result<(), String>
    where
        H: Fn(Message) -> F,
        F: Future<Output = Result<(), String>>,
    {
        let mut handling = FuturesUnordered::new();
        loop {
            tokio::select! {
                next = messages.next(), if handling.len() < self.concurrency.max(1) => match next {
                    Some(Ok(message)) => {
                        self.observe(&message);
                        handling.push(handle(message));
                    }
                    Some(Err(e)) => return Err(format!("receiving: {e}")),
                    None => return Err("the subscription ended".into()),
                },
                Some(handled) = handling.next(), if !handling.is_empty() => handled?,
                () = stop.wait() => break,
            }
        }
        // Stopping: the messages being handled finish (and are acknowledged) within the host's
        // grace; those fetched but not handled yet go back at once.
        self.give_back(&mut messages).await;
        while let Some(handled) = handling.next().await {
            handled?;
        }
        Ok(())
    }

    async fn consume_batches<H, F>(
        &self,
        mut messages: Messages,
        stop: &Shutdown,
        max: usize,
        handle: &H,
    ) -> Result<(), String>
    where
        H: Fn(Vec<Message>) -> F,
        F: Future<Output = Result<(), String>>,
    {
        loop {
            // A batch being handled finishes before stop is looked at (as a handled message
            // does in `consume`); stop comes first once it is triggered.
            let first = tokio::select! {
                biased;
                () = stop.wait() => break,
                next = messages.next() => next,
            };
            let mut batch = match first {
                Some(Ok(message)) => vec![message],
                Some(Err(e)) => return Err(format!("receiving: {e}")),
                None => return Err("the subscription ended".into()),
            };
            // What has arrived already, without waiting for more; an interruption found here
            // ends the binding after the batch before it is handled.
            let mut interrupted = None;
            while batch.len() < max {
                match messages.next().now_or_never() {
                    Some(Some(Ok(message))) => batch.push(message),
                    Some(Some(Err(e))) => {
                        interrupted = Some(format!("receiving: {e}"));
                        break;
                    }
                    Some(None) => {
                        interrupted = Some("the subscription ended".to_owned());
                        break;
                    }
                    None => break,
                }
            }
            batch.iter().for_each(|message| self.observe(message));
            handle(batch).await?;
            if let Some(e) = interrupted {
                return Err(e);
            }
        }
        self.give_back(&mut messages).await;
        Ok(())
    }

    /// Messages fetched but not handled go back at once, not after the ack wait (a replica
    /// taking over, or the same service started again, gets them now).
    async fn give_back(&self, messages: &mut Messages) {
        while let Some(Some(Ok(message))) = messages.next().now_or_never() {
            if matches!(self.binding, Binding::Durable(_)) {
                let _ = message.ack_with(jetstream::AckKind::Nak(None)).await;
            }
        }
    }

    fn observe(&self, message: &Message) {
        if let (Some(metrics), Ok(info)) = (&self.metrics, message.info()) {
            metrics.lag.set(info.pending as f64);
            if info.delivered > 1 {
                metrics.redeliveries.increment(1);
            }
        }
    }
}

/// Whether a durable consumer's editable limits are what this loop binds with (a setting left at
/// its default is the server's to choose).
fn same_limits(found: &jetstream::consumer::Config, wanted: &pull::Config) -> bool {
    let chosen = |wanted: i64, found: i64| wanted == 0 || wanted == found;
    chosen(wanted.max_ack_pending, found.max_ack_pending)
        && (wanted.ack_wait.is_zero() || wanted.ack_wait == found.ack_wait)
}
