//! `/api/v1/webhooks/...`: every RPC of `cim.webhook.v1` as a REST route, at its
//! `google.api.http` path and verb. Subscriptions send the tenant's events to a URL of the
//! caller's choosing, so registering, activating and deleting them needs the admin role; reading
//! them (with their delivery state) the reader role.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Extension, FromRef, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use cim_auth::Principal;
use cim_proto::webhook as pb;
use cim_proto::webhook::webhook_service_client::WebhookServiceClient;
use serde::{Deserialize, Serialize};
use tonic::transport::Channel;
use utoipa::{IntoParams, ToSchema};

use crate::extract::{ApiJson, ApiPath, ApiQuery, OptionalJson};
use crate::problem::ApiResult;
use crate::rest::{CommandQuery, Options, StateChange, command, query, ts};
use crate::routes::{DomainRoutes, Purpose, routes};
use crate::upstream::Upstream;

/// What the webhook routes use: the webhook service (`CIM_GATEWAY_WEBHOOK_URLS`).
#[derive(Debug)]
pub struct WebhookState {
    pub upstream: Upstream<WebhookServiceClient<Channel>>,
}

pub fn routes<S>(purpose: Purpose) -> DomainRoutes<S>
where
    S: Clone + Send + Sync + 'static,
    Arc<WebhookState>: FromRef<S>,
{
    DomainRoutes::new(purpose)
        .admin(routes!(create_subscription))
        .reader(routes!(list_subscriptions))
        .reader(routes!(get_subscription))
        .admin(routes!(activate_subscription))
        .admin(routes!(disable_subscription))
        .admin(routes!(delete_subscription))
        .admin(routes!(replay_dead_letters))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewSubscription {
    /// A UUIDv7 of the caller's choosing; made by the server when absent.
    pub subscription_id: Option<String>,
    #[serde(default)]
    pub name: String,
    /// `<domain>.evt.<aggregate_type>.<aggregate_id>.<event_type>`, each token a name or `*`, or
    /// a final `>`: `document.evt.document.*.document_state_changed`, `agent.evt.>`.
    pub filter: String,
    /// A CEL bool over `event` (`event.event_type`, `event.payload.to == 'approved'`, ...).
    #[serde(default)]
    pub condition: String,
    /// http:// or https://, without user:password@.
    pub url: String,
    /// `whsec_<base64 of 24 to 64 bytes>`; made by the server when absent.
    #[serde(default)]
    pub secret: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedSubscription {
    pub subscription_id: String,
    pub version: u64,
    /// active, or pending when the receiver did not pass the validation handshake.
    pub state: String,
    pub validation_error: Option<String>,
    /// The signing secret (shown here only).
    pub secret: String,
    pub replayed: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookCommandResult {
    pub id: String,
    pub version: u64,
    pub event_ids: Vec<String>,
    pub replayed: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryStats {
    pub pending: u64,
    pub delivered: u64,
    /// Dead-lettered after the last attempt; replayable.
    pub dead: u64,
    /// Age of the oldest pending delivery, in seconds.
    pub lag_seconds: f64,
    /// The last failed attempt's HTTP status (0: no answer) and why.
    pub last_failure_status: Option<u32>,
    pub last_failure: Option<String>,
    pub last_failure_at: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Subscription {
    pub subscription_id: String,
    pub name: String,
    pub filter: String,
    pub condition: Option<String>,
    pub url: String,
    /// pending, active or disabled.
    pub state: String,
    pub reason: Option<String>,
    pub version: u64,
    pub created_at: Option<String>,
    pub updated_at: Option<String>,
    pub deliveries: Option<DeliveryStats>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Subscriptions {
    pub items: Vec<Subscription>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SubscriptionFilter {
    /// pending, active or disabled.
    pub state: Option<String>,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Replay {
    /// One dead-lettered event; all of the subscription's when absent.
    #[serde(default)]
    pub event_id: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Replayed {
    pub replayed: u64,
}

fn some(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

fn subscription(s: pb::Subscription) -> Subscription {
    Subscription {
        subscription_id: s.subscription_id,
        name: s.name,
        filter: s.filter,
        condition: some(s.condition),
        url: s.url,
        state: s.state,
        reason: some(s.reason),
        version: s.version,
        created_at: ts(s.created_at),
        updated_at: ts(s.updated_at),
        deliveries: s.deliveries.map(|d| DeliveryStats {
            pending: d.pending,
            delivered: d.delivered,
            dead: d.dead,
            lag_seconds: d.lag_seconds,
            last_failure_status: d.last_failure_at.is_some().then_some(d.last_failure_status),
            last_failure: some(d.last_failure),
            last_failure_at: ts(d.last_failure_at),
        }),
    }
}

fn done(r: pb::CommandResponse) -> Json<WebhookCommandResult> {
    Json(WebhookCommandResult { id: r.id, version: r.version, event_ids: r.event_ids, replayed: r.replayed })
}

fn command_of(
    subscription_id: String,
    reason: String,
    options: Option<cim_proto::common::CommandOptions>,
) -> pb::SubscriptionCommand {
    pb::SubscriptionCommand { subscription_id, reason, options }
}

/// Register a webhook subscription
///
/// Every event of the tenant matching `filter` (and `condition`) is sent to `url` as a signed CloudEvent. The receiver must pass the CloudEvents validation handshake first; until it does the subscription is pending. A bad URL, filter, condition or secret is refused (400 naming it). Needs the admin role.
#[utoipa::path(post, path = "/api/v1/webhooks", tag = "webhooks", request_body = NewSubscription, params(CommandQuery),
    responses((status = 201, body = CreatedSubscription)))]
pub async fn create_subscription(
    State(state): State<Arc<WebhookState>>,
    Extension(p): Extension<Principal>,
    Options(options): Options,
    ApiJson(body): ApiJson<NewSubscription>,
) -> ApiResult<impl IntoResponse> {
    let msg = pb::CreateSubscriptionRequest {
        subscription_id: body.subscription_id.unwrap_or_default(),
        name: body.name,
        filter: body.filter,
        condition: body.condition,
        url: body.url,
        secret: body.secret,
        options,
    };
    let r = command!(state.upstream, p, create_subscription, msg);
    let created = CreatedSubscription {
        subscription_id: r.subscription_id,
        version: r.version,
        state: r.state,
        validation_error: some(r.validation_error),
        secret: r.secret,
        replayed: r.replayed,
    };
    Ok((StatusCode::CREATED, Json(created)))
}

/// List webhook subscriptions
///
/// The tenant's subscriptions, newest first, with their delivery state.
#[utoipa::path(get, path = "/api/v1/webhooks", tag = "webhooks", params(SubscriptionFilter),
    responses((status = 200, body = Subscriptions)))]
pub async fn list_subscriptions(
    State(state): State<Arc<WebhookState>>,
    Extension(p): Extension<Principal>,
    ApiQuery(q): ApiQuery<SubscriptionFilter>,
) -> ApiResult<Json<Subscriptions>> {
    let msg = pb::ListSubscriptionsRequest { state: q.state.unwrap_or_default() };
    let r = query!(state.upstream, p, list_subscriptions, msg);
    Ok(Json(Subscriptions { items: r.subscriptions.into_iter().map(subscription).collect() }))
}

/// Get a webhook subscription
///
/// With its deliveries: pending, delivered, dead-lettered, the lag, the last failure.
#[utoipa::path(get, path = "/api/v1/webhooks/{subscription_id}", tag = "webhooks",
    params(("subscription_id" = String, Path)), responses((status = 200, body = Subscription)))]
pub async fn get_subscription(
    State(state): State<Arc<WebhookState>>,
    Extension(p): Extension<Principal>,
    ApiPath(subscription_id): ApiPath<String>,
) -> ApiResult<Json<Subscription>> {
    let msg = pb::GetSubscriptionRequest { subscription_id };
    Ok(Json(subscription(query!(state.upstream, p, get_subscription, msg))))
}

/// Activate a webhook subscription
///
/// Runs the validation handshake again; a receiver that does not pass it is refused (422 with the reason).
#[utoipa::path(post, path = "/api/v1/webhooks/{subscription_id}/activate", tag = "webhooks",
    params(("subscription_id" = String, Path), CommandQuery), responses((status = 200, body = WebhookCommandResult)))]
pub async fn activate_subscription(
    State(state): State<Arc<WebhookState>>,
    Extension(p): Extension<Principal>,
    ApiPath(subscription_id): ApiPath<String>,
    Options(options): Options,
) -> ApiResult<Json<WebhookCommandResult>> {
    let msg = command_of(subscription_id, String::new(), options);
    Ok(done(command!(state.upstream, p, activate_subscription, msg)))
}

/// Disable a webhook subscription
///
/// Nothing is sent until it is activated again; events in between are not delivered.
#[utoipa::path(post, path = "/api/v1/webhooks/{subscription_id}/disable", tag = "webhooks", request_body = StateChange,
    params(("subscription_id" = String, Path), CommandQuery), responses((status = 200, body = WebhookCommandResult)))]
