//! The definition aggregate: a named DAG of steps whose versions are identified by content id.
//! A revision with the content of the current version changes nothing and is refused, so every
//! version in the history is a different definition.

use cim_aggregate::Aggregate;
use cim_core::{Domain, ErrorCode, FieldViolation};
use serde::{Deserialize, Serialize};

use crate::events::{DefinitionCreated, DefinitionEvent, DefinitionRevised};
use crate::spec::Definition;

pub const AGGREGATE_TYPE: &str = "workflow_definition";

/// A definition already parsed and validated at the edge ([`Definition::parse`]).
#[derive(Debug, Clone)]
pub enum DefinitionCommand {
    Create(Definition),
    Revise(Definition),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DefinitionError {
    #[error("the definition is already at this content ({0})")]
    Unchanged(String),
}

impl cim_runtime::status::HasErrorCode for DefinitionError {
    fn code(&self) -> ErrorCode {
        ErrorCode::FailedPrecondition
    }

    fn violations(&self) -> Vec<FieldViolation> {
        vec![]
    }
}

/// A definition's state: its versions' content ids, oldest first, and the current body.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkflowDefinition {
    pub versions: Vec<String>,
    pub current: Option<Definition>,
}

impl WorkflowDefinition {
    pub fn content_id(&self) -> Option<&str> {
        self.versions.last().map(String::as_str)
    }
}

impl Aggregate for WorkflowDefinition {
    const DOMAIN: Domain = Domain::Workflow;
    const AGGREGATE_TYPE: &'static str = AGGREGATE_TYPE;
    type Command = DefinitionCommand;
    type Event = DefinitionEvent;
    type Error = DefinitionError;
    type Services = ();

    fn command_name(command: &DefinitionCommand) -> &'static str {
        match command {
            DefinitionCommand::Create(_) => "create_definition",
            DefinitionCommand::Revise(_) => "revise_definition",
        }
    }

    fn creates(command: &DefinitionCommand) -> bool {
        matches!(command, DefinitionCommand::Create(_))
    }

    fn decide(&self, command: &DefinitionCommand, _: &()) -> Result<Vec<DefinitionEvent>, DefinitionError> {
        Ok(vec![match command {
            DefinitionCommand::Create(d) => {
                DefinitionEvent::Created(DefinitionCreated { content_id: d.content_id(), definition: d.clone() })
            }
            DefinitionCommand::Revise(d) => {
                let content_id = d.content_id();
                if self.content_id() == Some(content_id.as_str()) {
                    return Err(DefinitionError::Unchanged(content_id));
                }
                DefinitionEvent::Revised(DefinitionRevised { content_id, definition: d.clone() })
            }
        }])
    }

    fn apply(&mut self, event: &DefinitionEvent) {
        let (content_id, definition) = match event {
            DefinitionEvent::Created(e) => (&e.content_id, &e.definition),
            DefinitionEvent::Revised(e) => (&e.content_id, &e.definition),
        };
        self.versions.push(content_id.clone());
        self.current = Some(definition.clone());
    }
}
