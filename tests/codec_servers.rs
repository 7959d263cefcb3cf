//! The codec against real servers: every AAMP and human-reply fixture is delivered by SMTP to
//! each test server, fetched back over JMAP (`Email/get` of `header:NAME:asText:all` properties,
//! body values), and read with [`Inbound::from_jmap`]. It must classify exactly as the same bytes
//! read with [`Inbound::from_bytes`], once headers-only (the first phase of the inbound
//! pipeline) and once with the body.

#![allow(clippy::unwrap_used)]

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use lettre::AsyncTransport as _;
use lettre::transport::smtp::{AsyncSmtpTransport, PoolConfig};
use lettre::{Address, Tokio1Executor, address::Envelope};
use serde_json::{Value, json};
use taskmail::wire::message::Inbound;
use taskmail::wire::{aamp, asmtp, classify};

fn fixture_files() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let mut files = Vec::new();
    for dir in ["aamp", "aamp/render", "human"] {
        for e in std::fs::read_dir(root.join(dir)).unwrap().flatten() {
            if e.path().extension().is_some_and(|x| x == "eml") {
                files.push(e.path());
            }
        }
    }
    files.sort();
    files
}

/// The fixture with a unique Message-ID (Cyrus suppresses duplicate deliveries by Message-ID,
/// and its mail persists across runs).
fn with_token(raw: &[u8], token: &str) -> Vec<u8> {
    let text = String::from_utf8_lossy(raw).into_owned();
    let lower = text.to_ascii_lowercase();
    let field = lower.find("message-id:").expect("fixture has a Message-ID");
    let at = field + lower[field..].find('<').expect("Message-ID has an id") + 1;
    let mut out = text[..at].to_owned();
    out.push_str(token);
    out.push('.');
    out.push_str(&text[at..]);
    out.into_bytes()
}

fn properties(with_body: bool) -> Value {
    let mut props: Vec<String> = [
        "id",
        "messageId",
        "inReplyTo",
        "references",
        "from",
        "to",
        "cc",
        "subject",
        "sentAt",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    for name in aamp::header::ALL.iter().chain(asmtp::header::ALL.iter()) {
        props.push(format!("header:{name}:asText:all"));
    }
    if with_body {
        props.extend(["textBody", "htmlBody", "attachments", "bodyValues"].map(str::to_owned));
    }
    json!(props)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jmap_and_raw_bytes_classify_alike() {
    support::init_crypto();
    let files = fixture_files();
    assert!(files.len() >= 30, "only {} fixtures", files.len());
    for server in support::servers() {
        let worker = server.account("worker");
        let jmap = server.jmap(&worker).await;
        let state = jmap.email_state().await;
        let token = support::unique_token();
        // The MX port: no AUTH, any sender (fixtures come from several), local recipients only.
        let smtp = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&server.smtp_host)
            .port(server.smtp_port)
            .timeout(Some(Duration::from_secs(30)))
            .pool_config(PoolConfig::new().max_size(2))
            .build();
        let rcpt: Address = worker.email.parse().unwrap();
        let mut sent = Vec::new();
        for (i, path) in files.iter().enumerate() {
            let raw = with_token(&std::fs::read(path).unwrap(), &format!("{token}-{i}"));
            let envelope = Envelope::new(
                Some("sender@example.test".parse().unwrap()),
                vec![rcpt.clone()],
            )
            .unwrap();
            smtp.send_raw(&envelope, &raw)
                .await
                .unwrap_or_else(|e| panic!("{}: {}: {e}", server.label(), path.display()));
            sent.push((format!("{token}-{i}"), path.clone(), raw));
        }
        let found = support::eventually(
            &format!("{} fixtures on {}", sent.len(), server.label()),
            Duration::from_secs(60),
            || {
                let jmap = &jmap;
                let state = &state;
                let token = &token;
                let expected = files.len();
                async move {
                    let (created, _) = jmap.created_since(state).await;
                    let mut list = Vec::new();
                    for chunk in created.chunks(50) {
                        let got = jmap
                            .call(
                                "Email/get",
                                json!({"ids": chunk, "properties": ["id", "messageId"]}),
                            )
                            .await;
                        list.extend(got["list"].as_array().cloned().unwrap_or_default());
                    }
                    let ours: Vec<Value> = list
                        .into_iter()
                        .filter(|e| e["messageId"].to_string().contains(token.as_str()))
                        .collect();
                    (ours.len() >= expected).then_some(ours)
                }
            },
        )
        .await;
        let mut compared = 0;
        for (tag, path, raw) in &sent {
            let id = found
                .iter()
                .find(|e| {
                    e["messageId"][0]
                        .as_str()
                        .is_some_and(|m| m.starts_with(&format!("{tag}.")))
                })
                .and_then(|e| e["id"].as_str())
                .unwrap_or_else(|| panic!("{}: {} not delivered", server.label(), path.display()))
                .to_owned();
            let from_bytes = Inbound::from_bytes(raw).unwrap();
            for with_body in [false, true] {
                let mut args = json!({"ids": [id], "properties": properties(with_body)});
                if with_body {
                    args["fetchTextBodyValues"] = json!(true);
                    args["fetchHTMLBodyValues"] = json!(true);
                    args["bodyProperties"] = json!([
                        "partId",
                        "blobId",
                        "size",
                        "name",
                        "type",
                        "charset",
                        "disposition",
                        "header:Content-Type"
                    ]);
                }
                let got = jmap.call("Email/get", args).await;
                let email = &got["list"][0];
                let from_jmap = Inbound::from_jmap(email);
                let mut bytes_view = from_bytes.clone();
                if !with_body {
                    bytes_view.body = None;
                }
                let (a, b) = (classify(&from_jmap), classify(&bytes_view));
                assert_eq!(
                    a,
                    b,
                    "{}: {} (body: {with_body}) classifies differently over JMAP",
                    server.label(),
                    path.display()
                );
                compared += 1;
            }
        }
        println!(
            "{}: {} fixtures delivered and compared headers-only and with body ({compared} comparisons)",
            server.label(),
            sent.len()
        );
    }
}
