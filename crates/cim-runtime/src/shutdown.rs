//! Shutdown signalling. The first SIGTERM/SIGINT starts an orderly shutdown; a second one exits
//! at once (an operator who presses Ctrl-C twice means it).

use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    token: CancellationToken,
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn trigger(&self) {
        self.token.cancel();
    }

    pub fn is_triggered(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Resolves once shutdown has begun.
    pub async fn wait(&self) {
        self.token.cancelled().await;
    }

    /// A future that resolves on shutdown and owns what it needs (for `'static` tasks).
    pub fn wait_owned(&self) -> tokio_util::sync::WaitForCancellationFutureOwned {
        self.token.clone().cancelled_owned()
    }

    /// A shutdown that also fires when this one does, but can be fired alone (one per service
    /// in the monolith, one for background workers).
    pub fn child(&self) -> Shutdown {
        Shutdown { token: self.token.child_token() }
    }

    /// Spawns the signal listener. Must be called inside a tokio runtime.
    pub fn listen_for_signals(&self) -> std::io::Result<tokio::task::JoinHandle<()>> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let this = self.clone();
        Ok(tokio::spawn(async move {
            let mut seen = 0;
            loop {
                let name = tokio::select! {
                    _ = term.recv() => "SIGTERM",
                    _ = int.recv() => "SIGINT",
                };
                seen += 1;
                if seen == 1 {
                    tracing::info!(signal = name, "shutting down: draining in-flight work (send again to exit now)");
                    this.trigger();
                } else {
                    tracing::warn!(signal = name, "second signal: exiting now");
                    std::process::exit(130);
                }
            }
        }))
    }
}
