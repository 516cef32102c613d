//! The agent's rules, decided and applied without any I/O.

use cim_aggregate::Aggregate;
use cim_core::ErrorCode;
use cim_runtime::status::HasErrorCode;

use super::*;
use crate::names::parse_names;

/// Decides and applies through the stored form of each event (as a reload would see it).
fn run(agent: &mut Agent, command: AgentCommand) -> Result<Vec<AgentEvent>, AgentError> {
    let events = agent.decide(&command, &())?;
    for event in &events {
        let stored = crate::through_the_store(event, AGGREGATE_TYPE);
        assert_eq!(&stored, event);
        agent.apply(&stored);
    }
    Ok(events)
}

fn deployed(agent_type: AgentType) -> Agent {
    let mut agent = Agent::default();
    let deploy =
        AgentCommand::Deploy { owner: "user:ada".into(), name: "Reviewer".into(), agent_type, max_concurrent_tasks: 2 };
    run(&mut agent, deploy).unwrap();
    agent
}

fn names(list: &[&str]) -> Names {
    parse_names("names", &list.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>()).unwrap()
}

fn model() -> ModelConfiguration {
    ModelConfiguration { provider: "ollama".parse().unwrap(), model: "llama3:8b".into(), parameters: Map::new() }
}

fn suspend() -> AgentCommand {
    AgentCommand::Suspend { reason: "maintenance".into() }
}

fn offline() -> AgentCommand {
    AgentCommand::GoOffline { reason: "stream closed".into() }
}

fn decommission() -> AgentCommand {
    AgentCommand::Decommission { reason: String::new() }
}

/// Brings an agent to `state` by the shortest legal path.
fn agent_in(state: AgentState) -> Agent {
    let mut agent = deployed(AgentType::System);
    let path: &[AgentCommand] = match state {
        AgentState::Deployed => &[],
        AgentState::Active => &[AgentCommand::Activate],
        AgentState::Suspended => &[AgentCommand::Activate, suspend()],
        AgentState::Offline => &[AgentCommand::Activate, offline()],
        AgentState::Decommissioned => &[decommission()],
    };
    for step in path.iter().cloned() {
        run(&mut agent, step).unwrap();
    }
    assert_eq!(agent.state, state);
    agent
}

#[test]
fn the_lifecycle_table() {
    use AgentState::*;
    // (from, command, the state after, or None when refused)
    let table: [(AgentState, AgentCommand, Option<AgentState>); 20] = [
        (Deployed, AgentCommand::Activate, Some(Active)),
        (Deployed, suspend(), None),
        (Deployed, offline(), None),
        (Deployed, decommission(), Some(Decommissioned)),
        (Active, AgentCommand::Activate, None),
        (Active, suspend(), Some(Suspended)),
        (Active, offline(), Some(Offline)),
        (Active, decommission(), Some(Decommissioned)),
        (Suspended, AgentCommand::Activate, Some(Active)),
        (Suspended, suspend(), None),
        (Suspended, offline(), None),
        (Suspended, decommission(), Some(Decommissioned)),
        (Offline, AgentCommand::Activate, Some(Active)),
        (Offline, suspend(), Some(Suspended)),
        (Offline, offline(), None),
        (Offline, decommission(), Some(Decommissioned)),
        (Decommissioned, AgentCommand::Activate, None),
        (Decommissioned, suspend(), None),
        (Decommissioned, offline(), None),
        (Decommissioned, decommission(), None),
    ];
    for (from, command, want) in table {
        let mut agent = agent_in(from);
        let got = run(&mut agent, command.clone());
        match want {
            Some(to) => {
                let events = got.unwrap_or_else(|e| panic!("{from:?} {command:?}: {e}"));
                assert!(matches!(&events[0], AgentEvent::Activated(t) | AgentEvent::Suspended(t)
                    | AgentEvent::WentOffline(t) | AgentEvent::Decommissioned(t) if t.previous_state == from));
                assert_eq!(agent.state, to, "{from:?} {command:?}");
            }
            None => {
                let e = got.unwrap_err();
                assert_eq!(e.code(), ErrorCode::FailedPrecondition, "{from:?} {command:?}: {e}");
                assert_eq!(agent.state, from);
            }
        }
    }
    // The table and may_become agree, and the message names both states.
    assert_eq!(
        run(&mut agent_in(Active), AgentCommand::Activate).unwrap_err().to_string(),
        "the agent is active; it cannot become active"
    );
}

