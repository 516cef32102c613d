//! Accepted TLS connections, each handshake on a task of its own so a slow or silent client
//! never holds up the next one: a stream of them for tonic's `serve_with_incoming`, and an axum
//! listener that is plain TCP or TLS.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::either::Either;

/// A client that has not finished its handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections from `listener` that completed a TLS handshake. Dropping it stops accepting.
#[derive(Debug)]
pub struct TlsIncoming {
    local: SocketAddr,
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    accepting: tokio::task::JoinHandle<()>,
}

impl TlsIncoming {
    pub fn new(listener: TcpListener, config: Arc<ServerConfig>) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        let acceptor = TlsAcceptor::from(config);
        let (tx, ready) = mpsc::channel(64);
        let accepting = tokio::spawn(async move {
            while !tx.is_closed() {
                let (tcp, peer) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors and the like: wait instead of spinning.
                        tracing::warn!(error = %e, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                // Without TCP_NODELAY small responses wait on Nagle + delayed ACK.
                let _ = tcp.set_nodelay(true);
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        // A client without the right certificate, or no TLS client at all.
                        Ok(Err(e)) => tracing::info!(%peer, error = %e, "TLS handshake refused"),
                        Err(_) => tracing::info!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(Self { local, ready, accepting })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }
}

impl Drop for TlsIncoming {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

impl futures::Stream for TlsIncoming {
    type Item = std::io::Result<TlsStream<TcpStream>>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.ready.poll_recv(cx).map(|next| next.map(|(stream, _)| Ok(stream)))
    }
}

/// An HTTP service's listener: plain TCP, or TLS when the service has a certificate. Wrap it in
/// axum's `tap_io` for `ConnectInfo<SocketAddr>`.
#[derive(Debug)]
pub enum HttpListener {
    Plain(TcpListener),
    Tls(TlsIncoming),
}

impl HttpListener {
    pub fn new(listener: TcpListener, tls: Option<Arc<ServerConfig>>) -> std::io::Result<Self> {
        Ok(match tls {
            Some(config) => Self::Tls(TlsIncoming::new(listener, config)?),
            None => Self::Plain(listener),
        })
    }

    /// Whether connections are TLS.
    pub fn is_tls(&self) -> bool {
        matches!(self, Self::Tls(_))
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        match self {
            Self::Plain(listener) => listener.local_addr(),
            Self::Tls(incoming) => Ok(incoming.local),
        }
    }
}

impl axum::serve::Listener for HttpListener {
    type Io = Either<TcpStream, TlsStream<TcpStream>>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self {
            Self::Plain(listener) => loop {
                match TcpListener::accept(listener).await {
                    Ok((tcp, peer)) => {
                        let _ = tcp.set_nodelay(true);
                        return (Either::Left(tcp), peer);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            },
            Self::Tls(incoming) => match incoming.ready.recv().await {
                Some((tls, peer)) => (Either::Right(tls), peer),
                // The accepting task holds a sender until this listener is dropped.
                None => std::future::pending().await,
            },
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        HttpListener::local_addr(self)
    }
}
