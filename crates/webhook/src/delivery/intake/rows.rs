//! A batch's delivery rows: the active subscriptions of every (tenant, domain) in it in one
//! query, each event matched against its own (filter, then condition, each condition parsed once
//! per batch), and every row inserted by one statement.

use std::collections::{HashMap, HashSet};

use async_nats::jetstream::Message;
use cim_aggregate::expr::{Expr, event_view};
use cim_core::{EventEnvelope, headers};
use serde_json::{Map, Value};
use sqlx::{PgPool, Row};
use uuid::Uuid;

/// One active subscription as the intake matches it.
#[derive(Debug)]
struct Subscription {
    id: Uuid,
    filter: String,
    condition: Option<String>,
}

/// The active subscriptions of a batch's tenants, by (tenant, domain).
#[derive(Debug, Default)]
pub struct Subscriptions(HashMap<(Uuid, String), Vec<Subscription>>);

impl Subscriptions {
    /// Reads the active subscriptions of every (tenant, domain) of `events`.
    pub async fn active_for<'a>(
        pool: &PgPool,
        events: impl Iterator<Item = &'a EventEnvelope>,
    ) -> Result<Subscriptions, sqlx::Error> {
        let keys: HashSet<(Uuid, &str)> = events.map(|e| (e.tenant_id.as_uuid(), e.domain.as_str())).collect();
        let (tenants, domains): (Vec<Uuid>, Vec<&str>) = keys.into_iter().unzip();
        let found = sqlx::query(
            "SELECT s.tenant_id, s.domain, s.subscription_id, s.filter, s.condition FROM webhook_subscriptions s \
             JOIN unnest($1::uuid[], $2::text[]) AS k(tenant_id, domain) \
               ON s.tenant_id = k.tenant_id AND s.domain = k.domain \
             WHERE s.state = 'active'",
        )
        .bind(&tenants)
        .bind(&domains)
        .fetch_all(pool)
        .await?;
        let mut by_key: HashMap<(Uuid, String), Vec<Subscription>> = HashMap::new();
        for row in found {
            let subscription = Subscription {
                id: row.try_get("subscription_id")?,
                filter: row.try_get("filter")?,
                condition: row.try_get("condition")?,
            };
            by_key.entry((row.try_get("tenant_id")?, row.try_get("domain")?)).or_default().push(subscription);
        }
        Ok(Subscriptions(by_key))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The rows of a batch as the insert's columns: each event once (its envelope as published, the
/// largest column), and a (subscription, event) pair per row.
#[derive(Debug, Default)]
pub struct Rows<'a> {
    subscriptions: Vec<Uuid>,
    /// Per pair, its event's 1-based place in the event columns.
    of_event: Vec<i64>,
    event_ids: Vec<Uuid>,
    tenants: Vec<Uuid>,
    aggregates: Vec<Uuid>,
    sequences: Vec<i64>,
    subjects: Vec<&'a str>,
    published: Vec<&'a str>,
    traceparents: Vec<Option<String>>,
    domains: Vec<&'static str>,
    stream_sequences: Vec<Option<i64>>,
}

