//! The subscription's events (`cim_core::domain_events!`). The signing secret is not among them:
//! events are published to the tenant's stream and kept forever, so the secret lives in its own
//! table (`webhook_secrets`) and only the fact of registration is an event.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubscriptionRegistered {
    pub name: String,
    /// The subject filter (`cim_core::subject::filter_domain`'s grammar).
    pub filter: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<String>,
    pub url: String,
}

/// The receiver answered the validation handshake: deliveries start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubscriptionActivated {
    /// The origin the receiver allowed (`WebHook-Allowed-Origin`).
    pub allowed_origin: String,
}

/// Deliveries stop (a 410 Gone answer, or an operator); pending ones wait.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubscriptionDisabled {
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubscriptionDeleted {}

cim_core::domain_events! {
    pub enum SubscriptionEvent {
        Registered(SubscriptionRegistered) = "subscription_registered",
        Activated(SubscriptionActivated) = "subscription_activated",
        Disabled(SubscriptionDisabled) = "subscription_disabled",
        Deleted(SubscriptionDeleted) = "subscription_deleted",
    }
}
