//! A `cim.testing.v1.Probe` that answers: the service the runtime's listener tests put behind
//! TLS, service identity and the like.

use cim_proto::cim::testing::v1::probe_server::Probe;
use cim_proto::cim::testing::v1::{FailReply, FailRequest, SleepReply, SleepRequest};
use tonic::{Request, Response, Status};

pub struct Echo;

#[tonic::async_trait]
impl Probe for Echo {
    async fn sleep(&self, req: Request<SleepRequest>) -> Result<Response<SleepReply>, Status> {
        Ok(Response::new(SleepReply { slept_millis: req.into_inner().millis }))
    }

    async fn fail(&self, _: Request<FailRequest>) -> Result<Response<FailReply>, Status> {
        Err(Status::internal("not used"))
    }
}
