//! A domain's read tables, written from its typed events. The kit decodes each stored envelope
//! into the domain's event enum (an event that does not decode is corrupt, never skipped) and
//! hands it over in the command's own transaction, so a domain writes only its SQL.

use std::future::Future;

use cim_core::EventEnvelope;
use cim_core::events::DomainEvent;
use cim_eventstore::{Projector, StoreError};
use futures::future::BoxFuture;
use sqlx::PgConnection;

/// Writes one event's effect on the read tables.
pub trait Projection: Send + Sync + 'static {
    type Event: DomainEvent;

    /// `at` is the event's envelope (tenant, aggregate, sequence, time); `event` its payload.
    fn apply(
        &self,
        tx: &mut PgConnection,
        at: &EventEnvelope,
        event: &Self::Event,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send;

    /// Writes a run of one aggregate's events, in order: a command's (what it appended), or a
    /// stretch of a rebuild. A domain overrides it where events together take fewer statements
    /// than one by one (each is a round trip inside the command's transaction).
    fn apply_all(
        &self,
        tx: &mut PgConnection,
        at: &[EventEnvelope],
        events: &[Self::Event],
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send {
        async move {
            for (at, event) in at.iter().zip(events) {
                self.apply(tx, at, event).await?;
            }
            Ok(())
        }
    }

    /// After [`Projection::apply_all`] of each run: rows that hold only the aggregate's latest
    /// state (its version, when it is next due) are written once here from the run, instead of
    /// once per event.
    fn settle(
        &self,
        tx: &mut PgConnection,
        at: &[EventEnvelope],
        events: &[Self::Event],
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send {
        let _ = (tx, at, events);
        async { Ok(()) }
    }
}

/// A [`Projection`] as the event store runs it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Projected<P>(pub P);

impl<P: Projection> Projector for Projected<P> {
    fn project<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        events: &'a [EventEnvelope],
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            // Each run of one aggregate's events together: a command's events (a group write's
            // several commands on one aggregate run on together), or a stretch of a rebuild.
            for run in events.chunk_by(|a, b| a.tenant_id == b.tenant_id && a.aggregate_id == b.aggregate_id) {
                let typed = run
                    .iter()
                    .map(|envelope| {
                        P::Event::from_envelope(envelope)
                            .map_err(|e| StoreError::Corrupt(format!("event {}: {e}", envelope.event_id)))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                self.0.apply_all(tx, run, &typed).await?;
                self.0.settle(tx, run, &typed).await?;
            }
            Ok(())
        })
    }
}

/// One schema's projections when it holds several kinds of aggregate (agents and tasks): each
/// run of consecutive events goes to the projector of its aggregate type, in order. What a
/// rebuild (`cim restore`, `cim replay`) runs over a whole schema's history; an event of a type
/// no projector claims is refused rather than skipped.
pub struct ByAggregateType(pub Vec<(&'static str, Box<dyn Projector>)>);

impl std::fmt::Debug for ByAggregateType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ByAggregateType").field(&self.0.iter().map(|(t, _)| *t).collect::<Vec<_>>()).finish()
    }
}

impl Projector for ByAggregateType {
    fn project<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        events: &'a [EventEnvelope],
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let mut rest = events;
            while let Some(first) = rest.first() {
                let kind = first.aggregate_type.as_str();
                let run = rest.iter().take_while(|e| e.aggregate_type.as_str() == kind).count();
                let Some((_, projector)) = self.0.iter().find(|(t, _)| *t == kind) else {
                    return Err(StoreError::Corrupt(format!(
                        "event {}: no projection for aggregate type {kind}",
                        first.event_id
                    )));
                };
                projector.project(tx, &rest[..run]).await?;
                rest = &rest[run..];
            }
            Ok(())
        })
    }
}
