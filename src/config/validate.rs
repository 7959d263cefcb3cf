//! The second stage: [`RawConfig`] to [`Config`], checking every value and applying defaults.
//!
//! Nothing here touches the network or writes a file, and secrets stay references. Every
//! problem goes into one [`ConfigErrors`] keyed by path; a value that fails is replaced by its
//! default so that checking continues and later problems are reported too.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use chrono::DateTime;
use toml::Value;

use super::address::{HttpUrl, PeerPattern, check_email, check_host};
use super::agent::{AgentProfileLayer, is_env_name};
use super::diagnostic::{ConfigErrors, Diagnostic, did_you_mean, index, join, quote};
use super::duration::{DURATION_HINT, parse_duration};
use super::env::Env;
use super::raw::{
    RawAccount, RawAsmtp, RawConfig, RawDispatcher, RawDuration, RawGrant, RawJmap, RawServe,
    RawSmtp, RawTrust, RawWorker,
};
use super::secret::Secret;
use super::types::{
    Account, Asmtp, Dispatcher, Grant, GrantState, INTENTS, Jmap, LogFormat, OnCancel, OnRefused,
    Priority, PushMode, RateLimit, Serve, ServeAgent, Smtp, SmtpTls, Trust, Worker,
};
use super::{Config, is_valid_name};

const SECRET_HINT: &str = "write { command = [\"pass\", \"show\", \"mail/worker\"] }, { file = \"/path/to/file\" } or { env = \"VARIABLE\" }; { raw = \"...\" } is for tests only";
const LOG_LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
const DEFAULT_INTENTS: [&str; 2] = ["task.dispatch", "task.cancel"];

/// Defaults, named once; `config.example.toml` shows the same values.
mod default {
    use std::time::Duration;

    pub(super) const LOG_LEVEL: &str = "info";
    pub(super) const SERVER: &str = "generic";
    pub(super) const AGENT: &str = "echo";
    pub(super) const SMTP_PORT: u16 = 587;
    pub(super) const SMTP_IMPLICIT_PORT: u16 = 465;
    pub(super) const SMTP_POOL_SIZE: u16 = 4;
    pub(super) const SMTP_TIMEOUT: Duration = Duration::from_secs(30);
    pub(super) const POLL_INTERVAL: Duration = Duration::from_secs(30);
    pub(super) const PUSH_LIVENESS: Duration = Duration::from_secs(90);
    pub(super) const CONCURRENCY: u16 = 2;
    pub(super) const TASK_TIMEOUT: Duration = Duration::from_secs(30 * 60);
    pub(super) const CANCEL_GRACE: Duration = Duration::from_secs(10);
    pub(super) const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
    pub(super) const LEASE: Duration = Duration::from_secs(60);
    pub(super) const CLAIM_WAIT: Duration = Duration::from_secs(1);
    pub(super) const DISPATCH_TIMEOUT: Duration = Duration::from_secs(60 * 60);
    pub(super) const QUARANTINE: &str = "Quarantine";
    pub(super) const DEDUP_RETENTION: Duration = Duration::from_secs(7 * 86_400);
    pub(super) const TRANSIT_WINDOW: Duration = Duration::from_secs(48 * 3_600);
    pub(super) const RATE_LIMIT_COUNT: u32 = 60;
    pub(super) const RATE_LIMIT_PER: Duration = Duration::from_secs(3_600);
    pub(super) const LISTEN: &str = "127.0.0.1:7878";
    pub(super) const BODY_LIMIT: u32 = 1 << 20;
    pub(super) const BACKFILL: Duration = Duration::from_secs(7 * 86_400);
}

/// Checks a duration that must be longer than zero.
pub(crate) fn checked_duration(
    path: &str,
    raw: &RawDuration,
    report: &mut ConfigErrors,
) -> Option<Duration> {
    match parse_duration(&raw.0) {
        Ok(duration) if duration.is_zero() => {
            report.error(Diagnostic::new(
                path,
                format!("cannot use {}: it must be longer than zero", quote(&raw.0)),
            ));
            None
        }
        Ok(duration) => Some(duration),
        Err(error) => {
            report.error(Diagnostic::new(path, error.to_string()).with_hint(DURATION_HINT));
            None
        }
    }
}

/// Validates `raw` into a [`Config`]; `None` when `report` holds errors.
pub(crate) fn validate(raw: RawConfig, env: &Env, report: &mut ConfigErrors) -> Option<Config> {
    let mut cx = Checker { env, report };
    let state_dir = cx.state_dir(raw.state_dir);
    let log_level = cx.log_level(raw.log_level);
    let log_format = raw.log_format.unwrap_or(LogFormat::Text);
    let accounts_raw = raw.accounts.unwrap_or_default();
    let known = cx.known_accounts(&accounts_raw);
    let mut accounts = Vec::new();
    for (name, account) in accounts_raw {
        if let Some(account) = cx.account(&name, account) {
            accounts.push(account);
        }
    }
    let worker_table_present = raw.worker.is_some();
    let senders_listed = raw
        .worker
        .as_ref()
        .and_then(|worker| worker.allowed_senders.as_ref())
        .is_some_and(|senders| !senders.is_empty());
    let worker = cx.worker(raw.worker.unwrap_or_default(), &known, &state_dir);
    let dispatcher = cx.dispatcher(raw.dispatcher.unwrap_or_default(), &known);
    let trust = cx.trust(raw.trust.unwrap_or_default(), &known);
    let mut profiles = BTreeMap::new();
    for (name, profile) in raw.profiles.unwrap_or_default() {
        let path = join("profiles", &name);
        cx.name(&path, &name, "a profile name");
        profiles.insert(name, AgentProfileLayer::from_raw(profile, &path, cx.report));
    }
    let serve = cx.serve(raw.serve.unwrap_or_default(), &known);
    let asmtp = cx.asmtp(raw.asmtp.unwrap_or_default());

    let dispatch_granted = trust.grants.iter().any(|grant| {
        grant.account == worker.account
            && grant.state == GrantState::Active
            && grant.intents.iter().any(|intent| intent == "task.dispatch")
    });
    if worker_table_present && !senders_listed && !dispatch_granted {
        cx.report.warn(
            Diagnostic::new("worker.allowed-senders", "is empty, so nobody can start a task on this worker")
                .with_hint("list addresses or '*@domain' entries, or add a [[trust.grants]] entry with intents = [\"task.dispatch\"]"),
        );
    }

    if cx.report.has_errors() {
        return None;
    }
    let Some(default_index) = accounts
        .iter()
        .position(|account| Some(&account.name) == known.default.as_ref())
    else {
        cx.report
            .error(Diagnostic::new("accounts", "cannot pick a default account"));
        return None;
    };
    Some(Config {
        state_dir,
        log_level,
        log_format,
        accounts,
        default_index,
        worker,
        dispatcher,
        trust,
        profiles,
        serve,
        asmtp,
        warnings: std::mem::take(&mut cx.report.warnings),
    })
}

