//! Reading histories: events as stored, chain verification, loading with snapshots.

use super::*;

impl EventStore {
    /// An aggregate's stored events after `after` (stored form: not upcast), tenant-scoped.
    pub async fn events(
        &self,
        tenant: TenantId,
        id: AggregateId,
        after: u64,
    ) -> Result<Vec<EventEnvelope>, StoreError> {
        Ok(self.stored_events(tenant, id, after).await?.into_iter().map(|s| s.envelope).collect())
    }

    /// [`Self::events`] with each payload's stored text, for verification.
    pub async fn stored_events(
        &self,
        tenant: TenantId,
        id: AggregateId,
        after: u64,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        self.stored_events_of(tenant, id, None, after).await
    }

    /// [`Self::stored_events`], only if the aggregate is of `aggregate_type`: a schema holding
    /// two kinds of aggregate (agents and tasks) answers "no such agent" for a task's id, instead
    /// of folding events the agent cannot read.
    async fn stored_events_of(
        &self,
        tenant: TenantId,
        id: AggregateId,
        aggregate_type: Option<&str>,
        after: u64,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM events e WHERE e.aggregate_id = $1 AND e.tenant_id = $2 AND e.sequence > $3 \
             AND ($4::text IS NULL OR e.aggregate_type = $4) ORDER BY e.sequence"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id.as_uuid())
            .bind(tenant.as_uuid())
            .bind(after as i64)
            .bind(aggregate_type)
            .fetch_all(&self.inner.pool)
            .await?;
        rows.iter().map(|r| stored_from_row(self.inner.config.domain, r)).collect()
    }

    /// Verifies an aggregate's whole hash chain; returns how many events were checked.
    pub async fn verify(&self, tenant: TenantId, id: AggregateId) -> Result<usize, StoreError> {
        let events = self.stored_events(tenant, id, 0).await?;
        if events.is_empty() {
            return Err(StoreError::NotFound(id));
        }
        cim_core::verify_chain(&events)?;
        Ok(events.len())
    }

    /// The aggregate's history, verified and upcast to current versions.
    pub async fn history(&self, tenant: TenantId, id: AggregateId) -> Result<Vec<EventEnvelope>, StoreError> {
        self.history_inner(tenant, id, None).await
    }

    /// [`Self::history`] of an aggregate of `aggregate_type` (empty for an id of another type).
    pub async fn history_of(
        &self,
        tenant: TenantId,
        id: AggregateId,
        aggregate_type: &str,
    ) -> Result<Vec<EventEnvelope>, StoreError> {
        self.history_inner(tenant, id, Some(aggregate_type)).await
    }

    async fn history_inner(
        &self,
        tenant: TenantId,
        id: AggregateId,
        aggregate_type: Option<&str>,
    ) -> Result<Vec<EventEnvelope>, StoreError> {
        let events = self.stored_events_of(tenant, id, aggregate_type, 0).await?;
        cim_core::verify_chain(&events)?;
        events.into_iter().map(|e| self.inner.config.upcasters.upcast(e.envelope).map_err(StoreError::from)).collect()
    }

    /// Verifies the hash chain of every aggregate in this schema, one aggregate at a time, each
    /// against the payload text as stored (what `cim verify` runs). An aggregate whose rows do
    /// not even read is reported as broken with why, not as an error of the whole check.
    pub async fn verify_all(&self) -> Result<VerifyReport, StoreError> {
        let rows =
            sqlx::query("SELECT DISTINCT tenant_id, aggregate_id FROM events").fetch_all(&self.inner.pool).await?;
        let mut report = VerifyReport::default();
        for row in rows {
            let tenant =
                TenantId::from_uuid(row.try_get("tenant_id")?).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            let id =
                AggregateId::from_uuid(row.try_get("aggregate_id")?).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            report.aggregates += 1;
            let checked = match self.stored_events(tenant, id, 0).await {
                Ok(events) => cim_core::verify_chain(&events).map(|()| events.len()).map_err(StoreError::from),
                Err(e) => Err(e),
            };
            match checked {
                Ok(n) => report.events += n,
                Err(StoreError::Database(e)) => return Err(StoreError::Database(e)),
                Err(e) => report.broken.push(BrokenChain { tenant, aggregate: id, why: e.to_string() }),
            }
        }
        Ok(report)
    }

