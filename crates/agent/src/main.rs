//! `cim-agent`: the agent service as its own process (its container image runs this).

/// mimalloc: glibc's malloc was 15-20% of a service's CPU under load (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    cim_runtime::process::serve("agent", cim_agent::app::service).await
}
