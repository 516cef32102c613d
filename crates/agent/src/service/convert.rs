//! Requests into domain values and domain values into replies: every field parsed once, each
//! failure named by its field.

use std::str::FromStr;

use cim_aggregate::{AsOf, Executed};
use cim_core::AggregateId;
use cim_proto::agent as pb;
use cim_runtime::edge::timestamp;

use crate::agent::Agent;
use crate::error::ServiceError;
use crate::names::{Names, parse_names, strings};

pub fn id(field: &str, s: &str) -> Result<AggregateId, ServiceError> {
    AggregateId::from_str(s).map_err(|e| ServiceError::invalid(field, e.to_string()))
}

/// A client-chosen id, or a new one when the client left it empty.
pub fn new_id(field: &str, s: &str) -> Result<AggregateId, ServiceError> {
    if s.is_empty() { Ok(AggregateId::new()) } else { id(field, s) }
}

pub fn names(field: &str, raw: &[String]) -> Result<Names, ServiceError> {
    parse_names(field, raw).map_err(|(field, e)| ServiceError::invalid(field, e.to_string()))
}

pub fn respond(done: Executed) -> pb::CommandResponse {
    pb::CommandResponse {
        id: done.aggregate_id.to_string(),
        version: done.version,
        event_ids: done.event_ids.iter().map(ToString::to_string).collect(),
        replayed: done.replayed,
    }
}

/// An agent as folded from its history. Its load is not part of it (tasks are their own
/// aggregates), so `running_tasks` is 0.
pub fn agent_as_of(id: AggregateId, as_of: &AsOf<Agent>) -> pb::Agent {
    let a = &as_of.state;
    pb::Agent {
        agent_id: id.to_string(),
        name: a.name.clone(),
        agent_type: a.agent_type.map(|t| t.as_str().to_owned()).unwrap_or_default(),
        owner: a.owner.clone(),
        state: a.state.as_str().to_owned(),
        capabilities: strings(&a.capabilities),
        permissions: strings(&a.permissions),
        tools: strings(&a.tools),
        model: a.model.as_ref().map(|m| pb::ModelConfiguration {
            provider: m.provider.to_string(),
            model: m.model.clone(),
            parameters: Some(cim_proto::json::json_to_struct(&m.parameters)),
        }),
        system_prompt: a.system_prompt.clone(),
        max_concurrent_tasks: a.max_concurrent_tasks,
        running_tasks: 0,
        version: as_of.version,
        created_at: Some(timestamp(as_of.created_at)),
        updated_at: Some(timestamp(as_of.updated_at)),
    }
}
