//! One step of a run: its spec from the definition and where it is.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::StepStatus;
use crate::events::{Outreach, Wait};
use crate::spec::StepSpec;

/// One step of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    pub spec: StepSpec,
    pub status: StepStatus,
    pub attempts: u32,
    /// When the running attempt started (unknown for attempts started before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assignee: Option<String>,
    /// A timer's firing time (while running).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fire_at: Option<DateTime<Utc>>,
    /// When the next attempt may start (pending after a failure).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_at: Option<DateTime<Utc>>,
    /// When the running attempt times out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
    /// What the running attempt sends, until the engine has sent it (`reached`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outreach: Option<Outreach>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reached: bool,
    /// The event the running attempt waits for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait: Option<Wait>,
}

impl Step {
    /// The next instant this step needs the engine, if any.
    pub fn due_at(&self) -> Option<DateTime<Utc>> {
        match self.status {
            StepStatus::Pending => self.retry_at,
            StepStatus::Running | StepStatus::WaitingApproval => match (self.fire_at, self.deadline) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            },
            _ => None,
        }
    }
}

impl Step {
    pub(super) fn finish(&mut self, status: StepStatus) {
        self.status = status;
        self.started_at = None;
        self.fire_at = None;
        self.deadline = None;
        self.retry_at = None;
        self.outreach = None;
        self.reached = false;
        self.wait = None;
    }

    /// What the engine still has to send for the running attempt.
    pub fn unsent(&self) -> Option<&Outreach> {
        self.outreach.as_ref().filter(|_| self.status == StepStatus::Running && !self.reached)
    }
}
