//! Real mail authentication in the test servers: what the worker's trust gate will read.
//!
//! On Stalwart (`STALWART_MAIL_AUTH=hairpin`, the harness default) the harness runs a local DNS
//! (`tests/mailserver/lib/dns.sh`) with SPF, DKIM and DMARC (`p=reject`) records for
//! `example.test` and `other.test`; Stalwart DKIM-signs authenticated submissions and hands them
//! to its own MX port from the sending domain's address, where SPF, DKIM, DMARC and ARC
//! are verified like on mail from another server and written into an `Authentication-Results`
//! header with the server's authserv-id (`AUTHSERV_ID` in the env file). Test clients connect
//! from 127.0.0.1, which is in no SPF record, so a spoof through the MX port fails DMARC.
//!
//! On Cyrus+Postfix nothing is signed or verified: no `Authentication-Results` at all, so the gate
//! there can only rely on the same-server authenticated-submission rule.
//!
//! Each test loops over [`support::servers`] (with `TASKMAIL_REQUIRE_SERVERS=1` a missing server
//! fails). Run with `-- --nocapture` to see the real `Authentication-Results` lines.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use serde_json::Value;
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::TcpStream,
};

use support::{Account, Server, mail, unique_token};

/// How long a delivered message may take to show up over JMAP.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);

const AR: &str = "header:Authentication-Results:all";
const DKIM: &str = "header:DKIM-Signature:all";

/// The servers whose `Authentication-Results` are real (a DNS, signing and verification).
fn authenticating_servers() -> Vec<Server> {
    support::servers()
        .into_iter()
        .filter(|server| match (server.authserv_id(), server.mail_auth()) {
            (Some(_), Some("hairpin")) => true,
            (_, mode) => {
                eprintln!(
                    "NOTE: {} adds no verified Authentication-Results to submissions \
                     (MAIL_AUTH={}); real-authentication checks skipped there",
                    server.label(),
                    mode.unwrap_or("unset")
                );
                false
            }
        })
        .collect()
}

/// Unfold a raw header value: CRLF + whitespace becomes one space; trimmed.
fn unfold(raw: &str) -> String {
    raw.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The values of a raw `header:NAME:all` property, unfolded, in message order (top first).
fn header_values(email: &Value, property: &str) -> Vec<String> {
    email[property]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(unfold)
        .collect()
}

/// The authserv-id of an `Authentication-Results` value (RFC 8601: up to the first `;`, an
/// optional version after it).
fn authserv_id(value: &str) -> &str {
    value
        .split(';')
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .next()
        .unwrap_or_default()
}

/// The `method=result property...` clauses of an `Authentication-Results` value, comments removed.
fn clauses(value: &str) -> Vec<String> {
    let mut plain = String::with_capacity(value.len());
    let mut depth = 0usize;
    for c in value.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            _ if depth == 0 => plain.push(c),
            _ => {}
        }
    }
    plain
        .split(';')
        .skip(1)
        .map(unfold)
        .filter(|c| !c.is_empty())
        .collect()
}

/// Does the `Authentication-Results` value have a clause `method=result` carrying every property
/// in `props` (e.g. `header.d=example.test`)?
fn has(value: &str, method_result: &str, props: &[&str]) -> bool {
    clauses(value).iter().any(|clause| {
        let mut words = clause.split_whitespace();
        words
            .next()
            .is_some_and(|m| m.eq_ignore_ascii_case(method_result))
            && {
                let rest: Vec<&str> = words.collect();
                props
                    .iter()
                    .all(|p| rest.iter().any(|w| w.eq_ignore_ascii_case(p)))
            }
    })
}

/// The tag `name` of a DKIM-Signature value (`d`, `s`, `a`...).
fn dkim_tag<'a>(value: &'a str, name: &str) -> Option<&'a str> {
    value.split(';').find_map(|tag| {
        let (k, v) = tag.split_once('=')?;
        (k.trim() == name).then(|| v.trim())
    })
}

