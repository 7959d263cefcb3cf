//! The trust gate end to end, against real mail authentication (issue 6, "Show").
//!
//! On Stalwart (real DKIM signing, SPF/DKIM/DMARC verification through the harness's DNS, see
//! `tests/auth.rs`), with `[trust] authserv-id` set and authentication required:
//! (a) a spoofed From (raw SMTP to the MX port without AUTH, claiming dispatcher@) is refused:
//! no ack, no result, an audit row with the auth rule; (b) a forged `Authentication-Results`
//! with our authserv-id does not help; (c) an authenticated agent@other.test without a grant is
//! refused; (d) after `taskmail pair new` and `taskmail pair request URL` (the agent's side),
//! pair.respond completed arrives and the agent's dispatch runs (ack + result); the same code
//! again is rejected; (e) a grant revoked while the daemon is down refuses the mail already
//! waiting; (f) the same Message-ID submitted twice runs once.
//!
//! On Cyrus+Postfix (no Authentication-Results), with `trust.same-server-submission`: the
//! authenticated submission of dispatcher@ is admitted, a spoof through the MX port refused.
//!
//! Run with `-- --nocapture` to print each attack, its verdict and the audit line it produced.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use taskmail::daemon::EventKind;
use taskmail::store::{AuditRecord, Store};
use taskmail::wire::aamp::{AampMessage, Dispatch, PairRequest, Payload, Priority, Status, TaskId};
use taskmail::wire::message::{Mailbox, Outbound};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpStream;

use support::daemon::*;
use support::{Server, unique_token};

/// How long a verdict may take to show up.
const VERDICT_TIMEOUT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------
// Helpers

/// The `taskmail` binary with `-c <dir>/<config>`.
fn cli(dir: &Path, config: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_taskmail"))
        .arg("-c")
        .arg(dir.join(config))
        .args(args)
        .env("HOME", dir)
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("TASKMAIL_CONFIG")
        .env_remove("TASKMAIL_LOG")
        .output()
        .unwrap()
}

