//! Calling another CIM service's unary method by name, with the request as proto JSON: what an
//! `integration` step does, and how `agent_task` steps submit and cancel tasks. The methods are
//! found in the descriptor set every service serves for reflection (`cim_proto`), so a
//! definition naming a method that does not exist is refused when it is created, and a request
//! is transcoded by the same rules grpcurl uses (prost-reflect).
//!
//! Commands are made idempotent: a request with an `options` field (`cim.common.v1.CommandOptions`)
//! gets the caller's key, so calling again after a crash gets the first answer and changes
//! nothing.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use bytes::Buf;
use cim_core::Domain;
use cim_runtime::config::WorkflowSettings;
use cim_runtime::edge::Caller;
use prost::Message;
use prost_reflect::ReflectMessage;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor, MethodDescriptor, SerializeOptions};
use serde_json::{Map, Value};
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;

/// The services a step may call, by the name a definition uses.
const SERVICES: &[(&str, Domain, &str)] = &[
    ("graph", Domain::Graph, "cim.graph.v1.GraphService"),
    ("document", Domain::Document, "cim.document.v1.DocumentService"),
    ("agent", Domain::Agent, "cim.agent.v1.AgentService"),
    ("workflow", Domain::Workflow, "cim.workflow.v1.WorkflowService"),
];

static POOL: LazyLock<DescriptorPool> = LazyLock::new(|| {
    DescriptorPool::decode(cim_proto::FILE_DESCRIPTOR_SET).expect("the descriptor set built with cim-proto decodes")
});

/// The unary method `service`.`method`, or why a definition may not call it.
pub fn method(service: &str, method: &str) -> Result<MethodDescriptor, String> {
    let names = || SERVICES.iter().map(|s| s.0).collect::<Vec<_>>().join(", ");
    let (_, _, full) = SERVICES
        .iter()
        .find(|(name, ..)| *name == service)
        .ok_or_else(|| format!("unknown service {service:?}; one of {}", names()))?;
    let descriptor = POOL.get_service_by_name(full).ok_or_else(|| format!("{full} is not in the descriptor set"))?;
    let found = descriptor.methods().find(|m| m.name() == method).ok_or_else(|| {
        let known: Vec<String> = descriptor.methods().filter(unary).map(|m| m.name().to_owned()).collect();
        format!("{service} has no method {method:?}; one of {}", known.join(", "))
    })?;
    if !unary(&found) {
        return Err(format!("{service}.{method} streams; a step calls unary methods only"));
    }
    Ok(found)
}

fn unary(m: &MethodDescriptor) -> bool {
    !m.is_client_streaming() && !m.is_server_streaming()
}

/// Why a call did not answer: `transient` failures are tried again with the same key without
/// using up an attempt (the service was unreachable or busy); the others fail the attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallError {
    pub transient: bool,
    pub message: String,
}

impl CallError {
    fn refused(message: impl Into<String>) -> Self {
        Self { transient: false, message: message.into() }
    }

    /// Retryable codes (unavailable, deadline, rate limited, version conflict) leave the
    /// attempt running; the rest (a bad request, a rule refused) fail it.
    fn from_status(service: &str, method: &str, s: &Status) -> Self {
        let (code, violations) = cim_proto::status::read_status(s);
        let mut message = format!("{service}.{method}: {}: {}", code.as_str(), s.message());
        for v in violations {
            message.push_str(&format!("; {}: {}", v.field, v.description));
        }
        Self { transient: code.is_retryable(), message }
    }
}

/// A channel to each replica of each service a step may call, taken in turn.
#[derive(Debug, Clone)]
pub struct Calls {
    channels: Vec<(Domain, Arc<[Channel]>)>,
    turn: Arc<AtomicUsize>,
    timeout: Duration,
    /// Signs the caller metadata when the services check it (`CIM_SERVICE_TOKEN_SECRET`).
    identity: Option<cim_runtime::identity::CallerKey>,
}

