//! `taskmail::transport` against the real servers of the harness (`bash
//! tests/mailserver/mailserver.sh up all`): Stalwart (WebSocket and EventSource push) and
//! Cyrus+Postfix (no push, relative session URLs).
//!
//! Every test loops over [`support::servers`]; with `TASKMAIL_REQUIRE_SERVERS=1` a missing server
//! fails. Accounts are built through the real config validation, as the daemon builds them.
//! Behaviour is decided from the session, never from the server's name. Latencies are printed
//! (`-- --nocapture`) as information only; the assertions are about behaviour.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::{Duration, Instant};

use lettre::AsyncTransport as _;
use taskmail::config::{Config, Env, Mode, PushMode};
use taskmail::transport::{
    self, Backoff, Fetched, Hint, JmapClient, JmapError, MailStore, PushKind, PushSettings,
    PushSupervisor, RetryPolicy, SendError, SmtpEnvelope, SmtpSettings, SmtpSubmit, Submit,
};
use taskmail::wire::aamp::{AampMessage, Dispatch, Payload, TaskId};
use taskmail::wire::message::{Attachment, Inbound, Mailbox, Outbound};
use taskmail::wire::{Classified, classify};

use support::Server;

/// How long a delivered message may take to show up over JMAP.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);
/// The push promise: a hint within this time of the submission.
const PUSH_DEADLINE: Duration = Duration::from_secs(2);

/// A validated account `user@domain` on `server`, with `password`, submission on `smtp_port`
/// and JMAP at `session_url`.
fn account(
    server: &Server,
    user: &str,
    password: &str,
    smtp_port: u16,
    session_url: &str,
) -> taskmail::config::Account {
    let text = format!(
        r#"
[accounts.{user}]
email = "{user}@{domain}"
password = {{ raw = "{password}" }}
smtp = {{ host = "{host}", port = {smtp_port}, tls = "plaintext", allow-plaintext = true, pool-size = 2, timeout = "15s" }}
jmap = {{ session-url = "{session_url}" }}
"#,
        domain = server.domain,
        host = server.smtp_host,
    );
    let config =
        Config::from_toml_str_with_env(&text, Mode::Strict, &Env::with_home("/nonexistent"))
            .unwrap_or_else(|e| panic!("{}: test config: {e}\n{text}", server.label()));
    config.account(user).unwrap().clone()
}

fn good_account(server: &Server, user: &str) -> taskmail::config::Account {
    account(
        server,
        user,
        &server.password,
        server.submission_port,
        &server.jmap_session_url,
    )
}

async fn client(server: &Server, user: &str) -> JmapClient {
    JmapClient::from_account(&good_account(server, user))
        .await
        .unwrap_or_else(|e| panic!("{}: JMAP connect as {user}: {e:?}", server.label()))
}

fn submit(server: &Server, user: &str) -> SmtpSubmit {
    SmtpSubmit::from_account(&good_account(server, user)).unwrap()
}

fn address(server: &Server, user: &str) -> String {
    format!("{user}@{}", server.domain)
}

/// Submits a one-line message `from` -> `to` whose subject carries `token`.
async fn deliver_plain(server: &Server, smtp: &SmtpSubmit, from: &str, to: &str, token: &str) {
    let (from, to) = (address(server, from), address(server, to));
    let raw = support::mail::message(
        &from,
        &to,
        &format!("transport test {token}"),
        &format!("{token}@{}", server.domain),
        &[],
        &format!("hello {token}"),
    );
    smtp.send_raw(&SmtpEnvelope::new(from, [to]), &raw)
        .await
        .unwrap_or_else(|e| panic!("{}: submission: {e:?}", server.label()));
}

/// Waits until `Email/changes` since `since` lists a message whose subject has `token`; returns
/// its headers-only view.
async fn wait_for(store: &JmapClient, since: &str, token: &str) -> Fetched {
    support::eventually(
        &format!("a message with '{token}'"),
        DELIVERY_TIMEOUT,
        || async {
            let changes = store.changes(since).await.unwrap();
            store
                .get_headers(&changes.created)
                .await
                .unwrap()
                .into_iter()
                .find(|f| {
                    f.inbound
                        .subject
                        .as_deref()
                        .is_some_and(|s| s.contains(token))
                })
        },
    )
    .await
}

