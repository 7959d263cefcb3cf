//! Monitor facts (`stored`, `bounced`, `expired` per recipient) from real SMTP delivery reports.
//!
//! - `dsn_fixtures`: the reports captured from Stalwart and Postfix under `fixtures/dsn/` read
//!   into the expected facts (no server).
//! - `monitor_facts_on_real_servers`: on every server, `dispatcher@` sends a monitored envelope
//!   through [`Mailbox::send`] (submission with `RET=HDRS ENVID=... NOTIFY=...`) to itself and
//!   `human@` and, where the harness has one, to an address in the `bounce.test` domain that
//!   the submission server accepts and its delivery then refuses. The sender goes offline (its
//!   mailbox is dropped) while the reports arrive; a new mailbox on the same state dir syncs
//!   and must find a `stored` fact per delivered recipient and a `bounced` fact for the failed
//!   one, each once, and no report indexed as an envelope.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use taskmail::config::{Config, Env, Mode};
use taskmail::mailbox::monitor::{self, Fact, MonitorFact};
use taskmail::mailbox::{ListQuery, Mailbox, SendRequest};
use taskmail::store::Store;
use taskmail::wire::asmtp::ContentPart;
use taskmail::wire::dsn::{self, Action};

use support::Server;
use support::daemon::on_every_server;

/// The domain the harness routes to a refusing server (tests/mailserver/), when it has one.
const BOUNCE_DOMAIN: &str = "bounce.test";

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/dsn").join(name))
        .unwrap_or_else(|e| panic!("fixture {name}: {e}"))
}

#[test]
fn dsn_fixtures() {
    let mut ran = 0;
    // (file, envelope id, [(recipient, action, status)], returned monitor)
    let cases: &[(&str, &str, &[(&str, Action, &str)], Option<&str>)] = &[
        (
            "stalwart-delivered.eml",
            "01KAMQ2B2Z0000000000000000",
            &[("human@example.test", Action::Delivered, "2.1.5")],
            Some("mon_fixture"),
        ),
        (
            "postfix-relayed.eml",
            "01KAMQ2B2Z0000000000000001",
            &[("human@example.test", Action::Relayed, "2.1.5")],
            Some("mon_fixture"),
        ),
    ];
    for (file, envid, recipients, monitor) in cases {
        let raw = fixture(file);
        for raw in [raw.clone(), crlf(&raw)] {
            let report = dsn::parse_report(&raw).unwrap_or_else(|| panic!("{file}: no report"));
            assert_eq!(report.envelope_id.as_deref(), Some(*envid), "{file}");
            assert_eq!(report.original_monitor.as_deref(), *monitor, "{file}");
            assert_eq!(report.original_asmtp_id.as_deref(), Some(*envid), "{file}");
            let got: Vec<(String, Action, String)> = report
                .recipients
                .iter()
                .map(|r| {
                    (
                        r.recipient().to_owned(),
                        r.action,
                        r.status.clone().unwrap_or_default(),
                    )
                })
                .collect();
            let want: Vec<(String, Action, String)> = recipients
                .iter()
                .map(|(r, a, s)| ((*r).to_owned(), *a, (*s).to_owned()))
                .collect();
            assert_eq!(got, want, "{file}");
            // Into facts, once.
            let store = Store::open_in_memory().unwrap();
            let facts = monitor::ingest_raw(&store, "me", &raw, 1_000).unwrap();
            assert_eq!(facts.len(), recipients.len(), "{file}: {facts:?}");
            assert!(facts.iter().all(|f| f.fact == Fact::Stored), "{file}");
            assert!(monitor::ingest_raw(&store, "me", &raw, 2_000).unwrap().is_empty());
            assert_eq!(monitor::facts(&store, "me", None).unwrap(), facts);
            ran += 1;
        }
    }
    // A failure report: bounced; with X.4.7, expired; delayed is no fact.
    let failed = fixture("postfix-failed.eml");
    let report = dsn::parse_report(&failed).expect("postfix-failed.eml");
    assert_eq!(report.recipients[0].action, Action::Failed);
    let store = Store::open_in_memory().unwrap();
    let facts = monitor::ingest_raw(&store, "me", &failed, 5).unwrap();
    assert_eq!(facts.len(), 1, "{facts:?}");
    assert_eq!(facts[0].fact, Fact::Bounced);
    // A report about an envelope that is not ours (no returned X-ASMTP headers) gives nothing.
    let foreign = fixture("stalwart-unmonitored.eml");
    assert!(dsn::parse_report(&foreign).is_some());
    assert!(monitor::ingest_raw(&store, "me", &foreign, 5).unwrap().is_empty());
    assert!(ran >= 4);
}

fn crlf(raw: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(raw).replace("\r\n", "\n");
    text.replace('\n', "\r\n").into_bytes()
}

// ---------------------------------------------------------------------------------------------

