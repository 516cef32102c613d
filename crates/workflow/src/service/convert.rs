//! Requests into domain values and domain values into replies: every field parsed once, each
//! failure named by its field.

use std::str::FromStr;

use cim_aggregate::Executed;
use cim_core::{AggregateId, EventEnvelope};
use cim_proto::json::json_to_struct;
use cim_proto::workflow as pb;
use cim_runtime::edge::timestamp;
use tonic::metadata::MetadataMap;

use crate::error::ServiceError;
use crate::instance::{Person, Workflow};

pub fn id(field: &str, s: &str) -> Result<AggregateId, ServiceError> {
    AggregateId::from_str(s).map_err(|e| ServiceError::invalid(field, e.to_string()))
}

/// A client-chosen id, or a new one when the client left it empty.
pub fn new_id(field: &str, s: &str) -> Result<AggregateId, ServiceError> {
    if s.is_empty() { Ok(AggregateId::new()) } else { id(field, s) }
}

pub fn roles(md: &MetadataMap) -> Vec<String> {
    let text = md.get(cim_runtime::edge::ROLES_HEADER).and_then(|v| v.to_str().ok()).unwrap_or_default();
    text.split(',').map(str::trim).filter(|r| !r.is_empty()).map(str::to_owned).collect()
}

pub fn person(actor: &cim_core::Actor, roles: Vec<String>) -> Person {
    Person { actor: actor.to_string(), roles }
}

pub fn respond(done: Executed, content_id: String) -> pb::CommandResponse {
    pb::CommandResponse {
        id: done.aggregate_id.to_string(),
        version: done.version,
        event_ids: done.event_ids.iter().map(ToString::to_string).collect(),
        replayed: done.replayed,
        content_id,
    }
}

/// An instance's state with the row's identity and times (`summary`).
pub fn workflow(state: &Workflow, summary: pb::WorkflowSummary) -> pb::Workflow {
    let steps = state
        .steps
        .iter()
        .map(|s| pb::Step {
            step_id: s.spec.id.clone(),
            kind: s.spec.kind.as_str().to_owned(),
            status: s.status.as_str().to_owned(),
            depends_on: s.spec.depends_on.clone(),
            attempts: s.attempts,
            assignee: s.assignee.clone().unwrap_or_default(),
            error: s.error.clone(),
            due_at: s.due_at().map(timestamp),
        })
        .collect();
    pb::Workflow {
        instance_id: summary.instance_id,
        definition_id: state.definition_id.map(|d| d.to_string()).unwrap_or_default(),
        content_id: state.content_id.clone(),
        name: state.name.clone(),
        status: state.status.as_str().to_owned(),
        context: Some(json_to_struct(&state.context)),
        steps,
        error: state.error.clone(),
        correlation_id: summary.correlation_id,
        version: summary.version,
        created_at: summary.created_at,
        updated_at: summary.updated_at,
    }
}

pub fn history_event(e: &EventEnvelope) -> pb::HistoryEvent {
    let payload = match &e.payload {
        serde_json::Value::Object(map) => map.clone(),
        _ => serde_json::Map::new(),
    };
    pb::HistoryEvent {
        sequence: e.sequence,
        event_id: e.event_id.to_string(),
        event_type: e.event_type.as_str().to_owned(),
        occurred_at: Some(timestamp(e.occurred_at)),
        actor: e.actor.to_string(),
        payload: Some(json_to_struct(&payload)),
        hash: e.hash.to_string(),
        prev_hash: e.prev_hash.to_string(),
    }
}
