//! The shape every CIM service has, so that running several in one process (`cim serve`) is a
//! loop over a table and each binary's `main` is the same three lines: prepare (connections
//! made, listeners bound, so ports and failures are known before anything runs), announce where
//! it listens, run until shutdown.

pub use futures::future::BoxFuture;

use crate::Shutdown;
use crate::config::Config;

/// A service that is ready to run.
pub trait Service: Send + 'static {
    /// One line saying where it listens (`graph     gRPC 127.0.0.1:50051  admin http://…`).
    fn describe(&self) -> String;

    /// Runs until its shutdown fires; an error names what stopped it.
    fn run(self: Box<Self>) -> BoxFuture<'static, Result<(), String>>;
}

/// How a service is prepared: each service crate exports one (`cim_graph::app::service`).
pub type Prepare = for<'a> fn(&'a Config, Shutdown) -> BoxFuture<'a, Result<Box<dyn Service>, String>>;

/// A service crate's [`Prepare`] body: awaits its own `prepare` and boxes the result, naming
/// the service in the error.
pub fn boxed<'a, P, E>(
    name: &'static str,
    prepare: impl std::future::Future<Output = Result<P, E>> + Send + 'a,
) -> BoxFuture<'a, Result<Box<dyn Service>, String>>
where
    P: Service,
    E: std::fmt::Display,
{
    Box::pin(async move {
        let prepared = prepare.await.map_err(|e| format!("{name}: {e}"))?;
        Ok(Box::new(prepared) as Box<dyn Service>)
    })
}
