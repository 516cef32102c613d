//! One command's events sealed on a head, as the append statements bind them.

use super::*;

/// A command's events sealed on a head: the values an append statement binds as `$1..$17`.
#[derive(Debug)]
pub(super) struct Batch {
    pub(super) sealed: Vec<EventEnvelope>,
    pub(super) ids: Vec<uuid::Uuid>,
    pub(super) seqs: Vec<i64>,
    pub(super) types: Vec<String>,
    pub(super) versions: Vec<i32>,
    pub(super) payloads: Vec<String>,
    pub(super) hashes: Vec<Vec<u8>>,
    pub(super) prevs: Vec<Vec<u8>>,
    pub(super) last_sequence: u64,
    pub(super) traceparent: Option<String>,
}

impl Batch {
    pub(super) fn seal(cmd: &Append, head: &Head) -> Result<Self, StoreError> {
        let sealed =
            EventEnvelope::seal_all(&cmd.context, cmd.events.iter().cloned(), head.version + 1, head.hash, Utc::now());
        let n = sealed.len();
        let mut batch = Batch {
            ids: Vec::with_capacity(n),
            seqs: Vec::with_capacity(n),
            types: Vec::with_capacity(n),
            versions: Vec::with_capacity(n),
            payloads: Vec::with_capacity(n),
            hashes: Vec::with_capacity(n),
            prevs: Vec::with_capacity(n),
            last_sequence: head.version + n as u64,
            traceparent: cim_runtime::telemetry::current_traceparent(),
            sealed: vec![],
        };
        for e in &sealed {
            batch.ids.push(e.event_id.as_uuid());
            batch.seqs.push(e.sequence as i64);
            batch.types.push(e.event_type.as_str().to_owned());
            batch.versions.push(e.schema_version as i32);
            // The canonical text, the very bytes the event's hash covers.
            let payload = cim_core::chain::canonical_text(&e.payload);
            // Every event must fit one NATS message (1 MiB by default) with its envelope, or the
            // relay could never publish it. Checked on the text that is stored, serialized once.
            if payload.len() > MAX_PAYLOAD_BYTES {
                return Err(StoreError::Invalid(format!(
                    "event payload of {} bytes; at most {MAX_PAYLOAD_BYTES} allowed",
                    payload.len()
                )));
            }
            batch.payloads.push(payload);
            batch.hashes.push(e.hash.as_bytes().to_vec());
            batch.prevs.push(e.prev_hash.as_bytes().to_vec());
        }
        batch.sealed = sealed;
        Ok(batch)
    }

    pub(super) fn bind<'q>(
        &self,
        cmd: &Append,
        query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
        let ctx = &cmd.context;
        query
            .bind(ctx.aggregate_id.as_uuid())
            .bind(ctx.aggregate_type.as_str())
            .bind(&self.ids)
            .bind(&self.seqs)
            .bind(&self.types)
            .bind(&self.versions)
            .bind(self.sealed.first().map(|e| e.occurred_at))
            .bind(ctx.tenant_id.as_uuid())
            .bind(ctx.actor.as_str())
            .bind(ctx.correlation_id.as_uuid())
            .bind(ctx.causation_id.as_uuid())
            .bind(&self.payloads)
            .bind(&self.hashes)
            .bind(&self.prevs)
            .bind(cmd.idempotency_key.as_deref())
            .bind(self.last_sequence as i64)
            .bind(self.traceparent.as_deref())
    }

    pub(super) fn appended(self, id: AggregateId, prev_head: EventHash) -> Appended {
        Appended {
            aggregate_id: id,
            version: self.last_sequence,
            head: self.sealed.last().map_or(prev_head, |e| e.hash),
            event_ids: self.sealed.iter().map(|e| e.event_id).collect(),
            events: self.sealed,
            replayed: false,
        }
    }
}
