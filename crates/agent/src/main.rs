//! `cim-agent`: the agent service as its own process (its container image runs this).

/// mimalloc: glibc's malloc was 15-20% of a service's CPU under load (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // Connect, migrate and bind, then serve until a signal: what `cim serve` does with
    // `app::service`, for this one service.
    cim_runtime::process::main("agent", |config, shutdown| async move {
        cim_agent::app::prepare(&config, &shutdown).await?.run().await
    })
    .await
}
