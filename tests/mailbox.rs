//! The agent's mailbox (ASMTP) end to end against the real servers of the harness (`bash
//! tests/mailserver/mailserver.sh up all`): Stalwart (push) and Cyrus+Postfix (polling).
//!
//! Three local agents in one config and one state dir, each a real mailbox: `@t.dispatcher`
//! (dispatcher@), `@t.worker2` (worker2@) and `@t.outsider` (outsider@), the first two admitting
//! each other by `worker.allowed-senders`, the outsider admitted by nobody. Every case uses a
//! [`support::unique_token`] in subjects and filters on it: the accounts are shared and Cyrus
//! mail persists across runs.
//!
//! Run under the shared lock: `flock /tmp/taskmail-e2e.lock env TASKMAIL_REQUIRE_SERVERS=1
//! cargo test --test mailbox`. `TASKMAIL_MAILBOX_PAGING` sets the number of envelopes of the
//! paging case (default 30); `TASKMAIL_MAILBOX_TRIAGE=1` runs the 84-envelope context-economy
//! measurement (`-- --nocapture` prints the figures).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;
use taskmail::config::{Config, Env, Mode};
use taskmail::mailbox::{ListQuery, Mailbox, MailboxError, SendRequest};
use taskmail::wire::asmtp::{ContentPart, Cursor, EnvelopeId, PushFrame, TypeHint};

use support::Server;
use support::daemon::on_every_server;

const A: &str = "a";
const B: &str = "b";
const O: &str = "o";
const WAIT: Duration = Duration::from_secs(60);

/// The test config: three agents on `server`, state under `dir`.
fn config_text(server: &Server, dir: &Path) -> String {
    let account = |name: &str, user: &str, default: bool| {
        format!(
            "{}default = {default}\n",
            support::daemon::handle_account_toml(server, name, user, &format!("@t.{user}"))
        )
    };
    format!(
        r#"
state-dir = "{dir}/state"
{a}{b}{o}
[worker]
account = "b"
allowed-senders = ["dispatcher@{domain}", "worker2@{domain}"]

[trust]
require-authentication = false

[asmtp]
backfill = "2m"
"#,
        dir = dir.display(),
        domain = server.domain,
        a = account(A, "dispatcher", true),
        b = account(B, "worker2", false),
        o = account(O, "outsider", false),
    )
}

fn config(server: &Server, dir: &Path) -> Config {
    let text = config_text(server, dir);
    Config::from_toml_str_with_env(&text, Mode::Strict, &Env::with_home(dir))
        .unwrap_or_else(|e| panic!("{}: test config: {e}\n{text}", server.label()))
}

fn text(subject: &str, body: &str) -> SendRequest {
    SendRequest {
        subject: Some(subject.to_owned()),
        content_parts: vec![ContentPart::text(body)],
        ..SendRequest::default()
    }
}

fn to(mut req: SendRequest, handle: &str) -> SendRequest {
    req.to = vec![handle.to_owned()];
    req
}

