//! The push supervisor: turns whatever push channel the JMAP server offers into "something may
//! have changed" [`Hint`]s on a bounded channel. Push is only a hint (style point 32): after
//! every hint the daemon calls [`MailStore::changes`](super::MailStore::changes) since its
//! persisted state, which is the truth.
//!
//! The channel is chosen from the session at run time, on every (re)connect, never from the
//! server's name:
//!
//! 1. WebSocket ([RFC 8887](https://www.rfc-editor.org/rfc/rfc8887)) if the session advertises
//!    `urn:ietf:params:jmap:websocket` with `supportsPush`: `WebSocketPushEnable` for `Email`,
//!    WebSocket pings every third of the liveness time;
//! 2. else EventSource ([RFC 8620 §7.3](https://www.rfc-editor.org/rfc/rfc8620#section-7.3)) if
//!    `eventSourceUrl` answers `200 text/event-stream` (Cyrus built without wslay answers `204`),
//!    with `ping=N` in the URL (Stalwart clamps N to at least 30 s);
//! 3. else polling: the poll ticks are the only source.
//!
//! `push = websocket | eventsource | poll` in the config forces one. Hints: one at every
//! (re)connect (catch up on what happened while disconnected), one per `StateChange` that names
//! `Email` for our account, and one per safety-poll tick (`poll-interval`), whatever the channel.
//! A channel silent for `push-liveness` is dead; every failure reconnects after a jittered
//! exponential backoff. The current channel and the last error are published on a
//! [`watch`] channel for `taskmail doctor`. The hint channel is bounded: when it is full a hint
//! is dropped, as the one already waiting asks for the same `Email/changes`.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::{SinkExt as _, StreamExt as _};
use reqwest::header;
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{self, Message};

use super::jmap::{JmapClient, JmapError, Session, check_status, request_error};
use super::smtp::{Cause, error_chain};
use super::{Backoff, BackoffError};
use crate::config::{Jmap, PushMode};

/// How long the supervisor waits before looking again for push on a server that offers none.
const REPROBE: Duration = Duration::from_secs(600);
/// An event-stream line longer than this is garbage: the buffer is dropped.
const MAX_SSE_BUFFER: usize = 1024 * 1024;

/// A push channel, or its absence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushKind {
    /// JMAP over WebSocket (RFC 8887).
    WebSocket,
    /// JMAP EventSource (`text/event-stream`).
    EventSource,
    /// No push: `Email/changes` every poll interval.
    Poll,
}

impl fmt::Display for PushKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PushKind::WebSocket => "websocket",
            PushKind::EventSource => "eventsource",
            PushKind::Poll => "poll",
        })
    }
}

/// "Something may have changed: call `Email/changes`."
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hint {
    /// A channel was (re)established, or polling started: catch up.
    Connected(PushKind),
    /// The server announced a new Email state.
    StateChange(PushKind),
    /// A safety-poll tick.
    Tick,
}

/// What the supervisor is doing, for `taskmail doctor`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushStatus {
    /// The configured mode.
    pub mode: PushMode,
    /// Where hints come from now: a connected push channel, or [`PushKind::Poll`] while there
    /// is none (not offered, or reconnecting).
    pub channel: PushKind,
    /// When the current push channel connected.
    pub connected_since: Option<DateTime<Utc>>,
    /// When anything (an event, a ping) last arrived on it.
    pub last_event_at: Option<DateTime<Utc>>,
    /// The last failure, with its causes.
    pub last_error: Option<String>,
    /// When it happened.
    pub last_error_at: Option<DateTime<Utc>>,
    /// How many times a channel was lost.
    pub disconnects: u64,
    /// Hints sent (dropped ones not counted).
    pub hints: u64,
}

