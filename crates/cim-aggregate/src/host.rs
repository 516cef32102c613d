//! Wiring shared by every domain service: configuration → Postgres (its schema, migrated: the
//! event store's tables, then the domain's projections) → event store → its JetStream stream
//! and the dead-letter stream → relay → the time of the last backup (a gauge) → gRPC and admin
//! listeners. A domain's `app.rs` names its schema and migrations, adds its gRPC service and its
//! own workers, and nothing else.

use std::net::SocketAddr;

use cim_core::{Domain, Upcasters};
use cim_eventstore::{EventStore, Relay, RelayConfig, StoreConfig, StoreError};
use cim_runtime::config::Config;
use cim_runtime::{GrpcServer, RuntimeError, ServiceHost, ServiceKind, Shutdown, bind, nats, postgres};
use sqlx::PgPool;
use tokio::net::TcpListener;

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Streams(#[from] cim_streams::StreamError),
    /// A domain's own start-up step (opening its object store, ...).
    #[error("{0}")]
    Setup(String),
}

/// What a domain service is: its kind (listeners, names), domain (stream), schema and the
/// migrations of its projections.
#[derive(Debug)]
pub struct DomainSpec {
    pub kind: ServiceKind,
    pub domain: Domain,
    /// Tests give each run its own schema; deployments use the domain's.
    pub schema: String,
    /// The projections' migrations (versions 1001+), applied after the event store's.
    pub migrator: sqlx::migrate::Migrator,
    /// Take a snapshot when a load folded at least this many events after the last one.
    pub snapshot_every: u64,
}

/// A domain service connected and bound, before its gRPC service is added.
#[derive(Debug)]
pub struct DomainHost {
    pub store: EventStore,
    pub pool: PgPool,
    pub jetstream: async_nats::jetstream::Context,
    host: ServiceHost,
    grpc: TcpListener,
    admin: TcpListener,
    kind: ServiceKind,
    identity: Option<cim_runtime::identity::CallerKey>,
    /// The gRPC listener's TLS (`CIM_TLS_*`); `None`: plain TCP.
    tls: Option<std::sync::Arc<cim_runtime::tls::ServerConfig>>,
}

impl DomainHost {
    /// Connects, migrates and binds. Nothing is served until [`Prepared::run`].
    pub async fn connect(config: &Config, shutdown: &Shutdown, spec: DomainSpec) -> Result<Self, HostError> {
        let name = spec.kind.name();
        let application_name = format!("cim-{name}");
        let listen = config.listen(spec.kind);
        let pool = postgres::connect(&postgres::PgSettings {
            url: config.database_url.expose().to_owned(),
            schema: spec.schema.clone(),
            max_connections: config.database_max_connections,
            connect_timeout: config.connect_timeout,
            application_name: application_name.clone(),
        })
        .await?;
        let store = EventStore::open(
            pool.clone(),
            StoreConfig {
                domain: spec.domain,
                schema: spec.schema.clone(),
                snapshot_every: spec.snapshot_every,
                upcasters: Upcasters::new(),
            },
        )
        .await?;
        postgres::migrate(&pool, &spec.schema, spec.migrator).await?;

        let client = nats::connect(&nats::NatsSettings {
            url: config.nats_url.clone(),
            client_name: application_name,
            connect_timeout: config.connect_timeout,
            security: config.nats_security.clone(),
        })
        .await?;
        let jetstream = nats::jetstream(client.clone());
        cim_streams::streams::ensure_domain_stream(
            &jetstream,
            &config.subject_prefix,
            spec.domain,
            config.stream_replicas,
        )
        .await?;
        // Every consumer of this domain's events dead-letters there.
        cim_streams::streams::ensure_dlq_stream(&jetstream, &config.subject_prefix, config.stream_replicas).await?;

        let mut host = ServiceHost::new(name, shutdown, config.shutdown_grace);
        host.health().add_check("postgres", postgres::readiness(pool.clone()));
        host.health().add_check("nats", nats::readiness(client));
        let relay = Relay::new(store.clone(), jetstream.clone(), config.subject_prefix.clone(), RelayConfig::default());
        host.spawn_worker("relay", relay.run(host.workers_shutdown()));
        let backups = cim_eventstore::archive::record::export_last_success(
            pool.clone(),
            spec.schema.clone(),
            host.workers_shutdown(),
        );
        host.spawn_worker("backup age", backups);

        let upper = name.to_ascii_uppercase();
        let grpc = bind(&format!("{name} gRPC (CIM_{upper}_ADDR)"), listen.addr).await?;
        let admin = bind(&format!("{name} admin (CIM_{upper}_ADMIN_ADDR)"), listen.admin_addr).await?;
        if config.service_identity.is_none() {
            tracing::warn!(
                "CIM_SERVICE_TOKEN_SECRET is not set: caller metadata is taken unsigned (the network is the tenant boundary)"
            );
        }
        let identity = config.service_identity.clone();
        let tls = config.tls.grpc_server().map_err(RuntimeError::from)?;
        Ok(Self { store, pool, jetstream, host, grpc, admin, kind: spec.kind, identity, tls })
    }

    /// For the domain's own readiness checks and background workers.
    pub fn host(&mut self) -> &mut ServiceHost {
        &mut self.host
    }

    /// A gRPC server named after this service, with reflection over every CIM proto, taking
    /// caller metadata only signed when `CIM_SERVICE_TOKEN_SECRET` is set.
    pub fn grpc_server(&self) -> GrpcServer {
        GrpcServer::new(self.kind.name())
            .file_descriptor_set(cim_proto::FILE_DESCRIPTOR_SET)
            .caller_identity(self.identity.clone())
            .tls(self.tls.clone())
    }

    /// The service with its gRPC services added, ready to run.
    pub fn serve(self, server: GrpcServer) -> Result<Prepared, HostError> {
        Ok(Prepared {
            grpc_addr: self.grpc.local_addr().map_err(RuntimeError::from)?,
            admin_addr: self.admin.local_addr().map_err(RuntimeError::from)?,
            host: self.host,
            grpc: self.grpc,
            admin: self.admin,
            server,
            store: self.store,
            kind: self.kind,
        })
    }
}

/// A domain service with its listeners bound, ready to run.
#[derive(Debug)]
pub struct Prepared {
    host: ServiceHost,
    grpc: TcpListener,
    admin: TcpListener,
    server: GrpcServer,
    kind: ServiceKind,
    pub grpc_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub store: EventStore,
}

impl Prepared {
    /// Serves until shutdown completes.
    pub async fn run(self) -> Result<(), HostError> {
        tracing::info!(grpc = %self.grpc_addr, admin = %self.admin_addr, "{} service listening", self.kind);
        self.host.run(self.admin, Some((self.grpc, self.server))).await?;
        Ok(())
    }
}

impl cim_runtime::service::Service for Prepared {
    fn describe(&self) -> String {
        format!("{:<9} gRPC {}  admin http://{}", self.kind.name(), self.grpc_addr, self.admin_addr)
    }

    fn run(self: Box<Self>) -> cim_runtime::service::BoxFuture<'static, Result<(), String>> {
        let name = self.kind.name();
        Box::pin(async move { Prepared::run(*self).await.map_err(|e| format!("{name}: {e}")) })
    }
}
