//! The worker stream's messages, built from domain values and read into them: every field read
//! once, each failure named by its field, as a unary call's would be.

use std::str::FromStr;

use chrono::{DateTime, Utc};
use cim_core::AggregateId;
use cim_proto::agent as pb;
use cim_proto::agent::dispatch_message::Kind;
use cim_runtime::edge::timestamp;
use cim_runtime::status::HasErrorCode;
use uuid::Uuid;

use super::queue::QueuedTask;
use crate::error::ServiceError;
use crate::names::strings;

pub(super) fn id(field: &str, s: &str) -> Result<AggregateId, ServiceError> {
    AggregateId::from_str(s).map_err(|e| ServiceError::invalid(field, e.to_string()))
}

/// A conversation's or a message's id: any UUID but the nil one.
pub(super) fn uuid(field: &str, s: &str) -> Result<Uuid, ServiceError> {
    match Uuid::try_parse(s) {
        Ok(id) if !id.is_nil() => Ok(id),
        _ => Err(ServiceError::invalid(field, "expected a UUID")),
    }
}

/// A client-chosen UUID, or a new one when the client left it empty.
pub(super) fn uuid_or_new(field: &str, s: &str) -> Result<Uuid, ServiceError> {
    if s.is_empty() { Ok(Uuid::now_v7()) } else { uuid(field, s) }
}

pub(super) fn welcome(session: Uuid, options: &super::DispatchOptions, adopted: &[AggregateId]) -> Kind {
    let ms = |d: std::time::Duration| u32::try_from(d.as_millis()).unwrap_or(u32::MAX);
    Kind::Welcome(pb::Welcome {
        session_id: session.to_string(),
        heartbeat_interval_ms: ms(options.heartbeat_interval),
        heartbeat_timeout_ms: ms(options.heartbeat_timeout),
        lease_ms: ms(options.lease),
        adopted_task_ids: adopted.iter().map(ToString::to_string).collect(),
    })
}

pub(super) fn assignment(task: &QueuedTask, lease_until: DateTime<Utc>, attempt: u32) -> Kind {
    Kind::Assignment(pb::Assignment {
        task_id: task.id.to_string(),
        required_capabilities: strings(&task.required_capabilities),
        payload: Some(cim_proto::json::json_to_struct(&task.payload)),
        priority: task.priority,
        lease_until: Some(timestamp(lease_until)),
        deadline: task.deadline.map(timestamp),
        attempt,
        correlation: task.correlation.clone(),
    })
}

/// Why a worker must stop working on a task (`pb::TaskCancellation.cause`).
pub(super) mod cause {
    pub const CANCELLED: &str = "cancelled";
    pub const TIMED_OUT: &str = "timed_out";
    pub const LEASE_LAPSED: &str = "lease_lapsed";
    pub const NOT_HELD: &str = "not_held";
}

pub(super) fn cancellation(task: AggregateId, cause: &str, reason: &str) -> Kind {
    Kind::Cancellation(pb::TaskCancellation {
        task_id: task.to_string(),
        cause: cause.to_owned(),
        reason: reason.to_owned(),
    })
}

/// A refusal as the worker reads it: the code and fields a unary call's status would carry. An
/// internal error's text stays in the log, as in a unary reply.
pub(super) fn refusal(e: &impl HasErrorCode) -> pb::Refusal {
    let code = e.code();
    let message = if code == cim_core::ErrorCode::Internal {
        tracing::error!(error = %e, "internal error on a worker stream");
        "internal error".to_owned()
    } else {
        e.to_string()
    };
    pb::Refusal {
        code: code.as_str().to_owned(),
        message,
        violations: e
            .violations()
            .into_iter()
            .map(|v| pb::FieldViolation { field: v.field, description: v.description })
            .collect(),
    }
}

/// The answer to a worker's message about a task: accepted, or refused with why.
pub(super) fn task_reply(task: &str, outcome: Result<(), ServiceError>) -> Kind {
    Kind::Reply(pb::Reply {
        task_id: task.to_owned(),
        message_id: String::new(),
        refusal: outcome.err().map(|e| refusal(&e)),
    })
}

/// The answer to a worker's message about a conversation response.
pub(super) fn response_reply(message: &str, outcome: Result<(), ServiceError>) -> Kind {
    Kind::Reply(pb::Reply {
        task_id: String::new(),
        message_id: message.to_owned(),
        refusal: outcome.err().map(|e| refusal(&e)),
    })
}
