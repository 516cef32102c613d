//! The agent aggregate: a "mechanical substitute for a person" (human, AI, system or external)
//! with a lifecycle, capabilities routing matches, permissions, tools, an AI agent's model and
//! prompt, and its conversations. Pure rules; the kit's executor runs them.
//!
//! Lifecycle: deployed → active; active → suspended | offline; suspended | offline → active;
//! offline → suspended; any → decommissioned, after which nothing applies.

use std::collections::BTreeMap;

use cim_aggregate::Aggregate;
use cim_core::document::DocumentLimits;
use cim_core::{Domain, ErrorCode, FieldViolation};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::events::*;
use crate::names::{Name, Names};

mod conversation;
#[cfg(test)]
mod tests;

pub use conversation::{CONTENT_MAX, Conversation, FinishReason, ResponseErrorType, TokenUsage};

pub const AGGREGATE_TYPE: &str = "agent";

const NAME_MAX: usize = 200;
const OWNER_MAX: usize = 256;
const MODEL_MAX: usize = 200;
const PROMPT_MAX: usize = 64 * 1024;
pub(crate) const REASON_MAX: usize = 1_000;
pub const CAPABILITIES_MAX: usize = 64;
pub const PERMISSIONS_MAX: usize = 256;
pub const TOOLS_MAX: usize = 128;
/// A worker holding more tasks at once than this is a pool, which should register as several
/// agents so routing can spread load across them.
pub const CONCURRENCY_MAX: u32 = 1_000;
const MODEL_PARAMETERS: DocumentLimits = DocumentLimits { max_bytes: 16 * 1024, max_depth: 8 };

macro_rules! named_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($(#[$vmeta])* $variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            pub const NAMES: &'static [&'static str] = &[$($text),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }

            pub fn parse(s: &str) -> Option<$name> {
                Self::ALL.iter().copied().find(|v| v.as_str() == s)
            }
        }
    };
}
pub(crate) use named_enum;

named_enum!(
    /// What kind of substitute the agent is (the reference CIM's four).
    AgentType { Human = "human", Ai = "ai", System = "system", External = "external" }
);

named_enum!(
    /// Where an agent is in its life; only `active` agents are given work.
    #[derive(Default)]
    AgentState {
        #[default]
        Deployed = "deployed",
        Active = "active",
        Suspended = "suspended",
        Offline = "offline",
        Decommissioned = "decommissioned",
    }
);

impl AgentState {
    /// The lifecycle table (the module's comment draws it).
    pub fn may_become(self, to: AgentState) -> bool {
        use AgentState::*;
        matches!(
            (self, to),
            (Deployed | Suspended | Offline, Active) | (Active | Offline, Suspended) | (Active, Offline)
        ) || (self != Decommissioned && to == Decommissioned)
    }
}

/// Which model an AI agent runs, and how.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfiguration {
    /// `openai`, `anthropic`, `ollama`, ... (a name: dotted snake_case).
    pub provider: Name,
    /// The provider's model name (`gpt-4o`, `llama3:8b`).
    pub model: String,
    /// Provider settings (temperature, max_tokens, ...), a JSON object.
    #[serde(default)]
    pub parameters: Map<String, Value>,
}

