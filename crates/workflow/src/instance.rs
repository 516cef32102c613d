//! The instance aggregate (type `workflow`): one run of one definition version. Pure rules; time
//! and randomness come in with the commands (`now`, `jitter`), so everything is decided the same
//! way on replay.
//!
//! draft → running → completed | failed | paused | cancelled; paused → running | cancelled |
//! failed; the three ends are final. What people do (complete a manual step, approve, reject,
//! assign) is decided here; what the engine does is one command, [`WorkflowCommand::Advance`]
//! (`advance.rs`): start what is ready, fire what is due, retry what failed, finish the run.

use chrono::{DateTime, Utc};
use cim_aggregate::Aggregate;
use cim_core::document::DocumentLimits;
use cim_core::{AggregateId, Domain};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::events::*;
use crate::spec::{Definition, StepKind};

mod advance;
mod error;
mod observe;
mod outreach;
mod status;
mod step;
#[cfg(test)]
mod tests;

pub use error::WorkflowError;
use error::{check_json, check_text};
pub use outreach::{Reach, derived_id, takes};
pub use status::{StepStatus, WorkflowStatus};
pub use step::Step;

pub const AGGREGATE_TYPE: &str = "workflow";

/// The context and every output or variable written into it.
pub const CONTEXT_LIMITS: DocumentLimits = DocumentLimits { max_bytes: 256 * 1024, max_depth: 32 };

/// Who acts on a step meant for people: the actor and the roles their token carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Person {
    pub actor: String,
    pub roles: Vec<String>,
}

/// An instant the rules decide at: `now`, `jitter` in [0, 1) to spread retries, and the
/// instance's own id, from which the ids of its tasks and children derive.
#[derive(Debug, Clone, Copy)]
pub struct Tick {
    pub instance: AggregateId,
    pub now: DateTime<Utc>,
    pub jitter: f64,
}

impl Tick {
    /// `instance` as the caller's clock sees it now.
    pub fn now(instance: AggregateId) -> Self {
        Self { instance, now: Utc::now(), jitter: fastrand::f64() }
    }
}

#[derive(Debug, Clone)]
pub enum WorkflowCommand {
    /// Creates the instance from one definition version; `start` runs it at once, its first
    /// tick in the same write.
    Create {
        definition_id: AggregateId,
        content_id: String,
        definition: Definition,
        context: Map<String, Value>,
        start: Option<Tick>,
    },
    Start,
    /// The engine's tick: everything due at `now`. `jitter` in [0, 1) spreads retries;
    /// `instance` is this instance's id, from which the ids of its tasks and children derive.
    Advance {
        instance: AggregateId,
        now: DateTime<Utc>,
        jitter: f64,
    },
    /// The engine's report on what a running attempt sent.
    Reached {
        step: String,
        attempt: u32,
        outcome: Reach,
        now: DateTime<Utc>,
        jitter: f64,
    },
    /// An event a waiting attempt takes (its task's or child's end, or the event it waits for).
    Deliver {
        step: String,
        attempt: u32,
        event: Map<String, Value>,
        now: DateTime<Utc>,
        jitter: f64,
    },
    Pause {
        reason: String,
    },
    Resume,
    Cancel {
        reason: String,
    },
    SetVariable {
        key: String,
        value: Value,
    },
    Signal {
        name: String,
        payload: Map<String, Value>,
    },
    AssignTask {
        step: String,
        assignee: String,
    },
    CompleteStep {
        step: String,
        by: Person,
        output: Map<String, Value>,
    },
    Approve {
        step: String,
        by: Person,
        comment: String,
    },
    Reject {
        step: String,
        by: Person,
        comment: String,
    },
}

/// An instance's state, folded from its events.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Workflow {
    pub status: WorkflowStatus,
    pub definition_id: Option<AggregateId>,
    pub content_id: String,
    pub name: String,
    pub steps: Vec<Step>,
    pub context: Map<String, Value>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
}

impl Workflow {
    pub fn step(&self, id: &str) -> Result<&Step, WorkflowError> {
        self.steps.iter().find(|s| s.spec.id == id).ok_or_else(|| WorkflowError::NoStep(id.to_owned()))
    }

