//! The mail-server facts the taskmail daemon relies on, checked on every server the harness runs
//! (`bash tests/mailserver/mailserver.sh up all`: Stalwart and Cyrus+Postfix on 127.0.0.1).
//!
//! Each test loops over [`support::servers`]: with `TASKMAIL_REQUIRE_SERVERS=1` (CI) a missing
//! server fails the test; without it the loop runs zero times and a `SKIPPED:` line says why.
//! Behaviour is decided from what a server advertises (its JMAP session, an HTTP probe), never
//! from its name. Run with `-- --nocapture` to see the measured facts (latencies, push kinds).

mod support;

use std::time::{Duration, Instant};

use base64::Engine as _;
use futures_util::StreamExt as _;
use jmap_client::{
    DataType, PushObject,
    client_ws::WebSocketMessage,
    email::{Header, HeaderValue, Property},
    event_source::PushNotification,
    mailbox::{Role, query::Filter},
};
use lettre::AsyncTransport as _;
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    task::JoinSet,
};

use support::{Account, Server, jmap::Jmap, mail};

/// How long a delivered message may take to show up over JMAP.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);
/// The push promise: a StateChange for Email within this time of the SMTP submission.
const PUSH_DEADLINE: Duration = Duration::from_secs(2);
/// The size of the folded X-AAMP header.
const BIG_HEADER_BYTES: usize = 5 * 1024;

/// Submit a one-line test message `from` -> `to` whose subject carries `token`.
async fn deliver(
    server: &Server,
    from: &Account,
    to: &Account,
    token: &str,
    headers: &[(&str, &str)],
) {
    let raw = mail::message(
        &from.email,
        &to.email,
        &format!("taskmail test {token}"),
        &format!("{token}@{}", server.domain),
        headers,
        &format!("test message {token}"),
    );
    server
        .submission(from)
        .send_raw(&mail::envelope(&from.email, &[&to.email]), &raw)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "{}: submission {} -> {}: {e}",
                server.label(),
                from.email,
                to.email
            )
        });
}

#[tokio::test]
async fn submission_accepts_auth_and_refuses_without() {
    support::init_crypto();
    for server in support::servers() {
        let from = server.account("dispatcher");
        let to = server.account("worker");
        let token = support::unique_token();
        let envelope = mail::envelope(&from.email, &[&to.email]);
        let raw = mail::message(
            &from.email,
            &to.email,
            &format!("taskmail test {token}"),
            &format!("{token}@{}", server.domain),
            &[],
            "hello",
        );
        let jmap = server.jmap(&to).await;
        let state = jmap.email_state().await;

        let accepted = server
            .submission(&from)
            .send_raw(&envelope, &raw)
            .await
            .unwrap_or_else(|e| panic!("{}: submission with AUTH refused: {e}", server.label()));
        assert!(accepted.is_positive(), "{}: {accepted:?}", server.label());

        let no_auth = mail::submission(&server, None, 1)
            .send_raw(&envelope, &raw)
            .await
            .expect_err("submission without AUTH must be refused");
        assert!(
            no_auth.is_permanent(),
            "{}: without AUTH: expected a permanent refusal, got: {no_auth}",
            server.label()
        );

        let wrong = Account {
            email: from.email.clone(),
            password: "not-the-password".to_string(),
        };
        let bad_password = mail::submission(&server, Some(&wrong), 1)
            .send_raw(&envelope, &raw)
            .await
            .expect_err("a wrong password must be refused");
        assert!(
            bad_password.is_permanent(),
            "{}: wrong password: expected a permanent refusal, got: {bad_password}",
            server.label()
        );

        // exactly one copy arrived: the refused attempts delivered nothing
        let arrived = jmap
            .wait_for_token(&state, &token, 1, &[], DELIVERY_TIMEOUT)
            .await;
        assert_eq!(arrived.len(), 1, "{}: {arrived:?}", server.label());
        eprintln!(
            "{}: submission on {}:{} with AUTH -> {:?}; without AUTH -> {no_auth}; wrong password -> {bad_password}",
            server.label(),
            server.smtp_host,
            server.submission_port,
            accepted.code().to_string(),
        );
    }
}