#[derive(Debug, Clone)]
pub enum AgentCommand {
    Deploy { owner: String, name: String, agent_type: AgentType, max_concurrent_tasks: u32 },
    AssignModel(ModelConfiguration),
    ConfigurePrompt(String),
    UpdateCapabilities(Names),
    GrantPermissions(Names),
    RevokePermissions(Names),
    EnableTools(Names),
    DisableTools(Names),
    SetConcurrencyLimit(u32),
    Activate,
    Suspend { reason: String },
    GoOffline { reason: String },
    Decommission { reason: String },
    Converse(Conversation),
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AgentError {
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error("the agent is decommissioned: nothing applies to it")]
    Decommissioned,
    #[error("the agent is {from}; it cannot become {to}")]
    IllegalTransition { from: &'static str, to: &'static str },
    #[error("an AI agent cannot activate without a model configuration")]
    NoModel,
    #[error("only AI agents take {0}")]
    NotAi(&'static str),
    #[error("the agent is {0}: messages go to active agents only")]
    NotActive(&'static str),
    #[error("message {0} was already sent")]
    MessageExists(Uuid),
    #[error("message {0} awaits no response (unknown, or already answered)")]
    NoPendingMessage(Uuid),
    #[error("{0} messages await responses; at most that many may be open at once")]
    TooManyPending(usize),
    #[error("nothing to change: {0}")]
    Unchanged(String),
}

impl cim_runtime::status::HasErrorCode for AgentError {
    fn code(&self) -> ErrorCode {
        match self {
            AgentError::Invalid { .. } => ErrorCode::InvalidArgument,
            AgentError::MessageExists(_) => ErrorCode::AlreadyExists,
            _ => ErrorCode::FailedPrecondition,
        }
    }

    fn violations(&self) -> Vec<FieldViolation> {
        match self {
            AgentError::Invalid { field, reason } => vec![FieldViolation::new(field.clone(), reason.clone())],
            _ => vec![],
        }
    }
}

pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> AgentError {
    AgentError::Invalid { field: field.into(), reason: reason.into() }
}

/// Checks a text a person reads: bounded, and free of control and invisible formatting
/// characters (which would let a name look like another); line breaks and tabs only where the
/// text is prose (`multiline`).
pub(crate) fn check_text(s: &str, max: usize, multiline: bool) -> Result<(), String> {
    if s.len() > max {
        return Err(format!("{} bytes; at most {max}", s.len()));
    }
    let shown = if multiline { s.replace(['\n', '\t'], " ") } else { s.to_owned() };
    if !cim_core::names::is_printable(&shown) {
        return Err("must not contain control or invisible formatting characters".into());
    }
    Ok(())
}

fn text(field: &'static str, s: &str, max: usize, multiline: bool) -> Result<(), AgentError> {
    check_text(s, max, multiline).map_err(|reason| invalid(field, reason))
}

fn required(field: &'static str, s: &str, max: usize) -> Result<(), AgentError> {
    if s.trim().is_empty() {
        return Err(invalid(field, "required"));
    }
    text(field, s, max, false)
}

fn at_most(field: &'static str, names: &Names, max: usize) -> Result<(), AgentError> {
    if names.len() > max {
        return Err(invalid(field, format!("{} names; at most {max}", names.len())));
    }
    Ok(())
}

fn concurrency(n: u32) -> Result<(), AgentError> {
    if (1..=CONCURRENCY_MAX).contains(&n) {
        Ok(())
    } else {
        Err(invalid("max_concurrent_tasks", format!("from 1 to {CONCURRENCY_MAX}")))
    }
}

/// An agent's state, folded from its events.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Agent {
    pub owner: String,
    pub name: String,
    pub agent_type: Option<AgentType>,
    pub state: AgentState,
    pub capabilities: Names,
    pub permissions: Names,
    pub tools: Names,
    pub model: Option<ModelConfiguration>,
    pub system_prompt: String,
    pub max_concurrent_tasks: u32,
    /// Messages awaiting their response, with their conversation: a response completes once.
    pub pending: BTreeMap<Uuid, Uuid>,
}

impl Agent {
    fn is_ai(&self) -> bool {
        self.agent_type == Some(AgentType::Ai)
    }

    fn transition(&self, to: AgentState, reason: &str) -> Result<AgentTransition, AgentError> {
        text("reason", reason, REASON_MAX, true)?;
        if !self.state.may_become(to) {
            return Err(AgentError::IllegalTransition { from: self.state.as_str(), to: to.as_str() });
        }
        Ok(AgentTransition { previous_state: self.state, reason: reason.to_owned() })
    }