/// Whether the message with `token` is among the emails created since `since`.
async fn arrived(store: &JmapClient, since: &str, token: &str) -> bool {
    let changes = store.changes(since).await.unwrap();
    store
        .get_headers(&changes.created)
        .await
        .unwrap()
        .iter()
        .any(|f| {
            f.inbound
                .subject
                .as_deref()
                .is_some_and(|s| s.contains(token))
        })
}

fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[tokio::test]
async fn session_discovery_resolves_urls_and_the_mail_account() {
    transport::init_crypto();
    for server in support::servers() {
        let label = server.label();
        let worker = support::Account {
            email: address(&server, "worker"),
            password: server.password.clone(),
        };
        let reference = server.jmap(&worker).await;
        let started = Instant::now();
        let jmap = client(&server, "worker").await;
        let connect_ms = started.elapsed().as_millis();
        let session = jmap.session();
        assert_eq!(
            session.url, reference.session_url,
            "{label}: redirects followed"
        );
        assert_ne!(
            session.url, server.jmap_session_url,
            "{label}: the session URL redirects"
        );
        assert_eq!(session.account_id, reference.account_id, "{label}");
        assert_eq!(session.api_url, reference.api_url, "{label}");
        assert_eq!(session.username, worker.email, "{label}");
        for url in [&session.api_url, &session.download_url, &session.upload_url] {
            assert!(
                url.starts_with("http://127.0.0.1:"),
                "{label}: {url} is absolute"
            );
        }
        for var in ["{accountId}", "{blobId}", "{name}", "{type}"] {
            assert!(
                session.download_url.contains(var),
                "{label}: {}",
                session.download_url
            );
        }
        assert!(session.max_calls_in_request >= 1 && session.max_objects_in_get >= 1);
        let websocket = session.websocket.as_ref().is_some_and(|w| w.supports_push);
        assert_eq!(
            websocket,
            server.push.iter().any(|p| p == "websocket"),
            "{label}: {:?}",
            session.websocket
        );
        if let Some(ws) = &session.websocket {
            assert!(ws.url.starts_with("ws://127.0.0.1:"), "{label}: {}", ws.url);
        }
        let inbox = jmap.inbox_id().await.unwrap();
        assert_eq!(inbox, reference.mailbox_with_role("inbox").await, "{label}");
        let by_name = jmap.mailbox_by_role("INBOX").await.unwrap().unwrap();
        assert_eq!(
            jmap.mailbox_by_name(&by_name.name)
                .await
                .unwrap()
                .map(|m| m.id),
            Some(inbox.clone())
        );
        assert_eq!(jmap.mailbox_by_role("no-such-role").await.unwrap(), None);
        println!(
            "{label}: session {} -> {} in {connect_ms} ms; api {}; account {:?}; \
             maxCallsInRequest {}, maxObjectsInGet {}; websocket {:?}; eventSource {:?}; inbox {inbox}",
            server.jmap_session_url,
            session.url,
            session.api_url,
            session.account_id,
            session.max_calls_in_request,
            session.max_objects_in_get,
            session.websocket,
            session.event_source_url,
        );
    }
}

