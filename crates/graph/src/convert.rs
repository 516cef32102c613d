//! Proto <-> domain conversion at the service edge: parse, don't validate.

use std::str::FromStr;

use cim_core::events::graph::{EdgeId, NodeId, Properties};
use cim_core::{AggregateId, TypeName};

use crate::error::ServiceError;

pub fn aggregate_id(field: &str, s: &str) -> Result<AggregateId, ServiceError> {
    AggregateId::from_str(s).map_err(|e| ServiceError::invalid(field, e.to_string()))
}

pub fn node_id(field: &str, s: &str) -> Result<NodeId, ServiceError> {
    NodeId::from_str(s).map_err(|e| ServiceError::invalid(field, e.to_string()))
}

pub fn edge_id(field: &str, s: &str) -> Result<EdgeId, ServiceError> {
    EdgeId::from_str(s).map_err(|e| ServiceError::invalid(field, e.to_string()))
}

pub fn optional_node_id(field: &str, s: &str) -> Result<Option<NodeId>, ServiceError> {
    if s.is_empty() { Ok(None) } else { node_id(field, s).map(Some) }
}

pub fn optional_edge_id(field: &str, s: &str) -> Result<Option<EdgeId>, ServiceError> {
    if s.is_empty() { Ok(None) } else { edge_id(field, s).map(Some) }
}

pub fn type_name(field: &str, s: &str) -> Result<TypeName, ServiceError> {
    TypeName::from_str(s).map_err(|e| ServiceError::invalid(field, e.to_string()))
}

/// A `google.protobuf.Struct` as a JSON object (absent: empty).
pub fn struct_to_json(field: &str, s: Option<prost_types::Struct>) -> Result<Properties, ServiceError> {
    Ok(cim_runtime::edge::json(field, s)?)
}

pub use cim_proto::json::json_to_struct;

pub use cim_runtime::edge::timestamp;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_ids_name_their_field() {
        let err = aggregate_id("graph_id", "nope").unwrap_err();
        assert!(err.to_string().starts_with("graph_id: aggregate id: expected a UUID"), "{err}");
        assert!(node_id("node.id", "a b").is_err());
        assert!(type_name("node.type", "Person").is_err());
    }
}
