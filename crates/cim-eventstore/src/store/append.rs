//! Appending: the one-statement append (events, outbox and idempotency key), in its own
//! transaction or the caller's, and what a committed append announces.

use tracing::Instrument;

use super::*;

impl EventStore {
    /// The span of one command's append: its context is the `traceparent` stored with the
    /// command's outbox rows (sealing reads the current span), so the relay's publish span is
    /// its child. Every append path runs in one, the group-committed one too (entered by
    /// whoever queues the command, so it covers the wait for the group's statement).
    pub fn append_span(&self, cmd: &Append) -> tracing::Span {
        tracing::info_span!(
            "eventstore.append",
            otel.kind = "internal",
            schema = %self.inner.config.schema,
            aggregate_id = %cmd.context.aggregate_id,
            events = cmd.events.len(),
        )
    }

    /// Appends without projections.
    pub async fn append(&self, cmd: Append) -> Result<Appended, StoreError> {
        let span = self.append_span(&cmd);
        self.append_inner(cmd, None).instrument(span).await
    }

    /// Appends and runs `projector` in the same transaction.
    pub async fn append_with(&self, cmd: Append, projector: &dyn Projector) -> Result<Appended, StoreError> {
        let span = self.append_span(&cmd);
        self.append_inner(cmd, Some(projector)).instrument(span).await
    }

    async fn append_inner(&self, cmd: Append, projector: Option<&dyn Projector>) -> Result<Appended, StoreError> {
        self.validate(&cmd)?;
        let started = Instant::now();
        let schema = self.inner.config.schema.clone();
        // A race on `Any` is not the caller's conflict: re-read the head and try again.
        let attempts = if cmd.expected == Expected::Any { 5 } else { 1 };
        let mut attempt = 0;
        let result = loop {
            attempt += 1;
            match self.try_append(&cmd, projector).await {
                Err(StoreError::Conflict { .. }) if attempt < attempts => continue,
                other => break other,
            }
        };
        match &result {
            Ok(done) => {
                metrics::histogram!(APPEND_DURATION_SECONDS, "schema" => schema)
                    .record(started.elapsed().as_secs_f64());
                self.committed(done);
            }
            Err(StoreError::Conflict { .. }) => {
                metrics::counter!(APPEND_CONFLICTS_TOTAL, "schema" => schema).increment(1);
            }
            Err(_) => {}
        }
        result
    }

    async fn head(&self, conn: &mut PgConnection, cmd: &Append) -> Result<Head, StoreError> {
        let id = cmd.context.aggregate_id;
        let tenant = cmd.context.tenant_id;
        match cmd.expected {
            Expected::Head(token) => Ok(Head { version: token.version, hash: token.hash }),
            Expected::NoStream | Expected::Version(0) => Ok(Head { version: 0, hash: EventHash::GENESIS }),
            Expected::Version(v) => {
                let row = sqlx::query("SELECT hash, tenant_id FROM events WHERE aggregate_id = $1 AND sequence = $2")
                    .bind(id.as_uuid())
                    .bind(v as i64)
                    .fetch_optional(&mut *conn)
                    .await?;
                let Some(row) = row else {
                    return Err(StoreError::Conflict { aggregate: id, expected: v.to_string() });
                };
                if row.try_get::<uuid::Uuid, _>("tenant_id")? != tenant.as_uuid() {
                    return Err(StoreError::NotFound(id));
                }
                let hash = EventHash::from_slice(&row.try_get::<Vec<u8>, _>("hash")?).map_err(StoreError::Corrupt)?;
                Ok(Head { version: v, hash })
            }
            Expected::Any => {
                let row = sqlx::query(
                    "SELECT sequence, hash, tenant_id FROM events WHERE aggregate_id = $1 ORDER BY sequence DESC LIMIT 1",
                )
                .bind(id.as_uuid())
                .fetch_optional(&mut *conn)
                .await?;
                let Some(row) = row else { return Ok(Head { version: 0, hash: EventHash::GENESIS }) };
                if row.try_get::<uuid::Uuid, _>("tenant_id")? != tenant.as_uuid() {
                    return Err(StoreError::NotFound(id));
                }
                let hash = EventHash::from_slice(&row.try_get::<Vec<u8>, _>("hash")?).map_err(StoreError::Corrupt)?;
                Ok(Head { version: row.try_get::<i64, _>("sequence")? as u64, hash })
            }
        }
    }

    /// Appends inside the caller's transaction (which may hold locks and write projections).
    /// The caller commits, then calls [`EventStore::committed`]. A stale expectation surfaces as
    /// [`StoreError::Conflict`] and leaves the transaction aborted: roll it back.
    pub async fn append_in_tx(&self, tx: &mut PgConnection, cmd: &Append) -> Result<Appended, StoreError> {
        let span = self.append_span(cmd);
        async {
            self.validate(cmd)?;
            let head = self.head(tx, cmd).await?;
            self.write(tx, cmd, head, None).await
        }
        .instrument(span)
        .await
    }

    /// Announces appends committed through [`EventStore::append_in_tx`]: metrics, relay wake-up.
    pub fn committed(&self, done: &Appended) {
        if !done.replayed {
            self.announce(done.events.len());
        }
    }