#[tokio::test]
async fn aamp_dispatch_travels_by_submission_and_comes_back_over_jmap() {
    transport::init_crypto();
    for server in support::servers() {
        let label = server.label();
        let jmap = client(&server, "worker").await;
        let smtp = submit(&server, "dispatcher");
        let token = support::unique_token();
        let task_id = format!("task-{token}");
        let message = AampMessage::new(
            TaskId::new(&task_id),
            Payload::Dispatch(Dispatch {
                title: format!("transport {token}"),
                instructions: "Summarise the attached notes.\nKeep it short.".to_owned(),
                ..Dispatch::default()
            }),
        );
        let notes = format!("notes for {token}\nline two\n").into_bytes();
        let now = taskmail::clock::now();
        let (from, to) = (address(&server, "dispatcher"), address(&server, "worker"));
        let outbound = Outbound {
            from: Mailbox::new(&from),
            to: vec![Mailbox::new(&to)],
            cc: Vec::new(),
            subject: message.subject(),
            date: now,
            message_id: taskmail::ids::message_id(now, &server.domain),
            in_reply_to: None,
            references: Vec::new(),
            extra_headers: message
                .headers()
                .into_iter()
                .map(|(n, k, v)| (n.to_owned(), k, v))
                .collect(),
            text: message.body_text(),
            json_part: None,
            attachments: vec![Attachment {
                filename: "notes.txt".to_owned(),
                content_type: "text/plain".to_owned(),
                bytes: notes.clone(),
            }],
        };
        let raw = outbound.render();
        let state = jmap.state().await.unwrap();

        let started = Instant::now();
        smtp.send_raw(&SmtpEnvelope::new(from.clone(), [to.clone()]), &raw)
            .await
            .unwrap_or_else(|e| panic!("{label}: send_raw: {e:?}"));
        let submitted_ms = started.elapsed().as_millis();
        let fetched = wait_for(&jmap, &state, &token).await;
        let visible_ms = started.elapsed().as_millis();

        // headers only: classified as the AAMP dispatch from the X-AAMP headers alone
        assert!(fetched.inbound.body.is_none(), "{label}: headers only");
        assert_eq!(
            fetched.inbound.message_id.as_deref(),
            Some(outbound.message_id.as_str())
        );
        assert!(
            fetched
                .mailbox_ids
                .contains(&jmap.inbox_id().await.unwrap()),
            "{label}: in the Inbox: {:?}",
            fetched.mailbox_ids
        );
        assert!(fetched.received_at.is_some(), "{label}: receivedAt");
        assert_eq!(fetched.inbound.sender().as_deref(), Some(from.as_str()));
        match classify(&fetched.inbound) {
            Classified::Aamp(parsed) => {
                assert_eq!(parsed.message.task_id, TaskId::new(&task_id), "{label}");
                assert!(
                    matches!(parsed.message.payload, Payload::Dispatch(_)),
                    "{label}"
                );
            }
            other => panic!("{label}: headers-only classify gave {other:?}"),
        }

        // the body: text, the attachment's metadata, and its content by download
        let full = jmap
            .get_bodies(std::slice::from_ref(&fetched.id))
            .await
            .unwrap()
            .remove(0);
        let body = full.inbound.body.clone().unwrap();
        let text = body.text.clone().unwrap_or_default();
        assert!(
            text.contains("Summarise the attached notes."),
            "{label}: {text}"
        );
        match classify(&full.inbound) {
            Classified::Aamp(parsed) => match parsed.message.payload {
                Payload::Dispatch(d) => {
                    assert!(d.instructions.contains("Keep it short."), "{label}: {d:?}")
                }
                other => panic!("{label}: {other:?}"),
            },
            other => panic!("{label}: classify with body gave {other:?}"),
        }
        let from_bytes = Inbound::from_bytes(&raw).unwrap();
        assert_eq!(
            classify(&full.inbound),
            classify(&from_bytes),
            "{label}: JMAP and raw bytes classify alike"
        );
        assert_eq!(body.attachments.len(), 1, "{label}: {:?}", body.attachments);
        let attachment = &body.attachments[0];
        assert_eq!(attachment.name.as_deref(), Some("notes.txt"), "{label}");
        let blob = attachment.blob_id.clone().unwrap();
        let downloaded = jmap
            .download(&blob, "notes.txt", &attachment.content_type)
            .await
            .unwrap();
        assert_eq!(downloaded, notes, "{label}: attachment round trip");
        println!(
            "{label}: AAMP dispatch submitted in {submitted_ms} ms, seen via Email/changes + \
             headers-only Email/get {visible_ms} ms after submission; attachment of {} bytes \
             downloaded",
            downloaded.len()
        );
    }
}