#[tokio::test]
async fn imap_login_works() {
    for server in support::servers() {
        let account = server.account("worker");
        let mut stream = TcpStream::connect((server.smtp_host.as_str(), server.imap_port))
            .await
            .unwrap_or_else(|e| panic!("{}: IMAP connect: {e}", server.label()));
        let command = format!(
            "a LOGIN \"{}\" \"{}\"\r\nb LOGOUT\r\n",
            account.email, account.password
        );
        stream
            .write_all(command.as_bytes())
            .await
            .unwrap_or_else(|e| panic!("{}: IMAP write: {e}", server.label()));
        let mut reply = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut reply))
            .await
            .unwrap_or_else(|_| {
                panic!("{}: IMAP server did not close after LOGOUT", server.label())
            })
            .unwrap_or_else(|e| panic!("{}: IMAP read: {e}", server.label()));
        let reply = String::from_utf8_lossy(&reply);
        assert!(
            reply.lines().any(|l| l.starts_with("a OK")),
            "{}: IMAP LOGIN failed: {reply}",
            server.label()
        );
    }
}

#[tokio::test]
async fn jmap_session_via_jmap_client_and_its_own_urls() {
    support::init_crypto();
    for server in support::servers() {
        for user in &server.users {
            let account = server.account(user);
            let client = server.jmap_client(&account).await.unwrap_or_else(|e| {
                panic!(
                    "{}: jmap-client connect as {}: {e}",
                    server.label(),
                    account.email
                )
            });
            let session = client.session();
            assert!(
                session.has_capability("urn:ietf:params:jmap:mail"),
                "{}: no mail capability",
                server.label()
            );
            assert_eq!(session.username(), account.email, "{}", server.label());
            let primary = session
                .primary_accounts()
                .find(|(capability, _)| capability.as_str() == "urn:ietf:params:jmap:mail")
                .map(|(_, id)| id.clone())
                .unwrap_or_else(|| panic!("{}: no primary mail account", server.label()));

            // the session's own URLs, resolved against where the session was served from
            let jmap = server.jmap(&account).await;
            assert_eq!(jmap.account_id, primary, "{}", server.label());
            let inbox = jmap.mailbox_with_role("inbox").await;

            let api_url = session.api_url();
            if api_url.starts_with("http://") || api_url.starts_with("https://") {
                // jmap-client uses the URLs as served: it must reach the same inbox
                let query = client
                    .mailbox_query(Some(Filter::role(Role::Inbox)), None::<Vec<_>>)
                    .await
                    .unwrap_or_else(|e| {
                        panic!("{}: jmap-client Mailbox/query: {e}", server.label())
                    });
                assert_eq!(
                    query.ids(),
                    std::slice::from_ref(&inbox),
                    "{}",
                    server.label()
                );
            } else {
                // NOTE: jmap-client 0.4.3 sends requests to apiUrl as served, so relative URLs
                // (Cyrus) need resolving by the caller; the daemon's transport must do it
                let outcome = client
                    .mailbox_query(Some(Filter::role(Role::Inbox)), None::<Vec<_>>)
                    .await
                    .map(|q| q.ids().to_vec());
                if user == "worker" {
                    eprintln!(
                        "{}: NOTE session URLs are relative (apiUrl {api_url:?}); resolved: {}; \
                         jmap-client 0.4.3 with the URL as served -> {outcome:?}",
                        server.label(),
                        jmap.api_url
                    );
                }
            }
            if user == "worker" {
                eprintln!(
                    "{}: JMAP session {} -> {} (apiUrl {}), accountId {:?}, inbox {inbox}",
                    server.label(),
                    server.jmap_session_url,
                    jmap.session_url,
                    jmap.api_url,
                    jmap.account_id
                );
            }
        }
    }
}

/// A 5 KB value of space-separated words that starts with `token`.
fn big_words(token: &str) -> String {
    let mut value = token.to_string();
    let mut i = 0;
    while value.len() < BIG_HEADER_BYTES {
        value.push_str(&format!(" {token}-part-{i:04}"));
        i += 1;
    }
    value
}

