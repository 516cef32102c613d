//! Conversations with an AI agent: a message is sent to an active AI agent, and its response is
//! recorded once, complete or failed. The chunks a response streams in are carried live to the
//! caller and never stored; only the whole response is an event.

use serde::{Deserialize, Serialize};

use uuid::Uuid;

use super::{Agent, AgentError, AgentState, REASON_MAX, invalid, named_enum};
use crate::events::{AgentEvent, MessageSent, ResponseCompleted, ResponseFailed};

/// A message's or a response's text (below the event store's payload limit with room to spare).
pub const CONTENT_MAX: usize = 256 * 1024;
/// Messages one agent may have open (sent, not yet answered) at once.
pub const PENDING_MAX: usize = 1_000;

named_enum!(
    /// Why the model stopped.
    FinishReason {
        Stop = "stop",
        Length = "length",
        ToolCalls = "tool_calls",
        ContentFilter = "content_filter",
    }
);

named_enum!(
    /// Why a response failed (the reference CIM's error types).
    ResponseErrorType {
        Timeout = "timeout",
        RateLimit = "rate_limit",
        AuthenticationError = "authentication_error",
        ModelUnavailable = "model_unavailable",
        ContentPolicy = "content_policy",
        InvalidRequest = "invalid_request",
        NetworkError = "network_error",
        Unknown = "unknown",
    }
);

/// One step of a conversation, as the agent aggregate takes it.
#[derive(Debug, Clone)]
pub enum Conversation {
    Send {
        message_id: Uuid,
        conversation_id: Uuid,
        content: String,
    },
    Complete {
        message_id: Uuid,
        content: String,
        token_usage: TokenUsage,
        finish_reason: FinishReason,
        duration_ms: u64,
    },
    Fail {
        message_id: Uuid,
        error_type: ResponseErrorType,
        error: String,
        recoverable: bool,
    },
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenUsage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
}

fn content(field: &'static str, s: &str) -> Result<(), AgentError> {
    super::check_text(s, CONTENT_MAX, true).map_err(|reason| invalid(field, reason))
}

pub(super) fn decide(agent: &Agent, step: &Conversation) -> Result<AgentEvent, AgentError> {
    use Conversation as C;
    let open = |message_id| agent.pending.get(message_id).copied().ok_or(AgentError::NoPendingMessage(*message_id));
    Ok(match step {
        C::Send { message_id, conversation_id, content: text } => {
            if !agent.is_ai() {
                return Err(AgentError::NotAi("messages"));
            }
            if agent.state != AgentState::Active {
                return Err(AgentError::NotActive(agent.state.as_str()));
            }
            if text.trim().is_empty() {
                return Err(invalid("content", "required"));
            }
            content("content", text)?;
            if agent.pending.contains_key(message_id) {
                return Err(AgentError::MessageExists(*message_id));
            }
            if agent.pending.len() >= PENDING_MAX {
                return Err(AgentError::TooManyPending(agent.pending.len()));
            }
            AgentEvent::MessageSent(MessageSent {
                message_id: *message_id,
                conversation_id: *conversation_id,
                content: text.clone(),
            })
        }
        C::Complete { message_id, content: text, token_usage, finish_reason, duration_ms } => {
            content("content", text)?;
            let sum = token_usage.prompt_tokens.checked_add(token_usage.completion_tokens);
            if sum != Some(token_usage.total_tokens) {
                return Err(invalid("token_usage.total_tokens", "must be prompt_tokens + completion_tokens"));
            }
            AgentEvent::ResponseCompleted(ResponseCompleted {
                message_id: *message_id,
                conversation_id: open(message_id)?,
                content: text.clone(),
                token_usage: *token_usage,
                finish_reason: *finish_reason,
                duration_ms: *duration_ms,
            })
        }
        C::Fail { message_id, error_type, error, recoverable } => {
            super::check_text(error, REASON_MAX, true).map_err(|reason| invalid("error", reason))?;
            AgentEvent::ResponseFailed(ResponseFailed {
                message_id: *message_id,
                conversation_id: open(message_id)?,
                error_type: *error_type,
                error: error.clone(),
                recoverable: *recoverable,
            })
        }
    })
}