#[test]
fn nothing_applies_to_a_decommissioned_agent() {
    let mut agent = deployed(AgentType::Ai);
    run(&mut agent, decommission()).unwrap();
    let every = [
        AgentCommand::AssignModel(model()),
        AgentCommand::ConfigurePrompt("hi".into()),
        AgentCommand::UpdateCapabilities(names(&["ocr"])),
        AgentCommand::GrantPermissions(names(&["documents.read"])),
        AgentCommand::RevokePermissions(names(&["documents.read"])),
        AgentCommand::EnableTools(names(&["web_search"])),
        AgentCommand::DisableTools(names(&["web_search"])),
        AgentCommand::SetConcurrencyLimit(3),
        AgentCommand::Activate,
        AgentCommand::Converse(Conversation::Send {
            message_id: Uuid::now_v7(),
            conversation_id: Uuid::now_v7(),
            content: "hello".into(),
        }),
    ];
    for command in every {
        assert_eq!(run(&mut agent, command.clone()).unwrap_err(), AgentError::Decommissioned, "{command:?}");
    }
}

#[test]
fn an_ai_agent_activates_only_with_a_model() {
    let mut ai = deployed(AgentType::Ai);
    assert_eq!(run(&mut ai, AgentCommand::Activate).unwrap_err(), AgentError::NoModel);
    run(&mut ai, AgentCommand::AssignModel(model())).unwrap();
    assert!(matches!(run(&mut ai, AgentCommand::AssignModel(model())).unwrap_err(), AgentError::Unchanged(_)));
    run(&mut ai, AgentCommand::ConfigurePrompt("You review code.\nBe brief.".into())).unwrap();
    run(&mut ai, AgentCommand::Activate).unwrap();
    assert_eq!(ai.state, AgentState::Active);
    // Models and prompts are for AI agents only; other kinds activate without them.
    let mut human = deployed(AgentType::Human);
    assert_eq!(
        run(&mut human, AgentCommand::AssignModel(model())).unwrap_err(),
        AgentError::NotAi("a model configuration")
    );
    assert_eq!(
        run(&mut human, AgentCommand::ConfigurePrompt("x".into())).unwrap_err(),
        AgentError::NotAi("a system prompt")
    );
    run(&mut human, AgentCommand::Activate).unwrap();
}

