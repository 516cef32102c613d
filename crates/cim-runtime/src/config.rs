//! Every `CIM_*` environment variable, in one table, parsed once at start-up.
//!
//! A bad value stops the process with one line per bad variable naming it, the expected form and
//! what was found (secrets redacted), instead of failing later somewhere less obvious.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use cim_core::{SubjectPrefix, TenantId};

/// One variable: its name, default, the form it must take and how much of its value may be shown.
#[derive(Debug, Clone, Copy)]
pub struct VarSpec {
    pub name: &'static str,
    pub default: Option<&'static str>,
    pub expected: &'static str,
    pub secret: Secrecy,
    pub help: &'static str,
}

/// What of a value may appear in output (`cim config`, error messages, logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Secrecy {
    /// All of it.
    Public,
    /// A URL whose password is secret: everything else is shown, so a typo can be seen.
    Url,
    /// Several URLs separated by commas, each shown like [`Secrecy::Url`].
    UrlList,
    /// Nothing: a key or a shared secret.
    Secret,
}

impl Secrecy {
    /// Whether the value holds a secret: such a variable may also be given as `<NAME>_FILE`
    /// (the path of a file holding the value: Kubernetes Secrets mounted as files, compose
    /// secrets), and a value read from a file is never shown at all.
    pub fn is_secret(self) -> bool {
        self != Secrecy::Public
    }

    /// `value` as it may be shown.
    pub fn show(self, value: &str) -> String {
        match self {
            Secrecy::Public => value.to_owned(),
            Secrecy::Url => redact_url(value),
            Secrecy::UrlList => redact_urls(value),
            Secrecy::Secret => "<redacted>".to_owned(),
        }
    }
}

const fn var(name: &'static str, default: Option<&'static str>, expected: &'static str, help: &'static str) -> VarSpec {
    VarSpec { name, default, expected, secret: Secrecy::Public, help }
}

pub const CIM_LOG_FORMAT: &str = "CIM_LOG_FORMAT";
pub const CIM_LOG: &str = "CIM_LOG";
pub const CIM_OTLP_ENDPOINT: &str = "CIM_OTLP_ENDPOINT";
pub const CIM_DATABASE_URL: &str = "CIM_DATABASE_URL";
pub const CIM_DATABASE_MAX_CONNECTIONS: &str = "CIM_DATABASE_MAX_CONNECTIONS";
pub const CIM_NATS_URL: &str = "CIM_NATS_URL";
pub const CIM_SUBJECT_PREFIX: &str = "CIM_SUBJECT_PREFIX";
pub const CIM_STREAM_REPLICAS: &str = "CIM_STREAM_REPLICAS";
pub const CIM_REDIS_URL: &str = "CIM_REDIS_URL";
pub const CIM_REDIS_CA_FILE: &str = "CIM_REDIS_CA_FILE";
pub const CIM_REDIS_CERT_FILE: &str = "CIM_REDIS_CERT_FILE";
pub const CIM_REDIS_KEY_FILE: &str = "CIM_REDIS_KEY_FILE";
pub const CIM_NATS_CA_FILE: &str = "CIM_NATS_CA_FILE";
pub const CIM_NATS_CERT_FILE: &str = "CIM_NATS_CERT_FILE";
pub const CIM_NATS_KEY_FILE: &str = "CIM_NATS_KEY_FILE";
pub const CIM_NATS_CREDS_FILE: &str = "CIM_NATS_CREDS_FILE";
pub const CIM_NATS_NKEY_SEED: &str = "CIM_NATS_NKEY_SEED";
pub const CIM_TLS_CERT_FILE: &str = "CIM_TLS_CERT_FILE";
pub const CIM_TLS_KEY_FILE: &str = "CIM_TLS_KEY_FILE";
pub const CIM_TLS_CLIENT_CA_FILE: &str = "CIM_TLS_CLIENT_CA_FILE";
pub const CIM_TLS_CA_FILE: &str = "CIM_TLS_CA_FILE";
pub const CIM_TLS_RELOAD_SECS: &str = "CIM_TLS_RELOAD_SECS";
pub const CIM_CONNECT_TIMEOUT_MS: &str = "CIM_CONNECT_TIMEOUT_MS";
pub const CIM_SHUTDOWN_GRACE_MS: &str = "CIM_SHUTDOWN_GRACE_MS";
pub const CIM_JWT_HS256_SECRET: &str = "CIM_JWT_HS256_SECRET";
pub const CIM_SERVICE_TOKEN_SECRET: &str = "CIM_SERVICE_TOKEN_SECRET";
pub const CIM_JWT_PUBLIC_KEY_FILE: &str = "CIM_JWT_PUBLIC_KEY_FILE";
pub const CIM_JWT_JWKS_URL: &str = "CIM_JWT_JWKS_URL";
pub const CIM_JWT_KEYS_REFRESH_SECS: &str = "CIM_JWT_KEYS_REFRESH_SECS";
pub const CIM_JWT_LEEWAY_SECS: &str = "CIM_JWT_LEEWAY_SECS";
pub const CIM_JWT_MAX_LIFETIME_SECS: &str = "CIM_JWT_MAX_LIFETIME_SECS";
pub const CIM_JWT_ISSUER: &str = "CIM_JWT_ISSUER";
pub const CIM_JWT_AUDIENCE: &str = "CIM_JWT_AUDIENCE";
pub const CIM_GATEWAY_GRAPH_URLS: &str = "CIM_GATEWAY_GRAPH_URLS";
pub const CIM_GATEWAY_DOCUMENT_URLS: &str = "CIM_GATEWAY_DOCUMENT_URLS";
pub const CIM_GATEWAY_AGENT_URLS: &str = "CIM_GATEWAY_AGENT_URLS";
pub const CIM_GATEWAY_WORKFLOW_URLS: &str = "CIM_GATEWAY_WORKFLOW_URLS";
pub const CIM_GATEWAY_WEBHOOK_URLS: &str = "CIM_GATEWAY_WEBHOOK_URLS";
pub const CIM_GATEWAY_REQUEST_TIMEOUT_MS: &str = "CIM_GATEWAY_REQUEST_TIMEOUT_MS";
pub const CIM_GATEWAY_MAX_BODY_BYTES: &str = "CIM_GATEWAY_MAX_BODY_BYTES";
pub const CIM_GATEWAY_RATE_LIMIT_PER_MINUTE: &str = "CIM_GATEWAY_RATE_LIMIT_PER_MINUTE";
pub const CIM_GATEWAY_RATE_LIMIT_FAIL_OPEN: &str = "CIM_GATEWAY_RATE_LIMIT_FAIL_OPEN";
pub const CIM_GATEWAY_RATE_LIMIT_TENANTS: &str = "CIM_GATEWAY_RATE_LIMIT_TENANTS";
pub const CIM_GATEWAY_CACHE_TTL_SECS: &str = "CIM_GATEWAY_CACHE_TTL_SECS";
pub const CIM_GATEWAY_SESSION_TTL_SECS: &str = "CIM_GATEWAY_SESSION_TTL_SECS";
pub const CIM_GATEWAY_LINK_SECRET: &str = "CIM_GATEWAY_LINK_SECRET";
pub const CIM_GATEWAY_COOKIE_SECURE: &str = "CIM_GATEWAY_COOKIE_SECURE";
pub const CIM_GATEWAY_AUTH_FAILURES_PER_MINUTE: &str = "CIM_GATEWAY_AUTH_FAILURES_PER_MINUTE";
pub const CIM_GATEWAY_PROXY_HOPS: &str = "CIM_GATEWAY_PROXY_HOPS";
pub const CIM_GATEWAY_CONSOLE_WEBSOCKET_URL: &str = "CIM_GATEWAY_CONSOLE_WEBSOCKET_URL";
pub const CIM_GATEWAY_GRAFANA_URL: &str = "CIM_GATEWAY_GRAFANA_URL";
pub const CIM_GATEWAY_OPERATOR_TENANTS: &str = "CIM_GATEWAY_OPERATOR_TENANTS";
pub const CIM_GATEWAY_WEBSOCKET_ADMIN_URL: &str = "CIM_GATEWAY_WEBSOCKET_ADMIN_URL";
pub const CIM_WEBSOCKET_MAX_CONNECTIONS: &str = "CIM_WEBSOCKET_MAX_CONNECTIONS";
pub const CIM_WEBSOCKET_MAX_SUBSCRIPTIONS: &str = "CIM_WEBSOCKET_MAX_SUBSCRIPTIONS";
pub const CIM_WEBSOCKET_CLIENT_QUEUE: &str = "CIM_WEBSOCKET_CLIENT_QUEUE";
pub const CIM_WEBSOCKET_MAX_FRAME_BYTES: &str = "CIM_WEBSOCKET_MAX_FRAME_BYTES";
pub const CIM_WEBSOCKET_IDLE_TIMEOUT_MS: &str = "CIM_WEBSOCKET_IDLE_TIMEOUT_MS";
pub const CIM_OBJECT_STORE_URL: &str = "CIM_OBJECT_STORE_URL";
pub const CIM_S3_ENDPOINT: &str = "CIM_S3_ENDPOINT";
pub const CIM_S3_REGION: &str = "CIM_S3_REGION";
pub const CIM_S3_ACCESS_KEY_ID: &str = "CIM_S3_ACCESS_KEY_ID";
pub const CIM_S3_SECRET_ACCESS_KEY: &str = "CIM_S3_SECRET_ACCESS_KEY";
pub const CIM_DATA_DIR: &str = "CIM_DATA_DIR";
pub const CIM_DOCUMENT_MAX_CONTENT_BYTES: &str = "CIM_DOCUMENT_MAX_CONTENT_BYTES";
pub const CIM_DOCUMENT_GC_GRACE_SECS: &str = "CIM_DOCUMENT_GC_GRACE_SECS";
pub const CIM_AGENT_LEASE_MS: &str = "CIM_AGENT_LEASE_MS";
pub const CIM_AGENT_HEARTBEAT_INTERVAL_MS: &str = "CIM_AGENT_HEARTBEAT_INTERVAL_MS";
pub const CIM_AGENT_HEARTBEAT_TIMEOUT_MS: &str = "CIM_AGENT_HEARTBEAT_TIMEOUT_MS";
pub const CIM_AGENT_RESPONSE_TIMEOUT_MS: &str = "CIM_AGENT_RESPONSE_TIMEOUT_MS";
pub const CIM_WORKFLOW_LEASE_MS: &str = "CIM_WORKFLOW_LEASE_MS";
pub const CIM_WORKFLOW_POLL_MS: &str = "CIM_WORKFLOW_POLL_MS";
pub const CIM_WORKFLOW_CONCURRENCY: &str = "CIM_WORKFLOW_CONCURRENCY";
pub const CIM_WORKFLOW_GRAPH_URLS: &str = "CIM_WORKFLOW_GRAPH_URLS";
pub const CIM_WORKFLOW_DOCUMENT_URLS: &str = "CIM_WORKFLOW_DOCUMENT_URLS";
pub const CIM_WORKFLOW_AGENT_URLS: &str = "CIM_WORKFLOW_AGENT_URLS";
pub const CIM_WORKFLOW_SELF_URLS: &str = "CIM_WORKFLOW_SELF_URLS";
pub const CIM_WORKFLOW_CALL_TIMEOUT_MS: &str = "CIM_WORKFLOW_CALL_TIMEOUT_MS";
pub const CIM_WEBHOOK_ATTEMPTS: &str = "CIM_WEBHOOK_ATTEMPTS";
pub const CIM_WEBHOOK_BACKOFF_MS: &str = "CIM_WEBHOOK_BACKOFF_MS";
pub const CIM_WEBHOOK_BACKOFF_MAX_MS: &str = "CIM_WEBHOOK_BACKOFF_MAX_MS";
pub const CIM_WEBHOOK_TIMEOUT_MS: &str = "CIM_WEBHOOK_TIMEOUT_MS";
pub const CIM_WEBHOOK_POLL_MS: &str = "CIM_WEBHOOK_POLL_MS";
pub const CIM_WEBHOOK_CONCURRENCY: &str = "CIM_WEBHOOK_CONCURRENCY";
pub const CIM_WEBHOOK_IDLE_EXIT_SECS: &str = "CIM_WEBHOOK_IDLE_EXIT_SECS";

