//! `cim-websocket`: the websocket server as its own process (its container image runs this).

/// mimalloc: glibc's malloc was 15-20% of a service's CPU under load (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    cim_runtime::process::serve("websocket", cim_websocket::app::service).await
}
