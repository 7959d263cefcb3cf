//! Outbound: every message the worker sends, from typed intent to accepted submission
//! (design.md "Data flow", Outbound).
//!
//! 1. `render`: an AAMP payload becomes a [`wire::message::Outbound`](Outbound) with a
//!    Message-ID we choose (`<ULID@our-domain>`, [`crate::ids::message_id`]), a Date,
//!    In-Reply-To the message answered and References the whole chain
//!    ([`thread::reply_chain`] over the indexed thread and the answered message's own
//!    References), then RFC 5322 bytes.
//! 2. `enqueue`: the bytes go into the store's outbox (idempotent on the Message-ID) and the
//!    Message-ID into the task's thread index (direction out), inside the caller's transaction,
//!    the same one that makes the state change the message reports. Either both happen or
//!    neither.
//! 3. `drain`: a loop submits due outbox rows through [`Submit::send_raw`] (envelope from the
//!    account's login to the stored recipients), marks them sent, retries transient failures
//!    with a jittered backoff, and dead-letters permanent ones (logged, audited, an event).
//!
//! A crash between 2 and 3 loses nothing: the row is still pending on restart and the same
//! bytes go out with the same Message-ID, which receivers dedupe on.
//!
//! Recipients are always the task's peer, the sender of the dispatch (or of the plain mail):
//! Reply-To, Cc and anything else in inbound content never add a recipient
//! (`protocol/trust.md` point 7).

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::watch;

use super::context::{ReplyTarget, TaskContext};
use super::events::EventKind;
use super::{Core, Execute};
use crate::config::Account;
use crate::store::{AuditEntry, Direction, OutgoingMessage, Role, Store, StoreError, ThreadEntry};
use crate::transport::{Backoff, MailStore, SmtpEnvelope, Submit};
use crate::trust::sign::SigningKey;
use crate::wire::aamp::{AampMessage, Payload, Status, TaskId};
use crate::wire::message::{Attachment, Mailbox, Outbound};
use crate::wire::thread;

/// Outbox rows submitted per pass.
const BATCH: usize = 32;
/// Pending outbox rows looked at per pass.
const SCAN: usize = 512;
/// Submissions in flight at once (the SMTP pool bounds the connections).
const SENDERS: usize = 8;
/// How often the outbox is looked at without a kick (retries that became due).
const IDLE_PASS: Duration = Duration::from_secs(1);

/// How a reply looks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Style {
    /// The AAMP templates (subject and body as the reference SDKs write them).
    Aamp,
    /// A readable reply to a plain mail: `Re: <subject>`, the text as the body; the `X-AAMP-*`
    /// headers are still there so AAMP tools understand it.
    Plain {
        /// The Subject of the mail that started the task.
        subject: String,
    },
}

impl Style {
    pub(crate) fn of(context: &TaskContext) -> Style {
        match context.origin {
            super::context::Origin::Aamp => Style::Aamp,
            super::context::Origin::Plain => Style::Plain {
                subject: context.subject.clone(),
            },
        }
    }
}

/// A rendered message, ready for the outbox.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Rendered {
    pub(crate) message_id: String,
    pub(crate) intent: &'static str,
    pub(crate) task_id: TaskId,
    pub(crate) rcpt_to: Vec<String>,
    pub(crate) bytes: Vec<u8>,
}

/// What to render.
#[derive(Debug)]
pub(crate) struct Reply<'a> {
    pub(crate) account: &'a Account,
    /// The one recipient: the task's peer.
    pub(crate) to: &'a str,
    pub(crate) task_id: &'a TaskId,
    pub(crate) payload: Payload,
    /// The message answered.
    pub(crate) answering: &'a ReplyTarget,
    /// The task's thread as indexed, oldest first.
    pub(crate) thread: &'a [String],
    pub(crate) style: Style,
    pub(crate) attachments: Vec<Attachment>,
    /// The account's signing key: when set, the mail carries an `X-ASMTP-Signature`.
    pub(crate) signer: Option<&'a SigningKey>,
}