/// The account names a reference may use, and the default one.
struct KnownAccounts {
    names: BTreeSet<String>,
    default: Option<String>,
}

/// The state of one validation run: the environment for paths, and where problems go.
struct Checker<'a> {
    env: &'a Env,
    report: &'a mut ConfigErrors,
}

impl Checker<'_> {
    /// Reports an error at `path`.
    fn error(&mut self, path: &str, message: impl Into<String>) {
        self.report.error(Diagnostic::new(path, message));
    }

    /// Reports an error at `path` with a hint.
    fn error_hint(&mut self, path: &str, message: impl Into<String>, hint: impl Into<String>) {
        self.report
            .error(Diagnostic::new(path, message).with_hint(hint));
    }

    /// Reports a warning at `path` with a hint.
    fn warn_hint(&mut self, path: &str, message: impl Into<String>, hint: impl Into<String>) {
        self.report
            .warn(Diagnostic::new(path, message).with_hint(hint));
    }

    /// Reports a required key that is absent.
    fn missing(&mut self, path: &str, hint: impl Into<String>) {
        self.error_hint(path, "cannot be missing", hint);
    }

    /// A duration longer than zero, or `default` when absent or invalid (after reporting).
    fn duration(&mut self, path: &str, raw: Option<RawDuration>, default: Duration) -> Duration {
        raw.and_then(|raw| checked_duration(path, &raw, self.report))
            .unwrap_or(default)
    }

    /// Reports a name that could not be an account or profile name.
    fn name(&mut self, path: &str, name: &str, what: &str) {
        if !is_valid_name(name) {
            self.error(
                path,
                format!(
                    "cannot use {} as {what}: use 1 to 64 letters, digits, '-' and '_'",
                    quote(name)
                ),
            );
        }
    }

    /// Whether `text` is one line; text that ends up in a header must never be two.
    fn one_line(&mut self, path: &str, text: &str) -> bool {
        if text.contains(['\r', '\n']) {
            self.error(path, "cannot span several lines");
            return false;
        }
        true
    }

    /// An absolute path, or one starting with `~/`.
    fn absolute_path(&mut self, path: &str, text: &str) -> Option<PathBuf> {
        if text.trim().is_empty() {
            self.error(path, "cannot be empty");
            return None;
        }
        let Some(expanded) = self.env.expand_home(text) else {
            self.error_hint(
                path,
                format!("cannot expand '~' in {}: HOME is not set", quote(text)),
                "write an absolute path",
            );
            return None;
        };
        if !expanded.is_absolute() {
            self.error_hint(
                path,
                format!("cannot use the relative path {}", quote(text)),
                "write an absolute path, or one starting with '~/'; a daemon's working directory is no stable anchor",
            );
            return None;
        }
        Some(expanded)
    }

    /// `state-dir`, else `$STATE_DIRECTORY`, else `$XDG_STATE_HOME/taskmail`, else
    /// `~/.local/state/taskmail`.
    fn state_dir(&mut self, raw: Option<String>) -> PathBuf {
        if let Some(text) = raw {
            return self.absolute_path("state-dir", &text).unwrap_or_default();
        }
        if let Some(dir) = self.env.systemd_state_directory() {
            return dir;
        }
        if let Some(dir) = self.env.state_home() {
            return dir.join("taskmail");
        }
        self.error_hint(
            "state-dir",
            "cannot work out a state directory: HOME, XDG_STATE_HOME and STATE_DIRECTORY are all unset",
            "set state-dir to an absolute path",
        );
        PathBuf::new()
    }

    /// A level, or comma-separated `target=level` directives as `tracing`'s `EnvFilter` reads them.
    fn log_level(&mut self, raw: Option<String>) -> String {
        let Some(text) = raw else {
            return default::LOG_LEVEL.to_owned();
        };
        for directive in text.split(',').map(str::trim).filter(|d| !d.is_empty()) {
            let (target, level) = match directive.split_once('=') {
                Some((target, level)) => (Some(target.trim()), level.trim()),
                None => (None, directive),
            };
            let level_ok = LOG_LEVELS.contains(&level.to_ascii_lowercase().as_str());
            if !level_ok || target.is_some_and(str::is_empty) {
                let hint = match did_you_mean(level, LOG_LEVELS) {
                    Some(suggestion) if !level_ok => format!("did you mean '{suggestion}'?"),
                    _ => "use off, error, warn, info, debug or trace, or directives such as 'info,taskmail::transport=debug'".to_owned(),
                };
                self.error_hint(
                    "log-level",
                    format!("cannot use {} as a log level", quote(directive)),
                    hint,
                );
            }
        }
        text
    }

    /// The account names, and which one is the default: the one marked `default = true`, else
    /// the only one, else the first by name (with a warning). Two marked is an error.
    fn known_accounts(&mut self, raw: &BTreeMap<String, RawAccount>) -> KnownAccounts {
        let names: BTreeSet<String> = raw.keys().cloned().collect();
        if raw.is_empty() {
            self.error_hint(
                "accounts",
                "cannot be empty: taskmail needs at least one mail account",
                "add an [accounts.NAME] table with email, password and jmap.session-url",
            );
            return KnownAccounts {
                names,
                default: None,
            };
        }
        let marked: Vec<&String> = raw
            .iter()
            .filter(|(_, account)| account.default == Some(true))
            .map(|(name, _)| name)
            .collect();
        let default = match marked.as_slice() {
            [] => {
                let first = raw.keys().next().cloned();
                if let (Some(first), true) = (&first, raw.len() > 1) {
                    self.warn_hint(
                        "accounts",
                        format!(
                            "no account has default = true; using '{first}', the first by name"
                        ),
                        "mark one account with default = true",
                    );
                }
                first
            }
            [one] => Some((*one).clone()),
            several => {
                let list: Vec<String> = several.iter().map(|n| format!("'{n}'")).collect();
                for name in several {
                    self.error_hint(
                        &join(&join("accounts", name), "default"),
                        format!(
                            "cannot mark more than one account as default ({} are)",
                            list.join(", ")
                        ),
                        "keep default = true on one account only",
                    );
                }
                several.first().map(|name| (*name).clone())
            }
        };
        KnownAccounts { names, default }
    }

    /// A reference to an account: the named one, which must exist, or the default.
    fn account_ref(&mut self, path: &str, given: Option<String>, known: &KnownAccounts) -> String {
        let Some(name) = given else {
            return known.default.clone().unwrap_or_default();
        };
        if !known.names.contains(&name) {
            let hint = match did_you_mean(&name, known.names.iter().map(String::as_str)) {
                Some(suggestion) => format!("did you mean '{suggestion}'?"),
                None if known.names.is_empty() => "no account is configured".to_owned(),
                None => {
                    let list: Vec<&str> = known.names.iter().map(String::as_str).collect();
                    format!("known accounts: {}", list.join(", "))
                }
            };
            self.error_hint(path, format!("cannot find account {}", quote(&name)), hint);
        }
        name
    }

    /// `[accounts.NAME]`; `None` when any required part failed.
    fn account(&mut self, name: &str, raw: RawAccount) -> Option<Account> {
        let path = join("accounts", name);
        self.name(&path, name, "an account name");
        let email_path = join(&path, "email");
        let email = match raw.email {
            None => {
                self.missing(
                    &email_path,
                    "every account needs its address, e.g. email = \"worker@example.test\"",
                );
                None
            }
            Some(email) => match check_email(&email) {
                Ok(()) => Some(email),
                Err(error) => {
                    self.error(&email_path, error.to_string());
                    None
                }
            },
        };
        let display_name = raw
            .display_name
            .filter(|text| self.one_line(&join(&path, "display-name"), text));
        let server = raw.server.unwrap_or_else(|| default::SERVER.to_owned());
        self.name(&join(&path, "server"), &server, "a server profile name");
        let login = raw.login.or_else(|| email.clone()).unwrap_or_default();
        if login.trim().is_empty() && email.is_some() {
            self.error(&join(&path, "login"), "cannot be empty");
        }
        let password = self.secret(&join(&path, "password"), raw.password);
        let jmap = self.jmap(&join(&path, "jmap"), raw.jmap);
        let jmap_host = jmap.as_ref().map(|jmap| jmap.session_url.host().to_owned());
        let smtp = self.smtp(&join(&path, "smtp"), raw.smtp, jmap_host);
        let handle = raw
            .handle
            .and_then(|h| self.handle(&join(&path, "handle"), &h));
        Some(Account {
            name: name.to_owned(),
            email: email?,
            display_name,
            server,
            login,
            password: password?,
            smtp: smtp?,
            jmap: jmap?,
            sign: raw.sign.unwrap_or(true),
            handle,
        })
    }

    /// `[accounts.NAME.smtp]`. The host defaults to the JMAP host; plaintext is allowed only to
    /// this machine and only when `allow-plaintext = true` confirms it.
    fn smtp(
        &mut self,
        path: &str,
        raw: Option<RawSmtp>,
        jmap_host: Option<String>,
    ) -> Option<Smtp> {
        let raw = raw.unwrap_or_default();
        let host_path = join(path, "host");
        let host = match raw.host {
            Some(host) => match check_host(&host) {
                Ok(()) => Some(host),
                Err(error) => {
                    self.error(&host_path, error.to_string());
                    None
                }
            },
            None => match jmap_host {
                Some(host) => {
                    self.warn_hint(
                        &host_path,
                        format!(
                            "not set; using {}, the host of jmap.session-url",
                            quote(&host)
                        ),
                        "set host if mail submission runs on another machine",
                    );
                    Some(host)
                }
                None => {
                    self.missing(
                        &host_path,
                        "set the SMTP submission host, e.g. host = \"mail.example.test\"",
                    );
                    None
                }
            },
        };
        let tls = raw.tls.unwrap_or(SmtpTls::Starttls);
        let port_path = join(path, "port");
        let port = match raw.port {
            Some(0) => {
                self.error(
                    &port_path,
                    "cannot use '0': expected a port from 1 to 65535",
                );
                default::SMTP_PORT
            }
            Some(port) => port,
            None if tls == SmtpTls::Implicit => default::SMTP_IMPLICIT_PORT,
            None => default::SMTP_PORT,
        };
        match (tls, port) {
            (SmtpTls::Implicit, 587) => self.warn_hint(
                &port_path,
                "port 587 normally speaks STARTTLS, not implicit TLS",
                "use tls = \"starttls\", or port 465 for implicit TLS",
            ),
            (SmtpTls::Starttls, 465) => self.warn_hint(
                &port_path,
                "port 465 normally speaks implicit TLS, not STARTTLS",
                "use tls = \"implicit\", or port 587 for STARTTLS",
            ),
            _ => {}
        }
        let allow_plaintext = raw.allow_plaintext.unwrap_or(false);
        let tls_path = join(path, "tls");
        if tls == SmtpTls::Plaintext {
            match &host {
                Some(host) if !super::address::is_loopback_host(host) => self.error_hint(
                    &tls_path,
                    format!(
                        "cannot use 'plaintext' with host {}: the password and every task would cross the network unencrypted",
                        quote(host)
                    ),
                    "use 'starttls' or 'implicit'; 'plaintext' is only for a server on this machine (localhost, 127.0.0.1, ::1) together with allow-plaintext = true",
                ),
                Some(_) if !allow_plaintext => self.error_hint(
                    &tls_path,
                    "cannot use 'plaintext' without allow-plaintext = true",
                    format!("set allow-plaintext = true in [{path}] to confirm that an unencrypted connection to this machine is intended"),
                ),
                _ => {}
            }
        } else if allow_plaintext {
            self.warn_hint(
                &join(path, "allow-plaintext"),
                "has no effect unless tls = \"plaintext\"",
                "remove it",
            );
        }
        let pool_size = match raw.pool_size {
            Some(size @ 1..=64) => size,
            Some(size) => {
                self.error(
                    &join(path, "pool-size"),
                    format!("cannot use '{size}': expected a number from 1 to 64"),
                );
                default::SMTP_POOL_SIZE
            }
            None => default::SMTP_POOL_SIZE,
        };
        let timeout = self.duration(&join(path, "timeout"), raw.timeout, default::SMTP_TIMEOUT);
        Some(Smtp {
            host: host?,
            port,
            tls,
            pool_size,
            timeout,
        })
    }

    /// `[accounts.NAME.jmap]`.
    fn jmap(&mut self, path: &str, raw: Option<RawJmap>) -> Option<Jmap> {
        let raw = raw.unwrap_or_default();
        let allow_insecure = raw.allow_insecure.unwrap_or(false);
        let url_path = join(path, "session-url");
        let session_url = match raw.session_url {
            None => {
                self.missing(
                    &url_path,
                    "set the JMAP session URL, e.g. session-url = \"https://mail.example.test/.well-known/jmap\"",
                );
                None
            }
            Some(text) => self.http_url(&url_path, &text, allow_insecure, path),
        };
        let origin_path = join(path, "public-origin");
        let public_origin = raw
            .public_origin
            .and_then(|text| self.http_url(&origin_path, &text, allow_insecure, path))
            .filter(|origin| {
                let bare = origin.path().is_empty() || origin.path() == "/";
                if !bare {
                    self.error_hint(
                        &origin_path,
                        format!(
                            "cannot use {} as an origin: it has a path",
                            quote(origin.as_str())
                        ),
                        "write only scheme://host[:port], e.g. 'https://mail.example.test'",
                    );
                }
                bare
            });
        if allow_insecure && session_url.as_ref().is_some_and(HttpUrl::is_https) {
            self.warn_hint(
                &join(path, "allow-insecure"),
                "has no effect: the session URL uses https",
                "remove it",
            );
        }
        let push = raw.push.unwrap_or(PushMode::Auto);
        let poll_interval = self.duration(
            &join(path, "poll-interval"),
            raw.poll_interval,
            default::POLL_INTERVAL,
        );
        let liveness_path = join(path, "push-liveness");
        let push_liveness =
            self.duration(&liveness_path, raw.push_liveness, default::PUSH_LIVENESS);
        if push_liveness <= Duration::from_secs(30) && push != PushMode::Poll {
            self.warn_hint(
                &liveness_path,
                "is 30s or less, but servers may ping an idle push channel only every 30s (Stalwart does), so a healthy channel would be dropped",
                "use at least '60s'",
            );
        }
        Some(Jmap {
            session_url: session_url?,
            public_origin,
            push,
            poll_interval,
            push_liveness,
        })
    }

    /// An http(s) URL; plain http only to this machine unless the table allows it.
    fn http_url(
        &mut self,
        path: &str,
        text: &str,
        allow_insecure: bool,
        table: &str,
    ) -> Option<HttpUrl> {
        let url = match HttpUrl::parse(text) {
            Ok(url) => url,
            Err(error) => {
                let hint = if path.ends_with("public-origin") {
                    "an origin looks like 'https://mail.example.test'"
                } else {
                    "a JMAP session URL usually looks like 'https://mail.example.test/.well-known/jmap'"
                };
                self.error_hint(path, error.to_string(), hint);
                return None;
            }
        };
        if !url.is_https() && !url.is_loopback() && !allow_insecure {
            self.error_hint(
                path,
                format!(
                    "cannot use plain http to {}: the password would cross the network unencrypted",
                    quote(url.host())
                ),
                format!("use https, or set allow-insecure = true in [{table}] if the network path is trusted"),
            );
            return None;
        }
        Some(url)
    }

    /// A required secret table: exactly one of `command`, `file`, `env`, `raw`.
    fn secret(&mut self, path: &str, value: Option<Value>) -> Option<Secret> {
        let value = match value {
            Some(value) => value,
            None => {
                self.missing(path, SECRET_HINT);
                return None;
            }
        };
        let table = match value {
            Value::Table(table) => table,
            // NOTE: the value is not quoted back: it is most likely the password itself.
            Value::String(_) => {
                self.error_hint(path, "cannot use a bare string as a secret", SECRET_HINT);
                return None;
            }
            _ => {
                self.error_hint(
                    path,
                    "cannot use this value as a secret: expected a table",
                    SECRET_HINT,
                );
                return None;
            }
        };
        const KINDS: [&str; 4] = ["command", "file", "env", "raw"];
        let mut ok = true;
        for key in table.keys().filter(|key| !KINDS.contains(&key.as_str())) {
            let hint = did_you_mean(key, KINDS)
                .map(|s| format!("did you mean '{s}'?"))
                .unwrap_or_else(|| SECRET_HINT.to_owned());
            self.error_hint(
                &join(path, key),
                format!("cannot use unknown key {}", quote(key)),
                hint,
            );
            ok = false;
        }
        let present: Vec<&str> = KINDS
            .into_iter()
            .filter(|kind| table.contains_key(*kind))
            .collect();
        let kind = match present.as_slice() {
            [one] => *one,
            [] => {
                if ok {
                    self.error_hint(path, "cannot be an empty table", SECRET_HINT);
                }
                return None;
            }
            several => {
                self.error_hint(
                    path,
                    format!(
                        "cannot take its value from several places at once ({})",
                        several.join(", ")
                    ),
                    "keep exactly one of command, file, env or raw",
                );
                return None;
            }
        };
        let at = join(path, kind);
        let entry = table.get(kind)?;
        let secret = match (kind, entry) {
            ("command", Value::Array(items)) => {
                let argv: Option<Vec<String>> = items
                    .iter()
                    .map(|item| item.as_str().map(str::to_owned))
                    .collect();
                match argv {
                    Some(argv) if argv.first().is_some_and(|p| !p.trim().is_empty()) => {
                        Secret::Command(argv)
                    }
                    Some(_) => {
                        self.error_hint(&at, "cannot be empty", "give the program and its arguments, e.g. [\"pass\", \"show\", \"mail/worker\"]");
                        return None;
                    }
                    None => {
                        self.error(
                            &at,
                            "cannot use a non-string argument: expected an array of strings",
                        );
                        return None;
                    }
                }
            }
            ("command", Value::String(text)) => {
                self.error_hint(
                    &at,
                    format!("cannot use the string {} as a command: expected an array of strings", quote(text)),
                    "split it into program and arguments, e.g. [\"pass\", \"show\", \"mail/worker\"]; no shell is involved",
                );
                return None;
            }
            ("file", Value::String(text)) => Secret::File(self.absolute_path(&at, text)?),
            ("env", Value::String(name)) => {
                if !is_env_name(name) {
                    self.error(
                        &at,
                        format!("cannot use {} as an environment variable name", quote(name)),
                    );
                    return None;
                }
                Secret::Env(name.clone())
            }
            ("raw", Value::String(text)) => {
                self.warn_hint(
                    &at,
                    "keeps the secret in the config file; raw secrets are for tests only",
                    "use command, file or env outside tests",
                );
                Secret::Raw(text.clone())
            }
            (_, _) => {
                let expected = if kind == "command" {
                    "an array of strings"
                } else {
                    "a string"
                };
                self.error(&at, format!("cannot use this value: expected {expected}"));
                return None;
            }
        };
        ok.then_some(secret)
    }

    /// `[worker]` with defaults.
    fn worker(
        &mut self,
        raw: RawWorker,
        known: &KnownAccounts,
        state_dir: &std::path::Path,
    ) -> Worker {
        let account = self.account_ref("worker.account", raw.account, known);
        let agent = raw.agent.unwrap_or_else(|| default::AGENT.to_owned());
        self.name("worker.agent", &agent, "an agent profile name");
        let concurrency = match raw.concurrency {
            Some(n @ 1..=256) => n,
            Some(n) => {
                self.error_hint(
                    "worker.concurrency",
                    format!("cannot use '{n}': expected a number from 1 to 256"),
                    if n == 0 {
                        "with 0 the worker would never run a task"
                    } else {
                        "each task is an agent process; more than 256 at once is a mistake"
                    },
                );
                default::CONCURRENCY
            }
            None => default::CONCURRENCY,
        };
        let task_timeout = self.duration(
            "worker.task-timeout",
            raw.task_timeout,
            default::TASK_TIMEOUT,
        );
        let cancel_grace = self.duration(
            "worker.cancel-grace",
            raw.cancel_grace,
            default::CANCEL_GRACE,
        );
        let shutdown_grace = self.duration(
            "worker.shutdown-grace",
            raw.shutdown_grace,
            default::SHUTDOWN_GRACE,
        );
        let lease = self.duration("worker.lease", raw.lease, default::LEASE);
        if lease < Duration::from_secs(3) {
            self.error_hint(
                "worker.lease",
                format!("is {lease:?}, shorter than 3 s"),
                "use at least \"3s\"; the default \"60s\" suits most mailboxes",
            );
        }
        let claim_wait = self.duration("worker.claim-wait", raw.claim_wait, default::CLAIM_WAIT);
        if claim_wait < Duration::from_millis(10) || claim_wait * 4 > lease {
            self.error_hint(
                "worker.claim-wait",
                format!("is {claim_wait:?}, outside 10 ms to a quarter of worker.lease"),
                "use at least four JMAP round trips, e.g. \"1s\" (the default)",
            );
        }
        let lease_owner = raw
            .lease_owner
            .map(|o| o.trim().to_ascii_lowercase())
            .filter(|o| o != "auto");
        if let Some(owner) = &lease_owner
            && !crate::config::valid_lease_owner(owner)
        {
            self.error_hint(
                "worker.lease-owner",
                format!("{} is not 1 to 12 of a-z and 0-9", quote(owner)),
                "use a short name such as \"w1\", different for every daemon on the mailbox",
            );
        }
        let work_dir = match raw.work_dir {
            Some(text) => self
                .absolute_path("worker.work-dir", &text)
                .unwrap_or_default(),
            None => state_dir.join("work"),
        };
        let mut allowed_senders = Vec::new();
        for (i, text) in raw.allowed_senders.unwrap_or_default().iter().enumerate() {
            let path = index("worker.allowed-senders", i);
            match PeerPattern::parse(text) {
                Ok(peer) if allowed_senders.contains(&peer) => {
                    self.warn_hint(&path, format!("lists {} twice", quote(text)), "remove the duplicate");
                }
                Ok(peer) => allowed_senders.push(peer),
                Err(error) => self.error_hint(
                    &path,
                    error.to_string(),
                    "write an address such as 'ada@example.test', or '*@example.test' for a whole domain",
                ),
            }
        }
        Worker {
            account,
            agent,
            concurrency,
            task_timeout,
            cancel_grace,
            on_cancel: raw.on_cancel.unwrap_or(OnCancel::Reject),
            work_dir,
            allowed_senders,
            plain_mail: raw.plain_mail.unwrap_or(false),
            shutdown_grace,
            lease,
            lease_owner,
            claim_wait,
        }
    }

    /// `[dispatcher]` with defaults.
    fn dispatcher(&mut self, raw: RawDispatcher, known: &KnownAccounts) -> Dispatcher {
        Dispatcher {
            account: self.account_ref("dispatcher.account", raw.account, known),
            default_timeout: self.duration(
                "dispatcher.default-timeout",
                raw.default_timeout,
                default::DISPATCH_TIMEOUT,
            ),
            default_priority: raw.default_priority.unwrap_or(Priority::Normal),
        }
    }

    /// `[trust]` with defaults; grants for the same account and peer twice are refused.
    fn trust(&mut self, raw: RawTrust, known: &KnownAccounts) -> Trust {
        let authserv_id = raw.authserv_id.filter(|id| {
            let ok = !id.trim().is_empty() && !id.contains(|c: char| c.is_whitespace() || c == ';');
            if !ok {
                self.error_hint(
                    "trust.authserv-id",
                    format!("cannot use {} as an authserv-id", quote(id)),
                    "use the host name the receiving server writes first in its Authentication-Results headers, e.g. 'mail.example.test'",
                );
            }
            ok
        });
        let require_authentication = raw.require_authentication.unwrap_or(true);
        if !require_authentication {
            self.warn_hint(
                "trust.require-authentication",
                "is false: mail is accepted without a DMARC or DKIM pass, so anyone can forge the From of an allowed sender",
                "keep it true unless every sender reaches the mailbox through this server's own submission",
            );
        }
        let quarantine_mailbox = raw
            .quarantine_mailbox
            .filter(|name| {
                if name.trim().is_empty() {
                    self.error("trust.quarantine-mailbox", "cannot be empty");
                    return false;
                }
                self.one_line("trust.quarantine-mailbox", name)
            })
            .unwrap_or_else(|| default::QUARANTINE.to_owned());
        let dedup_path = "trust.dedup-retention";
        let dedup_retention =
            self.duration(dedup_path, raw.dedup_retention, default::DEDUP_RETENTION);
        if dedup_retention < default::DEDUP_RETENTION {
            self.warn_hint(
                dedup_path,
                "is shorter than 7 days, so a message replayed after that would be processed again",
                "keep at least '7d'",
            );
        }
        let transit_window = self.duration(
            "trust.transit-window",
            raw.transit_window,
            default::TRANSIT_WINDOW,
        );
        let rate_limit = match raw.rate_limit {
            Some(text) => self.rate_limit("trust.rate-limit", &text),
            None => RateLimit {
                count: default::RATE_LIMIT_COUNT,
                per: default::RATE_LIMIT_PER,
            },
        };
        let mut grants: Vec<Grant> = Vec::new();
        let mut seen: BTreeMap<(String, PeerPattern), usize> = BTreeMap::new();
        for (i, raw_grant) in raw.grants.unwrap_or_default().into_iter().enumerate() {
            let path = index("trust.grants", i);
            let Some(grant) = self.grant(&path, raw_grant, known) else {
                continue;
            };
            let key = (grant.account.clone(), grant.peer.clone());
            if let Some(first) = seen.get(&key) {
                self.error_hint(
                    &join(&path, "peer"),
                    format!(
                        "cannot grant {} twice for account {}: trust.grants[{first}] already does",
                        quote(&grant.peer.to_string()),
                        quote(&grant.account)
                    ),
                    "merge the two entries",
                );
                continue;
            }
            seen.insert(key, i);
            grants.push(grant);
        }
        Trust {
            authserv_id,
            require_authentication,
            same_server_submission: raw.same_server_submission.unwrap_or(false),
            on_refused: raw.on_refused.unwrap_or(OnRefused::Silent),
            quarantine_mailbox,
            dedup_retention,
            transit_window,
            rate_limit,
            grants,
        }
    }

    /// `COUNT/PERIOD`, the period a bare unit (`60/h`) or a duration (`100/30m`).
    fn rate_limit(&mut self, path: &str, text: &str) -> RateLimit {
        let fallback = RateLimit {
            count: default::RATE_LIMIT_COUNT,
            per: default::RATE_LIMIT_PER,
        };
        let hint = "write COUNT/PERIOD, e.g. '60/h', '5/m' or '100/30m'";
        let Some((count, period)) = text.split_once('/') else {
            self.error_hint(
                path,
                format!(
                    "cannot parse {} as a rate limit: it has no '/'",
                    quote(text)
                ),
                hint,
            );
            return fallback;
        };
        let count = match count.trim().parse::<u32>() {
            Ok(count) if count > 0 => count,
            _ => {
                self.error_hint(
                    path,
                    format!("cannot parse {} as a rate limit: the count must be a whole number above zero", quote(text)),
                    hint,
                );
                return fallback;
            }
        };
        let period = period.trim();
        let per = match period {
            "s" | "m" | "h" | "d" => parse_duration(&format!("1{period}")),
            _ => parse_duration(period),
        };
        match per {
            Ok(per) if !per.is_zero() => RateLimit { count, per },
            _ => {
                self.error_hint(
                    path,
                    format!(
                        "cannot parse {} as a rate limit: the period must be a unit or a duration",
                        quote(text)
                    ),
                    hint,
                );
                fallback
            }
        }
    }

    /// One `[[trust.grants]]` entry; `None` when its peer is missing or invalid.
    fn grant(&mut self, path: &str, raw: RawGrant, known: &KnownAccounts) -> Option<Grant> {
        let account = self.account_ref(&join(path, "account"), raw.account, known);
        let peer_path = join(path, "peer");
        let peer = match raw.peer {
            None => {
                self.missing(&peer_path, "name the other side, e.g. peer = \"dispatcher@example.test\" or \"*@example.test\"");
                None
            }
            Some(text) => match PeerPattern::parse(&text) {
                Ok(peer) => Some(peer),
                Err(error) => {
                    self.error(&peer_path, error.to_string());
                    None
                }
            },
        };
        let intents_path = join(path, "intents");
        let raw_intents = raw
            .intents
            .unwrap_or_else(|| DEFAULT_INTENTS.iter().map(|i| (*i).to_owned()).collect());
        if raw_intents.is_empty() {
            self.error_hint(
                &intents_path,
                "cannot be empty",
                "list what the peer may send, e.g. [\"task.dispatch\", \"task.cancel\"]; to shut a peer out, set state = \"blocked\"",
            );
        }
        let mut intents: Vec<String> = Vec::new();
        for (i, intent) in raw_intents.into_iter().enumerate() {
            let at = index(&intents_path, i);
            if !INTENTS.contains(&intent.as_str()) {
                let hint = match did_you_mean(&intent, INTENTS) {
                    Some(suggestion) => format!("did you mean '{suggestion}'?"),
                    None => format!("AAMP 1.1 intents: {}", INTENTS.join(", ")),
                };
                self.error_hint(
                    &at,
                    format!("cannot use unknown intent {}", quote(&intent)),
                    hint,
                );
            } else if !intents.contains(&intent) {
                intents.push(intent);
            }
        }
        let expires = raw
            .expires
            .and_then(|value| self.expiry(&join(path, "expires"), &value));
        let rules_path = join(path, "dispatch-context-rules");
        let mut rules = BTreeMap::new();
        for (key, values) in raw.dispatch_context_rules.unwrap_or_default() {
            let at = join(&rules_path, &key);
            let key_ok = !key.is_empty()
                && key
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
            if !key_ok {
                self.error_hint(
                    &at,
                    format!("cannot use {} as a Dispatch-Context key", quote(&key)),
                    "keys are lowercase letters, digits, '_' and '-' (AAMP 1.1)",
                );
                continue;
            }
            if values.is_empty() {
                self.error_hint(
                    &at,
                    "cannot be empty: no dispatch could satisfy it",
                    "list the allowed values, or remove the key to allow any value",
                );
                continue;
            }
            rules.insert(key, values);
        }
        let peer_key = raw
            .peer_key
            .and_then(|key| self.peer_key(&join(path, "peer-key"), &key));
        Some(Grant {
            account,
            peer: peer?,
            intents,
            state: raw.state.unwrap_or(GrantState::Active),
            expires,
            dispatch_context_rules: rules,
            require_signature: raw.require_signature.unwrap_or(false),
            peer_key,
        })
    }

    /// `peer-key`: `ed25519:` and the base64url (no padding) of 32 bytes, trimmed.
    fn peer_key(&mut self, path: &str, key: &str) -> Option<String> {
        use base64::Engine as _;
        let key = key.trim();
        let ok = key
            .strip_prefix("ed25519:")
            .and_then(|b| {
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(b)
                    .ok()
            })
            .is_some_and(|bytes| bytes.len() == 32);
        if ok {
            return Some(key.to_owned());
        }
        self.error_hint(
            path,
            format!("cannot use {} as a public key", quote(key)),
            "expected 'ed25519:' and 43 base64url characters, the line of the peer's keys/<account>.pub ('taskmail keys show' prints it)",
        );
        None
    }

    /// An RFC 3339 instant with an offset, from a string or a TOML offset date-time.
    fn expiry(
        &mut self,
        path: &str,
        value: &Value,
    ) -> Option<chrono::DateTime<chrono::FixedOffset>> {
        let text = match value {
            Value::String(text) => text.clone(),
            Value::Datetime(datetime) => datetime.to_string(),
            _ => {
                self.error_hint(
                    path,
                    "cannot use this value as a time: expected an RFC 3339 date-time",
                    "e.g. expires = 2026-12-31T23:59:59Z",
                );
                return None;
            }
        };
        match DateTime::parse_from_rfc3339(&text) {
            Ok(time) => Some(time),
            Err(error) => {
                self.error_hint(
                    path,
                    format!(
                        "cannot parse {} as an RFC 3339 date-time: {error}",
                        quote(&text)
                    ),
                    "write a date, a time and a UTC offset, e.g. '2026-12-31T23:59:59Z'",
                );
                None
            }
        }
    }

    /// `[serve]` with defaults; one token per agent handle.
    /// `[serve]`: a loopback listen address unless `allow-remote`, a body limit, and one
    /// agent per account with a token reference each.
    fn serve(&mut self, raw: RawServe, known: &KnownAccounts) -> Serve {
        let allow_remote = raw.allow_remote.unwrap_or(false);
        let listen_text = raw.listen.unwrap_or_else(|| default::LISTEN.to_owned());
        let fallback = SocketAddr::from(([127, 0, 0, 1], 7878));
        let listen = match listen_text.parse::<SocketAddr>() {
            Ok(listen) if listen.ip().is_loopback() => listen,
            Ok(listen) if allow_remote => {
                self.warn_hint(
                    "serve.listen",
                    format!("{} is reachable from other machines, and the operator API sends mail as its agents", quote(&listen_text)),
                    "keep it on 127.0.0.1 or [::1] unless a TLS proxy stands in front",
                );
                listen
            }
            Ok(_) => {
                self.error_hint(
                    "serve.listen",
                    format!("cannot listen on {}: other machines could reach the operator API", quote(&listen_text)),
                    "use 127.0.0.1:PORT or [::1]:PORT, or set serve.allow-remote = true behind a TLS proxy",
                );
                fallback
            }
            Err(_) => {
                self.error_hint(
                    "serve.listen",
                    format!("cannot parse {} as a listen address", quote(&listen_text)),
                    "write IP:PORT, e.g. '127.0.0.1:7878' or '[::1]:7878'",
                );
                fallback
            }
        };
        let body_limit = raw.body_limit.unwrap_or(default::BODY_LIMIT);
        if !(1024..=(64 << 20)).contains(&body_limit) {
            self.error_hint(
                "serve.body-limit",
                format!("cannot use {body_limit} bytes as the body limit"),
                "use 1024 to 67108864 bytes; 1048576 (1 MiB) is the ASMTP envelope limit",
            );
        }
        let mut agents = Vec::new();
        let mut accounts = BTreeSet::new();
        for (name, raw_agent) in raw.agents.unwrap_or_default() {
            let path = join("serve.agents", &name);
            self.name(&path, &name, "an agent name");
            let account_path = join(&path, "account");
            let account = match raw_agent.account {
                None => {
                    self.missing(
                        &account_path,
                        "name the [accounts.NAME] whose mailbox this agent uses",
                    );
                    None
                }
                Some(account) => {
                    let account = self.account_ref(&account_path, Some(account), known);
                    if accounts.insert(account.clone()) {
                        Some(account)
                    } else {
                        self.error_hint(
                            &account_path,
                            format!("cannot give account {} a second agent", quote(&account)),
                            "one agent (and one token) per account",
                        );
                        None
                    }
                }
            };
            let token = self.secret(&join(&path, "token"), raw_agent.token);
            if let (Some(account), Some(token)) = (account, token) {
                agents.push(ServeAgent {
                    name,
                    account,
                    token,
                });
            }
        }
        Serve {
            listen,
            allow_remote,
            body_limit: body_limit as usize,
            agents,
        }
    }

    /// An ASMTP handle, normalised to `@owner.name` (the rule of `wire::asmtp::Handle`, which
    /// this leaf module cannot use): ASCII, lowercase, `[a-z0-9_-]+` twice, one dot.
    fn handle(&mut self, path: &str, text: &str) -> Option<String> {
        let trimmed = text.trim();
        let bare = trimmed
            .strip_prefix('@')
            .unwrap_or(trimmed)
            .to_ascii_lowercase();
        let part_ok = |p: &str| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        };
        match bare.split_once('.') {
            Some((owner, name)) if part_ok(owner) && part_ok(name) && bare.len() <= 64 => {
                Some(format!("@{bare}"))
            }
            _ => {
                self.error_hint(
                    path,
                    format!("cannot use {} as a handle", quote(text)),
                    "write @owner.name, each part of a-z, 0-9, '_' or '-', e.g. '@acme.planner'",
                );
                None
            }
        }
    }

    /// `[asmtp]` with defaults.
    fn asmtp(&mut self, raw: RawAsmtp) -> Asmtp {
        let backfill = match raw.backfill {
            None => default::BACKFILL,
            Some(raw) => match parse_duration(&raw.0) {
                Ok(d) => d,
                Err(error) => {
                    self.report.error(
                        Diagnostic::new("asmtp.backfill", error.to_string())
                            .with_hint(DURATION_HINT),
                    );
                    default::BACKFILL
                }
            },
        };
        let mut directory = BTreeMap::new();
        for (handle, address) in raw.directory.unwrap_or_default() {
            let path = join("asmtp.directory", &handle);
            let Some(normal) = self.handle(&path, &handle) else {
                continue;
            };
            match check_email(&address) {
                Ok(()) => {
                    directory.insert(normal, address.trim().to_lowercase());
                }
                Err(error) => self.error(&path, error.to_string()),
            }
        }
        Asmtp {
            backfill,
            directory,
        }
    }
}
