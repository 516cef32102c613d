use serde_json::{Value, json};

use super::*;

fn parse(v: Value) -> Result<Definition, SpecError> {
    Definition::parse(v.as_object().unwrap())
}

fn refusal(v: Value) -> (String, String) {
    let e = parse(v).unwrap_err();
    (e.field, e.reason)
}

#[test]
fn a_good_definition_parses_with_every_kind() {
    let d = parse(json!({
        "name": "review",
        "steps": [
            {"id": "fetch", "kind": "automated", "set": {"total": "price * qty"}, "retry": {"max_attempts": 3}},
            {"id": "big", "kind": "decision", "depends_on": ["fetch"], "condition": "total > 100",
             "when_true": ["approve"], "when_false": ["file"]},
            {"id": "approve", "kind": "approval", "depends_on": ["big"], "role": "manager", "timeout_ms": 60000},
            {"id": "file", "kind": "manual", "depends_on": ["big"]},
            {"id": "cool_off", "kind": "timer", "depends_on": ["fetch"], "sleep_ms": 10},
            {"id": "join", "kind": "parallel", "depends_on": ["approve", "file", "cool_off"]}
        ]
    }))
    .unwrap();
    assert_eq!(d.steps.len(), 6);
    assert_eq!(d.steps[0].retry_policy().max_attempts, 3);
    assert_eq!(d.steps[1].kind, StepKind::Decision);
}

#[test]
fn the_content_id_names_the_content() {
    let a = parse(json!({"name": "n", "steps": [{"id": "a", "kind": "parallel"}]})).unwrap();
    let same = parse(json!({"steps": [{"kind": "parallel", "id": "a"}], "name": "n"})).unwrap();
    let other = parse(json!({"name": "n", "steps": [{"id": "b", "kind": "parallel"}]})).unwrap();
    assert_eq!(a.content_id(), same.content_id(), "key order does not matter");
    assert_ne!(a.content_id(), other.content_id());
    let cid = cid::Cid::try_from(a.content_id().as_str()).unwrap();
    assert_eq!((cid.version(), cid.codec(), cid.hash().code()), (cid::Version::V1, 0x0200, 0x1e));
}

#[test]
fn a_dependency_that_makes_a_cycle_is_refused() {
    let (field, reason) = refusal(json!({"name": "n", "steps": [
        {"id": "a", "kind": "parallel", "depends_on": ["c"]},
        {"id": "b", "kind": "parallel", "depends_on": ["a"]},
        {"id": "c", "kind": "parallel", "depends_on": ["b"]}
    ]}));
    assert_eq!(field, "definition.steps[1].depends_on[0]", "b -> a closes the cycle the walk from a found");
    assert_eq!(reason, "makes a cycle: a -> c -> b -> a");
    let (field, _) = refusal(json!({"name": "n", "steps": [{"id": "a", "kind": "parallel", "depends_on": ["a"]}]}));
    assert_eq!(field, "definition.steps[0].depends_on[0]");
}

#[test]
fn unknown_kinds_bad_expressions_and_dangling_names_are_refused_by_field() {
    let cases = [
        (
            json!({"name": "n", "steps": [{"id": "a", "kind": "teleport"}]}),
            "definition.steps[0].kind",
            "unknown step kind",
        ),
        (
            json!({"name": "n", "steps": [{"id": "a", "kind": "decision", "condition": "x >"}]}),
            "definition.steps[0].condition",
            "not a CEL expression",
        ),
        (
            json!({"name": "n", "steps": [{"id": "a", "kind": "automated", "set": {"y": "1 +"}}]}),
            "definition.steps[0].set.y",
            "not a CEL expression",
        ),
        (
            json!({"name": "n", "steps": [{"id": "a", "kind": "parallel", "depends_on": ["z"]}]}),
            "definition.steps[0].depends_on[0]",
            "no step",
        ),
        (json!({"name": "n", "steps": []}), "definition.steps", "at least one step"),
        (json!({"name": " ", "steps": [{"id": "a", "kind": "parallel"}]}), "definition.name", "1 to 200"),
        (json!({"name": "n", "steps": [{"id": "A", "kind": "parallel"}]}), "definition.steps[0].id", "snake_case"),
        (
            json!({"name": "n", "steps": [{"id": "a", "kind": "parallel"}, {"id": "a", "kind": "manual"}]}),
            "definition.steps[1].id",
            "used twice",
        ),
        (json!({"name": "n", "steps": [{"id": "a", "kind": "timer"}]}), "definition.steps[0].sleep_ms", "either"),
        (
            json!({"name": "n", "steps": [{"id": "a", "kind": "approval"}]}),
            "definition.steps[0].role",
            "names the role",
        ),
        (
            json!({"name": "n", "steps": [{"id": "a", "kind": "automated", "role": "x"}]}),
            "definition.steps[0].role",
            "only for",
        ),
        (json!({"name": "n", "steps": [{"id": "a", "kind": "integration"}]}), "definition.steps[0].call", "needs call"),
        (
            json!({"name": "n", "steps": [{"id": "a", "kind": "parallel", "retry": {"max_attempts": 0}}]}),
            "definition.steps[0].retry.max_attempts",
            "from 1",
        ),
        (
            json!({"name": "n", "steps": [{"id": "a", "kind": "decision", "condition": "true", "when_true": ["b"]},
                                          {"id": "b", "kind": "parallel"}]}),
            "definition.steps[0].when_true[0]",
            "must depend on",
        ),
        (
            json!({"name": "n", "steps": [{"id": "a", "kind": "parallel", "colour": 1}]}),
            "definition.steps[0]",
            "unknown field",
        ),
    ];
    for (definition, field, reason) in cases {
        let (got_field, got_reason) = refusal(definition.clone());
        assert_eq!(got_field, field, "{definition}");
        assert!(got_reason.contains(reason), "{definition}: {got_reason}");
    }
}

#[test]
fn backoff_doubles_up_to_the_cap_with_equal_jitter() {
    let p = RetryPolicy { max_attempts: 5, initial_backoff_ms: 100, max_backoff_ms: 350 };
    assert_eq!((p.backoff_ms(1, 0.0), p.backoff_ms(1, 0.999)), (50, 99));
    assert_eq!(p.backoff_ms(2, 0.0), 100);
    assert_eq!((p.backoff_ms(3, 0.0), p.backoff_ms(9, 0.5)), (175, 262));
}
