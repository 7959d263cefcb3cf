//! The dispatcher side end to end, against the real servers of the harness (`bash
//! tests/mailserver/mailserver.sh up all`): Stalwart (push) and Cyrus+Postfix (polling).
//!
//! A worker daemon runs in-process ([`taskmail::daemon::run`], as in `tests/worker.rs`) as
//! `worker@example.test` with the `mixed` profile below (echo, plus `please fail` and `please
//! sleep`), and the dispatcher is driven through the real binary (`CARGO_BIN_EXE_taskmail`) as
//! `dispatcher@example.test`, with a temp HOME whose XDG config the test writes. Every case
//! asserts exit codes, `--json` events and what the store then says (`tasks --json`, `task show
//! --json`); `listen` is checked against the mailbox itself (no ack arrives, no keyword is set).
//!
//! The cases of one server share one dispatcher HOME and run at once, so several `dispatch
//! --wait` processes share a store: one runs the account's pipeline, the others follow the
//! store and take it over when it exits. One worker daemon (or none, for the timeout and
//! `listen` cases) serves a server's worker mailbox at a time (a per-server lock).
//!
//! `dispatch_wait_latency` prints dispatch-to-result latency over `TASKMAIL_DISPATCH_ROUNDS`
//! (default 30) sequential `dispatch --wait` runs on every push server, next to the
//! submission-to-push floor (`-- --nocapture` to see it).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::Value;
use taskmail::config::{Config, Env, Mode};
use taskmail::daemon::runner::{Runner, RunnerSettings};
use taskmail::daemon::{self, DaemonError, Deps, Event, EventKind};
use taskmail::transport::{self, Hint, JmapClient, MailStore as _};
use taskmail::wire::{Classified, classify};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, BufReader};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;

use support::Server;

/// How long one `dispatch --wait` case may take.
const CASE_TIMEOUT: Duration = Duration::from_secs(90);

/// The worker's agent: the echo profile's behaviour (`please ask: Q` asks once), plus
/// `please fail` (exit 1: a rejected result) and `please sleep` (30 s: something to cancel or
/// to let expire).
const PROFILES: &str = r#"
[profiles.mixed]
description = "echo, or fail, or sleep, as the instructions say"
command = ["sh", "-c", '''
prompt=$1
case "$prompt" in *"please fail"*) echo "failing as asked" >&2; exit 1;; esac
case "$prompt" in *"please sleep"*) sleep 30;; esac
marker="$2/.asked"
question=$(printf '%s\n' "$prompt" | tr -d '\r' | sed -n 's/^[[:space:]]*please ask:[[:space:]]*//p' | head -n 1)
if [ -n "$question" ] && [ ! -e "$marker" ]; then
  : > "$marker"
  printf 'HELP: %s\n' "$question"
else
  printf '%s\n' "$prompt"
fi
''', "mixed", "{prompt}", "{workdir}"]
"#;

// ---------------------------------------------------------------------------------------------
// One worker mailbox user at a time per server

fn server_lock(server: &Server) -> &'static tokio::sync::Mutex<()> {
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

/// Runs `case` on every server, the servers in parallel, one case per server at a time.
async fn on_every_server<F, Fut>(case: F)
where
    F: Fn(Server) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    transport::init_crypto();
    let handles: Vec<(String, JoinHandle<()>)> = support::servers()
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

fn pushes(server: &Server) -> bool {
    !server.push.is_empty()
}

/// Without push the pipelines poll quickly; with push the safety poll stays slow, so latency
/// measures push.
fn poll(server: &Server) -> &'static str {
    if pushes(server) { "30s" } else { "250ms" }
}

// ---------------------------------------------------------------------------------------------
// The worker daemon, in-process

/// A push hint and when it reached the daemon (wall clock).
type TimedHint = (DateTime<Utc>, Hint);

struct Worker {
    label: String,
    handle: Option<JoinHandle<Result<(), DaemonError>>>,
    stop: Option<oneshot::Sender<()>>,
    events: Arc<Mutex<Vec<Event>>>,
    /// When each push hint reached the daemon (wall clock).
    hints: Arc<Mutex<Vec<TimedHint>>>,
}