/// The development signing secret `scripts/up.sh` creates (via `cim local-secret`) in the data
/// directory, and `cim token` signs with when CIM_JWT_HS256_SECRET is not set. Services never
/// read it: up.sh hands it to them in CIM_JWT_HS256_SECRET.
pub const LOCAL_SECRET_FILE: &str = "jwt-hs256-secret";

/// The complete list. `cim config` prints it; a test checks that compose and k8s set only these.
pub const VARS: &[VarSpec] = &[
    var(CIM_LOG_FORMAT, Some("json"), "json or pretty", "log line format"),
    var(CIM_LOG, Some("info"), "a tracing filter such as info or cim_graph=debug,info", "log levels"),
    var(CIM_OTLP_ENDPOINT, None, "an http(s):// URL of an OTLP/gRPC collector", "export traces when set"),
    VarSpec {
        name: CIM_DATABASE_URL,
        default: Some("postgres://postgres@127.0.0.1:5432/cim"),
        expected: "a postgres:// URL such as postgres://user:password@host:5432/cim",
        secret: Secrecy::Url,
        help: "Postgres database holding every service's schema; TLS: ?sslmode=verify-full&sslrootcert=<CA file> (and sslcert=, sslkey= for a client certificate)",
    },
    var(CIM_DATABASE_MAX_CONNECTIONS, Some("16"), "an integer from 1 to 1000", "pool size per service"),
    VarSpec {
        name: CIM_NATS_URL,
        default: Some("nats://127.0.0.1:4222"),
        expected: "a nats:// URL (several separated by commas), optionally with user:password@",
        secret: Secrecy::UrlList,
        help: "NATS with JetStream",
    },
    var(
        CIM_NATS_CA_FILE,
        None,
        "the path of a PEM file of CA certificates",
        "NATS over TLS: the CA the server's certificate must come from (TLS is then required); read again at each (re)connection",
    ),
    var(
        CIM_NATS_CERT_FILE,
        None,
        "the path of a PEM certificate chain (with CIM_NATS_KEY_FILE)",
        "NATS over TLS: the client certificate presented to the server; read again at each (re)connection",
    ),
    var(CIM_NATS_KEY_FILE, None, "the path of a PEM private key", "NATS over TLS: the key of CIM_NATS_CERT_FILE"),
    var(
        CIM_NATS_CREDS_FILE,
        None,
        "the path of a NATS .creds file (user JWT and NKEY seed)",
        "NATS decentralized authentication (operator mode); read again at each (re)connection; not with CIM_NATS_NKEY_SEED",
    ),
    VarSpec {
        name: CIM_NATS_NKEY_SEED,
        default: None,
        expected: "a NATS user NKEY seed (SU...)",
        secret: Secrecy::Secret,
        help: "NATS NKEY authentication; not with CIM_NATS_CREDS_FILE",
    },
    var(CIM_SUBJECT_PREFIX, Some("cim"), "dot-separated tokens of A-Z a-z 0-9 _ -", "subject and stream name prefix"),
    var(CIM_STREAM_REPLICAS, Some("1"), "an integer from 1 to 5", "JetStream stream replicas"),
    VarSpec {
        name: CIM_REDIS_URL,
        default: Some("redis://127.0.0.1:6379"),
        expected: "a redis:// or rediss:// URL",
        secret: Secrecy::Url,
        help: "Redis for cache, sessions and rate limits",
    },
    var(
        CIM_REDIS_CA_FILE,
        None,
        "the path of a PEM file of CA certificates",
        "with rediss://: the CA Redis's certificate must come from; re-read when it changes; unset: the system's roots",
    ),
    var(
        CIM_REDIS_CERT_FILE,
        None,
        "the path of a PEM certificate chain (with CIM_REDIS_KEY_FILE)",
        "with rediss://: the client certificate presented to Redis; re-read when it changes",
    ),
    var(CIM_REDIS_KEY_FILE, None, "the path of a PEM private key", "with rediss://: the key of CIM_REDIS_CERT_FILE"),
    var(CIM_CONNECT_TIMEOUT_MS, Some("5000"), "milliseconds from 100 to 600000", "timeout to reach a dependency"),
    var(
        CIM_SHUTDOWN_GRACE_MS,
        Some("20000"),
        "milliseconds from 0 to 600000",
        "how long shutdown waits for in-flight work",
    ),
    var("CIM_GATEWAY_ADDR", Some("0.0.0.0:8080"), "host:port", "gateway HTTP listener"),
    var("CIM_GATEWAY_ADMIN_ADDR", Some("0.0.0.0:9100"), "host:port", "gateway admin listener"),
    var("CIM_WEBSOCKET_ADDR", Some("0.0.0.0:8081"), "host:port", "websocket HTTP listener"),
    var("CIM_WEBSOCKET_ADMIN_ADDR", Some("0.0.0.0:9101"), "host:port", "websocket admin listener"),
    var("CIM_GRAPH_ADDR", Some("0.0.0.0:50051"), "host:port", "graph gRPC listener"),
    var("CIM_GRAPH_ADMIN_ADDR", Some("0.0.0.0:9102"), "host:port", "graph admin listener"),
    var("CIM_DOCUMENT_ADDR", Some("0.0.0.0:50052"), "host:port", "document gRPC listener"),
    var("CIM_DOCUMENT_ADMIN_ADDR", Some("0.0.0.0:9103"), "host:port", "document admin listener"),
    var("CIM_WORKFLOW_ADDR", Some("0.0.0.0:50053"), "host:port", "workflow gRPC listener"),
    var("CIM_WORKFLOW_ADMIN_ADDR", Some("0.0.0.0:9104"), "host:port", "workflow admin listener"),
    var("CIM_AGENT_ADDR", Some("0.0.0.0:50054"), "host:port", "agent gRPC listener"),
    var("CIM_AGENT_ADMIN_ADDR", Some("0.0.0.0:9105"), "host:port", "agent admin listener"),
    var("CIM_WEBHOOK_ADDR", Some("0.0.0.0:50055"), "host:port", "webhook gRPC listener"),
    var("CIM_WEBHOOK_ADMIN_ADDR", Some("0.0.0.0:9106"), "host:port", "webhook admin listener"),
    var(
        CIM_TLS_CERT_FILE,
        None,
        "the path of a PEM certificate chain, leaf first (with CIM_TLS_KEY_FILE)",
        "this service's certificate: its listener speaks HTTPS / gRPC over TLS, and it is the client certificate it presents to the services it calls; re-read when it changes; unset: plain TCP",
    ),
    var(CIM_TLS_KEY_FILE, None, "the path of a PEM private key", "the key of CIM_TLS_CERT_FILE"),
    var(
        CIM_TLS_CLIENT_CA_FILE,
        None,
        "the path of a PEM file of CA certificates (with CIM_TLS_CERT_FILE)",
        "gRPC listeners require a client certificate issued by this CA (mTLS between services); unset: none asked",
    ),
    var(
        CIM_TLS_CA_FILE,
        None,
        "the path of a PEM file of CA certificates",
        "the CA of the services this one calls over https:// (gateway upstreams, workflow calls)",
    ),
    var(
        CIM_TLS_RELOAD_SECS,
        Some("10"),
        "seconds from 0 to 3600",
        "how often, at most, a handshake (or a new Redis connection) checks whether the CIM_TLS_* and CIM_REDIS_*_FILE files changed (0: every time)",
    ),
    VarSpec {
        name: CIM_SERVICE_TOKEN_SECRET,
        default: None,
        expected: "at least 32 bytes",
        secret: Secrecy::Secret,
        help: "the domain services' shared key: callers sign their tenant/actor metadata with it and a service refuses unsigned calls; unset: not checked (the network is the boundary)",
    },
    VarSpec {
        name: CIM_JWT_HS256_SECRET,
        default: None,
        expected: "at least 32 bytes",
        secret: Secrecy::Secret,
        help: "shared secret for HS256 bearer tokens (gateway, websocket)",
    },
    var(
        CIM_JWT_PUBLIC_KEY_FILE,
        None,
        "paths separated by commas, each a PEM RSA or EC public key (its key id: the file name without extension) or a JWKS document",
        "public keys for RS256/ES256 bearer tokens, selected by the token's `kid`; re-read when changed",
    ),
    var(
        CIM_JWT_JWKS_URL,
        None,
        "an http(s):// URL of a JWKS document",
        "public keys for bearer tokens fetched from the issuer, selected by `kid`; refreshed",
    ),
    var(
        CIM_JWT_KEYS_REFRESH_SECS,
        Some("60"),
        "seconds from 1 to 86400",
        "how often key files and the JWKS URL are checked again (an unknown `kid` checks sooner)",
    ),
    var(
        CIM_JWT_LEEWAY_SECS,
        Some("30"),
        "seconds from 0 to 300",
        "clock skew allowed on `exp`, `nbf` and `iat` of bearer tokens",
    ),
    var(
        CIM_JWT_MAX_LIFETIME_SECS,
        Some("86400"),
        "seconds from 60 to 31536000",
        "longest a bearer token may live (`exp` after `iat`, or after now without `iat`)",
    ),
    var(CIM_JWT_ISSUER, Some("cim"), "a non-empty string", "required `iss` of bearer tokens"),
    var(CIM_JWT_AUDIENCE, Some("cim"), "a non-empty string", "required `aud` of bearer tokens"),
    var(
        CIM_GATEWAY_GRAPH_URLS,
        Some("http://127.0.0.1:50051"),
        "http:// or https:// URLs separated by commas (https: TLS, with CIM_TLS_CA_FILE)",
        "graph service instances the gateway balances over",
    ),
    var(
        CIM_GATEWAY_DOCUMENT_URLS,
        Some("http://127.0.0.1:50052"),
        "http:// or https:// URLs separated by commas (https: TLS, with CIM_TLS_CA_FILE)",
        "document service instances the gateway balances over",
    ),
    var(
        CIM_GATEWAY_AGENT_URLS,
        Some("http://127.0.0.1:50054"),
        "http:// or https:// URLs separated by commas (https: TLS, with CIM_TLS_CA_FILE)",
        "agent service instances the gateway balances over",
    ),
    var(
        CIM_GATEWAY_WORKFLOW_URLS,
        Some("http://127.0.0.1:50053"),
        "http:// or https:// URLs separated by commas (https: TLS, with CIM_TLS_CA_FILE)",
        "workflow service instances the gateway balances over",
    ),
    var(
        CIM_GATEWAY_WEBHOOK_URLS,
        Some("http://127.0.0.1:50055"),
        "http:// or https:// URLs separated by commas (https: TLS, with CIM_TLS_CA_FILE)",
        "webhook service instances the gateway balances over",
    ),
    var(
        CIM_GATEWAY_REQUEST_TIMEOUT_MS,
        Some("10000"),
        "milliseconds from 10 to 600000",
        "gateway request deadline (504 after)",
    ),
    var(CIM_GATEWAY_MAX_BODY_BYTES, Some("1048576"), "bytes from 1024 to 67108864", "largest request body (413 above)"),
    var(
        CIM_GATEWAY_RATE_LIMIT_PER_MINUTE,
        Some("6000"),
        "an integer from 0 (off) to 10000000",
        "requests per principal per minute",
    ),
    var(
        CIM_GATEWAY_RATE_LIMIT_TENANTS,
        None,
        "tenant=limit pairs separated by commas (tenant ids as UUIDv7, limits from 0 (off) to 10000000)",
        "per-tenant limits for their principals in place of CIM_GATEWAY_RATE_LIMIT_PER_MINUTE (a noisy tenant held lower, a large one let higher)",
    ),
    var(
        CIM_GATEWAY_RATE_LIMIT_FAIL_OPEN,
        Some("true"),
        "true or false",
        "serve (true) or refuse with 503 (false) when Redis cannot count",
    ),
    var(CIM_GATEWAY_CACHE_TTL_SECS, Some("300"), "seconds from 0 (off) to 86400", "how long a cached GET may live"),
    var(
        CIM_GATEWAY_SESSION_TTL_SECS,
        Some("28800"),
        "seconds from 60 to 2592000",
        "console session lifetime (never longer than the credential it came from)",
    ),
    var(
        CIM_GATEWAY_COOKIE_SECURE,
        Some("true"),
        "true or false",
        "mark the console session cookie Secure (HTTPS only); false only for plain local HTTP",
    ),
    var(
        CIM_GATEWAY_AUTH_FAILURES_PER_MINUTE,
        Some("30"),
        "an integer from 0 (off) to 1000000",
        "failed authentications per client address per minute before it gets 429 (counted in Redis)",
    ),
    var(
        CIM_GATEWAY_PROXY_HOPS,
        Some("0"),
        "an integer from 0 to 10",
        "trusted proxies in front of the gateway: the client address is that many entries from the end of X-Forwarded-For",
    ),
    var(
        CIM_GATEWAY_CONSOLE_WEBSOCKET_URL,
        None,
        "a ws:// or wss:// URL",
        "the websocket server as the console's browser reaches it; unset: /ws on the console's own origin (nginx, ingress)",
    ),
    var(
        CIM_GATEWAY_GRAFANA_URL,
        None,
        "an http:// or https:// URL",
        "Grafana as operators reach it: the console's operations page links its dashboards (<url>/d/<uid>)",
    ),
    var(
        CIM_GATEWAY_OPERATOR_TENANTS,
        None,
        "tenant ids (UUIDv7) separated by commas",
        "the operators' tenants: only their admins read the operations view (every tenant's streams and dead letters); unset: no one",
    ),
    var(
        CIM_GATEWAY_WEBSOCKET_ADMIN_URL,
        None,
        "an http:// or https:// URL",
        "the websocket server's admin listener as the gateway reaches it: the operations view reads its /health/ready; unset: not shown",
    ),
    VarSpec {
        name: CIM_GATEWAY_LINK_SECRET,
        default: None,
        expected: "at least 32 bytes",
        secret: Secrecy::Secret,
        help: "signs download links (HMAC-SHA256); unset: derived from CIM_JWT_HS256_SECRET, else no links",
    },
    var(
        CIM_WEBSOCKET_MAX_CONNECTIONS,
        Some("10000"),
        "an integer from 1 to 1000000",
        "websocket connections per instance",
    ),
    var(CIM_WEBSOCKET_MAX_SUBSCRIPTIONS, Some("32"), "an integer from 1 to 10000", "subscriptions per connection"),
    var(
        CIM_WEBSOCKET_CLIENT_QUEUE,
        Some("1024"),
        "an integer from 1 to 1000000",
        "frames queued per client before it is cut off",
    ),
    var(CIM_WEBSOCKET_MAX_FRAME_BYTES, Some("65536"), "bytes from 256 to 16777216", "largest frame a client may send"),
    var(
        CIM_WEBSOCKET_IDLE_TIMEOUT_MS,
        Some("60000"),
        "milliseconds from 1000 to 3600000",
        "close a client silent this long",
    ),
    var(
        CIM_OBJECT_STORE_URL,
        Some("data/objects"),
        "a directory (relative or absolute), file:///absolute/path, or s3://bucket[/prefix]",
        "where document content is stored",
    ),
    var(
        CIM_S3_ENDPOINT,
        None,
        "an http(s):// URL such as http://minio:9000",
        "S3-compatible endpoint (path-style); unset: AWS",
    ),
    var(CIM_S3_REGION, Some("us-east-1"), "a region name such as us-east-1", "S3 region (signing)"),
    var(CIM_S3_ACCESS_KEY_ID, None, "an access key id", "S3 credentials; unset: AWS_* / instance credentials"),
    VarSpec {
        name: CIM_S3_SECRET_ACCESS_KEY,
        default: None,
        expected: "a secret access key (required with CIM_S3_ACCESS_KEY_ID)",
        secret: Secrecy::Secret,
        help: "S3 secret key",
    },
    var(
        CIM_DOCUMENT_MAX_CONTENT_BYTES,
        Some("4294967296"),
        "bytes from 1 to 1099511627776",
        "largest document content (RESOURCE_EXHAUSTED / 413 above)",
    ),
    var(
        CIM_DOCUMENT_GC_GRACE_SECS,
        Some("3600"),
        "seconds from 1 to 2592000",
        "how long unreferenced content and abandoned uploads are kept",
    ),
    var(
        CIM_AGENT_LEASE_MS,
        Some("30000"),
        "milliseconds from 100 to 3600000, longer than CIM_AGENT_HEARTBEAT_INTERVAL_MS",
        "how long an assigned task is held without a heartbeat before it goes back to the queue",
    ),
    var(
        CIM_AGENT_HEARTBEAT_INTERVAL_MS,
        Some("5000"),
        "milliseconds from 10 to 600000",
        "how often connected workers are asked to send heartbeats",
    ),
    var(
        CIM_AGENT_HEARTBEAT_TIMEOUT_MS,
        Some("15000"),
        "milliseconds from 100 to 3600000, longer than CIM_AGENT_HEARTBEAT_INTERVAL_MS",
        "a worker stream silent this long is closed and its agent goes offline",
    ),
    var(
        CIM_AGENT_RESPONSE_TIMEOUT_MS,
        Some("300000"),
        "milliseconds from 1000 to 86400000",
        "a conversation response not ended by then is recorded as failed (timeout)",
    ),
    var(
        CIM_WORKFLOW_LEASE_MS,
        Some("30000"),
        "milliseconds from 100 to 3600000",
        "how long a replica holds a workflow instance it advances before another may take it over",
    ),
    var(
        CIM_WORKFLOW_POLL_MS,
        Some("100"),
        "milliseconds from 5 to 60000",
        "how often the workflow engine looks for due work (timers, retries, other replicas' commands)",
    ),
    var(
        CIM_WORKFLOW_CONCURRENCY,
        Some("16"),
        "a number from 1 to 1024",
        "workflow instances one replica advances at once",
    ),
    var(
        CIM_WORKFLOW_GRAPH_URLS,
        Some("http://127.0.0.1:50051"),
        "http:// or https:// URLs separated by commas (https: TLS, with CIM_TLS_CA_FILE)",
        "graph service instances workflow steps call",
    ),
    var(
        CIM_WORKFLOW_DOCUMENT_URLS,
        Some("http://127.0.0.1:50052"),
        "http:// or https:// URLs separated by commas (https: TLS, with CIM_TLS_CA_FILE)",
        "document service instances workflow steps call",
    ),
    var(
        CIM_WORKFLOW_AGENT_URLS,
        Some("http://127.0.0.1:50054"),
        "http:// or https:// URLs separated by commas (https: TLS, with CIM_TLS_CA_FILE)",
        "agent service instances workflow steps call (integration and agent_task steps)",
    ),
    var(
        CIM_WORKFLOW_SELF_URLS,
        Some("http://127.0.0.1:50053"),
        "http:// or https:// URLs separated by commas (https: TLS, with CIM_TLS_CA_FILE)",
        "workflow service instances an integration step of service `workflow` calls",
    ),
    var(
        CIM_WORKFLOW_CALL_TIMEOUT_MS,
        Some("10000"),
        "milliseconds from 10 to 600000",
        "how long a workflow step's call of another service may take before it is tried again",
    ),
    var(
        CIM_WEBHOOK_ATTEMPTS,
        Some("8"),
        "a number from 1 to 100",
        "deliveries of one event to one subscription before it goes to the dead-letter stream",
    ),
    var(
        CIM_WEBHOOK_BACKOFF_MS,
        Some("1000"),
        "milliseconds from 1 to 3600000",
        "the wait before a webhook delivery's second attempt; each later wait doubles, with jitter",
    ),
    var(
        CIM_WEBHOOK_BACKOFF_MAX_MS,
        Some("300000"),
        "milliseconds from 1 to 86400000",
        "the longest wait between two attempts of a webhook delivery (a Retry-After is honoured up to it)",
    ),
    var(
        CIM_WEBHOOK_TIMEOUT_MS,
        Some("10000"),
        "milliseconds from 10 to 600000",
        "how long one webhook call (and the validation handshake) may take",
    ),
    var(
        CIM_WEBHOOK_POLL_MS,
        Some("200"),
        "milliseconds from 5 to 60000",
        "how often the webhook sender looks for due deliveries (retries, other replicas' intake)",
    ),
    var(CIM_WEBHOOK_CONCURRENCY, Some("16"), "a number from 1 to 1024", "webhook calls one replica makes at once"),
    var(
        CIM_WEBHOOK_IDLE_EXIT_SECS,
        Some("0"),
        "seconds from 0 to 86400; 0: never",
        "a webhook process of its own exits (status 0) after this long with nothing to take in or deliver, to be started again on demand (`cim wake`, KEDA)",
    ),
    var(
        CIM_DATA_DIR,
        None,
        "an absolute directory path",
        "this user's local CIM state (the development signing secret); unset: $XDG_DATA_HOME/cim, else ~/.local/share/cim",
    ),
];