    fn step_mut(&mut self, id: &str) -> Option<&mut Step> {
        self.steps.iter_mut().find(|s| s.spec.id == id)
    }

    /// When the engine must look at this instance next, if it is running and waits on time
    /// (a timer, a retry, a timeout) rather than on a person.
    pub fn next_due(&self) -> Option<DateTime<Utc>> {
        if self.status != WorkflowStatus::Running {
            return None;
        }
        self.steps.iter().filter_map(Step::due_at).min()
    }

    fn not_finished(&self) -> Result<(), WorkflowError> {
        if self.status.is_final() {
            Err(WorkflowError::Transition(self.status.as_str(), "it is final"))
        } else {
            Ok(())
        }
    }

    fn running(&self, rule: &'static str) -> Result<(), WorkflowError> {
        if self.status == WorkflowStatus::Running {
            Ok(())
        } else {
            Err(WorkflowError::Transition(self.status.as_str(), rule))
        }
    }

    /// A step meant for people that `by` may act on, in `status`.
    fn for_person(&self, id: &str, by: &Person, status: StepStatus, kind: StepKind) -> Result<&Step, WorkflowError> {
        self.running("people act only on a running workflow")?;
        let step = self.step(id)?;
        if step.spec.kind != kind {
            let rule = if kind == StepKind::Approval {
                "only approval steps are approved or rejected"
            } else {
                "only manual steps are completed by people"
            };
            return Err(WorkflowError::WrongKind { step: id.to_owned(), kind: step.spec.kind.as_str(), rule });
        }
        if step.status != status {
            return Err(WorkflowError::StepState {
                step: id.to_owned(),
                status: step.status.as_str(),
                rule: "it is not waiting for a person",
            });
        }
        let assigned = step.assignee.as_deref() == Some(by.actor.as_str());
        let role_ok = step.spec.role.as_ref().is_none_or(|r| by.roles.iter().any(|held| held == r));
        if !(assigned || role_ok) {
            return Err(WorkflowError::NotAllowed {
                step: id.to_owned(),
                role: step.spec.role.clone().unwrap_or_default(),
            });
        }
        Ok(step)
    }
}

impl Aggregate for Workflow {
    const DOMAIN: Domain = Domain::Workflow;
    const AGGREGATE_TYPE: &'static str = AGGREGATE_TYPE;
    type Command = WorkflowCommand;
    type Event = WorkflowEvent;
    type Error = WorkflowError;
    type Services = ();

