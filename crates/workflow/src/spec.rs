//! A workflow definition as its JSON says it: named steps of a kind, joined by dependencies into
//! a DAG. [`Definition::parse`] checks everything a run would otherwise trip over later (unknown
//! kinds, dangling or cyclic dependencies, expressions that do not parse, timers without a time)
//! and names the field of each refusal; [`Definition::content_id`] is the version's identity.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::expr::Expr;

mod outward;

pub use outward::{CallSpec, ChildSpec, EventFilter, LISTENED, TaskSpec, subject_domain, subject_matches};

pub const STEPS_MAX: usize = 200;
const NAME_MAX: usize = 200;
const DESCRIPTION_MAX: usize = 4_000;
const ID_MAX: usize = 64;
const ROLE_MAX: usize = 64;
pub const ATTEMPTS_MAX: u32 = 100;
const TRIGGERS_MAX: usize = 16;
/// The longest sleep, timeout or backoff a definition may ask for: a year.
const MS_MAX: u64 = 365 * 24 * 3_600_000;

/// What a step does. The reference CIM's six (`integration` calls another CIM service), plus
/// `timer`, `agent_task`, `wait_event` and `workflow` (a child workflow).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepKind {
    Manual,
    Automated,
    Decision,
    Approval,
    Integration,
    Parallel,
    Timer,
    AgentTask,
    WaitEvent,
    Workflow,
}

impl StepKind {
    pub const NAMES: &[&str] = &[
        "manual",
        "automated",
        "decision",
        "approval",
        "integration",
        "parallel",
        "timer",
        "agent_task",
        "wait_event",
        "workflow",
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            StepKind::Manual => "manual",
            StepKind::Automated => "automated",
            StepKind::Decision => "decision",
            StepKind::Approval => "approval",
            StepKind::Integration => "integration",
            StepKind::Parallel => "parallel",
            StepKind::Timer => "timer",
            StepKind::AgentTask => "agent_task",
            StepKind::WaitEvent => "wait_event",
            StepKind::Workflow => "workflow",
        }
    }

    pub fn parse(s: &str) -> Option<StepKind> {
        Self::NAMES.iter().position(|n| *n == s).map(|i| {
            [
                Self::Manual,
                Self::Automated,
                Self::Decision,
                Self::Approval,
                Self::Integration,
                Self::Parallel,
                Self::Timer,
                Self::AgentTask,
                Self::WaitEvent,
                Self::Workflow,
            ][i]
        })
    }

    /// Steps a person carries out: the only ones assigned to people.
    pub fn is_for_people(self) -> bool {
        matches!(self, StepKind::Manual | StepKind::Approval)
    }

    /// Steps whose start the engine follows with a call to another service (or this one).
    pub fn reaches_out(self) -> bool {
        matches!(self, StepKind::Integration | StepKind::AgentTask | StepKind::Workflow)
    }
}

/// How a failed step is tried again: up to `max_attempts` in all, waiting `initial_backoff_ms`
/// doubled per attempt up to `max_backoff_ms`, with jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    #[serde(default = "default_initial_backoff")]
    pub initial_backoff_ms: u64,
    #[serde(default = "default_max_backoff")]
    pub max_backoff_ms: u64,
}

fn default_initial_backoff() -> u64 {
    1_000
}

fn default_max_backoff() -> u64 {
    60_000
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self { max_attempts: 1, initial_backoff_ms: default_initial_backoff(), max_backoff_ms: default_max_backoff() }
    }
}

impl RetryPolicy {
    /// The wait before attempt `attempt + 1`: "equal jitter" (half fixed, half random), so
    /// retries of many instances spread out yet never come sooner than half the backoff.
    /// `jitter` is in [0, 1): the caller's randomness, so the rules stay pure.
    pub fn backoff_ms(&self, attempt: u32, jitter: f64) -> u64 {
        let exp = self.initial_backoff_ms.saturating_mul(1u64 << attempt.saturating_sub(1).min(40));
        let capped = exp.min(self.max_backoff_ms);
        let half = capped / 2;
        half + ((capped - half) as f64 * jitter.clamp(0.0, 1.0)) as u64
    }
}