/// Renders a reply (module docs, step 1).
pub(crate) fn render(reply: Reply<'_>, now: DateTime<Utc>) -> Rendered {
    let message = AampMessage::new(reply.task_id.clone(), reply.payload);
    let domain = crate::ids::domain_of(&reply.account.email);
    let message_id = crate::ids::message_id(now, &domain);
    let (in_reply_to, references) = chain(reply.answering, reply.thread);
    let (subject, text) = match &reply.style {
        Style::Aamp => (message.subject(), message.body_text()),
        Style::Plain { subject } => (re_subject(subject), plain_text(&message)),
    };
    let mut outbound = Outbound::aamp(
        &message,
        Mailbox {
            name: reply.account.display_name.clone(),
            email: reply.account.email.clone(),
        },
        vec![Mailbox::new(reply.to)],
        now,
        message_id.clone(),
    );
    outbound.subject = subject;
    outbound.text = text;
    outbound.in_reply_to = in_reply_to;
    outbound.references = references;
    outbound.attachments = reply.attachments;
    if let Some(key) = reply.signer {
        key.sign_outbound(&mut outbound, now);
    }
    Rendered {
        message_id,
        intent: message.intent().as_str(),
        task_id: reply.task_id.clone(),
        rcpt_to: vec![reply.to.to_owned()],
        bytes: outbound.render(),
    }
}

/// In-Reply-To and References: the answered message last, preceded by its own References we
/// do not know and then the task's thread up to it, in order (messages of the thread that came
/// after the answered one, such as its own ack, are not its ancestors).
fn chain(answering: &ReplyTarget, thread_ids: &[String]) -> (Option<String>, Vec<String>) {
    let parent = thread::strip_brackets(&answering.message_id);
    if parent.is_empty() {
        let refs: Vec<String> = thread_ids.to_vec();
        return (None, refs);
    }
    let before = match thread_ids.iter().position(|id| *id == parent) {
        Some(at) => &thread_ids[..at],
        None => thread_ids,
    };
    let mut prior: Vec<String> = answering
        .references
        .iter()
        .filter(|r| !before.contains(r))
        .cloned()
        .collect();
    prior.extend(before.iter().cloned());
    let (parent, references) = thread::reply_chain(&parent, &prior);
    (Some(parent), references)
}

/// `Re: subject`, without stacking prefixes.
fn re_subject(subject: &str) -> String {
    let s = subject.trim();
    if s.len() >= 3 && s[..3].eq_ignore_ascii_case("re:") {
        s.to_owned()
    } else if s.is_empty() {
        "Re: your task".to_owned()
    } else {
        format!("Re: {s}")
    }
}

/// The readable body of a reply to a plain mail.
fn plain_text(message: &AampMessage) -> String {
    match &message.payload {
        Payload::Result(r) => match (r.status, r.error_msg.as_deref()) {
            (Status::Rejected, Some(error)) if r.output.trim().is_empty() => {
                format!("The task could not be done: {error}")
            }
            (Status::Rejected, Some(error)) => {
                format!(
                    "The task could not be done: {error}\n\n{}",
                    r.output.trim_end()
                )
            }
            _ => r.output.trim_end().to_owned(),
        },
        Payload::HelpNeeded(help) => {
            let mut text = help.question.trim().to_owned();
            if !help.blocked_reason.trim().is_empty() {
                text.push_str(&format!("\n\n{}", help.blocked_reason.trim()));
            }
            if !help.suggested_options.is_empty() {
                text.push_str("\n\nSuggested answers:");
                for (i, option) in help.suggested_options.iter().enumerate() {
                    text.push_str(&format!("\n  {}. {option}", i + 1));
                }
            }
            text.push_str("\n\nReply to this mail to answer.");
            text
        }
        _ => message.body_text(),
    }
}