/// The deployable services and their defaults (docs/design.md#services-and-ports).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ServiceKind {
    Gateway,
    Websocket,
    Graph,
    Document,
    Workflow,
    Agent,
    Webhook,
}

impl ServiceKind {
    pub const ALL: [ServiceKind; 7] = [
        ServiceKind::Gateway,
        ServiceKind::Websocket,
        ServiceKind::Graph,
        ServiceKind::Document,
        ServiceKind::Workflow,
        ServiceKind::Agent,
        ServiceKind::Webhook,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ServiceKind::Gateway => "gateway",
            ServiceKind::Websocket => "websocket",
            ServiceKind::Graph => "graph",
            ServiceKind::Document => "document",
            ServiceKind::Workflow => "workflow",
            ServiceKind::Agent => "agent",
            ServiceKind::Webhook => "webhook",
        }
    }

    fn addr_var(self) -> String {
        format!("CIM_{}_ADDR", self.name().to_ascii_uppercase())
    }

    fn admin_addr_var(self) -> String {
        format!("CIM_{}_ADMIN_ADDR", self.name().to_ascii_uppercase())
    }
}

impl fmt::Display for ServiceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ServiceKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ServiceKind::ALL.into_iter().find(|k| k.name() == s).ok_or_else(|| {
            format!(
                "unknown service {s:?}; expected one of gateway, websocket, graph, document, workflow, agent, webhook"
            )
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Pretty,
}

/// A value that must not reach logs or error messages: a URL with a password (shown with the
/// password masked) or a key (never shown).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    value: String,
    is_url: bool,
}