#[tokio::test]
async fn folded_5kb_x_aamp_header_reads_back_unfolded() {
    support::init_crypto();
    for server in support::servers() {
        let from = server.account("dispatcher");
        let to = server.account("worker");
        let token = support::unique_token();
        let task_id = big_words(&token);
        let blob = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(
            task_id
                .as_bytes()
                .iter()
                .rev()
                .copied()
                .collect::<Vec<u8>>(),
        );
        let folded = mail::fold("X-AAMP-TaskId", &task_id, 76);
        let folded_blob = mail::fold_inserting("X-AAMP-StructuredResult", &blob, 76);
        let raw = mail::message(
            &from.email,
            &to.email,
            &format!("taskmail test {token}"),
            &format!("{token}@{}", server.domain),
            &[
                ("X-AAMP-Intent", "task.dispatch"),
                ("X-AAMP-TaskId", &folded),
                ("X-AAMP-StructuredResult", &folded_blob),
            ],
            "folded header test",
        );
        let text = String::from_utf8_lossy(&raw);
        let long_line = text.lines().find(|l| l.len() > 78);
        assert_eq!(long_line, None, "every line is folded to <= 78 octets");
        assert!(task_id.len() >= BIG_HEADER_BYTES && folded.matches("\r\n ").count() > 60);

        let jmap = server.jmap(&to).await;
        let state = jmap.email_state().await;
        server
            .submission(&from)
            .send_raw(&mail::envelope(&from.email, &[&to.email]), &raw)
            .await
            .unwrap_or_else(|e| panic!("{}: submission: {e}", server.label()));
        let properties = [
            "header:X-AAMP-TaskId:asText",
            "header:x-aamp-taskid:asText",
            "header:X-AAMP-TaskId:asText:all",
            "header:X-AAMP-StructuredResult:asText",
            "header:X-AAMP-Intent:asText",
            "header:X-AAMP-Missing:asText",
        ];
        let got = jmap
            .wait_for_token(&state, &token, 1, &properties, DELIVERY_TIMEOUT)
            .await
            .remove(0);
        let label = server.label();
        assert_eq!(
            got["header:X-AAMP-TaskId:asText"],
            json!(task_id),
            "{label}: asText must be the unfolded value"
        );
        assert_eq!(
            got["header:x-aamp-taskid:asText"],
            json!(task_id),
            "{label}: header names are case-insensitive"
        );
        assert_eq!(
            got["header:X-AAMP-TaskId:asText:all"],
            json!([task_id]),
            "{label}"
        );
        assert_eq!(
            got["header:X-AAMP-Intent:asText"],
            json!("task.dispatch"),
            "{label}"
        );
        assert_eq!(got["header:X-AAMP-Missing:asText"], Value::Null, "{label}");
        let structured = got["header:X-AAMP-StructuredResult:asText"]
            .as_str()
            .unwrap_or_else(|| panic!("{label}: no X-AAMP-StructuredResult: {got}"));
        assert_eq!(
            structured.split_whitespace().collect::<String>(),
            blob,
            "{label}: base64url folded by inserted whitespace survives once whitespace is dropped"
        );

        // the same through jmap-client's typed Email/get, where it can use the session's URLs
        let client = server
            .jmap_client(&to)
            .await
            .unwrap_or_else(|e| panic!("{label}: jmap-client connect: {e}"));
        let typed = Header::as_text("X-AAMP-TaskId", false);
        let id = got["id"].as_str().unwrap_or_default();
        match client
            .email_get(id, Some([Property::Header(typed.clone())]))
            .await
        {
            Ok(Some(email)) => match email.header(&typed) {
                Some(HeaderValue::AsText(value)) => {
                    assert_eq!(value, &task_id, "{label}: jmap-client")
                }
                other => panic!("{label}: jmap-client returned {other:?}"),
            },
            Ok(None) => panic!("{label}: jmap-client: Email/get found no {id}"),
            Err(e) => {
                let relative = !client.session().api_url().starts_with("http");
                assert!(relative, "{label}: jmap-client Email/get failed: {e}");
                eprintln!("{label}: jmap-client typed Email/get skipped: relative apiUrl ({e})");
            }
        }
        eprintln!(
            "{label}: X-AAMP-TaskId of {} bytes folded into {} lines reads back exactly via \
             header:X-AAMP-TaskId:asText; a {}-byte base64url value folded by inserting CRLF+SP \
             reads back {} the inserted spaces",
            task_id.len(),
            folded.matches("\r\n").count() + 1,
            blob.len(),
            if structured.contains(' ') {
                "with"
            } else {
                "without"
            }
        );
    }
}

#[tokio::test]
async fn email_changes_lists_a_delivery() {
    support::init_crypto();
    for server in support::servers() {
        let from = server.account("dispatcher");
        let to = server.account("worker2");
        let jmap = server.jmap(&to).await;
        let inbox = jmap.mailbox_with_role("inbox").await;
        let state = jmap.email_state().await;
        let token = support::unique_token();
        let sent = Instant::now();
        deliver(&server, &from, &to, &token, &[]).await;
        let found = jmap
            .wait_for_token(
                &state,
                &token,
                1,
                &["mailboxIds", "receivedAt"],
                DELIVERY_TIMEOUT,
            )
            .await;
        let seen_after = sent.elapsed();
        let id = found[0]["id"].as_str().unwrap_or_default().to_string();
        let label = server.label();
        assert_eq!(
            found[0]["mailboxIds"][&inbox],
            json!(true),
            "{label}: delivered to the Inbox"
        );

        let (created, new_state) = jmap.created_since(&state).await;
        assert!(
            created.contains(&id),
            "{label}: Email/changes since {state}: {created:?}"
        );
        assert_ne!(new_state, state, "{label}: the state moved");
        let (again, _) = jmap.created_since(&new_state).await;
        assert!(
            !again.contains(&id),
            "{label}: Email/changes from the new state repeats {id}"
        );
        eprintln!(
            "{label}: Email/changes since {state:?} -> created {id} (new state {new_state:?}), \
             visible {} ms after submission",
            seen_after.as_millis()
        );
    }
}

