//! `cim-websocket`: the websocket server as its own process (its container image runs this).

use std::io::Write;
use std::process::ExitCode;

use cim_runtime::config::Config;
use cim_runtime::{Shutdown, telemetry};

#[tokio::main]
async fn main() -> ExitCode {
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            let _ = writeln!(std::io::stderr().lock(), "{e}");
            return ExitCode::from(2);
        }
    };
    let telemetry = match telemetry::init("websocket", &config) {
        Ok(t) => t,
        Err(e) => {
            let _ = writeln!(std::io::stderr().lock(), "{e}");
            return ExitCode::from(2);
        }
    };
    let shutdown = Shutdown::new();
    if let Err(e) = shutdown.listen_for_signals() {
        let _ = writeln!(std::io::stderr().lock(), "cannot install signal handlers: {e}");
        return ExitCode::FAILURE;
    }
    let result = cim_websocket::app::run(&config, &shutdown).await;
    telemetry.flush();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "websocket server failed");
            let _ = writeln!(std::io::stderr().lock(), "cim-websocket: {e}");
            ExitCode::FAILURE
        }
    }
}
