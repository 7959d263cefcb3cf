//! Shared support for the tests that talk to real mail servers.
//!
//! The servers are the project's own harness, `tests/mailserver/mailserver.sh` (`up all` starts
//! Stalwart and Cyrus+Postfix side by side on 127.0.0.1). Each running server has an env file,
//! `${TASKMAIL_MAILSERVER_DIR:-/run/taskmail-mailserver}/{stalwart,cyrus}.env`, with its ports,
//! JMAP session URL, push kinds and accounts; this module reads those files and hands tests ready
//! [`Server`]s, [`Account`]s and [`unique_token`]s.
//!
//! Use it from an integration test file with `mod support;`, then:
//!
//! ```ignore
//! for server in support::servers() {          // empty (and a SKIPPED line) without servers
//!     let worker = server.account("worker");
//!     let jmap = server.jmap(&worker).await;   // raw JMAP over the session's own URLs
//!     ...
//! }
//! ```
//!
//! With `TASKMAIL_REQUIRE_SERVERS=1` (CI sets it, through `tests/run.sh`) a missing env file or a
//! server that does not answer is a test failure, never a skip. `TASKMAIL_MAILSERVERS` (default
//! `"stalwart cyrus"`) selects which servers the tests expect.
//!
//! Cyrus mail persists across runs and tests run in parallel: identify your messages by a
//! [`unique_token`], never by counting what is in a mailbox.

// NOTE: every test binary uses a different part of this module.
#![allow(dead_code)]

pub(crate) mod daemon;
pub(crate) mod http;
pub(crate) mod jmap;
pub(crate) mod mail;
pub(crate) mod mutt;

