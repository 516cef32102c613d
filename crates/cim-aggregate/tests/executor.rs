//! The kit's command path proven on a test-only aggregate of a few dozen lines: create,
//! conflicts, an idempotent retry, a rule, races decided again, the state as of a version, the
//! hash chain, and the events on JetStream through the relay. Real Postgres and NATS.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use cim_aggregate::{Aggregate, CommandExecutor, CommandOptions, ExecutorError};
use cim_core::{AggregateId, Domain, ErrorCode, FieldViolation, SubjectPrefix, TenantId};
use cim_runtime::edge::Caller;
use cim_runtime::status::HasErrorCode;
use serde::{Deserialize, Serialize};

// ---- the test domain: an account that never goes below zero ----

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Opened {
    owner: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Moved {
    amount: i64,
}

cim_core::domain_events! {
    enum AccountEvent {
        Opened(Opened) = "account_opened",
        Deposited(Moved) = "money_deposited",
        Withdrawn(Moved) = "money_withdrawn",
    }
}

enum AccountCommand {
    Open { owner: String },
    Deposit(i64),
    Withdraw(i64),
}

#[derive(Debug, thiserror::Error)]
enum AccountError {
    #[error("amount: must be positive")]
    NotPositive,
    #[error("the balance {0} does not cover it")]
    Insufficient(i64),
}

impl HasErrorCode for AccountError {
    fn code(&self) -> ErrorCode {
        match self {
            AccountError::NotPositive => ErrorCode::InvalidArgument,
            AccountError::Insufficient(_) => ErrorCode::FailedPrecondition,
        }
    }

    fn violations(&self) -> Vec<FieldViolation> {
        match self {
            AccountError::NotPositive => vec![FieldViolation::new("amount", "must be positive")],
            AccountError::Insufficient(_) => vec![],
        }
    }
}

/// Events the executor reported committed ([`Aggregate::committed`]), across the test.
static COMMITTED: AtomicU64 = AtomicU64::new(0);

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Account {
    owner: String,
    balance: i64,
}

impl Aggregate for Account {
    const DOMAIN: Domain = Domain::Document;
    const AGGREGATE_TYPE: &'static str = "account";
    type Command = AccountCommand;
    type Event = AccountEvent;
    type Error = AccountError;
    type Services = ();

    fn command_name(command: &AccountCommand) -> &'static str {
        match command {
            AccountCommand::Open { .. } => "open",
            AccountCommand::Deposit(_) => "deposit",
            AccountCommand::Withdraw(_) => "withdraw",
        }
    }

    fn creates(command: &AccountCommand) -> bool {
        matches!(command, AccountCommand::Open { .. })
    }

    fn decide(&self, command: &AccountCommand, _: &()) -> Result<Vec<AccountEvent>, AccountError> {
        match command {
            AccountCommand::Open { owner } => Ok(vec![AccountEvent::Opened(Opened { owner: owner.clone() })]),
            AccountCommand::Deposit(n) | AccountCommand::Withdraw(n) if *n <= 0 => Err(AccountError::NotPositive),
            AccountCommand::Deposit(n) => Ok(vec![AccountEvent::Deposited(Moved { amount: *n })]),
            AccountCommand::Withdraw(n) if *n > self.balance => Err(AccountError::Insufficient(self.balance)),
            AccountCommand::Withdraw(n) => Ok(vec![AccountEvent::Withdrawn(Moved { amount: *n })]),
        }
    }

    fn committed(&self, events: &[AccountEvent]) {
        COMMITTED.fetch_add(events.len() as u64, Ordering::Relaxed);
    }

    fn apply(&mut self, event: &AccountEvent) {
        match event {
            AccountEvent::Opened(e) => self.owner = e.owner.clone(),
            AccountEvent::Deposited(e) => self.balance += e.amount,
            AccountEvent::Withdrawn(e) => self.balance -= e.amount,
        }
    }
}

// ---- the proof ----

