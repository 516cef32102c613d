//! A worker stream spoken from the test itself, message by message: for what the example
//! program never does on purpose (bad input, racing another agent, going silent).

#![allow(dead_code)] // each test uses part of it

use std::sync::{Arc, Mutex};
use std::time::Duration;

use cim_core::TenantId;
use cim_proto::agent as pb;
use cim_proto::agent::dispatch_message::Kind as Out;
use cim_proto::agent::worker_message::Kind as In;
use cim_testkit::domain::req;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

use super::Client;

const PATIENCE: Duration = Duration::from_secs(20);

pub struct Stream {
    tx: mpsc::Sender<pb::WorkerMessage>,
    rx: Streaming<pb::DispatchMessage>,
    pub welcome: pb::Welcome,
    /// The task ids heartbeats name (their leases are kept).
    keep: Arc<Mutex<Vec<String>>>,
    heartbeats: tokio::task::JoinHandle<()>,
}

pub fn hello(agent: &str) -> pb::Hello {
    pb::Hello { agent_id: agent.into(), ..Default::default() }
}

/// Opens a stream with `first` as its first message.
pub async fn open_with(c: &mut Client, tenant: TenantId, first: In) -> Result<Stream, Status> {
    let (tx, outgoing) = mpsc::channel(64);
    tx.send(pb::WorkerMessage { kind: Some(first) }).await.unwrap();
    let mut rx = c.connect_agent(req(tenant, ReceiverStream::new(outgoing))).await?.into_inner();
    let welcome = match tokio::time::timeout(PATIENCE, rx.message()).await.expect("an answer")? {
        Some(pb::DispatchMessage { kind: Some(Out::Welcome(w)) }) => w,
        other => panic!("expected welcome, got {other:?}"),
    };
    // Heartbeats as often as the service asks, naming the tasks the test keeps.
    let keep = Arc::new(Mutex::new(Vec::new()));
    let every = Duration::from_millis(welcome.heartbeat_interval_ms.into());
    let (beat, kept) = (tx.clone(), keep.clone());
    let heartbeats = tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            let task_ids = kept.lock().unwrap().clone();
            if beat.send(pb::WorkerMessage { kind: Some(In::Heartbeat(pb::Heartbeat { task_ids })) }).await.is_err() {
                break;
            }
        }
    });
    Ok(Stream { tx, rx, welcome, keep, heartbeats })
}

pub async fn open(c: &mut Client, tenant: TenantId, hello: pb::Hello) -> Result<Stream, Status> {
    open_with(c, tenant, In::Hello(hello)).await
}

impl Stream {
    pub async fn send(&self, kind: In) {
        self.tx.send(pb::WorkerMessage { kind: Some(kind) }).await.expect("the stream is open");
    }

    /// Keeps (or, leaving them out, lets lapse) the leases of these tasks.
    pub fn keep(&self, tasks: &[&str]) {
        *self.keep.lock().unwrap() = tasks.iter().map(|t| (*t).to_owned()).collect();
    }

    /// Stops heartbeats: the stream goes silent.
    pub fn go_silent(&self) {
        self.heartbeats.abort();
    }

    pub async fn next(&mut self) -> Out {
        match tokio::time::timeout(PATIENCE, self.rx.message()).await.expect("a message in time") {
            Ok(Some(pb::DispatchMessage { kind: Some(kind) })) => kind,
            other => panic!("expected a message, got {other:?}"),
        }
    }

    pub async fn assignment(&mut self) -> pb::Assignment {
        match self.next().await {
            Out::Assignment(a) => a,
            other => panic!("expected an assignment, got {other:?}"),
        }
    }

    pub async fn reply(&mut self) -> pb::Reply {
        match self.next().await {
            Out::Reply(r) => r,
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    /// The refusal's code and first field of the next reply (empty code: accepted).
    pub async fn answer(&mut self) -> (String, String) {
        let refusal = self.reply().await.refusal.unwrap_or_default();
        (refusal.code, refusal.violations.first().map(|v| v.field.clone()).unwrap_or_default())
    }

    pub async fn cancellation(&mut self) -> pb::TaskCancellation {
        match self.next().await {
            Out::Cancellation(c) => c,
            other => panic!("expected a cancellation, got {other:?}"),
        }
    }

    /// How the stream ended (the service's last word).
    pub async fn ended(mut self) -> Status {
        loop {
            match tokio::time::timeout(PATIENCE, self.rx.message()).await.expect("the stream ends in time") {
                Ok(Some(_)) => continue,
                Ok(None) => return Status::ok(""),
                Err(status) => return status,
            }
        }
    }

    /// Closes the worker's side: the service ends the stream.
    pub fn close(self) {
        self.heartbeats.abort();
    }
}

pub fn complete(task: &str, result: serde_json::Value) -> In {
    In::Completion(pb::TaskCompletion {
        task_id: task.into(),
        result: Some(pb::task_completion::Result::ResultValue(cim_proto::json::json_to_struct(
            result.as_object().expect("a JSON object"),
        ))),
    })
}
