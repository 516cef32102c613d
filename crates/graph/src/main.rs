//! `cim-graph`: the graph service as its own process (its container image runs this).

#[tokio::main]
async fn main() -> std::process::ExitCode {
    cim_runtime::process::main("graph", |config, shutdown| async move { cim_graph::app::run(&config, &shutdown).await })
        .await
}