#[tokio::test]
async fn asmtp_json_part_is_downloaded_by_get_bodies() {
    transport::init_crypto();
    let fixture = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures/asmtp/mixed-text-file-data.eml"),
    )
    .unwrap();
    for server in support::servers() {
        let label = server.label();
        let jmap = client(&server, "worker").await;
        let token = support::unique_token();
        // a unique Message-ID and a findable subject (Cyrus drops duplicate Message-IDs)
        let text = String::from_utf8_lossy(&fixture)
            .replacen("Message-ID: <", &format!("Message-ID: <{token}."), 1)
            .replacen("Message-Id: <", &format!("Message-Id: <{token}."), 1)
            .replacen("Subject: ", &format!("Subject: {token} "), 1);
        let raw = text.into_bytes();
        let expected = classify(&Inbound::from_bytes(&raw).unwrap());
        assert!(
            matches!(expected, Classified::Asmtp(Some(_))),
            "{expected:?}"
        );
        let state = jmap.state().await.unwrap();
        // the MX port: the fixture's sender is not one of our logins
        let mx = lettre::AsyncSmtpTransport::<lettre::Tokio1Executor>::builder_dangerous(
            &server.smtp_host,
        )
        .port(server.smtp_port)
        .build();
        mx.send_raw(
            &support::mail::envelope("sender@example.test", &[&address(&server, "worker")]),
            &raw,
        )
        .await
        .unwrap_or_else(|e| panic!("{label}: MX delivery: {e}"));
        let fetched = wait_for(&jmap, &state, &token).await;
        assert_eq!(
            classify(&fetched.inbound),
            Classified::Asmtp(None),
            "{label}"
        );
        let full = jmap.get_bodies(&[fetched.id]).await.unwrap().remove(0);
        let body = full.inbound.body.as_ref().unwrap();
        assert!(
            body.json_part.is_some(),
            "{label}: JSON part downloaded: {body:?}"
        );
        assert_eq!(classify(&full.inbound), expected, "{label}");
        println!(
            "{label}: ASMTP mail over JMAP: JSON part of {} bytes downloaded, classifies as from bytes",
            body.json_part.as_ref().map_or(0, Vec::len)
        );
    }
}

#[tokio::test]
async fn keywords_compare_and_swap_with_if_in_state() {
    transport::init_crypto();
    for server in support::servers() {
        let label = server.label();
        let jmap = client(&server, "worker2").await;
        let smtp = submit(&server, "dispatcher");
        let token = support::unique_token();
        let state = jmap.state().await.unwrap();
        deliver_plain(&server, &smtp, "dispatcher", "worker2", &token).await;
        let id = wait_for(&jmap, &state, &token).await.id;

        let before = jmap.state().await.unwrap();
        let won = jmap
            .set_keywords(&id, &["$taskmail-claimed"], &[], Some(&before))
            .await
            .unwrap_or_else(|e| panic!("{label}: ifInState with the current state: {e:?}"));
        assert_ne!(won.new_state, before, "{label}: the state moved");
        let stale = jmap
            .set_keywords(&id, &["$taskmail-done"], &[], Some(&before))
            .await;
        let if_in_state = match &stale {
            Err(e) if e.is_state_mismatch() => {
                assert!(!e.is_transient() && !e.is_permanent(), "{label}: {e:?}");
                "supported: a stale ifInState gives stateMismatch"
            }
            Ok(_) => "NOT SUPPORTED: Email/set ignored a stale ifInState",
            Err(e) => panic!("{label}: stale ifInState: unexpected {e:?}"),
        };
        assert!(stale.is_err(), "{label}: {if_in_state}");
        let headers = jmap.get_headers(std::slice::from_ref(&id)).await.unwrap();
        assert!(
            headers[0].keywords.contains("$taskmail-claimed"),
            "{label}: {:?}",
            headers[0].keywords
        );
        assert!(!headers[0].keywords.contains("$taskmail-done"), "{label}");
        let changes = jmap.changes(&before).await.unwrap();
        assert!(
            changes.updated.contains(&id) || changes.created.contains(&id),
            "{label}: {changes:?}"
        );

        // move out of the Inbox and back, where the account has another mailbox
        let inbox = jmap.inbox_id().await.unwrap();
        let other = jmap
            .mailboxes()
            .await
            .unwrap()
            .into_iter()
            .find(|m| m.id != inbox);
        let moved = match &other {
            Some(other) => {
                jmap.move_to(&id, &other.id).await.unwrap();
                let here = jmap.get_headers(std::slice::from_ref(&id)).await.unwrap();
                assert_eq!(
                    here[0].mailbox_ids.iter().collect::<Vec<_>>(),
                    vec![&other.id]
                );
                jmap.move_to(&id, &inbox).await.unwrap();
                format!("moved to '{}' and back", other.name)
            }
            None => "no second mailbox to move to".to_owned(),
        };
        let done = jmap
            .set_keywords(&id, &["$taskmail-done"], &["$taskmail-claimed"], None)
            .await
            .unwrap();
        let after = jmap.get_headers(std::slice::from_ref(&id)).await.unwrap();
        assert_eq!(
            after[0]
                .keywords
                .iter()
                .filter(|k| k.starts_with("$taskmail"))
                .collect::<Vec<_>>(),
            vec!["$taskmail-done"],
            "{label}"
        );
        assert!(after[0].mailbox_ids.contains(&inbox));
        let gone = jmap
            .set_keywords("no-such-email-id", &["$x"], &[], None)
            .await;
        assert!(
            matches!(&gone, Err(e) if e.is_not_found()),
            "{label}: unknown id: {gone:?}"
        );
        println!(
            "{label}: ifInState on Email/set {if_in_state}; states {before} -> {} -> {}; {moved}",
            won.new_state, done.new_state
        );
    }
}

