//! `cim-webhook`: the webhook service as its own process.

/// mimalloc: glibc's malloc was 15-20% of a service's CPU under load (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    cim_runtime::process::serve("webhook", cim_webhook::app::service).await
}