/// One step as its definition states it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepSpec {
    pub id: String,
    pub kind: StepKind,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
    /// automated: context keys and the CEL expressions computing them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub set: BTreeMap<String, String>,
    /// decision: a CEL expression yielding a bool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub when_true: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub when_false: Vec<String>,
    /// manual, approval: who may act.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// timer: how long after the step starts, or until when.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sleep_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
    /// integration: the method called.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call: Option<CallSpec>,
    /// agent_task: the task submitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<TaskSpec>,
    /// wait_event: the event waited for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<EventFilter>,
    /// workflow: the child started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub child: Option<ChildSpec>,
}

impl StepSpec {
    pub fn retry_policy(&self) -> RetryPolicy {
        self.retry.unwrap_or_default()
    }
}

/// A whole definition: what every version's content id covers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Definition {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    pub steps: Vec<StepSpec>,
    /// Events each of which starts one instance of the current version.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub triggers: Vec<EventFilter>,
}

/// A refusal naming the field (under `definition`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct SpecError {
    pub field: String,
    pub reason: String,
}

fn refuse(field: impl Into<String>, reason: impl Into<String>) -> SpecError {
    SpecError { field: format!("definition{}", field.into()), reason: reason.into() }
}

/// The step as written, before its kind is known to be one of ours.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    id: String,
    kind: String,
    #[serde(default)]
    depends_on: Vec<String>,
    #[serde(default)]
    set: BTreeMap<String, String>,
    condition: Option<String>,
    #[serde(default)]
    when_true: Vec<String>,
    #[serde(default)]
    when_false: Vec<String>,
    role: Option<String>,
    sleep_ms: Option<u64>,
    until: Option<DateTime<Utc>>,
    timeout_ms: Option<u64>,
    retry: Option<RetryPolicy>,
    call: Option<CallSpec>,
    task: Option<TaskSpec>,
    event: Option<EventFilter>,
    child: Option<ChildSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDefinition {
    name: String,
    #[serde(default)]
    description: String,
    steps: Vec<Value>,
    #[serde(default)]
    triggers: Vec<Value>,
}

fn snake_id(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && s.len() <= ID_MAX
}

fn ms(field: String, value: Option<u64>) -> Result<(), SpecError> {
    match value {
        Some(0) => Err(refuse(field, "must be at least 1")),
        Some(n) if n > MS_MAX => Err(refuse(field, format!("at most {MS_MAX} (a year)"))),
        _ => Ok(()),
    }
}

impl Definition {
    /// The definition a JSON document describes, or the first thing wrong with it.
    pub fn parse(document: &Map<String, Value>) -> Result<Definition, SpecError> {
        let raw: RawDefinition =
            serde_json::from_value(Value::Object(document.clone())).map_err(|e| refuse("", e.to_string()))?;
        if raw.name.trim().is_empty() || raw.name.len() > NAME_MAX {
            return Err(refuse(".name", format!("1 to {NAME_MAX} bytes")));
        }
        if raw.description.len() > DESCRIPTION_MAX {
            return Err(refuse(".description", format!("at most {DESCRIPTION_MAX} bytes")));
        }
        if raw.steps.is_empty() {
            return Err(refuse(".steps", "a workflow needs at least one step"));
        }
        if raw.steps.len() > STEPS_MAX {
            return Err(refuse(".steps", format!("at most {STEPS_MAX} steps")));
        }
        let mut steps = Vec::with_capacity(raw.steps.len());
        for (i, value) in raw.steps.into_iter().enumerate() {
            let at = format!(".steps[{i}]");
            let raw: RawStep = serde_json::from_value(value).map_err(|e| refuse(&at, e.to_string()))?;
            steps.push(step(&at, raw)?);
        }
        if raw.triggers.len() > TRIGGERS_MAX {
            return Err(refuse(".triggers", format!("at most {TRIGGERS_MAX} triggers")));
        }
        let mut triggers = Vec::with_capacity(raw.triggers.len());
        for (i, value) in raw.triggers.into_iter().enumerate() {
            let at = format!(".triggers[{i}]");
            let trigger: EventFilter = serde_json::from_value(value).map_err(|e| refuse(&at, e.to_string()))?;
            trigger.check(&at, false)?;
            triggers.push(trigger);
        }
        let definition = Definition { name: raw.name, description: raw.description, steps, triggers };
        definition.check_graph()?;
        Ok(definition)
    }