    /// The names of `change` that are not (`adding`) or are (removing) in `held` already; none
    /// is a no-op the caller hears about.
    fn changed(held: &Names, change: &Names, adding: bool, what: &str) -> Result<Names, AgentError> {
        let changed: Names = change.iter().filter(|n| held.contains(*n) != adding).cloned().collect();
        if changed.is_empty() {
            let state = if adding { "already" } else { "not" };
            return Err(AgentError::Unchanged(format!("every one of those {what} is {state} held")));
        }
        Ok(changed)
    }
}

impl Aggregate for Agent {
    const DOMAIN: Domain = Domain::Agent;
    const AGGREGATE_TYPE: &'static str = AGGREGATE_TYPE;
    type Command = AgentCommand;
    type Event = AgentEvent;
    type Error = AgentError;
    type Services = ();

    fn command_name(command: &AgentCommand) -> &'static str {
        use AgentCommand::*;
        match command {
            Deploy { .. } => "deploy_agent",
            AssignModel(_) => "assign_model_configuration",
            ConfigurePrompt(_) => "configure_system_prompt",
            UpdateCapabilities(_) => "update_capabilities",
            GrantPermissions(_) => "grant_permissions",
            RevokePermissions(_) => "revoke_permissions",
            EnableTools(_) => "enable_tools",
            DisableTools(_) => "disable_tools",
            SetConcurrencyLimit(_) => "set_concurrency_limit",
            Activate => "activate_agent",
            Suspend { .. } => "suspend_agent",
            GoOffline { .. } => "mark_agent_offline",
            Decommission { .. } => "decommission_agent",
            Converse(Conversation::Send { .. }) => "send_message",
            Converse(Conversation::Complete { .. }) => "complete_response",
            Converse(Conversation::Fail { .. }) => "fail_response",
        }
    }

    fn creates(command: &AgentCommand) -> bool {
        matches!(command, AgentCommand::Deploy { .. })
    }

