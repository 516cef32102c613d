//! Group commit: several aggregates' commands in one statement, each written only if the
//! caller's guard accepts it.

use super::*;

/// One command validated and sealed for [`EventStore::append_guarded_many`].
#[derive(Debug)]
pub struct SealedAppend {
    context: EventContext,
    head: Head,
    batch: Batch,
    started: Instant,
}

impl SealedAppend {
    pub fn aggregate_id(&self) -> AggregateId {
        self.context.aggregate_id
    }

    /// The aggregate's version once this command is written.
    pub fn version_after(&self) -> u64 {
        self.batch.last_sequence
    }
}

/// Binds `$1..$22` of [`guarded_append_many_sql`]: per event, then per command. Moves the
/// columns out of the batches (only their sealed events are needed afterwards).
fn bind_many<'q>(
    items: &mut [SealedAppend],
    query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    #[derive(Default)]
    struct Columns {
        aggregate: Vec<uuid::Uuid>,
        aggregate_type: Vec<String>,
        id: Vec<uuid::Uuid>,
        seq: Vec<i64>,
        event_type: Vec<String>,
        version: Vec<i32>,
        occurred_at: Vec<Option<DateTime<Utc>>>,
        tenant: Vec<uuid::Uuid>,
        actor: Vec<String>,
        correlation: Vec<uuid::Uuid>,
        causation: Vec<uuid::Uuid>,
        payload: Vec<String>,
        hash: Vec<Vec<u8>>,
        prev: Vec<Vec<u8>>,
    }
    #[derive(Default)]
    struct Commands {
        aggregate: Vec<uuid::Uuid>,
        tenant: Vec<uuid::Uuid>,
        version: Vec<i64>,
        head: Vec<Vec<u8>>,
        new_version: Vec<i64>,
        new_head: Vec<Vec<u8>>,
        occurred_at: Vec<Option<DateTime<Utc>>>,
        traceparent: Vec<Option<String>>,
    }
    let (mut ev, mut cmd) = (Columns::default(), Commands::default());
    for item in items.iter_mut() {
        let (ctx, b) = (&item.context, &mut item.batch);
        let occurred_at = b.sealed.first().map(|e| e.occurred_at);
        let n = b.ids.len();
        ev.aggregate.extend(std::iter::repeat_n(ctx.aggregate_id.as_uuid(), n));
        ev.aggregate_type.extend(std::iter::repeat_n(ctx.aggregate_type.to_string(), n));
        ev.occurred_at.extend(std::iter::repeat_n(occurred_at, n));
        ev.tenant.extend(std::iter::repeat_n(ctx.tenant_id.as_uuid(), n));
        ev.actor.extend(std::iter::repeat_n(ctx.actor.to_string(), n));
        ev.correlation.extend(std::iter::repeat_n(ctx.correlation_id.as_uuid(), n));
        ev.causation.extend(std::iter::repeat_n(ctx.causation_id.as_uuid(), n));
        ev.id.append(&mut b.ids);
        ev.seq.append(&mut b.seqs);
        ev.event_type.append(&mut b.types);
        ev.version.append(&mut b.versions);
        ev.payload.append(&mut b.payloads);
        ev.hash.append(&mut b.hashes);
        ev.prev.append(&mut b.prevs);
        cmd.aggregate.push(ctx.aggregate_id.as_uuid());
        cmd.tenant.push(ctx.tenant_id.as_uuid());
        cmd.version.push(item.head.version as i64);
        cmd.head.push(item.head.hash.as_bytes().to_vec());
        cmd.new_version.push(b.last_sequence as i64);
        cmd.new_head.push(b.sealed.last().map_or(item.head.hash, |e| e.hash).as_bytes().to_vec());
        cmd.occurred_at.push(occurred_at);
        cmd.traceparent.push(b.traceparent.take());
    }
    query
        .bind(ev.aggregate)
        .bind(ev.aggregate_type)
        .bind(ev.id)
        .bind(ev.seq)
        .bind(ev.event_type)
        .bind(ev.version)
        .bind(ev.occurred_at)
        .bind(ev.tenant)
        .bind(ev.actor)
        .bind(ev.correlation)
        .bind(ev.causation)
        .bind(ev.payload)
        .bind(ev.hash)
        .bind(ev.prev)
        .bind(cmd.aggregate)
        .bind(cmd.tenant)
        .bind(cmd.version)
        .bind(cmd.head)
        .bind(cmd.new_version)
        .bind(cmd.new_head)
        .bind(cmd.occurred_at)
        .bind(cmd.traceparent)
}

