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

/// The largest integer every JSON reader keeps exactly (2^53 - 1, JavaScript's
/// `Number.MAX_SAFE_INTEGER`): a `Struct` number is a double, which holds every integer up to it.
pub const MAX_SAFE_INTEGER: i64 = (1 << 53) - 1;

/// A `Struct` number as JSON: an integral double within ±[`MAX_SAFE_INTEGER`] is written as an
/// integer (`2020`, not `2020.0`), so a document of integers reads back as it was written; any
/// other finite double as the shortest text that reads back to the same bits. `-0.0` is written
/// `0`, the same JSON number: Postgres' `numeric` (the projections' `jsonb`) has no negative zero,
/// so writing it any other way would make the event and the projection disagree.
pub fn number_to_json(n: f64) -> Result<serde_json::Number, NonFiniteNumber> {
    if n.fract() == 0.0 && n.abs() <= MAX_SAFE_INTEGER as f64 {
        Ok((n as i64).into())
    } else {
        serde_json::Number::from_f64(n).ok_or(NonFiniteNumber)
    }
}

/// A JSON number as a `Struct` number, if a double holds it exactly: every float does (JSON
/// floats are read as the nearest double), an integer only within ±[`MAX_SAFE_INTEGER`].
pub fn json_number_exact(n: &serde_json::Number) -> Option<f64> {
    match (n.as_i64(), n.as_u64()) {
        (Some(i), _) => (i.unsigned_abs() <= MAX_SAFE_INTEGER as u64).then_some(i as f64),
        (None, Some(u)) => (u <= MAX_SAFE_INTEGER as u64).then_some(u as f64),
        (None, None) => n.as_f64(),
    }
}

/// The path (`a.b[2]`) of the first integer in `v` that a double cannot hold exactly.
pub fn first_inexact_integer(v: &serde_json::Value) -> Option<(String, serde_json::Number)> {
    match v {
        serde_json::Value::Number(n) => json_number_exact(n).is_none().then(|| (String::new(), n.clone())),
        serde_json::Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, item)| first_inexact_integer(item).map(|(path, n)| (format!("[{i}]{}", dotted(&path)), n))),
        serde_json::Value::Object(map) => map
            .iter()
            .find_map(|(k, item)| first_inexact_integer(item).map(|(path, n)| (format!("{k}{}", dotted(&path)), n))),
        _ => None,
    }
}

fn dotted(rest: &str) -> String {
    if rest.is_empty() || rest.starts_with('[') { rest.to_owned() } else { format!(".{rest}") }
}

pub fn value_to_json(v: prost_types::Value) -> Result<serde_json::Value, NonFiniteNumber> {
    Ok(match v.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::BoolValue(b)) => b.into(),
        Some(Kind::StringValue(s)) => s.into(),
        Some(Kind::NumberValue(n)) => serde_json::Value::Number(number_to_json(n)?),
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

/// JSON as a `Struct` value. Integers beyond ±[`MAX_SAFE_INTEGER`] become the nearest double:
/// edges that take JSON from users refuse them first ([`first_inexact_integer`]).
pub fn json_to_value(v: &serde_json::Value) -> prost_types::Value {
    let kind = match v {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(*b),
        serde_json::Value::Number(n) => Kind::NumberValue(json_number_exact(n).or(n.as_f64()).unwrap_or_default()),
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

    #[test]
    fn integers_stay_integers_and_doubles_keep_their_bits() {
        let json: serde_json::Value =
            serde_json::from_str(r#"{"since":2020,"neg":-7,"max":9007199254740991}"#).unwrap();
        let back = serde_json::Value::Object(struct_to_json(Some(json_to_struct(json.as_object().unwrap()))).unwrap());
        assert_eq!(back.to_string(), r#"{"max":9007199254740991,"neg":-7,"since":2020}"#);
        for x in [2.7715077941825975e-163, 5e-324, 1.5, 1e300, f64::MAX, 9007199254740992.0, -1e-310] {
            let text = serde_json::Value::Number(number_to_json(x).unwrap()).to_string();
            let read: f64 = serde_json::from_str(&text).unwrap();
            assert_eq!(read.to_bits(), x.to_bits(), "{x} as {text}");
        }
        assert_eq!(number_to_json(3.0).unwrap().to_string(), "3");
        assert_eq!(number_to_json(-0.0).unwrap().to_string(), "0");
        assert!(number_to_json(f64::NAN).is_err());
    }

    #[test]
    fn integers_a_double_cannot_hold_are_found_with_their_path() {
        let ok: serde_json::Value = serde_json::from_str(r#"{"a":[1,2.5,-9007199254740991],"b":1e300}"#).unwrap();
        assert_eq!(first_inexact_integer(&ok), None);
        let bad: serde_json::Value = serde_json::from_str(r#"{"a":{"b":[1,{"c":9007199254740993}]}}"#).unwrap();
        let (path, n) = first_inexact_integer(&bad).unwrap();
        assert_eq!((path.as_str(), n.to_string().as_str()), ("a.b[1].c", "9007199254740993"));
        let big: serde_json::Value = serde_json::from_str("[-9223372036854775808]").unwrap();
        assert_eq!(first_inexact_integer(&big).unwrap().0, "[0]");
    }
}