    fn command_name(command: &WorkflowCommand) -> &'static str {
        use WorkflowCommand::*;
        match command {
            Create { .. } => "create_workflow",
            Start => "start_workflow",
            Advance { .. } => "advance_workflow",
            Reached { .. } => "record_step_outreach",
            Deliver { .. } => "deliver_event",
            Pause { .. } => "pause_workflow",
            Resume => "resume_workflow",
            Cancel { .. } => "cancel_workflow",
            SetVariable { .. } => "set_context_variable",
            Signal { .. } => "send_signal",
            AssignTask { .. } => "assign_task",
            CompleteStep { .. } => "complete_step",
            Approve { .. } => "approve_step",
            Reject { .. } => "reject_step",
        }
    }

    fn creates(command: &WorkflowCommand) -> bool {
        matches!(command, WorkflowCommand::Create { .. })
    }

    fn decide(&self, command: &WorkflowCommand, _: &()) -> Result<Vec<WorkflowEvent>, WorkflowError> {
        use WorkflowCommand as C;
        use WorkflowEvent as E;
        let reason = |r: &str| WorkflowTransition { reason: r.to_owned() };
        Ok(match command {
            C::Create { definition_id, content_id, definition, context, start } => {
                check_json("context", context)?;
                let mut events = vec![E::Created(WorkflowCreated {
                    definition_id: *definition_id,
                    content_id: content_id.clone(),
                    definition: definition.clone(),
                    context: context.clone(),
                })];
                if let Some(tick) = start {
                    if definition.steps.is_empty() {
                        return Err(WorkflowError::NoSteps);
                    }
                    events.push(E::Started(WorkflowTransition::default()));
                    // A run of automated steps completes in the write that starts it, instead of
                    // waiting for the engine to claim the instance; whatever the first tick
                    // starts that sends or waits, the engine takes over as after any advance.
                    let mut started = self.clone();
                    for event in &events {
                        started.apply(event);
                    }
                    events.extend(advance::advance(&started, tick.instance, tick.now, tick.jitter));
                }
                events
            }
            C::Start => {
                if self.status != WorkflowStatus::Draft {
                    return Err(WorkflowError::Transition(self.status.as_str(), "only a draft starts"));
                }
                if self.steps.is_empty() {
                    return Err(WorkflowError::NoSteps);
                }
                vec![E::Started(WorkflowTransition::default())]
            }
            C::Reached { step, attempt, outcome, now, jitter } => {
                outreach::reached(self, step, *attempt, outcome, *now, *jitter)?
            }
            C::Deliver { step, attempt, event, now, jitter } => {
                outreach::deliver(self, step, *attempt, event, *now, *jitter)?
            }
            C::Advance { instance, now, jitter } => {
                let events = advance::advance(self, *instance, *now, *jitter);
                if events.is_empty() {
                    return Err(WorkflowError::NothingDue);
                }
                events
            }
            C::Pause { reason: r } => {
                check_text("reason", r, false)?;
                self.running("only a running workflow pauses")?;
                vec![E::Paused(reason(r))]
            }
            C::Resume => {
                if self.status != WorkflowStatus::Paused {
                    return Err(WorkflowError::Transition(self.status.as_str(), "only a paused workflow resumes"));
                }
                vec![E::Resumed(WorkflowTransition::default())]
            }
            C::Cancel { reason: r } => {
                check_text("reason", r, false)?;
                self.not_finished()?;
                vec![E::Cancelled(reason(r))]
            }
            C::SetVariable { key, value } => {
                check_text("key", key, true)?;
                let mut probe = Map::new();
                probe.insert(key.clone(), value.clone());
                check_json("value", &probe)?;
                self.not_finished()?;
                vec![E::ContextVariableSet(ContextVariableSet { key: key.clone(), value: value.clone() })]
            }
            C::Signal { name, payload } => {
                check_text("name", name, true)?;
                check_json("payload", payload)?;
                self.not_finished()?;
                vec![E::SignalReceived(SignalReceived { name: name.clone(), payload: payload.clone() })]
            }
            C::AssignTask { step, assignee } => {
                check_text("assignee", assignee, true)?;
                self.not_finished()?;
                let s = self.step(step)?;
                if !s.spec.kind.is_for_people() {
                    let rule = "only manual and approval steps are assigned to people";
                    return Err(WorkflowError::WrongKind { step: step.clone(), kind: s.spec.kind.as_str(), rule });
                }
                if s.status.is_finished() {
                    return Err(WorkflowError::StepState {
                        step: step.clone(),
                        status: s.status.as_str(),
                        rule: "it has finished",
                    });
                }
                vec![E::TaskAssigned(TaskAssigned { step: step.clone(), assignee: assignee.clone() })]
            }
            C::CompleteStep { step, by, output } => {
                check_json("output", output)?;
                self.for_person(step, by, StepStatus::Running, StepKind::Manual)?;
                vec![E::StepCompleted(StepExecutionCompleted {
                    step: step.clone(),
                    output: output.clone(),
                    by: by.actor.clone(),
                })]
            }
            C::Approve { step, by, comment } => {
                check_text("comment", comment, false)?;
                self.for_person(step, by, StepStatus::WaitingApproval, StepKind::Approval)?;
                let decided =
                    StepApprovalDecided { step: step.clone(), by: by.actor.clone(), comment: comment.clone() };
                let mut output = Map::new();
                output.insert(step.clone(), serde_json::json!({"approved": true, "by": by.actor}));
                vec![
                    E::ApprovalGranted(decided),
                    E::StepCompleted(StepExecutionCompleted { step: step.clone(), output, by: by.actor.clone() }),
                ]
            }
            C::Reject { step, by, comment } => {
                check_text("comment", comment, false)?;
                let s = self.for_person(step, by, StepStatus::WaitingApproval, StepKind::Approval)?;
                let error = format!("rejected by {}", by.actor);
                vec![
                    E::ApprovalRejected(StepApprovalDecided {
                        step: step.clone(),
                        by: by.actor.clone(),
                        comment: comment.clone(),
                    }),
                    E::StepFailed(StepExecutionFailed {
                        step: step.clone(),
                        attempt: s.attempts,
                        error: error.clone(),
                    }),
                    E::Failed(WorkflowFailed { step: step.clone(), error }),
                ]
            }
        })
    }

    fn committed(&self, events: &[WorkflowEvent]) {
        observe::record(self, events, Utc::now());
    }

    fn apply(&mut self, event: &WorkflowEvent) {
        use WorkflowEvent as E;
        match event {
            E::Created(e) => {
                self.definition_id = Some(e.definition_id);
                self.content_id = e.content_id.clone();
                self.name = e.definition.name.clone();
                self.context = e.context.clone();
                self.steps = e
                    .definition
                    .steps
                    .iter()
                    .map(|spec| Step {
                        spec: spec.clone(),
                        status: StepStatus::Pending,
                        attempts: 0,
                        started_at: None,
                        assignee: None,
                        fire_at: None,
                        retry_at: None,
                        deadline: None,
                        error: String::new(),
                        outreach: None,
                        reached: false,
                        wait: None,
                    })
                    .collect();
            }
            E::Started(_) | E::Resumed(_) => self.status = WorkflowStatus::Running,
            E::Completed(_) => self.status = WorkflowStatus::Completed,
            E::Paused(_) => self.status = WorkflowStatus::Paused,
            E::Failed(e) => {
                self.status = WorkflowStatus::Failed;
                self.error = format!("{}: {}", e.step, e.error);
            }
            E::Cancelled(_) => {
                self.status = WorkflowStatus::Cancelled;
                for step in self.steps.iter_mut().filter(|s| !s.status.is_finished()) {
                    step.finish(StepStatus::Cancelled);
                }
            }
            E::ContextVariableSet(e) => {
                self.context.insert(e.key.clone(), e.value.clone());
            }
            E::SignalReceived(e) => {
                let signals = self.context.entry("signals").or_insert_with(|| Value::Object(Map::new()));
                if !signals.is_object() {
                    *signals = Value::Object(Map::new());
                }
                if let Value::Object(map) = signals {
                    map.insert(e.name.clone(), Value::Object(e.payload.clone()));
                }
            }
            E::StepStarted(e) => self.on_step(&e.step, |s| {
                s.status = StepStatus::Running;
                s.attempts = e.attempt;
                s.started_at = e.started_at;
                s.deadline = e.deadline;
                s.retry_at = None;
                s.outreach = e.outreach.clone();
                s.reached = false;
                s.wait = e.wait.clone();
            }),
            E::StepCompleted(e) => {
                self.context.extend(e.output.clone());
                self.on_step(&e.step, |s| s.finish(StepStatus::Completed));
            }
            E::StepFailed(e) => self.on_step(&e.step, |s| {
                s.finish(StepStatus::Failed);
                s.error = e.error.clone();
            }),
            E::RetryScheduled(e) => self.on_step(&e.step, |s| {
                s.status = StepStatus::Pending;
                s.started_at = None;
                s.retry_at = Some(e.next_at);
            }),
            E::StepSkipped(e) => self.on_step(&e.step, |s| s.finish(StepStatus::Skipped)),
            E::ApprovalRequested(e) => self.on_step(&e.step, |s| s.status = StepStatus::WaitingApproval),
            E::ApprovalGranted(_) | E::ApprovalRejected(_) => {}
            E::TaskAssigned(e) => self.on_step(&e.step, |s| s.assignee = Some(e.assignee.clone())),
            E::TimerScheduled(e) => self.on_step(&e.step, |s| s.fire_at = Some(e.fire_at)),
            E::TimerFired(e) => self.on_step(&e.step, |s| s.fire_at = None),
            E::AgentTaskSubmitted(e) => self.on_step(&e.step, |s| s.reached = true),
            E::ChildWorkflowStarted(e) => self.on_step(&e.step, |s| s.reached = true),
        }
    }
}

impl Workflow {
    /// An event about a step the state does not have changes nothing (it cannot be stored: the
    /// rules only name steps of the definition).
    fn on_step(&mut self, id: &str, change: impl FnOnce(&mut Step)) {
        if let Some(step) = self.step_mut(id) {
            change(step);
        }
    }
}