impl Secret {
    /// A key or shared secret: its `Debug` shows nothing of it.
    pub fn new(s: impl Into<String>) -> Self {
        Self { value: s.into(), is_url: false }
    }

    /// A URL that may carry a password: its `Debug` masks only the password.
    pub fn url(s: impl Into<String>) -> Self {
        Self { value: s.into(), is_url: true }
    }

    pub fn expose(&self) -> &str {
        &self.value
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secrecy = if self.is_url { Secrecy::Url } else { Secrecy::Secret };
        f.write_str(&secrecy.show(&self.value))
    }
}

/// Query parameters whose value is masked: libpq's `password`/`sslpassword` and the like.
fn is_secret_param(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    ["pass", "pwd", "secret", "token"].iter().any(|s| key.contains(s))
}

/// The length of a leading `scheme:`, if the value starts with one.
fn scheme_len(value: &str) -> Option<usize> {
    let colon = value.find(':')?;
    let scheme = &value[..colon];
    let ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    ok.then_some(colon + 1)
}

/// A URL with only its password masked, also when it is malformed, so that a typo stays
/// visible: `postgres:/app:***@db/cim` shows the missing slash. The password is whatever follows
/// the user name's `:` up to the last `@` (a password typed raw may hold `/`, `?` or `@`); the
/// values of query parameters such as `password=` are masked too. A value with nothing of a URL
/// about it (no `:`, `/` or `@`) may be a password pasted into the wrong variable: it is not shown.
pub fn redact_url(url: &str) -> String {
    if !url.contains([':', '/', '@']) {
        return if url.is_empty() { String::new() } else { "<redacted: not a URL>".to_owned() };
    }
    // Query parameters first, so that a `password=` value holding an `@` cannot be taken for
    // the end of the user info.
    let masked_query = match url.split_once('?') {
        Some((head, query)) => {
            let params: Vec<String> = query
                .split('&')
                .map(|param| match param.split_once('=') {
                    Some((key, _)) if is_secret_param(key) => format!("{key}=***"),
                    _ => param.to_owned(),
                })
                .collect();
            format!("{head}?{}", params.join("&"))
        }
        None => url.to_owned(),
    };
    let Some(at) = masked_query.rfind('@') else {
        return masked_query;
    };
    let (userinfo, host) = masked_query.split_at(at);
    let mut start = scheme_len(userinfo).unwrap_or(0);
    start += userinfo[start..].len() - userinfo[start..].trim_start_matches('/').len();
    match userinfo[start..].find(':') {
        Some(colon) => format!("{}:***{host}", &userinfo[..start + colon]),
        None => masked_query,
    }
}