/// Puts a rendered message in the outbox and its Message-ID in the thread of the task's `role`
/// side (module docs, step 2): [`Role::Worker`] for the worker's replies,
/// [`Role::Dispatcher`] for dispatches, answers and cancels. Call inside the transaction of the
/// state change it reports. `index = None` for messages outside any stored task (a neutral
/// refusal).
pub(crate) fn enqueue(
    store: &Store,
    account: &Account,
    key: &str,
    rendered: &Rendered,
    index: Option<Role>,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    store.outbox_put(
        &OutgoingMessage {
            message_id: &rendered.message_id,
            account: key,
            smtp_from: &account.login,
            rcpt_to: &rendered.rcpt_to,
            bytes: &rendered.bytes,
            task_id: Some(&rendered.task_id),
            intent: rendered.intent,
        },
        now,
    )?;
    if let Some(role) = index {
        store.index_message(
            key,
            &rendered.task_id,
            role,
            &ThreadEntry {
                message_id: rendered.message_id.clone(),
                intent: rendered.intent.to_owned(),
                direction: Direction::Out,
                at: now,
            },
        )?;
    }
    Ok(())
}

/// The Message-IDs of the thread of a task's `role` side, oldest first.
pub(crate) fn thread_ids(
    store: &Store,
    key: &str,
    task_id: &TaskId,
    role: Role,
) -> Result<Vec<String>, StoreError> {
    Ok(store
        .thread(key, task_id, role)?
        .into_iter()
        .map(|entry| entry.message_id)
        .collect())
}

/// A content type for an attachment the agent left, by its file name's extension.
pub(crate) fn content_type_for(filename: &str) -> &'static str {
    let ext = filename
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "txt" | "log" | "md" => "text/plain",
        "csv" => "text/csv",
        "html" | "htm" => "text/html",
        "json" => "application/json",
        "pdf" => "application/pdf",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "zip" => "application/zip",
        _ => "application/octet-stream",
    }
}

/// Submits the outbox until `stop` turns true, then makes one last pass (module docs, step 3).
pub(crate) async fn drain<M, S, A>(core: Arc<Core<M, S, A>>, mut stop: watch::Receiver<bool>)
where
    M: MailStore + 'static,
    S: Submit + 'static,
    A: Execute + 'static,
{
    let backoff = core.backoffs.outbox;
    loop {
        let more = pass(&core, backoff).await;
        if *stop.borrow() {
            return;
        }
        if more {
            continue;
        }
        tokio::select! {
            () = core.outbox_kick.notified() => {}
            () = tokio::time::sleep(IDLE_PASS) => {}
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    // NOTE: the last pass: whatever is due goes out before the daemon stops.
                    while pass(&core, backoff).await {}
                    return;
                }
            }
        }
    }
}

