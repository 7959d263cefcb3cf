//! SMTP submission ([RFC 6409](https://www.rfc-editor.org/rfc/rfc6409)) through lettre: a
//! pooled connection per account, STARTTLS, implicit TLS or (loopback only, as config
//! validation allows) plaintext, AUTH PLAIN/LOGIN, a timeout on every command: the dialogue up
//! to the login, each message, the NOOP probe of an idle pooled connection and the QUIT of one
//! given up on (lettre's `abort` waits for the answer to QUIT, which a stalled server never
//! sends) are all bounded.
//!
//! Failures classify themselves ([RFC 5321 §4.2.1](https://www.rfc-editor.org/rfc/rfc5321#section-4.2.1)):
//! 4yz replies, timeouts, refused or dropped connections are transient and retried here with
//! jittered exponential backoff, a bounded number of times; 5yz replies are permanent; 530, 534,
//! 535 and 538 mean the login was refused ([`SendError::Auth`], exit 77).
//!
//! Stalwart ends an SMTP session after a number of messages (10 by default) with
//! `452 4.4.5`, and any server may say `421` and close: lettre drops a connection after any
//! error, so the first retry after such a session-level reply goes out at once on a fresh
//! connection. The password is resolved when the transport is built and never logged.

use std::fmt;
use std::time::Duration;

use std::sync::{Arc, Mutex};
use std::time::Instant;

use lettre::address::{Address, Envelope};
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{AsyncSmtpConnection, TlsParameters};
use lettre::transport::smtp::extension::ClientId;

use super::{Backoff, SmtpEnvelope, Submit};

#[path = "smtp_dsn.rs"]
mod dsn;
use crate::config::{Account, SecretError, SmtpTls};

/// A boxed cause, so that stubs and lettre errors fit the same variants.
pub(crate) type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a message could not be submitted.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The password reference could not be resolved.
    #[error("cannot resolve the SMTP password")]
    Secret(#[source] SecretError),
    /// An envelope address is not a valid address.
    #[error("cannot use '{address}' as an SMTP envelope address")]
    Address {
        /// The address as given.
        address: String,
        /// What lettre said.
        #[source]
        source: Cause,
    },
    /// The server refused the login (530, 534, 535, 538).
    #[error("cannot log in to {endpoint}: authentication refused{}", status_suffix(*.status))]
    Auth {
        /// `host:port`.
        endpoint: String,
        /// The SMTP reply code.
        status: Option<u16>,
        /// The server's reply.
        #[source]
        source: Cause,
    },
    /// A 5yz reply: the message will not be accepted as it is.
    #[error("cannot send through {endpoint}: refused{}", status_suffix(Some(*.status)))]
    Rejected {
        /// `host:port`.
        endpoint: String,
        /// The SMTP reply code.
        status: u16,
        /// The server's reply.
        #[source]
        source: Cause,
    },
    /// A 4yz reply, a timeout or a dropped connection, still failing after the retries.
    #[error("cannot send through {endpoint} now: temporary failure{} after {attempts} attempt(s)", status_suffix(*.status))]
    Temporary {
        /// `host:port`.
        endpoint: String,
        /// The SMTP reply code, when the server gave one.
        status: Option<u16>,
        /// How many times the message was tried.
        attempts: u32,
        /// The last failure.
        #[source]
        source: Cause,
    },
    /// The server could not be reached at all (refused, no route).
    #[error("cannot connect to {endpoint} after {attempts} attempt(s)")]
    Unreachable {
        /// `host:port`.
        endpoint: String,
        /// How many times it was tried.
        attempts: u32,
        /// The last failure.
        #[source]
        source: Cause,
    },
    /// TLS, protocol or client-side failures that retrying will not fix.
    #[error("cannot send through {endpoint}")]
    Failed {
        /// `host:port`.
        endpoint: String,
        /// What went wrong.
        #[source]
        source: Cause,
    },
}