use std::{
    collections::BTreeMap,
    future::Future,
    io::Write as _,
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    sync::{
        OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

/// The command that starts every server the tests expect.
pub(crate) const START_HINT: &str = "bash tests/mailserver/mailserver.sh up all";

/// One running mail server, as described by its env file.
#[derive(Debug, Clone)]
pub(crate) struct Server {
    /// `stalwart` or `cyrus` (`MAILSERVER`); for messages only: decide behaviour from the
    /// session's capabilities, never from this name.
    pub(crate) name: String,
    /// Human-readable server version (`SERVER_VERSION`).
    pub(crate) version: String,
    /// Mail domain of every account (`MAIL_DOMAIN`, `example.test`).
    pub(crate) domain: String,
    /// The one password of every account (`MAIL_PASSWORD`).
    pub(crate) password: String,
    /// Local parts of the accounts (`MAIL_USERS`).
    pub(crate) users: Vec<String>,
    /// SMTP host (`SMTP_HOST`, always 127.0.0.1).
    pub(crate) smtp_host: String,
    /// MX-style SMTP port: no AUTH, local recipients only (`SMTP_PORT`).
    pub(crate) smtp_port: u16,
    /// Submission port: AUTH PLAIN/LOGIN required, no TLS (`SUBMISSION_PORT`).
    pub(crate) submission_port: u16,
    /// IMAP port (`IMAP_PORT`).
    pub(crate) imap_port: u16,
    /// Base URL for `jmap_client::client::Client::connect`, which appends `/.well-known/jmap`
    /// (`JMAP_URL`).
    pub(crate) jmap_url: String,
    /// JMAP session resource, may redirect (`JMAP_SESSION_URL`).
    pub(crate) jmap_session_url: String,
    /// Push kinds the harness found on the server: `eventsource`, `websocket` (`JMAP_PUSH`).
    pub(crate) push: Vec<String>,
    /// The env file this came from.
    pub(crate) env_file: PathBuf,
    /// Every variable of the env file, for anything not mapped above (`PUSH_THROTTLE`, `LOG`...).
    pub(crate) vars: BTreeMap<String, String>,
}

/// A mailbox on a [`Server`]: the login name is the full address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Account {
    pub(crate) email: String,
    pub(crate) password: String,
}

impl Server {
    /// The account `user@domain` (`dispatcher`, `worker`, `worker2`, `human`, `outsider`).
    pub(crate) fn account(&self, user: &str) -> Account {
        assert!(
            self.users.iter().any(|u| u == user),
            "{}: no account '{user}' in {} (MAIL_USERS={:?})",
            self.name,
            self.env_file.display(),
            self.users
        );
        Account {
            email: format!("{user}@{}", self.domain),
            password: self.password.clone(),
        }
    }

    /// The account `user@` the second local domain (`OTHER_DOMAIN`, `other.test`; `agent`,
    /// `boss`), on servers that have one (Stalwart); `None` elsewhere.
    pub(crate) fn other_account(&self, user: &str) -> Option<Account> {
        let domain = self.other_domain()?;
        let users = self.vars.get("OTHER_USERS")?;
        assert!(
            users.split_whitespace().any(|u| u == user),
            "{}: no account '{user}@{domain}' in {} (OTHER_USERS={users:?})",
            self.name,
            self.env_file.display()
        );
        Some(Account {
            email: format!("{user}@{domain}"),
            password: self.password.clone(),
        })
    }

    /// The second local domain (`OTHER_DOMAIN`), if the server has one.
    pub(crate) fn other_domain(&self) -> Option<&str> {
        self.var("OTHER_DOMAIN")
    }

    /// The authserv-id of the `Authentication-Results` this server adds (`AUTHSERV_ID`); `None`
    /// when it adds none (Cyrus+Postfix, or Stalwart with `STALWART_MAIL_AUTH=off`).
    pub(crate) fn authserv_id(&self) -> Option<&str> {
        self.var("AUTHSERV_ID")
    }

    /// The server's mail-authentication mode (`MAIL_AUTH`: `hairpin`, `local`, `off`), `None`
    /// for a server without one (Cyrus+Postfix).
    pub(crate) fn mail_auth(&self) -> Option<&str> {
        self.var("MAIL_AUTH")
    }

    /// A non-empty variable of the env file.
    pub(crate) fn var(&self, key: &str) -> Option<&str> {
        self.vars
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// `name (version)`, for assertion messages and logs.
    pub(crate) fn label(&self) -> String {
        format!("{} ({})", self.name, self.version)
    }

    /// Raw JMAP over the session's own (resolved) URLs; see [`jmap::Jmap`].
    pub(crate) async fn jmap(&self, account: &Account) -> jmap::Jmap {
        jmap::Jmap::connect(self, account).await
    }

    /// A `jmap_client` client for `account` (Basic auth up front, redirects on 127.0.0.1 only).
    pub(crate) async fn jmap_client(
        &self,
        account: &Account,
    ) -> jmap_client::Result<jmap_client::client::Client> {
        jmap_client::client::Client::new()
            .credentials((account.email.as_str(), account.password.as_str()))
            .follow_redirects([self.smtp_host.clone()])
            .timeout(Duration::from_secs(15))
            .connect(&self.jmap_url)
            .await
    }

    /// SMTP submission transport for `account` (lettre, AUTH PLAIN/LOGIN, no TLS on loopback).
    pub(crate) fn submission(&self, account: &Account) -> mail::Smtp {
        mail::submission(self, Some(account), 1)
    }

    /// Parse one env file (`KEY=VALUE` lines, `#` comments, values optionally double-quoted).
    pub(crate) fn from_env_file(path: &Path) -> Result<Server, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let vars: BTreeMap<String, String> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.trim().to_string(), v.trim().trim_matches('"').to_string()))
            .collect();
        let get = |key: &str| {
            vars.get(key)
                .cloned()
                .ok_or_else(|| format!("{}: no {key}", path.display()))
        };
        let port = |key: &str| {
            get(key)?
                .parse::<u16>()
                .map_err(|e| format!("{}: {key}: {e}", path.display()))
        };
        let words = |v: String| v.split_whitespace().map(str::to_string).collect::<Vec<_>>();
        Ok(Server {
            name: get("MAILSERVER")?,
            version: vars.get("SERVER_VERSION").cloned().unwrap_or_default(),
            domain: get("MAIL_DOMAIN")?,
            password: get("MAIL_PASSWORD")?,
            users: words(get("MAIL_USERS")?),
            smtp_host: get("SMTP_HOST")?,
            smtp_port: port("SMTP_PORT")?,
            submission_port: port("SUBMISSION_PORT")?,
            imap_port: port("IMAP_PORT")?,
            jmap_url: get("JMAP_URL")?,
            jmap_session_url: get("JMAP_SESSION_URL")?,
            push: words(vars.get("JMAP_PUSH").cloned().unwrap_or_default()),
            env_file: path.to_path_buf(),
            vars,
        })
    }

    /// Does the server answer on its submission and JMAP ports?
    fn answers(&self) -> Result<(), String> {
        let jmap_port = self
            .vars
            .get("JMAP_PORT")
            .and_then(|p| p.parse::<u16>().ok())
            .ok_or_else(|| format!("{}: no JMAP_PORT", self.env_file.display()))?;
        for port in [self.submission_port, jmap_port] {
            let addr: SocketAddr = format!("{}:{port}", self.smtp_host)
                .parse()
                .map_err(|e| format!("bad address {}:{port}: {e}", self.smtp_host))?;
            TcpStream::connect_timeout(&addr, Duration::from_secs(3))
                .map_err(|e| format!("{} does not answer on {addr}: {e}", self.name))?;
        }
        Ok(())
    }
}

