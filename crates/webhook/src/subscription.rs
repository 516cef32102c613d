//! The subscription aggregate: what to watch (a subject filter and an optional condition), where
//! to send it (a URL), and its lifecycle. Pure rules; the kit's executor runs them.
//!
//! pending -> active (handshake passed); active -> disabled; pending | disabled -> active;
//! any -> deleted, after which nothing applies.

use cim_aggregate::Aggregate;
use cim_aggregate::expr::Expr;
use cim_core::{Domain, ErrorCode, FieldViolation};
use serde::{Deserialize, Serialize};

use crate::events::*;

#[cfg(test)]
mod tests;

pub const AGGREGATE_TYPE: &str = "subscription";

const NAME_MAX: usize = 200;
const URL_MAX: usize = 2_048;
const REASON_MAX: usize = 1_000;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SubscriptionState {
    #[default]
    Pending,
    Active,
    Disabled,
    Deleted,
}

impl SubscriptionState {
    pub const NAMES: &'static [&'static str] = &["pending", "active", "disabled", "deleted"];

    pub fn as_str(self) -> &'static str {
        match self {
            SubscriptionState::Pending => "pending",
            SubscriptionState::Active => "active",
            SubscriptionState::Disabled => "disabled",
            SubscriptionState::Deleted => "deleted",
        }
    }
}

#[derive(Debug, Clone)]
pub enum SubscriptionCommand {
    Register {
        name: String,
        filter: String,
        condition: Option<String>,
        url: String,
    },
    /// The edge ran the handshake and the receiver allowed `allowed_origin`.
    Activate {
        allowed_origin: String,
    },
    Disable {
        reason: String,
    },
    Delete,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SubscriptionError {
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error("the subscription is deleted: nothing applies to it")]
    Deleted,
    #[error("the subscription is {0} already")]
    Already(&'static str),
}

impl cim_runtime::status::HasErrorCode for SubscriptionError {
    fn code(&self) -> ErrorCode {
        match self {
            SubscriptionError::Invalid { .. } => ErrorCode::InvalidArgument,
            _ => ErrorCode::FailedPrecondition,
        }
    }

    fn violations(&self) -> Vec<FieldViolation> {
        match self {
            SubscriptionError::Invalid { field, reason } => vec![FieldViolation::new(field.clone(), reason.clone())],
            _ => vec![],
        }
    }
}

fn invalid(field: &str, reason: impl Into<String>) -> SubscriptionError {
    SubscriptionError::Invalid { field: field.to_owned(), reason: reason.into() }
}

/// A target URL CIM may call: http or https with a host, no `user:password@` (credentials
/// would be logged and shown with the subscription; the signature authenticates CIM instead),
/// no fragment.
pub fn check_url(raw: &str) -> Result<reqwest::Url, String> {
    if raw.is_empty() || raw.len() > URL_MAX {
        return Err(format!("1 to {URL_MAX} bytes: an http:// or https:// URL"));
    }
    let url = reqwest::Url::parse(raw).map_err(|e| format!("not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("scheme {:?}: only http and https", url.scheme()));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("no host".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not contain user:password@ (the signature authenticates CIM)".into());
    }
    if url.fragment().is_some() {
        return Err("must not contain a #fragment".into());
    }
    Ok(url)
}

/// The filter's domain, or why it is not a filter of the subject grammar.
pub fn check_filter(filter: &str) -> Result<Domain, String> {
    cim_core::subject::filter_domain(filter)
}

/// A subscription, folded from its events.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Subscription {
    pub name: String,
    pub filter: String,
    pub condition: Option<String>,
    pub url: String,
    pub state: SubscriptionState,
    pub reason: String,
}

impl Aggregate for Subscription {
    const DOMAIN: Domain = Domain::Webhook;
    const AGGREGATE_TYPE: &'static str = AGGREGATE_TYPE;
    type Command = SubscriptionCommand;
    type Event = SubscriptionEvent;
    type Error = SubscriptionError;
    type Services = ();

    fn command_name(command: &SubscriptionCommand) -> &'static str {
        match command {
            SubscriptionCommand::Register { .. } => "register_subscription",
            SubscriptionCommand::Activate { .. } => "activate_subscription",
            SubscriptionCommand::Disable { .. } => "disable_subscription",
            SubscriptionCommand::Delete => "delete_subscription",
        }
    }

    fn creates(command: &SubscriptionCommand) -> bool {
        matches!(command, SubscriptionCommand::Register { .. })
    }

    fn decide(&self, command: &SubscriptionCommand, (): &()) -> Result<Vec<SubscriptionEvent>, SubscriptionError> {
        use SubscriptionCommand as C;
        use SubscriptionState as S;
        if self.state == S::Deleted {
            return Err(SubscriptionError::Deleted);
        }
        Ok(vec![match command {
            C::Register { name, filter, condition, url } => {
                if name.len() > NAME_MAX || !cim_core::names::is_printable(name) {
                    return Err(invalid("name", format!("at most {NAME_MAX} bytes of printable text")));
                }
                check_filter(filter).map_err(|e| invalid("filter", e))?;
                if let Some(source) = condition {
                    Expr::parse(source).map_err(|e| invalid("condition", e))?;
                }
                check_url(url).map_err(|e| invalid("url", e))?;
                SubscriptionEvent::Registered(SubscriptionRegistered {
                    name: name.clone(),
                    filter: filter.clone(),
                    condition: condition.clone(),
                    url: url.clone(),
                })
            }
            C::Activate { allowed_origin } => {
                if self.state == S::Active {
                    return Err(SubscriptionError::Already("active"));
                }
                SubscriptionEvent::Activated(SubscriptionActivated { allowed_origin: allowed_origin.clone() })
            }
            C::Disable { reason } => {
                if reason.len() > REASON_MAX || !cim_core::names::is_printable(reason) {
                    return Err(invalid("reason", format!("at most {REASON_MAX} bytes of printable text")));
                }
                if self.state == S::Disabled {
                    return Err(SubscriptionError::Already("disabled"));
                }
                SubscriptionEvent::Disabled(SubscriptionDisabled { reason: reason.clone() })
            }
            C::Delete => SubscriptionEvent::Deleted(SubscriptionDeleted {}),
        }])
    }

    fn apply(&mut self, event: &SubscriptionEvent) {
        match event {
            SubscriptionEvent::Registered(e) => {
                self.name = e.name.clone();
                self.filter = e.filter.clone();
                self.condition = e.condition.clone();
                self.url = e.url.clone();
                self.state = SubscriptionState::Pending;
            }
            SubscriptionEvent::Activated(_) => {
                self.state = SubscriptionState::Active;
                self.reason.clear();
            }
            SubscriptionEvent::Disabled(e) => {
                self.state = SubscriptionState::Disabled;
                self.reason = e.reason.clone();
            }
            SubscriptionEvent::Deleted(_) => self.state = SubscriptionState::Deleted,
        }
    }
}
