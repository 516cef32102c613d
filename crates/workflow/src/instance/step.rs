//! One step of a run: its spec from the definition and where it is.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::StepStatus;
use crate::spec::StepSpec;

/// One step of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    pub spec: StepSpec,
    pub status: StepStatus,
    pub attempts: u32,
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
        self.fire_at = None;
        self.deadline = None;
        self.retry_at = None;
    }
}
