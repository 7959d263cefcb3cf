//! The human side of a thread, written by a real mail client: Debian's `mutt`, driven through
//! `tmux` (`support::mutt`), answers mails that taskmail rendered, on every server the harness
//! runs (`bash tests/mailserver/mailserver.sh up all`).
//!
//! Each test sends an AAMP mail rendered with the crate (`Outbound::render`) from worker@ to
//! human@ over submission, has mutt (as human@) reply with a known text, fetches mutt's mail from
//! worker@'s mailbox over JMAP (as a raw blob and as `Email/get` with body values), checks what
//! mutt wrote (threading headers, `Re:`, attribution, quoting, format=flowed) and that taskmail's
//! codec reads it as a [`Classified::Reply`] in the right thread whose text is exactly what the
//! human typed.
//!
//! With `TASKMAIL_REQUIRE_SERVERS=1` (CI) a missing server, or a missing `mutt` or `tmux`, fails
//! the tests; without it they are skipped with a `SKIPPED:` line. Run with `-- --nocapture` to
//! see how long mutt takes and one raw reply.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::{Duration, Instant};

use lettre::AsyncTransport as _;
use serde_json::{Value, json};
use taskmail::{
    clock, ids,
    transport::jmap::header_properties,
    wire::{
        Classified,
        aamp::{AampMessage, HelpNeeded, Payload, Status, TaskId, TaskResult},
        classify,
        message::{Inbound, Mailbox, Outbound},
        thread,
    },
};

use support::{
    Account, Server, http,
    jmap::Jmap,
    mail,
    mutt::{self, Mutt, Timings},
};

/// How long a delivered message may take to show up over JMAP.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);
/// The worker's display name in the mails it sends (mutt's `%n` in the attribution).
const WORKER_NAME: &str = "Worker Agent";
/// The body part properties the daemon asks for (`src/transport/jmap.rs`, `BODY_PROPERTIES`).
const BODY_PROPERTIES: [&str; 9] = [
    "partId",
    "blobId",
    "size",
    "name",
    "type",
    "charset",
    "disposition",
    "cid",
    "header:Content-Type",
];

/// Are `mutt` and `tmux` installed? Missing ones fail the test under
/// `TASKMAIL_REQUIRE_SERVERS=1` and skip it otherwise.
fn mutt_installed() -> bool {
    let missing = Mutt::missing_tools();
    if missing.is_empty() {
        return true;
    }
    let problem = format!(
        "{} not installed: {} (the harness installs them: {})",
        missing.join(" and "),
        mutt::INSTALL_HINT,
        support::START_HINT
    );
    assert!(
        !support::servers_required(),
        "TASKMAIL_REQUIRE_SERVERS=1 and {problem}"
    );
    eprintln!("SKIPPED: {problem}");
    false
}

/// A mail taskmail sent to the human: what a reply to it is checked against.
struct Parent {
    /// Message-ID, without angle brackets.
    id: String,
    subject: String,
    /// The first line of its text body (mutt quotes it right below the attribution).
    first_line: String,
}

/// One server, its worker and human accounts and their JMAP sessions.
struct Parties {
    server: Server,
    worker: Account,
    human: Account,
    worker_jmap: Jmap,
    human_jmap: Jmap,
}

impl Parties {
    async fn new(server: Server) -> Parties {
        let worker = server.account("worker");
        let human = server.account("human");
        let worker_jmap = server.jmap(&worker).await;
        let human_jmap = server.jmap(&human).await;
        Parties {
            server,
            worker,
            human,
            worker_jmap,
            human_jmap,
        }
    }

    fn label(&self) -> String {
        self.server.label()
    }

    /// Renders `message` with the crate as worker@ -> human@, in the thread of a dispatch
    /// (a Message-ID only), submits it and waits until it is in human@'s mailbox.
    async fn send_aamp(&self, message: &AampMessage) -> Parent {
        let state = self.human_jmap.email_state().await;
        let now = clock::now();
        let dispatch_id = ids::message_id(now, &self.server.domain);
        // NOTE: built as `taskmail render` builds it: the constructor, then the thread headers
        let mut outbound = Outbound::aamp(
            message,
            Mailbox {
                name: Some(WORKER_NAME.to_owned()),
                email: self.worker.email.clone(),
            },
            vec![Mailbox::new(self.human.email.clone())],
            now,
            ids::message_id(now, &self.server.domain),
        );
        let (in_reply_to, references) = thread::reply_chain(&dispatch_id, &[]);
        outbound.in_reply_to = Some(in_reply_to);
        outbound.references = references;
        let raw = outbound.render();
        self.server
            .submission(&self.worker)
            .send_raw(
                &mail::envelope(&self.worker.email, &[&self.human.email]),
                &raw,
            )
            .await
            .unwrap_or_else(|e| panic!("{}: submitting the AAMP mail: {e}", self.label()));
        let id = outbound.message_id.clone();
        wait_for_email(
            &self.human_jmap,
            &state,
            &format!("<{id}> in {}", self.human.email),
            |e| e["messageId"][0] == id.as_str(),
        )
        .await;
        Parent {
            first_line: outbound.text.lines().next().unwrap_or_default().to_owned(),
            id: outbound.message_id,
            subject: outbound.subject,
        }
    }

