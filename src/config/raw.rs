//! The config file as TOML says it: every field optional, nothing checked beyond its TOML type.
//!
//! This is the first of two stages (style point 16): serde fills these structs, then
//! [`Config::from_raw`](super::Config::from_raw) checks them and applies defaults. Values whose
//! parsing deserves a precise message (durations, URLs, addresses, secrets) stay strings or
//! TOML values here and are parsed in the second stage.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::agent::RawAgentProfile;
use super::types::{GrantState, LogFormat, OnCancel, OnRefused, Priority, PushMode, SmtpTls};

/// A duration as written, e.g. `"30s"`; parsed by [`parse_duration`](super::parse_duration).
// NOTE: a newtype rather than a bare String so that the shape check can say "expected a
// duration such as '30s'" when someone writes `timeout = 30`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RawDuration(pub String);

impl From<&str> for RawDuration {
    fn from(text: &str) -> Self {
        RawDuration(text.to_owned())
    }
}

/// The whole config file.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawConfig {
    /// `state-dir`.
    pub state_dir: Option<String>,
    /// `log-level`.
    pub log_level: Option<String>,
    /// `log-format`.
    pub log_format: Option<LogFormat>,
    /// `[accounts.NAME]`.
    pub accounts: Option<BTreeMap<String, RawAccount>>,
    /// `[worker]`.
    pub worker: Option<RawWorker>,
    /// `[dispatcher]`.
    pub dispatcher: Option<RawDispatcher>,
    /// `[trust]`.
    pub trust: Option<RawTrust>,
    /// `[profiles.NAME]`: inline agent profiles.
    pub profiles: Option<BTreeMap<String, RawAgentProfile>>,
    /// `[serve]`.
    pub serve: Option<RawServe>,
    /// `[asmtp]`.
    pub asmtp: Option<RawAsmtp>,
}

/// `[asmtp]`: the agent's mailbox.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawAsmtp {
    /// How far back the first sync of a new local mailbox index looks.
    pub backfill: Option<RawDuration>,
    /// `[asmtp.directory]`: handle -> address, for peers whose address is not `owner.name@domain`.
    pub directory: Option<BTreeMap<String, String>>,
}

/// `[accounts.NAME]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawAccount {
    /// `default = true` marks the default account.
    pub default: Option<bool>,
    /// The address.
    pub email: Option<String>,
    /// Display name on outgoing mail.
    pub display_name: Option<String>,
    /// Server profile name.
    pub server: Option<String>,
    /// Login, defaults to `email`.
    pub login: Option<String>,
    /// A secret table; kept as TOML so that a bare string gets a precise message.
    pub password: Option<toml::Value>,
    /// `[accounts.NAME.smtp]`.
    pub smtp: Option<RawSmtp>,
    /// `[accounts.NAME.jmap]`.
    pub jmap: Option<RawJmap>,
    /// Sign outbound mail with the account's key when it has one (default true).
    pub sign: Option<bool>,
    /// The account's ASMTP handle, `@owner.name`.
    pub handle: Option<String>,
}

/// `[accounts.NAME.smtp]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawSmtp {
    /// Host name or IP address.
    pub host: Option<String>,
    /// Port.
    pub port: Option<u16>,
    /// `starttls`, `implicit` or `plaintext`.
    pub tls: Option<SmtpTls>,
    /// Must be true for `tls = "plaintext"`.
    pub allow_plaintext: Option<bool>,
    /// Connection pool size.
    pub pool_size: Option<u16>,
    /// Per-command timeout.
    pub timeout: Option<RawDuration>,
}

/// `[accounts.NAME.jmap]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawJmap {
    /// Session URL.
    pub session_url: Option<String>,
    /// Origin override for URLs in the session.
    pub public_origin: Option<String>,
    /// Must be true for plain http to a host that is not this machine.
    pub allow_insecure: Option<bool>,
    /// Push mode.
    pub push: Option<PushMode>,
    /// Poll interval.
    pub poll_interval: Option<RawDuration>,
    /// Push liveness timeout.
    pub push_liveness: Option<RawDuration>,
}

/// `[worker]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawWorker {
    /// Account name.
    pub account: Option<String>,
    /// Agent profile name.
    pub agent: Option<String>,
    /// Tasks at once.
    pub concurrency: Option<u16>,
    /// Per-task timeout.
    pub task_timeout: Option<RawDuration>,
    /// TERM to KILL grace.
    pub cancel_grace: Option<RawDuration>,
    /// `reject` or `silent`.
    pub on_cancel: Option<OnCancel>,
    /// Work dir parent.
    pub work_dir: Option<String>,
    /// Addresses or `*@domain`.
    pub allowed_senders: Option<Vec<String>>,
    /// Whether plain mail starts tasks.
    pub plain_mail: Option<bool>,
    /// Shutdown drain timeout.
    pub shutdown_grace: Option<RawDuration>,
    /// How long a claim holds without renewal.
    pub lease: Option<RawDuration>,
    /// The owner name in lease keywords.
    pub lease_owner: Option<String>,
    /// The pause between a claim and its read-back.
    pub claim_wait: Option<RawDuration>,
}

/// `[dispatcher]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawDispatcher {
    /// Account name.
    pub account: Option<String>,
    /// Result wait timeout.
    pub default_timeout: Option<RawDuration>,
    /// Task priority.
    pub default_priority: Option<Priority>,
}

/// `[trust]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawTrust {
    /// Authentication-Results authserv-id.
    pub authserv_id: Option<String>,
    /// Require DMARC/DKIM.
    pub require_authentication: Option<bool>,
    /// Accept this server's own authenticated submission (the `Received` marker).
    pub same_server_submission: Option<bool>,
    /// `silent` or `reject`.
    pub on_refused: Option<OnRefused>,
    /// Quarantine mailbox name.
    pub quarantine_mailbox: Option<String>,
    /// Dedup memory.
    pub dedup_retention: Option<RawDuration>,
    /// Signed timestamp window.
    pub transit_window: Option<RawDuration>,
    /// `COUNT/PERIOD`.
    pub rate_limit: Option<String>,
    /// `[[trust.grants]]`.
    pub grants: Option<Vec<RawGrant>>,
}

/// `[[trust.grants]]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawGrant {
    /// Local account name.
    pub account: Option<String>,
    /// Address or `*@domain`.
    pub peer: Option<String>,
    /// Intent names.
    pub intents: Option<Vec<String>>,
    /// Grant state.
    pub state: Option<GrantState>,
    /// RFC 3339 string or TOML offset date-time.
    pub expires: Option<toml::Value>,
    /// Dispatch-Context key to allowed values.
    pub dispatch_context_rules: Option<BTreeMap<String, Vec<String>>>,
    /// Require an agent signature.
    pub require_signature: Option<bool>,
    /// The peer's pinned public key, `ed25519:<base64url>`.
    pub peer_key: Option<String>,
}

/// `[serve]`: the local operator API (`taskmail serve`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawServe {
    /// `IP:PORT`.
    pub listen: Option<String>,
    /// Must be true to listen on an address other machines can reach.
    pub allow_remote: Option<bool>,
    /// The largest request body in bytes.
    pub body_limit: Option<u32>,
    /// `[serve.agents.NAME]`: one bearer token per local agent.
    pub agents: Option<BTreeMap<String, RawServeAgent>>,
}

/// `[serve.agents.NAME]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawServeAgent {
    /// The `[accounts.NAME]` whose mailbox the agent uses.
    pub account: Option<String>,
    /// A secret table.
    pub token: Option<toml::Value>,
}
