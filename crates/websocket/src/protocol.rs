//! The JSON protocol on `/ws` (`docs/websocket.md` is the reference for client authors): what a
//! client may send, what the server answers, error codes and close codes. Every name here is
//! part of the public contract; change them only with a new subprotocol version.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex, PoisonError};

use axum::extract::ws::Utf8Bytes;

use cim_core::{AggregateId, AggregateType, Domain, EventType, SubjectPrefix};
use serde::{Deserialize, Serialize};

/// The subprotocol a client offers (and the server echoes) in `Sec-WebSocket-Protocol`.
pub const SUBPROTOCOL: &str = "cim.v1";
/// A second offered subprotocol `bearer.<jwt>` carries the token: browsers cannot set an
/// `Authorization` header on a websocket, and a query string ends up in access logs.
pub const BEARER_PREFIX: &str = "bearer.";

/// Most event types one subscription may list.
pub const MAX_EVENT_TYPES: usize = 32;
/// Longest subscription id, in bytes.
pub const MAX_SUBSCRIPTION_ID: usize = 64;

/// Close codes. 1xxx are RFC 6455's; 4xxx are CIM's own (the range RFC 6455 leaves to
/// applications), each meaning one thing so clients can react without parsing the reason.
pub mod close {
    /// The client said goodbye, or the server answered its close.
    pub const NORMAL: u16 = 1000;
    /// The server is shutting down: reconnect (to another instance) and resume.
    pub const GOING_AWAY: u16 = 1001;
    /// The websocket framing itself was broken.
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// A frame larger than the configured limit.
    pub const TOO_BIG: u16 = 1009;
    /// The instance is at its connection limit: retry later, ideally elsewhere.
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// Nothing (not even a pong) arrived within the idle timeout.
    pub const IDLE: u16 = 4000;
    /// No token, a bad or expired token, or no `auth` message in time.
    pub const UNAUTHENTICATED: u16 = 4001;
    /// A valid token without the `reader` role.
    pub const FORBIDDEN: u16 = 4003;
    /// The client fell behind by more than its queue allows; resume from the last position seen.
    pub const LAGGING: u16 = 4008;
}

/// Stable error codes carried by `{"type":"error"}` frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// Not JSON, an unknown `type`, a missing or unknown field, a binary frame.
    BadFrame,
    /// The filter names an unknown domain or a malformed type or id.
    InvalidFilter,
    /// The subscription id is empty, too long or not printable.
    InvalidId,
    /// A subscription with this id is active on this connection.
    DuplicateSubscription,
    /// `unsubscribe` for an id that is not active.
    UnknownSubscription,
    /// The connection holds the maximum number of subscriptions.
    TooManySubscriptions,
    /// `from` is beyond the stream's last position (a position from another environment?).
    PositionAhead,
    /// Events after `from` were removed from the stream: a gap-free resume is impossible.
    PositionExpired,
    /// `auth` on an authenticated connection with a token for another subject or tenant.
    AlreadyAuthenticated,
    /// The connection's token expired (then close `4001`).
    TokenExpired,
    Unauthenticated,
    PermissionDenied,
    /// JetStream did not answer; the subscription is not active, subscribe again.
    Unavailable,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::BadFrame => "bad_frame",
            Code::InvalidFilter => "invalid_filter",
            Code::InvalidId => "invalid_id",
            Code::DuplicateSubscription => "duplicate_subscription",
            Code::UnknownSubscription => "unknown_subscription",
            Code::TooManySubscriptions => "too_many_subscriptions",
            Code::PositionAhead => "position_ahead",
            Code::PositionExpired => "position_expired",
            Code::AlreadyAuthenticated => "already_authenticated",
            Code::TokenExpired => "token_expired",
            Code::Unauthenticated => "unauthenticated",
            Code::PermissionDenied => "permission_denied",
            Code::Unavailable => "unavailable",
        }
    }
}

/// An error to report to the client: a code and a human sentence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: Code,
    pub message: String,
}

impl Refusal {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }
}

/// What a client sends. Unknown fields are refused: a misspelt `from` must not silently turn a
/// resume into a live-only subscription (a gap the client would never notice).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientFrame {
    /// A JWT (`token`) or a one-time ticket from the gateway's `POST /api/v1/auth/ws-ticket`
    /// (`ticket`, `cim_auth::ticket`): exactly one of them.
    Auth {
        #[serde(default)]
        token: Option<String>,
        #[serde(default)]
        ticket: Option<String>,
    },
    Subscribe {
        id: String,
        filter: FilterSpec,
        /// The last position the client has seen; absent: live events only.
        #[serde(default)]
        from: Option<u64>,
    },
    /// AI agents' responses as they are written, piece by piece (not events: no position, no
    /// resume): one agent's, or every agent's of the tenant.
    FollowResponses {
        id: String,
        #[serde(default)]
        agent_id: Option<String>,
    },
    Unsubscribe {
        id: String,
    },
    Ping {},
    Pong {},
}

