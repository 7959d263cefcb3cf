//! A worker daemon in-process and a hand-driven dispatcher, against the real servers: the
//! harness of the e2e tests that need a running `taskmail::daemon::run` ([`Worker`]) and a
//! peer that submits AAMP mail and reads the replies from its own mailbox ([`Mailer`]).
//!
//! One daemon at a time serves a server's worker mailbox within a test binary (a per-server
//! lock, [`on_every_server`]); the servers run in parallel.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use chrono::TimeDelta;
use taskmail::config::{Config, Env, Mode};
use taskmail::daemon::runner::{Runner, RunnerSettings, work_dir_name};
use taskmail::daemon::{self, DaemonError, Deps, Event, EventKind};
use taskmail::transport::{
    self, Fetched, Hint, JmapClient, MailStore, PushSettings, PushSupervisor, SmtpEnvelope,
    SmtpSubmit, Submit,
};
use taskmail::wire::aamp::{AampMessage, Dispatch, Payload, Priority, TaskId};
use taskmail::wire::message::{Attachment, Mailbox, Outbound};
use taskmail::wire::{Classified, classify};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;

use super::Server;
/// How long a reply may take to arrive in the dispatcher's mailbox.
pub(crate) const REPLY_TIMEOUT: Duration = Duration::from_secs(60);

/// Agent profiles of the test config, besides the built-in `echo`.
pub(crate) const PROFILES: &str = r#"
[profiles.slow]
description = "runs for 30 s: something to cancel"
command = ["sleep", "30"]
prompt-via = "stdin"

[profiles.counted]
description = "echo, counting its runs in the work dir, after a 3 s pause"
command = ["sh", "-c", 'printf x >> "$2/.runs"; sleep 3; printf "%s\n" "$1"', "counted", "{prompt}", "{workdir}"]

[profiles.files]
description = "lists in/ into the outbox, copies every input back, echoes the prompt"
command = ["sh", "-c", 'ls in > outbox/listing.txt; for f in in/*; do cp "$f" outbox/; done; printf "%s\n" "$1"', "files", "{prompt}"]
"#;

// ---------------------------------------------------------------------------------------------
// One server at a time per worker mailbox

pub(crate) fn server_lock(server: &Server) -> &'static tokio::sync::Mutex<()> {
    static LOCKS: OnceLock<Mutex<BTreeMap<String, &'static tokio::sync::Mutex<()>>>> =
        OnceLock::new();
    let mut locks = LOCKS
        .get_or_init(|| Mutex::new(BTreeMap::new()))
        .lock()
        .unwrap();
    locks
        .entry(server.name.clone())
        .or_insert_with(|| Box::leak(Box::new(tokio::sync::Mutex::new(()))))
}

/// Runs `case` on every server, the servers in parallel.
pub(crate) async fn on_every_server<F, Fut>(case: F)
where
    F: Fn(Server) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    transport::init_crypto();
    let handles: Vec<(String, JoinHandle<()>)> = super::servers()
        .into_iter()
        .map(|server| {
            let label = server.label();
            let run = case(server.clone());
            (
                label,
                tokio::spawn(async move {
                    let _guard = server_lock(&server).lock().await;
                    run.await;
                }),
            )
        })
        .collect();
    let mut failed = Vec::new();
    for (label, handle) in handles {
        if let Err(error) = handle.await {
            failed.push(format!("{label}: {error}"));
        }
    }
    assert!(failed.is_empty(), "failed on: {failed:#?}");
}

// ---------------------------------------------------------------------------------------------
// The worker under test

/// Whether the harness found push on this server (decided from its session, not its name).
pub(crate) fn pushes(server: &Server) -> bool {
    !server.push.is_empty()
}

/// A validated config: worker@ with `agent`, dispatcher@ allowed, state under `dir`.
pub(crate) fn worker_config(server: &Server, dir: &Path, agent: &str, extra: &str) -> Config {
    let text = worker_config_text(server, dir, agent, extra);
    Config::from_toml_str_with_env(&text, Mode::Strict, &Env::with_home(dir))
        .unwrap_or_else(|e| panic!("{}: test config: {e}\n{text}", server.label()))
}