pub async fn disable_subscription(
    State(state): State<Arc<WebhookState>>,
    Extension(p): Extension<Principal>,
    ApiPath(subscription_id): ApiPath<String>,
    Options(options): Options,
    OptionalJson(body): OptionalJson<StateChange>,
) -> ApiResult<Json<WebhookCommandResult>> {
    let msg = command_of(subscription_id, body.reason, options);
    Ok(done(command!(state.upstream, p, disable_subscription, msg)))
}

/// Delete a webhook subscription
///
/// Final: its pending deliveries and its secret go with it.
#[utoipa::path(delete, path = "/api/v1/webhooks/{subscription_id}", tag = "webhooks",
    params(("subscription_id" = String, Path), CommandQuery), responses((status = 200, body = WebhookCommandResult)))]
pub async fn delete_subscription(
    State(state): State<Arc<WebhookState>>,
    Extension(p): Extension<Principal>,
    ApiPath(subscription_id): ApiPath<String>,
    Options(options): Options,
) -> ApiResult<Json<WebhookCommandResult>> {
    let msg = command_of(subscription_id, String::new(), options);
    Ok(done(command!(state.upstream, p, delete_subscription, msg)))
}

/// Replay dead-lettered deliveries
///
/// Back in the queue with a fresh retry budget (`event_id` one of them; all when absent). `cim webhooks replay` does the same for an operator.
#[utoipa::path(post, path = "/api/v1/webhooks/{subscription_id}/replay", tag = "webhooks", request_body = Replay,
    params(("subscription_id" = String, Path)), responses((status = 200, body = Replayed)))]
pub async fn replay_dead_letters(
    State(state): State<Arc<WebhookState>>,
    Extension(p): Extension<Principal>,
    ApiPath(subscription_id): ApiPath<String>,
    OptionalJson(body): OptionalJson<Replay>,
) -> ApiResult<Json<Replayed>> {
    let msg = pb::ReplayDeadLettersRequest { subscription_id, event_id: body.event_id };
    Ok(Json(Replayed { replayed: command!(state.upstream, p, replay_dead_letters, msg).replayed }))
}