/// Why a push channel failed.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// A setting is out of range.
    #[error("cannot use push settings: {0}")]
    Settings(String),
    /// The backoff bounds are wrong.
    #[error("cannot use the push reconnect backoff")]
    Backoff(#[source] BackoffError),
    /// The session could not be fetched, or the stream could not be opened.
    #[error("cannot reach the JMAP server for push")]
    Jmap(#[source] JmapError),
    /// The server does not offer this channel.
    #[error("cannot use {kind} push: {reason}")]
    NotOffered {
        /// The channel.
        kind: PushKind,
        /// What the session or the server said.
        reason: String,
    },
    /// The WebSocket could not be opened or failed.
    #[error("cannot use the WebSocket {url}")]
    WebSocket {
        /// The URL.
        url: String,
        /// What tungstenite said.
        #[source]
        source: Cause,
    },
    /// Nothing arrived for the liveness time.
    #[error("cannot keep the {kind} channel: nothing arrived for {silence:?}")]
    Silent {
        /// The channel.
        kind: PushKind,
        /// How long it was silent.
        silence: Duration,
    },
    /// The server ended the channel.
    #[error("cannot keep the {kind} channel: the server closed it")]
    Closed {
        /// The channel.
        kind: PushKind,
    },
}

impl PushError {
    /// Whether reconnecting may help (everything but bad settings, refused logins and
    /// channels the server does not offer).
    pub fn is_transient(&self) -> bool {
        match self {
            PushError::Jmap(e) => e.is_transient(),
            PushError::Settings(_) | PushError::Backoff(_) | PushError::NotOffered { .. } => false,
            _ => true,
        }
    }

    /// Whether reconnecting will fail the same way.
    pub fn is_permanent(&self) -> bool {
        !self.is_transient()
    }

    /// The HTTP status, where there is one.
    pub fn status(&self) -> Option<u16> {
        match self {
            PushError::Jmap(e) => e.status(),
            _ => None,
        }
    }
}

/// The supervisor's settings, checked at construction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PushSettings {
    mode: PushMode,
    poll_interval: Duration,
    liveness: Duration,
    backoff: Backoff,
}

impl PushSettings {
    /// Checks the values: intervals longer than zero, backoff from `backoff_min` to
    /// `backoff_max`.
    pub fn new(
        mode: PushMode,
        poll_interval: Duration,
        liveness: Duration,
        backoff_min: Duration,
        backoff_max: Duration,
    ) -> Result<PushSettings, PushError> {
        if poll_interval.is_zero() {
            return Err(PushError::Settings(
                "the poll interval must be longer than zero".to_owned(),
            ));
        }
        if liveness < Duration::from_millis(300) {
            return Err(PushError::Settings(format!(
                "the liveness time {liveness:?} is too short (at least 300ms)"
            )));
        }
        Ok(PushSettings {
            mode,
            poll_interval,
            liveness,
            backoff: Backoff::new(backoff_min, backoff_max).map_err(PushError::Backoff)?,
        })
    }

    /// The account's `[jmap]` settings, with a reconnect backoff from 1 s to 60 s.
    pub fn from_config(jmap: &Jmap) -> Result<PushSettings, PushError> {
        PushSettings::new(
            jmap.push,
            jmap.poll_interval,
            jmap.push_liveness,
            Duration::from_secs(1),
            Duration::from_secs(60),
        )
    }

    /// The configured mode.
    pub fn mode(&self) -> PushMode {
        self.mode
    }

    /// The safety-poll interval.
    pub fn poll_interval(&self) -> Duration {
        self.poll_interval
    }

    /// How long a silent channel lives.
    pub fn liveness(&self) -> Duration {
        self.liveness
    }

    /// The reconnect backoff.
    pub fn backoff(&self) -> Backoff {
        self.backoff
    }

    /// The EventSource `ping` (whole seconds): a third of the liveness time, so that two
    /// missed pings still leave the channel alive.
    fn ping_seconds(&self) -> u64 {
        (self.liveness / 3).as_secs().max(1)
    }
}

/// Supervises one account's push channel. Build with [`PushSupervisor::new`], then spawn
/// [`PushSupervisor::run`].
#[derive(Debug)]
pub struct PushSupervisor {
    client: Arc<JmapClient>,
    settings: PushSettings,
    hints: mpsc::Sender<Hint>,
    status: watch::Sender<PushStatus>,
}

/// What a connected channel ended with: the error and whether it had been up long enough to
/// reset the backoff.
struct Ended {
    error: PushError,
    healthy: bool,
}

