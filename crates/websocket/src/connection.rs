//! One websocket connection: authentication, the client's requests, heartbeats, limits, and a
//! writer task that owns the socket's sending half. Generic over the socket so it can be driven
//! by anything that is a `Stream` + `Sink` of axum messages.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use axum::extract::ws::{CloseFrame, Message};
use bytes::Bytes;
use cim_auth::{AuthError, Principal, Role, Verifier};
use cim_runtime::Shutdown;
use cim_runtime::config::WebsocketSettings;
use futures::{Sink, SinkExt, Stream, StreamExt};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::feed::{Ended, Hub, Subscription};
use crate::metrics::Metrics;
use crate::protocol::{
    ClientFrame, Code, Filter, Refusal, ServerFrame, check_id, close, close_reason, error_frame, event_frame,
};
use crate::queue::{ClientQueue, Outbound};
use crate::responses;

/// Frames the writer puts on the socket before one flush: bounds how long a burst for one client
/// delays its first frame's syscall, while still batching under load.
const WRITE_BATCH: usize = 64;

/// The limits of `CIM_WEBSOCKET_*` plus the timings derived from them.
#[derive(Debug, Clone)]
pub struct Settings {
    pub max_connections: usize,
    pub max_subscriptions: usize,
    pub client_queue: usize,
    pub max_frame_bytes: usize,
    pub idle_timeout: Duration,
    /// Server pings: a third of the idle timeout, so two may be lost before a live client is
    /// taken for idle.
    pub heartbeat: Duration,
    /// How long a client without a subprotocol token has to send `auth`.
    pub auth_timeout: Duration,
    /// How long a closing connection may take to deliver its close frame.
    pub close_grace: Duration,
}

impl Settings {
    pub fn from_config(ws: &WebsocketSettings) -> Settings {
        Settings {
            max_connections: ws.max_connections,
            max_subscriptions: ws.max_subscriptions,
            client_queue: ws.client_queue,
            max_frame_bytes: ws.max_frame_bytes,
            idle_timeout: ws.idle_timeout,
            heartbeat: ws.idle_timeout / 3,
            auth_timeout: ws.idle_timeout.min(Duration::from_secs(10)),
            close_grace: Duration::from_secs(10),
        }
    }
}

/// What every connection of one server shares.
#[derive(Debug)]
pub struct Shared {
    pub hub: Arc<Hub>,
    pub verifier: Verifier,
    /// Where the gateway keeps one-time tickets; `None`: tickets are refused.
    pub tickets: Option<cim_runtime::redis::Pool>,
    pub settings: Settings,
    pub metrics: Metrics,
    /// The service's shutdown: connections close with 1001 when it fires.
    pub shutdown: Shutdown,
    connections: AtomicUsize,
}

impl Shared {
    pub fn new(hub: Arc<Hub>, verifier: Verifier, settings: Settings, metrics: Metrics, shutdown: Shutdown) -> Self {
        Self { hub, verifier, tickets: None, settings, metrics, shutdown, connections: AtomicUsize::new(0) }
    }

    /// Accepts one-time tickets from the gateway, kept in this Redis.
    pub fn with_tickets(mut self, redis: cim_runtime::redis::Pool) -> Self {
        self.tickets = Some(redis);
        self
    }

    /// The principal an `auth` frame names: its JWT verified, or its ticket redeemed (once).
    async fn credential(&self, token: Option<String>, ticket: Option<String>) -> Result<Principal, AuthError> {
        match (token, ticket) {
            (Some(token), None) => self.verifier.verify(&token),
            (None, Some(ticket)) => match &self.tickets {
                Some(redis) => cim_auth::ticket::redeem(redis, &ticket).await,
                None => Err(AuthError::Rejected("this server does not accept tickets".into())),
            },
            _ => Err(AuthError::Malformed("auth carries either a token or a ticket".into())),
        }
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Acquire)
    }
}

/// A counted connection slot, released on drop.
#[derive(Debug)]
pub struct Slot(Arc<Shared>);