    /// mutt (as human@) replies to `parent` (found by `find`, its Message-ID or its subject)
    /// with `text`; returns mutt's mail as worker@ received it, mutt's timings and the time
    /// from starting mutt to the reply showing up in worker@'s mailbox over JMAP.
    async fn mutt_reply(
        &self,
        mutt: &Mutt,
        find: &str,
        parent: &Parent,
        text: &str,
    ) -> (Fetched, Timings, Duration) {
        let state = self.worker_jmap.email_state().await;
        let t0 = Instant::now();
        let timings = tokio::task::block_in_place(|| mutt.reply(find, text));
        let found = wait_for_email(
            &self.worker_jmap,
            &state,
            &format!("mutt's reply to <{}> in {}", parent.id, self.worker.email),
            |e| {
                e["inReplyTo"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|v| *v == parent.id))
            },
        )
        .await;
        let end_to_end = t0.elapsed();
        (fetch(&self.worker_jmap, &found).await, timings, end_to_end)
    }
}

/// Waits until an email created since `state` satisfies `matches` (on `id`, `blobId`,
/// `messageId`, `inReplyTo`, `subject`) and returns it.
async fn wait_for_email(
    jmap: &Jmap,
    state: &str,
    what: &str,
    matches: impl Fn(&Value) -> bool,
) -> Value {
    let matches = &matches;
    support::eventually(what, DELIVERY_TIMEOUT, || async move {
        let (created, _) = jmap.created_since(state).await;
        let mut found = None;
        for chunk in created.chunks(200) {
            let list = jmap
                .get_emails(
                    chunk,
                    &["id", "blobId", "messageId", "inReplyTo", "subject"],
                )
                .await;
            found = found.or_else(|| list.into_iter().find(|e| matches(e)));
        }
        found
    })
    .await
}

/// A mail as worker@ received it, three ways.
struct Fetched {
    /// The raw message (the email's blob, downloaded).
    raw: Vec<u8>,
    /// `Email/get` as the daemon's body phase asks for it.
    with_body: Value,
    /// `Email/get` as the daemon's headers-only phase asks for it.
    headers_only: Value,
}

impl Fetched {
    fn raw_text(&self) -> String {
        String::from_utf8_lossy(&self.raw).into_owned()
    }

    /// An unfolded header field of the raw message (the first one named `name`).
    fn header(&self, name: &str) -> Option<String> {
        let raw = self.raw_text().replace("\r\n", "\n");
        let head = raw.split("\n\n").next().unwrap_or_default();
        let unfolded = head.replace("\n ", " ").replace("\n\t", " ");
        unfolded.lines().find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    }

    /// The raw body's lines (LF), as they travelled.
    fn body_lines(&self) -> Vec<String> {
        let raw = self.raw_text().replace("\r\n", "\n");
        raw.split_once("\n\n")
            .map(|(_, body)| body.lines().map(str::to_owned).collect())
            .unwrap_or_default()
    }

    /// Classifies the mail from the raw bytes, from JMAP with the body and from JMAP headers
    /// only; the first two must agree, and the headers-only one must agree without the text.
    fn classify_all(&self, label: &str) -> (Inbound, Classified) {
        let from_bytes = Inbound::from_bytes(&self.raw).unwrap();
        let from_jmap = Inbound::from_jmap(&self.with_body);
        let headers_only = Inbound::from_jmap(&self.headers_only);
        let by_bytes = classify(&from_bytes);
        assert_eq!(
            classify(&from_jmap),
            by_bytes,
            "{label}: the JMAP Email/get with body values classifies differently from the raw \
             bytes; raw:\n{}",
            self.raw_text()
        );
        let expected_headers_only = match &by_bytes {
            Classified::Reply { keys, .. } => Classified::Reply {
                keys: keys.clone(),
                text: None,
            },
            other => other.clone(),
        };
        assert_eq!(
            classify(&headers_only),
            expected_headers_only,
            "{label}: headers-only JMAP classification"
        );
        // NOTE: only up to line ends: from raw bytes a text part that is not format=flowed
        // keeps its CRLFs, from JMAP it has LFs (reported; reply extraction normalises them)
        let text = |i: &Inbound| {
            i.body
                .as_ref()
                .and_then(|b| b.text.as_deref())
                .map(|t| t.replace("\r\n", "\n"))
        };
        assert_eq!(
            text(&from_jmap),
            text(&from_bytes),
            "{label}: the text body read over JMAP differs from the raw bytes'"
        );
        (from_bytes, by_bytes)
    }
}