/// The text of [`worker_config`]. `extra` goes into the `[worker]` table and may open other
/// tables; without a `[trust]` table of its own, the config turns mail authentication off
/// (`require-authentication = false`) and admits `dispatcher@` by `allowed-senders`.
pub(crate) fn worker_config_text(server: &Server, dir: &Path, agent: &str, extra: &str) -> String {
    // NOTE: with push, the safety poll stays slow so that latencies measure push; without, the
    // daemon polls Email/changes every 250 ms.
    let poll = if pushes(server) { "30s" } else { "250ms" };
    format!(
        r#"
state-dir = "{dir}/state"

[accounts.worker]
email = "worker@{domain}"
password = {{ raw = "{password}" }}
smtp = {{ host = "{host}", port = {port}, tls = "plaintext", allow-plaintext = true, pool-size = 2, timeout = "15s" }}
jmap = {{ session-url = "{session}", poll-interval = "{poll}" }}

[worker]
agent = "{agent}"
allowed-senders = ["dispatcher@{domain}"]
concurrency = 2
cancel-grace = "1s"
shutdown-grace = "3s"
work-dir = "{dir}/work"
{extra}
{trust}
{PROFILES}
"#,
        trust = if extra.contains("[trust]") {
            ""
        } else {
            "\n[trust]\nrequire-authentication = false"
        },
        dir = dir.display(),
        domain = server.domain,
        password = server.password,
        host = server.smtp_host,
        port = server.submission_port,
        session = server.jmap_session_url,
    )
}

/// A daemon running in-process.
pub(crate) struct Worker {
    pub(crate) label: String,
    pub(crate) work_root: PathBuf,
    pub(crate) handle: Option<JoinHandle<Result<(), DaemonError>>>,
    pub(crate) stop: Option<oneshot::Sender<()>>,
    /// Every event so far: read through [`Worker::events`], which first takes what the daemon
    /// sent since (no collector task that could lag behind an assertion).
    seen_events: Mutex<(broadcast::Receiver<Event>, Vec<Event>)>,
    /// When each hint reached the daemon.
    pub(crate) hints: Arc<Mutex<Vec<(Instant, Hint)>>>,
}

impl Worker {
    /// Starts `taskmail::daemon::run` for worker@ with `agent` on the state dir `dir`, and
    /// waits until it is ready.
    pub(crate) async fn start(server: &Server, dir: &Path, agent: &str, extra: &str) -> Worker {
        let config = worker_config(server, dir, agent, extra);
        Worker::start_with_config(server, dir, agent, config).await
    }

    /// As [`Worker::start`], with a config the test built itself (e.g. from
    /// [`worker_config_text`] with other `[accounts.worker]` JMAP settings).
    pub(crate) async fn start_with_config(
        server: &Server,
        dir: &Path,
        agent: &str,
        config: Config,
    ) -> Worker {
        // NOTE: `TASKMAIL_TEST_LOG=taskmail=debug` shows the in-process daemons' logs.
        if let Ok(filter) = std::env::var("TASKMAIL_TEST_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                .with_test_writer()
                .try_init();
        }
        let label = format!("{} [{agent}]", server.label());
        let env = Env::with_home(dir);
        let profile = taskmail::profile::agent(agent, &config, &env)
            .unwrap_or_else(|e| panic!("{label}: profile: {e:?}"));
        let runner = Runner::new(profile, RunnerSettings::from_worker(config.worker()));
        let account = config.account("worker").unwrap().clone();
        let mut deps = Deps::connect(&account, Arc::new(runner))
            .await
            .unwrap_or_else(|e| panic!("{label}: connect: {e:?}"));
        // Interpose on the hints to time them.
        let hints = Arc::new(Mutex::new(Vec::new()));
        let (forward, hint_rx) = mpsc::channel(16);
        let mut upstream = std::mem::replace(&mut deps.hints, hint_rx);
        let log = Arc::clone(&hints);
        deps.background.push(Box::pin(async move {
            while let Some(hint) = upstream.recv().await {
                log.lock().unwrap().push((Instant::now(), hint));
                if forward.send(hint).await.is_err() {
                    return;
                }
            }
        }));
        let (events_tx, events_rx) = broadcast::channel(1 << 16);
        deps.events = Some(events_tx);
        let (stop, stopped) = oneshot::channel::<()>();
        let handle = tokio::spawn(async move {
            daemon::run(&config, deps, async {
                let _ = stopped.await;
            })
            .await
        });
        let worker = Worker {
            label,
            work_root: dir.join("work"),
            handle: Some(handle),
            stop: Some(stop),
            seen_events: Mutex::new((events_rx, Vec::new())),
            hints,
        };
        worker
            .wait_event("ready", Duration::from_secs(30), |e| {
                matches!(e, EventKind::Ready { .. })
            })
            .await;
        worker
    }