impl EventStore {
    /// Validates `cmd` and seals its events on its head token, in the caller's task (its clock
    /// and trace context), for [`EventStore::append_guarded_many`]. Needs [`Expected::Head`] (no
    /// read before the write) or [`Expected::NoStream`] (a new aggregate: its command carries
    /// version 0, which the caller's guard must check as "absent"), events, and no idempotency
    /// key.
    pub fn seal_guarded(&self, cmd: &Append) -> Result<SealedAppend, StoreError> {
        self.validate(cmd)?;
        let head = match cmd.expected {
            Expected::Head(token) => Head { version: token.version, hash: token.hash },
            Expected::NoStream => Head { version: 0, hash: EventHash::GENESIS },
            _ => return Err(StoreError::Invalid("a guarded append needs a head token, or no stream".into())),
        };
        if cmd.idempotency_key.is_some() || cmd.events.is_empty() {
            return Err(StoreError::Invalid("a guarded append takes events and no idempotency key".into()));
        }
        let batch = Batch::seal(cmd, &head)?;
        Ok(SealedAppend { context: cmd.context.clone(), head, batch, started: Instant::now() })
    }

    /// Appends several aggregates' sealed commands in one statement (see
    /// [`guarded_append_many_sql`]), committed on return: one round trip, one commit and one
    /// statement start for the whole group. The result is aligned with `items`: `None` for a
    /// command its guard turned down (nothing of it was written). An error means nothing was
    /// written. The aggregates must be distinct.
    pub async fn append_guarded_many(
        &self,
        sql: &'static str,
        mut items: Vec<SealedAppend>,
        bind: impl FnOnce(
            sqlx::query::Query<'static, sqlx::Postgres, sqlx::postgres::PgArguments>,
        ) -> sqlx::query::Query<'static, sqlx::Postgres, sqlx::postgres::PgArguments>,
    ) -> Result<Vec<Option<Appended>>, StoreError> {
        let mut seen = std::collections::HashSet::with_capacity(items.len());
        if let Some(dup) = items.iter().find(|i| !seen.insert(i.context.aggregate_id)) {
            return Err(StoreError::Invalid(format!("aggregate {} twice in one group", dup.context.aggregate_id)));
        }
        let query = bind(bind_many(&mut items, sqlx::query(sql)));
        let written: Vec<uuid::Uuid> = match query.fetch_all(&self.inner.pool).await {
            Ok(rows) => rows.iter().map(|r| r.try_get("aggregate_id")).collect::<Result<_, _>>()?,
            Err(e) if is_constraint(&e, "events_stream_key") => {
                metrics::counter!(APPEND_CONFLICTS_TOTAL, "schema" => self.inner.config.schema.clone()).increment(1);
                return Err(StoreError::Conflict {
                    aggregate: items[0].context.aggregate_id,
                    expected: "the heads of a group".into(),
                });
            }
            Err(e) => return Err(e.into()),
        };
        let duration = metrics::histogram!(APPEND_DURATION_SECONDS, "schema" => self.inner.config.schema.clone());
        let results: Vec<Option<Appended>> = items
            .into_iter()
            .map(|item| {
                let id = item.context.aggregate_id;
                if !written.contains(&id.as_uuid()) {
                    return None;
                }
                duration.record(item.started.elapsed().as_secs_f64());
                Some(item.batch.appended(id, item.head.hash))
            })
            .collect();
        // One announcement for the group, not one per command.
        self.announce(results.iter().flatten().map(|done| done.events.len()).sum());
        Ok(results)
    }
}