/// Fetches email `email["id"]` as a raw blob and with `Email/get` (headers only, and with body
/// values) as the daemon does.
async fn fetch(jmap: &Jmap, email: &Value) -> Fetched {
    let id = email["id"].as_str().unwrap().to_owned();
    let blob_id = email["blobId"].as_str().unwrap();
    let template = jmap.session["downloadUrl"].as_str().unwrap();
    let url = jmap.resolve(
        &template
            .replace("{accountId}", &percent_encode(&jmap.account_id))
            .replace("{blobId}", &percent_encode(blob_id))
            .replace("{name}", "reply.eml")
            .replace("{type}", &percent_encode("message/rfc822")),
    );
    let response = http::Request::get(&url)
        .basic_auth(&jmap.account.email, &jmap.account.password)
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status,
        200,
        "download {url}: {}",
        String::from_utf8_lossy(&response.body)
    );
    let headers_only = jmap
        .call(
            "Email/get",
            json!({ "ids": [id], "properties": header_properties() }),
        )
        .await["list"][0]
        .clone();
    let mut properties = header_properties();
    properties.extend(["textBody", "htmlBody", "attachments", "bodyValues"].map(str::to_owned));
    let with_body = jmap
        .call(
            "Email/get",
            json!({
                "ids": [id],
                "properties": properties,
                "fetchTextBodyValues": true,
                "fetchHTMLBodyValues": true,
                "bodyProperties": BODY_PROPERTIES,
            }),
        )
        .await["list"][0]
        .clone();
    assert!(with_body.is_object(), "Email/get {id}: {with_body}");
    Fetched {
        raw: response.body,
        with_body,
        headers_only,
    }
}

fn percent_encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// How mutt quotes: with `text_flowed` on, RFC 3676 quote marks (`>` directly followed by the
/// text, mutt ignores `indent_string` then); otherwise `indent_string` (`> `).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Quoting {
    Flowed,
    Plain,
}

/// Everything the tests check on a reply mutt wrote to `parent` with `text`.
fn check_mutt_reply(
    label: &str,
    reply: &Fetched,
    parent: &Parent,
    text: &str,
    quoting: Quoting,
    is_attribution: impl Fn(&str) -> bool,
) {
    let raw = reply.raw_text();
    let ctx = format!("{label}: mutt's reply:\n{raw}");
    // threading, written by mutt
    let parent_id = format!("<{}>", parent.id);
    assert_eq!(
        reply.header("In-Reply-To").as_deref(),
        Some(parent_id.as_str()),
        "{ctx}"
    );
    let references = reply.header("References").unwrap_or_default();
    assert!(
        references.split_whitespace().any(|r| r == parent_id),
        "References must contain {parent_id}; {ctx}"
    );
    let subject = reply.header("Subject").unwrap_or_default();
    assert!(subject.starts_with("Re:"), "{ctx}");
    assert!(subject.ends_with(&parent.subject), "{ctx}");
    assert!(
        reply
            .header("Message-ID")
            .is_some_and(|m| m.starts_with('<') && m != parent_id),
        "{ctx}"
    );
    // body as mutt wrote it: the text, the attribution, the quote, the signature
    let content_type = reply
        .header("Content-Type")
        .unwrap_or_default()
        .to_ascii_lowercase();
    assert_eq!(
        content_type.contains("format=flowed"),
        quoting == Quoting::Flowed,
        "{ctx}"
    );
    let lines = reply.body_lines();
    let attribution = lines
        .iter()
        .position(|l| is_attribution(l))
        .unwrap_or_else(|| panic!("no attribution line; {ctx}"));
    let quoted: Vec<&String> = lines.iter().filter(|l| l.starts_with('>')).collect();
    assert!(quoted.len() >= 3, "{ctx}");
    let first_quoted = match quoting {
        // RFC 3676 quote marks: `>` directly followed by the line (mutt ignores indent_string)
        Quoting::Flowed => format!(">{}", parent.first_line),
        Quoting::Plain => {
            assert!(
                quoted
                    .iter()
                    .all(|l| l.starts_with("> ") || l.trim_end() == ">"),
                "{ctx}"
            );
            format!("> {}", parent.first_line)
        }
    };
    assert_eq!(
        lines.get(attribution + 1),
        Some(&first_quoted),
        "the quote of the parent's first line; {ctx}"
    );
    assert!(
        lines.iter().any(|l| l == "-- "),
        "mutt's signature separator; {ctx}"
    );
    // taskmail's codec: a reply in the parent's thread whose text is exactly the human's
    let (inbound, classified) = reply.classify_all(label);
    assert!(
        inbound.sender().is_some_and(|s| s.starts_with("human@")),
        "{ctx}"
    );
    match classified {
        Classified::Reply {
            keys,
            text: Some(extracted),
        } => {
            assert_eq!(keys.first(), Some(&parent.id), "{ctx}");
            assert_eq!(extracted, text, "extracted text; {ctx}");
        }
        other => panic!("expected a reply with text, got {other:?}; {ctx}"),
    }
}