fn unique(tag: &str) -> String {
    format!("t{tag}_{}", &uuid::Uuid::now_v7().simple().to_string()[20..])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn any_aggregate_runs_through_the_executor() {
    let database = std::env::var("CIM_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432/postgres".into());
    let nats = std::env::var("CIM_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let schema = unique("agg");
    let pool = cim_runtime::postgres::connect(&cim_runtime::postgres::PgSettings {
        url: database,
        schema: schema.clone(),
        max_connections: 12,
        connect_timeout: Duration::from_secs(5),
        application_name: "cim-aggregate-test".into(),
    })
    .await
    .unwrap();
    let store = cim_eventstore::EventStore::open(
        pool.clone(),
        cim_eventstore::StoreConfig {
            domain: Domain::Document,
            schema: schema.clone(),
            snapshot_every: 4,
            upcasters: cim_core::Upcasters::new(),
        },
    )
    .await
    .unwrap();
    let prefix: SubjectPrefix = unique("p").parse().unwrap();
    let js = async_nats::jetstream::new(async_nats::connect(&nats).await.unwrap());
    let stream = cim_streams::streams::ensure_domain_stream(&js, &prefix, Domain::Document, 1).await.unwrap();
    let stop = cim_runtime::Shutdown::new();
    let relay =
        cim_eventstore::Relay::new(store.clone(), js.clone(), prefix.clone(), cim_eventstore::RelayConfig::default());
    let relay = tokio::spawn(relay.run(stop.clone()));

    let accounts: CommandExecutor<Account> = CommandExecutor::new(store.clone(), "test");
    let caller = Caller { tenant: TenantId::new(), actor: "user:ada".parse().unwrap(), correlation: None };
    let id = AggregateId::new();
    let plain = CommandOptions::default();
    let open = AccountCommand::Open { owner: "ada".into() };

    // Create, and a second create of the same id.
    assert_eq!(accounts.execute(&caller, id, &open, &plain).await.unwrap().version, 1);
    let again = accounts.execute(&caller, id, &open, &plain).await.unwrap_err();
    assert_eq!(again.code(), ErrorCode::AlreadyExists, "{again}");
    // Unknown aggregate, another tenant's aggregate: not found.
    let missing = accounts.execute(&caller, AggregateId::new(), &AccountCommand::Deposit(1), &plain).await;
    assert_eq!(missing.unwrap_err().code(), ErrorCode::NotFound);
    let stranger = Caller { tenant: TenantId::new(), ..caller.clone() };
    let foreign = accounts.execute(&stranger, id, &AccountCommand::Deposit(1), &plain).await.unwrap_err();
    assert_eq!(foreign.code(), ErrorCode::NotFound, "{foreign}");

    // Rules: refused with their own codes, nothing appended.
    assert_eq!(accounts.execute(&caller, id, &AccountCommand::Deposit(10), &plain).await.unwrap().version, 2);
    let overdraw = accounts.execute(&caller, id, &AccountCommand::Withdraw(20), &plain).await.unwrap_err();
    assert!(matches!(overdraw, ExecutorError::Rule(AccountError::Insufficient(10))), "{overdraw}");
    assert_eq!(overdraw.code(), ErrorCode::FailedPrecondition);
    let zero = accounts.execute(&caller, id, &AccountCommand::Deposit(0), &plain).await.unwrap_err();
    assert_eq!(zero.violations(), vec![FieldViolation::new("amount", "must be positive")]);

    // A stale expected version is a conflict; the right one goes through.
    let stale = CommandOptions { expected_version: Some(1), ..Default::default() };
    assert_eq!(
        accounts.execute(&caller, id, &AccountCommand::Deposit(5), &stale).await.unwrap_err().code(),
        ErrorCode::Conflict
    );
    let current = CommandOptions { expected_version: Some(2), ..Default::default() };
    assert_eq!(accounts.execute(&caller, id, &AccountCommand::Deposit(5), &current).await.unwrap().version, 3);

    // An idempotent retry gets the first answer and changes nothing, even when its command
    // would now be refused.
    let keyed = CommandOptions { idempotency_key: Some("withdraw-once".into()), ..Default::default() };
    let first = accounts.execute(&caller, id, &AccountCommand::Withdraw(15), &keyed).await.unwrap();
    let retry = accounts.execute(&caller, id, &AccountCommand::Withdraw(15), &keyed).await.unwrap();
    assert!(retry.replayed && !first.replayed);
    assert_eq!((retry.version, &retry.event_ids), (first.version, &first.event_ids));

    // Racing writers without an expected version: each command is decided again on the state
    // the other left, so none is lost. A second executor (its own in-process queue, as another
    // replica) makes the races real.
    let rival: CommandExecutor<Account> = CommandExecutor::new(store.clone(), "test");
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let accounts = if i % 2 == 0 { accounts.clone() } else { rival.clone() };
            let caller = caller.clone();
            tokio::spawn(async move {
                for _ in 0..5 {
                    accounts
                        .execute(&caller, id, &AccountCommand::Deposit(1), &CommandOptions::default())
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let version = 4 + 40;
    let now = accounts.at_version(caller.tenant, id, version).await.unwrap();
    assert_eq!((now.state.owner.as_str(), now.state.balance, now.version), ("ada", 40, version));
    assert!(now.created_at <= now.updated_at);
    assert_eq!(accounts.at_version(caller.tenant, id, 2).await.unwrap().state.balance, 10);
    assert_eq!(
        accounts.at_version(caller.tenant, id, version + 1).await.unwrap_err().code(),
        ErrorCode::InvalidArgument
    );
    assert_eq!(store.verify(caller.tenant, id).await.unwrap() as u64, version);
    // Each stored event was reported committed once: not the refused commands, not the
    // idempotent replay, not the attempts that lost a race.
    assert_eq!(COMMITTED.load(Ordering::Relaxed), version);

    // Every event reaches JetStream, in order.
    let mut published = 0;
    for _ in 0..100 {
        published = js.get_stream(&stream).await.unwrap().info().await.unwrap().state.messages;
        if published >= version {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(published, version);

    stop.trigger();
    let _ = relay.await;
    let _ = js.delete_stream(&stream).await;
    let _ = sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE"))).execute(&pool).await;
}