/// Our `Authentication-Results` (authserv-id `id`) of a delivered message, top first.
fn ours(ars: &[String], id: &str) -> Vec<String> {
    ars.iter()
        .filter(|v| authserv_id(v).eq_ignore_ascii_case(id))
        .cloned()
        .collect()
}

fn print_headers(label: &str, server: &Server, email: &Value) {
    for v in header_values(email, AR) {
        println!("{} [{label}] Authentication-Results: {v}", server.label());
    }
    for v in header_values(email, DKIM) {
        println!(
            "{} [{label}] DKIM-Signature: a={} d={} s={}",
            server.label(),
            dkim_tag(&v, "a").unwrap_or("?"),
            dkim_tag(&v, "d").unwrap_or("?"),
            dkim_tag(&v, "s").unwrap_or("?")
        );
    }
}

/// A test message `from_header` -> `to` whose subject carries `token`, with `extra` headers.
fn test_message(
    server: &Server,
    from_header: &str,
    to: &str,
    token: &str,
    extra: &[(&str, &str)],
) -> Vec<u8> {
    mail::message(
        from_header,
        to,
        &format!("taskmail auth {token}"),
        &format!("{token}@{}", server.domain),
        extra,
        &format!("mail authentication test {token}"),
    )
}

/// Submit `raw` with AUTH as `from` to `to`.
async fn submit(server: &Server, from: &Account, to: &Account, raw: &[u8]) {
    use lettre::AsyncTransport as _;
    server
        .submission(from)
        .send_raw(&mail::envelope(&from.email, &[&to.email]), raw)
        .await
        .unwrap_or_else(|e| panic!("{}: submission as {}: {e}", server.label(), from.email));
}

/// One SMTP reply (multi-line aware): the code and the joined text.
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
            return (code, text.trim_end().to_string());
        }
    }
}

