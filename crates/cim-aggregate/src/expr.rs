//! Expressions over JSON: CEL (the `cel` crate) over a context whose top-level keys are the
//! expression's variables (`amount > 100`, `customer.tier == "gold"`). Workflow decisions and
//! automated steps evaluate them over an instance's context; workflow event filters and webhook
//! subscription conditions test them over `event` ([`event_view`]). Deterministic: CEL has no
//! clock or randomness, so deciding on an expression's value is as pure as the rest of the rules.

use std::collections::HashMap;

use cim_core::EventEnvelope;
use serde_json::{Map, Value};

/// An event as conditions and step outputs see it (`event.event_type`, `event.payload.to`, ...).
pub fn event_view(event: &EventEnvelope) -> Map<String, Value> {
    let mut map = Map::new();
    map.insert("event_id".into(), Value::String(event.event_id.to_string()));
    map.insert("event_type".into(), Value::String(event.event_type.to_string()));
    map.insert("domain".into(), Value::String(event.domain.to_string()));
    map.insert("aggregate_type".into(), Value::String(event.aggregate_type.to_string()));
    map.insert("aggregate_id".into(), Value::String(event.aggregate_id.to_string()));
    map.insert("sequence".into(), Value::from(event.sequence));
    map.insert("occurred_at".into(), Value::String(event.occurred_at.to_rfc3339()));
    map.insert("actor".into(), Value::String(event.actor.to_string()));
    map.insert("payload".into(), event.payload.clone());
    map
}

/// A parsed expression with the source it came from.
#[derive(Debug)]
pub struct Expr {
    program: cel::Program,
}

impl Expr {
    /// The expression `source` states, or why it does not parse.
    pub fn parse(source: &str) -> Result<Expr, String> {
        if source.trim().is_empty() {
            return Err("an empty expression".into());
        }
        if source.len() > 4_096 {
            return Err("an expression of at most 4096 bytes".into());
        }
        cel::Program::compile(source).map(|program| Expr { program }).map_err(|e| format!("not a CEL expression: {e}"))
    }

    /// The expression's value over `context`, as JSON.
    pub fn evaluate(&self, context: &Map<String, Value>) -> Result<Value, String> {
        let mut scope = cel::Context::default();
        for (key, value) in context {
            scope.add_variable_from_value(key.clone(), to_cel(value));
        }
        let value = self.program.execute(&scope).map_err(|e| e.to_string())?;
        value.json().map_err(|e| format!("a value JSON cannot hold: {e:?}"))
    }

    /// The expression's value over `context`, which must be a bool.
    pub fn test(&self, context: &Map<String, Value>) -> Result<bool, String> {
        match self.evaluate(context)? {
            Value::Bool(b) => Ok(b),
            other => Err(format!("a condition must be a bool, got {other}")),
        }
    }
}

/// JSON as CEL sees it. Integral numbers are CEL ints (signed), so `count + 1` and `count > 0`
/// mean what they say; CEL does not mix its int and uint types in arithmetic.
fn to_cel(value: &Value) -> cel::Value {
    match value {
        Value::Null => cel::Value::Null,
        Value::Bool(b) => cel::Value::Bool(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => cel::Value::Int(i),
            None => {
                n.as_u64().map(cel::Value::UInt).unwrap_or_else(|| cel::Value::Float(n.as_f64().unwrap_or(f64::NAN)))
            }
        },
        Value::String(s) => cel::Value::from(s.clone()),
        Value::Array(items) => cel::Value::from(items.iter().map(to_cel).collect::<Vec<_>>()),
        Value::Object(map) => {
            let map: HashMap<String, cel::Value> = map.iter().map(|(k, v)| (k.clone(), to_cel(v))).collect();
            cel::Value::from(map)
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn context(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn conditions_see_the_context() {
        let c = context(json!({"amount": 150, "customer": {"tier": "gold"}, "tags": ["a", "b"]}));
        assert!(Expr::parse("amount > 100 && customer.tier == 'gold'").unwrap().test(&c).unwrap());
        assert!(!Expr::parse("size(tags) > 2").unwrap().test(&c).unwrap());
        assert_eq!(Expr::parse("amount * 2 + 1").unwrap().evaluate(&c).unwrap(), json!(301));
        assert_eq!(Expr::parse("customer.tier + '!'").unwrap().evaluate(&c).unwrap(), json!("gold!"));
    }

    #[test]
    fn bad_expressions_and_missing_variables_are_errors() {
        assert!(Expr::parse("amount >").is_err());
        assert!(Expr::parse("  ").is_err());
        let missing = Expr::parse("price * 2").unwrap().evaluate(&Map::new()).unwrap_err();
        assert!(missing.contains("price"), "{missing}");
        let not_bool = Expr::parse("1 + 1").unwrap().test(&Map::new()).unwrap_err();
        assert!(not_bool.contains("bool"), "{not_bool}");
    }
}
