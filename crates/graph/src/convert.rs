//! Proto <-> domain conversion at the service edge: parse, don't validate.

use std::str::FromStr;

use cim_core::events::graph::{EdgeId, NodeId, Properties};
use cim_core::{AggregateId, TypeName};
use prost_types::value::Kind;

use crate::error::ServiceError;

pub fn aggregate_id(field: &str, s: &str) -> Result<AggregateId, ServiceError> {
    AggregateId::from_str(s).map_err(|e| ServiceError::invalid(field, e.to_string()))
}

pub fn node_id(field: &str, s: &str) -> Result<NodeId, ServiceError> {
    NodeId::from_str(s).map_err(|e| ServiceError::invalid(field, e.to_string()))
}

pub fn edge_id(field: &str, s: &str) -> Result<EdgeId, ServiceError> {
    EdgeId::from_str(s).map_err(|e| ServiceError::invalid(field, e.to_string()))
}

pub fn optional_node_id(field: &str, s: &str) -> Result<Option<NodeId>, ServiceError> {
    if s.is_empty() { Ok(None) } else { node_id(field, s).map(Some) }
}

pub fn optional_edge_id(field: &str, s: &str) -> Result<Option<EdgeId>, ServiceError> {
    if s.is_empty() { Ok(None) } else { edge_id(field, s).map(Some) }
}

pub fn type_name(field: &str, s: &str) -> Result<TypeName, ServiceError> {
    TypeName::from_str(s).map_err(|e| ServiceError::invalid(field, e.to_string()))
}

fn value_to_json(field: &str, v: prost_types::Value) -> Result<serde_json::Value, ServiceError> {
    Ok(match v.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::BoolValue(b)) => b.into(),
        Some(Kind::StringValue(s)) => s.into(),
        Some(Kind::NumberValue(n)) => serde_json::Number::from_f64(n)
            .map(serde_json::Value::Number)
            .ok_or_else(|| ServiceError::invalid(field, "numbers must be finite"))?,
        Some(Kind::StructValue(s)) => serde_json::Value::Object(struct_to_json(field, Some(s))?),
        Some(Kind::ListValue(l)) => {
            serde_json::Value::Array(l.values.into_iter().map(|v| value_to_json(field, v)).collect::<Result<_, _>>()?)
        }
    })
}

/// A `google.protobuf.Struct` as a JSON object (absent: empty).
pub fn struct_to_json(field: &str, s: Option<prost_types::Struct>) -> Result<Properties, ServiceError> {
    let Some(s) = s else { return Ok(Properties::new()) };
    s.fields.into_iter().map(|(k, v)| Ok((k, value_to_json(field, v)?))).collect()
}

fn json_to_value(v: &serde_json::Value) -> prost_types::Value {
    let kind = match v {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(*b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        serde_json::Value::String(s) => Kind::StringValue(s.clone()),
        serde_json::Value::Array(items) => {
            Kind::ListValue(prost_types::ListValue { values: items.iter().map(json_to_value).collect() })
        }
        serde_json::Value::Object(map) => Kind::StructValue(json_to_struct(map)),
    };
    prost_types::Value { kind: Some(kind) }
}

pub fn json_to_struct(map: &Properties) -> prost_types::Struct {
    prost_types::Struct { fields: map.iter().map(|(k, v)| (k.clone(), json_to_value(v))).collect() }
}

pub fn timestamp(t: chrono::DateTime<chrono::Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: t.timestamp(), nanos: t.timestamp_subsec_nanos() as i32 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn structs_round_trip_through_json() {
        let json: Properties = serde_json::from_str(r#"{"a":1.5,"b":[true,null,"x"],"c":{"d":{}}}"#).unwrap();
        let back = struct_to_json("p", Some(json_to_struct(&json))).unwrap();
        assert_eq!(back, json);
    }

    #[test]
    fn bad_ids_name_their_field() {
        let err = aggregate_id("graph_id", "nope").unwrap_err();
        assert!(err.to_string().starts_with("graph_id: aggregate id: expected a UUID"), "{err}");
        assert!(node_id("node.id", "a b").is_err());
        assert!(type_name("node.type", "Person").is_err());
    }
}
