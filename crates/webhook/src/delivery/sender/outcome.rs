//! What finished calls leave on their rows, recorded by the sender's loop for every call that
//! finished in one turn with one statement (one commit), rather than a statement per call.
//! Until it is recorded a row stays leased: a sender that dies first lets the lease lapse and the
//! call is made again with the same `ce-id` (at least once), as when a call recorded its own.

use std::time::Duration;

use sqlx::PgPool;
use uuid::Uuid;

/// What one finished call means for its row.
#[derive(Debug, Clone, PartialEq)]
pub enum RowOutcome {
    Delivered,
    /// 410: not an attempt that failed (the subscription was disabled; the row waits for it to
    /// be activated again).
    Gone {
        reason: String,
    },
    /// Tried again after `wait`.
    Retry {
        status: u16,
        reason: String,
        wait: Duration,
    },
    /// The last attempt failed and the event is in the dead-letter stream.
    Dead {
        status: u16,
        reason: String,
    },
}

/// A finished call: its row and what to record on it.
#[derive(Debug, Clone, PartialEq)]
pub struct Finished {
    pub subscription: Uuid,
    pub event_id: Uuid,
    pub outcome: RowOutcome,
}

impl RowOutcome {
    /// `(kind, status, reason, wait)` as the statement's columns.
    fn columns(&self) -> (&'static str, Option<i32>, Option<&str>, Option<f64>) {
        match self {
            RowOutcome::Delivered => ("delivered", None, None, None),
            RowOutcome::Gone { reason } => ("gone", Some(410), Some(reason), None),
            RowOutcome::Retry { status, reason, wait } => {
                ("retry", Some(i32::from(*status)), Some(reason), Some(wait.as_secs_f64()))
            }
            RowOutcome::Dead { status, reason } => ("dead", Some(i32::from(*status)), Some(reason), None),
        }
    }
}

/// Records `finished` in one statement; every row's lease ends.
pub async fn record(pool: &PgPool, finished: &[Finished]) -> Result<(), sqlx::Error> {
    if finished.is_empty() {
        return Ok(());
    }
    let mut subscriptions = Vec::with_capacity(finished.len());
    let mut events = Vec::with_capacity(finished.len());
    let (mut kinds, mut statuses, mut reasons, mut waits) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for f in finished {
        let (kind, status, reason, wait) = f.outcome.columns();
        subscriptions.push(f.subscription);
        events.push(f.event_id);
        kinds.push(kind);
        statuses.push(status);
        reasons.push(reason);
        waits.push(wait);
    }
    // Per kind, as the one-row statements were: delivered and dead end the row; gone gives its
    // attempt back; retry sets when; every failure notes its status and reason.
    sqlx::query(
        "UPDATE webhook_deliveries w SET \
           leased_until = NULL, \
           state = CASE WHEN o.kind IN ('delivered', 'dead') THEN o.kind ELSE w.state END, \
           done_at = CASE WHEN o.kind IN ('delivered', 'dead') THEN now() ELSE w.done_at END, \
           attempts = CASE WHEN o.kind = 'gone' THEN greatest(w.attempts - 1, 0) ELSE w.attempts END, \
           next_at = CASE WHEN o.kind = 'retry' THEN now() + make_interval(secs => o.wait) ELSE w.next_at END, \
           last_status = CASE WHEN o.kind = 'delivered' THEN w.last_status ELSE o.status END, \
           last_error = CASE WHEN o.kind = 'delivered' THEN w.last_error ELSE o.reason END, \
           last_failure_at = CASE WHEN o.kind = 'delivered' THEN w.last_failure_at ELSE now() END \
         FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::int4[], $5::text[], $6::float8[]) \
              AS o(subscription_id, event_id, kind, status, reason, wait) \
         WHERE w.subscription_id = o.subscription_id AND w.event_id = o.event_id",
    )
    .bind(&subscriptions)
    .bind(&events)
    .bind(&kinds)
    .bind(&statuses)
    .bind(&reasons)
    .bind(&waits)
    .execute(pool)
    .await
    .map(|_| ())
}