    fn decide(&self, command: &AgentCommand, _: &()) -> Result<Vec<AgentEvent>, AgentError> {
        use AgentCommand as C;
        use AgentEvent as E;
        if self.state == AgentState::Decommissioned {
            return Err(AgentError::Decommissioned);
        }
        let event = match command {
            C::Deploy { owner, name, agent_type, max_concurrent_tasks } => {
                required("owner", owner, OWNER_MAX)?;
                required("name", name, NAME_MAX)?;
                concurrency(*max_concurrent_tasks)?;
                E::Deployed(AgentDeployed {
                    owner: owner.clone(),
                    name: name.clone(),
                    agent_type: *agent_type,
                    max_concurrent_tasks: *max_concurrent_tasks,
                })
            }
            C::AssignModel(model) => {
                if !self.is_ai() {
                    return Err(AgentError::NotAi("a model configuration"));
                }
                required("model.model", &model.model, MODEL_MAX)?;
                cim_core::document::check(&model.parameters, &MODEL_PARAMETERS)
                    .map_err(|e| invalid("model.parameters", e.to_string()))?;
                if self.model.as_ref() == Some(model) {
                    return Err(AgentError::Unchanged("the agent already has that model configuration".into()));
                }
                E::ModelConfigurationAssigned(ModelConfigurationAssigned { model: model.clone() })
            }
            C::ConfigurePrompt(prompt) => {
                if !self.is_ai() {
                    return Err(AgentError::NotAi("a system prompt"));
                }
                text("system_prompt", prompt, PROMPT_MAX, true)?;
                if *prompt == self.system_prompt {
                    return Err(AgentError::Unchanged("the system prompt is the same".into()));
                }
                E::SystemPromptConfigured(SystemPromptConfigured { prompt: prompt.clone() })
            }
            C::UpdateCapabilities(capabilities) => {
                at_most("capabilities", capabilities, CAPABILITIES_MAX)?;
                if *capabilities == self.capabilities {
                    return Err(AgentError::Unchanged("the capabilities are the same".into()));
                }
                E::CapabilitiesUpdated(CapabilitiesUpdated { capabilities: capabilities.clone() })
            }
            C::GrantPermissions(names) => {
                let permissions = Self::changed(&self.permissions, names, true, "permissions")?;
                at_most("permissions", &self.permissions.union(&permissions).cloned().collect(), PERMISSIONS_MAX)?;
                E::PermissionsGranted(PermissionsChanged { permissions })
            }
            C::RevokePermissions(names) => E::PermissionsRevoked(PermissionsChanged {
                permissions: Self::changed(&self.permissions, names, false, "permissions")?,
            }),
            C::EnableTools(names) => {
                let tools = Self::changed(&self.tools, names, true, "tools")?;
                at_most("tools", &self.tools.union(&tools).cloned().collect(), TOOLS_MAX)?;
                E::ToolsEnabled(ToolsChanged { tools })
            }
            C::DisableTools(names) => {
                E::ToolsDisabled(ToolsChanged { tools: Self::changed(&self.tools, names, false, "tools")? })
            }
            C::SetConcurrencyLimit(n) => {
                concurrency(*n)?;
                if *n == self.max_concurrent_tasks {
                    return Err(AgentError::Unchanged(format!("the limit is already {n}")));
                }
                E::ConcurrencyLimitSet(ConcurrencyLimitSet { max_concurrent_tasks: *n })
            }
            C::Activate => {
                let step = self.transition(AgentState::Active, "")?;
                if self.is_ai() && self.model.is_none() {
                    return Err(AgentError::NoModel);
                }
                E::Activated(step)
            }
            C::Suspend { reason } => E::Suspended(self.transition(AgentState::Suspended, reason)?),
            C::GoOffline { reason } => E::WentOffline(self.transition(AgentState::Offline, reason)?),
            C::Decommission { reason } => E::Decommissioned(self.transition(AgentState::Decommissioned, reason)?),
            C::Converse(step) => conversation::decide(self, step)?,
        };
        Ok(vec![event])
    }

    fn apply(&mut self, event: &AgentEvent) {
        use AgentEvent as E;
        match event {
            E::Deployed(e) => {
                self.owner = e.owner.clone();
                self.name = e.name.clone();
                self.agent_type = Some(e.agent_type);
                self.max_concurrent_tasks = e.max_concurrent_tasks;
            }
            E::ModelConfigurationAssigned(e) => self.model = Some(e.model.clone()),
            E::SystemPromptConfigured(e) => self.system_prompt = e.prompt.clone(),
            E::CapabilitiesUpdated(e) => self.capabilities = e.capabilities.clone(),
            E::PermissionsGranted(e) => self.permissions.extend(e.permissions.iter().cloned()),
            E::PermissionsRevoked(e) => self.permissions.retain(|p| !e.permissions.contains(p)),
            E::ToolsEnabled(e) => self.tools.extend(e.tools.iter().cloned()),
            E::ToolsDisabled(e) => self.tools.retain(|t| !e.tools.contains(t)),
            E::ConcurrencyLimitSet(e) => self.max_concurrent_tasks = e.max_concurrent_tasks,
            E::Activated(_) => self.state = AgentState::Active,
            E::Suspended(_) => self.state = AgentState::Suspended,
            E::WentOffline(_) => self.state = AgentState::Offline,
            E::Decommissioned(_) => {
                self.state = AgentState::Decommissioned;
                // Nothing will answer them now.
                self.pending.clear();
            }
            E::MessageSent(e) => {
                self.pending.insert(e.message_id, e.conversation_id);
            }
            E::ResponseCompleted(e) => {
                self.pending.remove(&e.message_id);
            }
            E::ResponseFailed(e) => {
                self.pending.remove(&e.message_id);
            }
        }
    }
}