fn status_suffix(status: Option<u16>) -> String {
    status.map(|s| format!(" ({s})")).unwrap_or_default()
}

impl SendError {
    /// Whether sending the same message later may succeed (4yz, timeouts, connections).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            SendError::Temporary { .. } | SendError::Unreachable { .. }
        )
    }

    /// Whether sending the same message again will fail the same way.
    pub fn is_permanent(&self) -> bool {
        !self.is_transient()
    }

    /// Whether the server refused the login (or the password could not be found).
    pub fn is_auth(&self) -> bool {
        matches!(self, SendError::Auth { .. })
    }

    /// The SMTP reply code, when the server gave one.
    pub fn status(&self) -> Option<u16> {
        match self {
            SendError::Auth { status, .. } | SendError::Temporary { status, .. } => *status,
            SendError::Rejected { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The documented exit code: 77 login refused, 69 server unreachable, 75 temporary
    /// failure, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            SendError::Auth { .. } => 77,
            SendError::Unreachable { .. } => 69,
            SendError::Temporary { .. } => 75,
            _ => 1,
        }
    }
}

/// How often and how patiently a transient failure is retried inside one
/// [`Submit::send_raw`] call. The outbox retries later on its own schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Tries in all, at least 1.
    pub attempts: u32,
    /// Delays between them.
    pub backoff: Backoff,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 4,
            backoff: Backoff {
                min: Duration::from_millis(250),
                max: Duration::from_secs(8),
            },
        }
    }
}

/// Everything needed to build an [`SmtpSubmit`], the password already resolved.
#[derive(Clone)]
pub struct SmtpSettings {
    /// Host name or IP address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Transport security.
    pub tls: SmtpTls,
    /// The AUTH login.
    pub login: String,
    password: String,
    /// Connections kept open for reuse.
    pub pool_size: u16,
    /// Timeout of each SMTP command.
    pub timeout: Duration,
    /// Retries of transient failures.
    pub retry: RetryPolicy,
}

impl fmt::Debug for SmtpSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // NOTE: never print the password
        f.debug_struct("SmtpSettings")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls)
            .field("login", &self.login)
            .field("pool_size", &self.pool_size)
            .field("timeout", &self.timeout)
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

impl SmtpSettings {
    /// Settings with the defaults of the config (pool of 4, 30 s timeout, 4 tries).
    pub fn new(
        host: impl Into<String>,
        port: u16,
        tls: SmtpTls,
        login: impl Into<String>,
        password: impl Into<String>,
    ) -> SmtpSettings {
        SmtpSettings {
            host: host.into(),
            port,
            tls,
            login: login.into(),
            password: password.into(),
            pool_size: 4,
            timeout: Duration::from_secs(30),
            retry: RetryPolicy::default(),
        }
    }

    /// The settings of a validated account; resolves its password (runs the secret command,
    /// reads the file or the variable).
    pub fn from_account(account: &Account) -> Result<SmtpSettings, SendError> {
        let password = account.password.resolve().map_err(SendError::Secret)?;
        let mut settings = SmtpSettings::new(
            account.smtp.host.clone(),
            account.smtp.port,
            account.smtp.tls,
            account.login.clone(),
            password,
        );
        settings.pool_size = account.smtp.pool_size;
        settings.timeout = account.smtp.timeout;
        Ok(settings)
    }

    /// The same settings with another retry policy.
    pub fn with_retry(mut self, retry: RetryPolicy) -> SmtpSettings {
        self.retry = retry;
        self
    }

