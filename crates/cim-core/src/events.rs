//! Domain event types, one module per domain. Payloads are plain serde structs; the envelope's
//! `event_type` names which one a payload is.

pub mod graph;