impl PushSupervisor {
    /// A supervisor, the receiving end of its hints (at most `capacity` waiting, at least 1)
    /// and its status.
    pub fn new(
        client: Arc<JmapClient>,
        settings: PushSettings,
        capacity: usize,
    ) -> (
        PushSupervisor,
        mpsc::Receiver<Hint>,
        watch::Receiver<PushStatus>,
    ) {
        let (hints, hint_rx) = mpsc::channel(capacity.max(1));
        let (status, status_rx) = watch::channel(PushStatus {
            mode: settings.mode,
            channel: PushKind::Poll,
            connected_since: None,
            last_event_at: None,
            last_error: None,
            last_error_at: None,
            disconnects: 0,
            hints: 0,
        });
        (
            PushSupervisor {
                client,
                settings,
                hints,
                status,
            },
            hint_rx,
            status_rx,
        )
    }

    /// Runs until `shutdown` completes or the hint receiver is dropped.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let ticks = async {
            let period = self.settings.poll_interval;
            let mut interval = tokio::time::interval_at(Instant::now() + period, period);
            interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
            loop {
                interval.tick().await;
                self.hint(Hint::Tick);
            }
        };
        tokio::select! {
            () = shutdown => tracing::debug!("push supervisor: shutdown"),
            () = self.hints.closed() => tracing::debug!("push supervisor: nobody listens"),
            () = ticks => {}
            () = self.channels() => {}
        }
        self.status.send_modify(|s| {
            s.channel = PushKind::Poll;
            s.connected_since = None;
        });
    }

    fn hint(&self, hint: Hint) {
        match self.hints.try_send(hint) {
            Ok(()) => self.status.send_modify(|s| s.hints += 1),
            // NOTE: a full channel already holds a hint that asks for the same Email/changes
            Err(mpsc::error::TrySendError::Full(_)) => {}
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    fn failed(&self, error: &PushError) {
        let text = error_chain(error);
        tracing::warn!(error = %text, "push channel");
        self.status.send_modify(|s| {
            s.channel = PushKind::Poll;
            s.connected_since = None;
            s.last_error = Some(text);
            s.last_error_at = Some(crate::clock::now());
        });
    }

    fn connected(&self, kind: PushKind) {
        tracing::info!(channel = %kind, "push channel connected");
        let now = crate::clock::now();
        self.status.send_modify(|s| {
            s.channel = kind;
            s.connected_since = Some(now);
            s.last_event_at = Some(now);
        });
        self.hint(Hint::Connected(kind));
    }

    fn alive(&self) {
        self.status
            .send_modify(|s| s.last_event_at = Some(crate::clock::now()));
    }

    /// Connect, run, reconnect: forever.
    async fn channels(&self) {
        let mut failures: u32 = 0;
        let mut polling_announced = false;
        loop {
            let wait = match self.connect_best().await {
                Ok(ended) => {
                    polling_announced = false;
                    self.status.send_modify(|s| s.disconnects += 1);
                    self.failed(&ended.error);
                    if ended.healthy {
                        failures = 0;
                    }
                    let delay = self.settings.backoff.delay(failures);
                    failures = failures.saturating_add(1);
                    delay
                }
                Err(error) if error.is_permanent() => {
                    // NOTE: nothing to connect to (not offered, or refused): poll, look again
                    // later.
                    self.failed(&error);
                    if !polling_announced {
                        polling_announced = true;
                        self.hint(Hint::Connected(PushKind::Poll));
                    }
                    if self.settings.mode == PushMode::Poll {
                        return std::future::pending().await;
                    }
                    REPROBE
                }
                Err(error) => {
                    self.failed(&error);
                    if !polling_announced {
                        polling_announced = true;
                        self.hint(Hint::Connected(PushKind::Poll));
                    }
                    let delay = self.settings.backoff.delay(failures);
                    failures = failures.saturating_add(1);
                    delay
                }
            };
            tracing::debug!(delay_ms = wait.as_millis() as u64, "push: next connect");
            tokio::time::sleep(wait).await;
        }
    }

    /// Picks and runs the best channel. `Err` if none could be connected; `Ok` once a connected
    /// channel ended.
    async fn connect_best(&self) -> Result<Ended, PushError> {
        if self.settings.mode == PushMode::Poll {
            return Err(PushError::NotOffered {
                kind: PushKind::Poll,
                reason: "push = \"poll\" in the config".to_owned(),
            });
        }
        let session = self
            .client
            .refresh_session()
            .await
            .map_err(PushError::Jmap)?;
        let mut last = None;
        for kind in [PushKind::WebSocket, PushKind::EventSource] {
            let wanted = match self.settings.mode {
                PushMode::Auto => true,
                PushMode::Websocket => kind == PushKind::WebSocket,
                PushMode::Eventsource => kind == PushKind::EventSource,
                PushMode::Poll => false,
            };
            if !wanted {
                continue;
            }
            let started = Instant::now();
            let outcome = match kind {
                PushKind::WebSocket => self.websocket(&session).await,
                _ => self.event_source(&session).await,
            };
            match outcome {
                Ok(error) => {
                    return Ok(Ended {
                        error,
                        healthy: started.elapsed() >= self.settings.liveness,
                    });
                }
                Err(error) => {
                    tracing::debug!(channel = %kind, error = %error_chain(&error), "push channel unavailable");
                    // NOTE: a transient failure of a channel that exists outranks "not offered"
                    let keep = match (&last, &error) {
                        (Some(prev), PushError::NotOffered { .. }) => {
                            !matches!(prev, PushError::NotOffered { .. })
                        }
                        _ => false,
                    };
                    if !keep {
                        last = Some(error);
                    }
                }
            }
        }
        Err(last.unwrap_or(PushError::NotOffered {
            kind: PushKind::Poll,
            reason: "no push channel selected".to_owned(),
        }))
    }

    /// Runs a WebSocket push channel. `Err` if it could not be set up; `Ok(why it ended)`.
    async fn websocket(&self, session: &Session) -> Result<PushError, PushError> {
        let Some(info) = session.websocket.as_ref().filter(|w| w.supports_push) else {
            return Err(PushError::NotOffered {
                kind: PushKind::WebSocket,
                reason: format!(
                    "the session does not advertise {} with supportsPush",
                    super::jmap::WEBSOCKET
                ),
            });
        };
        let ws_error = |source: Cause| PushError::WebSocket {
            url: info.url.clone(),
            source,
        };
        let mut request = info
            .url
            .as_str()
            .into_client_request()
            .map_err(|e| ws_error(Box::new(e)))?;
        let authorization = HeaderValue::from_str(&self.client.settings().authorization())
            .map_err(|e| ws_error(Box::new(e)))?;
        request
            .headers_mut()
            .insert(header::AUTHORIZATION.as_str(), authorization);
        request
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", HeaderValue::from_static("jmap"));
        let connect = tokio_tungstenite::connect_async(request);
        let (mut socket, _response) =
            match tokio::time::timeout(self.client.settings().timeout, connect).await {
                Err(_) => return Err(ws_error("no handshake within the request timeout".into())),
                Ok(Err(tungstenite::Error::Http(response))) => {
                    let status = response.status().as_u16();
                    return Err(match status {
                        401 | 403 => PushError::Jmap(JmapError::Auth {
                            url: info.url.clone(),
                            status,
                        }),
                        _ => ws_error(format!("the server answered HTTP {status}").into()),
                    });
                }
                Ok(Err(e)) => return Err(ws_error(Box::new(e))),
                Ok(Ok(pair)) => pair,
            };
        let enable = json!({
            "@type": "WebSocketPushEnable",
            "dataTypes": ["Email"],
            "pushState": null,
        });
        socket
            .send(Message::text(enable.to_string()))
            .await
            .map_err(|e| ws_error(Box::new(e)))?;
        self.connected(PushKind::WebSocket);

        let liveness = self.settings.liveness;
        let mut deadline = Instant::now() + liveness;
        let mut ping = tokio::time::interval_at(Instant::now() + liveness / 3, liveness / 3);
        ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => {
                    return Ok(PushError::Silent { kind: PushKind::WebSocket, silence: liveness });
                }
                _ = ping.tick() => {
                    if let Err(e) = socket.send(Message::Ping(Vec::new().into())).await {
                        return Ok(ws_error(Box::new(e)));
                    }
                }
                message = socket.next() => {
                    deadline = Instant::now() + liveness;
                    self.alive();
                    match message {
                        None | Some(Ok(Message::Close(_))) => {
                            return Ok(PushError::Closed { kind: PushKind::WebSocket });
                        }
                        Some(Err(e)) => return Ok(ws_error(Box::new(e))),
                        Some(Ok(Message::Text(text))) => {
                            let value: Value = serde_json::from_str(text.as_str()).unwrap_or(Value::Null);
                            match value.get("@type").and_then(Value::as_str) {
                                Some("StateChange") if names_email(&value, &session.account_id) => {
                                    self.hint(Hint::StateChange(PushKind::WebSocket));
                                }
                                Some("RequestError") => {
                                    return Ok(ws_error(format!("the server refused WebSocketPushEnable: {value}").into()));
                                }
                                _ => {}
                            }
                        }
                        Some(Ok(_)) => {}
                    }
                }
            }
        }
    }

    /// Runs an EventSource push channel. `Err` if it could not be opened (a `204`, or anything
    /// but `text/event-stream`, means the server has none); `Ok(why it ended)`.
    async fn event_source(&self, session: &Session) -> Result<PushError, PushError> {
        let Some(url) = session.event_source("Email", self.settings.ping_seconds()) else {
            return Err(PushError::NotOffered {
                kind: PushKind::EventSource,
                reason: "the session has no eventSourceUrl".to_owned(),
            });
        };
        let request = self
            .client
            .http()
            .get(url.as_str())
            .header(
                header::AUTHORIZATION,
                self.client.settings().authorization(),
            )
            .header(header::ACCEPT, "text/event-stream")
            .header(header::CACHE_CONTROL, "no-cache")
            .send();
        let response = match tokio::time::timeout(self.client.settings().timeout, request).await {
            Err(_) => {
                return Err(PushError::Jmap(JmapError::Protocol {
                    url,
                    reason: "no response within the request timeout".to_owned(),
                    source: None,
                }));
            }
            Ok(result) => result.map_err(|e| PushError::Jmap(request_error(&url, e)))?,
        };
        let mut response = check_status(&url, response)
            .await
            .map_err(PushError::Jmap)?;
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_ascii_lowercase();
        if response.status().as_u16() != 200 || !content_type.starts_with("text/event-stream") {
            return Err(PushError::NotOffered {
                kind: PushKind::EventSource,
                reason: format!(
                    "the eventSourceUrl answered {} {content_type}",
                    response.status().as_u16()
                )
                .trim()
                .to_owned(),
            });
        }
        self.connected(PushKind::EventSource);

        let liveness = self.settings.liveness;
        let mut parser = SseParser::default();
        loop {
            let chunk = match tokio::time::timeout(liveness, response.chunk()).await {
                Err(_) => {
                    return Ok(PushError::Silent {
                        kind: PushKind::EventSource,
                        silence: liveness,
                    });
                }
                Ok(Err(e)) => return Ok(PushError::Jmap(request_error(&url, e))),
                Ok(Ok(None)) => {
                    return Ok(PushError::Closed {
                        kind: PushKind::EventSource,
                    });
                }
                Ok(Ok(Some(chunk))) => chunk,
            };
            self.alive();
            for event in parser.push(&chunk) {
                if event.event != "state" {
                    continue;
                }
                // NOTE: unreadable data still hints: a spurious Email/changes costs little.
                let value: Value = serde_json::from_str(&event.data).unwrap_or(Value::Null);
                if value.is_null() || names_email(&value, &session.account_id) {
                    self.hint(Hint::StateChange(PushKind::EventSource));
                }
            }
        }
    }
}