/// One pass over the due rows of this account. True when there may be more to send at once.
async fn pass<M, S, A>(core: &Core<M, S, A>, backoff: Backoff) -> bool
where
    M: MailStore + 'static,
    S: Submit + 'static,
    A: Execute + 'static,
{
    let now = core.now();
    // NOTE: every pending row, due or not, oldest first: a task's messages go out in the order
    // they were queued, so a result never overtakes an ack that waits for a retry.
    let pending = match core
        .db
        .with(|s| s.outbox_pending(now + chrono::TimeDelta::days(3650), SCAN))
    {
        Ok(pending) => pending,
        Err(error) => {
            tracing::error!(error = %crate::transport::smtp::error_chain(&error), "cannot read the outbox");
            return false;
        }
    };
    let full = pending.len() == SCAN;
    let mut held: std::collections::HashSet<Option<TaskId>> = std::collections::HashSet::new();
    let mut chosen = Vec::new();
    for item in pending.into_iter().filter(|item| item.account == core.key) {
        if item.task_id.is_some() && held.contains(&item.task_id) {
            continue;
        }
        if item.next_attempt_at > now || chosen.len() >= BATCH {
            held.insert(item.task_id.clone());
            continue;
        }
        chosen.push(item);
    }
    // NOTE: the lease guard (lease.rs, README "Many workers, one mailbox"): an ack or result
    // of a leased mail is marked in the mailbox first, for the whole pass in one call; a lost
    // lease means another daemon has the task: never sent.
    let guards = lease_guards(core, &chosen).await;
    let finished: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let sent = std::sync::atomic::AtomicUsize::new(0);
    // NOTE: one group per task (its messages in order; a held message holds the rest of its
    // task), the groups submitted concurrently over the connection pool.
    let mut groups: Vec<Vec<crate::store::OutboxItem>> = Vec::new();
    for item in chosen {
        match groups
            .iter_mut()
            .find(|g| item.task_id.is_some() && g[0].task_id == item.task_id)
        {
            Some(group) => group.push(item),
            None => groups.push(vec![item]),
        }
    }
    let work = groups.into_iter().map(|group| {
        let guards = &guards;
        let finished = &finished;
        let sent = &sent;
        async move {
    for item in group {
        let mut hold = false;
        sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match guards.get(&item.message_id) {
            Some(super::lease::Guard::Superseded(why)) => {
                tracing::info!(message_id = %item.message_id, reason = %why, "not sent: another daemon holds the task");
                let now = core.now();
                if let Err(error) = core.db.with(|s| {
                    s.outbox_mark_failed(&item.message_id, &format!("superseded: {why}"), true, now)
                }) {
                    tracing::error!(error = %crate::transport::smtp::error_chain(&error), "cannot record a superseded message");
                }
                continue;
            }
            Some(super::lease::Guard::Wait(why)) => {
                tracing::debug!(message_id = %item.message_id, reason = %why, "not sent yet: the lease is being confirmed");
                let next = core.now() + chrono::TimeDelta::milliseconds(250);
                if let Err(error) = core
                    .db
                    .with(|s| s.outbox_mark_failed(&item.message_id, why, false, next))
                {
                    tracing::error!(error = %crate::transport::smtp::error_chain(&error), "cannot record a held message");
                }
                // NOTE: the rest of this task's messages wait too (order within a task).
                break;
            }
            Some(super::lease::Guard::Send) | None => {}
        }
        let envelope = SmtpEnvelope::new(item.smtp_from.clone(), item.rcpt_to.clone());
        let span = tracing::info_span!(
            "send",
            message_id = %item.message_id,
            intent = %item.intent,
            task_id = item.task_id.as_ref().map(TaskId::as_str).unwrap_or(""),
        );
        let result = core.submit.send_raw(&envelope, &item.bytes).await;
        let now = core.now();
        // health hook (faults part): the last submission and SMTP error, for `taskmail doctor`
        core.health.note_submit(&result, now);
        let recorded = match result {
            Ok(()) => {
                tracing::info!(parent: &span, rcpt = ?item.rcpt_to, bytes = item.bytes.len(), "sent");
                core.events.emit(
                    now,
                    EventKind::Sent {
                        message_id: item.message_id.clone(),
                        intent: item.intent.clone(),
                        task_id: item.task_id.clone(),
                    },
                );
                if item.intent == "task.result"
                    && let Some(task_id) = &item.task_id
                {
                    finished
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .extend(task_emails(core, task_id));
                }
                core.db.with(|s| s.outbox_mark_sent(&item.message_id, now))
            }
            Err(error) if error.is_transient() || error.is_auth() => {
                hold = true;
                let delay = backoff.delay(item.attempts);
                let text = crate::transport::smtp::error_chain(&error);
                if error.is_auth() {
                    tracing::error!(parent: &span, error = %text, retry_in_s = delay.as_secs(), "cannot send: the submission server refused the login; fix the password, the message stays queued");
                } else {
                    tracing::warn!(parent: &span, error = %text, retry_in_s = delay.as_secs(), "cannot send yet; will retry");
                }
                let next = now + chrono::TimeDelta::from_std(delay).unwrap_or_default();
                core.db
                    .with(|s| s.outbox_mark_failed(&item.message_id, &text, false, next))
            }
            Err(error) => {
                let text = crate::transport::smtp::error_chain(&error);
                tracing::error!(parent: &span, error = %text, "cannot send: the server refused the message permanently; it is dead-lettered");
                core.events.emit(
                    now,
                    EventKind::DeadLetter {
                        message_id: item.message_id.clone(),
                        intent: item.intent.clone(),
                        error: text.clone(),
                    },
                );
                core.db.with(|s| {
                    s.atomically(|s| {
                        s.outbox_mark_failed(&item.message_id, &text, true, now)?;
                        s.audit(&AuditEntry {
                            at: now,
                            account: core.key.clone(),
                            message_id: Some(item.message_id.clone()),
                            peer: item.rcpt_to.first().cloned(),
                            verdict: "dead-letter".to_owned(),
                            rule: Some(format!("smtp:{}", error.status().unwrap_or(0))),
                            detail: Some(text.clone()),
                        })?;
                        Ok(true)
                    })
                })
            }
        };
        if let Err(error) = recorded {
            tracing::error!(parent: &span, error = %crate::transport::smtp::error_chain(&error), "cannot record the outcome of a submission");
        }
        if hold {
            break;
        }
    }
        }
    });
    futures_util::StreamExt::collect::<Vec<()>>(futures_util::StreamExt::buffer_unordered(
        futures_util::stream::iter(work),
        SENDERS,
    ))
    .await;
    let finished = finished
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    core.mark_done(&finished).await;
    let sent = sent.into_inner();
    sent > 0 && (full || sent >= BATCH)
}

