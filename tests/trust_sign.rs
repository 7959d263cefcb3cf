//! Agent signatures (`X-ASMTP-Signature`, README "Agent signatures") end to end, on every
//! server: a worker whose grant for `dispatcher@` requires a signature and pins the
//! dispatcher's key, and a dispatcher that signs with the library.
//!
//! - a validly signed dispatch runs, and the worker's own ack and result (the worker has a key)
//!   carry a signature that verifies with its `.pub`;
//! - the same signed mail with its Subject, its TaskId or its body changed after signing, an
//!   unsigned one, and one signed with another key are refused: no ack, nothing runs, the
//!   audit rule says why;
//! - `taskmail keys new|show` (black box).
//!
//! With `TASKMAIL_REQUIRE_SERVERS=1` a missing server fails the test.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;
use taskmail::daemon::EventKind;
use taskmail::trust::keys;
use taskmail::trust::sign::{self, BodyView, HeaderView, PublicKey, SigningKey};
use taskmail::wire::aamp::{AampMessage, Dispatch, Payload, Priority, Status, TaskId};
use taskmail::wire::message::{Mailbox, Outbound};

use support::daemon::{Got, Mailer, REPLY_TIMEOUT, Worker, on_every_server, task_id};

/// The worker config: signature required from dispatcher@, its key pinned; authentication
/// verdicts off (this test is about the signature layer, on both servers).
fn extra(server: &support::Server, dispatcher_key: &PublicKey) -> String {
    format!(
        r#"
[trust]
require-authentication = false

[[trust.grants]]
account = "worker"
peer = "dispatcher@{domain}"
intents = ["task.dispatch", "task.cancel"]
require-signature = true
peer-key = "{key}"
"#,
        domain = server.domain,
        key = dispatcher_key.to_text(),
    )
}

/// A dispatch from `mailer` to the worker, not yet rendered.
fn dispatch(mailer: &Mailer, id: &str, instructions: &str) -> Outbound {
    let message = AampMessage::new(
        TaskId::new(id),
        Payload::Dispatch(Dispatch {
            title: format!("Signed test {id}"),
            instructions: instructions.to_owned(),
            priority: Priority::Normal,
            ..Dispatch::default()
        }),
    );
    let now = taskmail::clock::now();
    Outbound::aamp(
        &message,
        Mailbox::new(&mailer.email),
        vec![Mailbox::new(&mailer.worker)],
        now,
        taskmail::ids::message_id(now, &taskmail::ids::domain_of(&mailer.email)),
    )
}

/// Replaces `from` by `to` once in the header section (`head = true`) or the body.
fn tamper(raw: &[u8], head: bool, from: &str, to: &str) -> Vec<u8> {
    let text = String::from_utf8(raw.to_vec()).unwrap();
    let (h, b) = text.split_once("\r\n\r\n").unwrap();
    let (h, b) = if head {
        assert!(h.contains(from), "{from} not in the header: {h}");
        (h.replacen(from, to, 1), b.to_owned())
    } else {
        assert!(b.contains(from), "{from} not in the body: {b}");
        (h.to_owned(), b.replacen(from, to, 1))
    };
    format!("{h}\r\n\r\n{b}").into_bytes()
}

/// Submits `raw` and waits for the worker's refusal of `message_id`; returns its rule.
async fn refused_rule(worker: &Worker, mailer: &Mailer, raw: &[u8], message_id: &str) -> String {
    mailer.submit(raw).await;
    let event = worker
        .wait_event(
            "the refusal",
            REPLY_TIMEOUT,
            |e| matches!(e, EventKind::Refused { message_id: Some(m), .. } if m == message_id),
        )
        .await;
    match event.kind {
        EventKind::Refused { rule, .. } => rule,
        other => panic!("{other:?}"),
    }
}