    /// Ids unique, dependencies known and acyclic, branches pointing at the decision's dependents.
    fn check_graph(&self) -> Result<(), SpecError> {
        let mut index = HashMap::new();
        for (i, s) in self.steps.iter().enumerate() {
            if index.insert(s.id.as_str(), i).is_some() {
                return Err(refuse(format!(".steps[{i}].id"), format!("{:?} is used twice", s.id)));
            }
        }
        for (i, s) in self.steps.iter().enumerate() {
            for (j, d) in s.depends_on.iter().enumerate() {
                if !index.contains_key(d.as_str()) {
                    return Err(refuse(format!(".steps[{i}].depends_on[{j}]"), format!("no step {d:?}")));
                }
                if d == &s.id {
                    return Err(refuse(format!(".steps[{i}].depends_on[{j}]"), "a step cannot depend on itself"));
                }
            }
            for (name, branch) in [("when_true", &s.when_true), ("when_false", &s.when_false)] {
                for (j, b) in branch.iter().enumerate() {
                    let dependent = index.get(b.as_str()).is_some_and(|&k| self.steps[k].depends_on.contains(&s.id));
                    if !dependent {
                        return Err(refuse(
                            format!(".steps[{i}].{name}[{j}]"),
                            format!("{b:?} must depend on {:?}", s.id),
                        ));
                    }
                }
            }
        }
        if let Some((i, j, cycle)) = self.first_cycle(&index) {
            return Err(refuse(
                format!(".steps[{i}].depends_on[{j}]"),
                format!("makes a cycle: {}", cycle.join(" -> ")),
            ));
        }
        Ok(())
    }

    /// The first dependency (step index, dependency index) that closes a cycle, with the cycle.
    fn first_cycle(&self, index: &HashMap<&str, usize>) -> Option<(usize, usize, Vec<String>)> {
        // Depth-first over dependencies: 0 unseen, 1 on the current path, 2 done.
        fn visit(
            d: &Definition,
            index: &HashMap<&str, usize>,
            at: usize,
            marks: &mut [u8],
            path: &mut Vec<usize>,
        ) -> Option<(usize, usize, Vec<String>)> {
            marks[at] = 1;
            path.push(at);
            for (j, dep) in d.steps[at].depends_on.iter().enumerate() {
                let k = index[dep.as_str()];
                if marks[k] == 1 {
                    let from = path.iter().position(|&p| p == k).unwrap_or_default();
                    let mut cycle: Vec<String> = path[from..].iter().map(|&p| d.steps[p].id.clone()).collect();
                    cycle.push(d.steps[k].id.clone());
                    return Some((at, j, cycle));
                }
                if marks[k] == 0
                    && let Some(found) = visit(d, index, k, marks, path)
                {
                    return Some(found);
                }
            }
            path.pop();
            marks[at] = 2;
            None
        }
        let mut marks = vec![0u8; self.steps.len()];
        (0..self.steps.len())
            .find_map(|i| if marks[i] == 0 { visit(self, index, i, &mut marks, &mut Vec::new()) } else { None })
    }

    /// The version's identity: a CIDv1 (json codec, BLAKE3) of the definition's canonical JSON.
    pub fn content_id(&self) -> String {
        let value = serde_json::to_value(self).unwrap_or_default();
        let digest = blake3::hash(cim_core::chain::canonical_text(&value).as_bytes());
        let hash = cid::multihash::Multihash::<64>::wrap(0x1e, digest.as_bytes()).expect("a 32-byte digest fits");
        cid::Cid::new_v1(0x0200, hash).to_string()
    }

    pub fn to_json(&self) -> Map<String, Value> {
        match serde_json::to_value(self) {
            Ok(Value::Object(map)) => map,
            _ => Map::new(),
        }
    }
}

