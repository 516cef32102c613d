//! Generated gRPC code for CIM's protos. Domain crates never see these types: they convert at
//! the service edge.

pub mod codec;
pub mod json;
pub mod status;

#[allow(missing_debug_implementations, clippy::all, clippy::pedantic)]
pub mod cim {
    pub mod common {
        pub mod v1 {
            tonic::include_proto!("cim.common.v1");
        }
    }
    pub mod graph {
        pub mod v1 {
            tonic::include_proto!("cim.graph.v1");
        }
    }
    pub mod document {
        pub mod v1 {
            tonic::include_proto!("cim.document.v1");
        }
    }
    pub mod agent {
        pub mod v1 {
            tonic::include_proto!("cim.agent.v1");
        }
    }
    pub mod workflow {
        pub mod v1 {
            tonic::include_proto!("cim.workflow.v1");
        }
    }
    pub mod webhook {
        pub mod v1 {
            tonic::include_proto!("cim.webhook.v1");
        }
    }
    #[cfg(feature = "testing")]
    pub mod testing {
        pub mod v1 {
            tonic::include_proto!("cim.testing.v1");
        }
    }
}

pub use cim::agent::v1 as agent;
pub use cim::common::v1 as common;
pub use cim::document::v1 as document;
pub use cim::graph::v1 as graph;
pub use cim::webhook::v1 as webhook;
pub use cim::workflow::v1 as workflow;

/// Every service of this build, for gRPC reflection (v1 and v1alpha).
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("cim_descriptor");
