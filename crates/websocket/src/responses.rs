//! Following AI agents' responses as they are written: the agent service publishes every piece
//! of a response on core NATS ([`SubjectPrefix::agent_response`]); a follower's subscription is
//! one NATS subscription confined to its tenant by the subject. Pieces are not events: no
//! position, no resume (the recorded `response_completed` event carries the whole content).

use std::sync::Arc;

use cim_core::{AggregateId, SubjectPrefix, TenantId};
use futures::StreamExt;
use prost::Message as _;

use crate::protocol::{Code, Refusal, ServerFrame, response_frame};
use crate::queue::{ClientQueue, Outbound};

/// A follower's forwarding task; dropping it unsubscribes.
#[derive(Debug)]
pub struct Following(tokio::task::AbortHandle);

impl Drop for Following {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Subscribes `id` to the tenant's responses (of `agent`, or of every agent) and replies
/// `following` once NATS has the subscription: every piece published after that reaches the
/// client.
pub async fn follow(
    nats: &async_nats::Client,
    prefix: &SubjectPrefix,
    queue: &Arc<ClientQueue>,
    tenant: TenantId,
    id: &str,
    agent: Option<&str>,
) -> Result<Following, Refusal> {
    let agent: Option<AggregateId> =
        agent.map(str::parse).transpose().map_err(|e| Refusal::new(Code::InvalidFilter, format!("agent_id: {e}")))?;
    let unavailable = |e: &dyn std::fmt::Display| Refusal::new(Code::Unavailable, format!("NATS: {e}"));
    let mut pieces =
        nats.subscribe(prefix.agent_responses(&tenant, agent.as_ref())).await.map_err(|e| unavailable(&e))?;
    nats.flush().await.map_err(|e| unavailable(&e))?;
    let _ = queue.push(Outbound::Control(ServerFrame::Following { id }.to_json()));
    let (queue, id) = (queue.clone(), id.to_owned());
    let forwarding = tokio::spawn(async move {
        while let Some(piece) = pieces.next().await {
            // `<prefix>.agent.response.<tenant>.<agent>.<message>`: the agent is the last but one.
            let mut tokens = piece.subject.rsplit('.');
            let agent = tokens.nth(1).unwrap_or_default().to_owned();
            let Ok(chunk) = cim_proto::agent::ResponseChunk::decode(piece.payload) else { continue };
            if queue.push(Outbound::Control(response_frame(&id, &agent, &chunk))).is_err() {
                break;
            }
        }
    });
    Ok(Following(forwarding.abort_handle()))
}