fn config(server: &Server, dir: &Path) -> Config {
    let poll = if support::daemon::pushes(server) {
        "30s"
    } else {
        "250ms"
    };
    let text = format!(
        r#"
state-dir = "{dir}/state"

[accounts.dispatcher]
email = "dispatcher@{domain}"
handle = "@acme.dispatcher"
password = {{ raw = "{password}" }}
smtp = {{ host = "{host}", port = {port}, tls = "plaintext", allow-plaintext = true, pool-size = 2, timeout = "15s" }}
jmap = {{ session-url = "{session}", poll-interval = "{poll}" }}

[worker]
account = "dispatcher"
agent = "echo"
allowed-senders = ["human@{domain}", "nobody@{BOUNCE_DOMAIN}"]

[trust]
require-authentication = false

[asmtp.directory]
"@acme.human" = "human@{domain}"
"@bounce.nobody" = "nobody@{BOUNCE_DOMAIN}"
"#,
        dir = dir.display(),
        domain = server.domain,
        password = server.password,
        host = server.smtp_host,
        port = server.submission_port,
        session = server.jmap_session_url,
    );
    Config::from_toml_str_with_env(&text, Mode::Strict, &Env::with_home(dir))
        .unwrap_or_else(|e| panic!("{}: config: {e}\n{text}", server.label()))
}

/// Whether the harness routes [`BOUNCE_DOMAIN`] on this server (its env file says so).
fn has_bounce_domain(server: &Server) -> bool {
    server
        .var("BOUNCE_DOMAIN")
        .is_some_and(|d| d == BOUNCE_DOMAIN)
}

/// Syncs a fresh mailbox on `dir`'s state until `done(facts)` or `timeout`.
async fn facts_until(
    config: &Config,
    envelope: &taskmail::wire::asmtp::EnvelopeId,
    timeout: Duration,
    done: impl Fn(&[MonitorFact]) -> bool,
) -> (Vec<MonitorFact>, Vec<MonitorFact>) {
    let mailbox = Mailbox::open(config, "dispatcher").await.unwrap();
    let deadline = Instant::now() + timeout;
    let mut returned = Vec::new();
    loop {
        let mut events = mailbox.subscribe();
        mailbox.sync().await.unwrap();
        while let Ok(event) = events.try_recv() {
            if let taskmail::mailbox::MailboxEvent::Monitor(f) = event {
                returned.push(f);
            }
        }
        returned.extend(monitor::resolve(&mailbox).await.unwrap());
        let facts = mailbox
            .with_store(|s| monitor::facts(s, "dispatcher", Some(envelope)))
            .unwrap();
        if done(&facts) || Instant::now() >= deadline {
            return (facts, returned);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn monitor_facts_on_real_servers() {
    on_every_server(|server| async move {
        let label = server.label();
        let dir = tempfile::tempdir().unwrap();
        let config = config(&server, dir.path());
        let token = support::unique_token();
        let monitor_name = format!("mon_{}", token.replace('-', "_"));
        let me = format!("dispatcher@{}", server.domain);
        let human = format!("human@{}", server.domain);
        let bounce = format!("nobody@{BOUNCE_DOMAIN}");
        let mut to = vec![me.clone(), human.clone()];
        if has_bounce_domain(&server) {
            to.push(bounce.clone());
        } else {
            eprintln!(
                "{label}: the harness routes no {BOUNCE_DOMAIN}: only stored facts checked \
                 (restart it with: {})",
                support::START_HINT
            );
        }
        let started = Instant::now();
        let receipt = {
            // The sender sends, then goes offline (its mailbox is dropped).
            let mailbox = Mailbox::open(&config, "dispatcher").await.unwrap();
            // NOTE: a sender that has synced before: its next sync reads Email/changes (a
            // first sync back-fills a bounded window, which a busy test Inbox overflows).
            mailbox.sync().await.unwrap();
            mailbox
                .send(SendRequest {
                    to: to.clone(),
                    subject: Some(format!("monitored {token}")),
                    content_parts: vec![ContentPart::text(format!("monitor me {token}"))],
                    monitor: Some(monitor_name.clone()),
                    ..SendRequest::default()
                })
                .await
                .unwrap_or_else(|e| panic!("{label}: send: {e}"))
        };
        let expected = to.len();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (facts, returned) = facts_until(&config, &receipt.id, Duration::from_secs(60), |f| {
            f.len() >= expected
        })
        .await;
        let elapsed = started.elapsed();
        eprintln!("{label}: {} facts after {elapsed:?}: {facts:#?}", facts.len());
        let fact_of = |recipient: &str| {
            facts
                .iter()
                .filter(|f| f.recipient_handle == recipient)
                .map(|f| f.fact)
                .collect::<Vec<_>>()
        };
        assert_eq!(fact_of("@acme.dispatcher"), vec![Fact::Stored], "{label}: {facts:?}");
        assert_eq!(fact_of("@acme.human"), vec![Fact::Stored], "{label}: {facts:?}");
        if has_bounce_domain(&server) {
            assert_eq!(fact_of("@bounce.nobody"), vec![Fact::Bounced], "{label}: {facts:?}");
        }
        assert_eq!(facts.len(), expected, "{label}: {facts:?}");
        for f in &facts {
            assert_eq!(f.monitor, monitor_name, "{label}");
            assert_eq!(f.envelope_id, receipt.id, "{label}");
        }
        assert_eq!(returned.len(), expected, "{label}: new facts are returned once: {returned:?}");
        // No report became an envelope: the index holds only the envelope sent to ourselves.
        let mailbox = Mailbox::open(&config, "dispatcher").await.unwrap();
        let page = mailbox
            .list(&ListQuery {
                limit: 1000,
                ..ListQuery::default()
            })
            .unwrap();
        let subjects: Vec<_> = page
            .frames
            .iter()
            .filter_map(|f| f.frame.subject.clone())
            .filter(|s| s.contains(&token))
            .collect();
        assert_eq!(subjects, vec![format!("monitored {token}")], "{label}");
    })
    .await;
}

