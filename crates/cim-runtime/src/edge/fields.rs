//! Request fields every domain reads the same way, refused with the field's name.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use super::EdgeError;

/// A protobuf timestamp as an instant; absent stays absent, an impossible one is refused.
pub fn instant(field: &str, t: Option<prost_types::Timestamp>) -> Result<Option<DateTime<Utc>>, EdgeError> {
    t.map(|t| {
        u32::try_from(t.nanos)
            .ok()
            .and_then(|nanos| DateTime::from_timestamp(t.seconds, nanos))
            .ok_or_else(|| EdgeError::invalid(field, "not a valid timestamp"))
    })
    .transpose()
}

/// A `google.protobuf.Struct` as the JSON object it stands for (absent: empty); numbers keep
/// their exact value ([`cim_proto::json`]).
pub fn json(field: &str, s: Option<prost_types::Struct>) -> Result<Map<String, Value>, EdgeError> {
    cim_proto::json::struct_to_json(s).map_err(|e| EdgeError::invalid(field, e.to_string()))
}