    /// `host:port`, for messages.
    pub fn endpoint(&self) -> String {
        if self.host.contains(':') && !self.host.starts_with('[') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// SMTP submission for one account: pooled lettre connections plus retry and classification.
///
/// NOTE: the pool is ours rather than lettre's `AsyncSmtpTransport` pool, because lettre
/// connects without `TCP_NODELAY` and writes a message's final `CRLF.CRLF` in a write of its
/// own: Nagle's algorithm then holds that write until the server's delayed ACK (40 ms on Linux),
/// so every message cost ~44 ms on loopback against ~2 ms for the same submission with
/// `TCP_NODELAY` (measured on both test servers). We open the TCP stream, set `TCP_NODELAY`, and
/// hand it to lettre's connection for the protocol (EHLO, STARTTLS, AUTH, MAIL/RCPT/DATA).
#[derive(Clone)]
pub struct SmtpSubmit {
    inner: Arc<Inner>,
    endpoint: String,
    retry: RetryPolicy,
}

struct Inner {
    host: String,
    port: u16,
    tls: SmtpTls,
    tls_parameters: Option<TlsParameters>,
    timeout: Duration,
    credentials: Credentials,
    hello: ClientId,
    pool_size: usize,
    idle: Mutex<Vec<(AsyncSmtpConnection, Instant)>>,
}

/// A pooled connection idle for longer than this is checked with NOOP before it is reused.
const IDLE_CHECK: Duration = Duration::from_secs(30);

/// How long a connection given up on may take to say goodbye (QUIT) before it is dropped.
const ABORT_WAIT: Duration = Duration::from_secs(2);

impl fmt::Debug for SmtpSubmit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SmtpSubmit")
            .field("endpoint", &self.endpoint)
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

impl SmtpSubmit {
    /// Builds the transport; connects lazily, on the first send.
    pub fn new(settings: SmtpSettings) -> Result<SmtpSubmit, SendError> {
        let endpoint = settings.endpoint();
        let tls_parameters = match settings.tls {
            // NOTE: config validation allows plaintext only to this machine, and only with
            // allow-plaintext = true.
            SmtpTls::Plaintext => None,
            SmtpTls::Starttls | SmtpTls::Implicit => Some(
                TlsParameters::new(settings.host.clone()).map_err(|e| SendError::Failed {
                    endpoint: endpoint.clone(),
                    source: Box::new(e),
                })?,
            ),
        };
        let mut retry = settings.retry;
        retry.attempts = retry.attempts.max(1);
        Ok(SmtpSubmit {
            inner: Arc::new(Inner {
                host: settings.host,
                port: settings.port,
                tls: settings.tls,
                tls_parameters,
                timeout: settings.timeout,
                credentials: Credentials::new(settings.login, settings.password),
                hello: ClientId::default(),
                pool_size: usize::from(settings.pool_size.max(1)),
                idle: Mutex::new(Vec::new()),
            }),
            endpoint,
            retry,
        })
    }

    /// The transport of a validated account (resolves its password).
    pub fn from_account(account: &Account) -> Result<SmtpSubmit, SendError> {
        SmtpSubmit::new(SmtpSettings::from_account(account)?)
    }

    /// `host:port`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Connects, greets, upgrades to TLS and logs in, without sending anything (for
    /// `taskmail doctor`). No retries.
    pub async fn check(&self) -> Result<(), SendError> {
        let mut conn = self.connect().await?;
        let _ = tokio::time::timeout(self.inner.timeout, conn.quit()).await;
        Ok(())
    }

    /// Closes pooled connections.
    pub async fn shutdown(&self) {
        let idle = match self.inner.idle.lock() {
            Ok(mut idle) => std::mem::take(&mut *idle),
            Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
        };
        for (mut conn, _) in idle {
            let _ = tokio::time::timeout(self.inner.timeout, conn.quit()).await;
        }
    }

    /// A fresh, logged-in connection. The whole dialogue up to the login (greeting, EHLO,
    /// STARTTLS, AUTH) has one `timeout`: a server that accepts the connection and then stays
    /// silent is a transient failure, not a hang.
    async fn connect(&self) -> Result<AsyncSmtpConnection, SendError> {
        match tokio::time::timeout(self.inner.timeout, self.connect_unbounded()).await {
            Ok(result) => result,
            Err(_) => Err(SendError::Temporary {
                endpoint: self.endpoint.clone(),
                status: None,
                attempts: 1,
                source: format!(
                    "no greeting or login answer within {:?}",
                    self.inner.timeout
                )
                .into(),
            }),
        }
    }

    async fn connect_unbounded(&self) -> Result<AsyncSmtpConnection, SendError> {
        let inner = &self.inner;
        let connected = match inner.tls {
            SmtpTls::Implicit => {
                // NOTE: with implicit TLS the handshake comes before EHLO, which lettre does
                // only on streams it opens itself; these connections go without TCP_NODELAY.
                AsyncSmtpConnection::connect_tokio1(
                    (inner.host.as_str(), inner.port),
                    Some(inner.timeout),
                    &inner.hello,
                    inner.tls_parameters.clone(),
                    None,
                )
                .await
            }
            SmtpTls::Plaintext | SmtpTls::Starttls => {
                let tcp = self.tcp().await?;
                match AsyncSmtpConnection::connect_with_transport(Box::new(tcp), &inner.hello).await
                {
                    Ok(mut conn) => match &inner.tls_parameters {
                        Some(params) => conn
                            .starttls(params.clone(), &inner.hello)
                            .await
                            .map(|()| conn),
                        None => Ok(conn),
                    },
                    Err(e) => Err(e),
                }
            }
        };
        let mut conn = connected.map_err(|e| classify(&self.endpoint, e, 1))?;
        conn.auth(&[Mechanism::Plain, Mechanism::Login], &inner.credentials)
            .await
            .map_err(|e| classify(&self.endpoint, e, 1))?;
        Ok(conn)
    }

    async fn tcp(&self) -> Result<tokio::net::TcpStream, SendError> {
        let inner = &self.inner;
        let unreachable = |source: std::io::Error| {
            use std::io::ErrorKind as K;
            match source.kind() {
                K::ConnectionRefused
                | K::HostUnreachable
                | K::NetworkUnreachable
                | K::AddrNotAvailable => SendError::Unreachable {
                    endpoint: self.endpoint.clone(),
                    attempts: 1,
                    source: Box::new(source),
                },
                _ => SendError::Temporary {
                    endpoint: self.endpoint.clone(),
                    status: None,
                    attempts: 1,
                    source: Box::new(source),
                },
            }
        };
        let connect = tokio::net::TcpStream::connect((inner.host.as_str(), inner.port));
        let tcp = match tokio::time::timeout(inner.timeout, connect).await {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(e)) => return Err(unreachable(e)),
            Err(_) => {
                return Err(unreachable(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "connection timed out",
                )));
            }
        };
        tcp.set_nodelay(true).map_err(unreachable)?;
        Ok(tcp)
    }

