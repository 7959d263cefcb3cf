//! The validated configuration sections, with defaults applied and every value parsed.
//!
//! These are built only by [`Config::from_raw`](super::Config::from_raw); each struct is
//! `#[non_exhaustive]` so code outside the crate reads them but cannot build one that skipped
//! validation.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, FixedOffset};
use serde::{Deserialize, Serialize};

use super::address::{HttpUrl, PeerPattern};
use super::secret::Secret;

/// The ten AAMP 1.1 intents a grant may name.
pub const INTENTS: [&str; 10] = [
    "task.dispatch",
    "task.cancel",
    "task.ack",
    "task.help_needed",
    "task.result",
    "task.stream.opened",
    "pair.request",
    "pair.respond",
    "card.query",
    "card.response",
];

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    /// One human-readable line per event.
    Text,
    /// One JSON object per line.
    Json,
}

/// How the SMTP submission connection is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SmtpTls {
    /// Plain connection upgraded with STARTTLS, usually on port 587.
    Starttls,
    /// TLS from the first byte, usually on port 465.
    Implicit,
    /// No TLS at all; only for a server on this machine, and only when asked for.
    Plaintext,
}

/// How the daemon learns that new mail arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PushMode {
    /// WebSocket, then EventSource, then polling, by what the JMAP session offers.
    Auto,
    /// JMAP over WebSocket push (RFC 8887) only.
    Websocket,
    /// JMAP EventSource push only.
    Eventsource,
    /// No push: `Email/changes` every `poll-interval`.
    Poll,
}

/// What a worker does when a running task is cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnCancel {
    /// Send one `task.result` with status `rejected`.
    Reject,
    /// Send nothing.
    Silent,
}

/// What a worker does with mail the trust gate refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnRefused {
    /// Send nothing: a refused sender learns nothing about the mailbox.
    Silent,
    /// Send one neutral `rejected` result.
    Reject,
}

/// The state of a grant (trust.md: a decline is sticky).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum GrantState {
    /// The peer may send the granted intents.
    Active,
    /// The operator declined the peer; further requests are refused.
    Declined,
    /// The peer is refused outright.
    Blocked,
    /// The grant was withdrawn.
    Revoked,
}

/// A task priority (`X-AAMP-Priority`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Priority {
    /// Ahead of everything else.
    Urgent,
    /// Ahead of normal tasks.
    High,
    /// The default.
    Normal,
}

/// A mail account: one address with its SMTP submission and JMAP endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Account {
    /// The table name, `NAME` in `[accounts.NAME]`.
    pub name: String,
    /// The address mail is sent from and received at.
    pub email: String,
    /// The display name on outgoing mail.
    pub display_name: Option<String>,
    /// The server profile name (`stalwart`, `cyrus`, `generic` or a user profile).
    pub server: String,
    /// The login for SMTP and JMAP (defaults to `email`).
    pub login: String,
    /// The password, still a reference.
    pub password: Secret,
    /// SMTP submission.
    pub smtp: Smtp,
    /// JMAP.
    pub jmap: Jmap,
    /// Whether mail sent from this account is signed (`X-ASMTP-Signature`) with the key in
    /// `<state-dir>/keys/<name>.key`, when that key exists.
    pub sign: bool,
    /// The ASMTP handle, normalised `@owner.name`; `None`: derived from `email` when its local
    /// part is `owner.name`.
    pub handle: Option<String>,
}

/// SMTP submission settings of one account.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Smtp {
    /// Host name or IP address.
    pub host: String,
    /// Port (587 for starttls and plaintext, 465 for implicit, unless set).
    pub port: u16,
    /// Transport security.
    pub tls: SmtpTls,
    /// How many connections the pool keeps.
    pub pool_size: u16,
    /// Timeout of each SMTP command.
    pub timeout: Duration,
}

/// JMAP settings of one account.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Jmap {
    /// The session resource, e.g. `https://mail.example.test/.well-known/jmap`.
    pub session_url: HttpUrl,
    /// Replaces the origin of every URL the session returns, for servers that report an
    /// internal host name.
    pub public_origin: Option<HttpUrl>,
    /// How to learn about new mail.
    pub push: PushMode,
    /// Interval of `Email/changes` polling when there is no push, and the safety-net poll.
    pub poll_interval: Duration,
    /// A push channel silent for this long is considered dead and reconnected.
    pub push_liveness: Duration,
}

