//! Checks a call's gRPC framing before tonic reads it. Every CIM method takes exactly one request
//! message; tonic answers `INTERNAL` to a malformed frame (a compressed flag without
//! `grpc-encoding`, a length prefix that disagrees with the data, an undefined flag byte, no
//! message at all) and accepts a second message after the first without a word. Those are the
//! client's faults: this layer answers them `INVALID_ARGUMENT` (`OUT_OF_RANGE`, payload_too_large, past the
//! size limit, `UNIMPLEMENTED` for a compression we do not offer), with the rich error details.
//!
//! Reflection is bidirectional streaming and passes through untouched, as do the client-streaming
//! methods a service names (`GrpcServer::streaming_method`): their messages are decoded by the
//! strict codec one by one.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use cim_core::ErrorCode;
use http::{Request, Response};
use http_body::Body as HttpBody;
use http_body_util::BodyExt;
use tower::{Layer, Service};

/// The largest request message a CIM service takes (tonic's default decoding limit).
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// Streaming methods this layer leaves alone.
const STREAMING_PREFIXES: [&str; 1] = ["/grpc.reflection."];

/// The 5-byte prefix of every gRPC message: flag byte and big-endian length.
const PREFIX_BYTES: usize = 5;

#[derive(Debug, Clone, Default)]
pub struct UnaryFramesLayer {
    /// Full method paths (`/cim.document.v1.DocumentService/UploadContent`) left alone.
    pub streaming: std::sync::Arc<[&'static str]>,
}

impl<S> Layer<S> for UnaryFramesLayer {
    type Service = UnaryFrames<S>;

    fn layer(&self, inner: S) -> Self::Service {
        UnaryFrames { inner, streaming: self.streaming.clone() }
    }
}

#[derive(Debug, Clone)]
pub struct UnaryFrames<S> {
    inner: S,
    streaming: std::sync::Arc<[&'static str]>,
}

impl<S, B> Service<Request<B>> for UnaryFrames<S>
where
    S: Service<Request<tonic::body::Body>, Response = Response<tonic::body::Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // The ready service answers this call; a fresh clone waits for the next.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let path = req.uri().path();
        if STREAMING_PREFIXES.iter().any(|p| path.starts_with(p)) || self.streaming.contains(&path) {
            return Box::pin(inner.call(req.map(tonic::body::Body::new)));
        }
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            match read_one_message(&parts.headers, body).await {
                Ok(bytes) => {
                    inner
                        .call(Request::from_parts(parts, tonic::body::Body::new(http_body_util::Full::new(bytes))))
                        .await
                }
                Err(status) => Ok(status.into_http()),
            }
        })
    }
}

/// The request body, if it is exactly one well-formed, uncompressed message.
async fn read_one_message<B>(headers: &http::HeaderMap, body: B) -> Result<Bytes, tonic::Status>
where
    B: HttpBody<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let invalid = |message: String| cim_proto::status::error_status(ErrorCode::InvalidArgument, message, &[]);
    let encoding = headers.get("grpc-encoding").map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    if let Some(encoding) = encoding.as_deref().filter(|e| *e != "identity") {
        let mut status = cim_proto::status::error_status(
            ErrorCode::Unimplemented,
            format!("grpc-encoding {encoding:?} is not supported: send messages uncompressed"),
            &[],
        );
        status.metadata_mut().insert("grpc-accept-encoding", tonic::metadata::MetadataValue::from_static("identity"));
        return Err(status);
    }
    let limited = http_body_util::Limited::new(body, PREFIX_BYTES + MAX_MESSAGE_BYTES);
    let bytes = match limited.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return Err(cim_proto::status::error_status(
                ErrorCode::PayloadTooLarge,
                format!("the request is larger than {MAX_MESSAGE_BYTES} bytes"),
                &[],
            ));
        }
        Err(e) => return Err(cim_proto::status::error_status(ErrorCode::Cancelled, format!("request body: {e}"), &[])),
    };
    check_frame(&bytes).map_err(invalid)?;
    Ok(bytes)
}

/// Why `bytes` is not exactly one uncompressed gRPC message, if it is not.
fn check_frame(bytes: &[u8]) -> Result<(), String> {
    if bytes.is_empty() {
        return Err("the request carries no message: every CIM method takes exactly one".to_owned());
    }
    if bytes.len() < PREFIX_BYTES {
        return Err(format!("the request ends inside a message's 5-byte prefix ({} bytes)", bytes.len()));
    }
    match bytes[0] {
        0 => {}
        1 => return Err("the message is flagged compressed but the call names no grpc-encoding".to_owned()),
        flag => return Err(format!("undefined message flag byte 0x{flag:02x} (0 or 1 allowed)")),
    }
    let length = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
    let present = bytes.len() - PREFIX_BYTES;
    if length > present {
        return Err(format!("the length prefix says {length} bytes but {present} follow"));
    }
    if length < present {
        return Err("more data follows the first message: every CIM method takes exactly one".to_owned());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(flag: u8, length: u32, data: &[u8]) -> Vec<u8> {
        let mut out = vec![flag];
        out.extend_from_slice(&length.to_be_bytes());
        out.extend_from_slice(data);
        out
    }

    #[test]
    fn one_plain_message_passes_and_every_malformation_is_named() {
        assert_eq!(check_frame(&frame(0, 3, b"abc")), Ok(()));
        assert_eq!(check_frame(&frame(0, 0, b"")), Ok(()));
        let cases: [(Vec<u8>, &str); 6] = [
            (vec![], "no message"),
            (vec![0, 0, 0], "5-byte prefix"),
            (frame(1, 3, b"abc"), "flagged compressed"),
            (frame(0x80, 3, b"abc"), "0x80"),
            (frame(0, 9, b"abc"), "says 9 bytes but 3 follow"),
            ([frame(0, 1, b"a"), frame(0, 1, b"b")].concat(), "more data follows"),
        ];
        for (bytes, why) in cases {
            let err = check_frame(&bytes).unwrap_err();
            assert!(err.contains(why), "{bytes:?}: {err}");
        }
    }
}