    /// An idle pooled connection that still answers, or a new one.
    async fn checkout(&self) -> Result<AsyncSmtpConnection, SendError> {
        loop {
            let candidate = match self.inner.idle.lock() {
                Ok(mut idle) => idle.pop(),
                Err(poisoned) => poisoned.into_inner().pop(),
            };
            let Some((mut conn, since)) = candidate else {
                return self.connect().await;
            };
            if since.elapsed() < IDLE_CHECK
                || tokio::time::timeout(self.inner.timeout, conn.test_connected())
                    .await
                    .unwrap_or(false)
            {
                return Ok(conn);
            }
            self.abort(conn).await;
        }
    }

    /// Drops a connection after a QUIT that may take [`ABORT_WAIT`] at most: lettre's `abort`
    /// waits for the server's answer to QUIT, which a stalled server never sends.
    async fn abort(&self, mut conn: AsyncSmtpConnection) {
        let _ = tokio::time::timeout(ABORT_WAIT.min(self.inner.timeout), conn.abort()).await;
    }

    fn checkin(&self, conn: AsyncSmtpConnection) {
        let mut idle = match self.inner.idle.lock() {
            Ok(idle) => idle,
            Err(poisoned) => poisoned.into_inner(),
        };
        if idle.len() < self.inner.pool_size {
            idle.push((conn, Instant::now()));
        }
    }