/// [`redact_url`] for each of several URLs separated by commas (CIM_NATS_URL).
pub fn redact_urls(urls: &str) -> String {
    urls.split(',').map(redact_url).collect::<Vec<_>>().join(",")
}

#[derive(Debug, Clone)]
pub struct Listen {
    pub addr: SocketAddr,
    pub admin_addr: SocketAddr,
}

/// How bearer tokens are verified (gateway and websocket share it).
#[derive(Debug, Clone)]
pub struct AuthSettings {
    pub hs256_secret: Option<Secret>,
    /// PEM public keys (key id: the file stem) and JWKS documents, re-read when they change.
    pub public_key_files: Vec<std::path::PathBuf>,
    pub jwks_url: Option<String>,
    /// How often the key files and the JWKS URL are checked again.
    pub keys_refresh: Duration,
    /// Clock skew allowed on `exp`, `nbf` and `iat`.
    pub leeway: Duration,
    /// The longest lifetime a token may claim.
    pub max_lifetime: Duration,
    pub issuer: String,
    pub audience: String,
}

impl AuthSettings {
    /// Whether any key to verify tokens with is configured.
    pub fn has_keys(&self) -> bool {
        self.hs256_secret.is_some() || !self.public_key_files.is_empty() || self.jwks_url.is_some()
    }