#[tokio::test]
async fn changes_from_an_unusable_state_ask_for_a_backfill() {
    transport::init_crypto();
    for server in support::servers() {
        let label = server.label();
        let jmap = client(&server, "worker").await;
        let smtp = submit(&server, "dispatcher");
        let token = support::unique_token();
        let state = jmap.state().await.unwrap();
        let since = taskmail::clock::now() - chrono::Duration::seconds(5);
        deliver_plain(&server, &smtp, "dispatcher", "worker", &token).await;
        let id = wait_for(&jmap, &state, &token).await.id;

        // NOTE: not a string starting with 'n': Stalwart reads that as its initial state and
        // replays every change since the mailbox was created.
        let error = jmap.changes("bogus-state").await.unwrap_err();
        assert!(error.is_cannot_calculate_changes(), "{label}: {error:?}");
        assert!(!error.is_permanent() && !error.is_transient());

        let backfill = jmap.query_inbox_since(since, 500).await.unwrap();
        assert!(backfill.ids.contains(&id), "{label}: {backfill:?}");
        assert!(!backfill.state.is_empty());
        let limited = jmap.query_inbox_since(since, 1).await.unwrap();
        assert!(limited.ids.len() <= 1, "{label}: {limited:?}");
        println!(
            "{label}: Email/changes from a bad state -> {error}; back-fill since {since} found {} \
             email(s) at state {}",
            backfill.ids.len(),
            backfill.state
        );
    }
}

/// Runs a supervisor for `user` in `mode`, waits until it reports `expected`, delivers a
/// message and returns (the hint that made it visible, latency from submission).
async fn push_round(
    server: &Server,
    user: &str,
    mode: PushMode,
    poll: Duration,
    expected: PushKind,
) -> (Hint, Duration, Option<String>) {
    let label = server.label();
    let jmap = std::sync::Arc::new(client(server, user).await);
    let settings = PushSettings::new(
        mode,
        poll,
        Duration::from_secs(90),
        Duration::from_millis(200),
        Duration::from_secs(5),
    )
    .unwrap();
    let (supervisor, mut hints, mut status) = PushSupervisor::new(jmap.clone(), settings, 16);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(supervisor.run(async {
        let _ = stopped.await;
    }));

    // connected (or polling) and the catch-up hint
    let first = tokio::time::timeout(Duration::from_secs(15), hints.recv())
        .await
        .unwrap_or_else(|_| panic!("{label}: no catch-up hint in {mode:?}"))
        .unwrap();
    assert_eq!(first, Hint::Connected(expected), "{label}: {mode:?}");
    let snapshot = status.borrow_and_update().clone();
    assert_eq!(snapshot.channel, expected, "{label}: {snapshot:?}");

    let smtp = submit(server, "dispatcher");
    let token = support::unique_token();
    let state = jmap.state().await.unwrap();
    let started = Instant::now();
    deliver_plain(server, &smtp, "dispatcher", user, &token).await;
    let deadline = if expected == PushKind::Poll {
        DELIVERY_TIMEOUT
    } else {
        PUSH_DEADLINE
    };
    let (hint, latency) = loop {
        let left = deadline.saturating_sub(started.elapsed());
        let hint = tokio::time::timeout(left, hints.recv())
            .await
            .unwrap_or_else(|_| {
                panic!("{label}: no hint for the delivery within {deadline:?} ({mode:?})")
            })
            .unwrap();
        let latency = started.elapsed();
        if arrived(&jmap, &state, &token).await {
            break (hint, latency);
        }
    };
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap_or_else(|_| panic!("{label}: the supervisor did not stop"))
        .unwrap();
    let last_error = status.borrow().last_error.clone();
    (hint, latency, last_error)
}

