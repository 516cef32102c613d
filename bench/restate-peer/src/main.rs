//! The benchmark's workflow on Restate: `Chain/<key>/run` with the number of steps, each step a
//! durable no-op (`ctx.run`, journaled before the next one starts), like a CIM definition of N
//! automated steps chained by `depends_on`.
//!
//! `restate-peer [ADDR]` serves the endpoint on ADDR (default 127.0.0.1:0) and prints
//! `listening <port>` once bound, so the bench can register it with the Restate server.

use restate_sdk::prelude::*;

pub struct Chain;

#[restate_sdk::workflow]
impl Chain {
    #[handler]
    async fn run(&self, ctx: WorkflowContext<'_>, steps: u32) -> Result<u32, HandlerError> {
        for i in 1..=steps {
            ctx.run(|| async { Ok(()) }).name(format!("s{i}")).await?;
        }
        Ok(steps)
    }
}

#[tokio::main]
async fn main() {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:0".into());
    let listener = tokio::net::TcpListener::bind(&addr).await.expect("bind the endpoint");
    let port = listener.local_addr().expect("bound address").port();
    println!("listening {port}");
    HttpServer::new(Endpoint::builder().bind(Chain).build()).serve(listener).await;
}