    /// Latest snapshot (if usable) plus later events, verified, upcast and folded. Writes a new
    /// snapshot in the background when many events were folded; writers never wait for it. An
    /// aggregate of another type than `A`'s is not found.
    pub async fn load<A: Aggregate>(&self, tenant: TenantId, id: AggregateId) -> Result<Loaded<A>, StoreError> {
        let snapshot = sqlx::query(
            "SELECT sequence, hash, state FROM snapshots \
             WHERE aggregate_id = $1 AND tenant_id = $2 AND state_version = $3 AND aggregate_type = $4",
        )
        .bind(id.as_uuid())
        .bind(tenant.as_uuid())
        .bind(A::SNAPSHOT_VERSION as i32)
        .bind(A::AGGREGATE_TYPE)
        .fetch_optional(&self.inner.pool)
        .await?;
        let (mut state, base, base_hash) = match snapshot {
            Some(row) => {
                let state: sqlx::types::Json<A> = row.try_get("state")?;
                let hash = EventHash::from_slice(&row.try_get::<Vec<u8>, _>("hash")?).map_err(StoreError::Corrupt)?;
                (state.0, row.try_get::<i64, _>("sequence")? as u64, Some(hash))
            }
            None => (A::default(), 0, None),
        };
        let events = self.stored_events_of(tenant, id, Some(A::AGGREGATE_TYPE), base).await?;
        if events.is_empty() && base == 0 {
            return Err(StoreError::NotFound(id));
        }
        verify_chain_from(base, base_hash.unwrap_or(EventHash::GENESIS), &events)?;
        let folded = events.len() as u64;
        let mut head = base_hash.unwrap_or(EventHash::GENESIS);
        let mut version = base;
        for StoredEvent { envelope: event, .. } in events {
            head = event.hash;
            version = event.sequence;
            let event = self.inner.config.upcasters.upcast(event)?;
            state.apply(&event).map_err(|e| StoreError::Corrupt(format!("applying event {}: {e}", event.event_id)))?;
        }
        if folded >= self.inner.config.snapshot_every.max(1) {
            self.spawn_snapshot::<A>(tenant, id, version, head, &state);
        }
        Ok(Loaded { state, version, head, snapshot_version: (base > 0).then_some(base) })
    }

    fn spawn_snapshot<A: Aggregate>(
        &self,
        tenant: TenantId,
        id: AggregateId,
        version: u64,
        head: EventHash,
        state: &A,
    ) {
        let Ok(json) = serde_json::to_value(state) else { return };
        let pool = self.inner.pool.clone();
        tokio::spawn(async move {
            let result = sqlx::query(
                "INSERT INTO snapshots (aggregate_id, tenant_id, aggregate_type, sequence, hash, state_version, state) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) \
                 ON CONFLICT (aggregate_id) DO UPDATE SET sequence = EXCLUDED.sequence, hash = EXCLUDED.hash, \
                   state_version = EXCLUDED.state_version, state = EXCLUDED.state, taken_at = now() \
                 WHERE snapshots.sequence < EXCLUDED.sequence OR snapshots.state_version <> EXCLUDED.state_version",
            )
            .bind(id.as_uuid())
            .bind(tenant.as_uuid())
            .bind(A::AGGREGATE_TYPE)
            .bind(version as i64)
            .bind(head.as_bytes().to_vec())
            .bind(A::SNAPSHOT_VERSION as i32)
            .bind(sqlx::types::Json(json))
            .execute(&pool)
            .await;
            if let Err(e) = result {
                tracing::warn!(aggregate = %id, error = %e, "snapshot not written");
            }
        });
    }
}