    /// Only an HS256 secret, every other setting at its default: for tests and tools.
    pub fn hs256(secret: &str) -> Self {
        Self {
            hs256_secret: Some(Secret::new(secret)),
            public_key_files: Vec::new(),
            jwks_url: None,
            keys_refresh: Duration::from_secs(60),
            leeway: Duration::from_secs(30),
            max_lifetime: Duration::from_secs(86_400),
            issuer: "cim".into(),
            audience: "cim".into(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct GatewaySettings {
    pub graph_urls: Vec<String>,
    pub document_urls: Vec<String>,
    pub agent_urls: Vec<String>,
    pub workflow_urls: Vec<String>,
    pub webhook_urls: Vec<String>,
    pub request_timeout: Duration,
    pub max_body_bytes: usize,
    /// 0: no limit.
    pub rate_limit_per_minute: u64,
    pub rate_limit_fail_open: bool,
    /// Tenants whose principals get their own per-minute limit instead of `rate_limit_per_minute`.
    pub rate_limit_tenants: Vec<(TenantId, u64)>,
    /// Zero: no caching.
    pub cache_ttl: Duration,
    pub session_ttl: Duration,
    /// Signs download links; `None`: derived from the HS256 token secret, if there is one.
    pub link_secret: Option<Secret>,
    /// Whether the session cookie is `Secure`.
    pub cookie_secure: bool,
    /// Failed authentications per client address per minute; 0: no limit.
    pub auth_failures_per_minute: u64,
    /// Trusted proxies in front: the client address is read this far from the end of
    /// X-Forwarded-For (0: the peer address).
    pub proxy_hops: usize,
    /// The websocket server for the console's live feed, when not `/ws` on the same origin.
    pub console_websocket_url: Option<String>,
    /// Grafana's base URL for the console's dashboard links.
    pub grafana_url: Option<String>,
    /// The tenants whose admins are operators (the operations view); empty: no one.
    pub operator_tenants: Vec<TenantId>,
    /// The websocket server's admin listener, whose readiness the operations view shows.
    pub websocket_admin_url: Option<String>,
}

#[derive(Debug, Clone)]
pub struct WebsocketSettings {
    pub max_connections: usize,
    pub max_subscriptions: usize,
    pub client_queue: usize,
    pub max_frame_bytes: usize,
    pub idle_timeout: Duration,
}

/// Where the object store keeps its objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ObjectLocation {
    /// A directory on local disk (created when missing).
    Local(std::path::PathBuf),
    /// An S3 bucket, objects under `prefix` (empty: the bucket's root).
    S3 { bucket: String, prefix: String },
}

/// The object store (document content): local disk by default, S3/MinIO in compose and k8s.
#[derive(Debug, Clone)]
pub struct ObjectStoreSettings {
    pub location: ObjectLocation,
    /// An S3-compatible endpoint, addressed path-style; `None`: AWS itself.
    pub s3_endpoint: Option<String>,
    pub s3_region: String,
    /// Static credentials; `None`: the AWS default chain (`AWS_*`, instance metadata).
    pub s3_credentials: Option<(String, Secret)>,
}

fn object_location(s: &str) -> Option<ObjectLocation> {
    if let Some(rest) = s.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        // S3's bucket naming rules, so a typo fails here and not at the first upload.
        let bucket_ok = (3..=63).contains(&bucket.len())
            && bucket.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
            && bucket.starts_with(|c: char| c.is_ascii_alphanumeric())
            && bucket.ends_with(|c: char| c.is_ascii_alphanumeric());
        let prefix = prefix.trim_matches('/');
        let prefix_ok = prefix.is_empty() || prefix.split('/').all(|seg| !matches!(seg, "" | "." | ".."));
        return (bucket_ok && prefix_ok)
            .then(|| ObjectLocation::S3 { bucket: bucket.to_owned(), prefix: prefix.to_owned() });
    }
    if let Some(path) = s.strip_prefix("file://") {
        return path.starts_with('/').then(|| ObjectLocation::Local(path.into()));
    }
    (!s.is_empty() && !s.contains("://")).then(|| ObjectLocation::Local(s.into()))
}

fn object_store_settings(r: &mut Reader<'_>) -> Option<ObjectStoreSettings> {
    let location = r.parse(CIM_OBJECT_STORE_URL, object_location);
    let s3_endpoint = r
        .optional(CIM_S3_ENDPOINT)
        .map(|_| r.parse(CIM_S3_ENDPOINT, |s| url_with_scheme(s, &["http", "https"]).map(str::to_owned)));
    let s3_region = r.parse(CIM_S3_REGION, |s| {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')).then(|| s.to_owned())
    });
    let key_id = r.optional(CIM_S3_ACCESS_KEY_ID);
    let secret = r.optional(CIM_S3_SECRET_ACCESS_KEY);
    let s3_credentials = match (key_id, secret) {
        (None, None) => Some(None),
        (Some(id), Some(secret)) => Some(Some((id.trim().to_owned(), Secret::new(secret)))),
        // One without the other is a half-configured deployment: name the missing one.
        (Some(_), None) => r.parse(CIM_S3_SECRET_ACCESS_KEY, |_| None::<Option<(String, Secret)>>),
        (None, Some(_)) => r.parse(CIM_S3_ACCESS_KEY_ID, |_| None::<Option<(String, Secret)>>),
    };
    Some(ObjectStoreSettings {
        location: location?,
        s3_endpoint: match s3_endpoint {
            Some(parsed) => Some(parsed?),
            None => None,
        },
        s3_region: s3_region?,
        s3_credentials: s3_credentials?,
    })
}

/// The document service's own limits.
#[derive(Debug, Clone)]
pub struct DocumentSettings {
    pub max_content_bytes: u64,
    /// Unreferenced content and staging leftovers older than this are collected. It must
    /// outlast the slowest upload: an upload's bytes are unreferenced until its event commits.
    pub gc_grace: Duration,
}

fn document_settings(r: &mut Reader<'_>) -> Option<DocumentSettings> {
    let max_content_bytes = r.parse(CIM_DOCUMENT_MAX_CONTENT_BYTES, int_in(1u64, 1 << 40));
    let gc_grace = r.parse(CIM_DOCUMENT_GC_GRACE_SECS, int_in(1u64, 2_592_000)).map(Duration::from_secs);
    Some(DocumentSettings { max_content_bytes: max_content_bytes?, gc_grace: gc_grace? })
}

/// The agent dispatcher's timings.
#[derive(Debug, Clone)]
pub struct AgentSettings {
    pub lease: Duration,
    pub heartbeat_interval: Duration,
    pub heartbeat_timeout: Duration,
    pub response_timeout: Duration,
}

fn agent_settings(r: &mut Reader<'_>) -> Option<AgentSettings> {
    let mut ms = |name: &str, lo: u64, hi: u64| r.parse(name, int_in(lo, hi)).map(Duration::from_millis);
    let lease = ms(CIM_AGENT_LEASE_MS, 100, 3_600_000);
    let heartbeat_interval = ms(CIM_AGENT_HEARTBEAT_INTERVAL_MS, 10, 600_000);
    let heartbeat_timeout = ms(CIM_AGENT_HEARTBEAT_TIMEOUT_MS, 100, 3_600_000);
    let response_timeout = ms(CIM_AGENT_RESPONSE_TIMEOUT_MS, 1_000, 86_400_000);
    let settings = AgentSettings {
        lease: lease?,
        heartbeat_interval: heartbeat_interval?,
        heartbeat_timeout: heartbeat_timeout?,
        response_timeout: response_timeout?,
    };
    // A heartbeat must be able to arrive before the lease lapses or the stream counts as silent.
    for (name, limit) in
        [(CIM_AGENT_LEASE_MS, settings.lease), (CIM_AGENT_HEARTBEAT_TIMEOUT_MS, settings.heartbeat_timeout)]
    {
        if limit <= settings.heartbeat_interval {
            r.errors.push(ConfigError {
                var: name.to_owned(),
                expected: spec(name).expected.to_owned(),
                got: format!("{:?}", limit.as_millis().to_string()),
            });
            return None;
        }
    }
    Some(settings)
}

/// The workflow engine's lease, polling and concurrency.
#[derive(Debug, Clone)]
pub struct WorkflowSettings {
    pub lease: Duration,
    pub poll: Duration,
    pub concurrency: usize,
    /// The services steps call.
    pub graph_urls: Vec<String>,
    pub document_urls: Vec<String>,
    pub agent_urls: Vec<String>,
    pub workflow_urls: Vec<String>,
    pub call_timeout: Duration,
}

fn workflow_settings(r: &mut Reader<'_>) -> Option<WorkflowSettings> {
    let lease = r.parse(CIM_WORKFLOW_LEASE_MS, int_in(100u64, 3_600_000)).map(Duration::from_millis);
    let poll = r.parse(CIM_WORKFLOW_POLL_MS, int_in(5u64, 60_000)).map(Duration::from_millis);
    let concurrency = r.parse(CIM_WORKFLOW_CONCURRENCY, int_in(1usize, 1024));
    let graph_urls = r.parse(CIM_WORKFLOW_GRAPH_URLS, upstream_urls);
    let document_urls = r.parse(CIM_WORKFLOW_DOCUMENT_URLS, upstream_urls);
    let agent_urls = r.parse(CIM_WORKFLOW_AGENT_URLS, upstream_urls);
    let workflow_urls = r.parse(CIM_WORKFLOW_SELF_URLS, upstream_urls);
    let call_timeout = r.parse(CIM_WORKFLOW_CALL_TIMEOUT_MS, int_in(10u64, 600_000)).map(Duration::from_millis);
    Some(WorkflowSettings {
        lease: lease?,
        poll: poll?,
        concurrency: concurrency?,
        graph_urls: graph_urls?,
        document_urls: document_urls?,
        agent_urls: agent_urls?,
        workflow_urls: workflow_urls?,
        call_timeout: call_timeout?,
    })
}

/// The webhook sender's retry budget, timeouts and pace.
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    pub attempts: u32,
    pub backoff: Duration,
    pub backoff_max: Duration,
    pub timeout: Duration,
    pub poll: Duration,
    pub concurrency: usize,
    /// `None`: runs until stopped.
    pub idle_exit: Option<Duration>,
}

fn webhook_settings(r: &mut Reader<'_>) -> Option<WebhookSettings> {
    let attempts = r.parse(CIM_WEBHOOK_ATTEMPTS, int_in(1u32, 100));
    let mut ms = |name: &str, lo: u64, hi: u64| r.parse(name, int_in(lo, hi)).map(Duration::from_millis);
    let backoff = ms(CIM_WEBHOOK_BACKOFF_MS, 1, 3_600_000);
    let backoff_max = ms(CIM_WEBHOOK_BACKOFF_MAX_MS, 1, 86_400_000);
    let timeout = ms(CIM_WEBHOOK_TIMEOUT_MS, 10, 600_000);
    let poll = ms(CIM_WEBHOOK_POLL_MS, 5, 60_000);
    let concurrency = r.parse(CIM_WEBHOOK_CONCURRENCY, int_in(1usize, 1024));
    let idle_exit = r.parse(CIM_WEBHOOK_IDLE_EXIT_SECS, int_in(0u64, 86_400));
    Some(WebhookSettings {
        attempts: attempts?,
        backoff: backoff?,
        backoff_max: backoff_max?,
        timeout: timeout?,
        poll: poll?,
        concurrency: concurrency?,
        idle_exit: idle_exit.map(|secs| (secs > 0).then(|| Duration::from_secs(secs)))?,
    })
}

/// Balanced upstream URLs: one or more, comma-separated, each http(s).
fn upstream_urls(s: &str) -> Option<Vec<String>> {
    let urls: Vec<String> = s.split(',').map(|u| u.trim().to_owned()).collect();
    urls.iter().all(|u| url_with_scheme(u, &["http", "https"]).is_some()).then_some(urls)
}

/// `tenant=limit,...`: each tenant once, each limit as CIM_GATEWAY_RATE_LIMIT_PER_MINUTE's.
fn tenant_limits(s: &str) -> Option<Vec<(TenantId, u64)>> {
    let pairs = s
        .split(',')
        .map(|pair| {
            let (tenant, limit) = pair.split_once('=')?;
            Some((TenantId::from_str(tenant.trim()).ok()?, int_in(0u64, 10_000_000)(limit.trim())?))
        })
        .collect::<Option<Vec<_>>>()?;
    let distinct: std::collections::HashSet<_> = pairs.iter().map(|(t, _)| t).collect();
    (distinct.len() == pairs.len()).then_some(pairs)
}

/// The settings only the edge services read.
#[derive(Debug, Clone)]
pub struct EdgeSettings {
    pub auth: AuthSettings,
    pub gateway: GatewaySettings,
    pub websocket: WebsocketSettings,
}

fn edge_settings(r: &mut Reader<'_>) -> Option<EdgeSettings> {
    let hs256_secret = r
        .optional(CIM_JWT_HS256_SECRET)
        .map(|_| r.parse(CIM_JWT_HS256_SECRET, |s| (s.len() >= 32).then(|| Secret::new(s))));
    let public_key_files = match r.optional(CIM_JWT_PUBLIC_KEY_FILE) {
        Some(_) => r.parse(CIM_JWT_PUBLIC_KEY_FILE, |s| {
            let paths: Vec<std::path::PathBuf> = s.split(',').map(|p| p.trim().into()).collect();
            paths.iter().all(|p| !p.as_os_str().is_empty()).then_some(paths)
        }),
        None => Some(Vec::new()),
    };
    let jwks_url = r
        .optional(CIM_JWT_JWKS_URL)
        .map(|_| r.parse(CIM_JWT_JWKS_URL, |s| url_with_scheme(s, &["http", "https"]).map(str::to_owned)));
    let keys_refresh = r.parse(CIM_JWT_KEYS_REFRESH_SECS, int_in(1u64, 86_400)).map(Duration::from_secs);
    let leeway = r.parse(CIM_JWT_LEEWAY_SECS, int_in(0u64, 300)).map(Duration::from_secs);
    let max_lifetime = r.parse(CIM_JWT_MAX_LIFETIME_SECS, int_in(60u64, 31_536_000)).map(Duration::from_secs);
    let issuer = r.parse(CIM_JWT_ISSUER, |s| (!s.is_empty()).then(|| s.to_owned()));
    let audience = r.parse(CIM_JWT_AUDIENCE, |s| (!s.is_empty()).then(|| s.to_owned()));
    let graph_urls = r.parse(CIM_GATEWAY_GRAPH_URLS, upstream_urls);
    let document_urls = r.parse(CIM_GATEWAY_DOCUMENT_URLS, upstream_urls);
    let agent_urls = r.parse(CIM_GATEWAY_AGENT_URLS, upstream_urls);
    let workflow_urls = r.parse(CIM_GATEWAY_WORKFLOW_URLS, upstream_urls);
    let webhook_urls = r.parse(CIM_GATEWAY_WEBHOOK_URLS, upstream_urls);
    let request_timeout = r.parse(CIM_GATEWAY_REQUEST_TIMEOUT_MS, int_in(10u64, 600_000)).map(Duration::from_millis);
    let max_body_bytes = r.parse(CIM_GATEWAY_MAX_BODY_BYTES, int_in(1024usize, 64 << 20));
    let rate_limit_per_minute = r.parse(CIM_GATEWAY_RATE_LIMIT_PER_MINUTE, int_in(0u64, 10_000_000));
    let rate_limit_fail_open = r.parse(CIM_GATEWAY_RATE_LIMIT_FAIL_OPEN, |s| s.parse::<bool>().ok());
    let rate_limit_tenants = match r.optional(CIM_GATEWAY_RATE_LIMIT_TENANTS) {
        Some(_) => r.parse(CIM_GATEWAY_RATE_LIMIT_TENANTS, tenant_limits),
        None => Some(Vec::new()),
    };
    let cache_ttl = r.parse(CIM_GATEWAY_CACHE_TTL_SECS, int_in(0u64, 86_400)).map(Duration::from_secs);
    let session_ttl = r.parse(CIM_GATEWAY_SESSION_TTL_SECS, int_in(60u64, 2_592_000)).map(Duration::from_secs);
    let link_secret = r
        .optional(CIM_GATEWAY_LINK_SECRET)
        .map(|_| r.parse(CIM_GATEWAY_LINK_SECRET, |s| (s.len() >= 32).then(|| Secret::new(s))));
    let cookie_secure = r.parse(CIM_GATEWAY_COOKIE_SECURE, |s| s.parse::<bool>().ok());
    let auth_failures_per_minute = r.parse(CIM_GATEWAY_AUTH_FAILURES_PER_MINUTE, int_in(0u64, 1_000_000));
    let proxy_hops = r.parse(CIM_GATEWAY_PROXY_HOPS, int_in(0usize, 10));
    let grafana_url = r
        .optional(CIM_GATEWAY_GRAFANA_URL)
        .map(|_| r.parse(CIM_GATEWAY_GRAFANA_URL, |s| url_with_scheme(s, &["http", "https"]).map(str::to_owned)));
    let operator_tenants = match r.optional(CIM_GATEWAY_OPERATOR_TENANTS) {
        Some(_) => r.parse(CIM_GATEWAY_OPERATOR_TENANTS, |s| {
            s.split(',').map(|t| TenantId::from_str(t.trim()).ok()).collect::<Option<Vec<_>>>()
        }),
        None => Some(Vec::new()),
    };
    let websocket_admin_url = r.optional(CIM_GATEWAY_WEBSOCKET_ADMIN_URL).map(|_| {
        r.parse(CIM_GATEWAY_WEBSOCKET_ADMIN_URL, |s| url_with_scheme(s, &["http", "https"]).map(str::to_owned))
    });
    let console_websocket_url = r.optional(CIM_GATEWAY_CONSOLE_WEBSOCKET_URL).map(|_| {
        r.parse(CIM_GATEWAY_CONSOLE_WEBSOCKET_URL, |s| {
            url_with_scheme(s, &["ws", "wss"]).filter(|u| !u.contains([';', ',', '\''])).map(str::to_owned)
        })
    });
    let max_connections = r.parse(CIM_WEBSOCKET_MAX_CONNECTIONS, int_in(1usize, 1_000_000));
    let max_subscriptions = r.parse(CIM_WEBSOCKET_MAX_SUBSCRIPTIONS, int_in(1usize, 10_000));
    let client_queue = r.parse(CIM_WEBSOCKET_CLIENT_QUEUE, int_in(1usize, 1_000_000));
    let max_frame_bytes = r.parse(CIM_WEBSOCKET_MAX_FRAME_BYTES, int_in(256usize, 16 << 20));
    let idle_timeout = r.parse(CIM_WEBSOCKET_IDLE_TIMEOUT_MS, int_in(1000u64, 3_600_000)).map(Duration::from_millis);
    Some(EdgeSettings {
        auth: AuthSettings {
            hs256_secret: match hs256_secret {
                Some(parsed) => Some(parsed?),
                None => None,
            },
            public_key_files: public_key_files?,
            jwks_url: match jwks_url {
                Some(parsed) => Some(parsed?),
                None => None,
            },
            keys_refresh: keys_refresh?,
            leeway: leeway?,
            max_lifetime: max_lifetime?,
            issuer: issuer?,
            audience: audience?,
        },
        gateway: GatewaySettings {
            graph_urls: graph_urls?,
            document_urls: document_urls?,
            agent_urls: agent_urls?,
            workflow_urls: workflow_urls?,
            webhook_urls: webhook_urls?,
            request_timeout: request_timeout?,
            max_body_bytes: max_body_bytes?,
            rate_limit_per_minute: rate_limit_per_minute?,
            rate_limit_fail_open: rate_limit_fail_open?,
            rate_limit_tenants: rate_limit_tenants?,
            cache_ttl: cache_ttl?,
            session_ttl: session_ttl?,
            link_secret: match link_secret {
                Some(parsed) => Some(parsed?),
                None => None,
            },
            cookie_secure: cookie_secure?,
            auth_failures_per_minute: auth_failures_per_minute?,
            proxy_hops: proxy_hops?,
            console_websocket_url: match console_websocket_url {
                Some(parsed) => Some(parsed?),
                None => None,
            },
            grafana_url: match grafana_url {
                Some(parsed) => Some(parsed?),
                None => None,
            },
            operator_tenants: operator_tenants?,
            websocket_admin_url: match websocket_admin_url {
                Some(parsed) => Some(parsed?),
                None => None,
            },
        },
        websocket: WebsocketSettings {
            max_connections: max_connections?,
            max_subscriptions: max_subscriptions?,
            client_queue: client_queue?,
            max_frame_bytes: max_frame_bytes?,
            idle_timeout: idle_timeout?,
        },
    })
}

#[derive(Debug, Clone)]
pub struct Config {
    pub log_format: LogFormat,
    pub log_filter: String,
    pub otlp_endpoint: Option<String>,
    pub database_url: Secret,
    pub database_max_connections: u32,
    pub nats_url: String,
    pub subject_prefix: SubjectPrefix,
    pub stream_replicas: usize,
    pub redis_url: Secret,
    pub connect_timeout: Duration,
    pub shutdown_grace: Duration,
    pub listen: BTreeMap<ServiceKind, Listen>,
    pub edge: EdgeSettings,
    pub objects: ObjectStoreSettings,
    pub document: DocumentSettings,
    pub agent: AgentSettings,
    pub workflow: WorkflowSettings,
    pub webhook: WebhookSettings,
    /// `CIM_SERVICE_TOKEN_SECRET`: the key that signs caller metadata between services
    /// ([`crate::identity`]); `None`: unsigned and unchecked.
    pub service_identity: Option<crate::identity::CallerKey>,
    /// This user's local state (CIM_DATA_DIR, else the XDG data directory); `None` without a home.
    pub data_dir: Option<std::path::PathBuf>,
    /// `CIM_TLS_*`: this service's certificate, its callers' CA, the CA of the services it calls.
    pub tls: crate::tls::TlsSettings,
    /// `CIM_REDIS_*_FILE`: the CA and client certificate of a `rediss://` connection.
    pub redis_tls: crate::redis::RedisTls,
    /// `CIM_NATS_*`: TLS and credentials for NATS.
    pub nats_security: crate::nats::NatsSecurity,
}

/// One bad variable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{var}: expected {expected}, got {got}")]
pub struct ConfigError {
    pub var: String,
    pub expected: String,
    /// The offending value, quoted, or redacted for secrets.
    pub got: String,
}

/// Every bad variable, one per line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.iter().map(|e| format!("invalid configuration: {e}")).collect::<Vec<_>>().join("\n"))]
pub struct ConfigErrors(pub Vec<ConfigError>);

struct Reader<'a> {
    lookup: &'a dyn Fn(&str) -> Option<String>,
    errors: Vec<ConfigError>,
    /// Secrets whose value came from their `_FILE`: not even a redacted form of them is shown.
    from_file: Vec<&'static str>,
}

