//! The lifecycle rules, decided and applied without any I/O.

use chrono::{Duration, Utc};
use cim_aggregate::Aggregate;
use cim_runtime::status::HasErrorCode;

use super::*;

fn content(cid: &str) -> Content {
    Content { cid: cid.into(), size: 3, content_type: "text/plain".into(), filename: String::new() }
}

/// Decides and applies, through the stored form of each event (as a reload would see it).
fn run(doc: &mut Document, command: DocumentCommand) -> Result<Vec<DocumentEvent>, DocumentError> {
    let events = doc.decide(&command, &())?;
    for event in &events {
        let stored = event.to_new_event();
        assert_eq!(stored.event_type.as_str(), event.event_type());
        doc.apply(event);
    }
    Ok(events)
}

fn created() -> Document {
    let mut doc = Document::default();
    let details = Details { title: "Spec".into(), ..Default::default() };
    run(&mut doc, DocumentCommand::Create(details)).unwrap();
    doc
}

fn to(state: State) -> DocumentCommand {
    DocumentCommand::ChangeState { to: state, reason: String::new() }
}

#[test]
fn review_cycle_and_content_only_in_draft() {
    let mut doc = created();
    assert_eq!(run(&mut doc, to(State::InReview)).unwrap_err(), DocumentError::NoContent);
    run(&mut doc, DocumentCommand::AttachContent(content("a"))).unwrap();
    assert!(matches!(
        run(&mut doc, DocumentCommand::AttachContent(content("a"))).unwrap_err(),
        DocumentError::Unchanged(_)
    ));
    run(&mut doc, to(State::InReview)).unwrap();
    let locked = run(&mut doc, DocumentCommand::AttachContent(content("b"))).unwrap_err();
    assert_eq!(locked, DocumentError::ContentLocked("in_review"));
    assert_eq!(locked.code(), cim_core::ErrorCode::FailedPrecondition);
    run(&mut doc, to(State::Approved)).unwrap();
    assert_eq!(
        run(&mut doc, to(State::InReview)).unwrap_err(),
        DocumentError::IllegalTransition { from: "approved", to: "in_review" }
    );
    // A new version of an approved document goes back through review.
    run(&mut doc, to(State::Draft)).unwrap();
    let events = run(&mut doc, DocumentCommand::AttachContent(content("b"))).unwrap();
    assert!(matches!(&events[0], DocumentEvent::ContentUpdated(e)
        if e.version == 2 && e.new_content_cid == "b" && e.previous_content_cid == "a"));
    assert_eq!(doc.current().unwrap().0, 2);
}

#[test]
fn versions_tags_and_restore() {
    let mut doc = created();
    run(&mut doc, DocumentCommand::AttachContent(content("a"))).unwrap();
    run(&mut doc, DocumentCommand::AttachContent(content("b"))).unwrap();
    run(&mut doc, DocumentCommand::TagVersion { version: 1, tag: "v1.0".into() }).unwrap();
    // Tagging another version moves the tag.
    run(&mut doc, DocumentCommand::TagVersion { version: 2, tag: "v1.0".into() }).unwrap();
    assert!(doc.versions[0].tags.is_empty());
    assert_eq!(doc.versions[1].tags, ["v1.0"]);
    assert_eq!(
        run(&mut doc, DocumentCommand::TagVersion { version: 9, tag: "x".into() }).unwrap_err(),
        DocumentError::NoSuchVersion(9)
    );
    assert!(run(&mut doc, DocumentCommand::TagVersion { version: 1, tag: "bad tag".into() }).is_err());
    let events = run(&mut doc, DocumentCommand::RestoreVersion { version: 1 }).unwrap();
    assert!(matches!(&events[0], DocumentEvent::VersionRestored(e) if e.version == 3 && e.restored_from == 1));
    assert_eq!(doc.current().unwrap().1.content.cid, "a");
    run(&mut doc, DocumentCommand::Quarantine { version: 2, reason: "malware".into() }).unwrap();
    assert_eq!(
        run(&mut doc, DocumentCommand::RestoreVersion { version: 2 }).unwrap_err(),
        DocumentError::Quarantined(2)
    );
}