impl Slot {
    /// `None` at the connection limit.
    pub fn acquire(shared: &Arc<Shared>) -> Option<Slot> {
        if shared.connections.fetch_add(1, Ordering::AcqRel) >= shared.settings.max_connections {
            shared.connections.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        shared.metrics.connected.increment(1.0);
        Some(Slot(shared.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::AcqRel);
        self.0.metrics.connected.decrement(1.0);
    }
}

/// How the client proves who it is.
#[derive(Debug)]
pub enum Credentials {
    /// A `bearer.<token>` subprotocol, already verified during the upgrade.
    Subprotocol(Result<Principal, AuthError>),
    /// Expect `{"type":"auth","token":...}` as the first message.
    FirstMessage,
}

/// How a session ended: the close frame to send.
struct Closing {
    code: u16,
    reason: String,
}

impl Closing {
    fn new(code: u16, reason: impl AsRef<str>) -> Self {
        Self { code, reason: close_reason(reason.as_ref()) }
    }
}

/// Serves one upgraded connection until it closes.
pub async fn serve<S>(socket: S, slot: Slot, credentials: Credentials)
where
    S: Stream<Item = Result<Message, axum::Error>> + Sink<Message, Error = axum::Error> + Send + 'static,
{
    let shared = slot.0.clone();
    let (sink, mut stream) = socket.split();
    let (queue, rx) = ClientQueue::new(shared.settings.client_queue);
    let mut writer = tokio::spawn(write_loop(sink, rx, queue.clone(), shared.metrics.clone()));

    let closing = session(&mut stream, &shared, &queue, credentials).await;
    if closing.code == close::LAGGING {
        shared.metrics.lagging_closed.increment(1);
    }
    queue.close(closing.code, closing.reason);
    // A client that stopped reading may never take the close frame: then the socket is dropped.
    if tokio::time::timeout(shared.settings.close_grace, &mut writer).await.is_err() {
        writer.abort();
        return;
    }
    // Lets the client's answering close frame arrive, which completes the closing handshake.
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while let Some(Ok(m)) = stream.next().await {
            if matches!(m, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
    drop(slot);
}

/// Closes at once: for connections refused before a session starts.
pub async fn refuse<S>(mut socket: S, code: u16, reason: &str)
where
    S: Sink<Message, Error = axum::Error> + Unpin,
{
    let frame = Message::Close(Some(CloseFrame { code, reason: close_reason(reason).into() }));
    let _ = tokio::time::timeout(Duration::from_secs(2), socket.send(frame)).await;
}

async fn session<R>(stream: &mut R, shared: &Arc<Shared>, queue: &Arc<ClientQueue>, credentials: Credentials) -> Closing
where
    R: Stream<Item = Result<Message, axum::Error>> + Unpin,
{
    let settings = &shared.settings;
    let principal = match authenticate(stream, shared, queue, credentials).await {
        Ok(p) => p,
        Err(closing) => return closing,
    };
    let welcome = ServerFrame::Welcome {
        subject: &principal.subject,
        tenant: principal.tenant.to_string(),
        max_subscriptions: settings.max_subscriptions,
        max_frame_bytes: settings.max_frame_bytes,
        heartbeat_ms: settings.heartbeat.as_millis() as u64,
        expires_at: principal.expires_at,
    };
    let _ = queue.push(Outbound::Control(welcome.to_json()));

    let (ended, mut ended_rx) = mpsc::unbounded_channel::<Ended>();
    let mut state = State {
        shared: shared.clone(),
        queue: queue.clone(),
        principal,
        subs: HashMap::new(),
        follows: HashMap::new(),
        ended,
    };
    let idle = tokio::time::sleep(settings.idle_timeout);
    tokio::pin!(idle);
    let expires_at = state.principal.expires_at;
    let expiry = tokio::time::sleep_until(deadline(expires_at));
    tokio::pin!(expiry);
    let mut beat = tokio::time::interval_at(Instant::now() + settings.heartbeat, settings.heartbeat);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    let closing = loop {
        tokio::select! {
            biased;
            _ = queue.doomed().cancelled() => {
                break if queue.is_lagging() {
                    Closing::new(close::LAGGING, format!(
                        "lagging: more than {} frames queued; reconnect and resume from your last position",
                        settings.client_queue
                    ))
                } else {
                    Closing::new(close::GOING_AWAY, "write failed")
                };
            }
            _ = shared.shutdown.wait() => {
                break Closing::new(close::GOING_AWAY, "server shutting down; reconnect and resume from your last position");
            }
            Some(ended) = ended_rx.recv() => {
                if state.subs.get(&ended.id).is_some_and(|s| s.key == ended.key) {
                    state.subs.remove(&ended.id);
                }
            }
            _ = &mut expiry => {
                let message = "the token expired; reconnect with a fresh token (or send auth with one before it expires) and resume from your last position";
                let _ = queue.push(Outbound::Control(error_frame(None, &Refusal::new(Code::TokenExpired, message))));
                break Closing::new(close::UNAUTHENTICATED, "token_expired: the token expired");
            }
            _ = &mut idle => {
                break Closing::new(close::IDLE, format!("idle: nothing received for {} ms", settings.idle_timeout.as_millis()));
            }
            _ = beat.tick() => {
                let _ = queue.push(Outbound::Ping);
            }
            frame = stream.next() => {
                idle.as_mut().reset(Instant::now() + settings.idle_timeout);
                match frame {
                    None => break Closing::new(close::NORMAL, ""),
                    Some(Err(e)) => break read_error(&e),
                    Some(Ok(message)) => {
                        let before = state.principal.expires_at;
                        if let Some(closing) = state.on_message(message).await {
                            break closing;
                        }
                        if state.principal.expires_at != before {
                            expiry.as_mut().reset(deadline(state.principal.expires_at));
                        }
                    }
                }
            }
        }
    };
    for (_, sub) in state.subs.drain() {
        shared.hub.unsubscribe(sub).await;
    }
    closing
}

/// When a token expiring at `expires_at` (Unix seconds) ends its connection; far away without one.
fn deadline(expires_at: Option<u64>) -> Instant {
    let left = match expires_at {
        Some(exp) => {
            let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
            Duration::from_secs(exp).saturating_sub(now)
        }
        None => Duration::from_secs(365 * 86_400),
    };
    Instant::now() + left
}

fn read_error(e: &axum::Error) -> Closing {
    let text = e.to_string();
    // tungstenite's hard message limit (set above ours, so this is rare).
    if text.contains("too long") || text.contains("too big") {
        Closing::new(close::TOO_BIG, format!("frame too large: {text}"))
    } else {
        Closing::new(close::PROTOCOL_ERROR, format!("protocol error: {text}"))
    }
}

fn too_big(limit: usize, size: usize) -> Closing {
    Closing::new(close::TOO_BIG, format!("frame of {size} bytes exceeds the limit of {limit} bytes"))
}

async fn authenticate<R>(
    stream: &mut R,
    shared: &Shared,
    queue: &ClientQueue,
    credentials: Credentials,
) -> Result<Principal, Closing>
where
    R: Stream<Item = Result<Message, axum::Error>> + Unpin,
{
    let settings = &shared.settings;
    let verified = match credentials {
        Credentials::Subprotocol(result) => result,
        Credentials::FirstMessage => {
            let first = tokio::time::timeout(settings.auth_timeout, async {
                loop {
                    let next = tokio::select! {
                        next = stream.next() => next,
                        _ = shared.shutdown.wait() => return Err(Closing::new(close::GOING_AWAY, "server shutting down")),
                    };
                    match next {
                        None | Some(Ok(Message::Close(_))) => return Err(Closing::new(close::NORMAL, "")),
                        Some(Err(e)) => return Err(read_error(&e)),
                        Some(Ok(Message::Text(t))) if t.len() > settings.max_frame_bytes => {
                            return Err(too_big(settings.max_frame_bytes, t.len()));
                        }
                        Some(Ok(Message::Text(t))) => return Ok(t),
                        Some(Ok(Message::Binary(_))) => return Ok("binary".into()),
                        Some(Ok(_)) => {}
                    }
                }
            })
            .await;
            match first {
                Err(_) => Err(AuthError::Missing),
                Ok(Err(closing)) => return Err(closing),
                Ok(Ok(text)) => match serde_json::from_str::<ClientFrame>(&text) {
                    Ok(ClientFrame::Auth { token, ticket }) => shared.credential(token, ticket).await,
                    _ => Err(AuthError::Malformed(
                        "the first message must be {\"type\":\"auth\",\"token\":\"<jwt>\"} \
                         (or \"ticket\":\"<ticket>\") unless the token is offered as subprotocol bearer.<jwt>"
                            .into(),
                    )),
                },
            }
        }
    };
    let refuse = |code: u16, error_code: Code, metric: &'static str, message: String| {
        shared.metrics.rejected(metric);
        let _ = queue.push(Outbound::Control(error_frame(None, &Refusal::new(error_code, message.clone()))));
        Closing::new(code, format!("{}: {message}", error_code.as_str()))
    };
    match verified {
        Ok(p) if p.can(Role::Reader) => Ok(p),
        Ok(_) => Err(refuse(
            close::FORBIDDEN,
            Code::PermissionDenied,
            "forbidden",
            "reading events needs the reader role".into(),
        )),
        Err(AuthError::Missing) => Err(refuse(
            close::UNAUTHENTICATED,
            Code::Unauthenticated,
            "unauthenticated",
            format!("no auth message within {} ms", settings.auth_timeout.as_millis()),
        )),
        Err(e) => Err(refuse(close::UNAUTHENTICATED, Code::Unauthenticated, "unauthenticated", e.to_string())),
    }
}

/// A connection's session after authentication.
struct State {
    shared: Arc<Shared>,
    queue: Arc<ClientQueue>,
    principal: Principal,
    subs: HashMap<String, Subscription>,
    /// `follow_responses` subscriptions, sharing the ids and the limit with `subs`.
    follows: HashMap<String, responses::Following>,
    ended: mpsc::UnboundedSender<Ended>,
}

impl State {
    async fn on_message(&mut self, message: Message) -> Option<Closing> {
        let limit = self.shared.settings.max_frame_bytes;
        match message {
            Message::Text(text) => {
                if text.len() > limit {
                    return Some(too_big(limit, text.len()));
                }
                self.on_text(text.as_str()).await;
            }
            Message::Binary(data) => {
                if data.len() > limit {
                    return Some(too_big(limit, data.len()));
                }
                self.refuse(
                    None,
                    Refusal::new(Code::BadFrame, "binary frames are not supported; send JSON text frames"),
                );
            }
            Message::Close(_) => return Some(Closing::new(close::NORMAL, "")),
            Message::Ping(_) | Message::Pong(_) => {}
        }
        None
    }

    fn refuse(&self, id: Option<&str>, refusal: Refusal) {
        if refusal.code != Code::Unavailable {
            self.shared.metrics.bad_frames.increment(1);
        }
        let _ = self.queue.push(Outbound::Control(error_frame(id, &refusal)));
    }

    async fn on_text(&mut self, text: &str) {
        let frame = match serde_json::from_str::<ClientFrame>(text) {
            Ok(f) => f,
            Err(e) => {
                let mut message = e.to_string();
                message.truncate(300);
                return self.refuse(None, Refusal::new(Code::BadFrame, message));
            }
        };
        match frame {
            ClientFrame::Auth { token, ticket } => {
                let verified = self.shared.credential(token, ticket).await;
                self.reauthenticate(verified)
            }
            ClientFrame::Subscribe { id, filter, from } => {
                if let Err(r) = self.subscribe(&id, Filter::parse(filter), from).await {
                    let shown = check_id(&id).is_ok().then_some(id.as_str());
                    self.refuse(shown, r);
                }
            }
            ClientFrame::FollowResponses { id, agent_id } => {
                if let Err(r) = self.follow(&id, agent_id.as_deref()).await {
                    let shown = check_id(&id).is_ok().then_some(id.as_str());
                    self.refuse(shown, r);
                }
            }
            ClientFrame::Unsubscribe { id } if self.follows.remove(&id).is_some() => {
                let _ = self.queue.push(Outbound::Control(ServerFrame::Unsubscribed { id: &id }.to_json()));
            }
            ClientFrame::Unsubscribe { id } => match self.subs.remove(&id) {
                Some(sub) => {
                    self.shared.hub.unsubscribe(sub).await;
                    let _ = self.queue.push(Outbound::Control(ServerFrame::Unsubscribed { id: &id }.to_json()));
                }
                None => {
                    let shown = check_id(&id).is_ok().then_some(id.as_str());
                    self.refuse(shown, Refusal::new(Code::UnknownSubscription, "no active subscription with this id"))
                }
            },
            ClientFrame::Ping {} => {
                let _ = self.queue.push(Outbound::Control(ServerFrame::Pong {}.to_json()));
            }
            ClientFrame::Pong {} => {}
        }
    }

    /// A fresh token or ticket extends the connection's life; it must name the same subject and
    /// tenant (subscriptions were authorised for them). A refused one leaves the current one in
    /// force.
    fn reauthenticate(&mut self, verified: Result<Principal, AuthError>) {
        match verified {
            Ok(p) if p.subject != self.principal.subject || p.tenant != self.principal.tenant => self.refuse(
                None,
                Refusal::new(
                    Code::AlreadyAuthenticated,
                    "this connection is authenticated for another subject or tenant; open a new connection for this token",
                ),
            ),
            Ok(p) if !p.can(Role::Reader) => {
                self.refuse(None, Refusal::new(Code::PermissionDenied, "reading events needs the reader role"))
            }
            Ok(p) => {
                self.principal = p;
                let reply = ServerFrame::Reauthenticated { expires_at: self.principal.expires_at };
                let _ = self.queue.push(Outbound::Control(reply.to_json()));
            }
            Err(e) => self.refuse(
                None,
                Refusal::new(Code::Unauthenticated, format!("{e}; the connection keeps its current token")),
            ),
        }
    }

    /// A new subscription id: well formed, not in use, within the connection's limit.
    fn check_new(&self, id: &str) -> Result<(), Refusal> {
        check_id(id)?;
        if self.subs.contains_key(id) || self.follows.contains_key(id) {
            return Err(Refusal::new(Code::DuplicateSubscription, "a subscription with this id is active"));
        }
        let max = self.shared.settings.max_subscriptions;
        if self.subs.len() + self.follows.len() >= max {
            return Err(Refusal::new(
                Code::TooManySubscriptions,
                format!("at most {max} subscriptions per connection"),
            ));
        }
        Ok(())
    }

    async fn follow(&mut self, id: &str, agent: Option<&str>) -> Result<(), Refusal> {
        self.check_new(id)?;
        let (nats, prefix) = self.shared.hub.nats();
        let following = responses::follow(&nats, prefix, &self.queue, self.principal.tenant, id, agent).await?;
        self.follows.insert(id.to_owned(), following);
        Ok(())
    }

    async fn subscribe(&mut self, id: &str, filter: Result<Filter, Refusal>, from: Option<u64>) -> Result<(), Refusal> {
        self.check_new(id)?;
        let filter = filter?;
        let sub = self.shared.hub.subscribe(&self.queue, self.principal.tenant, id, filter, from, &self.ended).await?;
        self.subs.insert(id.to_owned(), sub);
        Ok(())
    }
}

async fn write_loop<W>(
    mut sink: W,
    mut rx: mpsc::UnboundedReceiver<Outbound>,
    queue: Arc<ClientQueue>,
    metrics: Metrics,
) where
    W: Sink<Message, Error = axum::Error> + Unpin,
{
    let mut occurred: Vec<SystemTime> = Vec::with_capacity(WRITE_BATCH);
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        let mut written = 0;
        while let Some(item) = next.take() {
            let message = match item {
                Outbound::Event { id_json, event } => {
                    queue.popped();
                    // A lagging client is about to be closed: what is queued for it is dropped.
                    if queue.is_lagging() {
                        None
                    } else {
                        occurred.push(event.occurred_at);
                        Some(Message::Text(event.frames.get_or_format(&id_json, || {
                            event_frame(&id_json, event.position, event.traceparent.as_deref(), &event.envelope)
                        })))
                    }
                }
                Outbound::Control(text) => {
                    queue.popped();
                    Some(Message::Text(text.into()))
                }
                Outbound::Ping => {
                    queue.popped();
                    Some(Message::Ping(Bytes::new()))
                }
                Outbound::Close { code, reason } => {
                    let frame = Message::Close(Some(CloseFrame { code, reason: reason.into() }));
                    // After the client closed first, tungstenite refuses a second close frame but
                    // still has its automatic answer to flush.
                    if sink.send(frame).await.is_err() {
                        let _ = sink.flush().await;
                    }
                    return;
                }
            };
            if let Some(message) = message {
                if sink.feed(message).await.is_err() {
                    queue.doom();
                    return;
                }
                written += 1;
            }
            if written < WRITE_BATCH {
                next = rx.try_recv().ok();
            }
        }
        if sink.flush().await.is_err() {
            queue.doom();
            return;
        }
        if !occurred.is_empty() {
            let now = SystemTime::now();
            metrics.frames_sent.increment(occurred.len() as u64);
            for t in occurred.drain(..) {
                metrics.latency.record(now.duration_since(t).unwrap_or_default().as_secs_f64());
            }
        }
    }
}