impl Reader<'_> {
    fn raw(&self, name: &str) -> (String, &'static VarSpec) {
        let spec = spec(name);
        let value = (self.lookup)(name)
            .filter(|v| !v.is_empty())
            .or_else(|| spec.default.map(str::to_owned))
            .unwrap_or_default();
        (value, spec)
    }

    fn parse<T>(&mut self, name: &str, parse: impl FnOnce(&str) -> Option<T>) -> Option<T> {
        let (value, spec) = self.raw(name);
        let parsed = parse(value.trim());
        if parsed.is_none() {
            let got = if self.from_file.contains(&spec.name) {
                format!("the contents of {}", file_var(spec.name))
            } else {
                format!("{:?}", spec.secret.show(&value))
            };
            self.errors.push(ConfigError { var: name.to_owned(), expected: spec.expected.to_owned(), got });
        }
        parsed
    }

    fn optional(&mut self, name: &str) -> Option<String> {
        (self.lookup)(name).filter(|v| !v.trim().is_empty())
    }
}

fn spec(name: &str) -> &'static VarSpec {
    VARS.iter().find(|v| v.name == name).unwrap_or(&VARS[0])
}

fn url_with_scheme<'a>(value: &'a str, schemes: &[&str]) -> Option<&'a str> {
    let (scheme, rest) = value.split_once("://")?;
    let host_part = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    let ok = schemes.contains(&scheme)
        && !host_part.is_empty()
        && !host_part.starts_with(['/', ':', '?'])
        && !value.chars().any(char::is_whitespace);
    ok.then_some(value)
}

