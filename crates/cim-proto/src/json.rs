//! `google.protobuf.Struct` <-> JSON, for services and edges that carry JSON documents.

use prost_types::value::Kind;

/// A number that JSON cannot carry (NaN or infinite).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NonFiniteNumber;

impl std::fmt::Display for NonFiniteNumber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("numbers must be finite")
    }
}

impl std::error::Error for NonFiniteNumber {}

pub fn value_to_json(v: prost_types::Value) -> Result<serde_json::Value, NonFiniteNumber> {
    Ok(match v.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::BoolValue(b)) => b.into(),
        Some(Kind::StringValue(s)) => s.into(),
        Some(Kind::NumberValue(n)) => {
            serde_json::Number::from_f64(n).map(serde_json::Value::Number).ok_or(NonFiniteNumber)?
        }
        Some(Kind::StructValue(s)) => serde_json::Value::Object(struct_to_json(Some(s))?),
        Some(Kind::ListValue(l)) => {
            serde_json::Value::Array(l.values.into_iter().map(value_to_json).collect::<Result<_, _>>()?)
        }
    })
}

/// A `Struct` as a JSON object (absent: empty).
pub fn struct_to_json(
    s: Option<prost_types::Struct>,
) -> Result<serde_json::Map<String, serde_json::Value>, NonFiniteNumber> {
    let Some(s) = s else { return Ok(serde_json::Map::new()) };
    s.fields.into_iter().map(|(k, v)| Ok((k, value_to_json(v)?))).collect()
}

pub fn json_to_value(v: &serde_json::Value) -> prost_types::Value {
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

pub fn json_to_struct(map: &serde_json::Map<String, serde_json::Value>) -> prost_types::Struct {
    prost_types::Struct { fields: map.iter().map(|(k, v)| (k.clone(), json_to_value(v))).collect() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn structs_round_trip_through_json() {
        let json: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(r#"{"a":1.5,"b":[true,null,"x"],"c":{"d":{}}}"#).unwrap();
        assert_eq!(struct_to_json(Some(json_to_struct(&json))).unwrap(), json);
    }
}
