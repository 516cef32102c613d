//! Conversations across replicas, over core NATS beside the domain's event subjects (chunks are
//! not events, so no stream keeps them):
//!
//! - Every piece of a response, and its end, is published on the message's response subject
//!   ([`SubjectPrefix::agent_response`]) by the replica whose worker answers. The websocket's
//!   followers read them there, and so does a caller that reached another replica.
//! - The replica holding an agent's worker stream answers on
//!   `<prefix>.agent.converse.<tenant>.<agent>` for as long as it holds it: a `SendMessage` that
//!   reached a replica without the worker is forwarded there. No responder means no worker is
//!   connected anywhere (an agent has one stream across replicas).
//! - A forwarded caller that goes away says so on `<prefix>.agent.stop.<tenant>.<message>`; the
//!   holder tells the worker to stop, as for a caller of its own.
//!
//! Pieces are best effort (core NATS): a follower that misses some still sees the recorded
//! `ResponseCompleted` event with the whole content on the domain stream.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cim_core::{Actor, AggregateId, CorrelationId, Domain, ErrorCode, FieldViolation, SubjectPrefix, TenantId};
use cim_proto::agent as pb;
use cim_proto::agent::response_chunk::End;
use cim_runtime::edge::Caller;
use cim_runtime::status::{HasErrorCode, into_status};
use futures::StreamExt;
use prost::Message as _;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tonic::Status;
use uuid::Uuid;

use super::Dispatcher;
use super::conversation::{CHUNKS, Opening};
use super::session::Session;
use crate::agent::ResponseErrorType;
use crate::error::ServiceError;
use crate::queries;

/// Pieces waiting for the publisher; past that NATS cannot keep up and pieces are dropped.
const PIECES: usize = 4096;

/// Beyond the holder's own response timeout, how long a forwarding replica waits for an end
/// before it gives its caller one.
const END_GRACE: Duration = Duration::from_secs(5);

/// A caller that went away, or never does.
pub(super) type Gone = Pin<Box<dyn Future<Output = ()> + Send>>;

/// NATS as the conversations use it.
pub(super) struct Bus {
    pub client: async_nats::Client,
    pub prefix: SubjectPrefix,
    pub pieces: Pieces,
}

impl Bus {
    /// The bus and its publisher, which runs until every [`Pieces`] handle is gone.
    pub fn new(client: async_nats::Client, prefix: SubjectPrefix) -> (Self, impl Future<Output = ()> + Send) {
        let (tx, mut rx) = mpsc::channel::<(String, Bytes)>(PIECES);
        let publisher = client.clone();
        let publish = async move {
            while let Some((subject, payload)) = rx.recv().await {
                if let Err(e) = publisher.publish(subject, payload).await {
                    tracing::warn!(error = %e, "could not publish a response piece");
                }
            }
        };
        (Self { client, prefix, pieces: Pieces(tx) }, publish)
    }

    fn converse_subject(&self, tenant: &TenantId, agent: &AggregateId) -> String {
        format!("{}.{}.converse.{tenant}.{agent}", self.prefix, Domain::Agent)
    }

    fn stop_subject(&self, tenant: &TenantId, message: &Uuid) -> String {
        format!("{}.{}.stop.{tenant}.{message}", self.prefix, Domain::Agent)
    }
}

/// The way into the publisher: pieces leave in the order they were given, without the worker's
/// reader ever waiting on NATS.
#[derive(Clone)]
pub(super) struct Pieces(mpsc::Sender<(String, Bytes)>);

impl Pieces {
    pub fn publish(&self, subject: &str, piece: &pb::ResponseChunk) {
        if self.0.try_send((subject.to_owned(), piece.encode_to_vec().into())).is_err() {
            tracing::warn!(%subject, "response piece dropped: NATS is not keeping up");
        }
    }
}

/// A message forwarded to the replica holding the worker, with the caller as its edge read it.
#[derive(Debug, Serialize, Deserialize)]
struct Forwarded {
    tenant: TenantId,
    actor: Actor,
    correlation: Option<CorrelationId>,
    agent: AggregateId,
    message: Uuid,
    conversation: Uuid,
    content: String,
}

/// The holder's answer to a forwarded message: taken (pieces follow on the bus), or refused.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Taken {
    #[serde(default)]
    refused: Option<Refused>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Refused {
    code: ErrorCode,
    message: String,
    #[serde(default)]
    violations: Vec<FieldViolation>,
}

/// Ends the forwarding service of a worker stream when the stream's reader is done.
pub(super) struct Forwarding(tokio::task::AbortHandle);

impl Drop for Forwarding {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Dispatcher {
    /// Answers messages forwarded to `session`'s agent from other replicas until the returned
    /// guard is dropped. `None` without NATS (tests of one replica) or when subscribing fails:
    /// callers elsewhere then hear that no worker is connected.
    pub(super) async fn serve_forwarded(self: &Arc<Self>, session: &Arc<Session>) -> Option<Forwarding> {
        let bus = self.bus.get()?;
        let subject = bus.converse_subject(&session.tenant, &session.agent);
        let subscribed = bus.client.subscribe(subject).await;
        // Flushed, so that a caller told the worker connected finds it from any replica.
        let mut forwarded = match subscribed {
            Ok(sub) => match bus.client.flush().await {
                Ok(()) => sub,
                Err(e) => {
                    tracing::warn!(error = %e, "could not subscribe to forwarded messages");
                    return None;
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "could not subscribe to forwarded messages");
                return None;
            }
        };
        let (dispatcher, session) = (self.clone(), session.clone());
        let serving = tokio::spawn(async move {
            while let Some(request) = forwarded.next().await {
                tokio::spawn(dispatcher.clone().on_forwarded(session.clone(), request));
            }
        });
        Some(Forwarding(serving.abort_handle()))
    }