impl Calls {
    /// Connects lazily: the workflow service starts before the services it calls; `https://`
    /// URLs over `tls`.
    pub fn connect(
        settings: &WorkflowSettings,
        identity: Option<cim_runtime::identity::CallerKey>,
        tls: Option<&cim_runtime::tls::ClientTls>,
    ) -> Result<Self, String> {
        let mut channels = Vec::new();
        for (domain, urls) in [
            (Domain::Graph, &settings.graph_urls),
            (Domain::Document, &settings.document_urls),
            (Domain::Agent, &settings.agent_urls),
            (Domain::Workflow, &settings.workflow_urls),
        ] {
            let replicas = urls
                .iter()
                .map(|u| {
                    cim_runtime::tls::grpc_channel(u, tls, |e| {
                        e.connect_timeout(Duration::from_secs(5)).tcp_nodelay(true)
                    })
                    .map_err(|e| format!("{domain} URL {u}: {e}"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            channels.push((domain, replicas.into()));
        }
        Ok(Self { channels, turn: Arc::default(), timeout: settings.call_timeout, identity })
    }

    /// Calls `service`.`method` with `request` (proto JSON) as `caller`, with `key` as the
    /// idempotency key of a command; the answer as proto JSON with the proto's field names.
    pub async fn call(
        &self,
        caller: &Caller,
        service: &str,
        method_name: &str,
        request: &Map<String, Value>,
        key: &str,
    ) -> Result<Map<String, Value>, CallError> {
        let method = method(service, method_name).map_err(CallError::refused)?;
        let mut message = DynamicMessage::deserialize(method.input(), Value::Object(request.clone()))
            .map_err(|e| CallError::refused(format!("{service}.{method_name}: the request does not fit: {e}")))?;
        with_key(&mut message, key);
        let domain = SERVICES.iter().find(|s| s.0 == service).map(|s| s.1).unwrap_or(Domain::Workflow);
        let replicas = self.channels.iter().find(|(d, r)| *d == domain && !r.is_empty()).map(|(_, r)| r);
        let replicas = replicas.ok_or_else(|| CallError::refused(format!("no {service} service configured")))?;
        let channel = replicas[self.turn.fetch_add(1, Ordering::Relaxed) % replicas.len()].clone();
        let mut request = tonic::Request::new(message);
        request.set_timeout(self.timeout);
        cim_runtime::telemetry::inject_grpc(request.metadata_mut());
        caller.write_to(request.metadata_mut());
        if let Some(key) = &self.identity {
            key.sign_metadata(request.metadata_mut());
        }
        let path = format!("/{}/{}", method.parent_service().full_name(), method.name());
        let path = path.parse().map_err(|e| CallError::refused(format!("{path}: {e}")))?;
        let mut grpc = tonic::client::Grpc::new(channel);
        grpc.ready().await.map_err(|e| CallError { transient: true, message: format!("{service}: {e}") })?;
        let codec = DynamicCodec(method.output());
        let answer = grpc
            .unary(request, path, codec)
            .await
            .map_err(|s| CallError::from_status(service, method_name, &s))?
            .into_inner();
        let options = SerializeOptions::new().use_proto_field_name(true);
        match answer.serialize_with_options(serde_json::value::Serializer, &options) {
            Ok(Value::Object(map)) => Ok(map),
            Ok(other) => Ok(Map::from_iter([("value".to_owned(), other)])),
            Err(e) => Err(CallError::refused(format!("{service}.{method_name}: the answer: {e}"))),
        }
    }
}

/// Sets `options.idempotency_key` on a command's request (one with CIM's command options).
fn with_key(message: &mut DynamicMessage, key: &str) {
    let Some(field) = message.descriptor().get_field_by_name("options") else { return };
    let Some(options) = field.kind().as_message().cloned() else { return };
    if options.full_name() != "cim.common.v1.CommandOptions" {
        return;
    }
    let mut value = match message.get_field(&field).as_message() {
        Some(m) => m.clone(),
        None => DynamicMessage::new(options),
    };
    value.set_field_by_name("idempotency_key", prost_reflect::Value::String(key.to_owned()));
    message.set_field(&field, prost_reflect::Value::Message(value));
}

/// prost's codec for messages known only at run time.
#[derive(Debug, Clone)]
struct DynamicCodec(MessageDescriptor);

impl Codec for DynamicCodec {
    type Encode = DynamicMessage;
    type Decode = DynamicMessage;
    type Encoder = DynamicEncoder;
    type Decoder = DynamicDecoder;

    fn encoder(&mut self) -> DynamicEncoder {
        DynamicEncoder
    }

    fn decoder(&mut self) -> DynamicDecoder {
        DynamicDecoder(self.0.clone())
    }
}

#[derive(Debug)]
struct DynamicEncoder;

impl Encoder for DynamicEncoder {
    type Item = DynamicMessage;
    type Error = Status;

    fn encode(&mut self, item: DynamicMessage, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.reserve(item.encoded_len());
        item.encode(dst).map_err(|e| Status::internal(format!("encoding the request: {e}")))
    }
}

#[derive(Debug)]
struct DynamicDecoder(MessageDescriptor);

impl Decoder for DynamicDecoder {
    type Item = DynamicMessage;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<DynamicMessage>, Status> {
        let bytes = src.copy_to_bytes(src.remaining());
        DynamicMessage::decode(self.0.clone(), bytes)
            .map(Some)
            .map_err(|e| Status::internal(format!("decoding the answer: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_are_found_by_service_and_name_and_streams_are_refused() {
        assert!(method("graph", "AddNode").is_ok());
        assert!(method("agent", "SubmitTask").is_ok());
        assert!(method("graph", "AddNodes").unwrap_err().contains("AddNode"));
        assert!(method("billing", "Charge").unwrap_err().contains("graph, document, agent, workflow"));
        assert!(method("document", "UploadContent").unwrap_err().contains("streams"));
    }

    #[test]
    fn commands_get_the_key_and_queries_are_left_alone() {
        let add = method("graph", "AddNode").unwrap();
        let mut m = DynamicMessage::deserialize(add.input(), serde_json::json!({"graph_id": "g"})).unwrap();
        with_key(&mut m, "wf:1:s:1");
        let json = serde_json::to_value(&m).unwrap();
        assert_eq!(json["options"]["idempotencyKey"], "wf:1:s:1", "{json}");
        let get = method("graph", "GetGraph").unwrap();
        let mut q = DynamicMessage::deserialize(get.input(), serde_json::json!({"graph_id": "g"})).unwrap();
        with_key(&mut q, "k");
        assert!(serde_json::to_value(&q).unwrap().get("options").is_none());
    }
}
