//! The whole `main` of a service binary, shared so each binary stays a one-liner.

use std::fmt::Display;
use std::io::Write;
use std::process::ExitCode;

use crate::config::Config;
use crate::service::Prepare;
use crate::{Shutdown, telemetry};

/// Reads the configuration (exit 2 with one line per bad variable), starts telemetry, installs
/// the signal handlers, runs `run` until shutdown, flushes telemetry and turns the outcome into
/// the exit code.
pub async fn main<F, Fut, E>(service: &str, run: F) -> ExitCode
where
    F: FnOnce(Config, Shutdown) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: Display,
{
    // Idle memory stays near what is in use: the allocator is built without asking for
    // transparent huge pages (mimalloc's `no_thp`, workspace Cargo.toml), and this keeps the
    // kernel from giving them anyway on hosts whose THP setting is `always`. With 2 MiB pages an
    // idle service held 20-23 MiB of heap for 3-5 MiB in use (docs/benchmarks.md, idle memory).
    #[cfg(target_os = "linux")]
    let _ = rustix::thread::disable_transparent_huge_pages(true);
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            let _ = writeln!(std::io::stderr().lock(), "{e}");
            return ExitCode::from(2);
        }
    };
    let telemetry = match telemetry::init(service, &config) {
        Ok(t) => t,
        Err(e) => {
            let _ = writeln!(std::io::stderr().lock(), "{e}");
            return ExitCode::from(2);
        }
    };
    // The metrics recorder before any service code runs: a domain exports its counters at zero
    // as it prepares (so dashboards and alerts see them before the first event), and whatever is
    // recorded before the recorder exists is lost.
    let _ = crate::metrics::handle();
    let shutdown = Shutdown::new();
    if let Err(e) = shutdown.listen_for_signals() {
        let _ = writeln!(std::io::stderr().lock(), "cannot install signal handlers: {e}");
        return ExitCode::FAILURE;
    }
    let result = run(config, shutdown).await;
    telemetry.flush();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, service, "service failed");
            let _ = writeln!(std::io::stderr().lock(), "cim-{service}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A service binary's `main`: [`main`] around the same [`Prepare`] that `cim serve` runs the
/// service with, so a service is wired once for both.
pub async fn serve(service: &str, prepare: Prepare) -> ExitCode {
    main(service, |config, shutdown| async move { prepare(&config, shutdown).await?.run().await }).await
}
