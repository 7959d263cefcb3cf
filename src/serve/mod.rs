//! The local operator API (`taskmail serve`): HTTP and WebSocket on loopback, compatible with
//! the ASMTP operator interface (`shared/protocol/asmtp.md`), one bearer token per local agent.
//!
//! ```text
//! POST   /messages              send an envelope (202; idempotent on its id)
//! GET    /messages/{id}         one envelope with its body; marks it read
//! GET    /messages?ids=a,b      up to 100 envelopes with bodies (not marked read)
//! GET    /mailbox               push frames by cursor: after_created_at + after_envelope_id,
//!                               limit 1..1000, order asc|desc, unread=true; next_cursor
//! POST   /mailbox/read          {"ids": [...]}: mark read
//! WS     /connect               live frames {"type":"envelope.notify",...} and
//!                               {"type":"monitor.fact",...}; Bearer header or ?token=
//! GET    /monitor               persisted delivery facts of envelopes sent with a monitor
//! GET|POST|DELETE /allowlist    who may reach the agent (trust grants, state active)
//! GET|POST|DELETE /blocks       who may never reach it (trust grants, state blocked)
//! GET    /healthz               no token: ok, and whether each mail server answers
//! ```
//!
//! Every error is `{"error": {"code", "message"}}` ([`error::ApiError`]). Each agent's
//! [`Mailbox`] runs its `follow` loop for as long as the server runs, so frames reach WebSocket
//! clients live; a client that reconnects catches up with `GET /mailbox` from its cursor.
//! Every request maps onto the mail server (SMTP submission, JMAP); the local store holds only
//! the index, the cursor and the grants.
//!
//! Layer: uses mailbox, store, trust, config; `cli` uses it.

pub mod auth;
pub mod error;
mod health;
mod messages;
pub mod policy;
mod ws;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::routing::{get, post};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{Account, Config, SecretError};
use crate::mailbox::{Mailbox, MailboxError};
use crate::store::Store;
use auth::Tokens;
use error::ApiError;

/// Why the operator API could not start or stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// `[serve.agents]` is empty.
    #[error("cannot serve without agents: add a [serve.agents.NAME] table with account and token")]
    NoAgents,
    /// A token could not be resolved.
    #[error("cannot read the token of agent '{agent}'")]
    Token {
        /// The agent name.
        agent: String,
        /// Why.
        #[source]
        source: SecretError,
    },
    /// Two agents share a token.
    #[error("cannot use the tokens: {0}")]
    SameToken(String),
    /// An agent's mailbox could not be opened.
    #[error("cannot open the mailbox of agent '{agent}'")]
    Mailbox {
        /// The agent name.
        agent: String,
        /// Why.
        #[source]
        source: MailboxError,
    },
    /// The local store could not be opened.
    #[error("cannot open the local store")]
    Store(#[source] crate::store::StoreError),
    /// The listen address is reachable from other machines and `allow-remote` is off.
    #[error(
        "cannot listen on {0}: other machines could reach the operator API (set [serve] allow-remote = true behind a TLS proxy)"
    )]
    Remote(SocketAddr),
    /// A startup task failed (a bug).
    #[error("cannot start the operator API: {0}")]
    Internal(String),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP server failed.
    #[error("the HTTP server failed")]
    Serve(#[source] std::io::Error),
}

impl ServeError {
    /// The process exit code (README list): 2 for config problems, 69 when the address is taken.
    pub fn exit_code(&self) -> u8 {
        match self {
            ServeError::NoAgents
            | ServeError::Token { .. }
            | ServeError::SameToken(_)
            | ServeError::Remote(_) => 2,
            ServeError::Mailbox { source, .. } => source.exit_code(),
            ServeError::Bind { .. } => 69,
            ServeError::Store(_) | ServeError::Serve(_) | ServeError::Internal(_) => 1,
        }
    }
}

/// How one agent's follow loop is doing (for `/healthz`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct FollowState {
    /// The last error of the loop, cleared when it runs again.
    pub(crate) last_error: Option<String>,
    /// How many times the loop was restarted after an error.
    pub(crate) restarts: u64,
}