/// A filter as sent; [`Filter::parse`] checks it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterSpec {
    pub domain: String,
    #[serde(default)]
    pub aggregate_type: Option<String>,
    #[serde(default)]
    pub aggregate_id: Option<String>,
    #[serde(default)]
    pub event_types: Vec<String>,
}

/// Which events a subscription wants. Unset parts match everything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    pub domain: Domain,
    pub aggregate_type: Option<AggregateType>,
    pub aggregate_id: Option<AggregateId>,
    /// Sorted and deduplicated; empty: every type.
    pub event_types: Vec<EventType>,
}

impl Filter {
    pub fn parse(spec: FilterSpec) -> Result<Filter, Refusal> {
        let bad =
            |field: &str, e: &dyn std::fmt::Display| Refusal::new(Code::InvalidFilter, format!("filter.{field}: {e}"));
        let domain = spec.domain.parse().map_err(|e| bad("domain", &e))?;
        let aggregate_type =
            spec.aggregate_type.map(|s| s.parse()).transpose().map_err(|e| bad("aggregate_type", &e))?;
        let aggregate_id = spec.aggregate_id.map(|s| s.parse()).transpose().map_err(|e| bad("aggregate_id", &e))?;
        if spec.event_types.len() > MAX_EVENT_TYPES {
            return Err(bad("event_types", &format!("at most {MAX_EVENT_TYPES} entries")));
        }
        let mut event_types = spec
            .event_types
            .iter()
            .map(|s| s.parse())
            .collect::<Result<Vec<EventType>, _>>()
            .map_err(|e| bad("event_types", &e))?;
        event_types.sort_unstable();
        event_types.dedup();
        Ok(Filter { domain, aggregate_type, aggregate_id, event_types })
    }

    pub fn matches(&self, aggregate_type: &AggregateType, aggregate_id: &AggregateId, event_type: &EventType) -> bool {
        self.aggregate_id.as_ref().is_none_or(|id| id == aggregate_id)
            && self.aggregate_type.as_ref().is_none_or(|t| t == aggregate_type)
            && (self.event_types.is_empty() || self.event_types.binary_search(event_type).is_ok())
    }

    /// The narrowest single NATS subject covering the filter (NATS 2.9: one filter per consumer).
    pub fn subject(&self, prefix: &SubjectPrefix) -> String {
        let one_type = match self.event_types.as_slice() {
            [only] => Some(only),
            _ => None,
        };
        prefix.filter(self.domain, self.aggregate_type.as_ref(), self.aggregate_id.as_ref(), one_type)
    }
}

/// Checks a client-chosen subscription id.
pub fn check_id(id: &str) -> Result<(), Refusal> {
    if id.is_empty() || id.len() > MAX_SUBSCRIPTION_ID || !cim_core::names::is_printable(id) {
        return Err(Refusal::new(
            Code::InvalidId,
            format!("id: expected 1 to {MAX_SUBSCRIPTION_ID} bytes of printable characters"),
        ));
    }
    Ok(())
}

/// Server frames other than events (those are assembled by [`event_frame`] without re-encoding
/// the envelope).
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame<'a> {
    Welcome {
        subject: &'a str,
        tenant: String,
        max_subscriptions: usize,
        max_frame_bytes: usize,
        heartbeat_ms: u64,
        /// When the token expires (Unix seconds): the connection is closed then unless the
        /// client sends `auth` with a fresh token for the same subject and tenant before.
        #[serde(skip_serializing_if = "Option::is_none")]
        expires_at: Option<u64>,
    },
    /// A fresh token was accepted: the connection now lives until `expires_at`.
    Reauthenticated {
        #[serde(skip_serializing_if = "Option::is_none")]
        expires_at: Option<u64>,
    },
    Subscribed {
        id: &'a str,
        /// Events after this position will be delivered (`from` when resuming, else the
        /// position the live feed had reached).
        position: u64,
    },
    /// `follow_responses` took effect: pieces written from now on follow.
    Following {
        id: &'a str,
    },
    Unsubscribed {
        id: &'a str,
    },
    /// A piece of an AI agent's response; the last one carries `completed` or `failed`.
    Response {
        id: &'a str,
        agent_id: &'a str,
        message_id: &'a str,
        conversation_id: &'a str,
        content: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        completed: Option<Completed<'a>>,
        #[serde(skip_serializing_if = "Option::is_none")]
        failed: Option<Failed<'a>>,
    },
    Error {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a str>,
        code: &'static str,
        message: &'a str,
    },
    Pong {},
}

/// How a response ended well, as recorded in `ResponseCompleted`.
#[derive(Debug, Clone, Serialize)]
pub struct Completed<'a> {
    pub finish_reason: &'a str,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    pub duration_ms: u64,
}

