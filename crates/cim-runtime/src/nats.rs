//! NATS: a client that reconnects with capped exponential backoff, and its JetStream context;
//! and what `cim doctor` and the gateway's operations view read of a deployment's JetStream
//! ([`js_api`], [`cluster`], [`capacity`]), so both say the same thing about the same state.

use std::sync::Arc;
use std::time::Duration;

use async_nats::{Client, ConnectOptions};

use crate::error::RuntimeError;
use crate::health::CheckFn;

pub mod capacity;
pub mod cluster;
mod creds;
pub(crate) use creds::read as read_creds;

#[derive(Debug, Clone)]
pub struct NatsSettings {
    /// One URL or several separated by commas.
    pub url: String,
    pub client_name: String,
    pub connect_timeout: Duration,
    /// TLS and credentials (`CIM_NATS_*`); the default: none beyond the URL's.
    pub security: NatsSecurity,
}

/// How a NATS connection is secured beyond the URL's `user:password`.
#[derive(Debug, Clone, Default)]
pub struct NatsSecurity {
    /// The CA the server's certificate must come from; with it TLS is required.
    pub ca: Option<std::path::PathBuf>,
    /// The client certificate presented to the server (the server may require one).
    pub identity: Option<crate::tls::CertFiles>,
    /// A `.creds` file: a user JWT and its NKEY seed (decentralized authentication).
    pub creds_file: Option<std::path::PathBuf>,
    /// A user NKEY seed.
    pub nkey_seed: Option<crate::config::Secret>,
}

impl NatsSecurity {
    /// Connect options with these certificates and credentials, and the URL's `login`; errors
    /// name the file at fault. async-nats reads the CA and client certificate files again at
    /// every (re)connection, and so does the creds callback: rotated files reach the next
    /// connection without a restart.
    fn options(&self, login: Option<(String, String)>) -> Result<ConnectOptions, String> {
        let mut opts = match &self.creds_file {
            Some(path) => {
                // Read now so a bad file is named here and not as a refused login.
                creds::read(path).map_err(|what| format!("{}: {what}", path.display()))?;
                ConnectOptions::with_auth_callback(creds::authenticate(path.clone(), login))
            }
            // async-nats does not log in with the URL's user:password by itself.
            None => match login {
                Some((user, password)) => ConnectOptions::new().user_and_password(user, password),
                None => ConnectOptions::new(),
            },
        };
        if let Some(ca) = &self.ca {
            crate::tls::read_roots(ca).map_err(|e| e.to_string())?;
            opts = opts.add_root_certificates(ca.clone()).require_tls(true);
        }
        if let Some(files) = &self.identity {
            crate::tls::certified_key(files).map_err(|e| e.to_string())?;
            opts = opts.add_client_certificate(files.cert.clone(), files.key.clone()).require_tls(true);
        }
        if let Some(seed) = &self.nkey_seed {
            opts = opts.nkey(seed.expose().to_owned());
        }
        Ok(opts)
    }
}

/// Backoff between reconnect attempts: 100 ms doubling up to 5 s.
pub fn reconnect_delay(attempts: usize) -> Duration {
    let exp = attempts.saturating_sub(1).min(16) as u32;
    Duration::from_millis(100u64.saturating_mul(1u64 << exp)).min(Duration::from_secs(5))
}

/// Connects once (a missing server is a clear error at start-up); after that the client keeps
/// reconnecting forever and buffers publishes while it does.
pub async fn connect(settings: &NatsSettings) -> Result<Client, RuntimeError> {
    // Errors name the server without its password.
    let at = crate::config::redact_urls(&settings.url);
    let urls: Vec<async_nats::ServerAddr> = settings
        .url
        .split(',')
        .map(|u| u.trim().parse())
        .collect::<Result<_, _>>()
        .map_err(|e| RuntimeError::Nats { at: at.clone(), what: format!("bad URL: {e}") })?;
    let opts = settings
        .security
        .options(credentials(&settings.url))
        .map_err(|what| RuntimeError::Nats { at: at.clone(), what })?;
    let opts = opts
        .name(&settings.client_name)
        .connection_timeout(settings.connect_timeout)
        .max_reconnects(None)
        .reconnect_delay_callback(reconnect_delay)
        .event_callback(|event| async move {
            match event {
                async_nats::Event::Connected => tracing::info!("NATS connected"),
                async_nats::Event::Disconnected => tracing::warn!("NATS disconnected; reconnecting"),
                other => tracing::debug!(event = %other, "NATS event"),
            }
        });
    // The first connection tries the servers one after the other, each for up to the timeout: a
    // node whose packets are dropped (partitioned) uses all of its own, and the others must still
    // get theirs, or a service started during the partition would exit for a node it never needed.
    let servers = urls.len().max(1) as u32;
    let patience = settings.connect_timeout * servers + Duration::from_millis(500);
    let connecting = async_nats::connect_with_options(urls, opts);
    match tokio::time::timeout(patience, connecting).await {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(e)) => Err(RuntimeError::Nats { at, what: format!("cannot connect: {e}") }),
        Err(_) => Err(RuntimeError::Nats {
            at,
            what: format!("no answer within {:?} from any of its {servers} server(s)", patience),
        }),
    }
}

