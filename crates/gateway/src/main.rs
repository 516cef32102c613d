//! `cim-gateway`: the REST gateway as its own process (its container image runs this).

#[tokio::main]
async fn main() -> std::process::ExitCode {
    cim_runtime::process::main(
        "gateway",
        |config, shutdown| async move { cim_gateway::app::run(&config, &shutdown).await },
    )
    .await
}
