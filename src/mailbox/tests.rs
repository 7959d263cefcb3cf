//! Unit tests of the ingest path (gate + index) and the envelope policy, on an in-memory store
//! and mails rendered by the codec: no server.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;

use chrono::{TimeZone, Utc};

use super::core::{Ingested, Ingestor};
use super::{ListQuery, Mailbox, MailboxError, SendRequest};
use crate::config::{Config, Env, GrantState, Mode, PeerPattern};
use crate::store::{GrantRecord, GrantSource, Store};
use crate::transport::Fetched;
use crate::wire::asmtp::{ContentPart, Envelope, EnvelopeId, Handle};
use crate::wire::message::Inbound;

const CONFIG: &str = r#"
state-dir = "/tmp/taskmail-mailbox-unit"
[accounts.b]
default = true
email = "worker2@example.test"
handle = "@t.worker2"
password = { raw = "p" }
smtp = { host = "127.0.0.1", port = 5587, tls = "plaintext", allow-plaintext = true }
jmap = { session-url = "http://127.0.0.1:8080/.well-known/jmap" }
[worker]
account = "b"
allowed-senders = ["dispatcher@example.test"]
[trust]
require-authentication = false
[asmtp.directory]
"@t.dispatcher" = "dispatcher@example.test"
"@t.outsider" = "outsider@example.test"
"@t.friend" = "friend@example.test"
"#;

fn config() -> Config {
    Config::from_toml_str_with_env(CONFIG, Mode::Strict, &Env::with_home("/tmp")).unwrap()
}

fn h(s: &str) -> Handle {
    Handle::parse(s).unwrap()
}

/// A headers-only Inbox mail carrying an envelope from `from` (address `from_addr`).
fn mail(id: &str, from: &str, from_addr: &str, email_id: &str) -> Fetched {
    let envelope = Envelope::new(
        EnvelopeId::parse(id).unwrap(),
        h(from),
        vec![h("@t.worker2")],
        1_700_000_000_000,
        vec![ContentPart::text("hi")],
    );
    let now = Utc.timestamp_millis_opt(1_700_000_000_000).unwrap();
    let to_addr = |x: &Handle| {
        if *x == h(from) {
            from_addr.to_owned()
        } else {
            "worker2@example.test".to_owned()
        }
    };
    let bytes = envelope
        .to_outbound_mapped("example.test", now, &to_addr)
        .render();
    let mut inbound = Inbound::from_bytes(&bytes).unwrap();
    inbound.body = None;
    Fetched {
        id: email_id.to_owned(),
        inbound,
        mailbox_ids: BTreeSet::from(["inbox".to_owned()]),
        keywords: BTreeSet::new(),
        received_at: None,
    }
}

const ID1: &str = "01JDK3T8ZQ4W5X6Y7Z8A9B0C1D";
const ID2: &str = "01JDK3T8ZQ4W5X6Y7Z8A9B0C1E";
const ID3: &str = "01JDK3T8ZQ4W5X6Y7Z8A9B0C1F";

#[test]
fn ingest_admits_allowed_senders_refuses_others_and_dedupes_by_envelope_id() {
    let config = config();
    let store = Store::open_in_memory().unwrap();
    let ingestor = Ingestor::from_config(&config, "b").unwrap();
    let now = Utc.timestamp_millis_opt(1_800_000_000_000).unwrap();

    let ok = mail(ID1, "@t.dispatcher", "dispatcher@example.test", "e1");
    let Ingested::Indexed(frame) = ingestor.ingest(&store, &ok, now).unwrap() else {
        panic!("not indexed");
    };
    assert_eq!(frame.from, h("@t.dispatcher"));
    assert_eq!(frame.created_at, 1_800_000_000_000);
    // The same envelope again, even under another JMAP id: a duplicate.
    let again = mail(ID1, "@t.dispatcher", "dispatcher@example.test", "e9");
    assert_eq!(
        ingestor.ingest(&store, &again, now).unwrap(),
        Ingested::Duplicate(frame.id.clone())
    );
    // Nobody admits the outsider.
    let bad = mail(ID2, "@t.outsider", "outsider@example.test", "e2");
    assert_eq!(
        ingestor.ingest(&store, &bad, now).unwrap(),
        Ingested::Refused("not-allowed".to_owned())
    );
    assert!(
        store
            .mailbox_get("b", &EnvelopeId::parse(ID2).unwrap())
            .unwrap()
            .is_none()
    );
    let audit = store.audit_list(10, None).unwrap();
    assert!(audit.iter().any(|r| r.entry.verdict == "rejected"));
    // A spoofed handle (From is not the handle's address) is invalid, never indexed.
    let spoofed = mail(ID3, "@t.dispatcher", "outsider@example.test", "e3");
    assert!(matches!(
        ingestor.ingest(&store, &spoofed, now).unwrap(),
        Ingested::Invalid(_)
    ));
    // Not ASMTP at all.
    let mut plain = mail(ID3, "@t.dispatcher", "dispatcher@example.test", "e4");
    plain.inbound.headers = crate::wire::headers::HeaderMap::default();
    assert_eq!(
        ingestor.ingest(&store, &plain, now).unwrap(),
        Ingested::NotAsmtp
    );
}