/// The `user:password` of the first URL that has one (percent-decoding is not needed for the
/// credentials our manifests generate, which are URL-safe).
fn credentials(urls: &str) -> Option<(String, String)> {
    urls.split(',').find_map(|u| {
        let rest = u.trim().split_once("://")?.1;
        let authority = rest.split(['/', '?']).next()?;
        let (userinfo, _) = authority.rsplit_once('@')?;
        let (user, password) = userinfo.split_once(':')?;
        Some((user.to_owned(), password.to_owned()))
    })
}

/// JetStream over `client`.
pub fn jetstream(client: Client) -> async_nats::jetstream::Context {
    async_nats::jetstream::new(client)
}

/// One JetStream API request, raw: async-nats' typed replies (`query_account`, ...) need fields
/// NATS 2.9 does not send. An error reply becomes its description.
pub async fn js_api(
    client: &Client,
    subject: &str,
    payload: &str,
    timeout: Duration,
) -> Result<serde_json::Value, String> {
    let request = client.request(subject.to_owned(), payload.to_owned().into());
    let reply = tokio::time::timeout(timeout, request)
        .await
        .map_err(|_| format!("no answer within {timeout:?}"))?
        .map_err(|e| e.to_string())?;
    let value: serde_json::Value = serde_json::from_slice(&reply.payload).map_err(|e| e.to_string())?;
    if let Some(err) = value.get("error") {
        return Err(err.get("description").and_then(|d| d.as_str()).unwrap_or("error").to_owned());
    }
    Ok(value)
}

/// Ready while the connection is up.
pub fn readiness(client: Client) -> CheckFn {
    Arc::new(move || {
        let state = client.connection_state();
        Box::pin(async move {
            match state {
                async_nats::connection::State::Connected => Ok(()),
                other => Err(format!("nats: {other:?}")),
            }
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        assert_eq!(reconnect_delay(1), Duration::from_millis(100));
        assert_eq!(reconnect_delay(2), Duration::from_millis(200));
        assert_eq!(reconnect_delay(4), Duration::from_millis(800));
        assert_eq!(reconnect_delay(100), Duration::from_secs(5));
    }

    /// One of the servers a service is given takes connections and never answers (a node cut
    /// off by a partition looks so from a host that reaches it): the first connection still
    /// reaches a server that answers, whichever order the servers are tried in (async-nats
    /// shuffles them, so four connections try the silent one first with odds 15 in 16).
    #[tokio::test]
    async fn a_server_that_never_answers_does_not_stop_the_first_connection() {
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let silent_at = silent.local_addr().unwrap();
        let held = tokio::spawn(async move {
            let mut kept = Vec::new();
            while let Ok((socket, _)) = silent.accept().await {
                kept.push(socket); // open, and not one byte: no INFO
            }
        });
        let live = std::env::var("CIM_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
        let settings = NatsSettings {
            url: format!("nats://{silent_at},{live}"),
            client_name: "silent-server-test".into(),
            connect_timeout: Duration::from_secs(1),
            security: NatsSecurity::default(),
        };
        for _ in 0..4 {
            let client = connect(&settings).await.expect("the server that answers");
            client.flush().await.unwrap();
        }
        held.abort();
    }

    #[test]
    fn credentials_come_from_the_url() {
        assert_eq!(credentials("nats://graph:s3cret@nats:4222"), Some(("graph".into(), "s3cret".into())));
        assert_eq!(credentials("nats://a:4222, nats://u:p@b:4222/x"), Some(("u".into(), "p".into())));
        assert_eq!(credentials("nats://127.0.0.1:4222"), None);
    }
}