/// Syncs `mailbox` until the frame with `id` is indexed; returns it.
async fn wait_frame(label: &str, mailbox: &Mailbox, id: &EnvelopeId) -> PushFrame {
    let deadline = Instant::now() + WAIT;
    loop {
        mailbox.sync().await.unwrap();
        let found = mailbox.with_store(|s| s.mailbox_get(mailbox.account(), id).unwrap());
        if let Some(row) = found {
            return row.frame;
        }
        assert!(
            Instant::now() < deadline,
            "{label}: envelope {id} not in {}'s mailbox after {WAIT:?}",
            mailbox.handle()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every indexed frame whose subject contains `token`, paged `limit` at a time from the start.
fn all_with(mailbox: &Mailbox, token: &str) -> Vec<PushFrame> {
    let mut out = Vec::new();
    let mut after: Option<Cursor> = None;
    loop {
        let page = mailbox
            .list(&ListQuery {
                after: after.clone(),
                limit: 1000,
                ..ListQuery::default()
            })
            .unwrap();
        out.extend(
            page.frames
                .iter()
                .filter(|f| f.frame.subject.as_deref().unwrap_or("").contains(token))
                .map(|f| f.frame.clone()),
        );
        match page.next_cursor {
            Some(c) => after = Some(c),
            None => return out,
        }
    }
}

/// send -> inbox -> read -> reply between two agents; idempotency answers (replay, retry
/// mismatch, id collision); an unreachable recipient and an oversized body refused before
/// anything is sent; an untrusted sender's envelope never indexed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_idempotency_reachability_and_untrusted_sender() {
    on_every_server(|server| async move {
        let started = Instant::now();
        let label = server.label();
        let dir = tempfile::tempdir().unwrap();
        let config = config(&server, dir.path());
        let a = Mailbox::open(&config, A).await.unwrap();
        let b = Mailbox::open(&config, B).await.unwrap();
        let o = Mailbox::open(&config, O).await.unwrap();
        assert_eq!(a.handle().to_string(), "@t.dispatcher");
        // The first sync only sets the starting point (and back-fills recent mail).
        b.sync().await.unwrap();
        a.sync().await.unwrap();
        let token = support::unique_token();

        // An outsider writes first: reachable from its side (it admits worker2@), refused by b.
        let from_outsider = o
            .send(to(
                text(&format!("{token} outsider"), "let me in"),
                "@t.worker2",
            ))
            .await
            .unwrap();

        // a -> b, with a data part.
        let mut req = to(text(&format!("{token} hello"), "hello b"), "@t.worker2");
        req.content_parts.push(ContentPart::data(
            json!({"k": 1, "a": [true]}),
            Some("demo/1"),
        ));
        let receipt = a.send(req.clone()).await.unwrap();
        assert!(!receipt.replayed);
        assert_eq!(receipt.recipients.len(), 1);
        let id = receipt.id.clone();

        // The same id and body again: replayed, not sent again. Another body: mismatch.
        let mut again = req.clone();
        again.id = Some(id.clone());
        let replay = a.send(again.clone()).await.unwrap();
        assert!(replay.replayed, "{label}: {replay:?}");
        assert_eq!(replay.created_at, receipt.created_at);
        let mut other = again.clone();
        other.content_parts = vec![ContentPart::text("another body")];
        assert_eq!(
            a.send(other).await.unwrap_err(),
            MailboxError::RetryMismatch
        );

        // Unreachable (a does not admit outsider@): nothing sent, 404 for the whole send.
        let mut both = to(text(&format!("{token} nope"), "x"), "@t.worker2");
        both.cc = vec!["@t.outsider".to_owned()];
        let err = a.send(both).await.unwrap_err();
        assert!(
            matches!(err, MailboxError::Unreachable(_)),
            "{label}: {err:?}"
        );
        assert_eq!(err.http_status(), 404);

        // Over 1 MiB.
        let big = to(
            text(&format!("{token} big"), &"x".repeat(1 << 20)),
            "@t.worker2",
        );
        assert_eq!(
            a.send(big).await.unwrap_err(),
            MailboxError::PayloadTooLarge
        );

        // b receives: a frame, headers only, unread.
        let frame = wait_frame(&label, &b, &id).await;
        assert_eq!(frame.from.to_string(), "@t.dispatcher");
        assert_eq!(frame.to[0].to_string(), "@t.worker2");
        assert_eq!(frame.type_hint, TypeHint::Mixed);
        assert!(frame.size_hint > 0);
        let listed = b
            .list(&ListQuery {
                unread_only: true,
                limit: 1000,
                ..ListQuery::default()
            })
            .unwrap();
        assert!(listed.frames.iter().any(|f| f.frame.id == id && !f.seen));

        // The same id from b is another sender's id.
        let mut stolen = to(text(&format!("{token} stolen"), "mine"), "@t.dispatcher");
        stolen.id = Some(id.clone());
        assert_eq!(b.send(stolen).await.unwrap_err(), MailboxError::IdCollision);

        // read: the body, marked read here and on the server.
        let read = b.read(&id, true).await.unwrap();
        assert!(read.seen);
        assert_eq!(read.envelope.id, id);
        assert_eq!(read.envelope.content_parts, req.content_parts);
        assert_eq!(read.envelope.subject.as_deref(), req.subject.as_deref());
        let unread = b
            .list(&ListQuery {
                unread_only: true,
                limit: 1000,
                ..ListQuery::default()
            })
            .unwrap();
        assert!(!unread.frames.iter().any(|f| f.frame.id == id));
        let again = b.get_many(std::slice::from_ref(&id)).await.unwrap();
        assert!(again[0].seen, "{label}: $seen not kept on the server");

        // reply: b -> a, threaded.
        let mut reply = to(text(&format!("Re: {token} hello"), "hi a"), "@t.dispatcher");
        reply.in_reply_to = Some(id.clone());
        let replied = b.send(reply).await.unwrap();
        let back = wait_frame(&label, &a, &replied.id).await;
        assert_eq!(back.in_reply_to.as_ref(), Some(&id));
        assert_eq!(back.from.to_string(), "@t.worker2");
        let read_back = a.read(&replied.id, false).await.unwrap();
        assert_eq!(read_back.envelope.references, vec![id.clone()]);
        assert!(!read_back.seen);

        // The outsider's envelope reached b's Inbox (it was sent first) but is not indexed.
        let outsider_id = from_outsider.id.clone();
        support::eventually(&format!("{label}: outsider refused"), WAIT, || {
            let b = b.clone();
            let outsider_id = outsider_id.clone();
            async move {
                b.sync().await.unwrap();
                b.with_store(|s| {
                    let audit = s.audit_list(500, None).unwrap();
                    audit
                        .iter()
                        .any(|r| {
                            r.entry.verdict == "rejected"
                                && r.entry
                                    .message_id
                                    .as_deref()
                                    .is_some_and(|m| m.starts_with(outsider_id.as_str()))
                        })
                        .then_some(())
                })
            }
        })
        .await;
        assert!(
            b.with_store(|s| s.mailbox_get(B, &outsider_id).unwrap())
                .is_none()
        );
        assert!(
            all_with(&b, &token)
                .iter()
                .all(|f| f.from.to_string() != "@t.outsider")
        );
        println!("{label}: mailbox round trip in {:?}", started.elapsed());
    })
    .await;
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Sends `n` envelopes a -> b with subjects `{token} {tag}{i}`; returns their ids.
async fn send_many(a: &Mailbox, token: &str, tag: &str, n: usize) -> Vec<EnvelopeId> {
    let mut ids = Vec::new();
    for i in 0..n {
        let r = a
            .send(to(
                text(&format!("{token} {tag}{i}"), &format!("body {i}")),
                "@t.worker2",
            ))
            .await
            .unwrap();
        ids.push(r.id);
    }
    ids
}

/// Syncs until every id is indexed in `mailbox`.
async fn wait_all(label: &str, mailbox: &Mailbox, ids: &[EnvelopeId]) {
    let deadline = Instant::now() + WAIT;
    loop {
        mailbox.sync().await.unwrap();
        let missing = mailbox.with_store(|s| {
            ids.iter()
                .filter(|id| s.mailbox_get(mailbox.account(), id).unwrap().is_none())
                .count()
        });
        if missing == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{label}: {missing} of {} envelopes not indexed after {WAIT:?}",
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Many envelopes, pages of 4, and a reconnect in the middle (the first `Mailbox` dropped, a
/// new one opened on the same state dir, more envelopes arriving meanwhile): every envelope is
/// listed exactly once, in strictly increasing cursor order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursor_paging_has_no_gaps_or_overlaps_across_a_reconnect() {
    on_every_server(|server| async move {
        let started = Instant::now();
        let label = server.label();
        let n = env_usize("TASKMAIL_MAILBOX_PAGING", 30);
        let dir = tempfile::tempdir().unwrap();
        let config = config(&server, dir.path());
        let a = Mailbox::open(&config, A).await.unwrap();
        let b1 = Mailbox::open(&config, B).await.unwrap();
        b1.sync().await.unwrap();
        let token = support::unique_token();
        let first = send_many(&a, &token, "p", n / 2).await;
        wait_all(&label, &b1, &first).await;

        let mut listed: Vec<PushFrame> = Vec::new();
        let mut after: Option<Cursor> = None;
        let page = |mb: &Mailbox, after: &Option<Cursor>| {
            mb.list(&ListQuery {
                after: after.clone(),
                limit: 4,
                ..ListQuery::default()
            })
            .unwrap()
        };
        for _ in 0..2 {
            let p = page(&b1, &after);
            assert_eq!(p.frames.len(), 4);
            assert_eq!(p.next_cursor, Some(p.frames[3].frame.cursor()));
            after = p.next_cursor.clone();
            listed.extend(p.frames.into_iter().map(|f| f.frame));
        }
        drop(b1);

        // More envelopes while nobody is connected; a new Mailbox picks up from the cursor.
        let second = send_many(&a, &token, "q", n - n / 2).await;
        let b2 = Mailbox::open(&config, B).await.unwrap();
        wait_all(&label, &b2, &second).await;
        loop {
            let p = page(&b2, &after);
            let full = p.next_cursor.is_some();
            if let Some(last) = p.frames.last() {
                after = Some(last.frame.cursor());
            }
            listed.extend(p.frames.into_iter().map(|f| f.frame));
            if !full {
                break;
            }
        }
        for pair in listed.windows(2) {
            assert!(pair[1].cursor() > pair[0].cursor(), "{label}: cursor order");
        }
        let mine: Vec<&PushFrame> = listed
            .iter()
            .filter(|f| f.subject.as_deref().unwrap_or("").contains(&token))
            .collect();
        let unique: std::collections::BTreeSet<_> = mine.iter().map(|f| f.id.clone()).collect();
        assert_eq!(
            mine.len(),
            n,
            "{label}: listed {} of {n} (overlap or gap)",
            mine.len()
        );
        assert_eq!(unique.len(), n, "{label}: an envelope listed twice");
        let expected: std::collections::BTreeSet<_> =
            first.iter().chain(&second).cloned().collect();
        assert_eq!(unique, expected, "{label}: listed ids differ from sent ids");
        println!(
            "{label}: paged {n} envelopes across a reconnect in {:?}",
            started.elapsed()
        );
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// The CLI, black box

/// Writes the test config to `dir/config.toml`.
fn config_file(server: &Server, dir: &Path) -> std::path::PathBuf {
    let path = dir.join("config.toml");
    std::fs::write(&path, config_text(server, dir)).unwrap();
    path
}

/// Runs `taskmail -c CONFIG ARGS...`: exit code and stdout.
async fn taskmail(config: &Path, args: &[&str]) -> (i32, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_taskmail"));
    cmd.arg("-c").arg(config).args(args);
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr)
                .lines()
                .filter(|l| l.starts_with("error"))
                .collect::<Vec<_>>()
                .join("\n"),
    )
}

/// As [`taskmail`], expecting exit 0 and one JSON document.
async fn taskmail_json(config: &Path, args: &[&str]) -> serde_json::Value {
    let (code, out) = taskmail(config, args).await;
    assert_eq!(code, 0, "taskmail {args:?} exited {code}: {out}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("taskmail {args:?}: {e}: {out}"))
}

/// `inbox --json` until a frame with `id` shows; returns that frame.
async fn inbox_until(config: &Path, account: &str, id: &str) -> serde_json::Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let got = taskmail_json(config, &["inbox", "--account", account, "--json"]).await;
        if let Some(f) = got["frames"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["id"] == id)
        {
            return f.clone();
        }
        assert!(Instant::now() < deadline, "{id} not in {account}'s inbox");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Every verb with `--json`: send (and its idempotency answers and a refusal), inbox (the
/// cursor moves, `--all` lists again), read (marks read), reply (threaded, back to the sender).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_send_inbox_read_reply_json() {
    on_every_server(|server| async move {
        let started = Instant::now();
        let label = server.label();
        let dir = tempfile::tempdir().unwrap();
        let cfg = config_file(&server, dir.path());
        // The first inbox sets b's starting point.
        taskmail_json(&cfg, &["inbox", "--account", "b", "--json"]).await;
        taskmail_json(&cfg, &["inbox", "--account", "a", "--json"]).await;
        let token = support::unique_token();
        let subject = format!("{token} cli");
        let file = dir.path().join("notes.txt");
        std::fs::write(&file, "file content\n").unwrap();
        let file = file.to_str().unwrap().to_owned();
        let send_args = |id: Option<&str>, text: &str| {
            let mut v: Vec<String> = [
                "send",
                "--account",
                "a",
                "--to",
                "@t.worker2",
                "--subject",
                &subject,
                "--text",
                text,
                "--data",
                r#"{"x": 1}"#,
                "--schema",
                "demo/1",
                "--file",
                &file,
                "--json",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            if let Some(id) = id {
                v.push("--id".to_owned());
                v.push(id.to_owned());
            }
            v
        };
        let args = send_args(None, "hello from the cli");
        let receipt =
            taskmail_json(&cfg, &args.iter().map(String::as_str).collect::<Vec<_>>()).await;
        let id = receipt["id"].as_str().unwrap().to_owned();
        assert_eq!(receipt["recipients"], json!(["@t.worker2"]), "{label}");
        assert_eq!(receipt["replayed"], json!(false));
        assert!(receipt["created_at"].as_u64().unwrap() > 0);

        // The same id and body: replayed. Another body: RETRY_MISMATCH (exit 1, JSON error).
        let args = send_args(Some(&id), "hello from the cli");
        let again = taskmail_json(&cfg, &args.iter().map(String::as_str).collect::<Vec<_>>()).await;
        assert_eq!(again["replayed"], json!(true), "{label}: {again}");
        let args = send_args(Some(&id), "another body");
        let (code, out) =
            taskmail(&cfg, &args.iter().map(String::as_str).collect::<Vec<_>>()).await;
        assert_eq!(code, 1, "{label}: {out}");
        assert!(out.contains("RETRY_MISMATCH"), "{label}: {out}");
        let (code, out) = taskmail(
            &cfg,
            &[
                "send",
                "--account",
                "a",
                "--to",
                "@t.outsider",
                "--text",
                "x",
                "--json",
            ],
        )
        .await;
        assert_eq!(code, 1, "{label}: {out}");
        assert!(out.contains("RECIPIENT_NOT_FOUND"), "{label}: {out}");
        let (code, out) = taskmail(
            &cfg,
            &["send", "--account", "a", "--to", "@t.worker2", "--json"],
        )
        .await;
        assert_eq!(code, 2, "{label}: an empty envelope: {out}");

        // inbox: the frame, headers only; the cursor moves past it.
        let frame = inbox_until(&cfg, "b", &id).await;
        assert_eq!(frame["from"], "@t.dispatcher");
        assert_eq!(frame["subject"], subject.as_str());
        assert_eq!(frame["type_hint"], "mixed");
        assert_eq!(frame["seen"], false);
        for key in ["created_at", "date_ms", "size_hint", "to"] {
            assert!(
                frame.get(key).is_some(),
                "{label}: frame without {key}: {frame}"
            );
        }
        assert!(
            frame.get("content_parts").is_none(),
            "{label}: a frame carries no body"
        );
        let next = taskmail_json(&cfg, &["inbox", "--account", "b", "--json"]).await;
        assert!(
            !next["frames"]
                .as_array()
                .unwrap()
                .iter()
                .any(|f| f["id"] == id.as_str()),
            "{label}: the cursor did not move"
        );
        let all = taskmail_json(
            &cfg,
            &[
                "inbox",
                "--account",
                "b",
                "--all",
                "--limit",
                "1000",
                "--json",
            ],
        )
        .await;
        assert!(
            all["frames"]
                .as_array()
                .unwrap()
                .iter()
                .any(|f| f["id"] == id.as_str())
        );

        // read: the body; marked read.
        let read = taskmail_json(&cfg, &["read", &id, "--account", "b", "--json"]).await;
        assert_eq!(read["seen"], true);
        let parts = read["envelope"]["content_parts"].as_array().unwrap();
        assert_eq!(
            parts[0],
            json!({"type": "text", "text": "hello from the cli"})
        );
        assert_eq!(
            parts[1],
            json!({"type": "data", "data": {"x": 1}, "schema": "demo/1"})
        );
        assert_eq!(parts[2]["type"], "file");
        assert_eq!(parts[2]["name"], "notes.txt");
        let unread = taskmail_json(
            &cfg,
            &[
                "inbox",
                "--account",
                "b",
                "--all",
                "--unread",
                "--limit",
                "1000",
                "--json",
            ],
        )
        .await;
        assert!(
            !unread["frames"]
                .as_array()
                .unwrap()
                .iter()
                .any(|f| f["id"] == id.as_str())
        );

        // reply: to the sender, threaded.
        let replied = taskmail_json(
            &cfg,
            &["reply", &id, "--account", "b", "--text", "back", "--json"],
        )
        .await;
        assert_eq!(replied["recipients"], json!(["@t.dispatcher"]));
        let back = inbox_until(&cfg, "a", replied["id"].as_str().unwrap()).await;
        assert_eq!(back["in_reply_to"], id.as_str());
        assert_eq!(back["subject"], format!("Re: {subject}").as_str());
        let (code, out) = taskmail(
            &cfg,
            &[
                "read",
                "01ARZ3NDEKTSV4RRFFQ69G5FAV",
                "--account",
                "b",
                "--json",
            ],
        )
        .await;
        assert_eq!(code, 1, "{label}: {out}");
        assert!(out.contains("NOT_FOUND"), "{label}: {out}");
        println!("{label}: cli verbs in {:?}", started.elapsed());
    })
    .await;
}

/// A running `taskmail watch --json`, its stdout lines collected.
struct Watch {
    child: std::process::Child,
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Watch {
    fn start(config: &Path, account: &str) -> Watch {
        use std::io::BufRead as _;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_taskmail"))
            .arg("-c")
            .arg(config)
            .args(["watch", "--account", account, "--json"])
            .env("TASKMAIL_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = std::sync::Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                sink.lock().unwrap().push(line);
            }
        });
        Watch { child, lines }
    }

    /// The envelope ids printed so far, in order (repeats kept).
    fn ids(&self) -> Vec<String> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| v["id"].as_str().map(str::to_owned))
            .collect()
    }

    async fn wait_for(&self, label: &str, ids: &[EnvelopeId], timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.ids();
            let missing: Vec<_> = ids
                .iter()
                .filter(|id| !got.contains(&id.to_string()))
                .collect();
            if missing.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{label}: watch did not print {missing:?} within {timeout:?}; printed {got:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn stop(mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

/// Sends `n` envelopes a -> b, retrying while the server is away.
async fn send_retrying(a: &Mailbox, token: &str, tag: &str, n: usize) -> Vec<EnvelopeId> {
    let mut ids = Vec::new();
    for i in 0..n {
        let deadline = Instant::now() + Duration::from_secs(90);
        let mut req = to(
            text(&format!("{token} {tag}{i}"), &format!("body {i}")),
            "@t.worker2",
        );
        req.id = Some(EnvelopeId::parse(&taskmail::ids::ulid(taskmail::clock::now())).unwrap());
        loop {
            match a.send(req.clone()).await {
                Ok(r) => {
                    ids.push(r.id);
                    break;
                }
                Err(e) if Instant::now() < deadline => {
                    eprintln!("send {tag}{i}: {e}; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => panic!("send {tag}{i}: {e}"),
            }
        }
    }
    ids
}

fn restart(server: &Server) {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/mailserver/mailserver.sh"
    );
    let status = std::process::Command::new("bash")
        .args([script, "restart", &server.name])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(
        status.success(),
        "{}: mailserver.sh restart failed",
        server.label()
    );
}

/// `taskmail watch --json` streams live frames, keeps streaming through a server restart
/// (`mailserver.sh restart`: the server process stopped and started on the same data; Cyrus
/// with its Postfix) without losing or repeating an envelope, and a second `watch` catches up
/// from the persisted cursor only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_streams_through_a_server_restart_without_loss_or_duplicates() {
    on_every_server(|server| async move {
        let started = Instant::now();
        let label = server.label();
        let dir = tempfile::tempdir().unwrap();
        let cfg = config_file(&server, dir.path());
        let config = config(&server, dir.path());
        let a = Mailbox::open(&config, A).await.unwrap();
        // Start b's mailbox (sets its sync point), then watch it.
        taskmail_json(&cfg, &["inbox", "--account", "b", "--json"]).await;
        let token = support::unique_token();
        let watch = Watch::start(&cfg, "b");
        let before = send_retrying(&a, &token, "w", 3).await;
        watch.wait_for(&label, &before, WAIT).await;

        let t = Instant::now();
        let s = server.clone();
        tokio::task::spawn_blocking(move || restart(&s))
            .await
            .unwrap();
        let restart_time = t.elapsed();
        let after = send_retrying(&a, &token, "x", 3).await;
        watch
            .wait_for(&label, &after, Duration::from_secs(120))
            .await;
        let ids = watch.ids();
        watch.stop();
        let mine: Vec<&String> = ids
            .iter()
            .filter(|i| {
                before
                    .iter()
                    .chain(&after)
                    .any(|b| b.as_str() == i.as_str())
            })
            .collect();
        let unique: std::collections::BTreeSet<_> = ids.iter().collect();
        assert_eq!(
            unique.len(),
            ids.len(),
            "{label}: watch printed an id twice: {ids:?}"
        );
        assert_eq!(mine.len(), 6, "{label}: {ids:?}");

        // A new watch goes on from the cursor: only what came since.
        let later = send_retrying(&a, &token, "y", 2).await;
        let watch = Watch::start(&cfg, "b");
        watch.wait_for(&label, &later, WAIT).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let ids = watch.ids();
        watch.stop();
        assert!(
            !ids.iter().any(|i| before
                .iter()
                .chain(&after)
                .any(|b| b.as_str() == i.as_str())),
            "{label}: the second watch repeated earlier envelopes: {ids:?}"
        );
        println!(
            "{label}: watch across a restart ({restart_time:?}) in {:?}",
            started.elapsed()
        );
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Context economy (issue 7 item 5)

/// Deterministic filler text of about `len` bytes (words of a status report).
fn prose(seed: usize, len: usize) -> String {
    const WORDS: [&str; 16] = [
        "the",
        "build",
        "failed",
        "on",
        "stage",
        "two",
        "because",
        "a",
        "dependency",
        "moved",
        "please",
        "review",
        "attached",
        "summary",
        "before",
        "merge",
    ];
    let mut out = String::new();
    let mut i = seed;
    while out.len() < len {
        out.push_str(WORDS[i % WORDS.len()]);
        out.push(if i % 13 == 12 { '.' } else { ' ' });
        i = i.wrapping_mul(31).wrapping_add(7);
    }
    out
}

/// Push-frame sizes of three typical envelopes, and 84 unread envelopes triaged from their
/// frames (the `inbox --json` rows) versus reading every body (`read --json` each), measured on
/// Stalwart. Tokens are estimated as JSON bytes / 4, as ASMTP's size_hint does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn context_economy_frames_versus_bodies() {
    on_every_server(|server| async move {
        if server.name != "stalwart" {
            println!("{}: context figures are measured on Stalwart only", server.label());
            return;
        }
        let label = server.label();
        let dir = tempfile::tempdir().unwrap();
        let config = config(&server, dir.path());
        let a = Mailbox::open(&config, A).await.unwrap();
        let b = Mailbox::open(&config, B).await.unwrap();
        b.sync().await.unwrap();
        let token = support::unique_token();

        // Three typical envelopes.
        let short = to(text(&format!("{token} review request"), "Can you review PR 42 before Friday?"), "@t.worker2");
        let mut with_data = to(text(&format!("{token} nightly report"), "Nightly run finished; numbers attached as data."), "@t.worker2");
        with_data.content_parts.push(ContentPart::data(
            json!({"run": 1182, "passed": 412, "failed": 3, "flaky": ["auth_retry", "push_reconnect"], "duration_s": 734}),
            Some("ci-report/1"),
        ));
        let mut with_file = to(text(&format!("{token} contract draft"), "Draft v3 attached, please comment by Monday."), "@t.worker2");
        with_file.files.push(taskmail::mailbox::InlineFile {
            name: "draft-v3.txt".to_owned(),
            mime_type: "text/plain".to_owned(),
            bytes: prose(1, 20_000).into_bytes(),
        });
        let mut typical = Vec::new();
        for (name, req) in [("short text", short), ("text + data", with_data), ("text + file (20 kB inline)", with_file)] {
            let id = a.send(req).await.unwrap().id;
            typical.push((name, id));
        }
        let ids: Vec<EnvelopeId> = typical.iter().map(|(_, id)| id.clone()).collect();
        wait_all(&label, &b, &ids).await;
        println!("{label}: push frame sizes (compact JSON, tokens ~ bytes/4):");
        for (name, id) in &typical {
            let frame = b.with_store(|s| s.mailbox_get(B, id).unwrap().unwrap().frame);
            let bytes = frame.to_json().len();
            let body = b.get_many(std::slice::from_ref(id)).await.unwrap();
            let body_bytes = serde_json::to_string(&body[0].envelope).unwrap().len();
            println!(
                "  {name:<28} frame {bytes:>4} B ~{:>3} tok   body JSON {body_bytes:>6} B ~{:>5} tok   size_hint {}",
                bytes.div_ceil(4),
                body_bytes.div_ceil(4),
                frame.size_hint
            );
            assert!(bytes < 400, "{label}: a frame of {bytes} bytes");
        }

        // 84 unread envelopes of mixed length.
        let n = 84;
        let mut sent = Vec::new();
        for i in 0..n {
            let len = [300, 1200, 2500, 4000, 6500][i % 5];
            let mut req = to(text(&format!("{token} triage {i}"), &prose(i, len)), "@t.worker2");
            if i % 4 == 0 {
                let severity = ["low", "high"][i % 2];
                req.content_parts.push(ContentPart::data(
                    json!({"ticket": 1000 + i, "severity": severity, "owner": "ops"}),
                    Some("ticket/1"),
                ));
            }
            sent.push(a.send(req).await.unwrap().id);
        }
        wait_all(&label, &b, &sent).await;
        let rows: Vec<_> = all_with(&b, &format!("{token} triage"))
            .into_iter()
            .map(|frame| taskmail::mailbox::ListedFrame { frame, seen: false })
            .collect();
        assert_eq!(rows.len(), n);
        let inbox_bytes = serde_json::to_string(&json!({"frames": rows})).unwrap().len();
        let t = Instant::now();
        let mut read_bytes = 0;
        for chunk in sent.chunks(100) {
            for got in b.get_many(chunk).await.unwrap() {
                read_bytes += serde_json::to_string(&got).unwrap().len();
            }
        }
        let fetch = t.elapsed();
        println!(
            "{label}: {n} unread envelopes: triage headers-only {inbox_bytes} B ~{} tok ({} B/frame); reading every body {read_bytes} B ~{} tok ({:.1}x; bodies fetched in {fetch:?})",
            inbox_bytes.div_ceil(4),
            inbox_bytes / n,
            read_bytes.div_ceil(4),
            read_bytes as f64 / inbox_bytes as f64
        );
        assert!(read_bytes > 5 * inbox_bytes, "{label}: bodies {read_bytes} vs frames {inbox_bytes}");
    })
    .await;
}

/// The worker daemon (`taskmail run`) indexes the envelopes it sees into the mailbox (its
/// ASMTP arm), so a `Mailbox` on the same state dir lists them without syncing itself; an
/// untrusted sender's envelope is not indexed there either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_indexes_envelopes_into_the_mailbox() {
    on_every_server(|server| async move {
        let started = Instant::now();
        let label = server.label();
        // The senders use their own state dir: a daemon takes any Message-ID in its own
        // store's outbox for its own mail.
        let senders_dir = tempfile::tempdir().unwrap();
        let senders = config(&server, senders_dir.path());
        let dir = tempfile::tempdir().unwrap();
        let text = config_text(&server, dir.path())
            .replace("[accounts.b]", "[accounts.worker]")
            .replace("account = \"b\"", "account = \"worker\"");
        let daemon_config =
            Config::from_toml_str_with_env(&text, Mode::Strict, &Env::with_home(dir.path()))
                .unwrap();
        let worker = support::daemon::Worker::start_with_config(
            &server,
            dir.path(),
            "echo",
            daemon_config.clone(),
        )
        .await;
        let b = Mailbox::open(&daemon_config, "worker").await.unwrap();
        let a = Mailbox::open(&senders, A).await.unwrap();
        let o = Mailbox::open(&senders, O).await.unwrap();
        let token = support::unique_token();
        let refused = o
            .send(to(
                text_req(&format!("{token} from outsider")),
                "@t.worker2",
            ))
            .await
            .unwrap()
            .id;
        let id = a
            .send(to(text_req(&format!("{token} via daemon")), "@t.worker2"))
            .await
            .unwrap()
            .id;
        support::eventually(&format!("{label}: the daemon indexed {id}"), WAIT, || {
            let found = b.with_store(|s| s.mailbox_get("worker", &id).unwrap());
            async move { found }
        })
        .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(
            b.with_store(|s| s.mailbox_get("worker", &refused).unwrap())
                .is_none()
        );
        let page = b
            .list(&ListQuery {
                limit: 1000,
                ..ListQuery::default()
            })
            .unwrap();
        assert!(page.frames.iter().any(|f| f.frame.id == id));
        worker.stop().await;
        println!(
            "{label}: daemon indexed an envelope in {:?}",
            started.elapsed()
        );
    })
    .await;
}

fn text_req(subject: &str) -> SendRequest {
    text(subject, "through the daemon")
}
