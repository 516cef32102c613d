//! `SendMessage`: a message to an ai agent is recorded (MessageSent), forwarded over the agent's
//! stream, and answered live: each chunk the worker sends goes straight to the caller and is
//! kept only in memory; the end is recorded once (ResponseCompleted or ResponseFailed). Every
//! piece is also published on the bus ([`super::relay`]), for the websocket's followers and for a
//! caller that reached another replica, whose message was forwarded here.
//!
//! The response belongs to the worker's stream, not to the caller's call: a caller who goes away
//! gets the worker told to stop (`response_cancellation`), and whatever end the worker then
//! sends is still recorded. A worker that disconnects, or does not end the response within the
//! response timeout, gets it recorded as failed.

use std::sync::Arc;
use std::time::Instant;

use cim_core::{AggregateId, ErrorCode};
use cim_proto::agent as pb;
use cim_proto::agent::dispatch_message::Kind;
use cim_proto::agent::response_chunk::End;
use cim_runtime::edge::Caller;
use cim_runtime::status::{HasErrorCode, into_status};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::relay::{Gone, Pieces};
use super::session::Session;
use super::{Dispatcher, dispatcher, wire};
use crate::agent::{AgentCommand, CONTENT_MAX, Conversation, FinishReason, ResponseErrorType, TokenUsage};
use crate::error::ServiceError;
use crate::queries;

pub type ResponseStream = ReceiverStream<Result<pb::ResponseChunk, Status>>;

/// Chunks waiting for a slow caller; past that the caller counts as gone.
pub(super) const CHUNKS: usize = 1024;

/// A message about to be forwarded to the worker.
pub(super) struct Opening {
    pub agent: AggregateId,
    pub message: Uuid,
    pub conversation: Uuid,
    pub content: String,
    pub profile: pb::Agent,
}

/// A response the worker owes, and the caller waiting for it.
pub(super) struct Pending {
    message: Uuid,
    conversation: Uuid,
    /// The caller's stream when it called this replica; `None`: it called another one, which
    /// reads the bus.
    caller: Option<mpsc::Sender<Result<pb::ResponseChunk, Status>>>,
    /// Where every piece is published too, and the message's subject there.
    bus: Option<(Pieces, String)>,
    content: String,
    started: Instant,
    /// Whether the worker was told to stop.
    cancelled: bool,
    /// Dropped with the response, which stops its watcher.
    _done: oneshot::Sender<()>,
}

impl Pending {
    /// Passes a piece on; whether the caller here is gone (or cannot keep up).
    fn emit(&self, piece: pb::ResponseChunk) -> bool {
        if let Some((pieces, subject)) = &self.bus {
            pieces.publish(subject, &piece);
        }
        self.caller.as_ref().is_some_and(|caller| caller.try_send(Ok(piece)).is_err())
    }

    /// The caller's last chunk.
    fn end(self, end: End) {
        let last = pb::ResponseChunk {
            message_id: self.message.to_string(),
            conversation_id: self.conversation.to_string(),
            content: String::new(),
            end: Some(end),
        };
        self.emit(last);
    }
}

fn failed(message: Uuid, error_type: ResponseErrorType, error: &str, recoverable: bool) -> End {
    End::Failed(pb::ResponseFailed {
        message_id: message.to_string(),
        error_type: error_type.as_str().to_owned(),
        error: error.to_owned(),
        recoverable,
    })
}

fn cancellation(message: Uuid, reason: &str) -> Kind {
    Kind::ResponseCancellation(pb::ResponseCancellation { message_id: message.to_string(), reason: reason.to_owned() })
}

impl Dispatcher {
    pub async fn send_message(
        self: &Arc<Self>,
        req: Request<pb::SendMessageRequest>,
    ) -> Result<Response<ResponseStream>, Status> {
        let caller = Caller::from_metadata(req.metadata()).map_err(|e| into_status(&ServiceError::from(e)))?;
        let chunks = self.converse(caller, req.into_inner()).await?;
        Ok(Response::new(ReceiverStream::new(chunks)))
    }

    async fn converse(
        self: &Arc<Self>,
        caller: Caller,
        r: pb::SendMessageRequest,
    ) -> Result<mpsc::Receiver<Result<pb::ResponseChunk, Status>>, Status> {
        let refused = |e: ServiceError| into_status(&e);
        let agent = wire::id("agent_id", &r.agent_id).map_err(refused)?;
        let message = wire::uuid_or_new("message_id", &r.message_id).map_err(refused)?;
        let conversation = wire::uuid_or_new("conversation_id", &r.conversation_id).map_err(refused)?;
        let profile = queries::get_agent(&self.pool, caller.tenant, agent).await.map_err(refused)?;
        let Some(session) = self.session(caller.tenant, agent) else {
            return self.forward(&caller, agent, message, conversation, r.content).await;
        };
        let (tx, rx) = mpsc::channel(CHUNKS);
        let watched = tx.clone();
        let gone: Gone = Box::pin(async move { watched.closed().await });
        let opening = Opening { agent, message, conversation, content: r.content, profile };
        self.open(session, &caller, opening, Some(tx), gone).await.map_err(refused)?;
        Ok(rx)
    }