    /// Every event the daemon sent so far, in order (a copy).
    pub(crate) fn events(&self) -> Vec<Event> {
        let mut guard = self.seen_events.lock().unwrap();
        let (rx, seen) = &mut *guard;
        loop {
            match rx.try_recv() {
                Ok(event) => seen.push(event),
                Err(broadcast::error::TryRecvError::Lagged(n)) => {
                    panic!(
                        "{}: {n} daemon events lost (raise the channel size)",
                        self.label
                    )
                }
                Err(_) => break,
            }
        }
        seen.clone()
    }

    pub(crate) async fn wait_event(
        &self,
        what: &str,
        timeout: Duration,
        matches: impl Fn(&EventKind) -> bool,
    ) -> Event {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(found) = self.events().iter().find(|e| matches(&e.kind)) {
                return found.clone();
            }
            if let Some(handle) = &self.handle
                && handle.is_finished()
            {
                panic!("{}: the daemon ended while waiting for {what}", self.label);
            }
            assert!(
                Instant::now() < deadline,
                "{}: timed out waiting for {what}; events: {:#?}",
                self.label,
                self.events()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub(crate) fn events_for(&self, task_id: &str) -> Vec<EventKind> {
        self.events()
            .iter()
            .filter(|e| e.kind.task_id().is_some_and(|t| t.as_str() == task_id))
            .map(|e| e.kind.clone())
            .collect()
    }

    pub(crate) fn started(&self, task_id: &str) -> usize {
        self.events_for(task_id)
            .iter()
            .filter(|e| matches!(e, EventKind::Started { .. }))
            .count()
    }

    /// The work dir of a task.
    pub(crate) fn work_dir(&self, task_id: &str) -> PathBuf {
        self.work_root.join(work_dir_name(&TaskId::new(task_id)))
    }

    /// A graceful stop (the shutdown future completes).
    pub(crate) async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(handle) = self.handle.take() {
            tokio::time::timeout(Duration::from_secs(30), handle)
                .await
                .expect("the daemon stops within its grace")
                .unwrap()
                .unwrap();
        }
    }

    /// A crash: the daemon's future is dropped mid-flight.
    /// Every event it sent before it died.
    pub(crate) async fn kill(mut self) -> Vec<Event> {
        if let Some(handle) = self.handle.take() {
            handle.abort();
            let _ = handle.await;
        }
        self.events()
    }
}

impl Drop for Worker {
    /// A worker dropped without `stop` or `kill` (a test's end, a panic) stops at once: its
    /// daemon would otherwise live on in the test's runtime after the server lock is released
    /// and claim the next test's tasks on the same mailbox.
    fn drop(&mut self) {
        if let Some(handle) = self.handle.take() {
            handle.abort();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The dispatcher side, by hand

/// A validated account `user@domain` of `server`.
pub(crate) fn account(server: &Server, user: &str) -> taskmail::config::Account {
    account_as(
        server,
        user,
        &format!("{user}@{}", server.domain),
        &server.password,
    )
}

/// The `[accounts.NAME]` table of `user@<domain>` on `server` with the ASMTP `handle`, over
/// plain submission; it polls every 250 ms without push (30 s with push, so that latencies
/// measure push).
pub(crate) fn handle_account_toml(server: &Server, name: &str, user: &str, handle: &str) -> String {
    let poll = if pushes(server) { "30s" } else { "250ms" };
    format!(
        r#"
[accounts.{name}]
email = "{user}@{domain}"
handle = "{handle}"
password = {{ raw = "{password}" }}
smtp = {{ host = "{host}", port = {port}, tls = "plaintext", allow-plaintext = true, pool-size = 2, timeout = "15s" }}
jmap = {{ session-url = "{session}", poll-interval = "{poll}" }}
"#,
        domain = server.domain,
        password = server.password,
        host = server.smtp_host,
        port = server.submission_port,
        session = server.jmap_session_url,
    )
}

/// A validated account named `name` for the mailbox `email` on `server` (e.g. an
/// `other_account` at the second domain).
pub(crate) fn account_as(
    server: &Server,
    name: &str,
    email: &str,
    password: &str,
) -> taskmail::config::Account {
    let user = name;
    let text = format!(
        r#"
[accounts.{user}]
email = "{email}"
password = {{ raw = "{password}" }}
smtp = {{ host = "{host}", port = {port}, tls = "plaintext", allow-plaintext = true, pool-size = 2, timeout = "15s" }}
jmap = {{ session-url = "{session}", poll-interval = "30s" }}
"#,
        host = server.smtp_host,
        port = server.submission_port,
        session = server.jmap_session_url,
    );
    let config =
        Config::from_toml_str_with_env(&text, Mode::Strict, &Env::with_home("/nonexistent"))
            .unwrap();
    config.account(user).unwrap().clone()
}

/// A message that arrived in the dispatcher's mailbox.
#[derive(Debug, Clone)]
pub(crate) struct Got {
    pub(crate) fetched: Fetched,
    pub(crate) message: Option<AampMessage>,
    /// When the test saw it.
    pub(crate) seen: Instant,
}

impl Got {
    pub(crate) fn intent(&self) -> Option<&str> {
        self.message.as_ref().map(|m| m.intent().as_str())
    }

    pub(crate) fn task_id(&self) -> Option<&str> {
        self.message.as_ref().map(|m| m.task_id.as_str())
    }

    pub(crate) fn message_id(&self) -> String {
        self.fetched.inbound.message_id.clone().unwrap()
    }

    pub(crate) fn result(&self) -> Option<&taskmail::wire::aamp::TaskResult> {
        match &self.message.as_ref()?.payload {
            Payload::Result(r) => Some(r),
            _ => None,
        }
    }

    pub(crate) fn text(&self) -> String {
        self.fetched
            .inbound
            .body
            .as_ref()
            .and_then(|b| b.text.clone())
            .unwrap_or_default()
    }
}

/// `user@` sending over submission and reading its own mailbox over JMAP (push when offered).
pub(crate) struct Mailer {
    pub(crate) label: String,
    pub(crate) email: String,
    pub(crate) worker: String,
    pub(crate) jmap: Arc<JmapClient>,
    pub(crate) smtp: SmtpSubmit,
    pub(crate) inbox: String,
    pub(crate) cursor: tokio::sync::Mutex<String>,
    pub(crate) seen: Mutex<Vec<Got>>,
    pub(crate) hints: tokio::sync::Mutex<mpsc::Receiver<Hint>>,
    pub(crate) _push: JoinHandle<()>,
}

impl Mailer {
    pub(crate) async fn new(server: &Server, user: &str) -> Mailer {
        Mailer::with_account(server, account(server, user)).await
    }

    /// A mailer for any validated account of `server` ([`account_as`]).
    pub(crate) async fn with_account(
        server: &Server,
        account: taskmail::config::Account,
    ) -> Mailer {
        let jmap = Arc::new(JmapClient::from_account(&account).await.unwrap());
        let smtp = SmtpSubmit::from_account(&account).unwrap();
        let inbox = jmap.inbox_id().await.unwrap();
        let cursor = jmap.state().await.unwrap();
        let (supervisor, hints, _) = PushSupervisor::new(
            Arc::clone(&jmap),
            PushSettings::from_config(&account.jmap).unwrap(),
            16,
        );
        let push = tokio::spawn(supervisor.run(std::future::pending()));
        Mailer {
            label: format!("{} as {}", server.label(), account.email),
            email: account.email.clone(),
            worker: format!("worker@{}", server.domain),
            jmap,
            smtp,
            inbox,
            cursor: tokio::sync::Mutex::new(cursor),
            seen: Mutex::new(Vec::new()),
            hints: tokio::sync::Mutex::new(hints),
            _push: push,
        }
    }

    /// Reads what arrived since the last look.
    pub(crate) async fn poll(&self) {
        let mut cursor = self.cursor.lock().await;
        let changes = self.jmap.changes(&cursor).await.unwrap();
        if !changes.created.is_empty() {
            let fetched = self.jmap.get_bodies(&changes.created).await.unwrap();
            let now = Instant::now();
            let mut seen = self.seen.lock().unwrap();
            for f in fetched
                .into_iter()
                .filter(|f| f.mailbox_ids.contains(&self.inbox))
            {
                let message = match classify(&f.inbound) {
                    Classified::Aamp(parsed) => Some(parsed.message),
                    _ => None,
                };
                seen.push(Got {
                    fetched: f,
                    message,
                    seen: now,
                });
            }
        }
        *cursor = changes.new_state;
    }

    /// Waits until a message matching `pred` arrived.
    pub(crate) async fn wait(&self, what: &str, pred: impl Fn(&Got) -> bool) -> Got {
        let deadline = Instant::now() + REPLY_TIMEOUT;
        loop {
            self.poll().await;
            if let Some(got) = self.seen.lock().unwrap().iter().find(|g| pred(g)) {
                return got.clone();
            }
            assert!(
                Instant::now() < deadline,
                "{}: timed out waiting for {what}; seen: {:#?}",
                self.label,
                self.seen
                    .lock()
                    .unwrap()
                    .iter()
                    .map(|g| (
                        g.fetched.inbound.subject.clone(),
                        g.task_id().map(str::to_owned)
                    ))
                    .collect::<Vec<_>>()
            );
            let mut hints = self.hints.lock().await;
            let _ = tokio::time::timeout(Duration::from_millis(250), hints.recv()).await;
            while hints.try_recv().is_ok() {}
        }
    }

    pub(crate) async fn wait_intent(&self, task_id: &str, intent: &str) -> Got {
        self.wait(&format!("{intent} of task {task_id}"), |g| {
            g.task_id() == Some(task_id) && g.intent() == Some(intent)
        })
        .await
    }

    /// Every message of a task seen so far (after one more look).
    pub(crate) async fn all(&self, task_id: &str) -> Vec<Got> {
        self.poll().await;
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|g| g.task_id() == Some(task_id))
            .cloned()
            .collect()
    }

    /// Submits an AAMP message to the worker; returns its Message-ID.
    pub(crate) async fn send_aamp(
        &self,
        message: &AampMessage,
        parent: Option<&Got>,
        attachments: Vec<Attachment>,
    ) -> String {
        let (in_reply_to, references) = match parent {
            Some(p) => {
                let (irt, refs) = taskmail::wire::thread::reply_chain(
                    &p.message_id(),
                    &p.fetched.inbound.references,
                );
                (Some(irt), refs)
            }
            None => (None, Vec::new()),
        };
        let now = taskmail::clock::now();
        let message_id = taskmail::ids::message_id(now, &taskmail::ids::domain_of(&self.email));
        let mut outbound = Outbound::aamp(
            message,
            Mailbox::new(&self.email),
            vec![Mailbox::new(&self.worker)],
            now,
            message_id.clone(),
        );
        outbound.in_reply_to = in_reply_to;
        outbound.references = references;
        outbound.attachments = attachments;
        self.submit(&outbound.render()).await;
        message_id
    }

    pub(crate) async fn submit(&self, raw: &[u8]) {
        self.smtp
            .send_raw(
                &SmtpEnvelope::new(self.email.clone(), [self.worker.clone()]),
                raw,
            )
            .await
            .unwrap_or_else(|e| panic!("{}: submission: {e:?}", self.label));
    }

    /// Submits a task.dispatch; returns its Message-ID.
    pub(crate) async fn dispatch(
        &self,
        task_id: &str,
        instructions: &str,
        expires_in: Option<TimeDelta>,
        parent: Option<&Got>,
    ) -> String {
        let message = AampMessage::new(
            TaskId::new(task_id),
            Payload::Dispatch(Dispatch {
                title: format!("Worker test {task_id}"),
                instructions: instructions.to_owned(),
                priority: Priority::Normal,
                expires_at: expires_in
                    .map(|d| taskmail::wire::aamp::truncate_ms(taskmail::clock::now() + d)),
                ..Dispatch::default()
            }),
        );
        self.send_aamp(&message, parent, Vec::new()).await
    }

    /// Downloads an attachment of a received message.
    pub(crate) async fn download(&self, got: &Got, name: &str) -> Vec<u8> {
        let attachment = got
            .fetched
            .inbound
            .body
            .as_ref()
            .unwrap()
            .attachments
            .iter()
            .find(|a| a.name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("{}: no attachment {name}", self.label))
            .clone();
        self.jmap
            .download(
                attachment.blob_id.as_deref().unwrap(),
                name,
                &attachment.content_type,
            )
            .await
            .unwrap()
    }
}

pub(crate) fn task_id(token: &str, case: &str) -> String {
    format!("{case}-{token}")
}

pub(crate) fn results(messages: &[Got]) -> usize {
    messages
        .iter()
        .filter(|g| g.intent() == Some("task.result"))
        .count()
}