fn step(at: &str, raw: RawStep) -> Result<StepSpec, SpecError> {
    let field = |name: &str| format!("{at}.{name}");
    if !snake_id(&raw.id) {
        return Err(refuse(field("id"), format!("snake_case: [a-z][a-z0-9_]*, at most {ID_MAX} bytes")));
    }
    let kind = StepKind::parse(&raw.kind).ok_or_else(|| {
        refuse(field("kind"), format!("unknown step kind {:?}; one of {}", raw.kind, StepKind::NAMES.join(", ")))
    })?;
    let only = |name: &str, present: bool, kinds: &str| {
        if present { Err(refuse(field(name), format!("only for {kinds} steps"))) } else { Ok(()) }
    };
    only("set", !raw.set.is_empty() && kind != StepKind::Automated, "automated")?;
    let decision = kind == StepKind::Decision;
    only("condition", raw.condition.is_some() && !decision, "decision")?;
    only("when_true", !raw.when_true.is_empty() && !decision, "decision")?;
    only("when_false", !raw.when_false.is_empty() && !decision, "decision")?;
    only("role", raw.role.is_some() && !kind.is_for_people(), "manual and approval")?;
    let timer = kind == StepKind::Timer;
    only("sleep_ms", raw.sleep_ms.is_some() && !timer, "timer")?;
    only("until", raw.until.is_some() && !timer, "timer")?;
    for (key, source) in &raw.set {
        if !snake_id(key) {
            return Err(refuse(field(&format!("set.{key}")), "keys are snake_case"));
        }
        Expr::parse(source).map_err(|e| refuse(field(&format!("set.{key}")), e))?;
    }
    match (kind, &raw.condition) {
        (StepKind::Decision, None) => return Err(refuse(field("condition"), "a decision needs a condition")),
        (_, Some(source)) => drop(Expr::parse(source).map_err(|e| refuse(field("condition"), e))?),
        _ => {}
    }
    if kind == StepKind::Approval && raw.role.is_none() {
        return Err(refuse(field("role"), "an approval names the role that approves"));
    }
    if let Some(role) = &raw.role
        && (role.trim().is_empty() || role.len() > ROLE_MAX || role.chars().any(|c| c.is_control() || c == ','))
    {
        return Err(refuse(field("role"), format!("1 to {ROLE_MAX} bytes, no commas")));
    }
    if timer && raw.sleep_ms.is_some() == raw.until.is_some() {
        return Err(refuse(field("sleep_ms"), "a timer has either sleep_ms or until"));
    }
    only("call", raw.call.is_some() && kind != StepKind::Integration, "integration")?;
    only("task", raw.task.is_some() && kind != StepKind::AgentTask, "agent_task")?;
    only("event", raw.event.is_some() && kind != StepKind::WaitEvent, "wait_event")?;
    only("child", raw.child.is_some() && kind != StepKind::Workflow, "workflow")?;
    let needs = |name: &str, present: bool| {
        if present { Ok(()) } else { Err(refuse(field(name), format!("a {} step needs {name}", kind.as_str()))) }
    };
    match kind {
        StepKind::Integration => needs("call", raw.call.is_some())?,
        StepKind::WaitEvent => needs("event", raw.event.is_some())?,
        StepKind::Workflow => needs("child", raw.child.is_some())?,
        _ => {}
    }
    if let Some(call) = &raw.call {
        call.check(at)?;
    }
    if let Some(task) = &raw.task {
        task.check(at)?;
    }
    if let Some(event) = &raw.event {
        event.check(&format!("{at}.event"), true)?;
    }
    if let Some(child) = &raw.child {
        child.check(at)?;
    }
    ms(field("sleep_ms"), raw.sleep_ms)?;
    ms(field("timeout_ms"), raw.timeout_ms)?;
    if let Some(r) = &raw.retry {
        if r.max_attempts == 0 || r.max_attempts > ATTEMPTS_MAX {
            return Err(refuse(field("retry.max_attempts"), format!("from 1 to {ATTEMPTS_MAX}")));
        }
        ms(field("retry.initial_backoff_ms"), Some(r.initial_backoff_ms))?;
        ms(field("retry.max_backoff_ms"), Some(r.max_backoff_ms))?;
        if r.max_backoff_ms < r.initial_backoff_ms {
            return Err(refuse(field("retry.max_backoff_ms"), "at least initial_backoff_ms"));
        }
    }
    Ok(StepSpec {
        id: raw.id,
        kind,
        depends_on: raw.depends_on,
        set: raw.set,
        condition: raw.condition,
        when_true: raw.when_true,
        when_false: raw.when_false,
        role: raw.role,
        sleep_ms: raw.sleep_ms,
        until: raw.until,
        timeout_ms: raw.timeout_ms,
        retry: raw.retry,
        call: raw.call,
        task: raw.task,
        event: raw.event,
        child: raw.child,
    })
}

#[cfg(test)]
mod tests;
