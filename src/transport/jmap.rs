//! Our own small JMAP client: the session ([RFC 8620 §2](https://www.rfc-editor.org/rfc/rfc8620#section-2)),
//! method calls over HTTP POST (§3), blob download (§6.2), and the Mail methods the daemon needs
//! ([RFC 8621](https://www.rfc-editor.org/rfc/rfc8621): `Email/changes`, `Email/get`,
//! `Email/query`, `Email/set`, `Mailbox/get`). JSON in ([`serde_json::Value`]),
//! [`Inbound::from_jmap`] out.
//!
//! NOTE: not jmap-client 0.4.3, which sends requests to the session's URLs as served (Cyrus
//! serves them relative: `RelativeUrlWithoutBase`), has no read timeouts, picks an account from
//! a hash map and types RFC 3339-looking text headers as dates. What this client does instead:
//!
//! - follows the session URL's redirects itself (Stalwart 307s `/.well-known/jmap` to
//!   `/jmap/session`, Cyrus 301s to `/jmap`), sending credentials to the same host only;
//! - resolves every URL of the session (`apiUrl`, `downloadUrl`, `uploadUrl`, `eventSourceUrl`,
//!   the WebSocket `url`) against the URL the session was served from, then applies the
//!   optional `public-origin`;
//! - sends Basic auth up front on every request (Stalwart only challenges for Bearer);
//! - takes the account from `primaryAccounts["urn:ietf:params:jmap:mail"]`;
//! - splits calls by `maxCallsInRequest` and ids by `maxObjectsInGet`;
//! - puts a timeout on every request; HTTP 5xx and 429 (with `Retry-After`) are transient,
//!   401 and 403 are [`JmapError::Auth`].
//!
//! It never uses the `Email/query` `header` filter (it returns nothing on Stalwart's sqlite
//! backend): the daemon filters headers itself.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use base64::Engine as _;
use chrono::{DateTime, SecondsFormat, Utc};
use reqwest::{StatusCode, Url, header};
use serde_json::{Map, Value, json};

use super::smtp::Cause;
use super::{Backfill, Changes, Fetched, KeywordWrite, MailStore, MailboxInfo, SetOutcome};
use crate::config::{Account, SecretError};
use crate::wire::message::Inbound;
use crate::wire::{aamp, asmtp};

/// The core capability.
pub const CORE: &str = "urn:ietf:params:jmap:core";
/// The mail capability.
pub const MAIL: &str = "urn:ietf:params:jmap:mail";
/// The WebSocket capability ([RFC 8887](https://www.rfc-editor.org/rfc/rfc8887)).
pub const WEBSOCKET: &str = "urn:ietf:params:jmap:websocket";
/// Headers fetched besides the AAMP and ASMTP ones, for the trust gate and loop protection.
///
/// `Received` feeds the same-server submission rule (`trust.same-server-submission`);
/// `X-ASMTP-Signature` is an agent signature; `X-ASMTP-Key` is the peer's public key in a
/// pairing message.
pub const EXTRA_HEADERS: [&str; 5] = [
    "Authentication-Results",
    "Auto-Submitted",
    "Received",
    "X-ASMTP-Signature",
    "X-ASMTP-Key",
];

const USING: [&str; 2] = [CORE, MAIL];
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_REDIRECTS: usize = 5;
/// `maxChanges` per `Email/changes` page.
const CHANGES_PAGE: usize = 500;
/// A downloaded ASMTP JSON part larger than this stays an attachment.
const MAX_JSON_PART: usize = 16 * 1024 * 1024;

/// Why a JMAP operation failed.
#[derive(Debug, thiserror::Error)]
pub enum JmapError {
    /// The password reference could not be resolved.
    #[error("cannot resolve the JMAP password")]
    Secret(#[source] SecretError),
    /// A URL from the config or the session is not usable.
    #[error("cannot use '{url}' as a JMAP URL")]
    Url {
        /// The URL as given.
        url: String,
        /// Why.
        #[source]
        source: Cause,
    },
    /// The server could not be reached (connection refused, no route, DNS).
    #[error("cannot connect to {url}")]
    Unreachable {
        /// The URL.
        url: String,
        /// What reqwest said.
        #[source]
        source: reqwest::Error,
    },
    /// No answer within the timeout.
    #[error("cannot get an answer from {url} in time")]
    Timeout {
        /// The URL.
        url: String,
        /// What reqwest said.
        #[source]
        source: reqwest::Error,
    },
    /// The connection failed half way.
    #[error("cannot complete the request to {url}")]
    Network {
        /// The URL.
        url: String,
        /// What reqwest said.
        #[source]
        source: reqwest::Error,
    },
    /// HTTP 401 or 403: the login was refused.
    #[error("cannot log in to {url}: authentication refused (HTTP {status})")]
    Auth {
        /// The URL.
        url: String,
        /// 401 or 403.
        status: u16,
    },
    /// Any other HTTP error status.
    #[error("cannot use {url}: HTTP {status}{}", detail_suffix(.detail))]
    Http {
        /// The URL.
        url: String,
        /// The status.
        status: u16,
        /// `Retry-After`, for 429 and 503.
        retry_after: Option<Duration>,
        /// The start of the body (a problem-details `type`, or text).
        detail: String,
    },
    /// The server answered something that is not the JMAP we expect.
    #[error("cannot read the answer of {url}: {reason}")]
    Protocol {
        /// The URL.
        url: String,
        /// What is wrong.
        reason: String,
        /// A parse error, if there was one.
        #[source]
        source: Option<Cause>,
    },
    /// The session lacks something we need.
    #[error("cannot use the JMAP session of {url}: {reason}")]
    Session {
        /// The session URL.
        url: String,
        /// What is missing.
        reason: String,
    },
    /// A method-level error ([RFC 8620 §3.6.2](https://www.rfc-editor.org/rfc/rfc8620#section-3.6.2)).
    #[error("cannot run {method}: the server answered '{kind}'{}", detail_suffix(.description.as_deref().unwrap_or_default()))]
    Method {
        /// The method, e.g. `Email/get`.
        method: String,
        /// The error `type`, e.g. `serverFail`.
        kind: String,
        /// The server's description.
        description: Option<String>,
    },
    /// `cannotCalculateChanges` (or a state the server cannot parse): back-fill instead.
    #[error("cannot calculate changes since state '{since}': {kind}")]
    CannotCalculateChanges {
        /// The state asked from.
        since: String,
        /// The server's error type.
        kind: String,
    },
    /// `stateMismatch`: the `ifInState` no longer holds. Refresh and retry.
    #[error("cannot run {method}: the state is no longer '{expected}'")]
    StateMismatch {
        /// The method.
        method: String,
        /// The `ifInState` sent.
        expected: String,
    },
    /// One object of an `/set` was not updated.
    #[error("cannot update email '{id}': {kind}{}", detail_suffix(.description.as_deref().unwrap_or_default()))]
    SetFailed {
        /// The email id.
        id: String,
        /// The SetError `type` (`notFound`, `forbidden`...).
        kind: String,
        /// The server's description.
        description: Option<String>,
    },
    /// A keyword that is not an IMAP atom.
    #[error(
        "cannot use '{0}' as a keyword: expected 1 to 255 printable ASCII characters without spaces or ( ) {{ ] % * \" \\ /"
    )]
    InvalidKeyword(String),
    /// The account has no mailbox with this role.
    #[error("cannot find a mailbox with role '{0}'")]
    NoMailbox(String),
}