/// mutt's default attribution `On %d, %n wrote:` for mails from the worker.
fn default_attribution(line: &str) -> bool {
    line.starts_with("On ") && line.ends_with(&format!(", {WORKER_NAME} wrote:"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutt_reply_to_help_request_is_a_reply_with_the_human_text() {
    if !mutt_installed() {
        return;
    }
    for server in support::servers() {
        let parties = Parties::new(server).await;
        let label = parties.label();
        let help = AampMessage::new(
            TaskId::new(ids::task_id()),
            Payload::HelpNeeded(HelpNeeded {
                question: "Which colour should the status badge use?".to_owned(),
                blocked_reason: "The style guide lists two brand blues.".to_owned(),
                suggested_options: vec!["Navy #1f3a93".to_owned(), "Sky #3fa9f5".to_owned()],
            }),
        );
        let parent = parties.send_aamp(&help).await;
        let text =
            "Use option 2, the sky blue.\n\nIf it fails the contrast check, fall back to navy.";
        let mutt = Mutt::new(&parties.server, &parties.human);
        let (reply, timings, end_to_end) =
            parties.mutt_reply(&mutt, &parent.id, &parent, text).await;
        println!(
            "{label}: one mutt reply: {timings}; reply in worker@'s mailbox (JMAP) {} ms after \
             starting mutt\n--- raw reply written by mutt ---\n{}--- end ---",
            end_to_end.as_millis(),
            reply.raw_text().replace("\r\n", "\n")
        );
        check_mutt_reply(
            &label,
            &reply,
            &parent,
            text,
            Quoting::Flowed,
            default_attribution,
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutt_reply_to_task_result_found_by_subject() {
    if !mutt_installed() {
        return;
    }
    for server in support::servers() {
        let parties = Parties::new(server).await;
        let label = parties.label();
        let result = AampMessage::new(
            TaskId::new(ids::task_id()),
            Payload::Result(TaskResult {
                status: Status::Completed,
                output: "Badge colours updated in 3 files.\nAll checks passed.".to_owned(),
                error_msg: None,
                structured_result: None,
            }),
        );
        let parent = parties.send_aamp(&result).await;
        let text = "Thanks, looks good. Please also update the dark theme.";
        let mutt = Mutt::new(&parties.server, &parties.human);
        // found by its subject (`~s`): "[AAMP Result] Task <uuid> - completed"
        let (reply, timings, _) = parties
            .mutt_reply(&mutt, &parent.subject, &parent, text)
            .await;
        println!("{label}: mutt reply to a task.result: {timings}");
        check_mutt_reply(
            &label,
            &reply,
            &parent,
            text,
            Quoting::Flowed,
            default_attribution,
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutt_multi_paragraph_reply_with_long_line_is_unflowed() {
    if !mutt_installed() {
        return;
    }
    for server in support::servers() {
        let parties = Parties::new(server).await;
        let label = parties.label();
        let help = AampMessage::new(
            TaskId::new(ids::task_id()),
            Payload::HelpNeeded(HelpNeeded {
                question: "How should the migration handle archived projects?".to_owned(),
                blocked_reason: "The spec does not say.".to_owned(),
                suggested_options: Vec::new(),
            }),
        );
        let parent = parties.send_aamp(&help).await;
        let long = "Archived projects keep their data but are read-only, so migrate them in a \
                    separate batch after the active ones, keep their original timestamps, do not \
                    send any notification e-mails to their former members, and write one line \
                    per project to the migration log so that we can audit the run afterwards.";
        assert!(long.len() > 3 * mutt::TEXT_WIDTH);
        let text = format!(
            "Good question.\n\n{long}\n\nFor the café team's projects:\n- keep the owners\n- drop \
             the guests\n\nThanks!"
        );
        let mutt = Mutt::new(&parties.server, &parties.human);
        let (reply, timings, _) = parties.mutt_reply(&mutt, &parent.id, &parent, &text).await;
        println!("{label}: mutt multi-paragraph reply: {timings}");
        // the long line travelled as soft-broken lines (ending in a space), none of them long
        let lines = reply.body_lines();
        let soft: Vec<&String> = lines
            .iter()
            .filter(|l| l.ends_with(' ') && l.as_str() != "-- ")
            .collect();
        assert!(
            soft.len() >= 3,
            "{label}: expected soft line breaks in:\n{}",
            reply.raw_text()
        );
        assert!(
            lines.iter().all(|l| l.chars().count() <= 78),
            "{label}: a line over 78 characters:\n{}",
            reply.raw_text()
        );
        check_mutt_reply(
            &label,
            &reply,
            &parent,
            &text,
            Quoting::Flowed,
            default_attribution,
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutt_reply_without_format_flowed_quotes_with_gt_space() {
    if !mutt_installed() {
        return;
    }
    for server in support::servers() {
        let parties = Parties::new(server).await;
        let label = parties.label();
        let help = AampMessage::new(
            TaskId::new(ids::task_id()),
            Payload::HelpNeeded(HelpNeeded {
                question: "May I delete the stale branches?".to_owned(),
                blocked_reason: "Deleting is irreversible.".to_owned(),
                suggested_options: vec!["yes".to_owned(), "no".to_owned()],
            }),
        );
        let parent = parties.send_aamp(&help).await;
        let text = "Yes, but keep release/*.\nAsk again before deleting anything else.";
        let mutt = Mutt::new(&parties.server, &parties.human);
        // mutt's classic setup: no format=flowed, `indent_string` "> ", the old attribution
        mutt.set("text_flowed", "no");
        mutt.set("attribution", "* %n <%a> [%{%Y-%m-%d %H:%M}]:");
        let (reply, timings, _) = parties.mutt_reply(&mutt, &parent.id, &parent, text).await;
        println!("{label}: mutt reply without format=flowed: {timings}");
        check_mutt_reply(&label, &reply, &parent, text, Quoting::Plain, |l| {
            l.starts_with(&format!("* {WORKER_NAME} <worker@example.test> [")) && l.ends_with("]:")
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutt_new_mail_is_plain_with_text_intact() {
    if !mutt_installed() {
        return;
    }
    for server in support::servers() {
        let parties = Parties::new(server).await;
        let label = parties.label();
        let token = support::unique_token();
        let subject = format!("Release notes {token}");
        let text = "Hi,\n\nplease draft the release notes for Friday. Keep them short: one paragraph \
                    per feature, and link the tracking issue of each one so that readers can dig \
                    deeper.\n\nHana";
        let state = parties.worker_jmap.email_state().await;
        let mutt = Mutt::new(&parties.server, &parties.human);
        let timings =
            tokio::task::block_in_place(|| mutt.compose(&parties.worker.email, &subject, text));
        println!("{label}: mutt new mail: {timings}");
        let found = wait_for_email(
            &parties.worker_jmap,
            &state,
            &format!("mutt's mail '{subject}' in {}", parties.worker.email),
            |e| e["subject"] == subject.as_str(),
        )
        .await;
        let mail = fetch(&parties.worker_jmap, &found).await;
        let raw = mail.raw_text();
        let ctx = format!("{label}: mutt's mail:\n{raw}");
        assert!(mail.header("In-Reply-To").is_none(), "{ctx}");
        assert!(mail.header("References").is_none(), "{ctx}");
        assert!(
            mail.header("Content-Type")
                .unwrap_or_default()
                .contains("format=flowed"),
            "{ctx}"
        );
        let (inbound, classified) = mail.classify_all(&label);
        assert_eq!(classified, Classified::Plain, "{ctx}");
        assert_eq!(inbound.subject.as_deref(), Some(subject.as_str()));
        let body = inbound
            .body
            .as_ref()
            .and_then(|b| b.text.as_deref())
            .unwrap_or_default()
            .replace("\r\n", "\n");
        assert_eq!(
            body.trim_end(),
            format!("{text}\n\n-- \n{}", mutt::SIGNATURE),
            "{ctx}"
        );
    }
}