/// Is `TASKMAIL_REQUIRE_SERVERS=1` set (CI)?
pub(crate) fn servers_required() -> bool {
    std::env::var("TASKMAIL_REQUIRE_SERVERS").is_ok_and(|v| v == "1")
}

/// Directory of the env files (`TASKMAIL_MAILSERVER_DIR`, default `/run/taskmail-mailserver`).
pub(crate) fn env_dir() -> PathBuf {
    std::env::var_os("TASKMAIL_MAILSERVER_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run/taskmail-mailserver"))
}

/// Every expected server that is up, checked once per test binary.
///
/// - `TASKMAIL_REQUIRE_SERVERS=1`: panics (naming the fix) if an env file is missing or its server
///   does not answer.
/// - otherwise: prints `SKIPPED: ...` to stderr for each missing server and returns the others
///   (possibly none, so a test loop over this runs zero times).
pub(crate) fn servers() -> Vec<Server> {
    static SERVERS: OnceLock<Result<Vec<Server>, String>> = OnceLock::new();
    match SERVERS.get_or_init(load_servers) {
        Ok(servers) => servers.clone(),
        Err(message) => panic!("{message}"),
    }
}

fn load_servers() -> Result<Vec<Server>, String> {
    let expected =
        std::env::var("TASKMAIL_MAILSERVERS").unwrap_or_else(|_| "stalwart cyrus".to_string());
    let required = servers_required();
    let mut found = Vec::new();
    for name in expected.split_whitespace() {
        let path = env_dir().join(format!("{name}.env"));
        let problem = if !path.exists() {
            format!("no mail server env file at {}", path.display())
        } else {
            match Server::from_env_file(&path).and_then(|s| s.answers().map(|()| s)) {
                Ok(server) => {
                    found.push(server);
                    continue;
                }
                Err(e) => e,
            }
        };
        if required {
            return Err(format!(
                "TASKMAIL_REQUIRE_SERVERS=1 and mail server '{name}' is not available: {problem}. \
                 Start the servers: {START_HINT}"
            ));
        }
        // NOTE: written to the process's stderr directly, past libtest's output capture
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED: {problem} (start it: {START_HINT}; CI sets TASKMAIL_REQUIRE_SERVERS=1)"
        );
    }
    Ok(found)
}

/// A token unique across processes and runs: `t<unix-ms base36>-<pid>-<counter>`. Safe in
/// subjects, header values and Message-IDs.
pub(crate) fn unique_token() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let millis = u128::try_from(taskmail::clock::now().timestamp_millis()).unwrap_or_default();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("t{}-{}-{n}", base36(millis), std::process::id())
}

fn base36(mut n: u128) -> String {
    const DIGITS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}

/// Poll `probe` every 50 ms until it returns `Some`, or panic after `timeout` naming `what`.
pub(crate) async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Install the aws-lc-rs rustls provider (once; later calls are no-ops). Call it before any TLS
/// or WebSocket use.
pub(crate) fn init_crypto() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}