fn grant(peer: &str, state: GrantState) -> GrantRecord {
    let now = Utc.timestamp_millis_opt(1_700_000_000_000).unwrap();
    GrantRecord {
        account: "b".to_owned(),
        peer: PeerPattern::parse(peer).unwrap(),
        intents: vec!["task.result".to_owned()],
        state,
        expires: None,
        dispatch_context_rules: Default::default(),
        require_signature: false,
        peer_key: None,
        source: GrantSource::Cli,
        created_at: now,
        updated_at: now,
    }
}

#[test]
fn policy_uses_grants_of_any_intent_and_blocks_win() {
    let config = config();
    let store = Store::open_in_memory().unwrap();
    let policy = super::policy::Policy::from_config(&config, "b", crate::clock::now());
    let now = Utc.timestamp_millis_opt(1_800_000_000_000).unwrap();
    assert!(policy.peer(&store, "friend@example.test", now).is_err());
    store
        .grant_put(&grant("friend@example.test", GrantState::Active), true)
        .unwrap();
    assert_eq!(
        policy.peer(&store, "Friend@Example.test", now).unwrap(),
        "grant:friend@example.test"
    );
    assert_eq!(
        policy.peer(&store, "worker2@example.test", now).unwrap(),
        "self"
    );
    assert!(policy.peer(&store, "dispatcher@example.test", now).is_ok());
    store
        .grant_put(&grant("dispatcher@example.test", GrantState::Blocked), true)
        .unwrap();
    assert_eq!(
        policy
            .peer(&store, "dispatcher@example.test", now)
            .unwrap_err(),
        "grant-blocked:dispatcher@example.test"
    );
}

#[tokio::test]
async fn send_refuses_before_any_server_is_contacted() {
    let config = config();
    let store = Store::open_in_memory().unwrap();
    let mailbox = Mailbox::open_with_store(&config, "b", store).unwrap();
    assert_eq!(mailbox.handle(), &h("@t.worker2"));
    let req = |to: &str, text: &str| SendRequest {
        to: vec![to.to_owned()],
        content_parts: vec![ContentPart::text(text)],
        ..SendRequest::default()
    };
    // Unreachable: not admitted by b's policy (no SMTP connection is ever made: the port is
    // closed in this test's config, and the answer is not Unavailable).
    let err = mailbox.send(req("@t.outsider", "x")).await.unwrap_err();
    assert_eq!(err, MailboxError::Unreachable("@t.outsider".to_owned()));
    assert_eq!(
        (err.code(), err.http_status()),
        ("RECIPIENT_NOT_FOUND", 404)
    );
    let err = mailbox
        .send(req("nodot@elsewhere.test", "x"))
        .await
        .unwrap_err();
    assert!(matches!(err, MailboxError::Unreachable(_)));
    let err = mailbox.send(req("@bad", "x")).await.unwrap_err();
    assert!(matches!(err, MailboxError::Invalid(_)));
    let err = mailbox
        .send(req("@t.dispatcher", &"x".repeat(1 << 20)))
        .await
        .unwrap_err();
    assert_eq!((err.code(), err.http_status()), ("PAYLOAD_TOO_LARGE", 400));
    assert_eq!(
        SendRequest::from_json(&vec![b' '; (1 << 20) + 1]).unwrap_err(),
        MailboxError::PayloadTooLarge
    );
    let parsed = SendRequest::from_json(
        br#"{"id":"01JDK3T8ZQ4W5X6Y7Z8A9B0C1D","from":"@x.spoof","to":["@t.dispatcher"],"content_parts":[{"type":"text","text":"hi"}]}"#,
    )
    .unwrap();
    assert_eq!(parsed.to, vec!["@t.dispatcher".to_owned()]);
    let err = mailbox
        .list(&ListQuery {
            limit: 0,
            ..ListQuery::default()
        })
        .unwrap_err();
    assert!(matches!(err, MailboxError::Invalid(_)));
    assert!(
        mailbox
            .list(&ListQuery::default())
            .unwrap()
            .frames
            .is_empty()
    );
}
