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
    let poll = if support::daemon::pushes(server) {
        "30s"
    } else {
        "250ms"
    };
    let account = |name: &str, user: &str, default: bool| {
        format!(
            r#"
[accounts.{name}]
default = {default}
email = "{user}@{domain}"
handle = "@t.{user}"
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