#[test]
fn retention_and_legal_hold_refuse_hard_delete() {
    let now = Utc::now();
    let mut doc = created();
    run(&mut doc, DocumentCommand::SetRetention { until: now + Duration::days(30), now }).unwrap();
    assert!(matches!(
        run(&mut doc, DocumentCommand::SetRetention { until: now + Duration::days(1), now }).unwrap_err(),
        DocumentError::RetentionShortened(_)
    ));
    assert!(matches!(
        run(&mut doc, DocumentCommand::Delete { hard: true, now }).unwrap_err(),
        DocumentError::Retained(_)
    ));
    // After the retention period, a legal hold still refuses.
    let later = now + Duration::days(31);
    run(&mut doc, DocumentCommand::PlaceLegalHold { reason: "case 7".into() }).unwrap();
    let held = run(&mut doc, DocumentCommand::Delete { hard: true, now: later }).unwrap_err();
    assert_eq!(held, DocumentError::LegalHold("case 7".into()));
    assert!(held.to_string().contains("legal hold"));
    run(&mut doc, DocumentCommand::ReleaseLegalHold { reason: String::new() }).unwrap();
    // Soft delete, restore, then delete for good.
    run(&mut doc, DocumentCommand::Delete { hard: false, now }).unwrap();
    assert_eq!(doc.state, State::Deleted);
    assert!(matches!(run(&mut doc, to(State::InReview)).unwrap_err(), DocumentError::NotLive("deleted", _)));
    run(&mut doc, DocumentCommand::Restore).unwrap();
    assert_eq!(doc.state, State::Draft);
    run(&mut doc, DocumentCommand::Delete { hard: true, now: later }).unwrap();
    assert!(doc.purged);
    let gone = run(&mut doc, DocumentCommand::Restore).unwrap_err();
    assert_eq!(gone.code(), cim_core::ErrorCode::NotFound);
}

#[test]
fn archive_restores_the_state_before() {
    let mut doc = created();
    run(&mut doc, DocumentCommand::AttachContent(content("a"))).unwrap();
    run(&mut doc, to(State::InReview)).unwrap();
    run(&mut doc, DocumentCommand::Archive).unwrap();
    assert!(run(&mut doc, DocumentCommand::Archive).is_err());
    assert!(matches!(
        run(&mut doc, DocumentCommand::AttachContent(content("b"))).unwrap_err(),
        DocumentError::NotLive("archived", _)
    ));
    run(&mut doc, DocumentCommand::Restore).unwrap();
    assert_eq!(doc.state, State::InReview);
}

#[test]
fn bad_input_names_its_field() {
    let mut doc = Document::default();
    let cases = [
        (Details { title: " ".into(), ..Default::default() }, "title"),
        (Details { title: "a\u{202e}b".into(), ..Default::default() }, "title"),
        (Details { title: "t".into(), tags: vec!["no spaces".into()], ..Default::default() }, "tags"),
        (Details { title: "t".into(), description: "x".repeat(10_001), ..Default::default() }, "description"),
    ];
    for (details, field) in cases {
        match doc.decide(&DocumentCommand::Create(details), &()) {
            Err(DocumentError::Invalid { field: f, .. }) => assert_eq!(f, field),
            other => panic!("{field}: {other:?}"),
        }
    }
    let details = Details { title: "Spec\nv2\tdraft".into(), ..Default::default() };
    run(&mut doc, DocumentCommand::Create(details)).unwrap();
    let link = |target: &str| DocumentCommand::Link { link_type: LinkType::References, target: target.into() };
    assert!(run(&mut doc, link("graph:not-a-uuid")).is_err());
    assert!(run(&mut doc, link("mail:0190a5b2-7c3e-7000-8000-000000000001")).is_err());
    run(&mut doc, link("graph:0190a5b2-7c3e-7000-8000-000000000001")).unwrap();
    assert!(matches!(
        run(&mut doc, link("graph:0190a5b2-7c3e-7000-8000-000000000001")).unwrap_err(),
        DocumentError::Unchanged(_)
    ));
}

#[test]
fn names_are_one_list() {
    for name in State::NAMES {
        assert_eq!(State::parse(name).unwrap().as_str(), name);
    }
    for name in LinkType::NAMES {
        assert_eq!(LinkType::parse(name).unwrap().as_str(), name);
    }
    // Every event type round-trips through its stored form.
    assert_eq!(DocumentEvent::TYPES.len(), 15);
}