/// One local agent.
#[derive(Debug)]
pub(crate) struct AgentState {
    /// The `[serve.agents.NAME]` name.
    pub(crate) name: String,
    /// Its account.
    pub(crate) account: Account,
    /// Its mailbox.
    pub(crate) mailbox: Arc<Mailbox>,
    /// Its follow loop.
    pub(crate) follow: Mutex<FollowState>,
}

/// What every handler shares.
#[derive(Debug)]
pub(crate) struct AppState {
    pub(crate) agents: Vec<AgentState>,
    pub(crate) tokens: Tokens,
    pub(crate) body_limit: usize,
    pub(crate) config: Config,
    /// The store the grants live in (the mailboxes keep their own handles).
    pub(crate) store: Arc<Mutex<Store>>,
    /// Flips to true when the server stops (WebSocket loops end on it).
    pub(crate) shutdown: watch::Receiver<bool>,
}

type Shared = Arc<AppState>;

/// The authenticated caller: an index into [`AppState::agents`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Caller(pub(crate) usize);

impl FromRequestParts<Shared> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Shared) -> Result<Self, ApiError> {
        // NOTE: a token in a URL ends up in proxies' logs; it is accepted only where browsers
        // cannot set headers, the WebSocket upgrade.
        let query_allowed = parts.uri.path() == "/connect";
        let token = auth::presented(&parts.headers, parts.uri.query(), query_allowed)?;
        state.tokens.find(&token).map(Caller).ok_or_else(|| {
            ApiError::unauthorized("unknown token: use the token of a [serve.agents.NAME] table")
        })
    }
}

impl AppState {
    pub(crate) fn agent(&self, caller: Caller) -> &AgentState {
        &self.agents[caller.0]
    }
}

/// The router of the API over `state`.
pub(crate) fn router(state: Shared) -> Router {
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/messages", post(messages::send).get(messages::get_many))
        .route("/messages/{id}", get(messages::get_one))
        .route("/mailbox", get(messages::list))
        .route("/mailbox/read", post(messages::mark_read))
        .route("/monitor", get(messages::monitor_facts))
        .route("/connect", get(ws::connect))
        .route(
            "/allowlist",
            get(policy::list_allowed)
                .post(policy::allow)
                .delete(policy::disallow),
        )
        .route(
            "/blocks",
            get(policy::list_blocked)
                .post(policy::block)
                .delete(policy::unblock),
        )
        .fallback(|| async {
            ApiError::not_found("no such endpoint: see README 'The local operator API'")
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                axum::http::StatusCode::METHOD_NOT_ALLOWED,
                "METHOD_NOT_ALLOWED",
                "this endpoint does not take that method: see README 'The local operator API'",
            )
        })
        .with_state(state)
}

/// A running operator API: its address, its follow loops, and a way to stop it.
#[derive(Debug)]
pub struct Server {
    local_addr: SocketAddr,
    stop: watch::Sender<bool>,
    http: JoinHandle<Result<(), ServeError>>,
    followers: Vec<JoinHandle<()>>,
    agents: Vec<(String, String, String)>,
}