/// Checks that `got` (a mail the worker sent) carries a valid signature of `key`.
fn assert_signed_by(got: &Got, key: &PublicKey, label: &str) {
    let inbound = &got.fetched.inbound;
    let value = inbound.headers.get(sign::HEADER);
    assert!(value.is_some(), "{label}: no {} header", sign::HEADER);
    let verified = sign::verify_headers(
        &HeaderView::of_inbound(inbound),
        value,
        Some(key),
        true,
        taskmail::clock::now(),
        Duration::from_secs(3600),
    )
    .unwrap_or_else(|e| panic!("{label}: {e}"));
    assert_eq!(verified.key_id, key.key_id());
    verified
        .check_body(BodyView::of_inbound(inbound.body.as_ref().unwrap()))
        .unwrap_or_else(|e| panic!("{label}: body: {e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_dispatches_run_and_tampered_unsigned_or_foreign_ones_are_refused() {
    on_every_server(|server| async move {
        let dir = tempfile::tempdir().unwrap();
        let dispatcher_key = SigningKey::from_seed(&{
            let mut seed = [0u8; 32];
            seed[..8].copy_from_slice(b"dispatch");
            seed
        });
        let stranger_key = keys::generate().unwrap();
        // The worker's own key, in its state dir before it starts: its mail is signed.
        let state = dir.path().join("state");
        let worker_key = keys::generate().unwrap();
        keys::write(&state, "worker", &worker_key, false).unwrap();
        let worker_pub = keys::load_public(&state, "worker").unwrap().unwrap();
        assert_eq!(worker_pub, worker_key.public_key());

        let worker = Worker::start(
            &server,
            dir.path(),
            "echo",
            &extra(&server, &dispatcher_key.public_key()),
        )
        .await;
        let dispatcher = Mailer::new(&server, "dispatcher").await;
        let token = support::unique_token();
        let label = server.label();

        // Refused: each prepared, submitted, and its refusal awaited, all at once.
        let signed = |id: &str, text: &str, key: Option<&SigningKey>| {
            let mut out = dispatch(&dispatcher, id, text);
            if let Some(key) = key {
                key.sign_outbound(&mut out, taskmail::clock::now());
            }
            (out.message_id.clone(), out.render())
        };
        let subject_id = task_id(&token, "sig-subject");
        let (subject_mid, raw) = signed(&subject_id, "Echo this.", Some(&dispatcher_key));
        let subject_raw = tamper(&raw, true, "Signed test", "Signed TEST");
        let taskid_id = task_id(&token, "sig-taskid");
        let (taskid_mid, raw) = signed(&taskid_id, "Echo this.", Some(&dispatcher_key));
        let taskid_changed = format!("{taskid_id}-x");
        let taskid_raw = tamper(
            &raw,
            true,
            &format!("X-AAMP-TaskId: {taskid_id}"),
            &format!("X-AAMP-TaskId: {taskid_changed}"),
        );
        let body_id = task_id(&token, "sig-body");
        let (body_mid, raw) = signed(&body_id, "Echo the word apple.", Some(&dispatcher_key));
        let body_raw = tamper(&raw, false, "apple", "rm -rf");
        let unsigned_id = task_id(&token, "sig-unsigned");
        let (unsigned_mid, unsigned_raw) = signed(&unsigned_id, "Echo this.", None);
        let foreign_id = task_id(&token, "sig-foreign");
        let (foreign_mid, foreign_raw) = signed(&foreign_id, "Echo this.", Some(&stranger_key));
        let (subject, taskid, body, unsigned, foreign) = tokio::join!(
            refused_rule(&worker, &dispatcher, &subject_raw, &subject_mid),
            refused_rule(&worker, &dispatcher, &taskid_raw, &taskid_mid),
            refused_rule(&worker, &dispatcher, &body_raw, &body_mid),
            refused_rule(&worker, &dispatcher, &unsigned_raw, &unsigned_mid),
            refused_rule(&worker, &dispatcher, &foreign_raw, &foreign_mid),
        );
        assert_eq!(subject, "signature-invalid", "{label}: Subject changed");
        assert_eq!(taskid, "signature-invalid", "{label}: TaskId changed");
        assert_eq!(body, "signature-body-changed", "{label}: body changed");
        assert_eq!(unsigned, "signature-missing", "{label}: unsigned");
        assert_eq!(foreign, "signature-key-changed", "{label}: another key");
        eprintln!(
            "{label}: refused subject={subject} taskid={taskid} body={body} unsigned={unsigned} foreign={foreign}"
        );

        // Admitted: a validly signed dispatch runs; the worker's replies are signed.
        let good_id = task_id(&token, "sig-good");
        let words = format!("Please echo {token} signed.");
        let (good_mid, good_raw) = signed(&good_id, &words, Some(&dispatcher_key));
        dispatcher.submit(&good_raw).await;
        let ack = dispatcher.wait_intent(&good_id, "task.ack").await;
        let result = dispatcher.wait_intent(&good_id, "task.result").await;
        let r = result.result().unwrap();
        assert_eq!(r.status, Status::Completed, "{label}: {r:?}");
        assert!(r.output.contains(&words), "{label}: {}", r.output);
        assert_eq!(
            result.fetched.inbound.in_reply_to,
            std::slice::from_ref(&good_mid)
        );
        assert_signed_by(&ack, &worker_pub, &format!("{label}: ack"));
        assert_signed_by(&result, &worker_pub, &format!("{label}: result"));
        // The admission is audited with the key id.
        let store = taskmail::store::Store::open(&state.join(taskmail::store::FILE_NAME)).unwrap();
        let audit = store.audit_list(10_000, None).unwrap();
        let mine = |mid: &str| {
            audit
                .iter()
                .filter(|a| a.entry.message_id.as_deref() == Some(mid))
                .map(|a| (a.entry.verdict.clone(), a.entry.rule.clone().unwrap_or_default()))
                .collect::<Vec<_>>()
        };
        let key_id = dispatcher_key.public_key().key_id();
        assert!(
            mine(&good_mid)
                .iter()
                .any(|(_, rule)| rule.ends_with(&format!("; signature:{key_id}"))),
            "{label}: {:?}",
            mine(&good_mid)
        );
        for (mid, rule) in [
            (&subject_mid, "signature-invalid"),
            (&unsigned_mid, "signature-missing"),
            (&foreign_mid, "signature-key-changed"),
            (&body_mid, "signature-body-changed"),
        ] {
            assert!(
                mine(mid).iter().any(|(v, r)| v == "refused" && r == rule),
                "{label}: {mid}: {:?}",
                mine(mid)
            );
            eprintln!("{label}: audit {mid}: {:?}", mine(mid));
        }

        // Nothing of the refused ones was acked or ran (the good one went all the way since).
        for id in [&subject_id, &taskid_changed, &taskid_id, &body_id, &unsigned_id, &foreign_id] {
            assert!(dispatcher.all(id).await.is_empty(), "{label}: {id} got mail");
            assert!(worker.events_for(id).is_empty(), "{label}: {id} ran");
            assert!(!worker.work_dir(id).exists(), "{label}: {id} has a work dir");
        }
        worker.stop().await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// taskmail keys new|show

fn taskmail(config: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_taskmail"))
        .arg("-c")
        .arg(config)
        .args(args)
        .env_remove("TASKMAIL_CONFIG")
        .output()
        .unwrap()
}

#[test]
fn keys_new_and_show() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            r#"
state-dir = "{state}"
[accounts.agent]
email = "agent@example.test"
password = {{ raw = "x" }}
smtp = {{ host = "127.0.0.1", port = 5587, tls = "plaintext", allow-plaintext = true }}
jmap = {{ session-url = "http://127.0.0.1:8080/.well-known/jmap" }}
"#,
            state = state.display()
        ),
    )
    .unwrap();

    // No key yet: show fails with a hint.
    let out = taskmail(&config, &["keys", "show", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let error: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(error["kind"], "key");
    assert!(
        error["details"][0]
            .as_str()
            .unwrap()
            .contains("taskmail keys new")
    );

    let out = taskmail(&config, &["keys", "new", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let made: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(made["account"], "agent");
    assert_eq!(made["created"], true);
    let public = made["publicKey"].as_str().unwrap();
    let parsed = PublicKey::parse(public).unwrap();
    assert_eq!(made["keyId"], parsed.key_id());
    // The files: the secret 0600 and never printed; the .pub is the one line peers pin.
    let secret = std::fs::read_to_string(keys::secret_path(&state, "agent")).unwrap();
    let seed = secret.trim().strip_prefix(keys::SECRET_PREFIX).unwrap();
    assert!(!String::from_utf8_lossy(&out.stdout).contains(seed));
    assert!(!String::from_utf8_lossy(&out.stderr).contains(seed));
    assert_eq!(
        std::fs::read_to_string(keys::public_path(&state, "agent")).unwrap(),
        format!("{public}\n")
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(keys::secret_path(&state, "agent"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    // Show prints the same; new without --force refuses and keeps the key.
    let out = taskmail(&config, &["keys", "show", "--json", "--account", "agent"]);
    assert!(out.status.success());
    let shown: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown["publicKey"], public);
    assert_eq!(shown["keyId"], parsed.key_id());
    let out = taskmail(&config, &["keys", "new"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("exists") && stderr.contains("--force"),
        "{stderr}"
    );
    let out = taskmail(&config, &["keys", "show"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains(public));

    // --force replaces it.
    let out = taskmail(&config, &["keys", "new", "--force", "--json"]);
    assert!(out.status.success());
    let again: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_ne!(again["publicKey"], public);

    // An unknown account is a usage error.
    let out = taskmail(&config, &["keys", "new", "--account", "nobody"]);
    assert_eq!(out.status.code(), Some(2));
}