fn detail_suffix(detail: &str) -> String {
    if detail.is_empty() {
        String::new()
    } else {
        format!(": {detail}")
    }
}

impl JmapError {
    /// Whether the same request may succeed later: no connection, timeouts, HTTP 5xx and 429,
    /// `serverUnavailable`.
    pub fn is_transient(&self) -> bool {
        match self {
            JmapError::Unreachable { .. }
            | JmapError::Timeout { .. }
            | JmapError::Network { .. } => true,
            JmapError::Http { status, .. } => *status == 429 || *status >= 500,
            JmapError::Method { kind, .. } => kind == "serverUnavailable",
            _ => false,
        }
    }

    /// Whether the same request will fail the same way. [`JmapError::StateMismatch`] and
    /// [`JmapError::CannotCalculateChanges`] are neither transient nor permanent: they ask for
    /// a refresh or a back-fill first.
    pub fn is_permanent(&self) -> bool {
        !self.is_transient() && !self.is_state_mismatch() && !self.is_cannot_calculate_changes()
    }

    /// Whether the login was refused.
    pub fn is_auth(&self) -> bool {
        matches!(self, JmapError::Auth { .. })
    }

    /// Whether an `ifInState` compare-and-swap lost: refresh the state and retry.
    pub fn is_state_mismatch(&self) -> bool {
        matches!(self, JmapError::StateMismatch { .. })
    }

    /// Whether `Email/changes` cannot bridge the gap: back-fill with a query.
    pub fn is_cannot_calculate_changes(&self) -> bool {
        matches!(self, JmapError::CannotCalculateChanges { .. })
    }

    /// Whether a set failed because the email is gone.
    pub fn is_not_found(&self) -> bool {
        matches!(self, JmapError::SetFailed { kind, .. } if kind == "notFound")
    }

    /// The HTTP status, where there is one.
    pub fn status(&self) -> Option<u16> {
        match self {
            JmapError::Auth { status, .. } | JmapError::Http { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// How long the server asked us to wait (`Retry-After`).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            JmapError::Http { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The documented exit code: 77 login refused, 69 server unreachable, 75 temporary
    /// failure, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        if self.is_auth() {
            77
        } else if matches!(self, JmapError::Unreachable { .. }) {
            69
        } else if self.is_transient() {
            75
        } else {
            1
        }
    }
}

/// Where and how to reach a JMAP server, the password already resolved.
#[derive(Clone)]
pub struct JmapSettings {
    /// The session resource (may redirect).
    pub session_url: String,
    /// Replaces scheme, host and port of every URL the session returns.
    pub public_origin: Option<String>,
    /// The login.
    pub login: String,
    password: String,
    /// Timeout of each API request (a download gets ten times this).
    pub timeout: Duration,
    /// Timeout of each TCP (and TLS) connect.
    pub connect_timeout: Duration,
}

impl fmt::Debug for JmapSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // NOTE: never print the password
        f.debug_struct("JmapSettings")
            .field("session_url", &self.session_url)
            .field("public_origin", &self.public_origin)
            .field("login", &self.login)
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .finish_non_exhaustive()
    }
}

impl JmapSettings {
    /// Settings with a 30 s request timeout and a 10 s connect timeout.
    pub fn new(
        session_url: impl Into<String>,
        login: impl Into<String>,
        password: impl Into<String>,
    ) -> JmapSettings {
        JmapSettings {
            session_url: session_url.into(),
            public_origin: None,
            login: login.into(),
            password: password.into(),
            timeout: DEFAULT_TIMEOUT,
            connect_timeout: CONNECT_TIMEOUT,
        }
    }

    /// The settings of a validated account; resolves its password.
    pub fn from_account(account: &Account) -> Result<JmapSettings, JmapError> {
        let password = account.password.resolve().map_err(JmapError::Secret)?;
        let mut settings = JmapSettings::new(
            account.jmap.session_url.as_str(),
            account.login.clone(),
            password,
        );
        settings.public_origin = account
            .jmap
            .public_origin
            .as_ref()
            .map(|o| o.as_str().to_owned());
        Ok(settings)
    }

    /// `Basic base64(login:password)`.
    pub(crate) fn authorization(&self) -> String {
        let token = base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", self.login, self.password));
        format!("Basic {token}")
    }
}

/// The WebSocket endpoint of a session (RFC 8887 §4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebSocketInfo {
    /// `ws://` or `wss://` URL, resolved.
    pub url: String,
    /// Whether the server pushes StateChanges over it.
    pub supports_push: bool,
}

/// A JMAP session with every URL resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// Where the session was served from, after redirects.
    pub url: String,
    /// The authenticated user.
    pub username: String,
    /// `primaryAccounts["urn:ietf:params:jmap:mail"]` (opaque on Stalwart, the address on Cyrus).
    pub account_id: String,
    /// Where method calls go.
    pub api_url: String,
    /// Template with `{accountId}`, `{blobId}`, `{name}`, `{type}`.
    pub download_url: String,
    /// Template with `{accountId}`.
    pub upload_url: String,
    /// Template with `{types}`, `{closeafter}`, `{ping}`, if the server has one.
    pub event_source_url: Option<String>,
    /// The WebSocket endpoint, if the server advertises `urn:ietf:params:jmap:websocket`.
    pub websocket: Option<WebSocketInfo>,
    /// The session state, to notice when the session must be fetched again.
    pub state: String,
    /// `maxCallsInRequest`.
    pub max_calls_in_request: usize,
    /// `maxObjectsInGet`.
    pub max_objects_in_get: usize,
    /// `maxObjectsInSet`.
    pub max_objects_in_set: usize,
    /// Every capability the server advertises.
    pub capabilities: BTreeSet<String>,
}

impl Session {
    /// Reads a session object served from `served_from`, resolving its URLs against it and
    /// applying `public_origin`.
    pub fn from_json(
        json: &Value,
        served_from: &str,
        public_origin: Option<&str>,
    ) -> Result<Session, JmapError> {
        let fail = |reason: &str| JmapError::Session {
            url: served_from.to_owned(),
            reason: reason.to_owned(),
        };
        let base = parse_url(served_from)?;
        let origin = public_origin.map(parse_url).transpose()?;
        let text = |key: &str| json.get(key).and_then(Value::as_str);
        let resolve_key = |key: &str| -> Result<String, JmapError> {
            let reference = text(key).ok_or_else(|| fail(&format!("it has no {key}")))?;
            resolve(&base, reference, origin.as_ref())
        };
        let capabilities = json
            .get("capabilities")
            .and_then(Value::as_object)
            .ok_or_else(|| fail("it has no capabilities"))?;
        if !capabilities.contains_key(MAIL) {
            return Err(fail(&format!("it does not offer {MAIL}")));
        }
        let account_id = json
            .get("primaryAccounts")
            .and_then(|p| p.get(MAIL))
            .and_then(Value::as_str)
            .ok_or_else(|| fail(&format!("it has no primary account for {MAIL}")))?
            .to_owned();
        let core = capabilities.get(CORE);
        let limit = |key: &str, default: usize| {
            core.and_then(|c| c.get(key))
                .and_then(Value::as_u64)
                .map_or(default, |n| usize::try_from(n).unwrap_or(usize::MAX).max(1))
        };
        let websocket = match capabilities.get(WEBSOCKET) {
            Some(ws) => match ws.get("url").and_then(Value::as_str) {
                Some(url) => Some(WebSocketInfo {
                    url: resolve(&base, url, origin.as_ref())?,
                    supports_push: ws.get("supportsPush").and_then(Value::as_bool) == Some(true),
                }),
                None => None,
            },
            None => None,
        };
        Ok(Session {
            url: served_from.to_owned(),
            username: text("username").unwrap_or_default().to_owned(),
            account_id,
            api_url: resolve_key("apiUrl")?,
            download_url: resolve_key("downloadUrl")?,
            upload_url: resolve_key("uploadUrl")?,
            event_source_url: match text("eventSourceUrl") {
                Some(u) => Some(resolve(&base, u, origin.as_ref())?),
                None => None,
            },
            websocket,
            state: text("state").unwrap_or_default().to_owned(),
            max_calls_in_request: limit("maxCallsInRequest", 16),
            max_objects_in_get: limit("maxObjectsInGet", 500),
            max_objects_in_set: limit("maxObjectsInSet", 500),
            capabilities: capabilities.keys().cloned().collect(),
        })
    }