/// The JMAP ids of a task's mails (empty when unknown).
fn task_emails<M, S, A>(core: &Core<M, S, A>, task_id: &TaskId) -> Vec<String>
where
    M: MailStore + 'static,
    S: Submit + 'static,
    A: Execute + 'static,
{
    core.db
        .with(|s| super::context::load(s, &core.key, task_id))
        .map(|ctx| ctx.emails)
        .unwrap_or_default()
}

/// The lease verdict of each ack and result in `items`, by Message-ID (lease.rs `guard`): the
/// worst verdict over the task's mails. A mailbox that cannot be reached holds them.
async fn lease_guards<M, S, A>(
    core: &Core<M, S, A>,
    items: &[crate::store::OutboxItem],
) -> std::collections::HashMap<String, super::lease::Guard>
where
    M: MailStore + 'static,
    S: Submit + 'static,
    A: Execute + 'static,
{
    use super::lease::{ACKED, Guard, RESULT};
    let mut per_item: Vec<(String, &'static str, Vec<String>)> = Vec::new();
    for item in items {
        let mark = match item.intent.as_str() {
            "task.ack" => ACKED,
            "task.result" => RESULT,
            _ => continue,
        };
        let Some(task_id) = &item.task_id else {
            continue;
        };
        let emails: Vec<String> = task_emails(core, task_id)
            .into_iter()
            .filter(|id| core.holds_any(id))
            .collect();
        if !emails.is_empty() {
            per_item.push((item.message_id.clone(), mark, emails));
        }
    }
    let mut verdicts = std::collections::HashMap::new();
    if per_item.is_empty() {
        return verdicts;
    }
    let wants: Vec<(String, &'static str)> = per_item
        .iter()
        .flat_map(|(_, mark, emails)| emails.iter().map(|id| (id.clone(), *mark)))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let answers = match core.guard(&wants).await {
        Ok(answers) => answers,
        Err(error) => {
            let why = crate::transport::smtp::error_chain(&error);
            for (message_id, _, _) in per_item {
                verdicts.insert(message_id, Guard::Wait(why.clone()));
            }
            return verdicts;
        }
    };
    for (message_id, mark, emails) in per_item {
        let mut verdict = Guard::Send;
        for id in emails {
            match answers.get(&(id, mark)) {
                Some(g @ Guard::Superseded(_)) => verdict = g.clone(),
                Some(g @ Guard::Wait(_)) if verdict == Guard::Send => verdict = g.clone(),
                _ => {}
            }
        }
        verdicts.insert(message_id, verdict);
    }
    verdicts
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::aamp::TaskResult;
    use crate::wire::message::Inbound;

    fn account() -> Account {
        let text = r#"
[accounts.worker]
email = "worker@example.test"
display-name = "Worker"
password = { raw = "x" }
smtp = { host = "127.0.0.1", port = 5587, tls = "plaintext", allow-plaintext = true }
jmap = { session-url = "http://127.0.0.1:8080/.well-known/jmap" }
"#;
        crate::config::Config::from_toml_str_with_env(
            text,
            crate::config::Mode::Strict,
            &crate::config::Env::with_home("/nonexistent"),
        )
        .unwrap()
        .account("worker")
        .unwrap()
        .clone()
    }

    #[test]
    fn replies_thread_onto_the_whole_chain() {
        let account = account();
        let target = ReplyTarget {
            message_id: "reply@x".into(),
            references: vec!["old@x".into(), "d@x".into(), "help@x".into()],
        };
        let thread = vec![
            "d@x".to_owned(),
            "ack@w".to_owned(),
            "help@x".to_owned(),
            "reply@x".to_owned(),
        ];
        let now = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let rendered = render(
            Reply {
                account: &account,
                to: "boss@example.test",
                task_id: &TaskId::new("T1"),
                payload: Payload::Result(TaskResult {
                    status: Status::Completed,
                    output: "done".into(),
                    error_msg: None,
                    structured_result: None,
                }),
                answering: &target,
                thread: &thread,
                style: Style::Aamp,
                attachments: Vec::new(),
                signer: None,
            },
            now,
        );
        assert!(rendered.message_id.ends_with("@example.test"));
        assert_eq!(rendered.rcpt_to, ["boss@example.test"]);
        let parsed = Inbound::from_bytes(&rendered.bytes).unwrap();
        assert_eq!(parsed.in_reply_to, ["reply@x"]);
        assert_eq!(
            parsed.references,
            ["old@x", "d@x", "ack@w", "help@x", "reply@x"]
        );
        assert_eq!(
            parsed.subject.as_deref(),
            Some("[AAMP Result] Task T1 - completed")
        );
    }

    #[test]
    fn plain_replies_are_readable_and_keep_the_headers() {
        let account = account();
        let key = SigningKey::from_seed(&[5; 32]);
        let target = ReplyTarget {
            message_id: "m@x".into(),
            references: Vec::new(),
        };
        let now = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let rendered = render(
            Reply {
                account: &account,
                to: "boss@example.test",
                task_id: &TaskId::new("T2"),
                payload: Payload::Result(TaskResult {
                    status: Status::Completed,
                    output: "Here you go.".into(),
                    error_msg: None,
                    structured_result: None,
                }),
                answering: &target,
                thread: &["m@x".to_owned()],
                style: Style::Plain {
                    subject: "Please summarise".into(),
                },
                attachments: vec![Attachment {
                    filename: "a.txt".into(),
                    content_type: content_type_for("a.txt").into(),
                    bytes: b"A".to_vec(),
                }],
                signer: Some(&key),
            },
            now,
        );
        let parsed = Inbound::from_bytes(&rendered.bytes).unwrap();
        // Signed with the account's key: it verifies against the public half.
        let verified = crate::trust::sign::verify_headers(
            &crate::trust::sign::HeaderView::of_inbound(&parsed),
            parsed.headers.get(crate::trust::sign::HEADER),
            Some(&key.public_key()),
            true,
            now,
            std::time::Duration::from_secs(3600),
        )
        .unwrap();
        let body = crate::trust::sign::BodyView::of_inbound(parsed.body.as_ref().unwrap());
        verified.check_body(body).unwrap();
        assert_eq!(parsed.subject.as_deref(), Some("Re: Please summarise"));
        assert_eq!(parsed.in_reply_to, ["m@x"]);
        let body = parsed.body.as_ref().unwrap();
        assert_eq!(body.text.as_deref().map(str::trim), Some("Here you go."));
        assert_eq!(body.attachments.len(), 1);
        assert_eq!(parsed.headers.get("X-AAMP-Intent"), Some("task.result"));
        assert_eq!(re_subject("RE: x"), "RE: x");
    }
}
