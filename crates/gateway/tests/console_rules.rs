//! The console's pages offer only the changes the services allow, from tables of their own
//! (the pages are plain ES modules with no build step, so they cannot import the Rust rules).
//! These tests read those tables from the files the gateway embeds and check them against the
//! domain crates' rules, every pair of states, so a rule changed on one side fails here rather
//! than as a button that always answers 422, or a change the console never offers.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use cim_agent::agent::AgentState;
use cim_aggregate::Aggregate;
use cim_document::domain::{LinkType, State};
use cim_workflow::instance::{StepStatus, Workflow, WorkflowCommand, WorkflowStatus};
use cim_workflow::spec::StepKind;

fn console_file(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("console").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The text between `const NAME = ` and the `;` that ends the declaration.
fn declaration<'a>(text: &'a str, name: &str) -> &'a str {
    let start = text.find(&format!("const {name} = ")).unwrap_or_else(|| panic!("no const {name}")) + name.len() + 9;
    let rest = &text[start..];
    &rest[..rest.find(';').unwrap_or_else(|| panic!("const {name} does not end"))]
}

/// Every double-quoted string in `text`, in order.
fn quoted(text: &str) -> Vec<String> {
    text.split('"').skip(1).step_by(2).map(str::to_owned).collect()
}

/// `const NAME = ["a", "b"];`
fn js_list(file: &str, name: &str) -> BTreeSet<String> {
    quoted(declaration(&console_file(file), name)).into_iter().collect()
}

/// `const NAME = { key: ["a", "b"], ... };`, one key a line.
fn js_table(file: &str, name: &str) -> BTreeMap<String, BTreeSet<String>> {
    let text = console_file(file);
    let body = declaration(&text, name);
    let table: BTreeMap<_, _> = body
        .lines()
        .filter_map(|line| {
            let (key, values) = line.trim().split_once(':')?;
            Some((key.trim().to_owned(), quoted(values).into_iter().collect()))
        })
        .collect();
    assert!(!table.is_empty(), "const {name} in {file} has no entries:\n{body}");
    table
}

fn offered<'a>(table: &'a BTreeMap<String, BTreeSet<String>>, from: &str) -> impl Fn(&str) -> bool + 'a {
    let entry = table.get(from).cloned().unwrap_or_default();
    move |to| entry.contains(to)
}

#[test]
fn document_review_changes_are_the_document_services() {
    let review = js_table("document-actions.js", "REVIEW");
    let states: Vec<State> = State::NAMES.iter().map(|n| State::parse(n).unwrap()).collect();
    for key in review.keys() {
        assert!(State::parse(key).is_some(), "REVIEW names a state the service lacks: {key}");
    }
    for &from in &states {
        let has = offered(&review, from.as_str());
        for &to in &states {
            assert_eq!(
                has(to.as_str()),
                from.may_become(to),
                "document {} → {}: the console and State::may_become disagree",
                from.as_str(),
                to.as_str()
            );
        }
    }
}

#[test]
fn document_link_types_are_the_document_services() {
    let names: BTreeSet<String> = LinkType::NAMES.iter().map(|n| n.to_string()).collect();
    assert_eq!(js_list("document-compliance.js", "LINK_TYPES"), names);
}

#[test]
fn agent_lifecycle_changes_are_the_agent_services() {
    let table = js_table("agent-actions.js", "OFFERED");
    // The REST verb of each change the table offers (decommission is offered apart: to admins,
    // from every state but decommissioned, which the rule says too).
    let verb = |to: AgentState| match to {
        AgentState::Active => Some("activate"),
        AgentState::Suspended => Some("suspend"),
        AgentState::Offline => Some("offline"),
        AgentState::Deployed | AgentState::Decommissioned => None,
    };
    for &from in AgentState::ALL {
        let has = offered(&table, from.as_str());
        for &to in AgentState::ALL {
            match verb(to) {
                Some(v) => assert_eq!(
                    has(v),
                    from.may_become(to),
                    "agent {} → {}: the console and AgentState::may_become disagree",
                    from.as_str(),
                    to.as_str()
                ),
                None if to == AgentState::Decommissioned => {
                    assert_eq!(from.may_become(to), from != AgentState::Decommissioned, "decommission from {from:?}")
                }
                None => assert!(!from.may_become(to), "no verb offers {from:?} → {to:?}"),
            }
        }
    }
}

#[test]
fn workflow_controls_are_the_workflow_services() {
    let table = js_table("workflow-control.js", "OFFERED");
    let commands = [
        ("pause", WorkflowCommand::Pause { reason: String::new() }),
        ("resume", WorkflowCommand::Resume),
        ("cancel", WorkflowCommand::Cancel { reason: String::new() }),
    ];
    for status in WorkflowStatus::ALL {
        let has = offered(&table, status.as_str());
        let instance = Workflow { status, ..Workflow::default() };
        for (verb, command) in &commands {
            assert_eq!(
                has(verb),
                instance.decide(command, &()).is_ok(),
                "workflow {} {verb}: the console and the service disagree",
                status.as_str()
            );
        }
    }
}

#[test]
fn workflow_step_actions_follow_the_workflow_services_kinds_and_statuses() {
    let people: BTreeSet<String> =
        StepKind::NAMES.iter().filter(|n| StepKind::parse(n).unwrap().is_for_people()).map(|n| n.to_string()).collect();
    assert_eq!(js_list("workflow-steps.js", "FOR_PEOPLE"), people);
    // Every step status: the match makes a new one fail to compile here until it is listed.
    let every_step_status = |s: StepStatus| match s {
        StepStatus::Pending
        | StepStatus::Running
        | StepStatus::Completed
        | StepStatus::Failed
        | StepStatus::Skipped
        | StepStatus::Cancelled
        | StepStatus::WaitingApproval => s,
    };
    let finished: BTreeSet<String> = [
        StepStatus::Pending,
        StepStatus::Running,
        StepStatus::Completed,
        StepStatus::Failed,
        StepStatus::Skipped,
        StepStatus::Cancelled,
        StepStatus::WaitingApproval,
    ]
    .map(every_step_status)
    .into_iter()
    .filter(|s| s.is_finished())
    .map(|s| s.as_str().to_owned())
    .collect();
    assert_eq!(js_list("workflow-steps.js", "STEP_FINISHED"), finished);
    let final_statuses: BTreeSet<String> =
        WorkflowStatus::ALL.into_iter().filter(|s| s.is_final()).map(|s| s.as_str().to_owned()).collect();
    assert_eq!(js_list("workflow-steps.js", "INSTANCE_FINISHED"), final_statuses);
}

/// The parser reads what it should: a table whose line it misread would pass vacuously.
#[test]
fn the_tables_are_read_whole() {
    let review = js_table("document-actions.js", "REVIEW");
    assert_eq!(review["in_review"], ["approved", "draft", "rejected"].map(String::from).into_iter().collect());
    assert_eq!(review.len(), 4);
    assert_eq!(js_table("agent-actions.js", "OFFERED").len(), 4);
    assert_eq!(js_table("workflow-control.js", "OFFERED")["paused"].len(), 2);
}