#[tokio::test]
async fn push_hints_within_2s_on_stalwart_and_polling_on_cyrus() {
    transport::init_crypto();
    for server in support::servers() {
        let label = server.label();
        let session = client(&server, "human").await.session();
        let websocket = session.websocket.as_ref().is_some_and(|w| w.supports_push);
        if websocket || server.push.iter().any(|p| p == "eventsource") {
            for (mode, kind) in [
                (PushMode::Websocket, PushKind::WebSocket),
                (PushMode::Eventsource, PushKind::EventSource),
            ] {
                let (hint, latency, _) =
                    push_round(&server, "human", mode, Duration::from_secs(60), kind).await;
                assert_eq!(hint, Hint::StateChange(kind), "{label}: {mode:?}");
                println!(
                    "{label}: {kind} push hint {} ms after submission (PUSH_THROTTLE={})",
                    latency.as_millis(),
                    server.vars.get("PUSH_THROTTLE").map_or("?", String::as_str)
                );
            }
            // auto picks WebSocket when the session advertises it
            let (hint, latency, _) = push_round(
                &server,
                "human",
                PushMode::Auto,
                Duration::from_secs(60),
                PushKind::WebSocket,
            )
            .await;
            assert_eq!(hint, Hint::StateChange(PushKind::WebSocket), "{label}");
            println!(
                "{label}: auto -> websocket, hint {} ms after submission",
                latency.as_millis()
            );
        } else {
            let poll = Duration::from_secs(1);
            let (hint, latency, last_error) =
                push_round(&server, "human", PushMode::Auto, poll, PushKind::Poll).await;
            assert_eq!(hint, Hint::Tick, "{label}");
            let last_error = last_error.unwrap_or_default();
            assert!(
                last_error.contains("eventsource") && last_error.contains("204"),
                "{label}: the status says why there is no push: {last_error}"
            );
            println!(
                "{label}: no push ({last_error}); polling every {poll:?} saw the delivery {} ms \
                 after submission",
                latency.as_millis()
            );
            // forcing a channel the server lacks falls back to polling too
            let (hint, _, last_error) =
                push_round(&server, "human", PushMode::Websocket, poll, PushKind::Poll).await;
            assert_eq!(hint, Hint::Tick, "{label}");
            assert!(
                last_error.unwrap_or_default().contains("websocket"),
                "{label}"
            );
        }
    }
}

#[tokio::test]
async fn a_wrong_password_is_an_auth_error_for_smtp_and_jmap() {
    transport::init_crypto();
    for server in support::servers() {
        let label = server.label();
        let wrong = account(
            &server,
            "dispatcher",
            "not-the-password",
            server.submission_port,
            &server.jmap_session_url,
        );
        let smtp = SmtpSubmit::from_account(&wrong).unwrap();
        let to = address(&server, "worker");
        let raw =
            support::mail::message(&wrong.email, &to, "never", "never@example.test", &[], "x");
        let started = Instant::now();
        let error = smtp
            .send_raw(&SmtpEnvelope::new(wrong.email.clone(), [to]), &raw)
            .await
            .unwrap_err();
        assert!(
            error.is_auth() && error.is_permanent(),
            "{label}: {error:?}"
        );
        assert_eq!(error.status(), Some(535), "{label}: {error}");
        assert_eq!(error.exit_code(), 77);
        assert!(smtp.check().await.unwrap_err().is_auth(), "{label}");
        let smtp_ms = started.elapsed().as_millis();
        assert!(
            !format!("{error:?}").contains("not-the-password"),
            "{label}: no credentials in errors"
        );

        let jmap = JmapClient::from_account(&wrong).await.unwrap_err();
        assert!(jmap.is_auth() && jmap.is_permanent(), "{label}: {jmap:?}");
        assert_eq!(jmap.status(), Some(401), "{label}");
        assert_eq!(jmap.exit_code(), 77);
        assert!(
            submit(&server, "dispatcher").check().await.is_ok(),
            "{label}: the right password works"
        );
        println!("{label}: wrong password -> SMTP: {error} ({smtp_ms} ms); JMAP: {jmap}");
    }
}