fn ok_json(label: &str, out: &Output) -> serde_json::Value {
    assert_eq!(
        out.status.code(),
        Some(0),
        "{label}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A dispatch as raw bytes: `(Message-ID, bytes)`.
fn dispatch_bytes(from: &str, to: &str, task_id: &str, extra_top: &str) -> (String, Vec<u8>) {
    let now = taskmail::clock::now();
    let message = AampMessage::new(
        TaskId::new(task_id),
        Payload::Dispatch(Dispatch {
            title: format!("Trust test {task_id}"),
            instructions: format!("say {task_id}"),
            priority: Priority::Normal,
            ..Dispatch::default()
        }),
    );
    let message_id = taskmail::ids::message_id(now, &taskmail::ids::domain_of(from));
    let outbound = Outbound::aamp(
        &message,
        Mailbox::new(from),
        vec![Mailbox::new(to)],
        now,
        message_id.clone(),
    );
    let mut bytes = extra_top.as_bytes().to_vec();
    bytes.extend(outbound.render());
    (message_id, bytes)
}

/// One SMTP reply (multi-line aware).
async fn reply(reader: &mut BufReader<tokio::net::tcp::OwnedReadHalf>) -> (u16, String) {
    let mut text = String::new();
    loop {
        let mut line = String::new();
        let n = tokio::time::timeout(Duration::from_secs(30), reader.read_line(&mut line))
            .await
            .expect("SMTP reply timed out")
            .expect("SMTP read failed");
        assert!(n > 0, "SMTP connection closed; so far: {text}");
        text.push_str(line.trim_end());
        text.push(' ');
        if line.as_bytes().get(3) != Some(&b'-') {
            let code = line.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0);
            return (code, text.trim_end().to_owned());
        }
    }
}

/// Hands `raw` to the MX `port` without authentication, as any host on the network could.
async fn spoof(server: &Server, port: u16, mail_from: &str, rcpt: &str, raw: &[u8]) {
    let stream = TcpStream::connect((server.smtp_host.as_str(), port))
        .await
        .unwrap();
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    assert_eq!(reply(&mut reader).await.0, 220);
    for (command, expect) in [
        ("EHLO spoofer.test\r\n".to_owned(), 250),
        (format!("MAIL FROM:<{mail_from}>\r\n"), 250),
        (format!("RCPT TO:<{rcpt}>\r\n"), 250),
        ("DATA\r\n".to_owned(), 354),
    ] {
        write.write_all(command.as_bytes()).await.unwrap();
        let (code, text) = reply(&mut reader).await;
        assert_eq!(
            code,
            expect,
            "{}: {} -> {text}",
            server.label(),
            command.trim_end()
        );
    }
    let mut data = Vec::with_capacity(raw.len() + 8);
    for line in raw.split_inclusive(|&b| b == b'\n') {
        if line.first() == Some(&b'.') {
            data.push(b'.');
        }
        data.extend_from_slice(line);
    }
    if !data.ends_with(b"\r\n") {
        data.extend_from_slice(b"\r\n");
    }
    data.extend_from_slice(b".\r\n");
    write.write_all(&data).await.unwrap();
    let (code, text) = reply(&mut reader).await;
    assert_eq!(
        code,
        250,
        "{}: end of DATA on {port}: {text}",
        server.label()
    );
    let _ = write.write_all(b"QUIT\r\n").await;
}

/// The audit rows of `message_id` in the worker's store.
fn audit_of(dir: &Path, message_id: &str) -> Vec<AuditRecord> {
    let store = Store::open(&dir.join("state").join(taskmail::store::FILE_NAME)).unwrap();
    store
        .audit_list(10_000, None)
        .unwrap()
        .into_iter()
        .filter(|r| r.entry.message_id.as_deref() == Some(message_id))
        .collect()
}

/// Waits for the gate's refusal of `message_id` and returns its rule.
async fn refused(worker: &Worker, message_id: &str) -> String {
    let event = worker
        .wait_event(
            &format!("refusal of {message_id}"),
            VERDICT_TIMEOUT,
            |e| matches!(e, EventKind::Refused { message_id: Some(m), .. } if m == message_id),
        )
        .await;
    match event.kind {
        EventKind::Refused { rule, .. } => rule,
        _ => unreachable!(),
    }
}

/// Prints one row of the attack table: server, attack, verdict, audit line.
fn report(server: &Server, dir: &Path, attack: &str, message_id: &str) -> Vec<AuditRecord> {
    let rows = audit_of(dir, message_id);
    for r in &rows {
        let e = &r.entry;
        println!(
            "ATTACK | {} | {attack} | {} | audit: at={} account={} message-id={} peer={} verdict={} rule={}",
            server.name,
            e.verdict,
            e.at.format("%H:%M:%S%.3f"),
            e.account,
            e.message_id.as_deref().unwrap_or("-"),
            e.peer.as_deref().unwrap_or("-"),
            e.verdict,
            e.rule.as_deref().unwrap_or("-"),
        );
    }
    assert!(
        !rows.is_empty(),
        "{}: {attack}: no audit row for {message_id}",
        server.label()
    );
    rows
}

/// Asserts no ack or result of `task_id` arrived at `mailer` within `quiet`.
async fn nothing_back(mailer: &Mailer, task_id: &str, quiet: Duration) {
    tokio::time::sleep(quiet).await;
    let back = mailer.all(task_id).await;
    assert!(
        back.is_empty(),
        "{}: a refused message got answers: {:?}",
        mailer.label,
        back.iter().map(|g| g.intent()).collect::<Vec<_>>()
    );
}

/// The worker's config, also written to `<dir>/worker.toml` for the CLI.
fn worker_extra(server: &Server) -> String {
    match server.authserv_id() {
        Some(id) => format!("\n[trust]\nauthserv-id = \"{id}\"\n"),
        None => "\n[trust]\nsame-server-submission = true\n".to_owned(),
    }
}

fn write_worker_config(server: &Server, dir: &Path, extra: &str) {
    std::fs::write(
        dir.join("worker.toml"),
        worker_config_text(server, dir, "echo", extra),
    )
    .unwrap();
}

/// A config for `agent@other.test` as a dispatcher, with the same authentication rules.
fn write_agent_config(server: &Server, dir: &Path, email: &str, password: &str) {
    let text = format!(
        r#"
state-dir = "{dir}/agent-state"
[accounts.agent]
email = "{email}"
password = {{ raw = "{password}" }}
smtp = {{ host = "{host}", port = {port}, tls = "plaintext", allow-plaintext = true, timeout = "15s" }}
jmap = {{ session-url = "{session}", poll-interval = "30s" }}
[dispatcher]
account = "agent"
[trust]
authserv-id = "{id}"
"#,
        dir = dir.display(),
        host = server.smtp_host,
        port = server.submission_port,
        session = server.jmap_session_url,
        id = server.authserv_id().unwrap(),
    );
    std::fs::write(dir.join("agent.toml"), text).unwrap();
}

// ---------------------------------------------------------------------------------------------
// The cases

/// (a), (b), (c), (f) on Stalwart; the same-server rule on Cyrus+Postfix.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn spoofs_strangers_and_replays_are_refused() {
    on_every_server(|server| async move {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let extra = worker_extra(&server);
        let worker = Worker::start(&server, d, "echo", &extra).await;
        let dispatcher = Mailer::new(&server, "dispatcher").await;
        let to = dispatcher.worker.clone();
        let token = unique_token();

        // (a) a spoofed From through the MX port, no AUTH.
        let task = task_id(&token, "spoof");
        let (spoof_id, raw) = dispatch_bytes(&dispatcher.email, &to, &task, "");
        spoof(&server, server.smtp_port, &dispatcher.email, &to, &raw).await;
        let rule = refused(&worker, &spoof_id).await;
        let expected = if server.authserv_id().is_some() {
            "auth:dmarc=none"
        } else {
            "auth:not-a-submission:ESMTP"
        };
        assert_eq!(rule, expected, "{}", server.label());
        let rows = report(&server, d, "spoofed From dispatcher@ via MX, no AUTH", &spoof_id);
        assert_eq!(rows[0].entry.verdict, "refused");
        assert_eq!(rows[0].entry.rule.as_deref(), Some(expected));

        // (b) the same, with a forged Authentication-Results claiming our authserv-id.
        let forged_task = task_id(&token, "forged");
        let forged_header = format!(
            "Authentication-Results: {}; dkim=pass header.d={d} header.s=forged; dmarc=pass header.from={d}\r\n",
            server.authserv_id().unwrap_or("mail.example.test"),
            d = server.domain
        );
        let (forged_id, raw) = dispatch_bytes(&dispatcher.email, &to, &forged_task, &forged_header);
        spoof(&server, server.smtp_port, &dispatcher.email, &to, &raw).await;
        assert_eq!(refused(&worker, &forged_id).await, expected, "{}", server.label());
        report(&server, d, "spoof + forged Authentication-Results (our authserv-id)", &forged_id);

        // The real dispatcher, authenticated: admitted, ack and result.
        let real = task_id(&token, "real");
        let real_id = dispatcher.dispatch(&real, "hello", None, None).await;
        dispatcher.wait_intent(&real, "task.ack").await;
        let result = dispatcher.wait_intent(&real, "task.result").await;
        assert_eq!(result.result().unwrap().status, Status::Completed);
        let rows = report(&server, d, "authenticated dispatcher@ (control)", &real_id);
        let rule = rows[0].entry.rule.clone().unwrap_or_default();
        let evidence = if server.authserv_id().is_some() {
            format!("[dmarc=pass:{}]", server.domain)
        } else {
            "[same-server-submission:ESMTPA]".to_owned()
        };
        assert!(rule.ends_with(&evidence), "{}: {rule}", server.label());

        // (f) the same Message-ID submitted twice runs once.
        let replay = task_id(&token, "replay");
        let (replay_id, raw) = dispatch_bytes(&dispatcher.email, &to, &replay, "");
        dispatcher.submit(&raw).await;
        dispatcher.submit(&raw).await;
        dispatcher.wait_intent(&replay, "task.result").await;
        // NOTE: Cyrus's LMTP suppresses a second delivery of the same Message-ID to a mailbox
        // (duplicatesuppression), so there the copy never reaches the gate at all.
        let deadline = Instant::now() + Duration::from_secs(15);
        let dropped = loop {
            let seen = worker.events().iter().any(|e| {
                matches!(&e.kind, EventKind::Ignored { message_id: Some(m), verdict } if *m == replay_id && verdict == "ignored:duplicate")
            });
            if seen || Instant::now() > deadline {
                break seen;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert!(
            dropped || server.name == "cyrus",
            "{}: the second copy was never dropped as a duplicate",
            server.label()
        );
        if !dropped {
            println!("NOTE: {} delivered the replayed Message-ID once (LMTP duplicate suppression)", server.label());
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(worker.started(&replay), 1, "{}: ran once", server.label());
        assert_eq!(results(&dispatcher.all(&replay).await), 1);
        report(&server, d, "same Message-ID submitted twice", &replay_id);

        // No answer ever reached the spoofer's victim.
        nothing_back(&dispatcher, &task, Duration::ZERO).await;
        nothing_back(&dispatcher, &forged_task, Duration::ZERO).await;

        // (c) an authenticated stranger at the other domain, no grant (Stalwart only).
        if let Some(agent) = server.other_account("agent") {
            let agent = Mailer::with_account(
                &server,
                account_as(&server, "agent", &agent.email, &agent.password),
            )
            .await;
            let stranger = task_id(&token, "stranger");
            let stranger_id = agent.dispatch(&stranger, "hi", None, None).await;
            assert_eq!(refused(&worker, &stranger_id).await, "not-allowed");
            report(&server, d, "agent@other.test (dkim+dmarc pass), no grant", &stranger_id);
            nothing_back(&agent, &stranger, Duration::from_secs(2)).await;
        }
        worker.stop().await;
    })
    .await;
}

/// (d) pairing by code, and (e) a revoke while the daemon is down, on Stalwart (the only
/// server with a second, independently authenticated domain).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pairing_admits_and_a_revoke_refuses_waiting_mail() {
    on_every_server(|server| async move {
        let Some(agent_account) = server.other_account("agent") else {
            println!(
                "NOTE: {} has no second domain; pairing across domains is shown on Stalwart",
                server.label()
            );
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let extra = worker_extra(&server);
        write_worker_config(&server, d, &extra);
        write_agent_config(&server, d, &agent_account.email, &agent_account.password);
        let worker = Worker::start(&server, d, "echo", &extra).await;
        let agent = Mailer::with_account(
            &server,
            account_as(
                &server,
                "agent",
                &agent_account.email,
                &agent_account.password,
            ),
        )
        .await;
        let token = unique_token();

        // (d) pair new on the worker's side; pair request on the agent's.
        let new = ok_json(
            "pair new",
            &cli(d, "worker.toml", &["pair", "new", "--json"]),
        );
        let url = new["url"].as_str().unwrap().to_owned();
        let code = new["code"].as_str().unwrap().to_owned();
        println!("{}: pair new -> {url}", server.label());
        let paired = ok_json(
            "pair request",
            &cli(
                d,
                "agent.toml",
                &["pair", "request", &url, "--wait", "60s", "--json"],
            ),
        );
        println!("{}: pair request -> {paired}", server.label());
        assert_eq!(paired["status"], "completed");
        assert_eq!(paired["grantRecorded"], true);
        let request_id = paired["messageId"].as_str().unwrap().to_owned();
        worker
            .wait_event("paired", VERDICT_TIMEOUT, |e| {
                matches!(e, EventKind::Paired { .. })
            })
            .await;
        report(&server, d, "pair.request with a valid code", &request_id);
        let grants = ok_json(
            "grants list",
            &cli(d, "worker.toml", &["grants", "list", "--json"]),
        );
        assert!(
            grants["grants"]
                .as_array()
                .unwrap()
                .iter()
                .any(|g| g["peer"] == agent.email.as_str()
                    && g["source"] == "pairing"
                    && g["state"] == "active"),
            "{grants}"
        );

        // Its dispatch now runs.
        let task = task_id(&token, "paired");
        let dispatch_id = agent.dispatch(&task, "after pairing", None, None).await;
        agent.wait_intent(&task, "task.ack").await;
        let result = agent.wait_intent(&task, "task.result").await;
        assert_eq!(result.result().unwrap().status, Status::Completed);
        report(&server, d, "agent@other.test after pairing", &dispatch_id);

        // The same code again: pair.respond rejected.
        let again = task_id(&token, "again");
        let again_id = agent
            .send_aamp(
                &AampMessage::new(
                    TaskId::new(&again),
                    Payload::PairRequest(PairRequest {
                        pair_code: code.clone(),
                        dispatch_context_rules: Default::default(),
                    }),
                ),
                None,
                Vec::new(),
            )
            .await;
        let answer = agent.wait_intent(&again, "pair.respond").await;
        match &answer.message.as_ref().unwrap().payload {
            Payload::PairRespond(p) => assert_eq!(p.status, Status::Rejected),
            other => panic!("not a pair.respond: {other:?}"),
        }
        let rows = report(&server, d, "pair.request reusing a spent code", &again_id);
        assert_eq!(rows[0].entry.rule.as_deref(), Some("pair-code-used"));

        // (e) revoked while the daemon is down: the waiting mail is refused on restart.
        worker.stop().await;
        let worker_jmap = server.jmap(&server.account("worker")).await;
        let state = worker_jmap.email_state().await;
        let late = task_id(&token, "late");
        let late_id = agent.dispatch(&late, "queued while down", None, None).await;
        worker_jmap
            .wait_for_token(&state, &late, 1, &[], Duration::from_secs(30))
            .await;
        let revoked = ok_json(
            "grants revoke",
            &cli(
                d,
                "worker.toml",
                &["grants", "revoke", &agent.email, "--json"],
            ),
        );
        assert_eq!(revoked["grant"]["state"], "revoked");
        let started = Instant::now();
        let worker = Worker::start(&server, d, "echo", &extra).await;
        assert_eq!(
            refused(&worker, &late_id).await,
            format!("grant-revoked:{}", agent.email)
        );
        println!(
            "{}: refused {:?} after restart",
            server.label(),
            started.elapsed()
        );
        report(
            &server,
            d,
            "dispatch waiting while the grant was revoked (daemon down)",
            &late_id,
        );
        nothing_back(&agent, &late, Duration::from_secs(2)).await;
        worker.stop().await;
    })
    .await;
}

/// Outbound restrictions: Reply-To, Cc and recipient-looking lines in the body or the agent's
/// output never add a recipient; the result goes to the task's peer alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn inbound_content_never_adds_recipients() {
    on_every_server(|server| async move {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let worker = Worker::start(&server, d, "echo", &worker_extra(&server)).await;
        let dispatcher = Mailer::new(&server, "dispatcher").await;
        let human = Mailer::new(&server, "human").await;
        let to = dispatcher.worker.clone();
        let task = task_id(&unique_token(), "recipients");
        let headers = format!(
            "Reply-To: {h}\r\nCc: {h}\r\nBcc: {h}\r\nX-AAMP-Reply-To: {h}\r\n",
            h = human.email
        );
        let (message_id, mut raw) = dispatch_bytes(&dispatcher.email, &to, &task, &headers);
        // The echo agent repeats the instructions: make them look like headers too.
        let marker = format!("say {task}");
        let injected = format!("say {task}\r\nTo: {h}\r\nCc: {h}", h = human.email);
        let text = String::from_utf8(raw.clone()).unwrap();
        assert!(text.contains(&marker));
        raw = text.replacen(&marker, &injected, 1).into_bytes();
        dispatcher.submit(&raw).await;
        let result = dispatcher.wait_intent(&task, "task.result").await;
        let inbound = &result.fetched.inbound;
        let addresses = |list: &[taskmail::wire::message::Mailbox]| {
            list.iter().map(|m| m.email.clone()).collect::<Vec<_>>()
        };
        assert_eq!(addresses(&inbound.to), vec![dispatcher.email.clone()], "{}", server.label());
        assert!(inbound.cc.is_empty(), "{}: Cc {:?}", server.label(), inbound.cc);
        // Nothing of the task ever reaches the address the inbound content named.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let leaked = human.all(&task).await;
        assert!(
            leaked.is_empty(),
            "{}: inbound content added a recipient: {:?}",
            server.label(),
            leaked.iter().map(|g| g.intent()).collect::<Vec<_>>()
        );
        report(&server, d, "Reply-To/Cc/Bcc + To: lines in the body name another recipient", &message_id);
        println!(
            "ATTACK | {} | Reply-To/Cc/Bcc/body To: lines | result only to {} | human@ got 0 messages",
            server.name, dispatcher.email
        );
        worker.stop().await;
    })
    .await;
}

/// Pairing carries keys both ways and pins them: after `keys new` on both sides and a pairing,
/// the peer's signed dispatch runs (`dispatch --wait` verifies the worker's signed result with
/// the key the pair.respond brought), and its unsigned mail is refused. Stalwart only (the
/// second, independently authenticated domain).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pairing_exchanges_keys_and_the_pinned_keys_are_enforced() {
    on_every_server(|server| async move {
        let Some(agent_account) = server.other_account("agent") else {
            println!(
                "NOTE: {} has no second domain; pairing with keys is shown on Stalwart",
                server.label()
            );
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let extra = worker_extra(&server);
        write_worker_config(&server, d, &extra);
        write_agent_config(&server, d, &agent_account.email, &agent_account.password);
        let worker_key = ok_json(
            "worker keys new",
            &cli(d, "worker.toml", &["keys", "new", "--json"]),
        );
        let agent_key = ok_json(
            "agent keys new",
            &cli(d, "agent.toml", &["keys", "new", "--json"]),
        );
        let worker = Worker::start(&server, d, "echo", &extra).await;
        let agent = Mailer::with_account(
            &server,
            account_as(
                &server,
                "agent",
                &agent_account.email,
                &agent_account.password,
            ),
        )
        .await;
        let token = unique_token();

        let new = ok_json(
            "pair new",
            &cli(d, "worker.toml", &["pair", "new", "--json"]),
        );
        let url = new["url"].as_str().unwrap().to_owned();
        let paired = ok_json(
            "pair request",
            &cli(
                d,
                "agent.toml",
                &["pair", "request", &url, "--wait", "60s", "--json"],
            ),
        );
        assert_eq!(paired["status"], "completed", "{paired}");
        assert_eq!(
            paired["peerKey"], true,
            "the worker's pair.respond carried its key: {paired}"
        );
        worker
            .wait_event("paired", VERDICT_TIMEOUT, |e| {
                matches!(e, EventKind::Paired { .. })
            })
            .await;
        // Both sides pinned the other's public key.
        let pinned = |config: &str, peer: &str| -> serde_json::Value {
            let grants = ok_json(
                "grants list",
                &cli(d, config, &["grants", "list", "--json"]),
            );
            grants["grants"]
                .as_array()
                .unwrap()
                .iter()
                .find(|g| g["peer"] == peer)
                .cloned()
                .unwrap_or_else(|| panic!("no grant for {peer} in {config}: {grants}"))
        };
        let on_worker = pinned("worker.toml", &agent.email);
        let on_agent = pinned("agent.toml", &agent.worker);
        println!(
            "{}: worker's grant {on_worker}\n{}: agent's grant {on_agent}",
            server.label(),
            server.label()
        );
        for (grant, key) in [(&on_worker, &agent_key), (&on_agent, &worker_key)] {
            assert_eq!(
                grant["peerKey"], key["publicKey"],
                "pinned key: {grant} vs {key}"
            );
        }

        // The agent's CLI signs its dispatch; the worker checks it against the pinned key and
        // signs its result; `dispatch --wait` checks that against the key it pinned.
        let out = cli(
            d,
            "agent.toml",
            &[
                "dispatch",
                "--to",
                &agent.worker,
                "--title",
                &format!("Signed {token}"),
                "--body",
                "signed both ways",
                "--wait",
                "--timeout",
                "60s",
                "--json",
            ],
        );
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let lines: Vec<serde_json::Value> = stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let dispatched = lines.iter().find(|l| l["event"] == "dispatched").unwrap();
        let result = lines.iter().find(|l| l["event"] == "result").unwrap();
        assert_eq!(result["status"], "completed", "{result}");
        let signed_id = dispatched["messageId"]
            .as_str()
            .unwrap()
            .trim_matches(['<', '>'])
            .to_owned();
        let rows = report(
            &server,
            d,
            "paired peer's signed dispatch (keys pinned by pairing)",
            &signed_id,
        );
        let rule = rows[0].entry.rule.clone().unwrap_or_default();
        assert!(
            rule.contains("; signature:"),
            "admitted by its signature: {rule}"
        );
        // On the agent's side the worker's result verified against the pinned key.
        let agent_store =
            Store::open(&d.join("agent-state").join(taskmail::store::FILE_NAME)).unwrap();
        let agent_rows = agent_store.audit_list(1000, None).unwrap();
        assert!(
            agent_rows.iter().any(|r| r.entry.verdict == "admitted"
                && r.entry
                    .rule
                    .as_deref()
                    .is_some_and(|rule| rule.contains("; signature:"))),
            "the worker's signed answers verified on the agent's side: {:#?}",
            agent_rows
                .iter()
                .map(|r| (&r.entry.verdict, &r.entry.rule))
                .collect::<Vec<_>>()
        );

        // Mail from the paired peer without a signature is refused.
        let unsigned = task_id(&token, "unsigned");
        let unsigned_id = agent.dispatch(&unsigned, "no signature", None, None).await;
        assert_eq!(refused(&worker, &unsigned_id).await, "signature-missing");
        report(
            &server,
            d,
            "paired peer's unsigned dispatch (key pinned)",
            &unsigned_id,
        );
        nothing_back(&agent, &unsigned, Duration::from_secs(2)).await;
        worker.stop().await;
    })
    .await;
}