/// Hand `raw` to `port` WITHOUT authentication, as any host on the network could (EHLO
/// `helo`, envelope `mail_from` -> `rcpt`). Returns the reply to the end of DATA, `Err` with the
/// reply when a command before it is refused.
async fn send_unauthenticated(
    server: &Server,
    port: u16,
    helo: &str,
    mail_from: &str,
    rcpt: &str,
    raw: &[u8],
) -> Result<(u16, String), (u16, String)> {
    let stream = TcpStream::connect((server.smtp_host.as_str(), port))
        .await
        .unwrap_or_else(|e| panic!("{}: connect to port {port}: {e}", server.label()));
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let (code, text) = reply(&mut reader).await;
    assert_eq!(code, 220, "{}: greeting on {port}: {text}", server.label());
    for (command, expect) in [
        (format!("EHLO {helo}\r\n"), 250),
        (format!("MAIL FROM:<{mail_from}>\r\n"), 250),
        (format!("RCPT TO:<{rcpt}>\r\n"), 250),
        ("DATA\r\n".to_string(), 354),
    ] {
        write.write_all(command.as_bytes()).await.unwrap();
        let (code, text) = reply(&mut reader).await;
        if code != expect {
            return Err((code, format!("{} -> {text}", command.trim_end())));
        }
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
    let end = reply(&mut reader).await;
    let _ = write.write_all(b"QUIT\r\n").await;
    if end.0 == 250 { Ok(end) } else { Err(end) }
}

/// Wait for the message with `token` in `to`'s mailboxes (created since `state`) and return its
/// raw Authentication-Results and DKIM-Signature values.
async fn delivered(server: &Server, jmap: &support::jmap::Jmap, state: &str, token: &str) -> Value {
    let mut found = jmap
        .wait_for_token(
            state,
            token,
            1,
            &[AR, DKIM, "header:Received:all"],
            DELIVERY_TIMEOUT,
        )
        .await;
    assert_eq!(
        found.len(),
        1,
        "{}: one message with {token}: {found:?}",
        server.label()
    );
    found.remove(0)
}

/// (a) An authenticated submission dispatcher@example.test -> worker@example.test arrives
/// DKIM-signed (one signature per selector, d=example.test) with exactly one
/// Authentication-Results of ours, saying dkim=pass, spf=pass and dmarc=pass for example.test.
#[tokio::test]
async fn an_authenticated_submission_arrives_signed_and_verified() {
    for server in authenticating_servers() {
        let id = server.authserv_id().unwrap().to_string();
        let (dispatcher, worker) = (server.account("dispatcher"), server.account("worker"));
        let jmap = server.jmap(&worker).await;
        let state = jmap.email_state().await;
        let token = unique_token();
        let raw = test_message(&server, &dispatcher.email, &worker.email, &token, &[]);
        submit(&server, &dispatcher, &worker, &raw).await;
        let email = delivered(&server, &jmap, &state, &token).await;
        print_headers("a: submission", &server, &email);

        let signatures = header_values(&email, DKIM);
        let selectors: Vec<&str> = server
            .var("DKIM_SELECTORS")
            .unwrap_or_default()
            .split_whitespace()
            .collect();
        assert!(
            !selectors.is_empty(),
            "{}: no DKIM_SELECTORS in the env file",
            server.label()
        );
        for selector in &selectors {
            assert!(
                signatures
                    .iter()
                    .any(|s| dkim_tag(s, "d") == Some(server.domain.as_str())
                        && dkim_tag(s, "s") == Some(*selector)),
                "{}: no DKIM-Signature d={} s={selector}: {signatures:?}",
                server.label(),
                server.domain
            );
        }
        let ars = ours(&header_values(&email, AR), &id);
        assert_eq!(
            ars.len(),
            1,
            "{}: exactly one Authentication-Results of {id}: {ars:?}",
            server.label()
        );
        let ar = &ars[0];
        let d = format!("header.d={}", server.domain);
        for selector in &selectors {
            let s = format!("header.s={selector}");
            assert!(
                has(ar, "dkim=pass", &[&d, &s]),
                "{}: dkim=pass {d} {s} in {ar}",
                server.label()
            );
        }
        let mailfrom = format!("smtp.mailfrom={}", dispatcher.email);
        assert!(
            has(ar, "spf=pass", &[&mailfrom]),
            "{}: spf=pass {mailfrom} in {ar}",
            server.label()
        );
        let from = format!("header.from={}", server.domain);
        assert!(
            has(ar, "dmarc=pass", &[&from, "policy.dmarc=reject"]),
            "{}: dmarc=pass {from} in {ar}",
            server.label()
        );
    }
}

/// (b) A spoof: `From: dispatcher@example.test` handed to the MX port without authentication
/// from 127.0.0.1 (in no SPF record of ours), unsigned (so no dkim= clause). On SMTP_PORT
/// Stalwart only reports (DMARC `relaxed`) and delivers it; the verdict is never `dmarc=pass`:
/// - with the victim's envelope sender: spf=fail, and `dmarc=none ... policy.dmarc=reject`
///   (mail-auth writes `none`, not `fail`, when neither SPF nor DKIM passed at all);
/// - with the spoofer's own domain as envelope sender (FOREIGN_DOMAIN, whose SPF authorizes
///   127.0.0.1): spf=pass for that domain, `dmarc=fail (policy not aligned)`.
///
/// On SMTP_ENFORCE_PORT (DMARC `strict`) the same spoof is refused at the end of DATA with
/// `550 5.7.1 Email rejected per DMARC policy.`: that is what `p=reject` does in Stalwart when
/// enforced.
#[tokio::test]
async fn a_spoofed_from_through_the_mx_port_fails_dmarc() {
    for server in authenticating_servers() {
        let id = server.authserv_id().unwrap().to_string();
        let (dispatcher, worker) = (server.account("dispatcher"), server.account("worker"));
        let jmap = server.jmap(&worker).await;
        let from = format!("header.from={}", server.domain);
        let foreign = server
            .var("FOREIGN_DOMAIN")
            .unwrap_or_else(|| panic!("{}: no FOREIGN_DOMAIN in the env file", server.label()));
        let attacker = format!("attacker@{foreign}");

        for (case, mail_from, spf, dmarc) in [
            (
                "b: spoof, MAIL FROM victim",
                dispatcher.email.as_str(),
                "spf=fail",
                "dmarc=none",
            ),
            (
                "b: spoof, MAIL FROM own domain",
                attacker.as_str(),
                "spf=pass",
                "dmarc=fail",
            ),
        ] {
            let state = jmap.email_state().await;
            let token = unique_token();
            let raw = test_message(&server, &dispatcher.email, &worker.email, &token, &[]);
            let sent = send_unauthenticated(
                &server,
                server.smtp_port,
                "spoofer.test",
                mail_from,
                &worker.email,
                &raw,
            )
            .await;
            let (code, text) = sent.unwrap_or_else(|e| {
                panic!(
                    "{}: {case}: refused on {}: {e:?}",
                    server.label(),
                    server.smtp_port
                )
            });
            println!(
                "{} [{case}] port {}: {code} {text}",
                server.label(),
                server.smtp_port
            );
            let email = delivered(&server, &jmap, &state, &token).await;
            print_headers(case, &server, &email);
            assert!(
                header_values(&email, DKIM).is_empty(),
                "{}: {case}: unsigned",
                server.label()
            );
            let ars = ours(&header_values(&email, AR), &id);
            assert_eq!(
                ars.len(),
                1,
                "{}: {case}: one Authentication-Results of {id}: {ars:?}",
                server.label()
            );
            let ar = &ars[0];
            // unsigned: Stalwart writes no dkim= clause at all
            assert!(
                !clauses(ar).iter().any(|c| c.starts_with("dkim=")),
                "{}: {case}: no dkim= clause in {ar}",
                server.label()
            );
            let mailfrom = format!("smtp.mailfrom={mail_from}");
            assert!(
                has(ar, spf, &[&mailfrom]),
                "{}: {case}: {spf} {mailfrom} in {ar}",
                server.label()
            );
            assert!(
                has(ar, dmarc, &[&from, "policy.dmarc=reject"]),
                "{}: {case}: {dmarc} {from} policy.dmarc=reject in {ar}",
                server.label()
            );
            assert!(
                !has(ar, "dmarc=pass", &[]),
                "{}: {case}: never dmarc=pass: {ar}",
                server.label()
            );
        }

        // the same spoof on the enforcing MX port: refused
        let enforce: u16 = server
            .var("SMTP_ENFORCE_PORT")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("{}: no SMTP_ENFORCE_PORT in the env file", server.label()));
        let token = unique_token();
        let raw = test_message(&server, &dispatcher.email, &worker.email, &token, &[]);
        let sent = send_unauthenticated(
            &server,
            enforce,
            "spoofer.test",
            &dispatcher.email,
            &worker.email,
            &raw,
        )
        .await;
        println!(
            "{} [b: spoof on the enforcing port {enforce}] {sent:?}",
            server.label()
        );
        let (code, text) =
            sent.expect_err("a DMARC p=reject spoof must be refused on the enforcing port");
        assert_eq!(code, 550, "{}: {text}", server.label());
        assert!(
            text.contains("5.7.1") && text.contains("DMARC"),
            "{}: {text}",
            server.label()
        );
    }
}

