//! `ConnectAgent`: a worker announces its agent (`hello`), is welcomed, and its stream then carries
//! heartbeats, progress, results and response chunks in; assignments, cancellations and
//! conversation messages out. Each result is answered (`reply`); a refusal never ends the stream.
//! When the stream ends, however it ends, the agent goes offline (unless a newer stream of the
//! same agent replaced this one) and what it held lapses back to the queue.

use std::sync::Arc;

use chrono::Utc;
use cim_aggregate::ExecutorError;
use cim_core::{AggregateId, ErrorCode};
use cim_proto::agent as pb;
use cim_proto::agent::worker_message::Kind as In;
use cim_runtime::edge::{Caller, json};
use cim_runtime::status::{HasErrorCode, into_status};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::feed::Connected;
use super::session::{OUTBOUND, Outbound, Session};
use super::{Dispatcher, dispatcher, queue, wire};
use crate::agent::{AgentCommand, AgentState};
use crate::error::ServiceError;
use crate::metrics::CONNECTED_WORKERS;
use crate::task::{TaskCommand, TaskError, TaskResult};

pub type DispatchStream = ReceiverStream<Result<pb::DispatchMessage, Status>>;

fn status(code: ErrorCode, message: String) -> Status {
    cim_proto::status::error_status(code, message, &[])
}

/// Whether a refused task command means the agent does not hold the task (any more): its slot
/// is free, and working on it is wasted.
fn not_held(e: &ExecutorError<TaskError>) -> bool {
    matches!(e, ExecutorError::Rule(rule) if rule.code() == ErrorCode::FailedPrecondition)
        || matches!(e, ExecutorError::NotFound(..))
}

