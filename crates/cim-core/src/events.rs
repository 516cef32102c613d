//! Domain event types, one module per domain. Payloads are plain serde structs; the envelope's
//! `event_type` names which one a payload is. A domain lists its events once, in
//! [`domain_events!`], which writes the enum and its conversions to and from envelopes.

pub mod graph;

/// Defines a domain's event enum from one list of `Variant(Payload) = "type_name"`: the enum,
/// `TYPES` (every type name), `event_type()`, `to_new_event()` (schema version 1) and
/// `from_envelope()` (reads a stored, upcast event without copying its payload).
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
                    $(Self::$variant(e) => serde_json::to_value(e)),+
                };
                $crate::envelope::NewEvent {
                    event_type: self.event_type().parse().expect("event type names are snake_case (tested)"),
                    schema_version: 1,
                    payload: payload.unwrap_or_default(),
                }
            }

            /// Reads a stored (and upcast) event.
            pub fn from_envelope(e: &$crate::envelope::EventEnvelope) -> Result<Self, String> {
                use serde::Deserialize;
                let parse_err = |err: serde_json::Error| format!("{} payload: {err}", e.event_type);
                Ok(match e.event_type.as_str() {
                    $($type_name => Self::$variant(<$payload>::deserialize(&e.payload).map_err(parse_err)?),)+
                    other => return Err(format!("unknown {} event type {other:?}", stringify!($name))),
                })
            }
        }
    };
}

pub(crate) use domain_events;
