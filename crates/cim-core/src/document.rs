//! The rules every JSON document a user stores (a domain's property document) must meet to be
//! stored and read back unchanged, shared by every domain: no NUL character (Postgres text and
//! jsonb cannot hold one), nesting and size within limits. Every finite number is storable:
//! numbers are read back exactly (serde_json's `float_roundtrip`), including the 309-digit
//! integer Postgres prints for `f64::MAX`.

use serde_json::{Map, Value};

/// How deep and how large one document may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DocumentLimits {
    /// Serialized size in bytes.
    pub max_bytes: usize,
    /// Nesting depth (a flat object is depth 1).
    pub max_depth: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DocumentError {
    #[error("must not contain NUL characters (\\u0000)")]
    Nul,
    #[error("nested {depth} deep; at most {max} allowed")]
    TooDeep { depth: usize, max: usize },
    #[error("{bytes} bytes; at most {max} allowed")]
    TooLarge { bytes: usize, max: usize },
}

/// Checks a document (a JSON object) against the rules.
pub fn check(document: &Map<String, Value>, limits: &DocumentLimits) -> Result<(), DocumentError> {
    if document.iter().any(has_nul_entry) {
        return Err(DocumentError::Nul);
    }
    let depth = 1 + document.values().map(depth).max().unwrap_or(0);
    if depth > limits.max_depth {
        return Err(DocumentError::TooDeep { depth, max: limits.max_depth });
    }
    let bytes = serde_json::to_vec(document).map(|v| v.len()).unwrap_or(usize::MAX);
    if bytes > limits.max_bytes {
        return Err(DocumentError::TooLarge { bytes, max: limits.max_bytes });
    }
    Ok(())
}

fn depth(value: &Value) -> usize {
    match value {
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

fn has_nul(value: &Value) -> bool {
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(has_nul),
        Value::Object(map) => map.iter().any(has_nul_entry),
        _ => false,
    }
}

fn has_nul_entry((key, value): (&String, &Value)) -> bool {
    key.contains('\0') || has_nul(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const LIMITS: DocumentLimits = DocumentLimits { max_bytes: 1024, max_depth: 3 };

    fn doc(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn nul_depth_and_size_are_refused() {
        assert_eq!(check(&doc(json!({"a": "x\u{0}"})), &LIMITS), Err(DocumentError::Nul));
        assert_eq!(check(&doc(json!({"a\u{0}": 1})), &LIMITS), Err(DocumentError::Nul));
        assert_eq!(check(&doc(json!({"a": [[{"b": 1}]]})), &LIMITS), Err(DocumentError::TooDeep { depth: 4, max: 3 }));
        assert!(matches!(check(&doc(json!({"a": "x".repeat(2000)})), &LIMITS), Err(DocumentError::TooLarge { .. })));
        assert_eq!(check(&doc(json!({"a": [{"b": 1}]})), &LIMITS), Ok(()));
    }

    #[test]
    fn every_finite_double_is_storable_and_reads_back_from_postgres_text() {
        for x in [f64::MAX, f64::MIN, 1e308, 5e-324, f64::MIN_POSITIVE, 2.7715077941825975e-163] {
            assert_eq!(check(&doc(json!({ "x": x })), &LIMITS), Ok(()));
            // Postgres prints jsonb numbers as plain decimals, without an exponent.
            let printed = format!("{x:.400}");
            let printed = printed.trim_end_matches('0').trim_end_matches('.');
            let back: f64 = serde_json::from_str::<Value>(printed).unwrap().as_f64().unwrap();
            assert_eq!(back.to_bits(), x.to_bits(), "{x}");
        }
    }
}