impl Worker {
    async fn start(server: &Server, dir: &Path, agent: &str) -> Worker {
        let label = format!("{} worker [{agent}]", server.label());
        let text = format!(
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
concurrency = 4
cancel-grace = "1s"
shutdown-grace = "2s"
work-dir = "{dir}/work"

[trust]
require-authentication = false
{PROFILES}
"#,
            dir = dir.display(),
            domain = server.domain,
            password = server.password,
            host = server.smtp_host,
            port = server.submission_port,
            session = server.jmap_session_url,
            poll = poll(server),
        );
        let config = Config::from_toml_str_with_env(&text, Mode::Strict, &Env::with_home(dir))
            .unwrap_or_else(|e| panic!("{label}: worker config: {e}\n{text}"));
        let profile = taskmail::profile::agent(agent, &config, &Env::with_home(dir))
            .unwrap_or_else(|e| panic!("{label}: profile: {e:?}"));
        let runner = Runner::new(profile, RunnerSettings::from_worker(config.worker()));
        let account = config.account("worker").unwrap().clone();
        let mut deps = Deps::connect(&account, Arc::new(runner))
            .await
            .unwrap_or_else(|e| panic!("{label}: connect: {e:?}"));
        let hints = Arc::new(Mutex::new(Vec::new()));
        let (forward, hint_rx) = mpsc::channel(16);
        let mut upstream = std::mem::replace(&mut deps.hints, hint_rx);
        let log = Arc::clone(&hints);
        deps.background.push(Box::pin(async move {
            while let Some(hint) = upstream.recv().await {
                log.lock().unwrap().push((taskmail::clock::now(), hint));
                if forward.send(hint).await.is_err() {
                    return;
                }
            }
        }));
        let (events_tx, mut events_rx) = broadcast::channel(4096);
        deps.events = Some(events_tx);
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&events);
        tokio::spawn(async move {
            loop {
                match events_rx.recv().await {
                    Ok(event) => sink.lock().unwrap().push(event),
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        let (stop, stopped) = oneshot::channel::<()>();
        let handle = tokio::spawn(async move {
            daemon::run(&config, deps, async {
                let _ = stopped.await;
            })
            .await
        });
        let worker = Worker {
            label,
            handle: Some(handle),
            stop: Some(stop),
            events,
            hints,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !worker
            .events
            .lock()
            .unwrap()
            .iter()
            .any(|e| matches!(e.kind, EventKind::Ready { .. }))
        {
            assert!(Instant::now() < deadline, "{}: not ready", worker.label);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        worker
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(handle) = self.handle.take() {
            tokio::time::timeout(Duration::from_secs(30), handle)
                .await
                .expect("the worker stops")
                .unwrap()
                .unwrap();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The dispatcher: the binary in a temp HOME

/// A HOME with `$HOME/.config/taskmail/config.toml` for `user@` of `server`.
struct Home {
    dir: tempfile::TempDir,
    label: String,
    domain: String,
}

impl Home {
    fn new(server: &Server, user: &str) -> Home {
        Home::with(server, user, &server.password, server.submission_port, None)
    }

    /// A HOME whose config has this password, submission port and JMAP session URL.
    fn with(server: &Server, user: &str, password: &str, port: u16, session: Option<&str>) -> Home {
        let dir = tempfile::tempdir().unwrap();
        let config_dir = dir.path().join(".config/taskmail");
        std::fs::create_dir_all(&config_dir).unwrap();
        let text = format!(
            r#"
[accounts.{user}]
email = "{user}@{domain}"
password = {{ raw = "{password}" }}
smtp = {{ host = "{host}", port = {port}, tls = "plaintext", allow-plaintext = true, pool-size = 2, timeout = "15s" }}
jmap = {{ session-url = "{session}", poll-interval = "{poll}" }}

[dispatcher]
account = "{user}"
default-timeout = "2m"

[worker]
account = "{user}"
agent = "echo"
allowed-senders = ["dispatcher@{domain}"]

[trust]
require-authentication = false
"#,
            domain = server.domain,
            host = server.smtp_host,
            session = session.unwrap_or(&server.jmap_session_url),
            poll = poll(server),
        );
        std::fs::write(config_dir.join("config.toml"), text).unwrap();
        Home {
            dir,
            label: format!("{} as {user}", server.label()),
            domain: server.domain.clone(),
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_taskmail"));
        command
            .args(args)
            .env("HOME", self.path())
            .env("XDG_CONFIG_HOME", self.path().join(".config"))
            .env_remove("XDG_STATE_HOME")
            .env_remove("STATE_DIRECTORY")
            .env_remove("TASKMAIL_CONFIG")
            .env("TASKMAIL_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        command
    }

    /// Runs a verb to its end: exit code, stdout, stderr.
    async fn run(&self, args: &[&str]) -> (Option<i32>, String, String) {
        let output = tokio::time::timeout(CASE_TIMEOUT, self.command(args).output())
            .await
            .unwrap_or_else(|_| panic!("{}: `taskmail {}` hangs", self.label, args.join(" ")))
            .unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }

    /// Runs a `--json` verb that prints one object.
    async fn json(&self, args: &[&str]) -> (Option<i32>, Value) {
        let (code, out, err) = self.run(args).await;
        let value = serde_json::from_str(out.trim()).unwrap_or_else(|e| {
            panic!(
                "{}: `taskmail {}` printed no JSON object ({e}):\n{out}\nstderr:\n{err}",
                self.label,
                args.join(" ")
            )
        });
        (code, value)
    }

    /// Starts `taskmail dispatch --wait --json ...`.
    fn dispatch(&self, title: &str, body: &str, extra: &[&str]) -> Waiter {
        let to = format!("worker@{}", self.domain);
        let mut args = vec![
            "dispatch", "--to", &to, "--title", title, "--body", body, "--wait", "--json",
        ];
        args.extend_from_slice(extra);
        Waiter::start(&self.label, self.command(&args))
    }
}

/// A running `dispatch --wait --json`.
struct Waiter {
    label: String,
    child: tokio::process::Child,
    events: Arc<Mutex<Vec<Value>>>,
    reader: JoinHandle<()>,
    started: Instant,
}

impl Waiter {
    fn start(label: &str, mut command: tokio::process::Command) -> Waiter {
        let mut child = command.spawn().unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&events);
        let label = label.to_owned();
        let who = label.clone();
        let reader = tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let value: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("{who}: not a JSON line ({e}): {line:?}"));
                sink.lock().unwrap().push(value);
            }
        });
        Waiter {
            label,
            child,
            events,
            reader,
            started: Instant::now(),
        }
    }

    /// Waits for the first event called `name`.
    async fn event(&self, name: &str) -> Value {
        let deadline = Instant::now() + CASE_TIMEOUT;
        loop {
            if let Some(found) = self
                .events
                .lock()
                .unwrap()
                .iter()
                .find(|e| e["event"] == name)
            {
                return found.clone();
            }
            assert!(
                Instant::now() < deadline && !self.reader.is_finished(),
                "{}: no '{name}' event; got {:#?}",
                self.label,
                self.events.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits for the process: exit code, every event, stderr, how long it ran.
    async fn finish(mut self) -> (Option<i32>, Vec<Value>, String, Duration) {
        let status = tokio::time::timeout(CASE_TIMEOUT, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("{}: dispatch --wait does not end", self.label))
            .unwrap();
        let elapsed = self.started.elapsed();
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut self.reader).await;
        let mut err = String::new();
        if let Some(mut stderr) = self.child.stderr.take() {
            let _ = stderr.read_to_string(&mut err).await;
        }
        let events = self.events.lock().unwrap().clone();
        (status.code(), events, err, elapsed)
    }
}

fn names(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["event"].as_str().unwrap_or_default().to_owned())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The cases

/// One worker daemon (`mixed`), one dispatcher HOME, five `dispatch --wait` at once: a result
/// (0), a rejection (3), an expiry (4), a help request answered by `taskmail answer` from
/// another process while the waiter waits (0), a cancel by `taskmail cancel` during a slow run
/// (4); then `tasks --json` and `task show --json` tell the same story.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dispatch_wait_outcomes_answer_cancel_and_the_store() {
    on_every_server(|server| async move {
        let dir = tempfile::tempdir().unwrap();
        let worker = Worker::start(&server, dir.path(), "mixed").await;
        let home = Home::new(&server, "dispatcher");
        let token = support::unique_token();
        let ((basic, basic_id), (fail_id, _), (expire_id, _), help_id, cancel_id) = tokio::join!(
            case_result(&home, &token),
            case_rejected(&home, &token),
            case_expired(&home, &token),
            case_help(&home, &token),
            case_cancel(&home, &token),
        );
        assert!(basic.contains(&token), "{}: {basic}", home.label);

        // The store tells the same story.
        let (code, list) = home
            .json(&["tasks", "--json", "--role", "dispatcher", "--limit", "100"])
            .await;
        assert_eq!(code, Some(0), "{}: {list}", home.label);
        let state_of = |id: &str| {
            list["tasks"]
                .as_array()
                .unwrap()
                .iter()
                .find(|t| t["taskId"] == id)
                .map(|t| t["state"].as_str().unwrap().to_owned())
                .unwrap_or_else(|| panic!("{}: task {id} not listed: {list}", home.label))
        };
        assert_eq!(state_of(&basic_id), "completed");
        assert_eq!(state_of(&fail_id), "rejected");
        assert_eq!(state_of(&expire_id), "expired");
        assert_eq!(state_of(&help_id), "completed");
        assert_eq!(state_of(&cancel_id), "cancelled");
        let (code, table, _) = home.run(&["tasks", "--state", "open"]).await;
        assert_eq!(code, Some(0));
        assert!(table.starts_with("ID"), "{table}");

        let (code, shown) = home.json(&["task", "show", &help_id, "--json"]).await;
        assert_eq!(code, Some(0), "{shown}");
        let thread: Vec<(String, String)> = shown["thread"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["intent"].as_str().unwrap_or_default().to_owned(),
                    m["direction"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect();
        for expected in [
            ("task.dispatch", "out"),
            ("task.ack", "in"),
            ("task.help_needed", "in"),
            ("task.result", "in"),
        ] {
            assert!(
                thread
                    .iter()
                    .any(|(i, d)| i == expected.0 && d == expected.1),
                "{}: {expected:?} in {thread:?}",
                home.label
            );
        }
        assert_eq!(
            thread
                .iter()
                .filter(|(i, d)| i == "task.dispatch" && d == "out")
                .count(),
            2,
            "the dispatch and the answer: {thread:?}"
        );
        let help = shown["thread"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["intent"] == "task.help_needed")
            .unwrap();
        assert_eq!(help["question"], format!("Which colour for {token}?"));
        assert_eq!(shown["result"]["status"], "completed");
        assert!(
            shown["result"]["output"]
                .as_str()
                .unwrap()
                .contains(&format!("Blue for {token}"))
        );
        let (code, missing) = home.json(&["task", "show", "no-such-task", "--json"]).await;
        assert_eq!(code, Some(1));
        assert_eq!(missing["event"], "error");
        eprintln!(
            "{}: dispatch cases done; worker events {}",
            home.label,
            worker.events.lock().unwrap().len()
        );
        worker.stop().await;
    })
    .await;
}

async fn case_result(home: &Home, token: &str) -> (String, String) {
    let body = format!("Please echo {token} back.");
    let waiter = home.dispatch(&format!("Result {token}"), &body, &[]);
    let (code, events, err, _) = waiter.finish().await;
    assert_eq!(code, Some(0), "{}: {events:#?}\n{err}", home.label);
    let names = names(&events);
    assert_eq!(names.first().map(String::as_str), Some("dispatched"));
    assert!(names.contains(&"acked".to_owned()), "{names:?}");
    assert_eq!(
        names.last().map(String::as_str),
        Some("result"),
        "{names:?}"
    );
    let result = events.last().unwrap();
    assert_eq!(result["status"], "completed");
    assert_eq!(result["from"], "worker@example.test");
    let dispatched = &events[0];
    assert!(
        dispatched["messageId"]
            .as_str()
            .unwrap()
            .ends_with("@example.test")
    );
    let output = result["output"].as_str().unwrap().to_owned();
    assert!(output.contains(&body), "{}: {output}", home.label);
    (output, dispatched["taskId"].as_str().unwrap().to_owned())
}

async fn case_rejected(home: &Home, token: &str) -> (String, ()) {
    let waiter = home.dispatch(&format!("Fail {token}"), "please fail", &[]);
    let (code, events, err, _) = waiter.finish().await;
    assert_eq!(code, Some(3), "{}: {events:#?}\n{err}", home.label);
    let result = events.iter().find(|e| e["event"] == "result").unwrap();
    assert_eq!(result["status"], "rejected");
    (events[0]["taskId"].as_str().unwrap().to_owned(), ())
}

async fn case_expired(home: &Home, token: &str) -> (String, ()) {
    let waiter = home.dispatch(
        &format!("Expire {token}"),
        "please sleep",
        &["--expires-in", "4s"],
    );
    let (code, events, err, elapsed) = waiter.finish().await;
    assert_eq!(code, Some(4), "{}: {events:#?}\n{err}", home.label);
    let expired = events.iter().find(|e| e["event"] == "expired").unwrap();
    assert_eq!(expired["by"], "dispatcher");
    assert!(elapsed >= Duration::from_secs(3), "{elapsed:?}");
    (events[0]["taskId"].as_str().unwrap().to_owned(), ())
}

async fn case_help(home: &Home, token: &str) -> String {
    let waiter = home.dispatch(
        &format!("Help {token}"),
        &format!("Paint the shed.\nplease ask: Which colour for {token}?"),
        &[],
    );
    let help = waiter.event("help").await;
    assert_eq!(help["question"], format!("Which colour for {token}?"));
    let id = help["taskId"].as_str().unwrap().to_owned();
    assert!(
        help["answerWith"]
            .as_str()
            .unwrap()
            .contains("taskmail answer")
    );
    // Another process answers while the waiter waits (by a unique prefix of the id).
    let (code, answered) = home
        .json(&[
            "answer",
            &id[..13],
            "--text",
            &format!("Blue for {token}"),
            "--json",
        ])
        .await;
    assert_eq!(code, Some(0), "{}: {answered}", home.label);
    assert_eq!(answered["status"], "sent");
    assert_eq!(answered["taskId"], id.as_str());
    // Answering twice is refused: the task is no longer waiting.
    let (code, again) = home
        .json(&["answer", &id, "--text", "again", "--json"])
        .await;
    assert_eq!(code, Some(1), "{again}");
    assert_eq!(again["event"], "error");
    let (code, events, err, _) = waiter.finish().await;
    assert_eq!(code, Some(0), "{}: {events:#?}\n{err}", home.label);
    let names = names(&events);
    let at = |n: &str| names.iter().position(|x| x == n).unwrap_or(usize::MAX);
    assert!(at("help") < at("answered"), "{names:?}");
    assert!(at("answered") < at("result"), "{names:?}");
    let result = events.last().unwrap();
    assert_eq!(result["event"], "result");
    assert!(
        result["output"]
            .as_str()
            .unwrap()
            .contains(&format!("Blue for {token}")),
        "{result}"
    );
    id
}

async fn case_cancel(home: &Home, token: &str) -> String {
    let waiter = home.dispatch(&format!("Cancel {token}"), "please sleep", &[]);
    let acked = waiter.event("acked").await;
    let id = acked["taskId"].as_str().unwrap().to_owned();
    let (code, cancelled) = home
        .json(&["cancel", &id, "--reason", "changed my mind", "--json"])
        .await;
    assert_eq!(code, Some(0), "{}: {cancelled}", home.label);
    assert_eq!(cancelled["status"], "sent");
    let (code, events, err, elapsed) = waiter.finish().await;
    assert_eq!(code, Some(4), "{}: {events:#?}\n{err}", home.label);
    let event = events.iter().find(|e| e["event"] == "cancelled").unwrap();
    assert_eq!(event["by"], "dispatcher");
    assert!(
        elapsed < Duration::from_secs(30),
        "ended by the cancel: {elapsed:?}"
    );
    id
}

/// No worker daemon serves the mailbox: a person at the worker address replies to the
/// dispatch by mail (a `reply` event, no state change), and `--timeout 5s` ends with 75 and a
/// `timeout` event; the task stays open in the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dispatch_wait_surfaces_a_human_reply_and_times_out_without_a_worker() {
    on_every_server(|server| async move {
        let home = Home::new(&server, "dispatcher");
        let token = support::unique_token();
        let waiter = home.dispatch(&format!("Nobody {token}"), "anyone?", &["--timeout", "5s"]);
        let dispatched = waiter.event("dispatched").await;
        let dispatch_id = dispatched["messageId"].as_str().unwrap().to_owned();
        let person = server.account("worker");
        let reply_id = format!("{token}-reply@{}", server.domain);
        let raw = support::mail::message(
            &person.email,
            &format!("dispatcher@{}", server.domain),
            &format!("Re: [AAMP Task] Nobody {token}"),
            &reply_id,
            &[
                ("In-Reply-To", &format!("<{dispatch_id}>")),
                ("References", &format!("<{dispatch_id}>")),
            ],
            &format!("I am on it, {token}.\n\nOn Monday the dispatcher wrote:\n> anyone?"),
        );
        use lettre::AsyncTransport as _;
        server
            .submission(&person)
            .send_raw(
                &support::mail::envelope(
                    &person.email,
                    &[format!("dispatcher@{}", server.domain).as_str()],
                ),
                &raw,
            )
            .await
            .unwrap();
        let (code, events, err, elapsed) = waiter.finish().await;
        assert_eq!(code, Some(75), "{}: {events:#?}\n{err}", home.label);
        assert_eq!(
            names(&events),
            ["dispatched", "reply", "timeout"],
            "{}",
            home.label
        );
        let reply = &events[1];
        assert_eq!(reply["from"], person.email.as_str());
        assert_eq!(reply["text"], format!("I am on it, {token}."));
        assert_eq!(reply["messageId"], reply_id.as_str());
        assert!(elapsed >= Duration::from_secs(5) && elapsed < Duration::from_secs(30));
        let id = events[0]["taskId"].as_str().unwrap();
        let (_, shown) = home.json(&["task", "show", id, "--json"]).await;
        assert_eq!(shown["state"], "dispatched");
        // Usage errors are JSON objects too, with exit 2.
        let (code, error) = home
            .json(&[
                "dispatch",
                "--to",
                "not-an-address",
                "--title",
                "x",
                "--json",
            ])
            .await;
        assert_eq!(code, Some(2));
        assert_eq!(error["kind"], "usage");
    })
    .await;
}

/// `taskmail run` serves the dispatcher account from the same state dir (it holds the
/// account's pipeline lock): `dispatch --wait` does not deadlock on the lock, says who serves
/// the account, lets the daemon send the dispatch and route the replies, and follows the shared
/// store to the result; `doctor` names the daemon and its push status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dispatch_wait_follows_a_running_taskmail_run() {
    on_every_server(|server| async move {
        let dir = tempfile::tempdir().unwrap();
        let worker = Worker::start(&server, dir.path(), "echo").await;
        let home = Home::new(&server, "dispatcher");
        let mut run = home.command(&["run", "--json"]).spawn().unwrap();
        let mut lines = BufReader::new(run.stdout.take().unwrap()).lines();
        let ready = tokio::time::timeout(CASE_TIMEOUT, lines.next_line())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(ready.contains("\"ready\""), "{ready}");
        let token = support::unique_token();
        let waiter = home.dispatch(&format!("Via run {token}"), &format!("Echo {token}"), &[]);
        let (code, events, err, _) = waiter.finish().await;
        assert_eq!(code, Some(0), "{}: {events:#?}\n{err}", home.label);
        let note = events.iter().find(|e| e["event"] == "note").unwrap();
        assert!(
            note["message"]
                .as_str()
                .unwrap()
                .contains("taskmail run (pid"),
            "{note}"
        );
        let names = names(&events);
        for expected in ["dispatched", "sent", "acked", "result"] {
            assert!(names.contains(&expected.to_owned()), "{names:?}");
        }
        assert_eq!(
            events[1]["status"], "queued",
            "the daemon sends it: {events:#?}"
        );
        assert!(
            events.last().unwrap()["output"]
                .as_str()
                .unwrap()
                .contains(&token)
        );
        let (code, report) = home.json(&["doctor", "--json"]).await;
        assert_eq!(code, Some(0), "{report:#}");
        let daemon = report["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["check"] == "daemon")
            .unwrap();
        assert!(
            daemon["message"]
                .as_str()
                .unwrap()
                .contains("served by taskmail run"),
            "{daemon}"
        );
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(run.id().unwrap()).unwrap()),
            nix::sys::signal::Signal::SIGTERM,
        );
        let status = tokio::time::timeout(Duration::from_secs(30), run.wait())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(status.code(), Some(0));
        worker.stop().await;
    })
    .await;
}

/// `taskmail listen --json` as worker@ prints the delivered dispatch, classified, and acts on
/// none of it: no ack reaches the dispatcher, no keyword is set, no store is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_prints_a_dispatch_and_acts_on_none() {
    on_every_server(|server| async move {
        let listener = Home::new(&server, "worker");
        let dispatcher = Home::new(&server, "dispatcher");
        let token = support::unique_token();
        let mut child = listener
            .command(&["listen", "--json"])
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut next = async || -> Value {
            let line = tokio::time::timeout(CASE_TIMEOUT, lines.next_line())
                .await
                .expect("a listen line in time")
                .unwrap()
                .expect("listen keeps running");
            serde_json::from_str(&line).unwrap()
        };
        let ready = next().await;
        assert_eq!(ready["event"], "ready", "{ready}");
        let (code, sent) = dispatcher
            .json(&[
                "dispatch",
                "--to",
                "worker@example.test",
                "--title",
                &format!("Listen {token}"),
                "--body",
                "Only look at me.",
                "--json",
            ])
            .await;
        assert_eq!(code, Some(0), "{sent}");
        assert_eq!(sent["status"], "sent");
        let id = sent["taskId"].as_str().unwrap().to_owned();
        let mail = loop {
            let event = next().await;
            if event["taskId"] == id.as_str() {
                break event;
            }
        };
        assert_eq!(mail["event"], "mail");
        assert_eq!(mail["kind"], "aamp");
        assert_eq!(mail["intent"], "task.dispatch");
        assert_eq!(mail["title"], format!("Listen {token}"));
        assert_eq!(mail["from"], "dispatcher@example.test");
        assert_eq!(mail["messageId"], sent["messageId"]);
        // Nothing acts: no ack arrives at the dispatcher within a few seconds ...
        let account = |user: &str| {
            let text = format!(
                "[accounts.{user}]\nemail = \"{user}@{}\"\npassword = {{ raw = \"{}\" }}\nsmtp = {{ host = \"127.0.0.1\", port = 1, tls = \"plaintext\", allow-plaintext = true }}\njmap = {{ session-url = \"{}\" }}\n",
                server.domain, server.password, server.jmap_session_url
            );
            Config::from_toml_str_with_env(&text, Mode::Strict, &Env::with_home("/nonexistent"))
                .unwrap()
                .account(user)
                .unwrap()
                .clone()
        };
        let boss = JmapClient::from_account(&account("dispatcher")).await.unwrap();
        let since = taskmail::clock::now() - chrono::TimeDelta::seconds(120);
        tokio::time::sleep(Duration::from_secs(3)).await;
        let recent = boss.query_inbox_since(since, 1000).await.unwrap();
        let acks = boss
            .get_headers(&recent.ids)
            .await
            .unwrap()
            .into_iter()
            .filter(|f| match classify(&f.inbound) {
                Classified::Aamp(p) => p.message.task_id.as_str() == id,
                _ => false,
            })
            .count();
        assert_eq!(acks, 0, "{}: nothing answers a listened-to dispatch", server.label());
        // ... the dispatch carries no keyword, and listen wrote no state.
        let worker = JmapClient::from_account(&account("worker")).await.unwrap();
        let recent = worker.query_inbox_since(since, 1000).await.unwrap();
        let dispatch = worker
            .get_headers(&recent.ids)
            .await
            .unwrap()
            .into_iter()
            .find(|f| f.inbound.message_id.as_deref() == sent["messageId"].as_str())
            .expect("the dispatch is in the worker's Inbox");
        assert!(
            !dispatch.keywords.iter().any(|k| k.starts_with("$taskmail")),
            "{:?}",
            dispatch.keywords
        );
        assert!(
            !listener.path().join(".local/state/taskmail").exists(),
            "listen wrote no state"
        );
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(child.id().unwrap()).unwrap()),
            nix::sys::signal::Signal::SIGTERM,
        );
        let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(status.code(), Some(0));
    })
    .await;
}

/// `taskmail doctor --json` passes against the server, and fails with the right hint and exit
/// code for a wrong password (77) and a closed port (69).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_passes_and_names_the_fix() {
    transport::init_crypto();
    let mut handles = Vec::new();
    for server in support::servers() {
        handles.push(tokio::spawn(async move {
            let label = server.label();
            let home = Home::new(&server, "dispatcher");
            let (code, report) = home.json(&["doctor", "--json"]).await;
            assert_eq!(code, Some(0), "{label}: {report:#}");
            assert_eq!(report["ok"], true);
            let checks: Vec<&str> = report["checks"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["check"].as_str().unwrap())
                .collect();
            for check in [
                "config",
                "state-dir",
                "smtp.connect",
                "smtp.auth",
                "jmap.session",
                "jmap.inbox",
                "push",
                "daemon",
                "agent",
            ] {
                assert!(checks.contains(&check), "{label}: {check} in {checks:?}");
            }
            let (code, human, _) = home.run(&["doctor"]).await;
            assert_eq!(code, Some(0), "{label}: {human}");
            eprintln!("DOCTOR {label}\n{human}");

            let wrong = Home::with(
                &server,
                "dispatcher",
                "wrong-password",
                server.submission_port,
                None,
            );
            let (code, report) = wrong.json(&["doctor", "--json"]).await;
            assert_eq!(code, Some(77), "{label}: {report:#}");
            let failed: Vec<&Value> = report["checks"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|c| c["status"] == "fail")
                .collect();
            assert!(!failed.is_empty());
            assert!(
                failed
                    .iter()
                    .any(|c| c["hint"].as_str().unwrap().contains("password")),
                "{label}: {failed:#?}"
            );
            assert!(
                !report.to_string().contains("wrong-password"),
                "never print the password"
            );

            let closed_port = support_closed_port();
            let session = format!("http://127.0.0.1:{closed_port}/.well-known/jmap");
            let closed = Home::with(
                &server,
                "dispatcher",
                &server.password,
                closed_port,
                Some(&session),
            );
            let (code, report) = closed.json(&["doctor", "--json"]).await;
            assert_eq!(code, Some(69), "{label}: {report:#}");
            let smtp = report["checks"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["check"] == "smtp.connect")
                .unwrap();
            assert_eq!(smtp["status"], "fail");
            assert!(
                smtp["hint"]
                    .as_str()
                    .unwrap()
                    .contains("is the mail server running")
            );
        }));
    }
    for handle in handles {
        handle.await.unwrap();
    }
}

/// A port nothing listens on: bound, then closed.
fn support_closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    port
}