impl Server {
    /// Resolves the tokens, opens every agent's mailbox, binds `listen` (default
    /// `[serve] listen`; port 0 picks a free one) and starts serving and following.
    pub async fn start(config: &Config, listen: Option<SocketAddr>) -> Result<Server, ServeError> {
        let serve = config.serve();
        if serve.agents.is_empty() {
            return Err(ServeError::NoAgents);
        }
        let addr = listen.unwrap_or(serve.listen);
        if !addr.ip().is_loopback() && !serve.allow_remote {
            return Err(ServeError::Remote(addr));
        }
        let mut secrets = Vec::new();
        for agent in &serve.agents {
            let secret = agent.token.clone();
            let resolved = tokio::task::spawn_blocking(move || secret.resolve())
                .await
                .map_err(|e| ServeError::Internal(format!("token task: {e}")))?
                .map_err(|source| ServeError::Token {
                    agent: agent.name.clone(),
                    source,
                })?;
            secrets.push(resolved);
        }
        let tokens = Tokens::new(&secrets).map_err(ServeError::SameToken)?;
        drop(secrets);
        let mut agents = Vec::new();
        for agent in &serve.agents {
            let mailbox = Mailbox::open(config, &agent.account)
                .await
                .map_err(|source| ServeError::Mailbox {
                    agent: agent.name.clone(),
                    source,
                })?;
            let account =
                config
                    .account(&agent.account)
                    .cloned()
                    .ok_or_else(|| ServeError::Mailbox {
                        agent: agent.name.clone(),
                        source: MailboxError::Invalid(format!("no account '{}'", agent.account)),
                    })?;
            agents.push(AgentState {
                name: agent.name.clone(),
                account,
                mailbox: Arc::new(mailbox),
                follow: Mutex::new(FollowState::default()),
            });
        }
        let path = config.state_dir().join(crate::store::FILE_NAME);
        let store = tokio::task::spawn_blocking(move || Store::open(&path))
            .await
            .map_err(|e| ServeError::Internal(format!("store task: {e}")))?
            .map_err(ServeError::Store)?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Bind { addr, source })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| ServeError::Bind { addr, source })?;
        let (stop, stopped) = watch::channel(false);
        let summary = agents
            .iter()
            .map(|a| {
                (
                    a.name.clone(),
                    a.account.name.clone(),
                    a.mailbox.handle().to_string(),
                )
            })
            .collect();
        let state = Arc::new(AppState {
            agents,
            tokens,
            body_limit: serve.body_limit,
            config: config.clone(),
            store: Arc::new(Mutex::new(store)),
            shutdown: stopped.clone(),
        });
        let followers = (0..state.agents.len())
            .map(|i| tokio::spawn(follow_loop(state.clone(), i, stopped.clone())))
            .collect();
        let app = router(state);
        let mut http_stop = stopped;
        let http = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = http_stop.wait_for(|s| *s).await;
                })
                .await
                .map_err(ServeError::Serve)
        });
        Ok(Server {
            local_addr,
            stop,
            http,
            followers,
            agents: summary,
        })
    }

    /// The address the API listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// `(agent name, account, handle)` of every agent, for the startup banner.
    pub fn agents(&self) -> &[(String, String, String)] {
        &self.agents
    }

    /// Runs until `shutdown` completes or the HTTP server fails, then stops.
    pub async fn run_until(mut self, shutdown: impl Future<Output = ()>) -> Result<(), ServeError> {
        tokio::select! {
            () = shutdown => self.stop().await,
            result = &mut self.http => {
                let _ = self.stop.send(true);
                for f in self.followers.drain(..) {
                    let _ = f.await;
                }
                result.map_err(|e| ServeError::Serve(std::io::Error::other(e.to_string())))?
            }
        }
    }

    /// Stops accepting, closes WebSockets, ends the follow loops and waits for all of it.
    pub async fn stop(self) -> Result<(), ServeError> {
        let _ = self.stop.send(true);
        for f in self.followers {
            let _ = f.await;
        }
        match tokio::time::timeout(Duration::from_secs(10), self.http).await {
            Ok(Ok(result)) => result,
            Ok(Err(e)) => Err(ServeError::Serve(std::io::Error::other(e.to_string()))),
            Err(_) => {
                tracing::warn!("the operator API did not drain within 10s");
                Ok(())
            }
        }
    }
}

/// Runs one agent's `follow` until shutdown; an error is logged, kept for `/healthz`, and the
/// loop starts again after a backoff (1 s doubling to 60 s).
async fn follow_loop(state: Shared, index: usize, mut stopped: watch::Receiver<bool>) {
    let agent = &state.agents[index];
    let mut backoff = Duration::from_secs(1);
    loop {
        if *stopped.borrow() {
            return;
        }
        let mut until = stopped.clone();
        let shutdown = async move {
            let _ = until.wait_for(|s| *s).await;
        };
        let result = agent.mailbox.follow(shutdown).await;
        if *stopped.borrow() {
            return;
        }
        let message = match result {
            Ok(()) => "the follow loop ended".to_owned(),
            Err(e) => e.to_string(),
        };
        tracing::warn!(agent = %agent.name, "mailbox follow loop: {message}; again in {backoff:?}");
        if let Ok(mut f) = agent.follow.lock() {
            f.last_error = Some(message);
            f.restarts += 1;
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            _ = stopped.wait_for(|s| *s) => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(60));
    }
}
