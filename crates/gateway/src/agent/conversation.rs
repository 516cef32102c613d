//! A message to an AI agent, its response streamed back as the agent writes it: one JSON object
//! per line (`application/x-ndjson`), so a client prints each chunk as it arrives and the last
//! line says how the response ended. The route has no deadline (an answer takes what it takes);
//! closing the connection cancels it at the agent.

use axum::body::Body;
use axum::http::header;
use axum::response::Response;
use futures::StreamExt;

use super::*;
use crate::problem::ApiError;

/// The message.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewMessage {
    /// Required, at most 256 KiB.
    pub content: String,
    /// The conversation this message continues (a UUID); absent: a new one.
    #[serde(default)]
    pub conversation_id: Option<String>,
    /// The message's id (a UUID) chosen by the client; a repeat is refused (409).
    #[serde(default)]
    pub message_id: Option<String>,
}

/// One line of the response stream.
#[derive(Debug, Serialize, ToSchema)]
pub struct MessageChunk {
    pub message_id: String,
    pub conversation_id: String,
    /// This chunk's text (empty on the last line).
    pub content: String,
    /// On the last line of a response that ended well.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completed: Option<Completed>,
    /// On the last line of a response that failed (by the agent, or the stream broke: then
    /// `error_type` is `network_error`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed: Option<Failed>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Completed {
    /// stop | length | tool_calls | content_filter
    pub finish_reason: String,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    pub duration_ms: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Failed {
    /// timeout | rate_limit | authentication_error | model_unavailable | content_policy |
    /// invalid_request | network_error | unknown
    pub error_type: String,
    pub error: String,
    /// Whether sending the message again may succeed.
    pub recoverable: bool,
}

fn chunk(c: pb::ResponseChunk) -> MessageChunk {
    use pb::response_chunk::End;
    let (completed, failed) = match c.end {
        Some(End::Completed(done)) => {
            let usage = done.token_usage.unwrap_or_default();
            let completed = Completed {
                finish_reason: done.finish_reason,
                prompt_tokens: usage.prompt_tokens,
                completion_tokens: usage.completion_tokens,
                total_tokens: usage.total_tokens,
                duration_ms: done.duration_ms,
            };
            (Some(completed), None)
        }
        Some(End::Failed(f)) => {
            (None, Some(Failed { error_type: f.error_type, error: f.error, recoverable: f.recoverable }))
        }
        None => (None, None),
    };
    MessageChunk { message_id: c.message_id, conversation_id: c.conversation_id, content: c.content, completed, failed }
}

fn line(chunk: &MessageChunk) -> bytes::Bytes {
    let mut line = serde_json::to_vec(chunk).unwrap_or_default();
    line.push(b'\n');
    line.into()
}

/// Send a message to an agent
///
/// To an AI agent whose worker is connected: the message is recorded, forwarded, and the response streams back as `application/x-ndjson`, one `MessageChunk` per line; the last line carries `completed` or `failed`. Refusals before the stream starts (no such agent, not an AI agent, no worker connected) are problem+json. Needs the writer role.
#[utoipa::path(post, path = "/api/v1/agents/{agent_id}/messages", tag = "agents", request_body = NewMessage,
    params(("agent_id" = String, Path)),
    responses((status = 200, body = MessageChunk, content_type = "application/x-ndjson")))]
pub async fn send_message(
    State(state): State<Arc<AgentState>>,
    Extension(p): Extension<Principal>,
    ApiPath(agent_id): ApiPath<String>,
    ApiJson(body): ApiJson<NewMessage>,
) -> ApiResult<Response> {
    let msg = pb::SendMessageRequest {
        agent_id,
        conversation_id: body.conversation_id.unwrap_or_default(),
        message_id: body.message_id.unwrap_or_default(),
        content: body.content,
    };
    let upstream = &state.conversation;
    let mut client = upstream.client();
    let chunks = client.send_message(upstream.request(&p, msg)).await.map_err(ApiError::from)?.into_inner();
    // A stream that breaks after the first line cannot become a problem+json any more: its
    // last line says so instead, and the body ends.
    let lines = chunks.scan(false, |ended, next| {
        if *ended {
            return std::future::ready(None);
        }
        let chunk = match next {
            Ok(c) => chunk(c),
            Err(status) => {
                *ended = true;
                MessageChunk {
                    message_id: String::new(),
                    conversation_id: String::new(),
                    content: String::new(),
                    completed: None,
                    failed: Some(Failed {
                        error_type: "network_error".into(),
                        error: status.message().to_owned(),
                        recoverable: true,
                    }),
                }
            }
        };
        std::future::ready(Some(Ok::<_, std::convert::Infallible>(line(&chunk))))
    });
    let mut response = Response::new(Body::from_stream(lines));
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-ndjson"));
    Ok(response)
}