/// Dispatch-to-result latency of `taskmail dispatch --wait` against an in-process echo worker,
/// next to the submission-to-push floor. Prints the figures; asserts only that every round
/// completed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dispatch_wait_latency() {
    let rounds: usize = std::env::var("TASKMAIL_DISPATCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    on_every_server(move |server| async move {
        if !pushes(&server) {
            eprintln!("{}: no push; latency is measured on push servers only", server.label());
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let worker = Worker::start(&server, dir.path(), "echo").await;
        let home = Home::new(&server, "dispatcher");
        let token = support::unique_token();
        let mut process = Vec::with_capacity(rounds);
        let mut in_process = Vec::with_capacity(rounds);
        let mut floor = Vec::with_capacity(rounds);
        for n in 0..rounds {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let waiter = home.dispatch(&format!("Latency {token} {n}"), "Quick.", &[]);
            let (code, events, err, elapsed) = waiter.finish().await;
            assert_eq!(code, Some(0), "{}: round {n}: {events:#?}\n{err}", home.label);
            process.push(elapsed);
            let at = |name: &str| -> DateTime<Utc> {
                let event = events.iter().find(|e| e["event"] == name).unwrap();
                serde_json::from_value(event["at"].clone()).unwrap()
            };
            let (sent, result) = (at("dispatched"), at("result"));
            in_process.push((result - sent).to_std().unwrap_or_default());
            if let Some((hinted, _)) = worker
                .hints
                .lock()
                .unwrap()
                .iter()
                .find(|(at, _)| *at >= sent - chrono::TimeDelta::milliseconds(50))
            {
                floor.push((*hinted - sent).to_std().unwrap_or_default());
            }
        }
        let ms = |samples: &mut Vec<Duration>, p: usize| percentile(samples, p);
        eprintln!(
            "LATENCY {} ({} build, push throttle {}, echo worker in-process, {rounds} sequential `dispatch --wait --json`): \
             process start->exit p50 {} ms p99 {} ms max {} ms; dispatch accepted->result seen p50 {} ms p99 {} ms; \
             floor: submission accepted->worker push hint p50 {} ms p99 {} ms ({} samples)",
            server.label(),
            server.vars.get("BUILD").map_or("?", String::as_str),
            server.vars.get("PUSH_THROTTLE").map_or("?", String::as_str),
            ms(&mut process, 50),
            ms(&mut process, 99),
            ms(&mut process, 100),
            ms(&mut in_process, 50),
            ms(&mut in_process, 99),
            ms(&mut floor, 50),
            ms(&mut floor, 99),
            floor.len(),
        );
        worker.stop().await;
    })
    .await;
}

fn percentile(samples: &mut [Duration], p: usize) -> u128 {
    if samples.is_empty() {
        return 0;
    }
    samples.sort();
    let rank = (samples.len() * p).div_ceil(100).clamp(1, samples.len());
    samples[rank - 1].as_millis()
}