/// Deliver a message for `jmap`'s account, then wait for a push event that `is_email_change`
/// accepts and after which the message is visible; return the latency from submission.
async fn deliver_and_await_push<S, F>(
    server: &Server,
    jmap: &Jmap,
    stream: &mut S,
    kind: &str,
    is_email_change: F,
) -> Duration
where
    S: futures_util::Stream + Unpin,
    F: Fn(&S::Item) -> bool,
{
    let label = server.label();
    let state = jmap.email_state().await;
    let token = support::unique_token();
    let from = server.account("dispatcher");
    let start = Instant::now();
    deliver(server, &from, &jmap.account, &token, &[]).await;
    loop {
        let left = PUSH_DEADLINE.saturating_sub(start.elapsed());
        let event = tokio::time::timeout(left, stream.next())
            .await
            .unwrap_or_else(|_| {
                panic!("{label}: no {kind} StateChange for Email within {PUSH_DEADLINE:?}")
            })
            .unwrap_or_else(|| panic!("{label}: the {kind} stream ended"));
        if !is_email_change(&event) {
            continue;
        }
        let latency = start.elapsed();
        // attribute the event to our message (tests run in parallel on other accounts, but be sure)
        let (created, _) = jmap.created_since(&state).await;
        let ours = jmap
            .get_emails(&created, &["subject"])
            .await
            .iter()
            .any(|e| e["subject"].as_str().is_some_and(|s| s.contains(&token)));
        if ours {
            return latency;
        }
    }
}

#[tokio::test]
async fn push_state_change_within_2s_or_no_push_detected() {
    support::init_crypto();
    for server in support::servers() {
        let label = server.label();
        let human = server.account("human");
        let jmap = server.jmap(&human).await;
        let push = jmap.push_support().await;
        assert_eq!(
            push.kinds(),
            server.push,
            "{label}: the env file's JMAP_PUSH ({}) disagrees with what the server offers ({push:?})",
            server.env_file.display()
        );
        if push.kinds().is_empty() {
            // "no push" is detected from the session and HTTP: clients poll Email/changes
            assert!(
                jmap.session["capabilities"]
                    .get(support::jmap::WEBSOCKET_CAPABILITY)
                    .is_none()
            );
            assert!(!push.event_source, "{label}: {push:?}");
            eprintln!(
                "{label}: no push: no {} capability, eventSourceUrl answers {:?}; clients must poll Email/changes",
                support::jmap::WEBSOCKET_CAPABILITY,
                push.event_source_probe
            );
            continue;
        }
        let client = server
            .jmap_client(&human)
            .await
            .unwrap_or_else(|e| panic!("{label}: jmap-client connect: {e}"));
        let account_id = jmap.account_id.clone();

        if push.event_source {
            let mut events = client
                .event_source(Some([DataType::Email]), false, None, None)
                .await
                .unwrap_or_else(|e| panic!("{label}: EventSource: {e}"));
            let latency = deliver_and_await_push(&server, &jmap, &mut events, "EventSource", |event| {
                matches!(event, Ok(PushNotification::StateChange(changes))
                    if changes.changes(&account_id).is_some_and(|mut c| c.any(|(t, _)| *t == DataType::Email)))
            })
            .await;
            eprintln!(
                "{label}: EventSource StateChange for Email {} ms after submission (PUSH_THROTTLE={})",
                latency.as_millis(),
                server.vars.get("PUSH_THROTTLE").map_or("?", String::as_str)
            );
        }

        if push.websocket {
            let mut socket = client
                .connect_ws()
                .await
                .unwrap_or_else(|e| panic!("{label}: WebSocket connect: {e}"));
            client
                .enable_push_ws(Some([DataType::Email]), None::<String>)
                .await
                .unwrap_or_else(|e| panic!("{label}: WebSocketPushEnable: {e}"));
            // a request on the same socket: its response proves the push enable was processed
            let mut request = client.build();
            request
                .get_mailbox()
                .account_id(&account_id)
                .ids(Vec::<String>::new());
            let request_id = client
                .send_ws(request)
                .await
                .unwrap_or_else(|e| panic!("{label}: JMAP request over WebSocket: {e}"));
            loop {
                let message = tokio::time::timeout(Duration::from_secs(10), socket.next())
                    .await
                    .unwrap_or_else(|_| panic!("{label}: no WebSocket response in 10 s"))
                    .unwrap_or_else(|| panic!("{label}: WebSocket closed"))
                    .unwrap_or_else(|e| panic!("{label}: WebSocket: {e}"));
                if let WebSocketMessage::Response(response) = message {
                    assert_eq!(response.request_id(), Some(request_id.as_str()), "{label}");
                    break;
                }
            }
            let latency = deliver_and_await_push(&server, &jmap, &mut socket, "WebSocket", |message| {
                matches!(message, Ok(WebSocketMessage::PushNotification(PushObject::StateChange { changed }))
                    if changed.get(&account_id).is_some_and(|types| types.contains_key(&DataType::Email)))
            })
            .await;
            eprintln!(
                "{label}: WebSocket StateChange for Email {} ms after submission (PUSH_THROTTLE={})",
                latency.as_millis(),
                server.vars.get("PUSH_THROTTLE").map_or("?", String::as_str)
            );
        }
    }
}

