//! The HTTP side: `/ws` upgrades with the connection limit, the subprotocol token, and the
//! socket buffer sizes; serving until shutdown, then waiting for the sockets to close.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::extract::ws::WebSocketUpgrade;
use axum::response::Response;
use axum::routing::any;
use axum::serve::ListenerExt;
use cim_runtime::tls::HttpListener;
use tokio::time::Instant;

use crate::connection::{self, Credentials, Shared, Slot};
use crate::protocol::{BEARER_PREFIX, SUBPROTOCOL, close};

/// Socket buffers per connection: tungstenite's 128 KiB defaults would cost 256 MiB of address
/// space per thousand clients, while frames here are around a kilobyte.
const READ_BUFFER: usize = 8 * 1024;
const WRITE_BUFFER: usize = 16 * 1024;

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new().route("/ws", any(upgrade)).with_state(shared)
}

async fn upgrade(State(shared): State<Arc<Shared>>, ws: WebSocketUpgrade) -> Response {
    let limit = shared.settings.max_frame_bytes;
    // Above our own limit, so an oversized frame normally gets a clean 1009 from the session;
    // this is only the hard stop that keeps a huge frame from being buffered at all.
    let hard_limit = (limit * 2).max(limit + 64 * 1024);
    let token = ws
        .requested_protocols()
        .find_map(|p| p.to_str().ok().and_then(|p| p.strip_prefix(BEARER_PREFIX)).map(str::to_owned));
    let ws = ws
        .protocols([SUBPROTOCOL])
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_message_size(hard_limit)
        .max_frame_size(hard_limit)
        .on_failed_upgrade(|e| tracing::debug!(error = %e, "websocket upgrade failed"));
    let Some(slot) = Slot::acquire(&shared) else {
        shared.metrics.rejected("max_connections");
        let reason = format!("at the limit of {} connections; retry later", shared.settings.max_connections);
        return ws.on_upgrade(move |socket| async move {
            connection::refuse(socket, close::TRY_AGAIN_LATER, &reason).await
        });
    };
    let credentials = match token {
        Some(token) => Credentials::Subprotocol(shared.verifier.verify(&token)),
        None => Credentials::FirstMessage,
    };
    ws.on_upgrade(move |socket| connection::serve(socket, slot, credentials))
}

/// Serves until the service shuts down, then gives open sockets up to `grace` to close (each
/// closes itself with 1001 when the shutdown fires).
pub async fn serve(listener: HttpListener, shared: Arc<Shared>, grace: Duration) {
    // The listener sets TCP_NODELAY (frames are small and latency matters more than packet
    // count); `tap_io` gives it axum's connect info.
    let listener = listener.tap_io(|_| ());
    let stop = shared.shutdown.wait_owned();
    if let Err(e) = axum::serve(listener, router(shared.clone())).with_graceful_shutdown(stop).await {
        tracing::warn!(error = %e, "websocket listener failed");
    }
    // Upgraded sockets are no longer axum's connections, so its graceful shutdown does not wait.
    let deadline = Instant::now() + grace;
    while shared.connections() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