fn int_in<T: FromStr + PartialOrd>(lo: T, hi: T) -> impl FnOnce(&str) -> Option<T> {
    move |s| s.parse::<T>().ok().filter(|v| *v >= lo && *v <= hi)
}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigErrors> {
        Self::from_lookup(&|name| std::env::var(name).ok())
    }

    /// Reads from any source; tests pass a map.
    pub fn from_lookup(lookup: &dyn Fn(&str) -> Option<String>) -> Result<Self, ConfigErrors> {
        let mut errors = Vec::new();
        let files = secret_files(lookup, &mut errors);
        let with_files =
            |name: &str| files.iter().find(|(n, _)| *n == name).map(|(_, v)| v.clone()).or_else(|| lookup(name));
        let from_file = files.iter().map(|(n, _)| *n).collect();
        let mut r = Reader { lookup: &with_files, errors, from_file };
        let log_format = r.parse(CIM_LOG_FORMAT, |s| match s {
            "json" => Some(LogFormat::Json),
            "pretty" => Some(LogFormat::Pretty),
            _ => None,
        });
        let log_filter = r.parse(CIM_LOG, |s| tracing_subscriber::EnvFilter::try_new(s).ok().map(|_| s.to_owned()));
        let otlp_endpoint = match r.optional(CIM_OTLP_ENDPOINT) {
            Some(_) => r.parse(CIM_OTLP_ENDPOINT, |s| url_with_scheme(s, &["http", "https"]).map(str::to_owned)),
            None => None,
        };
        let database_url =
            r.parse(CIM_DATABASE_URL, |s| url_with_scheme(s, &["postgres", "postgresql"]).map(Secret::url));
        let database_max_connections = r.parse(CIM_DATABASE_MAX_CONNECTIONS, int_in(1u32, 1000));
        let nats_url = r.parse(CIM_NATS_URL, |s| {
            s.split(',')
                .all(|u| url_with_scheme(u.trim(), &["nats", "tls", "ws", "wss"]).is_some())
                .then(|| s.to_owned())
        });
        let subject_prefix = r.parse(CIM_SUBJECT_PREFIX, |s| s.parse().ok());
        let stream_replicas = r.parse(CIM_STREAM_REPLICAS, int_in(1usize, 5));
        let redis_url = r.parse(CIM_REDIS_URL, |s| url_with_scheme(s, &["redis", "rediss"]).map(Secret::url));
        let connect_timeout = r.parse(CIM_CONNECT_TIMEOUT_MS, int_in(100u64, 600_000)).map(Duration::from_millis);
        let shutdown_grace = r.parse(CIM_SHUTDOWN_GRACE_MS, int_in(0u64, 600_000)).map(Duration::from_millis);
        let mut listen = BTreeMap::new();
        for kind in ServiceKind::ALL {
            let addr = r.parse(&kind.addr_var(), |s| s.parse().ok());
            let admin_addr = r.parse(&kind.admin_addr_var(), |s| s.parse().ok());
            if let (Some(addr), Some(admin_addr)) = (addr, admin_addr) {
                listen.insert(kind, Listen { addr, admin_addr });
            }
        }
        let edge = edge_settings(&mut r);
        let objects = object_store_settings(&mut r);
        let document = document_settings(&mut r);
        let agent = agent_settings(&mut r);
        let workflow = workflow_settings(&mut r);
        let webhook = webhook_settings(&mut r);
        let service_identity = match r.optional(CIM_SERVICE_TOKEN_SECRET) {
            Some(_) => {
                r.parse(CIM_SERVICE_TOKEN_SECRET, |s| (s.len() >= 32).then(|| Some(crate::identity::CallerKey::new(s))))
            }
            None => Some(None),
        };
        let tls = tls::tls_settings(&mut r);
        let redis_tls = tls::redis_tls(&mut r, redis_url.as_ref(), tls.as_ref().map(|t| t.reload));
        let nats_security = tls::nats_security(&mut r);
        if let (Some(tls), Some(edge), Some(workflow)) = (&tls, &edge, &workflow) {
            let g = &edge.gateway;
            tls::https_needs_ca(
                &mut r,
                tls,
                &[
                    (CIM_GATEWAY_GRAPH_URLS, &g.graph_urls),
                    (CIM_GATEWAY_DOCUMENT_URLS, &g.document_urls),
                    (CIM_GATEWAY_AGENT_URLS, &g.agent_urls),
                    (CIM_GATEWAY_WORKFLOW_URLS, &g.workflow_urls),
                    (CIM_GATEWAY_WEBHOOK_URLS, &g.webhook_urls),
                    (CIM_WORKFLOW_GRAPH_URLS, &workflow.graph_urls),
                    (CIM_WORKFLOW_DOCUMENT_URLS, &workflow.document_urls),
                    (CIM_WORKFLOW_AGENT_URLS, &workflow.agent_urls),
                    (CIM_WORKFLOW_SELF_URLS, &workflow.workflow_urls),
                ],
            );
        }
        let security = tls.zip(redis_tls).zip(nats_security);
        let data_dir = match r.optional(CIM_DATA_DIR) {
            Some(_) => r.parse(CIM_DATA_DIR, |s| std::path::Path::new(s).is_absolute().then(|| Some(s.into()))),
            None => Some(default_data_dir(lookup)),
        };
        match (
            edge.zip(objects)
                .zip(data_dir)
                .zip(document)
                .zip(agent)
                .zip(workflow)
                .zip(webhook)
                .zip(service_identity)
                .zip(security),
            log_format,
            log_filter,
            database_url,
            database_max_connections,
            nats_url,
            subject_prefix,
            stream_replicas,
            redis_url,
            connect_timeout,
            shutdown_grace,
        ) {
            (
                Some((
                    (((((((edge, objects), data_dir), document), agent), workflow), webhook), service_identity),
                    ((tls, redis_tls), nats_security),
                )),
                Some(log_format),
                Some(log_filter),
                Some(database_url),
                Some(database_max_connections),
                Some(nats_url),
                Some(subject_prefix),
                Some(stream_replicas),
                Some(redis_url),
                Some(connect_timeout),
                Some(shutdown_grace),
            ) if r.errors.is_empty() => Ok(Config {
                log_format,
                log_filter,
                otlp_endpoint,
                database_url,
                database_max_connections,
                nats_url,
                subject_prefix,
                stream_replicas,
                redis_url,
                connect_timeout,
                shutdown_grace,
                listen,
                edge,
                objects,
                document,
                agent,
                workflow,
                webhook,
                service_identity,
                data_dir,
                tls,
                redis_tls,
                nats_security,
            }),
            _ => Err(ConfigErrors(r.errors)),
        }
    }

    pub fn listen(&self, kind: ServiceKind) -> &Listen {
        // Every kind is inserted by a successful parse.
        &self.listen[&kind]
    }

    /// `CIM_*` variables in the environment that no code reads: usually a typo.
    pub fn unknown_vars(env: impl IntoIterator<Item = String>) -> Vec<String> {
        env.into_iter()
            .filter(|k| {
                let known = VARS.iter().any(|v| v.name == k || (v.secret.is_secret() && file_var(v.name) == *k));
                k.starts_with("CIM_") && !k.starts_with("CIM_TEST_") && !known
            })
            .collect()
    }

    /// The development signing secret's file, in the data directory.
    pub fn local_secret_file(&self) -> Option<std::path::PathBuf> {
        self.data_dir.as_ref().map(|dir| dir.join(LOCAL_SECRET_FILE))
    }

    /// Each variable with its effective value, secrets redacted: for `cim config` and start-up logs.
    pub fn describe(lookup: &dyn Fn(&str) -> Option<String>) -> Vec<Described> {
        VARS.iter()
            .map(|v| {
                let set = lookup(v.name).filter(|s| !s.is_empty());
                let file = v.secret.is_secret().then(|| lookup(&file_var(v.name))).flatten().filter(|s| !s.is_empty());
                if let Some(path) = file {
                    // Nothing of the value, not even a masked form: only where it is read from.
                    return Described {
                        name: v.name,
                        origin: Origin::File,
                        shown: Some(format!("<read from {path}>")),
                    };
                }
                let (origin, value) = match set {
                    Some(value) => (Origin::Set, Some(value)),
                    None if v.name == CIM_DATA_DIR => match default_data_dir(lookup) {
                        Some(dir) => (Origin::Default, Some(dir.display().to_string())),
                        None => (Origin::Unset, None),
                    },
                    None => match v.default {
                        Some(value) => (Origin::Default, Some(value.to_owned())),
                        None => (Origin::Unset, None),
                    },
                };
                Described { name: v.name, origin, shown: value.map(|value| v.secret.show(&value)) }
            })
            .collect()
    }
}

/// Where a variable's effective value comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Set,
    /// A secret read from the file its `<NAME>_FILE` names.
    File,
    Default,
    /// Neither set nor defaulted: the feature it configures is off (or, for a secret, absent).
    Unset,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Set => "set",
            Origin::File => "file",
            Origin::Default => "default",
            Origin::Unset => "unset",
        }
    }
}

/// One line of `cim config`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Described {
    pub name: &'static str,
    pub origin: Origin,
    /// The value as it may be shown (secrets redacted); `None` when unset.
    pub shown: Option<String>,
}

/// The XDG data directory's `cim` (`$XDG_DATA_HOME/cim`, else `~/.local/share/cim`), as the
/// XDG base directory spec has it: a relative XDG_DATA_HOME is ignored.
fn default_data_dir(lookup: &dyn Fn(&str) -> Option<String>) -> Option<std::path::PathBuf> {
    let absolute = |name: &str| lookup(name).map(std::path::PathBuf::from).filter(|p| p.is_absolute());
    absolute("XDG_DATA_HOME")
        .or_else(|| absolute("HOME").map(|home| home.join(".local/share")))
        .map(|data| data.join("cim"))
}

mod files;
mod tls;
pub use files::file_var;
use files::secret_files;

#[cfg(test)]
mod tests;
