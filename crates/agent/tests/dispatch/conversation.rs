//! Conversations: `SendMessage` streams the worker's chunks back live and records one end, even
//! when the caller goes away or the worker does.

use cim_core::{AggregateId, TenantId};
use cim_proto::agent as pb;
use cim_proto::agent::dispatch_message::Kind as Out;
use cim_proto::agent::response_chunk::End;
use cim_proto::agent::worker_message::Kind as In;
use cim_testkit::domain::req;
use tonic::Code;

use crate::stream::{self, hello};
use crate::support::*;
use crate::worker::Worker;

/// An active ai agent (a model configured), able to chat.
async fn ai_agent(c: &mut Client, tenant: TenantId) -> String {
    let id = deploy(c, tenant, "Chatty", "ai", 4).await;
    let model = pb::ModelConfiguration { provider: "ollama".into(), model: "llama3:8b".into(), parameters: None };
    let assign = pb::AssignModelConfigurationRequest { agent_id: id.clone(), model: Some(model), options: None };
    c.assign_model_configuration(req(tenant, assign)).await.unwrap();
    c.update_capabilities(req(tenant, capabilities(&id, &["llm.chat"]))).await.unwrap();
    c.activate_agent(req(tenant, command(&id))).await.unwrap();
    id
}

fn message(agent: &str, content: &str) -> pb::SendMessageRequest {
    pb::SendMessageRequest { agent_id: agent.into(), content: content.into(), ..Default::default() }
}

/// The agent's recorded events of `kind`, with their payloads.
async fn recorded(svc: &Service, tenant: TenantId, agent: &str, kind: &str) -> Vec<serde_json::Value> {
    let history = svc.running.store.history(tenant, agent.parse().unwrap()).await.unwrap();
    history.into_iter().filter(|e| e.event_type.as_str() == kind).map(|e| e.payload).collect()
}