#[tokio::test]
async fn sixty_quick_messages_from_one_sender_are_not_rate_limited() {
    const SEQUENTIAL: usize = 25; // one SMTP session (the default Stalwart cap is 10 per session)
    const PARALLEL: usize = 35; // over 10 connections at once (default Stalwart cap: 5/s per IP)
    support::init_crypto();
    for server in support::servers() {
        let label = server.label();
        let from = server.account("dispatcher");
        let to = server.account("outsider");
        let jmap = server.jmap(&to).await;
        let state = jmap.email_state().await;
        let token = support::unique_token();
        let envelope = mail::envelope(&from.email, &[&to.email]);
        let message = |i: usize| {
            mail::message(
                &from.email,
                &to.email,
                &format!("taskmail test {token} #{i}"),
                &format!("{token}-{i}@{}", server.domain),
                &[],
                "burst",
            )
        };
        let start = Instant::now();

        let one_session = mail::submission(&server, Some(&from), 1);
        for i in 0..SEQUENTIAL {
            one_session
                .send_raw(&envelope, &message(i))
                .await
                .unwrap_or_else(|e| panic!("{label}: message {i} on one session: {e}"));
        }
        let pool = mail::submission(&server, Some(&from), 10);
        let mut sends = JoinSet::new();
        for i in SEQUENTIAL..SEQUENTIAL + PARALLEL {
            let (pool, envelope, raw) = (pool.clone(), envelope.clone(), message(i));
            sends.spawn(async move { (i, pool.send_raw(&envelope, &raw).await) });
        }
        while let Some(joined) = sends.join_next().await {
            let (i, result) = joined.unwrap_or_else(|e| panic!("{label}: send task: {e}"));
            result.unwrap_or_else(|e| panic!("{label}: parallel message {i}: {e}"));
        }
        let submitted = start.elapsed();

        let arrived = jmap
            .wait_for_token(
                &state,
                &token,
                SEQUENTIAL + PARALLEL,
                &[],
                Duration::from_secs(90),
            )
            .await;
        assert_eq!(arrived.len(), SEQUENTIAL + PARALLEL, "{label}");
        eprintln!(
            "{label}: {} messages from one sender submitted in {} ms ({SEQUENTIAL} on one session, \
             {PARALLEL} over 10 parallel sessions), all in the Inbox after {} ms",
            SEQUENTIAL + PARALLEL,
            submitted.as_millis(),
            start.elapsed().as_millis()
        );
    }
}

#[tokio::test]
async fn jmap_requests_are_not_rate_limited() {
    // Stalwart's default is 1000 requests per minute per account (then 429)
    const REQUESTS: usize = 1100;
    const CONCURRENCY: usize = 4;
    for server in support::servers() {
        let label = server.label();
        let jmap = server.jmap(&server.account("dispatcher")).await;
        let start = Instant::now();
        let mut tasks = JoinSet::new();
        for worker in 0..CONCURRENCY {
            let jmap = jmap.clone();
            tasks.spawn(async move {
                for _ in (worker..REQUESTS).step_by(CONCURRENCY) {
                    jmap.call("Email/get", json!({ "ids": [] })).await;
                }
            });
        }
        while let Some(joined) = tasks.join_next().await {
            joined.unwrap_or_else(|e| panic!("{label}: JMAP request task: {e}"));
        }
        eprintln!(
            "{label}: {REQUESTS} JMAP requests from one account in {} ms, none refused",
            start.elapsed().as_millis()
        );
    }
}
