//! Identifiers. Each is a UUIDv7 (time-ordered, so B-tree inserts stay local) wrapped in its own
//! type so an aggregate id can never be passed where an event id is expected.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

/// Why a string or UUID is not an acceptable identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("{kind}: expected a UUID like 0190f3a2-7c4e-7b1a-9f00-0123456789ab, got {input:?}")]
    Malformed { kind: &'static str, input: String },
    #[error("{kind}: expected a UUID of version 7, got version {version}")]
    WrongVersion { kind: &'static str, version: usize },
    #[error("{kind}: the nil UUID is not an identifier")]
    Nil { kind: &'static str },
}

fn check(kind: &'static str, uuid: Uuid) -> Result<Uuid, IdError> {
    if uuid.is_nil() {
        return Err(IdError::Nil { kind });
    }
    match uuid.get_version_num() {
        7 => Ok(uuid),
        version => Err(IdError::WrongVersion { kind, version }),
    }
}

macro_rules! uuid7_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(Uuid);

        impl $name {
            /// A fresh, time-ordered id.
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }

            /// Accepts only a non-nil UUIDv7.
            pub fn from_uuid(uuid: Uuid) -> Result<Self, IdError> {
                check($kind, uuid).map(Self)
            }

            pub fn as_uuid(&self) -> Uuid {
                self.0
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl FromStr for $name {
            type Err = IdError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                // Only the hyphenated form: ids travel in subjects and URLs, one spelling each.
                if s.len() != 36 {
                    return Err(IdError::Malformed { kind: $kind, input: truncate(s) });
                }
                let uuid = Uuid::try_parse(s)
                    .map_err(|_| IdError::Malformed { kind: $kind, input: truncate(s) })?;
                Self::from_uuid(uuid)
            }
        }

        impl TryFrom<Uuid> for $name {
            type Error = IdError;

            fn try_from(uuid: Uuid) -> Result<Self, Self::Error> {
                Self::from_uuid(uuid)
            }
        }

        impl From<$name> for Uuid {
            fn from(id: $name) -> Uuid {
                id.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0.hyphenated(), f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self.0.hyphenated())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(&self.0.hyphenated())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

fn truncate(s: &str) -> String {
    // Bad input is echoed in errors; bound it so a megabyte of garbage stays out of logs.
    s.chars().take(64).collect()
}

uuid7_id!(
    /// Identity of one stored event; also its `Nats-Msg-Id`, so JetStream drops re-publishes.
    EventId, "event id");
uuid7_id!(
    /// Identity of an aggregate (a graph, a document, a workflow instance, an agent, ...).
    AggregateId, "aggregate id");
uuid7_id!(
    /// Shared by every event that descends from one root command.
    CorrelationId, "correlation id");
uuid7_id!(
    /// The command or event that directly caused an event.
    CausationId, "causation id");
uuid7_id!(
    /// The tenant that owns the data; every query and event is scoped by it.
    TenantId, "tenant id");
uuid7_id!(
    /// Identity of one command as submitted by a client.
    CommandId, "command id");

impl CommandId {
    /// A root command starts its own correlation: the correlation id is the command's id.
    pub fn as_root_correlation(&self) -> CorrelationId {
        CorrelationId(self.0)
    }

    /// The command is the cause of the events it produces.
    pub fn as_causation(&self) -> CausationId {
        CausationId(self.0)
    }
}

impl EventId {
    /// An event handled by a consumer is the cause of the events the consumer emits.
    pub fn as_causation(&self) -> CausationId {
        CausationId(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_v7_uuid_and_prints_it_back() {
        let id = EventId::new();
        let text = id.to_string();
        assert_eq!(text.parse::<EventId>().unwrap(), id);
        assert_eq!(text.len(), 36);
    }

    #[test]
    fn rejects_garbage_with_a_message_naming_the_kind() {
        let err = "not-a-uuid".parse::<AggregateId>().unwrap_err();
        assert!(matches!(err, IdError::Malformed { .. }));
        assert!(err.to_string().starts_with("aggregate id: expected a UUID"), "{err}");
        assert!(err.to_string().contains("not-a-uuid"));
    }

    #[test]
    fn rejects_other_uuid_versions() {
        let v4 = "2f1b6a4e-8d1c-4b7a-9c3e-5a6b7c8d9e0f";
        let err = v4.parse::<TenantId>().unwrap_err();
        assert_eq!(err, IdError::WrongVersion { kind: "tenant id", version: 4 });
        assert_eq!(err.to_string(), "tenant id: expected a UUID of version 7, got version 4");
    }

    #[test]
    fn rejects_nil_and_non_hyphenated_forms() {
        let nil = "00000000-0000-0000-0000-000000000000";
        assert_eq!(nil.parse::<EventId>().unwrap_err(), IdError::Nil { kind: "event id" });
        let simple = EventId::new().as_uuid().simple().to_string();
        assert!(matches!(simple.parse::<EventId>(), Err(IdError::Malformed { .. })));
        let braced = format!("{{{}}}", EventId::new());
        assert!(braced.parse::<EventId>().is_err());
    }

    #[test]
    fn long_garbage_is_truncated_in_the_message() {
        let junk = "x".repeat(10_000);
        let err = junk.parse::<EventId>().unwrap_err().to_string();
        assert!(err.len() < 200, "{err}");
    }

    #[test]
    fn serde_goes_through_the_same_parser() {
        let id = CorrelationId::new();
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{id}\""));
        assert_eq!(serde_json::from_str::<CorrelationId>(&json).unwrap(), id);
        let err = serde_json::from_str::<CorrelationId>("\"2f1b6a4e-8d1c-4b7a-9c3e-5a6b7c8d9e0f\"").unwrap_err();
        assert!(err.to_string().contains("version 7"), "{err}");
    }

    #[test]
    fn ids_are_time_ordered() {
        let a = EventId::new();
        let b = EventId::new();
        assert!(a < b);
    }

    #[test]
    fn a_root_command_correlates_with_itself() {
        let cmd = CommandId::new();
        assert_eq!(cmd.as_root_correlation().as_uuid(), cmd.as_uuid());
        assert_eq!(cmd.as_causation().as_uuid(), cmd.as_uuid());
    }
}
