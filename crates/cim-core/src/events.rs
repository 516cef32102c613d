//! Domain event types, one module per domain. Payloads are plain serde structs; the envelope's
//! `event_type` names which one a payload is. A domain lists its events once, in
//! [`domain_events!`], which writes the enum and its conversions to and from envelopes.

pub mod graph;

/// A domain's event type as the kit handles it: to the store's form and back.
/// [`domain_events!`] implements it.
pub trait DomainEvent: Sized + Send + Sync {
    fn event_type(&self) -> &'static str;
    fn to_new_event(&self) -> crate::envelope::NewEvent;
    fn from_envelope(e: &crate::envelope::EventEnvelope) -> Result<Self, String>;
}

/// Defines a domain's event enum from one list of `Variant(Payload) = "type_name"`: the enum,
/// `TYPES` (every type name), `event_type()`, `to_new_event()` (schema version 1) and
/// `from_envelope()` (reads a stored, upcast event without copying its payload).
#[macro_export]
macro_rules! domain_events {
    ($(#[$meta:meta])* $vis:vis enum $name:ident { $($variant:ident($payload:ty) = $type_name:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq)]
        $vis enum $name {
            $($variant($payload)),+
        }

        impl $name {
            pub const TYPES: &'static [&'static str] = &[$($type_name),+];

            pub fn event_type(&self) -> &'static str {
                match self {
                    $(Self::$variant(_) => $type_name),+
                }
            }

            /// The event as the store takes it (current schema version 1).
            pub fn to_new_event(&self) -> $crate::envelope::NewEvent {
                // Serializing these structs cannot fail: string keys, no non-finite floats
                // (serde_json::Value cannot hold them).
                let payload = match self {
                    $(Self::$variant(e) => $crate::__private::serde_json::to_value(e)),+
                };
                $crate::envelope::NewEvent {
                    event_type: self.event_type().parse().expect("event type names are snake_case (tested)"),
                    schema_version: 1,
                    payload: payload.unwrap_or_default(),
                }
            }

            /// Reads a stored (and upcast) event.
            pub fn from_envelope(e: &$crate::envelope::EventEnvelope) -> Result<Self, String> {
                use $crate::__private::serde::Deserialize;
                let parse_err = |err: $crate::__private::serde_json::Error| format!("{} payload: {err}", e.event_type);
                Ok(match e.event_type.as_str() {
                    $($type_name => Self::$variant(<$payload>::deserialize(&e.payload).map_err(parse_err)?),)+
                    other => return Err(format!("unknown {} event type {other:?}", stringify!($name))),
                })
            }
        }

        impl $crate::events::DomainEvent for $name {
            fn event_type(&self) -> &'static str {
                $name::event_type(self)
            }

            fn to_new_event(&self) -> $crate::envelope::NewEvent {
                $name::to_new_event(self)
            }

            fn from_envelope(e: &$crate::envelope::EventEnvelope) -> Result<Self, String> {
                $name::from_envelope(e)
            }
        }
    };
}

pub use crate::domain_events;