    /// Counts `events` newly committed events and wakes the relay (here, or by NOTIFY elsewhere).
    pub(super) fn announce(&self, events: usize) {
        if events == 0 {
            return;
        }
        metrics::counter!(EVENTS_APPENDED_TOTAL, "schema" => self.inner.config.schema.clone()).increment(events as u64);
        self.inner.wake.notify_one();
        if !self.inner.local_leader.load(Ordering::Acquire) {
            self.inner.announce.notify_one();
        }
    }

    /// The first result of a command with this idempotency key, if it ran before.
    pub async fn find_idempotent(
        &self,
        conn: &mut PgConnection,
        tenant: TenantId,
        key: &str,
    ) -> Result<Option<Appended>, StoreError> {
        let row = sqlx::query(
            "SELECT i.aggregate_id, i.last_sequence, i.event_ids, e.hash FROM idempotency i \
             LEFT JOIN events e ON e.aggregate_id = i.aggregate_id AND e.sequence = i.last_sequence \
             WHERE i.tenant_id = $1 AND i.key = $2",
        )
        .bind(tenant.as_uuid())
        .bind(key)
        .fetch_optional(&mut *conn)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let event_ids: Vec<uuid::Uuid> = row.try_get("event_ids")?;
        let hash: Option<Vec<u8>> = row.try_get("hash")?;
        // A retry gets the first answer whole, created ids included: its events, by id.
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM events e WHERE e.event_id = ANY($1) AND e.tenant_id = $2 ORDER BY e.sequence"
        );
        let events = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(&event_ids)
            .bind(tenant.as_uuid())
            .fetch_all(&mut *conn)
            .await?
            .iter()
            .map(|r| envelope_from_row(self.inner.config.domain, r))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Some(Appended {
            aggregate_id: AggregateId::from_uuid(row.try_get("aggregate_id")?)
                .map_err(|e| StoreError::Corrupt(e.to_string()))?,
            version: row.try_get::<i64, _>("last_sequence")? as u64,
            head: match hash {
                Some(h) => EventHash::from_slice(&h).map_err(StoreError::Corrupt)?,
                None => EventHash::GENESIS,
            },
            event_ids: event_ids
                .into_iter()
                .map(EventId::from_uuid)
                .collect::<Result<_, _>>()
                .map_err(|e| StoreError::Corrupt(e.to_string()))?,
            events,
            replayed: true,
        }))
    }

    pub(super) fn validate(&self, cmd: &Append) -> Result<(), StoreError> {
        if cmd.events.len() > MAX_EVENTS_PER_APPEND {
            return Err(StoreError::Invalid(format!("at most {MAX_EVENTS_PER_APPEND} events per append")));
        }
        if cmd.context.domain != self.inner.config.domain {
            return Err(StoreError::Invalid(format!(
                "event of domain {} appended to the {} store",
                cmd.context.domain, self.inner.config.domain
            )));
        }
        if let Some(key) = &cmd.idempotency_key
            && (key.is_empty() || key.len() > 200)
        {
            return Err(StoreError::Invalid("idempotency key must be 1 to 200 bytes".into()));
        }
        Ok(())
    }

    async fn try_append(&self, cmd: &Append, projector: Option<&dyn Projector>) -> Result<Appended, StoreError> {
        let mut conn = self.inner.pool.acquire().await?;
        let head = self.head(&mut conn, cmd).await?;
        self.write(&mut conn, cmd, head, projector).await
    }

    async fn write(
        &self,
        conn: &mut PgConnection,
        cmd: &Append,
        head: Head,
        projector: Option<&dyn Projector>,
    ) -> Result<Appended, StoreError> {
        let id = cmd.context.aggregate_id;
        if cmd.events.is_empty() {
            return Ok(Appended {
                aggregate_id: id,
                version: head.version,
                head: head.hash,
                event_ids: vec![],
                events: vec![],
                replayed: false,
            });
        }
        let batch = Batch::seal(cmd, &head)?;
        let sql = if cmd.idempotency_key.is_some() { APPEND_SQL } else { APPEND_SQL_NO_KEY };
        let query = batch.bind(cmd, sqlx::query(sql));
        let conflict = |e: sqlx::Error| {
            if is_constraint(&e, "events_stream_key") {
                StoreError::Conflict { aggregate: id, expected: cmd.expected.to_string() }
            } else {
                StoreError::Database(e)
            }
        };
        let appended: i64 = match projector {
            None => query.fetch_one(&mut *conn).await.map_err(conflict)?.try_get("appended")?,
            Some(projector) => {
                let mut tx = sqlx::Connection::begin(&mut *conn).await?;
                let appended: i64 = query.fetch_one(&mut *tx).await.map_err(conflict)?.try_get("appended")?;
                if appended > 0 {
                    projector.project(&mut tx, &batch.sealed).await?;
                }
                tx.commit().await.map_err(conflict)?;
                appended
            }
        };
        if appended == 0 {
            // An idempotency key seen before wins over everything: return the first result.
            if let Some(key) = cmd.idempotency_key.as_deref()
                && let Some(done) = self.find_idempotent(conn, cmd.context.tenant_id, key).await?
            {
                return Ok(done);
            }
            return Err(StoreError::Corrupt("append wrote nothing and gave no reason".into()));
        }
        Ok(batch.appended(id, head.hash))
    }
}
