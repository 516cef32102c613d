//! NATS subjects and stream names (docs/design.md#subjects-streams-and-headers):
//! `<prefix>.<domain>.evt.<aggregate_type>.<aggregate_id>.<event_type>`.
//! The routing key comes early so a consumer can filter by domain or aggregate type with one
//! wildcard subject (NATS 2.9 allows one filter per consumer).

use std::fmt;
use std::str::FromStr;

use crate::ids::{AggregateId, TenantId};
use crate::names::{AggregateType, Domain, EventType};

/// NATS header names carried by every published event.
pub mod headers {
    pub const MSG_ID: &str = "Nats-Msg-Id";
    pub const EVENT_TYPE: &str = "Cim-Event-Type";
    pub const AGGREGATE_ID: &str = "Cim-Aggregate-Id";
    pub const SEQUENCE: &str = "Cim-Sequence";
    pub const CORRELATION_ID: &str = "Cim-Correlation-Id";
    pub const CAUSATION_ID: &str = "Cim-Causation-Id";
    pub const TENANT_ID: &str = "Cim-Tenant-Id";
    pub const TRACEPARENT: &str = "traceparent";
    pub const TRACESTATE: &str = "tracestate";
    /// Set on dead letters: why the last delivery failed.
    pub const DLQ_REASON: &str = "Cim-Dlq-Reason";
    /// Set on dead letters: the subject the event was first published on.
    pub const DLQ_ORIGINAL_SUBJECT: &str = "Cim-Dlq-Original-Subject";
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubjectError {
    #[error("subject token {token:?}: must be non-empty and contain no '.', '*', '>' or whitespace")]
    BadToken { token: String },
    #[error("subject {subject:?}: expected <prefix>.<domain>.evt.<aggregate_type>.<aggregate_id>.<event_type>")]
    Shape { subject: String },
    #[error("subject {subject:?}: {reason}")]
    BadPart { subject: String, reason: String },
}

/// Accepts a single NATS subject token.
pub fn validate_token(token: &str) -> Result<&str, SubjectError> {
    let bad = token.is_empty()
        || token.chars().any(|c| c == '.' || c == '*' || c == '>' || c.is_whitespace() || c.is_control());
    if bad { Err(SubjectError::BadToken { token: token.chars().take(80).collect() }) } else { Ok(token) }
}

/// The subject prefix, `cim` by default; several environments (or tests) share one NATS cluster
/// by using different prefixes. One or more tokens of `[A-Za-z0-9_-]`, because it also names
/// streams.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SubjectPrefix(String);

impl SubjectPrefix {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `CIM_GRAPH` for the prefix `cim`; `TEST_AB12_GRAPH` for `test_ab12`.
    pub fn stream_name(&self, domain: Domain) -> String {
        format!("{}_{}", self.stream_stem(), domain.as_str().to_ascii_uppercase())
    }

    /// The dead-letter stream: `CIM_DLQ`.
    pub fn dlq_stream_name(&self) -> String {
        format!("{}_DLQ", self.stream_stem())
    }

    fn stream_stem(&self) -> String {
        self.0.replace(['.', '-'], "_").to_ascii_uppercase()
    }

    /// Everything a domain's stream holds: `cim.graph.evt.>`.
    pub fn domain_events(&self, domain: Domain) -> String {
        format!("{}.{}.evt.>", self.0, domain)
    }

    /// A consumer filter; unset parts are wildcards. `None` everywhere equals `domain_events`.
    pub fn filter(
        &self,
        domain: Domain,
        aggregate_type: Option<&AggregateType>,
        aggregate_id: Option<&AggregateId>,
        event_type: Option<&EventType>,
    ) -> String {
        if aggregate_type.is_none() && aggregate_id.is_none() && event_type.is_none() {
            return self.domain_events(domain);
        }
        let at = aggregate_type.map_or_else(|| "*".to_owned(), ToString::to_string);
        let id = aggregate_id.map_or_else(|| "*".to_owned(), ToString::to_string);
        let et = event_type.map_or_else(|| "*".to_owned(), ToString::to_string);
        format!("{}.{}.evt.{at}.{id}.{et}", self.0, domain)
    }

