//! One-time websocket tickets against the real Redis: a ticket opens once, expires, and carries
//! the principal it was issued for, its end capped to the connection span.

use std::collections::BTreeSet;
use std::time::Duration;

use cim_auth::ticket::{CONNECTION_SECS, issue, issue_for, redeem};
use cim_auth::{AuthError, Method, Principal, Role, now_secs};
use cim_core::TenantId;

fn redis() -> cim_runtime::redis::Pool {
    let url = std::env::var("CIM_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let settings = cim_runtime::redis::RedisSettings {
        url,
        max_size: 4,
        timeout: Duration::from_millis(500),
        tls: Default::default(),
    };
    cim_runtime::redis::connect_lazy(&settings).unwrap()
}

fn principal(expires_at: Option<u64>) -> Principal {
    Principal {
        subject: "viewer".into(),
        tenant: TenantId::new(),
        roles: BTreeSet::from([Role::Reader, Role::Writer]),
        method: Method::ApiKey,
        expires_at,
    }
}

#[tokio::test]
async fn a_ticket_is_redeemed_once_for_its_principal() {
    let redis = redis();
    let who = principal(None);
    let ticket = issue(&redis, &who).await.unwrap();
    assert_eq!(ticket.len(), 64);
    let got = redeem(&redis, &ticket).await.unwrap();
    assert_eq!((&got.subject, got.tenant, &got.roles), (&who.subject, who.tenant, &who.roles));
    // A key without an end still gives a connection that must be renewed.
    let end = got.expires_at.unwrap();
    assert!(end <= now_secs() + CONNECTION_SECS && end + 5 >= now_secs() + CONNECTION_SECS, "{end}");
    let again = redeem(&redis, &ticket).await.unwrap_err();
    assert!(matches!(again, AuthError::Rejected(_)), "{again:?}");
    // Two redemptions racing: exactly one wins.
    let ticket = issue(&redis, &who).await.unwrap();
    let (a, b) = tokio::join!(redeem(&redis, &ticket), redeem(&redis, &ticket));
    assert!(a.is_ok() != b.is_ok(), "{a:?} {b:?}");
    assert!(matches!(redeem(&redis, "not-a-ticket").await, Err(AuthError::Rejected(_))));
    assert!(matches!(redeem(&redis, "").await, Err(AuthError::Malformed(_))));
}

#[tokio::test]
async fn a_ticket_expires_and_never_outlives_its_credential() {
    let redis = redis();
    let ticket = issue_for(&redis, &principal(None), 1).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert!(matches!(redeem(&redis, &ticket).await, Err(AuthError::Rejected(_))), "an unused ticket expires");

    // A session ending in 1 s: its ticket's connection ends with it, and once the session has
    // ended the ticket opens nothing, although the ticket itself had 30 s.
    let ending = principal(Some(now_secs() + 1));
    let ticket = issue(&redis, &ending).await.unwrap();
    let early = issue(&redis, &ending).await.unwrap();
    assert_eq!(redeem(&redis, &early).await.unwrap().expires_at, ending.expires_at);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert!(matches!(redeem(&redis, &ticket).await, Err(AuthError::Expired)));
}