    async fn on_forwarded(self: Arc<Self>, session: Arc<Session>, request: async_nats::Message) {
        let Some(bus) = self.bus.get() else { return };
        let Some(reply_to) = request.reply.clone() else { return };
        let outcome = match serde_json::from_slice::<Forwarded>(&request.payload) {
            Ok(f) => self.take_forwarded(bus, session, f).await,
            Err(e) => Err(ServiceError::invalid("forwarded", e.to_string())),
        };
        let taken = Taken {
            refused: outcome.err().map(|e| Refused {
                code: e.code(),
                message: into_status(&e).message().to_owned(),
                violations: e.violations(),
            }),
        };
        let payload = serde_json::to_vec(&taken).unwrap_or_default();
        if let Err(e) = bus.client.publish(reply_to, payload.into()).await {
            tracing::warn!(error = %e, "could not answer a forwarded message");
        }
    }

    async fn take_forwarded(
        self: &Arc<Self>,
        bus: &Bus,
        session: Arc<Session>,
        f: Forwarded,
    ) -> Result<(), ServiceError> {
        let caller = Caller { tenant: f.tenant, actor: f.actor, correlation: f.correlation };
        if caller.tenant != session.tenant || f.agent != session.agent {
            return Err(ServiceError::invalid("forwarded", "sent to another agent's stream"));
        }
        let profile = queries::get_agent(&self.pool, caller.tenant, f.agent).await?;
        // The caller elsewhere going away: its replica says so on the stop subject.
        let stop = bus.client.subscribe(bus.stop_subject(&caller.tenant, &f.message)).await;
        let gone: Gone = match stop {
            Ok(mut stop) => Box::pin(async move {
                stop.next().await;
            }),
            Err(e) => {
                tracing::warn!(error = %e, "cannot hear a forwarded caller go away");
                Box::pin(std::future::pending())
            }
        };
        let opening =
            Opening { agent: f.agent, message: f.message, conversation: f.conversation, content: f.content, profile };
        self.open(session, &caller, opening, None, gone).await
    }

    /// `SendMessage` at a replica that does not hold the agent's worker stream: forwarded to the
    /// one that does; the pieces come back over the bus.
    pub(super) async fn forward(
        &self,
        caller: &Caller,
        agent: AggregateId,
        message: Uuid,
        conversation: Uuid,
        content: String,
    ) -> Result<mpsc::Receiver<Result<pb::ResponseChunk, Status>>, Status> {
        let no_worker = || into_status(&ServiceError::precondition(format!("agent {agent} has no worker connected")));
        let Some(bus) = self.bus.get() else { return Err(no_worker()) };
        let unavailable = |e: &dyn std::fmt::Display| {
            into_status(&ServiceError::unavailable(format!("cannot reach the agent's worker over NATS: {e}")))
        };
        // Subscribed before the request, so the first piece finds it.
        let pieces = bus
            .client
            .subscribe(bus.prefix.agent_response(&caller.tenant, &agent, &message))
            .await
            .map_err(|e| unavailable(&e))?;
        let forwarded = Forwarded {
            tenant: caller.tenant,
            actor: caller.actor.clone(),
            correlation: caller.correlation,
            agent,
            message,
            conversation,
            content,
        };
        let payload = serde_json::to_vec(&forwarded).map_err(|e| unavailable(&e))?;
        let reply = bus.client.request(bus.converse_subject(&caller.tenant, &agent), payload.into()).await;
        let taken = match reply {
            Ok(reply) => serde_json::from_slice::<Taken>(&reply.payload).map_err(|e| unavailable(&e))?,
            Err(e) if e.kind() == async_nats::client::RequestErrorKind::NoResponders => return Err(no_worker()),
            Err(e) => return Err(unavailable(&e)),
        };
        if let Some(refused) = taken.refused {
            return Err(cim_proto::status::error_status(refused.code, refused.message, &refused.violations));
        }
        let (tx, rx) = mpsc::channel(CHUNKS);
        let stop = (bus.client.clone(), bus.stop_subject(&caller.tenant, &message));
        let wait = self.options.response_timeout + END_GRACE;
        tokio::spawn(pass_on(pieces, tx, stop, wait, message));
        Ok(rx)
    }
}

/// Gives a forwarded caller the pieces as they come, until the end; says so on the stop subject
/// if the caller goes away, and ends the response itself if no end comes in `wait`.
async fn pass_on(
    mut pieces: async_nats::Subscriber,
    tx: mpsc::Sender<Result<pb::ResponseChunk, Status>>,
    (client, stop): (async_nats::Client, String),
    wait: Duration,
    message: Uuid,
) {
    let deadline = tokio::time::sleep(wait);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            piece = pieces.next() => {
                let Some(piece) = piece else { break };
                let Ok(piece) = pb::ResponseChunk::decode(piece.payload) else { continue };
                let last = piece.end.is_some();
                if tx.send(Ok(piece)).await.is_err() || last {
                    break;
                }
            }
            _ = tx.closed() => {
                if let Err(e) = client.publish(stop, Bytes::new()).await {
                    tracing::warn!(error = %e, "could not tell the worker's replica the caller went away");
                }
                return;
            }
            _ = &mut deadline => {
                let why = format!("no end of the response within {} ms", wait.as_millis());
                let failed = pb::ResponseFailed {
                    message_id: message.to_string(),
                    error_type: ResponseErrorType::Timeout.as_str().to_owned(),
                    error: why,
                    recoverable: true,
                };
                let last = pb::ResponseChunk { message_id: message.to_string(), end: Some(End::Failed(failed)), ..Default::default() };
                let _ = tx.send(Ok(last)).await;
                return;
            }
        }
    }
}