    /// Where a consumer's dead letters go: `cim.dlq.<consumer>`.
    pub fn dlq_subject(&self, consumer: &str) -> Result<String, SubjectError> {
        Ok(format!("{}.dlq.{}", self.0, validate_token(consumer)?))
    }

    /// All dead letters: `cim.dlq.>`.
    pub fn dlq_subjects(&self) -> String {
        format!("{}.dlq.>", self.0)
    }

    /// The live pieces of an AI agent's response to one message, published on core NATS by the
    /// agent service replica whose worker answers (chunks are not events: no stream keeps
    /// them): `cim.agent.response.<tenant>.<agent>.<message>`. The tenant comes first so that a
    /// follower's subscription is confined to its own tenant by the subject itself.
    pub fn agent_response(&self, tenant: &TenantId, agent: &AggregateId, message: &uuid::Uuid) -> String {
        format!("{}.{}.response.{tenant}.{agent}.{message}", self.0, Domain::Agent)
    }

    /// Every response of one agent, or of every agent of a tenant: what a follower subscribes to.
    pub fn agent_responses(&self, tenant: &TenantId, agent: Option<&AggregateId>) -> String {
        match agent {
            Some(agent) => format!("{}.{}.response.{tenant}.{agent}.*", self.0, Domain::Agent),
            None => format!("{}.{}.response.{tenant}.*.*", self.0, Domain::Agent),
        }
    }
}

impl Default for SubjectPrefix {
    fn default() -> Self {
        SubjectPrefix("cim".to_owned())
    }
}

impl FromStr for SubjectPrefix {
    type Err = SubjectError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        for token in s.split('.') {
            let ok = !token.is_empty() && token.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            if !ok {
                return Err(SubjectError::BadToken { token: token.chars().take(80).collect() });
            }
        }
        Ok(SubjectPrefix(s.to_owned()))
    }
}

impl fmt::Display for SubjectPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The subject one event is published on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventSubject {
    pub domain: Domain,
    pub aggregate_type: AggregateType,
    pub aggregate_id: AggregateId,
    pub event_type: EventType,
}

impl EventSubject {
    pub fn to_subject(&self, prefix: &SubjectPrefix) -> String {
        format!("{prefix}.{}.evt.{}.{}.{}", self.domain, self.aggregate_type, self.aggregate_id, self.event_type)
    }

    /// Parses a subject published under `prefix`.
    pub fn parse(prefix: &SubjectPrefix, subject: &str) -> Result<Self, SubjectError> {
        let shape = || SubjectError::Shape { subject: subject.chars().take(200).collect() };
        let rest = subject.strip_prefix(prefix.as_str()).and_then(|r| r.strip_prefix('.')).ok_or_else(shape)?;
        let parts: Vec<&str> = rest.split('.').collect();
        let [domain, "evt", aggregate_type, aggregate_id, event_type] = parts[..] else {
            return Err(shape());
        };
        let part = |reason: String| SubjectError::BadPart { subject: subject.chars().take(200).collect(), reason };
        Ok(EventSubject {
            domain: domain.parse().map_err(|e| part(format!("{e}")))?,
            aggregate_type: aggregate_type.parse().map_err(|e| part(format!("{e}")))?,
            aggregate_id: aggregate_id.parse().map_err(|e| part(format!("{e}")))?,
            event_type: event_type.parse().map_err(|e| part(format!("{e}")))?,
        })
    }
}

/// A subscriber's filter over event subjects without the deployment's prefix:
/// `<domain>.evt.<aggregate_type>.<aggregate_id>.<event_type>`, each token a name or `*`, or a
/// final `>` for the rest (`document.evt.document.*.document_state_changed`, `agent.evt.>`).
/// Workflow waits and triggers and webhook subscriptions state what they watch this way.
pub const FILTER_MAX: usize = 300;

