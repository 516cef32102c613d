//! Small validated names: domains, event and aggregate types, actors.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("{kind}: expected snake_case ([a-z][a-z0-9_]*, at most {max} characters), got {input:?}")]
    NotSnakeCase { kind: &'static str, max: usize, input: String },
    #[error("domain: expected one of graph, document, workflow, agent, webhook, got {0:?}")]
    UnknownDomain(String),
    #[error("actor: expected 1 to 256 printable characters, got {0:?}")]
    BadActor(String),
}

/// The domains; each owns a Postgres schema and a JetStream stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Domain {
    Graph,
    Document,
    Workflow,
    Agent,
    /// Webhook subscriptions (their deliveries are not events).
    Webhook,
}

impl Domain {
    pub const ALL: [Domain; 5] = [Domain::Graph, Domain::Document, Domain::Workflow, Domain::Agent, Domain::Webhook];

    pub fn as_str(&self) -> &'static str {
        match self {
            Domain::Graph => "graph",
            Domain::Document => "document",
            Domain::Workflow => "workflow",
            Domain::Agent => "agent",
            Domain::Webhook => "webhook",
        }
    }
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Domain {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Domain::ALL
            .into_iter()
            .find(|d| d.as_str() == s)
            .ok_or_else(|| NameError::UnknownDomain(s.chars().take(64).collect()))
    }
}

fn is_snake_case(s: &str, max: usize) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some('a'..='z')) && s.len() <= max && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_'))
}

macro_rules! snake_name {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $max:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = NameError;

            fn try_from(s: String) -> Result<Self, Self::Error> {
                if is_snake_case(&s, $max) {
                    Ok(Self(s))
                } else {
                    Err(NameError::NotSnakeCase {
                        kind: $kind,
                        max: $max,
                        input: s.chars().take(80).collect(),
                    })
                }
            }
        }

        impl FromStr for $name {
            type Err = NameError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::try_from(s.to_owned())
            }
        }

        impl From<$name> for String {
            fn from(n: $name) -> String {
                n.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

snake_name!(
    /// What happened, in the past tense: `node_added`, `document_approved`.
    EventType, "event type", 64);
snake_name!(
    /// A user-defined type name: a node type, an edge type.
    TypeName, "type name", 64);
snake_name!(
    /// The kind of aggregate an event belongs to: `graph`, `document`, `task`.
    AggregateType, "aggregate type", 64);

/// Who caused a change: `user:<sub>`, `apikey:<id>`, `service:<name>`. Free-form but bounded and
/// printable, because it is stored in every event and shown to operators.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Actor(String);

impl Actor {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The actor for changes a service makes on its own (timers, reactions to events).
    pub fn service(name: &str) -> Self {
        Self(format!("service:{name}"))
    }
}

impl TryFrom<String> for Actor {
    type Error = NameError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        let ok = !s.is_empty() && s.chars().count() <= 256 && !s.chars().any(|c| c.is_control());
        if ok { Ok(Self(s)) } else { Err(NameError::BadActor(s.chars().take(80).collect())) }
    }
}

impl FromStr for Actor {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::try_from(s.to_owned())
    }
}

impl From<Actor> for String {
    fn from(a: Actor) -> String {
        a.0
    }
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_round_trip() {
        for d in Domain::ALL {
            assert_eq!(d.as_str().parse::<Domain>().unwrap(), d);
            assert_eq!(serde_json::to_string(&d).unwrap(), format!("\"{d}\""));
        }
        assert!("graphs".parse::<Domain>().unwrap_err().to_string().contains("graph, document"));
    }

    #[test]
    fn event_types_must_be_snake_case() {
        assert!("node_added".parse::<EventType>().is_ok());
        for bad in ["", "NodeAdded", "node-added", "node.added", "_x", "1x", "a b", &"a".repeat(65)] {
            let err = bad.parse::<EventType>().unwrap_err();
            assert!(err.to_string().starts_with("event type: expected snake_case"), "{err}");
        }
        assert!(serde_json::from_str::<EventType>("\"Bad\"").is_err());
    }

    #[test]
    fn actors_are_bounded_and_printable() {
        assert!("user:alice".parse::<Actor>().is_ok());
        assert_eq!(Actor::service("graph").as_str(), "service:graph");
        assert!("".parse::<Actor>().is_err());
        assert!("a\nb".parse::<Actor>().is_err());
        assert!("x".repeat(257).parse::<Actor>().is_err());
    }
}

/// Whether `s` shows as what it is: no control characters and no invisible formatting ones
/// (zero-width spaces and joiners, bidirectional overrides such as U+202E, the BOM, tag
/// characters), which would let an id look like another or reorder the text around it.
pub fn is_printable(s: &str) -> bool {
    s.chars().all(|c| {
        !c.is_control()
            && !matches!(c as u32,
                0x00AD | 0x061C | 0x180E | 0x200B..=0x200F | 0x2028..=0x202E | 0x2060..=0x206F
                | 0xFEFF | 0xFFF9..=0xFFFB | 0xE0000..=0xE007F)
    })
}

#[cfg(test)]
mod printable_tests {
    #[test]
    fn invisible_and_reordering_characters_are_not_printable() {
        assert!(super::is_printable("sub-1 é 日本"));
        for bad in ["a\u{202e}b", "a\u{200b}", "\u{feff}x", "a\nb", "a\0"] {
            assert!(!super::is_printable(bad), "{bad:?}");
        }
    }
}
