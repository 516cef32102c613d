use cim_aggregate::Aggregate;
use cim_core::ErrorCode;
use cim_runtime::status::HasErrorCode;

use super::*;

fn register(filter: &str, condition: Option<&str>, url: &str) -> SubscriptionCommand {
    SubscriptionCommand::Register {
        name: "orders".into(),
        filter: filter.into(),
        condition: condition.map(str::to_owned),
        url: url.into(),
    }
}

fn refused(command: &SubscriptionCommand) -> (ErrorCode, Vec<String>) {
    let e = Subscription::default().decide(command, &()).unwrap_err();
    (e.code(), e.violations().into_iter().map(|v| v.field).collect())
}

#[test]
fn bad_urls_filters_and_conditions_are_refused_naming_the_field() {
    for url in [
        "ftp://example.com/hook",
        "https://user:pw@example.com/hook",
        "https://user@example.com/hook",
        "not a url",
        "http://",
        "https://example.com/hook#frag",
        "",
    ] {
        assert_eq!(
            refused(&register("graph.evt.>", None, url)),
            (ErrorCode::InvalidArgument, vec!["url".into()]),
            "{url}"
        );
    }
    for filter in ["", "graph", "graph.evt", "nope.evt.>", "graph.evt.>.x", "graph.cmd.>"] {
        let got = refused(&register(filter, None, "https://example.com/h"));
        assert_eq!(got, (ErrorCode::InvalidArgument, vec!["filter".into()]), "{filter:?}");
    }
    let got = refused(&register("graph.evt.>", Some("event.payload.x >"), "https://example.com/h"));
    assert_eq!(got, (ErrorCode::InvalidArgument, vec!["condition".into()]));
}

#[test]
fn the_lifecycle_runs_pending_active_disabled_active_deleted() {
    let mut s = Subscription::default();
    let ok = |s: &mut Subscription, c: &SubscriptionCommand| {
        for e in s.decide(c, &()).unwrap() {
            s.apply(&e);
        }
    };
    ok(
        &mut s,
        &register(
            "document.evt.document.*.document_state_changed",
            Some("event.payload.to == 'approved'"),
            "http://127.0.0.1:9/h",
        ),
    );
    assert_eq!(s.state, SubscriptionState::Pending);
    ok(&mut s, &SubscriptionCommand::Activate { allowed_origin: "cim".into() });
    assert_eq!(s.state, SubscriptionState::Active);
    let again = s.decide(&SubscriptionCommand::Activate { allowed_origin: "*".into() }, &()).unwrap_err();
    assert_eq!(again.code(), ErrorCode::FailedPrecondition);
    ok(&mut s, &SubscriptionCommand::Disable { reason: "410".into() });
    assert_eq!((s.state, s.reason.as_str()), (SubscriptionState::Disabled, "410"));
    ok(&mut s, &SubscriptionCommand::Activate { allowed_origin: "*".into() });
    ok(&mut s, &SubscriptionCommand::Delete);
    assert_eq!(s.decide(&SubscriptionCommand::Delete, &()).unwrap_err(), SubscriptionError::Deleted);
}