    /// Records the message and forwards it to the worker of `session`; the pieces go to `local`
    /// (a caller here) and the bus. `gone` resolves if the caller goes away.
    pub(super) async fn open(
        self: &Arc<Self>,
        session: Arc<Session>,
        caller: &Caller,
        opening: Opening,
        local: Option<mpsc::Sender<Result<pb::ResponseChunk, Status>>>,
        gone: Gone,
    ) -> Result<(), ServiceError> {
        let Opening { agent, message, conversation, content, profile } = opening;
        let no_worker = || ServiceError::precondition(format!("agent {agent} has no worker connected"));
        let (done, finished) = oneshot::channel();
        let bus =
            self.bus.get().map(|bus| (bus.pieces.clone(), bus.prefix.agent_response(&caller.tenant, &agent, &message)));
        let pending = Pending {
            message,
            conversation,
            caller: local,
            bus,
            content: String::new(),
            started: Instant::now(),
            cancelled: false,
            _done: done,
        };
        // Opened before the message is recorded, so the worker's first chunk finds it.
        if !session.open_response(message, pending) {
            return Err(if session.is_closing() {
                no_worker()
            } else {
                ServiceError::Agent(cim_aggregate::ExecutorError::Rule(crate::agent::AgentError::MessageExists(
                    message,
                )))
            });
        }
        let send = Conversation::Send { message_id: message, conversation_id: conversation, content: content.clone() };
        if let Err(e) = self.agents.execute(caller, agent, &AgentCommand::Converse(send), &Default::default()).await {
            session.take_response(message);
            return Err(e.into());
        }
        if session.is_closing() {
            // The stream closed while the message was being recorded: its close may have found
            // nothing recorded to fail yet, so it is failed here (refused if the close did).
            let why = "the agent's worker disconnected";
            self.record(&session, message, ResponseErrorType::NetworkError, why).await;
            return Err(no_worker());
        }
        session.push(Kind::Message(pb::ConversationMessage {
            message_id: message.to_string(),
            conversation_id: conversation.to_string(),
            content,
            system_prompt: profile.system_prompt,
            model: profile.model,
        }));
        tokio::spawn(self.clone().watch(session, message, gone, finished));
        Ok(())
    }

    /// Follows a response until it ends: tells the worker to stop if the caller goes away, and
    /// fails the response if it outlives the response timeout.
    async fn watch(
        self: Arc<Self>,
        session: Arc<Session>,
        message: Uuid,
        gone: Gone,
        mut finished: oneshot::Receiver<()>,
    ) {
        let deadline = tokio::time::Instant::now() + self.options.response_timeout;
        tokio::select! {
            _ = &mut finished => return,
            _ = tokio::time::sleep_until(deadline) => {}
            _ = gone => {
                self.stop_response(&session, message, "the caller went away");
                tokio::select! {
                    _ = &mut finished => return,
                    _ = tokio::time::sleep_until(deadline) => {}
                }
            }
        }
        if let Some(pending) = session.take_response(message) {
            let why = format!("no response within {} ms", self.options.response_timeout.as_millis());
            self.record(&session, message, ResponseErrorType::Timeout, &why).await;
            if !pending.cancelled {
                session.push(cancellation(message, &why));
            }
            pending.end(failed(message, ResponseErrorType::Timeout, &why, true));
        }
    }

    /// Tells the worker to stop answering, once.
    fn stop_response(&self, session: &Session, message: Uuid, reason: &str) {
        if session.with_response(message, |p| !std::mem::replace(&mut p.cancelled, true)) == Some(true) {
            session.push(cancellation(message, reason));
        }
    }

    /// A piece of a response: to the caller at once, and kept for the recorded whole.
    pub(super) fn on_chunk(&self, session: &Session, chunk: pb::ResponseChunk) {
        let outcome = wire::uuid("message_id", &chunk.message_id).and_then(|message| {
            let caller_gone = session
                .with_response(message, |p| {
                    if p.content.len() + chunk.content.len() > CONTENT_MAX {
                        return Err(ServiceError::invalid(
                            "content",
                            format!("a response is at most {CONTENT_MAX} bytes"),
                        ));
                    }
                    p.content.push_str(&chunk.content);
                    let piece = pb::ResponseChunk {
                        message_id: chunk.message_id.clone(),
                        conversation_id: p.conversation.to_string(),
                        content: chunk.content.clone(),
                        end: None,
                    };
                    Ok(p.emit(piece))
                })
                .ok_or_else(|| ServiceError::not_found(format!("no response is open for message {message}")))??;
            if caller_gone {
                self.stop_response(session, message, "the caller went away");
            }
            Ok(())
        });
        // Chunks are not answered unless refused.
        if outcome.is_err() {
            session.push(wire::response_reply(&chunk.message_id, outcome));
        }
    }