/// Waits until the agent has recorded an event of `kind`.
async fn until_recorded(svc: &Service, tenant: TenantId, agent: &str, kind: &str) -> Vec<serde_json::Value> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let found = recorded(svc, tenant, agent, kind).await;
        if !found.is_empty() {
            return found;
        }
        assert!(tokio::time::Instant::now() < deadline, "no {kind} recorded");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_message_is_answered_in_live_chunks_and_recorded_once() {
    let svc = Service::start().await;
    let mut c = svc.client().await;
    let tenant = TenantId::new();
    let agent = ai_agent(&mut c, tenant).await;
    let mut worker = Worker::start(&svc, tenant, &agent, &[]).await;

    let mut chunks = c.send_message(req(tenant, message(&agent, "hello there, agent"))).await.unwrap().into_inner();
    let (mut text, mut pieces, mut end, mut ids) = (String::new(), 0, None, std::collections::BTreeSet::new());
    while let Some(chunk) = chunks.message().await.unwrap() {
        ids.insert((chunk.message_id.clone(), chunk.conversation_id.clone()));
        text.push_str(&chunk.content);
        pieces += usize::from(!chunk.content.is_empty());
        end = chunk.end.or(end);
    }
    assert_eq!(text, "You said: hello there, agent");
    assert_eq!(pieces, 5, "one chunk per word, each passed on as it came");
    assert_eq!(ids.len(), 1, "every chunk names the one message and conversation");
    let (message_id, conversation_id) = ids.pop_first().unwrap();
    let Some(End::Completed(done)) = end else { panic!("expected a completed end, got {end:?}") };
    assert_eq!(done.finish_reason, "stop");
    let usage = done.token_usage.unwrap();
    assert_eq!((usage.prompt_tokens, usage.completion_tokens, usage.total_tokens), (3, 5, 8));
    worker.expect(&format!("responded {message_id}")).await;

    let sent = recorded(&svc, tenant, &agent, "message_sent").await;
    assert_eq!(sent.len(), 1);
    assert_eq!(
        (sent[0]["message_id"].as_str(), sent[0]["conversation_id"].as_str()),
        (Some(&*message_id), Some(&*conversation_id))
    );
    let completed = recorded(&svc, tenant, &agent, "response_completed").await;
    assert_eq!(completed.len(), 1, "the chunks are not events; the whole response is one");
    assert_eq!(completed[0]["content"], text.as_str());
    assert_eq!(completed[0]["duration_ms"], done.duration_ms);
    assert!(recorded(&svc, tenant, &agent, "response_failed").await.is_empty());

    // The conversation goes on under its id.
    let next = pb::SendMessageRequest { conversation_id: conversation_id.clone(), ..message(&agent, "and again") };
    let mut chunks = c.send_message(req(tenant, next)).await.unwrap().into_inner();
    while let Some(chunk) = chunks.message().await.unwrap() {
        assert_eq!(chunk.conversation_id, conversation_id);
    }
    assert_eq!(recorded(&svc, tenant, &agent, "response_completed").await.len(), 2);
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_caller_that_goes_away_stops_the_agent_and_the_end_is_still_recorded() {
    let svc = Service::start().await;
    let mut c = svc.client().await;
    let tenant = TenantId::new();
    let agent = ai_agent(&mut c, tenant).await;
    let mut worker = Worker::start(&svc, tenant, &agent, &["--chunk-delay-ms", "100"]).await;
    let long = vec!["word"; 60].join(" ");
    let mut chunks = c.send_message(req(tenant, message(&agent, &long))).await.unwrap().into_inner();
    let first = chunks.message().await.unwrap().unwrap();
    drop(chunks);
    worker.expect(&format!("abandoned {}", first.message_id)).await;
    let failed = until_recorded(&svc, tenant, &agent, "response_failed").await;
    assert_eq!(failed.len(), 1);
    assert_eq!(
        (failed[0]["message_id"].as_str(), failed[0]["error_type"].as_str()),
        (Some(&*first.message_id), Some("unknown"))
    );
    assert!(recorded(&svc, tenant, &agent, "response_completed").await.is_empty());
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_that_disconnects_mid_response_fails_it_and_messages_need_a_connected_ai_agent() {
    let svc = Service::start().await;
    let mut c = svc.client().await;
    let tenant = TenantId::new();
    let agent = ai_agent(&mut c, tenant).await;

    // Nobody to answer: refused before anything is recorded.
    let status = c.send_message(req(tenant, message(&agent, "anyone?"))).await.expect_err("refused");
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(recorded(&svc, tenant, &agent, "message_sent").await.is_empty());
    let unknown = AggregateId::new().to_string();
    for (tenant, id) in [(tenant, unknown.as_str()), (TenantId::new(), agent.as_str())] {
        let status = c.send_message(req(tenant, message(id, "hi"))).await.expect_err("refused");
        assert_eq!(status.code(), Code::NotFound);
    }
    let system = active(&mut c, tenant, &["text.reverse"], 1).await;
    let _plain = stream::open(&mut c, tenant, hello(&system)).await.unwrap();
    let status = c.send_message(req(tenant, message(&system, "hi"))).await.expect_err("refused");
    assert_eq!((status.code(), status.message()), (Code::FailedPrecondition, "only AI agents take messages"));

    let mut s = stream::open(&mut c, tenant, hello(&agent)).await.unwrap();
    for (request, field) in [
        (message(&agent, " "), "content"),
        (pb::SendMessageRequest { message_id: "nope".into(), ..message(&agent, "hi") }, "message_id"),
        (pb::SendMessageRequest { conversation_id: "nope".into(), ..message(&agent, "hi") }, "conversation_id"),
    ] {
        let status = c.send_message(req(tenant, request)).await.expect_err("refused");
        assert_eq!(refusal(&status), (cim_core::ErrorCode::InvalidArgument, field.to_owned()));
    }

    let mut chunks = c.send_message(req(tenant, message(&agent, "tell me a story"))).await.unwrap().into_inner();
    let Out::Message(asked) = s.next().await else { panic!("expected the message") };
    assert_eq!((asked.content.as_str(), asked.model.map(|m| m.model)), ("tell me a story", Some("llama3:8b".into())));
    let piece =
        pb::ResponseChunk { message_id: asked.message_id.clone(), content: "Once".into(), ..Default::default() };
    s.send(In::ResponseChunk(piece)).await;
    assert_eq!(chunks.message().await.unwrap().unwrap().content, "Once");
    // A bad end is refused and leaves the response open.
    let bad = pb::ResponseCompleted {
        message_id: asked.message_id.clone(),
        finish_reason: "bored".into(),
        ..Default::default()
    };
    s.send(In::ResponseCompleted(bad)).await;
    assert_eq!(s.answer().await, ("invalid_argument".to_owned(), "finish_reason".to_owned()));
    s.close();
    let last = chunks.message().await.unwrap().unwrap();
    let Some(End::Failed(failed)) = last.end else { panic!("expected a failed end, got {last:?}") };
    assert_eq!((failed.error_type.as_str(), failed.recoverable), ("network_error", true));
    assert!(chunks.message().await.unwrap().is_none());
    let recorded = recorded(&svc, tenant, &agent, "response_failed").await;
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0]["error_type"], "network_error");
    svc.stop().await;
}