/// Whether a `StateChange` object names the Email type for `account_id`.
fn names_email(state_change: &Value, account_id: &str) -> bool {
    state_change
        .get("changed")
        .and_then(|c| c.get(account_id))
        .and_then(Value::as_object)
        .is_some_and(|types| types.contains_key("Email"))
}

/// One server-sent event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SseEvent {
    /// The `event:` field (`message` when absent).
    pub(crate) event: String,
    /// The `data:` lines, joined by line feeds.
    pub(crate) data: String,
}

/// A sans-I/O `text/event-stream` reader (WHATWG HTML §9.2.6): feed it bytes as they come.
#[derive(Debug, Default)]
pub(crate) struct SseParser {
    buffer: Vec<u8>,
    event: String,
    data: Vec<String>,
}

impl SseParser {
    /// Consumes `bytes`; returns the events they complete.
    pub(crate) fn push(&mut self, bytes: &[u8]) -> Vec<SseEvent> {
        self.buffer.extend_from_slice(bytes);
        let mut events = Vec::new();
        let mut start = 0;
        while let Some(offset) = self.buffer[start..].iter().position(|&b| b == b'\n') {
            let end = start + offset;
            let line = String::from_utf8_lossy(&self.buffer[start..end]);
            let line = line.strip_suffix('\r').unwrap_or(&line).to_owned();
            start = end + 1;
            if line.is_empty() {
                if !self.data.is_empty() || !self.event.is_empty() {
                    let event = std::mem::take(&mut self.event);
                    events.push(SseEvent {
                        event: if event.is_empty() {
                            "message".to_owned()
                        } else {
                            event
                        },
                        data: std::mem::take(&mut self.data).join("\n"),
                    });
                }
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line.as_str(), ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "event" => self.event = value.to_owned(),
                "data" => self.data.push(value.to_owned()),
                _ => {}
            }
        }
        self.buffer.drain(..start);
        if self.buffer.len() > MAX_SSE_BUFFER {
            tracing::warn!(
                bytes = self.buffer.len(),
                "event stream line too long; dropped"
            );
            self.buffer.clear();
        }
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_events_are_parsed_across_chunks() {
        let mut p = SseParser::default();
        assert!(p.push(b"event: state\r\ndata: {\"a\":").is_empty());
        let events =
            p.push(b"1}\r\n\r\n: comment\n\nevent: ping\ndata: {}\n\ndata: x\ndata: y\n\n");
        assert_eq!(
            events,
            vec![
                SseEvent {
                    event: "state".into(),
                    data: "{\"a\":1}".into()
                },
                SseEvent {
                    event: "ping".into(),
                    data: "{}".into()
                },
                SseEvent {
                    event: "message".into(),
                    data: "x\ny".into()
                },
            ]
        );
        assert!(p.push(b"event: state\n").is_empty());
        assert_eq!(p.push(b"data:{}\n\n")[0].data, "{}");
    }

    #[test]
    fn state_changes_are_matched_by_account_and_type() {
        let change = json!({ "@type": "StateChange", "changed": { "c": { "Email": "s1", "Mailbox": "m" } } });
        assert!(names_email(&change, "c"));
        assert!(!names_email(&change, "d"));
        let other = json!({ "@type": "StateChange", "changed": { "c": { "Mailbox": "m" } } });
        assert!(!names_email(&other, "c"));
    }

    #[test]
    fn settings_are_validated() {
        let s = Duration::from_secs;
        assert!(PushSettings::new(PushMode::Auto, s(0), s(90), s(1), s(60)).is_err());
        assert!(PushSettings::new(PushMode::Auto, s(30), Duration::ZERO, s(1), s(60)).is_err());
        let backoff = PushSettings::new(PushMode::Auto, s(30), s(90), s(10), s(1)).unwrap_err();
        assert!(matches!(
            backoff,
            PushError::Backoff(BackoffError::MaxBelowMin { .. })
        ));
        assert!(backoff.is_permanent());
        let ok = PushSettings::new(PushMode::Auto, s(30), s(90), s(1), s(60)).unwrap();
        assert_eq!(ok.ping_seconds(), 30);
        assert_eq!(ok.poll_interval(), s(30));
    }

    #[test]
    fn push_errors_classify() {
        let silent = PushError::Silent {
            kind: PushKind::EventSource,
            silence: Duration::from_secs(90),
        };
        assert!(silent.is_transient());
        assert_eq!(
            silent.to_string(),
            "cannot keep the eventsource channel: nothing arrived for 90s"
        );
        let auth = PushError::Jmap(JmapError::Auth {
            url: "u".into(),
            status: 401,
        });
        assert!(auth.is_permanent() && auth.status() == Some(401));
        let none = PushError::NotOffered {
            kind: PushKind::WebSocket,
            reason: "r".into(),
        };
        assert!(none.is_permanent());
    }
}