/// (c) An authenticated submission from the second domain (agent@other.test) is signed with
/// d=other.test and verified as other.test: dkim=pass header.d=other.test, dmarc=pass.
#[tokio::test]
async fn the_other_domain_signs_and_passes_as_itself() {
    for server in authenticating_servers() {
        let id = server.authserv_id().unwrap().to_string();
        let other = server
            .other_domain()
            .unwrap_or_else(|| panic!("{}: no OTHER_DOMAIN", server.label()))
            .to_string();
        let agent = server.other_account("agent").unwrap();
        let worker = server.account("worker");
        let jmap = server.jmap(&worker).await;
        let state = jmap.email_state().await;
        let token = unique_token();
        let raw = test_message(&server, &agent.email, &worker.email, &token, &[]);
        submit(&server, &agent, &worker, &raw).await;
        let email = delivered(&server, &jmap, &state, &token).await;
        print_headers("c: other.test", &server, &email);

        let signatures = header_values(&email, DKIM);
        assert!(!signatures.is_empty(), "{}: signed", server.label());
        assert!(
            signatures
                .iter()
                .all(|s| dkim_tag(s, "d") == Some(other.as_str())),
            "{}: every signature d={other}: {signatures:?}",
            server.label()
        );
        let ars = ours(&header_values(&email, AR), &id);
        assert_eq!(
            ars.len(),
            1,
            "{}: one Authentication-Results of {id}: {ars:?}",
            server.label()
        );
        let ar = &ars[0];
        let d = format!("header.d={other}");
        assert!(
            has(ar, "dkim=pass", &[&d]),
            "{}: dkim=pass {d} in {ar}",
            server.label()
        );
        assert!(
            !has(ar, "dkim=pass", &[&format!("header.d={}", server.domain)]),
            "{}: {ar}",
            server.label()
        );
        let from = format!("header.from={other}");
        assert!(
            has(ar, "dmarc=pass", &[&from]),
            "{}: dmarc=pass {from} in {ar}",
            server.label()
        );
    }
}

