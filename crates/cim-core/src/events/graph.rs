//! Events of the graph domain (aggregate type `graph`).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub const AGGREGATE_TYPE: &str = "graph";

/// A JSON object of properties.
pub type Properties = serde_json::Map<String, serde_json::Value>;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}: expected 1 to 128 characters of A-Z a-z 0-9 _ - . :, got {input:?}")]
pub struct ElementIdError {
    kind: &'static str,
    input: String,
}

fn valid_element_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'))
}

macro_rules! element_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// A fresh id (a UUIDv7) for elements the client did not name.
            pub fn generate() -> Self {
                Self(uuid::Uuid::now_v7().to_string())
            }
        }

        impl TryFrom<String> for $name {
            type Error = ElementIdError;

            fn try_from(s: String) -> Result<Self, Self::Error> {
                if valid_element_id(&s) {
                    Ok(Self(s))
                } else {
                    Err(ElementIdError { kind: $kind, input: s.chars().take(80).collect() })
                }
            }
        }

        impl FromStr for $name {
            type Err = ElementIdError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::try_from(s.to_owned())
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

element_id!(
    /// A node's id, unique within its graph.
    NodeId, "node id");
element_id!(
    /// An edge's id, unique within its graph.
    EdgeId, "edge id");

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GraphCreated {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub properties: Properties,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GraphRenamed {
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GraphArchived {}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeAdded {
    pub node_id: NodeId,
    pub node_type: crate::names::TypeName,
    #[serde(default)]
    pub properties: Properties,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeUpdated {
    pub node_id: NodeId,
    pub properties: Properties,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeRemoved {
    pub node_id: NodeId,
    /// Edges removed with the node, so consumers need no graph state to follow along.
    pub removed_edges: Vec<EdgeId>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EdgeAdded {
    pub edge_id: EdgeId,
    pub edge_type: crate::names::TypeName,
    pub source: NodeId,
    pub target: NodeId,
    #[serde(default)]
    pub properties: Properties,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EdgeUpdated {
    pub edge_id: EdgeId,
    pub properties: Properties,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EdgeRemoved {
    pub edge_id: EdgeId,
}

super::domain_events! {
    /// Every graph event.
    pub enum GraphEvent {
        Created(GraphCreated) = "graph_created",
        Renamed(GraphRenamed) = "graph_renamed",
        Archived(GraphArchived) = "graph_archived",
        NodeAdded(NodeAdded) = "node_added",
        NodeUpdated(NodeUpdated) = "node_updated",
        NodeRemoved(NodeRemoved) = "node_removed",
        EdgeAdded(EdgeAdded) = "edge_added",
        EdgeUpdated(EdgeUpdated) = "edge_updated",
        EdgeRemoved(EdgeRemoved) = "edge_removed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::EventHash;
    use crate::envelope::{EventContext, EventEnvelope};
    use crate::ids::{AggregateId, CausationId, CorrelationId, TenantId};
    use crate::names::Domain;

    fn seal(event: &GraphEvent) -> EventEnvelope {
        let ctx = EventContext {
            domain: Domain::Graph,
            aggregate_type: AGGREGATE_TYPE.parse().unwrap(),
            aggregate_id: AggregateId::new(),
            tenant_id: TenantId::new(),
            actor: "user:a".parse().unwrap(),
            correlation_id: CorrelationId::new(),
            causation_id: CausationId::new(),
        };
        EventEnvelope::seal(&ctx, event.to_new_event(), 1, EventHash::GENESIS, chrono::Utc::now())
    }

    #[test]
    fn every_event_round_trips_through_the_envelope() {
        let n: NodeId = "a".parse().unwrap();
        let m: NodeId = "b".parse().unwrap();
        let e: EdgeId = "a-b".parse().unwrap();
        let mut props = Properties::new();
        props.insert("k".into(), 1.into());
        let events = [
            GraphEvent::Created(GraphCreated { name: "g".into(), description: "d".into(), properties: props.clone() }),
            GraphEvent::Renamed(GraphRenamed { name: "h".into() }),
            GraphEvent::Archived(GraphArchived {}),
            GraphEvent::NodeAdded(NodeAdded {
                node_id: n.clone(),
                node_type: "person".parse().unwrap(),
                properties: props.clone(),
            }),
            GraphEvent::NodeUpdated(NodeUpdated { node_id: n.clone(), properties: props.clone() }),
            GraphEvent::NodeRemoved(NodeRemoved { node_id: n.clone(), removed_edges: vec![e.clone()] }),
            GraphEvent::EdgeAdded(EdgeAdded {
                edge_id: e.clone(),
                edge_type: "knows".parse().unwrap(),
                source: n,
                target: m,
                properties: props.clone(),
            }),
            GraphEvent::EdgeUpdated(EdgeUpdated { edge_id: e.clone(), properties: props }),
            GraphEvent::EdgeRemoved(EdgeRemoved { edge_id: e }),
        ];
        for (event, name) in events.iter().zip(GraphEvent::TYPES) {
            assert_eq!(event.event_type(), *name);
            let env = seal(event);
            assert_eq!(&GraphEvent::from_envelope(&env).unwrap(), event);
        }
    }

    #[test]
    fn element_ids_are_bounded_and_plain() {
        assert!("user:42.v2_x-y".parse::<NodeId>().is_ok());
        for bad in ["", "a b", "a/b", "é", &"x".repeat(129)] {
            let err = bad.parse::<EdgeId>().unwrap_err();
            assert!(err.to_string().starts_with("edge id: expected"), "{err}");
        }
        assert_eq!(NodeId::generate().as_str().len(), 36);
    }
}