#[tokio::test]
async fn an_unreachable_port_is_a_transient_error() {
    transport::init_crypto();
    for server in support::servers() {
        let label = server.label();
        let port = closed_port();
        let unreachable = account(
            &server,
            "dispatcher",
            &server.password,
            port,
            &format!("http://127.0.0.1:{port}/.well-known/jmap"),
        );
        let smtp = SmtpSubmit::new(
            SmtpSettings::from_account(&unreachable)
                .unwrap()
                .with_retry(RetryPolicy {
                    attempts: 2,
                    backoff: Backoff::new(Duration::from_millis(10), Duration::from_millis(50))
                        .unwrap(),
                }),
        )
        .unwrap();
        let error = smtp
            .send_raw(
                &SmtpEnvelope::new(unreachable.email.clone(), [address(&server, "worker")]),
                b"x",
            )
            .await
            .unwrap_err();
        assert!(
            matches!(error, SendError::Unreachable { attempts: 2, .. }),
            "{label}: {error:?}"
        );
        assert!(error.is_transient() && !error.is_permanent());
        assert_eq!((error.status(), error.exit_code()), (None, 69));

        let jmap = JmapClient::from_account(&unreachable).await.unwrap_err();
        assert!(
            matches!(jmap, JmapError::Unreachable { .. }),
            "{label}: {jmap:?}"
        );
        assert!(jmap.is_transient() && !jmap.is_permanent());
        assert_eq!(jmap.exit_code(), 69);
        println!("{label}: closed port {port} -> SMTP: {error}; JMAP: {jmap}");
    }
}

#[tokio::test]
async fn websocket_pings_keep_a_quiet_channel_alive_and_a_silent_one_is_reconnected() {
    transport::init_crypto();
    for server in support::servers() {
        let label = server.label();
        let jmap = std::sync::Arc::new(client(&server, "outsider").await);
        let session = jmap.session();
        if !session.websocket.as_ref().is_some_and(|w| w.supports_push) {
            println!("{label}: no WebSocket push: nothing to keep alive");
            continue;
        }
        let liveness = Duration::from_millis(1500);
        let watch_for = Duration::from_secs(5);
        let mut outcomes = Vec::new();
        for mode in [PushMode::Websocket, PushMode::Eventsource] {
            let settings = PushSettings::new(
                mode,
                Duration::from_secs(60),
                liveness,
                Duration::from_millis(100),
                Duration::from_millis(500),
            )
            .unwrap();
            let (supervisor, mut hints, status) = PushSupervisor::new(jmap.clone(), settings, 64);
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let task = tokio::spawn(supervisor.run(async {
                let _ = stopped.await;
            }));
            tokio::time::sleep(watch_for).await;
            stop.send(()).unwrap();
            task.await.unwrap();
            let mut connects = 0;
            while let Ok(hint) = hints.try_recv() {
                if matches!(hint, Hint::Connected(_)) {
                    connects += 1;
                }
            }
            let status = status.borrow().clone();
            outcomes.push((mode, connects, status));
        }
        let (_, ws_connects, ws) = &outcomes[0];
        assert_eq!(
            (*ws_connects, ws.disconnects),
            (1, 0),
            "{label}: WebSocket pings every {:?} keep a quiet channel alive: {ws:?}",
            liveness / 3
        );
        // Stalwart pings an EventSource at most every 30 s: with 1.5 s liveness it is declared
        // dead and reconnected, each time with a catch-up hint
        let (_, es_connects, es) = &outcomes[1];
        assert!(es.disconnects >= 2 && *es_connects >= 3, "{label}: {es:?}");
        assert!(
            es.last_error
                .as_deref()
                .is_some_and(|e| e.contains("nothing arrived")),
            "{label}: {es:?}"
        );
        println!(
            "{label}: over {watch_for:?} with liveness {liveness:?}: WebSocket 1 connect, 0 \
             disconnects; EventSource {es_connects} connects, {} disconnects ({})",
            es.disconnects,
            es.last_error.as_deref().unwrap_or_default()
        );
    }
}