    async fn send_once(&self, envelope: &Envelope, bytes: &[u8]) -> Result<(), SendError> {
        let mut conn = self.checkout().await?;
        match tokio::time::timeout(self.inner.timeout, conn.send(envelope, bytes)).await {
            Ok(Ok(_)) => {
                self.checkin(conn);
                Ok(())
            }
            Ok(Err(e)) => {
                // NOTE: after any error the session's state is unknown: never reuse it.
                self.abort(conn).await;
                Err(classify(&self.endpoint, e, 1))
            }
            Err(_) => {
                self.abort(conn).await;
                Err(SendError::Temporary {
                    endpoint: self.endpoint.clone(),
                    status: None,
                    attempts: 1,
                    source: format!("no answer within {:?}", self.inner.timeout).into(),
                })
            }
        }
    }
}

impl Submit for SmtpSubmit {
    async fn send_raw(&self, envelope: &SmtpEnvelope, bytes: &[u8]) -> Result<(), SendError> {
        let envelope = lettre_envelope(envelope)?;
        // NOTE: a monitored ASMTP envelope asks for delivery reports (smtp_dsn.rs).
        let mut dsn = crate::wire::dsn::DsnRequest::for_message(bytes);
        let mut attempt: u32 = 0;
        loop {
            let sent = match &dsn {
                Some(request) => match self.send_once_dsn(&envelope, request, bytes).await {
                    Ok(dsn::DsnOutcome::Sent) => Ok(()),
                    Ok(dsn::DsnOutcome::Refused) => {
                        dsn = None;
                        continue;
                    }
                    Err(error) => Err(error),
                },
                None => self.send_once(&envelope, bytes).await,
            };
            let error = match sent {
                Ok(()) => {
                    tracing::debug!(endpoint = %self.endpoint, attempts = attempt + 1, "submitted");
                    return Ok(());
                }
                Err(error) => error,
            };
            attempt += 1;
            if !error.is_transient() || attempt >= self.retry.attempts {
                return Err(with_attempts(error, attempt));
            }
            // NOTE: 421 (closing) and 452 (Stalwart: too many messages in this session) end the
            // session, not the server's willingness: the first retry goes at once, on a fresh
            // connection, because lettre drops a connection after any error.
            let delay = if attempt == 1 && matches!(error.status(), Some(421 | 452)) {
                Duration::ZERO
            } else {
                self.retry.backoff.delay(attempt - 1)
            };
            tracing::warn!(
                endpoint = %self.endpoint,
                attempt,
                delay_ms = delay.as_millis() as u64,
                error = %error_chain(&error),
                "submission failed; retrying"
            );
            tokio::time::sleep(delay).await;
        }
    }
}

fn lettre_envelope(envelope: &SmtpEnvelope) -> Result<Envelope, SendError> {
    let parse = |address: &str| {
        address
            .trim()
            .parse::<Address>()
            .map_err(|e| SendError::Address {
                address: address.to_owned(),
                source: Box::new(e),
            })
    };
    let from = parse(&envelope.mail_from)?;
    let to = envelope
        .rcpt_to
        .iter()
        .map(|a| parse(a))
        .collect::<Result<Vec<_>, _>>()?;
    Envelope::new(Some(from), to).map_err(|e| SendError::Address {
        address: envelope.rcpt_to.join(", "),
        source: Box::new(e),
    })
}

fn with_attempts(error: SendError, n: u32) -> SendError {
    match error {
        SendError::Temporary {
            endpoint,
            status,
            source,
            ..
        } => SendError::Temporary {
            endpoint,
            status,
            attempts: n,
            source,
        },
        SendError::Unreachable {
            endpoint, source, ..
        } => SendError::Unreachable {
            endpoint,
            attempts: n,
            source,
        },
        other => other,
    }
}