/// The worker: receives tasks and runs an agent.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Worker {
    /// The account the worker receives tasks on.
    pub account: String,
    /// The agent profile that runs tasks.
    pub agent: String,
    /// How many tasks run at once.
    pub concurrency: u16,
    /// How long one task may run.
    pub task_timeout: Duration,
    /// Time between SIGTERM and SIGKILL when a task is cancelled or times out.
    pub cancel_grace: Duration,
    /// What to send when a task is cancelled.
    pub on_cancel: OnCancel,
    /// Parent of the per-task work directories.
    pub work_dir: PathBuf,
    /// Who may start tasks, besides active grants.
    pub allowed_senders: Vec<PeerPattern>,
    /// Whether plain mails (no AAMP headers) from allowed senders start tasks.
    pub plain_mail: bool,
    /// How long a shutdown waits for running tasks.
    pub shutdown_grace: Duration,
    /// How long a claim on a mail holds without renewal before another daemon on the same
    /// mailbox may take the task over (renewed every third of it).
    pub lease: Duration,
    /// The owner name this daemon writes into its lease keywords (1 to 12 of `a-z0-9`); `None`
    /// (`"auto"`, the default) for a random one kept in the state dir.
    pub lease_owner: Option<String>,
    /// The pause between writing a claim and reading it back (the claim protocol's delta):
    /// a claim whose read-to-write took longer than it is not entered.
    pub claim_wait: Duration,
}

/// The dispatcher: sends tasks and waits for results.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Dispatcher {
    /// The account tasks are sent from.
    pub account: String,
    /// How long to wait for a result when the command line does not say.
    pub default_timeout: Duration,
    /// The priority of a task when the command line does not say.
    pub default_priority: Priority,
}

/// A rate limit: at most `count` messages per `per`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// How many.
    pub count: u32,
    /// In how long.
    pub per: Duration,
}

/// Sender policy and the trust gate (see `protocol/trust.md`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Trust {
    /// The authserv-id of the receiving server's `Authentication-Results` header; others are
    /// ignored because a sender can forge them.
    pub authserv_id: Option<String>,
    /// Whether mail needs an aligned DMARC or DKIM pass.
    pub require_authentication: bool,
    /// Whether an authenticated submission on the receiving server itself counts as
    /// authenticated, read from its topmost `Received` field (`with ESMTPA`), for servers that
    /// write no `Authentication-Results` (Cyrus+Postfix). Default false.
    pub same_server_submission: bool,
    /// What refused senders get.
    pub on_refused: OnRefused,
    /// The mailbox that holds mail flagged as high risk.
    pub quarantine_mailbox: String,
    /// How long processed Message-IDs are remembered.
    pub dedup_retention: Duration,
    /// How far back a signed timestamp may lie.
    pub transit_window: Duration,
    /// Per-peer limit on inbound messages.
    pub rate_limit: RateLimit,
    /// Per-peer grants.
    pub grants: Vec<Grant>,
}

/// What one peer may do with one local account.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Grant {
    /// The local account.
    pub account: String,
    /// The peer, lowercase.
    pub peer: PeerPattern,
    /// The intents the peer may send, from [`INTENTS`].
    pub intents: Vec<String>,
    /// Whether the grant is in force.
    pub state: GrantState,
    /// When the grant lapses.
    pub expires: Option<DateTime<FixedOffset>>,
    /// Allowed values per Dispatch-Context key.
    pub dispatch_context_rules: BTreeMap<String, Vec<String>>,
    /// Whether the peer's mail must carry a valid `X-ASMTP-Signature`.
    pub require_signature: bool,
    /// The peer's pinned Ed25519 public key, `ed25519:<base64url>` (checked to be 32 bytes of
    /// base64url here; `trust::sign::PublicKey` reads it). A pinned key implies
    /// `require_signature`: mail signed with another key, or unsigned, is refused.
    pub peer_key: Option<String>,
}

/// The local operator API (`[serve]`, `taskmail serve`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Serve {
    /// Address to listen on (loopback unless `allow-remote = true`).
    pub listen: SocketAddr,
    /// Whether a listen address other machines can reach was allowed.
    pub allow_remote: bool,
    /// The largest request body in bytes (default 1 MiB, the ASMTP envelope limit).
    pub body_limit: usize,
    /// The local agents, one bearer token each, sorted by name.
    pub agents: Vec<ServeAgent>,
}

/// One local agent of the operator API (`[serve.agents.NAME]`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServeAgent {
    /// The table name (for logs; never the token).
    pub name: String,
    /// The `[accounts.NAME]` whose mailbox the agent uses.
    pub account: String,
    /// The bearer token, still a reference.
    pub token: Secret,
}

/// The agent's mailbox (`[asmtp]`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Asmtp {
    /// How far back the first sync of a new local mailbox index looks (default 7 days).
    pub backfill: Duration,
    /// Handle (normalised `@owner.name`) -> address (lowercase), for peers whose address is
    /// not `owner.name@domain`.
    pub directory: BTreeMap<String, String>,
}