/// How a response failed, as recorded in `ResponseFailed`.
#[derive(Debug, Clone, Serialize)]
pub struct Failed<'a> {
    pub error_type: &'a str,
    pub error: &'a str,
    pub recoverable: bool,
}

/// The `response` frame of one piece.
pub fn response_frame(id: &str, agent_id: &str, piece: &cim_proto::agent::ResponseChunk) -> String {
    use cim_proto::agent::response_chunk::End;
    let (completed, failed) = match &piece.end {
        Some(End::Completed(c)) => {
            let usage = c.token_usage.unwrap_or_default();
            let completed = Completed {
                finish_reason: &c.finish_reason,
                prompt_tokens: usage.prompt_tokens,
                completion_tokens: usage.completion_tokens,
                total_tokens: usage.total_tokens,
                duration_ms: c.duration_ms,
            };
            (Some(completed), None)
        }
        Some(End::Failed(f)) => {
            (None, Some(Failed { error_type: &f.error_type, error: &f.error, recoverable: f.recoverable }))
        }
        None => (None, None),
    };
    ServerFrame::Response {
        id,
        agent_id,
        message_id: &piece.message_id,
        conversation_id: &piece.conversation_id,
        content: &piece.content,
        completed,
        failed,
    }
    .to_json()
}

impl ServerFrame<'_> {
    pub fn to_json(&self) -> String {
        // Serializing these plain structs cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

pub fn error_frame(id: Option<&str>, refusal: &Refusal) -> String {
    ServerFrame::Error { id, code: refusal.code.as_str(), message: &refusal.message }.to_json()
}

/// `{"type":"event","id":<id>,"position":<n>,"traceparent":<w3c>,"event":<envelope>}`. `id_json`
/// is the subscription id already JSON-encoded and `envelope` the JSON the relay published, so an
/// event is never decoded and re-encoded per client. `traceparent` (left out when unknown) is
/// W3C text: digits, hex and dashes, nothing to escape.
pub fn event_frame(id_json: &str, position: u64, traceparent: Option<&str>, envelope: &str) -> String {
    let mut s = String::with_capacity(envelope.len() + id_json.len() + 112);
    s.push_str(r#"{"type":"event","id":"#);
    s.push_str(id_json);
    s.push_str(r#","position":"#);
    let _ = write!(s, "{position}");
    if let Some(tp) = traceparent.filter(|tp| tp.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')) {
        s.push_str(r#","traceparent":""#);
        s.push_str(tp);
        s.push('"');
    }
    s.push_str(r#","event":"#);
    s.push_str(envelope);
    s.push('}');
    s
}

/// How many subscription ids one event keeps formatted frames for; a further id's frame is
/// formatted for each of its clients, as before there was a cache.
const FRAME_CACHE_IDS: usize = 8;

/// One event's frames, formatted once per subscription id and shared by every client subscribed
/// under that id (a reference-counted handle, not a copy): the fan-out formats an event once
/// instead of once per client. Clients usually share ids, since one application's code names
/// its subscriptions.
#[derive(Debug, Default)]
pub struct FrameCache(Mutex<Vec<(Arc<str>, Utf8Bytes)>>);

impl FrameCache {
    /// The frame for `id_json`, formatted by `format` the first time it is asked for.
    pub fn get_or_format(&self, id_json: &Arc<str>, format: impl FnOnce() -> String) -> Utf8Bytes {
        // Nothing under this lock can leave the list half-updated.
        let mut frames = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, frame)) = frames.iter().find(|(id, _)| Arc::ptr_eq(id, id_json) || **id == **id_json) {
            return frame.clone();
        }
        let frame = Utf8Bytes::from(format());
        if frames.len() < FRAME_CACHE_IDS {
            frames.push((id_json.clone(), frame.clone()));
        }
        frame
    }
}

/// A close reason within RFC 6455's 123 bytes, cut on a character boundary.
pub fn close_reason(text: &str) -> String {
    let mut end = text.len().min(123);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(v: serde_json::Value) -> FilterSpec {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn client_frames_parse_and_unknown_fields_are_refused() {
        let f: ClientFrame = serde_json::from_str(
            r#"{"type":"subscribe","id":"a","filter":{"domain":"graph","event_types":["node_added"]},"from":7}"#,
        )
        .unwrap();
        assert!(matches!(f, ClientFrame::Subscribe { from: Some(7), .. }));
        let err = serde_json::from_str::<ClientFrame>(
            r#"{"type":"subscribe","id":"a","filter":{"domain":"graph"},"form":7}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("unknown field `form`"), "{err}");
        assert!(serde_json::from_str::<ClientFrame>(r#"{"type":"dance"}"#).is_err());
        assert_eq!(serde_json::from_str::<ClientFrame>(r#"{"type":"ping"}"#).unwrap(), ClientFrame::Ping {});
    }

    #[test]
    fn filters_are_checked_and_narrowed_to_one_subject() {
        let prefix: SubjectPrefix = "cim".parse().unwrap();
        let id = AggregateId::new();
        let f = Filter::parse(spec(serde_json::json!({
            "domain": "graph", "aggregate_id": id.to_string(), "event_types": ["node_added", "node_added"]
        })))
        .unwrap();
        assert_eq!(f.event_types.len(), 1);
        assert_eq!(f.subject(&prefix), format!("cim.graph.evt.*.{id}.node_added"));
        let at: AggregateType = "graph".parse().unwrap();
        assert!(f.matches(&at, &id, &"node_added".parse().unwrap()));
        assert!(!f.matches(&at, &id, &"edge_added".parse().unwrap()));
        assert!(!f.matches(&at, &AggregateId::new(), &"node_added".parse().unwrap()));

        let two = Filter::parse(spec(serde_json::json!({"domain": "graph", "event_types": ["b_x", "a_x"]}))).unwrap();
        assert_eq!(two.subject(&prefix), "cim.graph.evt.>");

        for (bad, field) in [
            (serde_json::json!({"domain": "files"}), "filter.domain"),
            (serde_json::json!({"domain": "graph", "aggregate_id": "42"}), "filter.aggregate_id"),
            (serde_json::json!({"domain": "graph", "aggregate_type": "Graph"}), "filter.aggregate_type"),
            (serde_json::json!({"domain": "graph", "event_types": ["x.y"]}), "filter.event_types"),
        ] {
            let err = Filter::parse(spec(bad)).unwrap_err();
            assert_eq!(err.code, Code::InvalidFilter);
            assert!(err.message.starts_with(field), "{}", err.message);
        }
    }

    #[test]
    fn event_frames_embed_the_envelope_verbatim() {
        let frame = event_frame(&serde_json::to_string("s\"1").unwrap(), 42, None, r#"{"a":1}"#);
        let v: serde_json::Value = serde_json::from_str(&frame).unwrap();
        assert_eq!(v, serde_json::json!({"type": "event", "id": "s\"1", "position": 42, "event": {"a": 1}}));
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let v: serde_json::Value = serde_json::from_str(&event_frame("\"s\"", 7, Some(tp), "{}")).unwrap();
        assert_eq!(v, serde_json::json!({"type": "event", "id": "s", "position": 7, "traceparent": tp, "event": {}}));
        // A header that is not W3C text never reaches the frame (it could break the JSON).
        let v: serde_json::Value = serde_json::from_str(&event_frame("\"s\"", 7, Some("a\"b"), "{}")).unwrap();
        assert!(v.get("traceparent").is_none());
    }

    #[test]
    fn an_events_frame_is_formatted_once_per_subscription_id() {
        let cache = FrameCache::default();
        let formatted = std::cell::Cell::new(0);
        let frame = |id: &Arc<str>| {
            cache.get_or_format(id, || {
                formatted.set(formatted.get() + 1);
                event_frame(id, 7, None, "{}")
            })
        };
        let (s, same, other): (Arc<str>, Arc<str>, Arc<str>) = ("\"s\"".into(), "\"s\"".into(), "\"t\"".into());
        let (a, b, c) = (frame(&s), frame(&same), frame(&other));
        // One formatting per id, and the clients of one id share the bytes themselves.
        assert_eq!(formatted.get(), 2);
        assert_eq!(a.as_str().as_ptr(), b.as_str().as_ptr());
        assert_eq!(a.as_str(), event_frame("\"s\"", 7, None, "{}"));
        assert_eq!(c.as_str(), event_frame("\"t\"", 7, None, "{}"));
        // Past the bound, frames are still right, just formatted each time.
        for i in 0..FRAME_CACHE_IDS {
            frame(&Arc::from(format!("\"x{i}\"")));
        }
        let late: Arc<str> = "\"late\"".into();
        let before = formatted.get();
        assert_eq!(frame(&late).as_str(), event_frame("\"late\"", 7, None, "{}"));
        assert_eq!(frame(&late).as_str(), event_frame("\"late\"", 7, None, "{}"));
        assert_eq!(formatted.get(), before + 2);
    }

    #[test]
    fn ids_and_reasons_are_bounded() {
        assert!(check_id("sub-1").is_ok());
        assert!(check_id("").is_err());
        assert!(check_id(&"x".repeat(65)).is_err());
        assert!(check_id("a\nb").is_err());
        assert!(check_id("a\u{202e}b").is_err(), "a bidi override is not printable");
        assert!(check_id("a\u{200b}").is_err(), "a zero-width space is not printable");
        assert_eq!(close_reason(&"é".repeat(100)).len(), 122);
    }
}
