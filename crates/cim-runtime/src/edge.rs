//! What every domain service's gRPC edge repeats: who is calling (the metadata the gateway
//! sets from the verified token), and one way to answer a call, so a handler states only its
//! own work: `handle(req, |caller, msg| async move { ... }).await`.

use std::future::Future;
use std::str::FromStr;

use cim_core::{Actor, CorrelationId, ErrorCode, FieldViolation, TenantId};
use tonic::metadata::MetadataMap;

use crate::status::{HasErrorCode, into_status};

mod fields;
mod paging;

pub use fields::{instant, json};
pub use paging::KeysetPage;

/// The caller's tenant (a UUIDv7); every call names one.
pub const TENANT_HEADER: &str = "x-cim-tenant";
/// Who acts, recorded on events (`user:<sub>`, `service:<name>`).
pub const ACTOR_HEADER: &str = "x-cim-actor";
/// Joins this call to a wider piece of work; a command starts its own when absent.
pub const CORRELATION_HEADER: &str = "x-cim-correlation-id";
/// The caller's roles as the gateway verified them (comma-separated, implied roles included),
/// for domain rules that name a role (who may approve a workflow step).
pub const ROLES_HEADER: &str = "x-cim-roles";

/// Who is calling.
#[derive(Debug, Clone, PartialEq)]
pub struct Caller {
    pub tenant: TenantId,
    pub actor: Actor,
    pub correlation: Option<CorrelationId>,
}

/// Metadata the edge cannot accept.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EdgeError {
    #[error("missing or malformed tenant: send metadata {TENANT_HEADER} with a UUIDv7")]
    NoTenant,
    #[error("{CORRELATION_HEADER}: {0}")]
    BadCorrelation(String),
    /// A request field no handler could accept (a page token, a timestamp, a JSON document).
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
}

impl EdgeError {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        EdgeError::Invalid { field: field.into(), reason: reason.into() }
    }
}

impl HasErrorCode for EdgeError {
    fn code(&self) -> ErrorCode {
        match self {
            EdgeError::NoTenant => ErrorCode::Unauthenticated,
            EdgeError::BadCorrelation(_) | EdgeError::Invalid { .. } => ErrorCode::InvalidArgument,
        }
    }

    fn violations(&self) -> Vec<FieldViolation> {
        match self {
            EdgeError::NoTenant => vec![],
            EdgeError::BadCorrelation(why) => vec![FieldViolation::new(CORRELATION_HEADER, why.clone())],
            EdgeError::Invalid { field, reason } => vec![FieldViolation::new(field.clone(), reason.clone())],
        }
    }
}

impl Caller {
    /// The caller named by a call's metadata. A missing or unreadable actor is
    /// `service:anonymous`; a missing tenant is refused.
    pub fn from_metadata(md: &MetadataMap) -> Result<Caller, EdgeError> {
        let text = |name: &str| md.get(name).and_then(|v| v.to_str().ok());
        let tenant = text(TENANT_HEADER).and_then(|s| TenantId::from_str(s).ok()).ok_or(EdgeError::NoTenant)?;
        let actor =
            text(ACTOR_HEADER).and_then(|s| Actor::from_str(s).ok()).unwrap_or_else(|| Actor::service("anonymous"));
        let correlation = text(CORRELATION_HEADER)
            .map(|s| CorrelationId::from_str(s).map_err(|e| EdgeError::BadCorrelation(e.to_string())))
            .transpose()?;
        Ok(Caller { tenant, actor, correlation })
    }

    /// Puts this caller into outgoing metadata (what the gateway does for a verified token).
    pub fn write_to(&self, md: &mut MetadataMap) {
        if let Ok(v) = self.tenant.to_string().parse() {
            md.insert(TENANT_HEADER, v);
        }
        if let Ok(v) = self.actor.as_str().parse() {
            md.insert(ACTOR_HEADER, v);
        }
        if let Some(c) = self.correlation
            && let Ok(v) = c.to_string().parse()
        {
            md.insert(CORRELATION_HEADER, v);
        }
    }
}

/// Answers one call: reads the caller, runs `work` on the caller and the message, and turns its
/// error into the standard rich status.
pub async fn handle<T, R, E, F, Fut>(req: tonic::Request<T>, work: F) -> Result<tonic::Response<R>, tonic::Status>
where
    F: FnOnce(Caller, T) -> Fut,
    Fut: Future<Output = Result<R, E>>,
    E: HasErrorCode + From<EdgeError>,
{
    let caller = Caller::from_metadata(req.metadata()).map_err(|e| into_status(&E::from(e)))?;
    work(caller, req.into_inner()).await.map(tonic::Response::new).map_err(|e| into_status(&e))
}

/// A protobuf timestamp.
pub fn timestamp(t: chrono::DateTime<chrono::Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: t.timestamp(), nanos: t.timestamp_subsec_nanos() as i32 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caller_reads_from_and_writes_to_metadata() {
        let caller = Caller {
            tenant: TenantId::new(),
            actor: "user:ada".parse().unwrap(),
            correlation: Some(cim_core::CommandId::new().as_root_correlation()),
        };
        let mut md = MetadataMap::new();
        caller.write_to(&mut md);
        assert_eq!(Caller::from_metadata(&md), Ok(caller));
        assert_eq!(Caller::from_metadata(&MetadataMap::new()), Err(EdgeError::NoTenant));
        md.insert(CORRELATION_HEADER, "nope".parse().unwrap());
        let err = Caller::from_metadata(&md).unwrap_err();
        assert_eq!(err.code(), ErrorCode::InvalidArgument);
    }
}