    /// Whether the server advertises `capability`.
    pub fn has_capability(&self, capability: &str) -> bool {
        self.capabilities.contains(capability)
    }

    /// The download URL of a blob.
    pub fn blob_url(&self, blob_id: &str, name: &str, content_type: &str) -> String {
        expand(
            &self.download_url,
            &[
                ("accountId", &self.account_id),
                ("blobId", blob_id),
                ("name", name),
                ("type", content_type),
            ],
        )
    }

    /// The EventSource URL for `types` (`Email`), never closing, with pings every `ping`
    /// seconds.
    pub fn event_source(&self, types: &str, ping_seconds: u64) -> Option<String> {
        self.event_source_url.as_deref().map(|template| {
            expand(
                template,
                &[
                    ("types", types),
                    ("closeafter", "no"),
                    ("ping", &ping_seconds.to_string()),
                ],
            )
        })
    }
}

fn parse_url(text: &str) -> Result<Url, JmapError> {
    Url::parse(text).map_err(|e| JmapError::Url {
        url: text.to_owned(),
        source: Box::new(e),
    })
}

/// Resolves `reference` against `base` (RFC 3986 §5), then puts `origin`'s scheme, host and
/// port on it. URI-template braces survive.
fn resolve(base: &Url, reference: &str, origin: Option<&Url>) -> Result<String, JmapError> {
    let mut url = base.join(reference).map_err(|e| JmapError::Url {
        url: reference.to_owned(),
        source: Box::new(e),
    })?;
    if let Some(origin) = origin {
        let websocket = matches!(url.scheme(), "ws" | "wss");
        let scheme = match (websocket, origin.scheme()) {
            (true, "https") => "wss",
            (true, _) => "ws",
            (false, s) => s,
        };
        let failed = |what: &str| JmapError::Url {
            url: origin.as_str().to_owned(),
            source: format!("cannot apply its {what} to '{reference}'").into(),
        };
        url.set_scheme(scheme).map_err(|()| failed("scheme"))?;
        url.set_host(origin.host_str())
            .map_err(|e| JmapError::Url {
                url: origin.as_str().to_owned(),
                source: Box::new(e),
            })?;
        url.set_port(origin.port()).map_err(|()| failed("port"))?;
    }
    // NOTE: the URL parser percent-encodes `{` and `}` in paths; put the template braces back.
    Ok(url
        .as_str()
        .replace("%7B", "{")
        .replace("%7D", "}")
        .replace("%7b", "{")
        .replace("%7d", "}"))
}

/// RFC 6570 level 1: `{name}` becomes the value, percent-encoded except for unreserved
/// characters.
fn expand(template: &str, vars: &[(&str, &str)]) -> String {
    let mut out = template.to_owned();
    for (name, value) in vars {
        out = out.replace(&format!("{{{name}}}"), &percent_encode(value));
    }
    out
}

fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The `Email/get` properties of the headers-only phase.
pub fn header_properties() -> Vec<String> {
    let mut props: Vec<String> = [
        "id",
        "messageId",
        "inReplyTo",
        "references",
        "from",
        "to",
        "cc",
        "subject",
        "sentAt",
        "receivedAt",
        "mailboxIds",
        "keywords",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    for name in aamp::header::ALL
        .iter()
        .chain(asmtp::header::ALL.iter())
        .chain(EXTRA_HEADERS.iter())
    {
        // NOTE: this order (`:asText:all`) is the one Cyrus accepts; `:all:asText` is refused.
        props.push(format!("header:{name}:asText:all"));
    }
    props
}

/// The body part properties of the body phase. `header:Content-Type` in raw form (Stalwart
/// answers null to `:asText` there) lets [`Inbound::from_jmap`] undo format=flowed.
const BODY_PROPERTIES: [&str; 9] = [
    "partId",
    "blobId",
    "size",
    "name",
    "type",
    "charset",
    "disposition",
    "cid",
    "header:Content-Type",
];

/// A JMAP client for one account.
#[derive(Debug)]
pub struct JmapClient {
    http: reqwest::Client,
    settings: JmapSettings,
    session: RwLock<Arc<Session>>,
    inbox: Mutex<Option<String>>,
    /// The last `sessionState` an API response announced that differed from the session's:
    /// refresh once per value, not on every request of a server whose two states never agree.
    announced: Mutex<Option<String>>,
}

impl JmapClient {
    /// Fetches the session and checks that it offers mail.
    pub async fn connect(settings: JmapSettings) -> Result<JmapClient, JmapError> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("taskmail/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(settings.connect_timeout)
            .build()
            .map_err(|e| JmapError::Url {
                url: settings.session_url.clone(),
                source: Box::new(e),
            })?;
        let session = fetch_session(&http, &settings).await?;
        tracing::debug!(
            session = %session.url,
            api = %session.api_url,
            account = %session.account_id,
            "JMAP session"
        );
        Ok(JmapClient {
            http,
            settings,
            session: RwLock::new(Arc::new(session)),
            inbox: Mutex::new(None),
            announced: Mutex::new(None),
        })
    }

    /// Connects with a validated account's settings (resolves its password).
    pub async fn from_account(account: &Account) -> Result<JmapClient, JmapError> {
        JmapClient::connect(JmapSettings::from_account(account)?).await
    }

    /// The current session.
    pub fn session(&self) -> Arc<Session> {
        self.session
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The settings this client was built with.
    pub fn settings(&self) -> &JmapSettings {
        &self.settings
    }

    /// The account id used in every call.
    pub fn account_id(&self) -> String {
        self.session().account_id.clone()
    }

    /// Fetches the session again (the push supervisor does on every reconnect).
    pub async fn refresh_session(&self) -> Result<Arc<Session>, JmapError> {
        let session = Arc::new(fetch_session(&self.http, &self.settings).await?);
        *self.session.write().unwrap_or_else(PoisonError::into_inner) = session.clone();
        Ok(session)
    }

    pub(crate) fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// Sends method calls (`accountId` added where missing), split into requests of at most
    /// `maxCallsInRequest` calls. Each call gets its own result; an HTTP failure fails all.
    pub async fn request(
        &self,
        calls: Vec<(&str, Value)>,
    ) -> Result<Vec<Result<Value, JmapError>>, JmapError> {
        let session = self.session();
        let mut results = Vec::with_capacity(calls.len());
        let mut calls = calls.into_iter().peekable();
        while calls.peek().is_some() {
            let batch: Vec<(&str, Value)> =
                calls.by_ref().take(session.max_calls_in_request).collect();
            results.extend(self.post(&session, batch).await?);
        }
        Ok(results)
    }

    /// One method call; a method error becomes the `Err`.
    pub async fn call(&self, method: &str, args: Value) -> Result<Value, JmapError> {
        self.request(vec![(method, args)])
            .await?
            .pop()
            .unwrap_or_else(|| {
                Err(JmapError::Protocol {
                    url: self.session().api_url.clone(),
                    reason: format!("no response to {method}"),
                    source: None,
                })
            })
    }

    async fn post(
        &self,
        session: &Session,
        batch: Vec<(&str, Value)>,
    ) -> Result<Vec<Result<Value, JmapError>>, JmapError> {
        let url = &session.api_url;
        let method_calls: Vec<Value> = batch
            .iter()
            .enumerate()
            .map(|(i, (name, args))| {
                // NOTE: accountId first, then the caller's arguments in their order (serde_json
                // preserves it): Stalwart 0.16 answers HTTP 500 to a whole request when an
                // argument it cannot parse (a foreign state string) is followed by others, so
                // callers put states last.
                let mut ordered = Map::new();
                ordered.insert("accountId".into(), json!(session.account_id));
                if let Some(obj) = args.as_object() {
                    ordered.extend(obj.iter().map(|(k, v)| (k.clone(), v.clone())));
                }
                json!([name, ordered, format!("c{i}")])
            })
            .collect();
        let body = json!({ "using": USING, "methodCalls": method_calls });
        let names: Vec<&str> = batch.iter().map(|(n, _)| *n).collect();
        tracing::trace!(url = %url, methods = ?names, "JMAP request");
        let mut attempt: u32 = 0;
        let response = loop {
            let response = self
                .http
                .post(url.as_str())
                .header(header::AUTHORIZATION, self.settings.authorization())
                .header(header::ACCEPT, "application/json")
                .json(&body)
                .timeout(self.settings.timeout)
                .send()
                .await
                .map_err(|e| request_error(url, e))?;
            match check_status(url, response).await {
                Ok(response) => break response,
                Err(error) => match unprocessed_wait(&error, attempt) {
                    Some(wait) => {
                        attempt += 1;
                        tracing::warn!(
                            error = %crate::transport::smtp::error_chain(&error),
                            attempt,
                            wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                            "the JMAP server did not take the request; retrying"
                        );
                        tokio::time::sleep(wait).await;
                    }
                    None => return Err(error),
                },
            }
        };
        let bytes = response.bytes().await.map_err(|e| request_error(url, e))?;
        let value: Value = serde_json::from_slice(&bytes).map_err(|e| JmapError::Protocol {
            url: url.clone(),
            reason: "the body is not JSON".to_owned(),
            source: Some(Box::new(e)),
        })?;
        let responses = value
            .get("methodResponses")
            .and_then(Value::as_array)
            .ok_or_else(|| JmapError::Protocol {
                url: url.clone(),
                reason: "no methodResponses".to_owned(),
                source: None,
            })?;
        if let Some(state) = value.get("sessionState").and_then(Value::as_str)
            && state != session.state
            && self
                .announced
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .replace(state.to_owned())
                .as_deref()
                != Some(state)
        {
            // NOTE: the session changed (new limits or URLs): fetch it again, but never fail a
            // call that worked because of that.
            if let Err(e) = self.refresh_session().await {
                tracing::warn!(error = %super::smtp::error_chain(&e), "cannot refresh the JMAP session");
            }
        }
        let mut results = Vec::with_capacity(batch.len());
        for (i, (name, args)) in batch.iter().enumerate() {
            let id = format!("c{i}");
            let found = responses.iter().find(|r| {
                r.get(2).and_then(Value::as_str) == Some(id.as_str())
                    && matches!(r.get(0).and_then(Value::as_str), Some(n) if n == *name || n == "error")
            });
            results.push(match found {
                None => Err(JmapError::Protocol {
                    url: url.clone(),
                    reason: format!("no response to {name}"),
                    source: None,
                }),
                Some(r) => {
                    let answer = r.get(1).cloned().unwrap_or(Value::Null);
                    if r.get(0).and_then(Value::as_str) == Some("error") {
                        Err(method_error(name, args, &answer))
                    } else {
                        Ok(answer)
                    }
                }
            });
        }
        Ok(results)
    }

    /// `Email/get` of `ids` (split by `maxObjectsInGet`), in the order asked; ids the server
    /// does not know are left out.
    async fn get_emails(
        &self,
        ids: &[String],
        properties: &[String],
        extra: &Map<String, Value>,
    ) -> Result<Vec<Value>, JmapError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let per_call = self.session().max_objects_in_get;
        let calls: Vec<(&str, Value)> = ids
            .chunks(per_call)
            .map(|chunk| {
                let mut args = extra.clone();
                args.insert("ids".into(), json!(chunk));
                args.insert("properties".into(), json!(properties));
                ("Email/get", Value::Object(args))
            })
            .collect();
        let mut list = Vec::with_capacity(ids.len());
        for result in self.request(calls).await? {
            let answer = result?;
            if let Some(items) = answer.get("list").and_then(Value::as_array) {
                list.extend(items.iter().cloned());
            }
        }
        let order: HashMap<&str, usize> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| (id.as_str(), i))
            .collect();
        list.sort_by_key(|e| {
            e.get("id")
                .and_then(Value::as_str)
                .and_then(|id| order.get(id).copied())
                .unwrap_or(usize::MAX)
        });
        Ok(list)
    }

    async fn email_set(
        &self,
        id: &str,
        patch: Value,
        if_in_state: Option<&str>,
    ) -> Result<SetOutcome, JmapError> {
        // NOTE: the state last (see `post`)
        let mut args = json!({ "update": { id: patch } });
        if let Some(state) = if_in_state {
            args["ifInState"] = json!(state);
        }
        let answer = self.call("Email/set", args).await?;
        if let Some(error) = answer.get("notUpdated").and_then(|n| n.get(id)) {
            return Err(set_failed(id, Some(error), "unknown"));
        }
        let updated = answer
            .get("updated")
            .and_then(Value::as_object)
            .is_some_and(|u| u.contains_key(id));
        if !updated {
            // NOTE: Stalwart silently skips an id it cannot parse (e.g. one with a '-'):
            // neither updated nor notUpdated. For us that email does not exist.
            return Err(JmapError::SetFailed {
                id: id.to_owned(),
                kind: "notFound".to_owned(),
                description: Some("the server answered neither updated nor notUpdated".to_owned()),
            });
        }
        let new_state = answer
            .get("newState")
            .and_then(Value::as_str)
            .ok_or_else(|| JmapError::Protocol {
                url: self.session().api_url.clone(),
                reason: "Email/set answered without newState".to_owned(),
                source: None,
            })?;
        Ok(SetOutcome {
            old_state: answer
                .get("oldState")
                .and_then(Value::as_str)
                .map(str::to_owned),
            new_state: new_state.to_owned(),
        })
    }

    /// Every mailbox of the account.
    pub async fn mailboxes(&self) -> Result<Vec<MailboxInfo>, JmapError> {
        let answer = self
            .call(
                "Mailbox/get",
                json!({ "ids": null, "properties": ["id", "name", "role"] }),
            )
            .await?;
        Ok(answer
            .get("list")
            .and_then(Value::as_array)
            .map(|list| {
                list.iter()
                    .filter_map(|m| {
                        Some(MailboxInfo {
                            id: m.get("id")?.as_str()?.to_owned(),
                            name: m
                                .get("name")
                                .and_then(Value::as_str)
                                .unwrap_or_default()
                                .to_owned(),
                            role: m
                                .get("role")
                                .and_then(Value::as_str)
                                .map(str::to_ascii_lowercase),
                        })
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn fetch(&self, ids: &[String], with_body: bool) -> Result<Vec<Fetched>, JmapError> {
        let mut properties = header_properties();
        let mut extra = Map::new();
        if with_body {
            properties
                .extend(["textBody", "htmlBody", "attachments", "bodyValues"].map(str::to_owned));
            extra.insert("fetchTextBodyValues".into(), json!(true));
            extra.insert("fetchHTMLBodyValues".into(), json!(true));
            extra.insert("bodyProperties".into(), json!(BODY_PROPERTIES));
        }
        let emails = self.get_emails(ids, &properties, &extra).await?;
        let mut out = Vec::with_capacity(emails.len());
        for email in &emails {
            let Some(mut fetched) = fetched_from_json(email) else {
                continue;
            };
            if with_body {
                if fetched.inbound.body.is_none() {
                    // NOTE: an email without bodyValues (no text part at all) still has a body
                    fetched.inbound.body = Some(Default::default());
                }
                self.attach_json_part(&mut fetched).await?;
            }
            out.push(fetched);
        }
        Ok(out)
    }

    /// Moves the first `application/json` part from the attachments into `body.json_part`, as
    /// [`Inbound::from_bytes`] does: JMAP lists it as an attachment (it is not text), so its
    /// content is a blob to download.
    async fn attach_json_part(&self, fetched: &mut Fetched) -> Result<(), JmapError> {
        let Some(body) = fetched.inbound.body.as_mut() else {
            return Ok(());
        };
        if body.json_part.is_some() {
            return Ok(());
        }
        let Some(index) = body.attachments.iter().position(|a| {
            a.content_type.eq_ignore_ascii_case("application/json")
                && a.blob_id.is_some()
                && a.size <= MAX_JSON_PART
        }) else {
            return Ok(());
        };
        let part = body.attachments.remove(index);
        let blob_id = part.blob_id.unwrap_or_default();
        let name = part.name.as_deref().unwrap_or("envelope.json");
        let bytes = self.download(&blob_id, name, "application/json").await?;
        body.json_part = Some(bytes);
        Ok(())
    }
}

impl MailStore for JmapClient {
    async fn state(&self) -> Result<String, JmapError> {
        let answer = self.call("Email/get", json!({ "ids": [] })).await?;
        answer
            .get("state")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| JmapError::Protocol {
                url: self.session().api_url.clone(),
                reason: "Email/get answered without a state".to_owned(),
                source: None,
            })
    }

    async fn changes(&self, since: &str) -> Result<Changes, JmapError> {
        let mut merged = Merge::default();
        let mut state = since.to_owned();
        loop {
            let answer = self
                .call(
                    "Email/changes",
                    json!({ "maxChanges": CHANGES_PAGE, "sinceState": state }),
                )
                .await
                .map_err(|e| match e {
                    // NOTE: Stalwart answers invalidArguments to a state it cannot parse, and
                    // the state is the only argument that is ours to get wrong: back-fill.
                    JmapError::Method { kind, .. } if kind == "invalidArguments" => {
                        JmapError::CannotCalculateChanges {
                            since: state.clone(),
                            kind,
                        }
                    }
                    other => other,
                })?;
            let ids = |key: &str| -> Vec<String> {
                answer
                    .get(key)
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(Value::as_str)
                            .map(str::to_owned)
                            .collect()
                    })
                    .unwrap_or_default()
            };
            merged.page(ids("created"), ids("updated"), ids("destroyed"));
            let new_state = answer
                .get("newState")
                .and_then(Value::as_str)
                .ok_or_else(|| JmapError::Protocol {
                    url: self.session().api_url.clone(),
                    reason: "Email/changes answered without newState".to_owned(),
                    source: None,
                })?
                .to_owned();
            let more = answer.get("hasMoreChanges").and_then(Value::as_bool) == Some(true);
            if more && new_state == state {
                return Err(JmapError::Protocol {
                    url: self.session().api_url.clone(),
                    reason: format!("Email/changes has more changes but stays at state '{state}'"),
                    source: None,
                });
            }
            state = new_state;
            if !more {
                return Ok(merged.finish(state));
            }
        }
    }

    async fn get_headers(&self, ids: &[String]) -> Result<Vec<Fetched>, JmapError> {
        self.fetch(ids, false).await
    }

    async fn get_bodies(&self, ids: &[String]) -> Result<Vec<Fetched>, JmapError> {
        self.fetch(ids, true).await
    }

    async fn download(
        &self,
        blob_id: &str,
        name: &str,
        content_type: &str,
    ) -> Result<Vec<u8>, JmapError> {
        let url = self.session().blob_url(blob_id, name, content_type);
        let response = get_following(
            &self.http,
            &self.settings,
            &url,
            "*/*",
            self.settings.timeout.saturating_mul(10),
        )
        .await?;
        let (url, response) = response;
        let bytes = response.bytes().await.map_err(|e| request_error(&url, e))?;
        Ok(bytes.to_vec())
    }

    async fn set_keywords(
        &self,
        id: &str,
        add: &[&str],
        remove: &[&str],
        if_in_state: Option<&str>,
    ) -> Result<SetOutcome, JmapError> {
        let mut patch = Map::new();
        for (keyword, value) in add
            .iter()
            .map(|k| (k, json!(true)))
            .chain(remove.iter().map(|k| (k, Value::Null)))
        {
            patch.insert(format!("keywords/{}", checked_keyword(keyword)?), value);
        }
        self.email_set(id, Value::Object(patch), if_in_state).await
    }

    async fn get_keywords(
        &self,
        ids: &[String],
    ) -> Result<Vec<(String, BTreeSet<String>)>, JmapError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let answer = self
            .call(
                "Email/get",
                json!({ "ids": ids, "properties": ["id", "keywords"] }),
            )
            .await?;
        Ok(answer
            .get("list")
            .and_then(Value::as_array)
            .map(|list| {
                list.iter()
                    .filter_map(|email| {
                        let id = email.get("id")?.as_str()?.to_owned();
                        let keywords = email
                            .get("keywords")
                            .and_then(Value::as_object)
                            .map(|k| {
                                k.iter()
                                    .filter(|(_, v)| v.as_bool() == Some(true))
                                    .map(|(k, _)| k.to_ascii_lowercase())
                                    .collect()
                            })
                            .unwrap_or_default();
                        Some((id, keywords))
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn write_keywords(
        &self,
        writes: &[(String, KeywordWrite)],
    ) -> Result<Vec<Result<(), JmapError>>, JmapError> {
        if writes.is_empty() {
            return Ok(Vec::new());
        }
        let mut update = Map::new();
        for (id, write) in writes {
            let patch = match write {
                KeywordWrite::Replace(keywords) => {
                    let mut set = Map::new();
                    for keyword in keywords {
                        set.insert(checked_keyword(keyword)?, json!(true));
                    }
                    json!({ "keywords": set })
                }
                KeywordWrite::Patch { add, remove } => {
                    let mut patch = Map::new();
                    for keyword in add {
                        patch.insert(
                            format!("keywords/{}", checked_keyword(keyword)?),
                            json!(true),
                        );
                    }
                    for keyword in remove {
                        patch.insert(
                            format!("keywords/{}", checked_keyword(keyword)?),
                            Value::Null,
                        );
                    }
                    Value::Object(patch)
                }
            };
            update.insert(id.clone(), patch);
        }
        let answer = self.call("Email/set", json!({ "update": update })).await?;
        let updated = answer.get("updated").and_then(Value::as_object);
        let not_updated = answer.get("notUpdated").and_then(Value::as_object);
        Ok(writes
            .iter()
            .map(|(id, _)| {
                if let Some(error) = not_updated.and_then(|n| n.get(id)) {
                    return Err(set_failed(id, Some(error), "unknown"));
                }
                if updated.is_some_and(|u| u.contains_key(id)) {
                    Ok(())
                } else {
                    Err(JmapError::SetFailed {
                        id: id.clone(),
                        kind: "notFound".to_owned(),
                        description: Some(
                            "the server answered neither updated nor notUpdated".to_owned(),
                        ),
                    })
                }
            })
            .collect())
    }

    async fn inbox_id(&self) -> Result<String, JmapError> {
        if let Some(id) = self
            .inbox
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
        {
            return Ok(id);
        }
        let inbox = self
            .mailbox_by_role("inbox")
            .await?
            .ok_or_else(|| JmapError::NoMailbox("inbox".to_owned()))?;
        *self.inbox.lock().unwrap_or_else(PoisonError::into_inner) = Some(inbox.id.clone());
        Ok(inbox.id)
    }

    async fn query_inbox_since(
        &self,
        received_after: DateTime<Utc>,
        limit: usize,
    ) -> Result<Backfill, JmapError> {
        let inbox = self.inbox_id().await?;
        let mut results = self
            .request(vec![
                ("Email/get", json!({ "ids": [] })),
                (
                    "Email/query",
                    json!({
                        "filter": {
                            "inMailbox": inbox,
                            "after": received_after.to_rfc3339_opts(SecondsFormat::Secs, true),
                        },
                        "sort": [{ "property": "receivedAt", "isAscending": true }],
                        "limit": limit,
                        "calculateTotal": false,
                    }),
                ),
            ])
            .await?
            .into_iter();
        let missing = |what: &str| JmapError::Protocol {
            url: self.session().api_url.clone(),
            reason: format!("no {what} in the answer"),
            source: None,
        };
        let state = results.next().ok_or_else(|| missing("Email/get"))??;
        let query = results.next().ok_or_else(|| missing("Email/query"))??;
        Ok(Backfill {
            ids: query
                .get("ids")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default(),
            state: state
                .get("state")
                .and_then(Value::as_str)
                .ok_or_else(|| missing("state"))?
                .to_owned(),
        })
    }

    async fn mailbox_by_role(&self, role: &str) -> Result<Option<MailboxInfo>, JmapError> {
        let role = role.to_ascii_lowercase();
        Ok(self
            .mailboxes()
            .await?
            .into_iter()
            .find(|m| m.role.as_deref() == Some(role.as_str())))
    }

    async fn mailbox_by_name(&self, name: &str) -> Result<Option<MailboxInfo>, JmapError> {
        Ok(self.mailboxes().await?.into_iter().find(|m| m.name == name))
    }

    async fn move_to(&self, id: &str, mailbox_id: &str) -> Result<SetOutcome, JmapError> {
        self.email_set(id, json!({ "mailboxIds": { mailbox_id: true } }), None)
            .await
    }

    async fn create_mailbox(&self, name: &str) -> Result<MailboxInfo, JmapError> {
        let answer = self
            .call(
                "Mailbox/set",
                json!({ "create": { "new": { "name": name, "parentId": null } } }),
            )
            .await?;
        if let Some(error) = answer.get("notCreated").and_then(|n| n.get("new")) {
            return Err(set_failed(name, Some(error), "unknown"));
        }
        let id = answer
            .get("created")
            .and_then(|c| c.get("new"))
            .and_then(|n| n.get("id"))
            .and_then(Value::as_str)
            .ok_or_else(|| JmapError::Protocol {
                url: self.session().api_url.clone(),
                reason: "Mailbox/set created no mailbox".to_owned(),
                source: None,
            })?;
        Ok(MailboxInfo {
            id: id.to_owned(),
            name: name.to_owned(),
            role: None,
        })
    }

    async fn query_mailbox(
        &self,
        mailbox_id: &str,
        limit: usize,
    ) -> Result<Vec<String>, JmapError> {
        let answer = self
            .call(
                "Email/query",
                json!({
                    "filter": { "inMailbox": mailbox_id },
                    "sort": [{ "property": "receivedAt", "isAscending": false }],
                    "limit": limit,
                    "calculateTotal": false,
                }),
            )
            .await?;
        Ok(answer
            .get("ids")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn destroy_email(&self, id: &str) -> Result<(), JmapError> {
        let answer = self.call("Email/set", json!({ "destroy": [id] })).await?;
        let destroyed = answer
            .get("destroyed")
            .and_then(Value::as_array)
            .is_some_and(|d| d.iter().any(|x| x.as_str() == Some(id)));
        if destroyed {
            return Ok(());
        }
        let error = answer.get("notDestroyed").and_then(|n| n.get(id));
        Err(set_failed(id, error, "notFound"))
    }
}

/// Merges `Email/changes` pages: an id created and destroyed in the window never existed for
/// us; an id created and then updated is just created. Linear in the number of changes.
#[derive(Debug, Default)]
pub(crate) struct Merge {
    entries: HashMap<String, (Change, usize)>,
    next: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    Created,
    Updated,
    Destroyed,
}

impl Merge {
    pub(crate) fn page(
        &mut self,
        created: Vec<String>,
        updated: Vec<String>,
        destroyed: Vec<String>,
    ) {
        for id in created {
            self.set(id, |_| Some(Change::Created));
        }
        for id in updated {
            self.set(id, |old| Some(old.unwrap_or(Change::Updated)));
        }
        for id in destroyed {
            self.set(id, |old| match old {
                Some(Change::Created) => None,
                _ => Some(Change::Destroyed),
            });
        }
    }

    fn set(&mut self, id: String, f: impl FnOnce(Option<Change>) -> Option<Change>) {
        let old = self.entries.get(&id).map(|(c, _)| *c);
        match f(old) {
            None => {
                self.entries.remove(&id);
            }
            Some(change) => {
                let seq = self.entries.get(&id).map_or(self.next, |(_, s)| *s);
                self.next += 1;
                self.entries.insert(id, (change, seq));
            }
        }
    }

    pub(crate) fn finish(self, new_state: String) -> Changes {
        let mut entries: Vec<(String, (Change, usize))> = self.entries.into_iter().collect();
        entries.sort_by_key(|(_, (_, seq))| *seq);
        let mut changes = Changes {
            new_state,
            ..Changes::default()
        };
        for (id, (change, _)) in entries {
            match change {
                Change::Created => changes.created.push(id),
                Change::Updated => changes.updated.push(id),
                Change::Destroyed => changes.destroyed.push(id),
            }
        }
        changes
    }
}

/// A keyword, lowercase, if it is an IMAP atom that needs no JSON-pointer escaping.
pub(crate) fn checked_keyword(keyword: &str) -> Result<String, JmapError> {
    let ok = (1..=255).contains(&keyword.len())
        && keyword
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"(){]%*\"\\/~".contains(&b));
    if ok {
        Ok(keyword.to_ascii_lowercase())
    } else {
        Err(JmapError::InvalidKeyword(keyword.to_owned()))
    }
}

fn fetched_from_json(email: &Value) -> Option<Fetched> {
    let id = email.get("id")?.as_str()?.to_owned();
    let set = |key: &str, lowercase: bool| -> BTreeSet<String> {
        email
            .get(key)
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .filter(|(_, v)| v.as_bool() == Some(true))
                    .map(|(k, _)| {
                        if lowercase {
                            k.to_ascii_lowercase()
                        } else {
                            k.clone()
                        }
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    Some(Fetched {
        id,
        inbound: Inbound::from_jmap(email),
        mailbox_ids: set("mailboxIds", false),
        keywords: set("keywords", true),
        received_at: email
            .get("receivedAt")
            .and_then(Value::as_str)
            .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
            .map(|d| d.with_timezone(&Utc)),
    })
}

fn method_error(method: &str, args: &Value, answer: &Value) -> JmapError {
    let kind = answer
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("unknown")
        .to_owned();
    let arg = |key: &str| {
        args.get(key)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    match kind.as_str() {
        "stateMismatch" => JmapError::StateMismatch {
            method: method.to_owned(),
            expected: arg("ifInState"),
        },
        "cannotCalculateChanges" => JmapError::CannotCalculateChanges {
            since: arg("sinceState"),
            kind,
        },
        _ => JmapError::Method {
            method: method.to_owned(),
            description: answer
                .get("description")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .or_else(|| answer.get("arguments").map(|a| format!("arguments {a}"))),
            kind,
        },
    }
}

pub(crate) fn request_error(url: &str, error: reqwest::Error) -> JmapError {
    let url = url.to_owned();
    if error.is_timeout() {
        JmapError::Timeout { url, source: error }
    } else if error.is_connect() {
        JmapError::Unreachable { url, source: error }
    } else if error.is_builder() {
        JmapError::Url {
            url,
            source: Box::new(error),
        }
    } else {
        JmapError::Network { url, source: error }
    }
}

/// Maps an error status to its error; passes a success through.
/// How many times one API request is resent after HTTP 429 or 503.
const UNPROCESSED_RETRIES: u32 = 3;
/// The longest `Retry-After` honoured inside one request; longer waits go back to the caller
/// (whose own backoff takes over) as the error.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);

/// How long to wait before resending an API request the server refused with 429 (Too Many
/// Requests) or 503 (Service Unavailable), `attempt` retries in: its `Retry-After`, else 1 s,
/// 2 s, 4 s. Only these two statuses say the request was not processed, so resending even an
/// `Email/set` is safe; other failures (500, timeouts) go back to the caller, which decides.
fn unprocessed_wait(error: &JmapError, attempt: u32) -> Option<Duration> {
    if attempt >= UNPROCESSED_RETRIES || !matches!(error.status(), Some(429 | 503)) {
        return None;
    }
    let wait = error
        .retry_after()
        .unwrap_or(Duration::from_secs(1 << attempt.min(5)));
    (wait <= MAX_RETRY_AFTER).then_some(wait)
}

pub(crate) async fn check_status(
    url: &str,
    response: reqwest::Response,
) -> Result<reqwest::Response, JmapError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
        return Err(JmapError::Auth {
            url: url.to_owned(),
            status: status.as_u16(),
        });
    }
    let retry_after = response
        .headers()
        .get(header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after);
    let body = response.bytes().await.unwrap_or_default();
    let detail = match serde_json::from_slice::<Value>(&body) {
        Ok(problem) => [
            problem.get("type"),
            problem.get("detail"),
            problem.get("limit"),
        ]
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect::<Vec<_>>()
        .join(" "),
        Err(_) => String::from_utf8_lossy(&body).chars().take(200).collect(),
    };
    Err(JmapError::Http {
        url: url.to_owned(),
        status: status.as_u16(),
        retry_after,
        detail: detail.trim().to_owned(),
    })
}

/// `Retry-After` as seconds or an HTTP date (RFC 9110 §10.2.3).
fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let date = DateTime::parse_from_rfc2822(value).ok()?;
    (date.with_timezone(&Utc) - crate::clock::now())
        .to_std()
        .ok()
}

/// GET `url` with credentials, following up to five redirects. Credentials go only to the host
/// they were meant for: a redirect to another host is followed without them. Returns the final
/// URL and the successful response.
pub(crate) async fn get_following(
    http: &reqwest::Client,
    settings: &JmapSettings,
    url: &str,
    accept: &str,
    timeout: Duration,
) -> Result<(String, reqwest::Response), JmapError> {
    let first = parse_url(url)?;
    let mut current = first.clone();
    for _ in 0..=MAX_REDIRECTS {
        let mut request = http
            .get(current.clone())
            .header(header::ACCEPT, accept)
            .timeout(timeout);
        if current.host_str() == first.host_str() {
            request = request.header(header::AUTHORIZATION, settings.authorization());
        }
        let response = request
            .send()
            .await
            .map_err(|e| request_error(current.as_str(), e))?;
        if response.status().is_redirection() {
            let location = response
                .headers()
                .get(header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| JmapError::Protocol {
                    url: current.to_string(),
                    reason: format!("redirect {} without a Location", response.status()),
                    source: None,
                })?;
            let next = current.join(location).map_err(|e| JmapError::Url {
                url: location.to_owned(),
                source: Box::new(e),
            })?;
            tracing::debug!(from = %current, to = %next, status = %response.status(), "redirect");
            current = next;
            continue;
        }
        let response = check_status(current.as_str(), response).await?;
        return Ok((current.to_string(), response));
    }
    Err(JmapError::Protocol {
        url: url.to_owned(),
        reason: format!("more than {MAX_REDIRECTS} redirects"),
        source: None,
    })
}

async fn fetch_session(
    http: &reqwest::Client,
    settings: &JmapSettings,
) -> Result<Session, JmapError> {
    let (url, response) = get_following(
        http,
        settings,
        &settings.session_url,
        "application/json",
        settings.timeout,
    )
    .await?;
    let bytes = response.bytes().await.map_err(|e| request_error(&url, e))?;
    let json: Value = serde_json::from_slice(&bytes).map_err(|e| JmapError::Protocol {
        url: url.clone(),
        reason: "the session is not JSON".to_owned(),
        source: Some(Box::new(e)),
    })?;
    Session::from_json(&json, &url, settings.public_origin.as_deref())
}

/// A `*/set` call's refusal of `id`: the SetError object's `type` (`default_kind` without one)
/// and `description`.
fn set_failed(id: &str, error: Option<&Value>, default_kind: &str) -> JmapError {
    JmapError::SetFailed {
        id: id.to_owned(),
        kind: error
            .and_then(|e| e.get("type"))
            .and_then(Value::as_str)
            .unwrap_or(default_kind)
            .to_owned(),
        description: error
            .and_then(|e| e.get("description"))
            .and_then(Value::as_str)
            .map(str::to_owned),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cyrus_session() -> Value {
        json!({
            "capabilities": {
                CORE: { "maxCallsInRequest": 50, "maxObjectsInGet": 4096, "maxObjectsInSet": 4096 },
                MAIL: {},
            },
            "username": "worker@example.test",
            "apiUrl": "/jmap/",
            "downloadUrl": "/jmap/download/{accountId}/{blobId}/{name}?accept={type}",
            "uploadUrl": "/jmap/upload/{accountId}/",
            "eventSourceUrl": "/jmap/eventsource/?types={types}&closeafter={closeafter}&ping={ping}",
            "state": "0",
            "primaryAccounts": { MAIL: "worker@example.test" },
        })
    }

    #[test]
    fn relative_session_urls_are_resolved_against_the_session_url() {
        let s = Session::from_json(&cyrus_session(), "http://127.0.0.1:8081/jmap", None).unwrap();
        assert_eq!(s.api_url, "http://127.0.0.1:8081/jmap/");
        assert_eq!(
            s.download_url,
            "http://127.0.0.1:8081/jmap/download/{accountId}/{blobId}/{name}?accept={type}"
        );
        assert_eq!(
            s.upload_url,
            "http://127.0.0.1:8081/jmap/upload/{accountId}/"
        );
        assert_eq!(
            s.event_source("Email", 30).unwrap(),
            "http://127.0.0.1:8081/jmap/eventsource/?types=Email&closeafter=no&ping=30"
        );
        assert_eq!(s.account_id, "worker@example.test");
        assert_eq!((s.max_calls_in_request, s.max_objects_in_get), (50, 4096));
        assert_eq!(s.websocket, None);
        assert_eq!(
            s.blob_url("B 1", "a b/ü.txt", "text/plain"),
            "http://127.0.0.1:8081/jmap/download/worker%40example.test/B%201/a%20b%2F%C3%BC.txt?accept=text%2Fplain"
        );
    }

    #[test]
    fn public_origin_replaces_scheme_host_and_port_of_every_url() {
        let mut json = cyrus_session();
        json["apiUrl"] = json!("http://internal:8080/jmap/");
        json["capabilities"][WEBSOCKET] =
            json!({ "url": "ws://internal:8080/jmap/ws", "supportsPush": true });
        let s = Session::from_json(
            &json,
            "http://internal:8080/jmap/session",
            Some("https://mail.example.test"),
        )
        .unwrap();
        assert_eq!(s.api_url, "https://mail.example.test/jmap/");
        assert_eq!(
            s.websocket,
            Some(WebSocketInfo {
                url: "wss://mail.example.test/jmap/ws".into(),
                supports_push: true
            })
        );
        assert!(
            s.download_url
                .starts_with("https://mail.example.test/jmap/download/{accountId}/")
        );
    }

    #[test]
    fn a_session_without_a_mail_account_is_refused() {
        let mut json = cyrus_session();
        json["primaryAccounts"] = json!({});
        let error = Session::from_json(&json, "http://h/jmap", None).unwrap_err();
        assert!(error.to_string().contains("no primary account"), "{error}");
        assert!(error.is_permanent());
    }

    #[test]
    fn header_properties_cover_every_protocol_header() {
        let props = header_properties();
        for name in aamp::header::ALL
            .iter()
            .chain(&asmtp::header::ALL)
            .chain(&EXTRA_HEADERS)
        {
            assert!(
                props.contains(&format!("header:{name}:asText:all")),
                "{name}"
            );
        }
        assert!(props.contains(&"receivedAt".to_owned()));
    }

    #[test]
    fn change_pages_merge() {
        let v = |s: &[&str]| s.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
        let mut m = Merge::default();
        m.page(v(&["a", "b"]), v(&["x"]), v(&["y"]));
        m.page(v(&["c"]), v(&["a", "x", "z"]), v(&["b", "z"]));
        let c = m.finish("s2".into());
        assert_eq!(c.created, v(&["a", "c"]));
        assert_eq!(c.updated, v(&["x"]));
        assert_eq!(c.destroyed, v(&["y", "z"]));
        assert_eq!(c.new_state, "s2");
    }

    #[test]
    fn method_errors_are_typed() {
        let e = method_error(
            "Email/set",
            &json!({ "ifInState": "s1" }),
            &json!({ "type": "stateMismatch" }),
        );
        assert!(e.is_state_mismatch() && !e.is_transient() && !e.is_permanent());
        assert_eq!(
            e.to_string(),
            "cannot run Email/set: the state is no longer 's1'"
        );
        let e = method_error(
            "Email/changes",
            &json!({ "sinceState": "s0" }),
            &json!({ "type": "cannotCalculateChanges" }),
        );
        assert!(e.is_cannot_calculate_changes());
        let e = method_error(
            "Email/get",
            &json!({}),
            &json!({ "type": "serverUnavailable" }),
        );
        assert!(e.is_transient());
        let e = method_error(
            "Email/get",
            &json!({}),
            &json!({ "type": "serverFail", "description": "x" }),
        );
        assert!(e.is_permanent());
        assert_eq!(
            e.to_string(),
            "cannot run Email/get: the server answered 'serverFail': x"
        );
    }

    #[test]
    fn keywords_are_checked_and_lowercased() {
        assert_eq!(
            checked_keyword("$TaskMail-Claimed").unwrap(),
            "$taskmail-claimed"
        );
        for bad in ["", "a b", "a/b", "a~b", "(x", "\u{e9}"] {
            assert!(
                matches!(checked_keyword(bad), Err(JmapError::InvalidKeyword(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        assert_eq!(parse_retry_after(" 7 "), Some(Duration::from_secs(7)));
        let later = crate::clock::now() + chrono::Duration::seconds(120);
        let d = parse_retry_after(&later.to_rfc2822()).unwrap();
        assert!(
            d > Duration::from_secs(100) && d <= Duration::from_secs(120),
            "{d:?}"
        );
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn errors_classify_by_status() {
        let http = |status| JmapError::Http {
            url: "u".into(),
            status,
            retry_after: None,
            detail: String::new(),
        };
        assert!(http(503).is_transient() && http(429).is_transient());
        assert!(http(400).is_permanent() && http(404).is_permanent());
        assert_eq!(http(503).exit_code(), 75);
        let auth = JmapError::Auth {
            url: "u".into(),
            status: 401,
        };
        assert!(auth.is_auth() && auth.is_permanent());
        assert_eq!((auth.status(), auth.exit_code()), (Some(401), 77));
    }

    #[test]
    fn settings_debug_hides_the_password() {
        let s = JmapSettings::new("http://h/", "u", "hunter2");
        assert!(!format!("{s:?}").contains("hunter2"));
        assert!(s.authorization().starts_with("Basic "));
    }
}