/// (d) Forged Authentication-Results written by the sender survive delivery. One with another
/// authserv-id is simply not ours. One that claims OUR authserv-id also survives (Stalwart does
/// not remove it), but below ours: the server prepends its own, so the gate must read only the
/// topmost Authentication-Results with its authserv-id.
#[tokio::test]
async fn forged_authentication_results_survive_but_ours_is_on_top() {
    for server in authenticating_servers() {
        let id = server.authserv_id().unwrap().to_string();
        let (dispatcher, worker) = (server.account("dispatcher"), server.account("worker"));
        let jmap = server.jmap(&worker).await;
        let from = format!("header.from={}", server.domain);
        let claim = format!(
            "dkim=pass header.d={d} header.s=forged; spf=pass smtp.mailfrom={e}; dmarc=pass header.from={d}",
            d = server.domain,
            e = dispatcher.email
        );
        let other_id = format!("mx.forger.test; {claim}");
        let our_id = format!("{id}; {claim}");

        let state = jmap.email_state().await;
        let token = unique_token();
        let raw = test_message(
            &server,
            &dispatcher.email,
            &worker.email,
            &token,
            &[
                ("Authentication-Results", &other_id),
                ("Authentication-Results", &our_id),
            ],
        );
        send_unauthenticated(
            &server,
            server.smtp_port,
            "spoofer.test",
            &dispatcher.email,
            &worker.email,
            &raw,
        )
        .await
        .unwrap_or_else(|e| panic!("{}: refused: {e:?}", server.label()));
        let email = delivered(&server, &jmap, &state, &token).await;
        print_headers("d: forged", &server, &email);

        let all = header_values(&email, AR);
        assert!(
            all.iter()
                .any(|v| authserv_id(v) == "mx.forger.test" && has(v, "dmarc=pass", &[])),
            "{}: the forged Authentication-Results of another authserv-id survives: {all:?}",
            server.label()
        );
        let ours = ours(&all, &id);
        assert_eq!(
            ours.len(),
            2,
            "{}: ours and the forged one claiming {id}: {all:?}",
            server.label()
        );
        assert_eq!(
            authserv_id(&all[0]),
            id,
            "{}: ours is the topmost: {all:?}",
            server.label()
        );
        assert!(
            has(&ours[0], "dmarc=none", &[&from, "policy.dmarc=reject"])
                && !has(&ours[0], "dmarc=pass", &[]),
            "{}: the real verdict (top): {}",
            server.label(),
            ours[0]
        );
        assert!(
            has(&ours[1], "dmarc=pass", &[&from]),
            "{}: the forged one (below): {}",
            server.label(),
            ours[1]
        );

        // the same forgery inside an authenticated submission: still only ours on top says pass
        let state = jmap.email_state().await;
        let token = unique_token();
        let raw = test_message(
            &server,
            &dispatcher.email,
            &worker.email,
            &token,
            &[("Authentication-Results", &other_id)],
        );
        submit(&server, &dispatcher, &worker, &raw).await;
        let email = delivered(&server, &jmap, &state, &token).await;
        print_headers("d: forged in a submission", &server, &email);
        let all = header_values(&email, AR);
        assert_eq!(
            authserv_id(&all[0]),
            id,
            "{}: ours is the topmost: {all:?}",
            server.label()
        );
        assert!(
            has(&all[0], "dmarc=pass", &[&from]),
            "{}: {}",
            server.label(),
            all[0]
        );
        assert!(
            all.iter().any(|v| authserv_id(v) == "mx.forger.test"),
            "{}: {all:?}",
            server.label()
        );
    }
}