#[test]
fn capabilities_permissions_and_tools_are_sets() {
    let mut agent = deployed(AgentType::System);
    run(&mut agent, AgentCommand::UpdateCapabilities(names(&["ocr", "translate"]))).unwrap();
    assert!(matches!(
        run(&mut agent, AgentCommand::UpdateCapabilities(names(&["translate", "ocr"]))).unwrap_err(),
        AgentError::Unchanged(_)
    ));
    // A grant records only what it added; one adding nothing is refused.
    run(&mut agent, AgentCommand::GrantPermissions(names(&["documents.read"]))).unwrap();
    let events = run(&mut agent, AgentCommand::GrantPermissions(names(&["documents.read", "graphs.write"]))).unwrap();
    assert_eq!(events, [AgentEvent::PermissionsGranted(PermissionsChanged { permissions: names(&["graphs.write"]) })]);
    assert!(run(&mut agent, AgentCommand::GrantPermissions(names(&["graphs.write"]))).is_err());
    run(&mut agent, AgentCommand::RevokePermissions(names(&["documents.read", "never.held"]))).unwrap();
    assert_eq!(agent.permissions, names(&["graphs.write"]));
    run(&mut agent, AgentCommand::EnableTools(names(&["web_search", "calculator"]))).unwrap();
    run(&mut agent, AgentCommand::DisableTools(names(&["calculator"]))).unwrap();
    assert_eq!(agent.tools, names(&["web_search"]));
    assert!(matches!(
        run(&mut agent, AgentCommand::DisableTools(names(&["calculator"]))).unwrap_err(),
        AgentError::Unchanged(_)
    ));
    // Bounded sets.
    let many: Vec<String> = (0..=CAPABILITIES_MAX).map(|i| format!("c{i}")).collect();
    let too_many = parse_names("capabilities", &many).unwrap();
    match run(&mut agent, AgentCommand::UpdateCapabilities(too_many)).unwrap_err() {
        AgentError::Invalid { field, .. } => assert_eq!(field, "capabilities"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_concurrency_limit_is_set_at_deploy_and_changed_later() {
    let mut agent = deployed(AgentType::External);
    assert_eq!(agent.max_concurrent_tasks, 2);
    run(&mut agent, AgentCommand::SetConcurrencyLimit(5)).unwrap();
    assert_eq!(agent.max_concurrent_tasks, 5);
    for bad in [0, CONCURRENCY_MAX + 1] {
        assert!(matches!(
            run(&mut agent, AgentCommand::SetConcurrencyLimit(bad)).unwrap_err(),
            AgentError::Invalid { field, .. } if field == "max_concurrent_tasks"
        ));
    }
}

#[test]
fn bad_deployments_name_their_field() {
    let deploy = |owner: &str, name: &str, limit| AgentCommand::Deploy {
        owner: owner.into(),
        name: name.into(),
        agent_type: AgentType::Human,
        max_concurrent_tasks: limit,
    };
    let cases = [
        (deploy("user:ada", " ", 1), "name"),
        (deploy("user:ada", "a\u{0}b", 1), "name"),
        (deploy("user:ada", "line\nbreak", 1), "name"),
        (deploy("user:ada", "a\u{202e}b", 1), "name"),
        (deploy("", "Reviewer", 1), "owner"),
        (deploy("user:ada", &"x".repeat(201), 1), "name"),
        (deploy("user:ada", "Reviewer", 0), "max_concurrent_tasks"),
    ];
    for (command, want) in cases {
        match Agent::default().decide(&command, &()) {
            Err(e @ AgentError::Invalid { .. }) => {
                assert_eq!(e.violations()[0].field, want, "{command:?}");
                assert_eq!(e.code(), ErrorCode::InvalidArgument);
            }
            other => panic!("{command:?}: {other:?}"),
        }
    }
    let mut ai = deployed(AgentType::Ai);
    let mut nul = model();
    nul.parameters.insert("stop".into(), "\u{0}".into());
    assert!(matches!(
        run(&mut ai, AgentCommand::AssignModel(nul)).unwrap_err(),
        AgentError::Invalid { field, .. } if field == "model.parameters"
    ));
}

#[test]
fn a_response_completes_once() {
    let mut ai = deployed(AgentType::Ai);
    let (message_id, conversation_id) = (Uuid::now_v7(), Uuid::now_v7());
    let send = AgentCommand::Converse(Conversation::Send { message_id, conversation_id, content: "Summarize".into() });
    assert_eq!(run(&mut ai, send.clone()).unwrap_err(), AgentError::NotActive("deployed"));
    run(&mut ai, AgentCommand::AssignModel(model())).unwrap();
    run(&mut ai, AgentCommand::Activate).unwrap();
    run(&mut ai, send.clone()).unwrap();
    assert_eq!(run(&mut ai, send).unwrap_err().code(), ErrorCode::AlreadyExists);
    let usage = TokenUsage { prompt_tokens: 12, completion_tokens: 30, total_tokens: 42 };
    let complete = AgentCommand::Converse(Conversation::Complete {
        message_id,
        content: "A summary.".into(),
        token_usage: usage,
        finish_reason: FinishReason::Stop,
        duration_ms: 850,
    });
    let events = run(&mut ai, complete.clone()).unwrap();
    assert!(matches!(&events[0], AgentEvent::ResponseCompleted(e) if e.conversation_id == conversation_id));
    assert_eq!(run(&mut ai, complete).unwrap_err(), AgentError::NoPendingMessage(message_id));
    let fail = AgentCommand::Converse(Conversation::Fail {
        message_id,
        error_type: ResponseErrorType::Timeout,
        error: "no answer in 30 s".into(),
        recoverable: true,
    });
    assert_eq!(run(&mut ai, fail).unwrap_err().code(), ErrorCode::FailedPrecondition);
    // A failed response closes its message too; token counts must add up.
    let second = Uuid::now_v7();
    let send =
        AgentCommand::Converse(Conversation::Send { message_id: second, conversation_id, content: "Again".into() });
    run(&mut ai, send).unwrap();
    let wrong = AgentCommand::Converse(Conversation::Complete {
        message_id: second,
        content: String::new(),
        token_usage: TokenUsage { prompt_tokens: 1, completion_tokens: 1, total_tokens: 3 },
        finish_reason: FinishReason::Length,
        duration_ms: 1,
    });
    assert!(matches!(run(&mut ai, wrong).unwrap_err(), AgentError::Invalid { .. }));
    let fail = AgentCommand::Converse(Conversation::Fail {
        message_id: second,
        error_type: ResponseErrorType::RateLimit,
        error: String::new(),
        recoverable: true,
    });
    run(&mut ai, fail).unwrap();
    assert!(ai.pending.is_empty());
    // Messages go to AI agents only.
    let mut human = agent_in(AgentState::Active);
    let send = AgentCommand::Converse(Conversation::Send { message_id, conversation_id, content: "hi".into() });
    assert_eq!(run(&mut human, send).unwrap_err(), AgentError::NotAi("messages"));
}

#[test]
fn names_are_one_list() {
    for t in AgentType::ALL {
        assert_eq!(AgentType::parse(t.as_str()), Some(*t));
        assert_eq!(serde_json::to_value(t).unwrap(), t.as_str());
    }
    for s in AgentState::ALL {
        assert_eq!(AgentState::parse(s.as_str()), Some(*s));
        assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
    }
    for e in ResponseErrorType::ALL {
        assert_eq!(serde_json::to_value(e).unwrap(), e.as_str());
    }
    for f in FinishReason::ALL {
        assert_eq!(serde_json::to_value(f).unwrap(), f.as_str());
    }
    assert_eq!(ResponseErrorType::NAMES.len(), 8);
    assert_eq!(AgentEvent::TYPES.len(), 16);
}