/// Sorts a lettre error into our kinds by its reply code, else by the I/O error underneath.
fn classify(endpoint: &str, error: lettre::transport::smtp::Error, attempts: u32) -> SendError {
    let endpoint = endpoint.to_owned();
    if let Some(code) = error.status() {
        let status = u16::from(code);
        return match status {
            530 | 534 | 535 | 538 => SendError::Auth {
                endpoint,
                status: Some(status),
                source: Box::new(error),
            },
            400..=499 => SendError::Temporary {
                endpoint,
                status: Some(status),
                attempts,
                source: Box::new(error),
            },
            _ => SendError::Rejected {
                endpoint,
                status,
                source: Box::new(error),
            },
        };
    }
    if error.is_tls() || error.is_client() || error.is_transport_shutdown() {
        return SendError::Failed {
            endpoint,
            source: Box::new(error),
        };
    }
    let io_kind = {
        let mut cause: Option<&(dyn std::error::Error + 'static)> =
            std::error::Error::source(&error);
        let mut kind = None;
        while let Some(e) = cause {
            if let Some(io) = e.downcast_ref::<std::io::Error>() {
                kind = Some(io.kind());
                break;
            }
            cause = e.source();
        }
        kind
    };
    use std::io::ErrorKind as K;
    match io_kind {
        Some(
            K::ConnectionRefused | K::HostUnreachable | K::NetworkUnreachable | K::AddrNotAvailable,
        ) => SendError::Unreachable {
            endpoint,
            attempts,
            source: Box::new(error),
        },
        // NOTE: everything else is the network or the server misbehaving mid-session (resets,
        // timeouts, garbled replies): transient.
        _ => SendError::Temporary {
            endpoint,
            status: None,
            attempts,
            source: Box::new(error),
        },
    }
}

/// The error and its causes on one line, for logs.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        let text = e.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = e.source();
    }
    out
}

#[cfg(test)]
mod tests {
    //! Classification and retries against a scripted SMTP server on 127.0.0.1:0.

    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
    use tokio::net::TcpListener;

    use super::*;

    /// How the fake server answers.
    #[derive(Clone, Copy)]
    struct Script {
        /// Reply to AUTH.
        auth: &'static str,
        /// Messages accepted per session before `452 4.4.5` at MAIL FROM.
        per_session: usize,
        /// Reply to DATA's end for the first `fail_data` messages, then 250.
        fail_data: usize,
        data_reply: &'static str,
    }

    struct Fake {
        port: u16,
        sessions: Arc<AtomicUsize>,
        delivered: Arc<AtomicUsize>,
    }