/// Servers without mail authentication (Cyrus+Postfix): neither an authenticated submission nor
/// a spoof through the MX port gets an Authentication-Results or a DKIM signature, so a trust
/// gate there can only use the same-server authenticated-submission rule.
#[tokio::test]
async fn servers_without_mail_authentication_add_no_verdict() {
    for server in support::servers()
        .into_iter()
        .filter(|s| s.authserv_id().is_none())
    {
        let (dispatcher, worker) = (server.account("dispatcher"), server.account("worker"));
        let jmap = server.jmap(&worker).await;

        let state = jmap.email_state().await;
        let token = unique_token();
        let raw = test_message(&server, &dispatcher.email, &worker.email, &token, &[]);
        submit(&server, &dispatcher, &worker, &raw).await;
        let email = delivered(&server, &jmap, &state, &token).await;
        print_headers("submission", &server, &email);
        assert!(
            header_values(&email, AR).is_empty(),
            "{}: no Authentication-Results: {email}",
            server.label()
        );
        assert!(
            header_values(&email, DKIM).is_empty(),
            "{}: no DKIM-Signature: {email}",
            server.label()
        );

        let state = jmap.email_state().await;
        let token = unique_token();
        let raw = test_message(&server, &dispatcher.email, &worker.email, &token, &[]);
        let sent = send_unauthenticated(
            &server,
            server.smtp_port,
            "spoofer.test",
            &dispatcher.email,
            &worker.email,
            &raw,
        )
        .await;
        println!(
            "{} [spoof] port {}: {sent:?}",
            server.label(),
            server.smtp_port
        );
        sent.unwrap_or_else(|e| panic!("{}: spoof refused: {e:?}", server.label()));
        let email = delivered(&server, &jmap, &state, &token).await;
        print_headers("spoof", &server, &email);
        assert!(
            header_values(&email, AR).is_empty(),
            "{}: a spoof gets no Authentication-Results either: {email}",
            server.label()
        );
        println!(
            "{}: no Authentication-Results: the trust gate must rely on the same-server \
             authenticated-submission rule here",
            server.label()
        );
    }
}

#[test]
fn authentication_results_parsing() {
    let v = unfold(
        " mail.example.test;\r\n\tdkim=pass header.d=example.test header.s=ed25519 header.b=abc;\r\n\t\
         spf=fail (mail.example.test: 127.0.0.1 is not allowed; see) smtp.mailfrom=a@example.test;\r\n\t\
         dmarc=fail header.from=example.test policy.dmarc=reject",
    );
    assert_eq!(authserv_id(&v), "mail.example.test");
    assert!(has(
        &v,
        "dkim=pass",
        &["header.d=example.test", "header.s=ed25519"]
    ));
    assert!(!has(&v, "dkim=pass", &["header.d=other.test"]));
    assert!(has(&v, "spf=fail", &["smtp.mailfrom=a@example.test"]));
    assert!(has(&v, "dmarc=fail", &["policy.dmarc=reject"]));
    assert_eq!(authserv_id("mx.forger.test 1; none"), "mx.forger.test");
    assert_eq!(
        dkim_tag("v=1; a=ed25519-sha256; d=example.test; s=ed25519", "d"),
        Some("example.test")
    );
}