impl Dispatcher {
    /// Accepts a worker stream: reads `hello`, checks the agent, registers the session (ending an
    /// older stream of the same agent) and answers `welcome`.
    pub async fn connect(
        self: &Arc<Self>,
        req: Request<Streaming<pb::WorkerMessage>>,
    ) -> Result<Response<DispatchStream>, Status> {
        let caller = Caller::from_metadata(req.metadata()).map_err(|e| into_status(&ServiceError::from(e)))?;
        let mut inbound = req.into_inner();
        let wait = self.options.heartbeat_timeout;
        let first = tokio::time::timeout(wait, inbound.message())
            .await
            .map_err(|_| status(ErrorCode::DeadlineExceeded, format!("no hello within {} ms", wait.as_millis())))??;
        let Some(In::Hello(hello)) = first.and_then(|m| m.kind) else {
            return Err(into_status(&ServiceError::invalid("hello", "the first message must be hello")));
        };
        let (tx, rx) = mpsc::channel(OUTBOUND);
        let session = self.accept(caller, hello, tx).await.map_err(|e| into_status(&e))?;
        let forwarding = self.serve_forwarded(&session).await;
        self.announce(&Connected { tenant: session.tenant, agent: session.agent, session: session.id }).await;
        // A new agent here may take what waits.
        self.backlogs.changed(session.tenant);
        tokio::spawn(self.clone().read(session, inbound, forwarding));
        self.wake();
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn accept(&self, caller: Caller, hello: pb::Hello, out: Outbound) -> Result<Arc<Session>, ServiceError> {
        let agent = wire::id("hello.agent_id", &hello.agent_id)?;
        let tenant = caller.tenant;
        let row = queue::agent(&self.pool, tenant, agent)
            .await?
            .ok_or_else(|| ServiceError::not_found(format!("agent {agent} not found")))?;
        match row.state {
            AgentState::Active => {}
            // It went offline when its last stream was lost: its worker is back.
            AgentState::Offline => {
                self.agents.execute(&caller, agent, &AgentCommand::Activate, &Default::default()).await?;
            }
            state => {
                return Err(ServiceError::precondition(format!(
                    "agent {agent} is {}: only an active (or offline) agent connects",
                    state.as_str()
                )));
            }
        }
        let mut claimed = Vec::with_capacity(hello.running_task_ids.len());
        for (i, raw) in hello.running_task_ids.iter().enumerate() {
            claimed.push(wire::id(&format!("hello.running_task_ids[{i}]"), raw)?);
        }
        let session = Arc::new(Session::new(caller, agent, hello.free_slots, row.limit, out));
        let now = Utc::now();
        let mut adopted = Vec::new();
        let mut foreign = Vec::new();
        for task in claimed {
            match queue::holding(&self.pool, tenant, task).await? {
                Some((Some(holder), Some(until))) if holder == agent && until > now => {
                    session.hold(task, until);
                    adopted.push(task);
                }
                _ => foreign.push(task),
            }
        }
        session.push(wire::welcome(session.id, &self.options, &adopted));
        for task in foreign {
            session.push(wire::cancellation(task, wire::cause::NOT_HELD, "the agent does not hold this task"));
        }
        let replaced = self.sessions.lock().ok().and_then(|mut s| s.insert((tenant, agent), session.clone()));
        match replaced {
            Some(old) => old.replace(),
            None => metrics::gauge!(CONNECTED_WORKERS).increment(1.0),
        }
        tracing::info!(%agent, %tenant, session = %session.id, adopted = adopted.len(), "worker connected");
        Ok(session)
    }

    /// Reads the worker's messages until the stream ends, is ended, or goes silent.
    /// Messages forwarded from other replicas are served until then (`_forwarding`).
    async fn read(
        self: Arc<Self>,
        session: Arc<Session>,
        mut inbound: Streaming<pb::WorkerMessage>,
        _forwarding: Option<super::relay::Forwarding>,
    ) {
        let silence = self.options.heartbeat_timeout;
        let last_word: Option<Status> = loop {
            let next = tokio::select! {
                ended = session.ended() => break Some(ended),
                next = tokio::time::timeout(silence, inbound.message()) => next,
            };
            match next {
                Err(_) => {
                    let why = format!("no message from the worker for {} ms", silence.as_millis());
                    break Some(status(ErrorCode::DeadlineExceeded, why));
                }
                // A message that could not be decoded, or the worker's side broke (then nobody
                // hears the status).
                Ok(Err(e)) => {
                    tracing::debug!(agent = %session.agent, error = %e, "worker stream broke");
                    break Some(e);
                }
                // The worker closed its side: ours closes too.
                Ok(Ok(None)) => break None,
                Ok(Ok(Some(message))) => self.on_message(&session, message).await,
            }
        };
        let why = last_word.as_ref().map_or("the worker's stream ended", Status::message).to_owned();
        self.close(&session, &why).await;
        session.finish(last_word).await;
    }

    async fn on_message(self: &Arc<Self>, session: &Arc<Session>, message: pb::WorkerMessage) {
        match message.kind {
            None => session.push(wire::task_reply("", Err(ServiceError::invalid("kind", "required")))),
            Some(In::Hello(_)) => session.push(wire::task_reply(
                "",
                Err(ServiceError::invalid("hello", "sent once, as the stream's first message")),
            )),
            Some(In::Heartbeat(h)) => self.heartbeat(session, h).await,
            Some(In::Progress(p)) => self.progress(session, p).await,
            Some(In::Completion(c)) => {
                let outcome = self.complete(session, &c).await;
                session.push(wire::task_reply(&c.task_id, outcome));
            }
            Some(In::Failure(f)) => {
                let outcome = self.fail(session, &f).await;
                session.push(wire::task_reply(&f.task_id, outcome));
            }
            Some(In::ResponseChunk(c)) => self.on_chunk(session, c),
            Some(In::ResponseCompleted(c)) => self.on_response_completed(session, c).await,
            Some(In::ResponseFailed(f)) => self.on_response_failed(session, f).await,
        }
    }

    async fn complete(&self, session: &Session, c: &pb::TaskCompletion) -> Result<(), ServiceError> {
        use pb::task_completion::Result as Outcome;
        let task = wire::id("task_id", &c.task_id)?;
        let result = match c.result.clone() {
            Some(Outcome::ResultValue(value)) => TaskResult::Value(json("result_value", Some(value))?),
            Some(Outcome::ResultCid(cid)) => TaskResult::Document(cid),
            None => return Err(ServiceError::invalid("result", "required: result_value or result_cid")),
        };
        self.finish_task(session, task, TaskCommand::Complete { agent: session.agent, result, now: Utc::now() }).await
    }

    async fn fail(&self, session: &Session, f: &pb::TaskFailure) -> Result<(), ServiceError> {
        let task = wire::id("task_id", &f.task_id)?;
        let command =
            TaskCommand::Fail { agent: session.agent, error: f.error.clone(), retryable: f.retryable, now: Utc::now() };
        self.finish_task(session, task, command).await
    }

    /// Records the holder's outcome of a task. The aggregate refuses a holder that is not (or no
    /// longer) the task's: its lease lapsed and the task went to another agent, or it finished.
    async fn finish_task(
        &self,
        session: &Session,
        task: AggregateId,
        command: TaskCommand,
    ) -> Result<(), ServiceError> {
        match self.tasks.execute(&session.caller, task, &command, &Default::default()).await {
            Ok(_) => {
                session.release(task);
                self.slot_freed(session.tenant);
                Ok(())
            }
            Err(e) => {
                if not_held(&e) && session.release(task) {
                    self.slot_freed(session.tenant);
                }
                Err(e.into())
            }
        }
    }

    /// After the stream ended: the session goes, the responses it owed fail, and the agent goes
    /// offline unless a newer stream of it took over.
    async fn close(&self, session: &Session, why: &str) {
        let key = (session.tenant, session.agent);
        let current = self.sessions.lock().is_ok_and(|mut sessions| {
            let current = sessions.get(&key).is_some_and(|s| s.id == session.id);
            if current {
                sessions.remove(&key);
            }
            current
        });
        self.fail_open_responses(session, why).await;
        if current {
            metrics::gauge!(CONNECTED_WORKERS).decrement(1.0);
        }
        if !current || session.was_replaced() {
            tracing::info!(agent = %session.agent, session = %session.id, "replaced worker stream closed");
            return;
        }
        let reason = format!("its worker stream ended: {why}");
        let offline = AgentCommand::GoOffline { reason: reason.chars().take(crate::agent::REASON_MAX / 4).collect() };
        match self.agents.execute(&dispatcher(session.tenant), session.agent, &offline, &Default::default()).await {
            Ok(_) => tracing::info!(agent = %session.agent, %why, "worker disconnected; agent offline"),
            // Suspended or decommissioned meanwhile: it stays what it is.
            Err(e) if e.code() == ErrorCode::FailedPrecondition => {
                tracing::info!(agent = %session.agent, %why, "worker disconnected");
            }
            Err(e) => tracing::warn!(agent = %session.agent, error = %e, "could not mark the agent offline"),
        }
    }
}