/// The domain a subject filter watches, or why the filter is not one.
pub fn filter_domain(filter: &str) -> Result<Domain, String> {
    let shape = "<domain>.evt.<aggregate_type>.<aggregate_id>.<event_type>, with * or a final >";
    if filter.is_empty() || filter.len() > FILTER_MAX {
        return Err(format!("1 to {FILTER_MAX} bytes: {shape}"));
    }
    let tokens: Vec<&str> = filter.split('.').collect();
    let last = tokens.len() - 1;
    for (i, token) in tokens.iter().enumerate() {
        let plain = token.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if token.is_empty() || !(plain || *token == "*" || (*token == ">" && i == last)) {
            return Err(format!("token {:?} is not a name, * or a final >: {shape}", token));
        }
    }
    let full = tokens.len() == 5 || (tokens.len() >= 3 && tokens[last] == ">");
    if !full || tokens.get(1) != Some(&"evt") {
        return Err(format!("not {shape}"));
    }
    tokens[0].parse::<Domain>().map_err(|e| format!("{e}: {shape}"))
}

/// Whether `subject` (without the deployment's prefix) matches the checked `filter`.
pub fn filter_matches(filter: &str, subject: &str) -> bool {
    let mut wanted = filter.split('.');
    let mut got = subject.split('.');
    loop {
        match (wanted.next(), got.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(w), Some(g)) if w == g => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> EventSubject {
        EventSubject {
            domain: Domain::Graph,
            aggregate_type: "graph".parse().unwrap(),
            aggregate_id: AggregateId::new(),
            event_type: "node_added".parse().unwrap(),
        }
    }

    #[test]
    fn agent_responses_are_outside_the_stream_and_confined_to_a_tenant() {
        let p = SubjectPrefix::default();
        let (tenant, other, agent, message) =
            (TenantId::new(), TenantId::new(), AggregateId::new(), uuid::Uuid::now_v7());
        let one = p.agent_response(&tenant, &agent, &message);
        assert_eq!(one, format!("cim.agent.response.{tenant}.{agent}.{message}"));
        assert!(!filter_matches(&p.domain_events(Domain::Agent), &one), "a chunk is no event of the stream");
        assert!(filter_matches(&p.agent_responses(&tenant, Some(&agent)), &one));
        assert!(filter_matches(&p.agent_responses(&tenant, None), &one));
        assert!(!filter_matches(&p.agent_responses(&other, None), &one), "another tenant's follower");
        assert!(!filter_matches(&p.agent_responses(&tenant, Some(&AggregateId::new())), &one));
    }

    #[test]
    fn builds_the_design_grammar() {
        let s = sample();
        let text = s.to_subject(&SubjectPrefix::default());
        assert_eq!(text, format!("cim.graph.evt.graph.{}.node_added", s.aggregate_id));
        assert_eq!(EventSubject::parse(&SubjectPrefix::default(), &text).unwrap(), s);
    }

    #[test]
    fn subject_filters_name_a_domain_and_match_by_token() {
        assert_eq!(filter_domain("document.evt.document.*.document_state_changed"), Ok(Domain::Document));
        assert_eq!(filter_domain("agent.evt.>"), Ok(Domain::Agent));
        for bad in ["", "document", "document.evt", "bogus.evt.>", "graph.cmd.>", "graph.evt.>.x", "graph.evt.a b.*.*"]
        {
            assert!(filter_domain(bad).is_err(), "{bad:?}");
        }
        let f = "document.evt.document.*.document_state_changed";
        assert!(filter_matches(f, "document.evt.document.0190-x.document_state_changed"));
        assert!(!filter_matches(f, "document.evt.document.0190-x.document_created"));
        assert!(filter_matches("agent.evt.>", "agent.evt.task.1.task_completed"));
        assert!(!filter_matches("agent.evt.task.*", "agent.evt.task.1.task_completed"));
    }

    #[test]
    fn stream_and_dlq_names() {
        let p = SubjectPrefix::default();
        assert_eq!(p.stream_name(Domain::Graph), "CIM_GRAPH");
        assert_eq!(p.stream_name(Domain::Agent), "CIM_AGENT");
        assert_eq!(p.dlq_stream_name(), "CIM_DLQ");
        assert_eq!(p.domain_events(Domain::Document), "cim.document.evt.>");
        assert_eq!(p.dlq_subject("gateway-cache").unwrap(), "cim.dlq.gateway-cache");
        assert_eq!(p.dlq_subjects(), "cim.dlq.>");
        assert!(p.dlq_subject("a.b").is_err());
        let t: SubjectPrefix = "test-ab12.x".parse().unwrap();
        assert_eq!(t.stream_name(Domain::Workflow), "TEST_AB12_X_WORKFLOW");
    }

    #[test]
    fn filters_use_wildcards_for_unset_parts() {
        let p = SubjectPrefix::default();
        let at: AggregateType = "graph".parse().unwrap();
        let et: EventType = "node_added".parse().unwrap();
        assert_eq!(p.filter(Domain::Graph, None, None, None), "cim.graph.evt.>");
        assert_eq!(p.filter(Domain::Graph, Some(&at), None, None), "cim.graph.evt.graph.*.*");
        assert_eq!(p.filter(Domain::Graph, None, None, Some(&et)), "cim.graph.evt.*.*.node_added");
    }

    #[test]
    fn rejects_wrong_shapes_and_parts() {
        let p = SubjectPrefix::default();
        let id = AggregateId::new();
        for bad in [
            "cim.graph.evt.graph".to_owned(),
            format!("other.graph.evt.graph.{id}.node_added"),
            format!("cim.graph.cmd.graph.{id}.node_added"),
            format!("cim.graph.evt.graph.{id}.node_added.extra"),
            format!("cimx.graph.evt.graph.{id}.node_added"),
        ] {
            assert!(matches!(EventSubject::parse(&p, &bad), Err(SubjectError::Shape { .. })), "{bad}");
        }
        let err = EventSubject::parse(&p, "cim.graph.evt.graph.not-an-id.node_added").unwrap_err();
        assert!(err.to_string().contains("aggregate id"), "{err}");
        let err = EventSubject::parse(&p, &format!("cim.files.evt.graph.{id}.x")).unwrap_err();
        assert!(err.to_string().contains("domain"), "{err}");
    }

    #[test]
    fn prefixes_reject_wildcards_and_whitespace() {
        for bad in ["", "a..b", "a.*", ">", "a b", "a\tb", "cim."] {
            assert!(bad.parse::<SubjectPrefix>().is_err(), "{bad:?}");
        }
        assert!("cim".parse::<SubjectPrefix>().is_ok());
    }

    #[test]
    fn tokens_reject_reserved_characters() {
        for bad in ["", "a.b", "*", "a>", "a b", "tab\t", "nl\n"] {
            assert!(validate_token(bad).is_err(), "{bad:?}");
        }
        assert!(validate_token("gateway-cache_1").is_ok());
    }

    fn snake() -> impl Strategy<Value = String> {
        "[a-z][a-z0-9_]{0,30}"
    }

    proptest! {
        #[test]
        fn build_then_parse_round_trips(
            prefix in "[A-Za-z0-9_-]{1,8}(\\.[A-Za-z0-9_-]{1,8}){0,2}",
            domain in prop::sample::select(Domain::ALL.to_vec()),
            aggregate_type in snake(),
            event_type in snake(),
            bytes in any::<[u8; 16]>(),
        ) {
            let uuid = uuid::Builder::from_unix_timestamp_millis(1_700_000_000_000, &bytes[..10].try_into().unwrap()).into_uuid();
            let subject = EventSubject {
                domain,
                aggregate_type: aggregate_type.parse().unwrap(),
                aggregate_id: AggregateId::from_uuid(uuid).unwrap(),
                event_type: event_type.parse().unwrap(),
            };
            let prefix: SubjectPrefix = prefix.parse().unwrap();
            let text = subject.to_subject(&prefix);
            prop_assert_eq!(EventSubject::parse(&prefix, &text).unwrap(), subject);
        }

        #[test]
        fn any_token_with_a_reserved_character_is_rejected(
            head in "[a-z]{0,5}",
            bad in prop::sample::select(vec!['.', '*', '>', ' ', '\t', '\n', '\r']),
            tail in "[a-z]{0,5}",
        ) {
            let token = format!("{head}{bad}{tail}");
            prop_assert!(validate_token(&token).is_err());
        }
    }
}
