//! `cim-websocket`: the websocket server as its own process (its container image runs this).

#[tokio::main]
async fn main() -> std::process::ExitCode {
    cim_runtime::process::main("websocket", |config, shutdown| async move {
        cim_websocket::app::run(&config, &shutdown).await
    })
    .await
}