impl<'a> Rows<'a> {
    /// The rows `events` make for `subscriptions`. An event that comes twice in one batch (the
    /// same event at two stream sequences: republished after a rebuild) makes its rows once,
    /// from its later message, as a second statement would have left them.
    pub fn matching(subscriptions: &Subscriptions, events: &'a [(EventEnvelope, Message)]) -> Rows<'a> {
        // Parsed once per batch; a condition that does not parse takes nothing.
        let mut conditions: HashMap<Uuid, Option<Expr>> = HashMap::new();
        let mut rows = Rows::default();
        let mut seen = HashSet::new();
        for (event, message) in events.iter().rev() {
            if !seen.insert(event.event_id) {
                continue;
            }
            let key = (event.tenant_id.as_uuid(), event.domain.as_str().to_owned());
            let Some(candidates) = subscriptions.0.get(&key) else { continue };
            let subject =
                format!("{}.evt.{}.{}.{}", event.domain, event.aggregate_type, event.aggregate_id, event.event_type);
            let mut view: Option<Map<String, Value>> = None;
            let first = rows.subscriptions.len();
            for candidate in candidates {
                if !cim_core::subject::filter_matches(&candidate.filter, &subject) {
                    continue;
                }
                // A condition that cannot be evaluated on this event (a field it lacks) does not take it.
                let takes = match &candidate.condition {
                    None => true,
                    Some(source) => {
                        let condition =
                            conditions.entry(candidate.id).or_insert_with(|| Expr::parse(source).ok()).as_ref();
                        let view = view.get_or_insert_with(|| {
                            Map::from_iter([("event".to_owned(), Value::Object(event_view(event)))])
                        });
                        condition.is_some_and(|c| c.test(view).unwrap_or(false))
                    }
                };
                if takes {
                    rows.subscriptions.push(candidate.id);
                }
            }
            if rows.subscriptions.len() > first {
                rows.push_event(event, message);
                let place = rows.event_ids.len() as i64;
                rows.of_event.resize(rows.subscriptions.len(), place);
            }
        }
        rows
    }

    fn push_event(&mut self, event: &EventEnvelope, message: &'a Message) {
        self.event_ids.push(event.event_id.as_uuid());
        self.tenants.push(event.tenant_id.as_uuid());
        self.aggregates.push(event.aggregate_id.as_uuid());
        self.sequences.push(event.sequence as i64);
        self.subjects.push(message.subject.as_str());
        // The envelope was read from these bytes, so they are text.
        self.published.push(std::str::from_utf8(&message.payload).unwrap_or_default());
        let traceparent = message.headers.as_ref().and_then(|h| h.get(headers::TRACEPARENT));
        self.traceparents.push(traceparent.map(|v| v.as_str().to_owned()));
        self.domains.push(event.domain.as_str());
        self.stream_sequences.push(message.info().ok().map(|info| info.stream_sequence as i64));
    }

    /// How many rows.
    pub fn len(&self) -> usize {
        self.subscriptions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.subscriptions.is_empty()
    }

    /// Inserts every row in one statement (one commit); answers how many rows the batch makes.
    pub async fn insert(&self, pool: &PgPool) -> Result<u64, sqlx::Error> {
        if self.is_empty() {
            return Ok(0);
        }
        // A message taken in again keeps a pending row's place current: after `cim streams
        // rebuild` the same event sits at a new stream sequence.
        sqlx::query(
            "INSERT INTO webhook_deliveries (subscription_id, event_id, tenant_id, aggregate_id, sequence, subject, \
             event, traceparent, domain, stream_sequence) \
             SELECT m.subscription_id, e.event_id, e.tenant_id, e.aggregate_id, e.sequence, e.subject, \
                    CAST(e.event AS json), e.traceparent, e.domain, e.stream_sequence \
             FROM unnest($1::uuid[], $2::int8[]) AS m(subscription_id, place) \
             JOIN unnest($3::uuid[], $4::uuid[], $5::uuid[], $6::int8[], $7::text[], $8::text[], $9::text[], \
                         $10::text[], $11::int8[]) \
                  WITH ORDINALITY AS e(event_id, tenant_id, aggregate_id, sequence, subject, event, traceparent, \
                                       domain, stream_sequence, place) \
               ON e.place = m.place \
             ON CONFLICT (subscription_id, event_id) DO UPDATE SET stream_sequence = EXCLUDED.stream_sequence \
             WHERE webhook_deliveries.state = 'pending' \
               AND webhook_deliveries.stream_sequence IS DISTINCT FROM EXCLUDED.stream_sequence",
        )
        .bind(&self.subscriptions)
        .bind(&self.of_event)
        .bind(&self.event_ids)
        .bind(&self.tenants)
        .bind(&self.aggregates)
        .bind(&self.sequences)
        .bind(&self.subjects)
        .bind(&self.published)
        .bind(&self.traceparents)
        .bind(&self.domains)
        .bind(&self.stream_sequences)
        .execute(pool)
        .await?;
        Ok(self.len() as u64)
    }
}