/// Every piece published for `tenant`'s responses (of any agent), decoded, until an end.
async fn follow(prefix: &str, tenant: TenantId) -> async_nats::Subscriber {
    let nats = async_nats::connect(cim_testkit::domain::nats_url()).await.unwrap();
    let prefix: cim_core::SubjectPrefix = prefix.parse().unwrap();
    let followed = nats.subscribe(prefix.agent_responses(&tenant, None)).await.unwrap();
    nats.flush().await.unwrap();
    followed
}

async fn next_piece(followed: &mut async_nats::Subscriber) -> pb::ResponseChunk {
    use futures::StreamExt;
    use prost::Message;
    let piece = tokio::time::timeout(std::time::Duration::from_secs(20), followed.next()).await.expect("a piece");
    pb::ResponseChunk::decode(piece.unwrap().payload).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_message_through_a_replica_without_the_worker_is_answered_by_the_one_with_it() {
    let svc = Service::start().await;
    let other = svc.replica(crate::support::fast()).await;
    let (mut one, mut two) =
        (svc.client().await, cim_proto::agent::agent_service_client::AgentServiceClient::new(other.channel().await));
    let tenant = TenantId::new();
    let agent = ai_agent(&mut one, tenant).await;

    // No worker anywhere: refused at once from either replica, nothing recorded.
    let started = tokio::time::Instant::now();
    let status = two.send_message(req(tenant, message(&agent, "anyone?"))).await.expect_err("refused");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(started.elapsed() < std::time::Duration::from_secs(5), "no responder is known at once");
    assert!(recorded(&svc, tenant, &agent, "message_sent").await.is_empty());

    let mut worker = Worker::start_at(&svc.running, tenant, &agent, &[]).await;
    let mut followed = follow(&svc.running.prefix, tenant).await;
    let mut stranger = follow(&svc.running.prefix, TenantId::new()).await;

    let mut chunks = two.send_message(req(tenant, message(&agent, "hello from afar"))).await.unwrap().into_inner();
    let (mut text, mut end) = (String::new(), None);
    while let Some(chunk) = chunks.message().await.unwrap() {
        text.push_str(&chunk.content);
        end = chunk.end.or(end);
    }
    assert_eq!(text, "You said: hello from afar");
    let Some(End::Completed(done)) = end else { panic!("expected a completed end, got {end:?}") };
    assert_eq!(done.finish_reason, "stop");
    let completed = recorded(&svc, tenant, &agent, "response_completed").await;
    assert_eq!(completed.len(), 1, "recorded once, by the replica holding the worker");
    assert_eq!(completed[0]["content"], text.as_str());

    // The same pieces, in order, reached a follower of the tenant's responses over NATS.
    let mut seen = String::new();
    loop {
        let piece = next_piece(&mut followed).await;
        seen.push_str(&piece.content);
        if piece.end.is_some() {
            assert!(matches!(piece.end, Some(End::Completed(_))));
            break;
        }
    }
    assert_eq!(seen, text);
    use futures::StreamExt;
    let leaked = tokio::time::timeout(std::time::Duration::from_millis(300), stranger.next()).await;
    assert!(leaked.is_err(), "another tenant's follower heard {leaked:?}");

    // A caller on the other replica that goes away still stops the worker.
    worker.expect(&format!("responded {}", done.message_id)).await;
    let slow_agent = ai_agent(&mut one, tenant).await;
    let mut slow = Worker::start_at(&svc.running, tenant, &slow_agent, &["--chunk-delay-ms", "100"]).await;
    let long = vec!["word"; 60].join(" ");
    let mut chunks = two.send_message(req(tenant, message(&slow_agent, &long))).await.unwrap().into_inner();
    let first = chunks.message().await.unwrap().unwrap();
    drop(chunks);
    slow.expect(&format!("abandoned {}", first.message_id)).await;
    let failed = until_recorded(&svc, tenant, &slow_agent, "response_failed").await;
    assert_eq!(failed[0]["message_id"].as_str(), Some(&*first.message_id));
    other.stop_replica().await;
    svc.stop().await;
}