    async fn fake_server(script: Script) -> Fake {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let sessions = Arc::new(AtomicUsize::new(0));
        let delivered = Arc::new(AtomicUsize::new(0));
        let data_seen = Arc::new(AtomicUsize::new(0));
        let (s, d) = (sessions.clone(), delivered.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                s.fetch_add(1, Ordering::SeqCst);
                let (d, data_seen) = (d.clone(), data_seen.clone());
                tokio::spawn(async move {
                    let (read, mut write) = stream.into_split();
                    let mut lines = BufReader::new(read).lines();
                    let _ = write.write_all(b"220 fake ESMTP\r\n").await;
                    let mut in_session = 0;
                    while let Ok(Some(line)) = lines.next_line().await {
                        let upper = line.to_ascii_uppercase();
                        let reply: String = if upper.starts_with("EHLO") {
                            "250-fake\r\n250 AUTH PLAIN LOGIN\r\n".into()
                        } else if upper.starts_with("AUTH") {
                            format!("{}\r\n", script.auth)
                        } else if upper.starts_with("MAIL") {
                            if in_session >= script.per_session {
                                "452 4.4.5 Maximum number of messages per session exceeded\r\n"
                                    .into()
                            } else {
                                "250 ok\r\n".into()
                            }
                        } else if upper.starts_with("RCPT") || upper.starts_with("NOOP") {
                            "250 ok\r\n".into()
                        } else if upper.starts_with("DATA") {
                            let _ = write.write_all(b"354 go\r\n").await;
                            while let Ok(Some(l)) = lines.next_line().await {
                                if l == "." {
                                    break;
                                }
                            }
                            if data_seen.fetch_add(1, Ordering::SeqCst) < script.fail_data {
                                format!("{}\r\n", script.data_reply)
                            } else {
                                in_session += 1;
                                d.fetch_add(1, Ordering::SeqCst);
                                "250 queued\r\n".into()
                            }
                        } else if upper.starts_with("QUIT") {
                            let _ = write.write_all(b"221 bye\r\n").await;
                            return;
                        } else {
                            "500 what\r\n".into()
                        };
                        if write.write_all(reply.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Fake {
            port,
            sessions,
            delivered,
        }
    }

    const OK: Script = Script {
        auth: "235 2.7.0 ok",
        per_session: usize::MAX,
        fail_data: 0,
        data_reply: "250 ok",
    };

    fn submit(port: u16, attempts: u32) -> SmtpSubmit {
        let settings = SmtpSettings::new("127.0.0.1", port, SmtpTls::Plaintext, "a@x.test", "pw")
            .with_retry(RetryPolicy {
                attempts,
                backoff: Backoff::new(Duration::from_millis(5), Duration::from_millis(20)).unwrap(),
            });
        SmtpSubmit::new(settings).unwrap()
    }

    fn envelope() -> SmtpEnvelope {
        SmtpEnvelope::new("a@x.test", ["b@x.test".to_owned()])
    }

    const MESSAGE: &[u8] = b"From: a@x.test\r\nTo: b@x.test\r\nSubject: t\r\n\r\nhi\r\n";

    /// A server that accepts connections and never says a word (or stops answering mid-way).
    async fn silent_server(greet: bool) -> (u16, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&accepted);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let (read, mut write) = stream.into_split();
                    let mut read = BufReader::new(read);
                    if greet {
                        let _ = write.write_all(b"220 x ESMTP\r\n").await;
                        let mut line = String::new();
                        // EHLO answered, then silence (also to QUIT)
                        let _ = read.read_line(&mut line).await;
                        let _ = write.write_all(b"250-x\r\n250 AUTH PLAIN\r\n").await;
                        let _ = read.read_line(&mut line).await;
                        let _ = write.write_all(b"235 2.7.0 ok\r\n").await;
                    }
                    let mut rest = Vec::new();
                    let _ = tokio::io::AsyncReadExt::read_to_end(&mut read, &mut rest).await;
                });
            }
        });
        (port, accepted)
    }

    #[tokio::test]
    async fn a_silent_server_times_out_instead_of_hanging() {
        for greet in [false, true] {
            let (port, accepted) = silent_server(greet).await;
            let mut settings =
                SmtpSettings::new("127.0.0.1", port, SmtpTls::Plaintext, "a@x.test", "pw")
                    .with_retry(RetryPolicy {
                        attempts: 2,
                        backoff: Backoff::new(Duration::from_millis(5), Duration::from_millis(20))
                            .unwrap(),
                    });
            settings.timeout = Duration::from_millis(300);
            let smtp = SmtpSubmit::new(settings).unwrap();
            let started = Instant::now();
            let error =
                tokio::time::timeout(Duration::from_secs(10), smtp.send_raw(&envelope(), MESSAGE))
                    .await
                    .expect("send_raw hung on a silent server")
                    .unwrap_err();
            assert!(error.is_transient(), "{error:?}");
            assert_eq!(
                accepted.load(Ordering::SeqCst),
                2,
                "greet {greet}: one connection a try"
            );
            assert!(
                started.elapsed() < Duration::from_secs(3),
                "{:?}",
                started.elapsed()
            );
        }
    }

    #[tokio::test]
    async fn a_session_cap_is_absorbed_by_reconnecting() {
        let fake = fake_server(Script {
            per_session: 2,
            ..OK
        })
        .await;
        let smtp = submit(fake.port, 3);
        for _ in 0..7 {
            smtp.send_raw(&envelope(), MESSAGE).await.unwrap();
        }
        assert_eq!(fake.delivered.load(Ordering::SeqCst), 7);
        assert!(fake.sessions.load(Ordering::SeqCst) >= 4);
    }

    #[tokio::test]
    async fn transient_replies_are_retried_then_reported() {
        let fake = fake_server(Script {
            fail_data: 1,
            data_reply: "451 4.3.0 try later",
            ..OK
        })
        .await;
        submit(fake.port, 2)
            .send_raw(&envelope(), MESSAGE)
            .await
            .unwrap();
        assert_eq!(fake.delivered.load(Ordering::SeqCst), 1);

        let fake = fake_server(Script {
            fail_data: 10,
            data_reply: "451 4.3.0 try later",
            ..OK
        })
        .await;
        let error = submit(fake.port, 3)
            .send_raw(&envelope(), MESSAGE)
            .await
            .unwrap_err();
        assert!(error.is_transient() && !error.is_permanent(), "{error:?}");
        assert_eq!(error.status(), Some(451));
        assert_eq!(error.exit_code(), 75);
        assert!(error.to_string().contains("after 3 attempt(s)"), "{error}");
    }

    #[tokio::test]
    async fn permanent_replies_are_not_retried() {
        let fake = fake_server(Script {
            fail_data: 10,
            data_reply: "554 5.6.0 no",
            ..OK
        })
        .await;
        let error = submit(fake.port, 3)
            .send_raw(&envelope(), MESSAGE)
            .await
            .unwrap_err();
        assert!(error.is_permanent() && !error.is_auth(), "{error:?}");
        assert_eq!(error.status(), Some(554));
        assert_eq!(fake.sessions.load(Ordering::SeqCst), 1);
        assert_eq!(error.exit_code(), 1);
    }

    #[tokio::test]
    async fn a_refused_login_is_its_own_kind() {
        let fake = fake_server(Script {
            auth: "535 5.7.8 Authentication credentials invalid",
            ..OK
        })
        .await;
        let smtp = submit(fake.port, 3);
        let error = smtp.send_raw(&envelope(), MESSAGE).await.unwrap_err();
        assert!(error.is_auth() && error.is_permanent(), "{error:?}");
        assert_eq!(error.status(), Some(535));
        assert_eq!(error.exit_code(), 77);
        assert_eq!(fake.sessions.load(Ordering::SeqCst), 1, "not retried");
        assert!(smtp.check().await.unwrap_err().is_auth());
        // NOTE: the message names the endpoint, never the password
        assert!(!format!("{error} {error:?} {smtp:?}").contains("pw\""));
    }

    #[tokio::test]
    async fn a_closed_port_is_unreachable_and_transient() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let error = submit(port, 2)
            .send_raw(&envelope(), MESSAGE)
            .await
            .unwrap_err();
        assert!(
            matches!(error, SendError::Unreachable { attempts: 2, .. }),
            "{error:?}"
        );
        assert!(error.is_transient());
        assert_eq!(error.exit_code(), 69);
        assert_eq!(error.status(), None);
    }

    #[tokio::test]
    async fn bad_envelope_addresses_are_permanent() {
        let smtp = submit(1, 1);
        let bad = SmtpEnvelope::new("not an address", ["b@x.test".to_owned()]);
        let error = smtp.send_raw(&bad, MESSAGE).await.unwrap_err();
        assert!(matches!(error, SendError::Address { .. }) && error.is_permanent());
        assert!(error.to_string().starts_with("cannot use 'not an address'"));
    }

    #[test]
    fn settings_debug_hides_the_password() {
        let s = SmtpSettings::new("h", 1, SmtpTls::Starttls, "u", "hunter2");
        assert!(!format!("{s:?}").contains("hunter2"));
        assert_eq!(
            SmtpSettings::new("::1", 25, SmtpTls::Plaintext, "u", "p").endpoint(),
            "[::1]:25"
        );
    }
}