    pub(super) async fn on_response_completed(&self, session: &Session, done: pb::ResponseCompleted) {
        let outcome = async {
            let message = wire::uuid("message_id", &done.message_id)?;
            let finish_reason = FinishReason::parse(&done.finish_reason).ok_or_else(|| {
                ServiceError::invalid("finish_reason", format!("one of {}", FinishReason::NAMES.join(", ")))
            })?;
            let usage = done.token_usage.unwrap_or_default();
            let token_usage = TokenUsage {
                prompt_tokens: usage.prompt_tokens,
                completion_tokens: usage.completion_tokens,
                total_tokens: usage.total_tokens,
            };
            let (content, started) = session
                .with_response(message, |p| (p.content.clone(), p.started))
                .ok_or_else(|| ServiceError::not_found(format!("no response is open for message {message}")))?;
            let duration_ms = started.elapsed().as_millis() as u64;
            let step = Conversation::Complete { message_id: message, content, token_usage, finish_reason, duration_ms };
            let end = End::Completed(pb::ResponseCompleted {
                message_id: message.to_string(),
                finish_reason: finish_reason.as_str().to_owned(),
                token_usage: Some(usage),
                duration_ms,
            });
            self.end_response(session, message, step, end).await
        }
        .await;
        session.push(wire::response_reply(&done.message_id, outcome));
    }

    pub(super) async fn on_response_failed(&self, session: &Session, failure: pb::ResponseFailed) {
        let outcome = async {
            let message = wire::uuid("message_id", &failure.message_id)?;
            let error_type = ResponseErrorType::parse(&failure.error_type).ok_or_else(|| {
                ServiceError::invalid("error_type", format!("one of {}", ResponseErrorType::NAMES.join(", ")))
            })?;
            if session.with_response(message, |_| ()).is_none() {
                return Err(ServiceError::not_found(format!("no response is open for message {message}")));
            }
            let (error, recoverable) = (failure.error.clone(), failure.recoverable);
            let end = failed(message, error_type, &error, recoverable);
            let step = Conversation::Fail { message_id: message, error_type, error, recoverable };
            self.end_response(session, message, step, end).await
        }
        .await;
        session.push(wire::response_reply(&failure.message_id, outcome));
    }

    /// Records a response's end and gives the caller its last chunk. A malformed end is refused
    /// and the response stays open for a corrected one.
    async fn end_response(
        &self,
        session: &Session,
        message: Uuid,
        step: Conversation,
        end: End,
    ) -> Result<(), ServiceError> {
        let command = AgentCommand::Converse(step);
        match self.agents.execute(&session.caller, session.agent, &command, &Default::default()).await {
            Ok(_) => {
                if let Some(pending) = session.take_response(message) {
                    pending.end(end);
                }
                Ok(())
            }
            Err(e) => {
                // Ended already (timed out meanwhile), or the agent was decommissioned: nothing
                // will be recorded for it any more.
                if e.code() == ErrorCode::FailedPrecondition
                    && let Some(pending) = session.take_response(message)
                {
                    pending.end(failed(message, ResponseErrorType::Unknown, &e.to_string(), false));
                }
                Err(e.into())
            }
        }
    }

    /// Fails the responses a closed stream still owed.
    pub(super) async fn fail_open_responses(&self, session: &Session, why: &str) {
        let why = format!("the agent's worker disconnected: {why}");
        for pending in session.close_responses() {
            self.record(session, pending.message, ResponseErrorType::NetworkError, &why).await;
            let message = pending.message;
            pending.end(failed(message, ResponseErrorType::NetworkError, &why, true));
        }
    }

    /// Records a failure the service decided (the worker gave no end). One already recorded is
    /// no error: whoever recorded first ended the response.
    async fn record(&self, session: &Session, message: Uuid, error_type: ResponseErrorType, why: &str) {
        let error: String = why.chars().take(crate::agent::REASON_MAX / 4).collect();
        let step = Conversation::Fail { message_id: message, error_type, error, recoverable: true };
        let command = AgentCommand::Converse(step);
        match self.agents.execute(&dispatcher(session.tenant), session.agent, &command, &Default::default()).await {
            Ok(_) => {}
            Err(e) if e.code() == ErrorCode::FailedPrecondition => {
                tracing::debug!(%message, error = %e, "response already ended");
            }
            Err(e) => tracing::warn!(%message, error = %e, "could not record a failed response"),
        }
    }
}
