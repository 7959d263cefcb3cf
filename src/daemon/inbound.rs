//! The inbound pipeline (design.md "Data flow", Inbound): from "something may have changed" to
//! a routed message.
//!
//! 1. A hint ([`Hint`]: a push StateChange, a (re)connect, a safety-poll tick) wakes
//!    `listen`; hints that queued up meanwhile are merged into one pass. Without a hint
//!    source the daemon polls every `jmap.poll-interval` on its own.
//! 2. `Email/changes` since the persisted state (following `hasMoreChanges`). Only *created*
//!    emails are candidates: updates are keyword changes (ours included) or moves, and an old
//!    mail someone marks as read must not start a task. When the server cannot calculate the
//!    changes, a bounded back-fill ([`BACKFILL_LIMIT`] per page, [`BACKFILL_PAGES`] pages) asks
//!    `Email/query` for Inbox mail received since a little before the last saved batch: the gap
//!    is never skipped, and the store's marks dedupe what was seen already.
//! 3. Ids already marked processed are dropped; `Email/get` of **headers only** for the rest;
//!    mail outside the Inbox-role mailbox (our Sent copies, the Junk folder) is skipped.
//! 4. Screening, on headers: our own messages (by outbox Message-ID or From), Message-IDs seen
//!    before, mail whose task is over elsewhere (`$taskmail-result`, `$taskmail-done`), then
//!    [`crate::wire::classify()`]: invalid AAMP and unknown intents are logged and audited and
//!    never become human replies; an ack, help request, result or cancel of a task this
//!    account dispatched, or a person's reply in its thread, goes to the dispatcher side
//!    ([`super::dispatcher`]: the authentication step of the gate, then from the task's peer
//!    only; no sender policy, no claim); a `pair.request` is answered here on its headers
//!    ([`super::pairing`]: authentication and rate limit, not the sender policy); other intents that
//!    are not for a worker are left alone; a reply is looked up in the Message-ID index (no hit:
//!    it is plain mail). A dispatcher-only pipeline leaves all worker-side mail unmarked.
//! 5. The [`Gate`](super::gate::Gate): authentication, sender policy (grants read from the
//!    store at check time), rate limit (the duplicate check above is its replay step). The
//!    admitting grant travels with the mail (`Take::grant`). Refused: audited, marked, no ack, no body fetched, and per
//!    `trust.on-refused` silence or one neutral `rejected` result. Follow-ups (cancel, reply,
//!    same-TaskId dispatch) must also come from the task's peer.
//! 6. The claim ([`super::lease`]): the worker-side takes of a chunk are claimed as one
//!    batch (Fischer-style: read keywords, write the whole keyword set with our lease, wait
//!    `worker.claim-wait`, read back), at most as many as there is room to run (the rest waits
//!    in the backlog, unsettled). Mail another daemon leases is watched, not settled, and taken
//!    over when its lease shows no change for the lease time; mail whose task is over
//!    elsewhere (`$taskmail-result`, `$taskmail-done`) is settled as `done-elsewhere`. No
//!    `ifInState`: new deliveries do not make claims fail.
//! 7. `Email/get` with bodies for the claimed mail only; the body phase: the injection scan
//!    ([`crate::trust::scan`]) over the subject and the body as plain text sets the trust level
//!    and flags the agent will get; high risk moves the mail to `trust.quarantine-mailbox`
//!    (created when missing), marks it `quarantined` and audits the flags, with no ack. Then
//!    [`super::worker`] routes each, in order of arrival, inside a `message` tracing span
//!    (`message_id`, `intent`, `task_id`). Before step 2 every pass also takes the mail the
//!    operator released from quarantine (`taskmail quarantine release`): it goes through steps
//!    3 to 7 again, gate included, without being held again.
//! 8. The JMAP state is saved once the whole batch is processed.
//!
//! A mail whose routing keeps failing is given up after [`MAX_ROUTE_FAILURES`] passes (marked
//! `failed`, audited), so one bad mail cannot stall the mailbox.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};
use tokio::sync::mpsc;
use tracing::Instrument as _;

use super::context::ContentTrust;
use super::events::EventKind;
use super::gate::{GateInput, GateKind, Verdict};
use super::outbound::{self, Reply, Style};
use super::{Core, Execute};
use crate::config::OnRefused;
use crate::store::{AuditEntry, QuarantineState, Quarantined, Role, Store, StoreError};
use crate::transport::{Fetched, Hint, JmapError, MailStore, Submit};
use crate::trust::content::{TrustLevel, plain_text};
use crate::trust::scan::{self, Risk};
use crate::trust::sign::{BodyView, Checked, HeadersVerified};
use crate::wire::aamp::{Intent, Payload, Status, TaskId, TaskResult};
use crate::wire::{Classified, classify};

/// The keyword of a mail a daemon took.
pub const CLAIMED: &str = "$taskmail-claimed";
/// The keyword of a mail whose task is over.
pub const DONE: &str = "$taskmail-done";

/// Ids per headers-only `Email/get`.
const GET_CHUNK: usize = 64;
/// Ids per back-fill page.
pub const BACKFILL_LIMIT: usize = 256;
/// Back-fill pages per pass.
pub const BACKFILL_PAGES: usize = 20;
/// How far before the last saved batch a back-fill starts (delivery delays, clock skew).
const BACKFILL_MARGIN: TimeDelta = TimeDelta::minutes(10);
/// How far back a back-fill reaches when no batch was ever saved.
const BACKFILL_DEFAULT: TimeDelta = TimeDelta::days(1);
/// The gate rule of a follow-up from someone else than the task's peer.
pub(crate) const NOT_TASK_PEER: &str = "not-task-peer";
/// Failed routing passes before a mail is given up.
pub const MAX_ROUTE_FAILURES: u32 = 5;
/// The verdict (processed mark and audit) of a mail held in quarantine.
pub const QUARANTINED: &str = "quarantined";
/// The audit rule of a quarantine: the injection scan.
pub const SCAN_RULE: &str = "injection-scan";

/// Why a pass over the mailbox failed (retried with backoff).
#[derive(Debug, thiserror::Error)]
pub(crate) enum SyncError {
    #[error("cannot read the mailbox")]
    Mail(#[from] JmapError),
    #[error("cannot update the task store")]
    Store(#[from] StoreError),
}

/// What a screened, admitted mail is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum What {
    /// A `task.dispatch` (new task, follow-up, or a help answer by convention (b)).
    Dispatch,
    /// A `task.cancel` of a task we have.
    Cancel { task_id: TaskId },
    /// A person's reply in the thread of a task we have.
    Reply { task_id: TaskId },
    /// A plain mail that starts a task (`worker.plain-mail`).
    Plain,
    /// An ack, help request, result or cancel for a task this account dispatched, or a
    /// person's reply in its thread ([`super::dispatcher`]).
    ForDispatcher { task_id: TaskId },
}

/// A mail that passed screening and the gate.
#[derive(Debug)]
pub(crate) struct Take {
    /// Headers only until the body phase, then with the body.
    pub(crate) fetched: Fetched,
    /// The header From, lowercased.
    pub(crate) sender: String,
    pub(crate) what: What,
    /// The gate rule that admitted it.
    pub(crate) rule: String,
    /// The trust level and scan flags (set in the body phase).
    pub(crate) content: ContentTrust,
    /// The `message` span.
    pub(crate) span: tracing::Span,
    /// A signature whose headers verified: the body is checked once fetched.
    pub(crate) signature: Option<HeadersVerified>,
}

/// The claim journal key of a mail.
fn claim_key(account: &str, email_id: &str) -> String {
    format!("claim/{account}/{email_id}")
}

/// Marks a mail processed with `verdict`, clears its claim journal and audits it: the end of
/// every mail's way through the pipeline. Call inside the transaction of what it caused.
#[allow(clippy::too_many_arguments)]
pub(crate) fn settle(
    store: &Store,
    account: &str,
    fetched: &Fetched,
    verdict: &str,
    rule: Option<&str>,
    detail: Option<String>,
    expires_at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    store.mark_processed(
        account,
        &fetched.id,
        fetched.inbound.message_id.as_deref(),
        verdict,
        expires_at,
        now,
    )?;
    store.kv_delete(&claim_key(account, &fetched.id))?;
    store.audit(&AuditEntry {
        at: now,
        account: account.to_owned(),
        message_id: fetched.inbound.message_id.clone(),
        peer: fetched.inbound.sender(),
        verdict: verdict.split(':').next().unwrap_or(verdict).to_owned(),
        rule: rule.map(str::to_owned),
        detail,
    })?;
    Ok(())
}

/// Waits for hints and processes the mailbox after each; runs until dropped.
pub(crate) async fn listen<M, S, A>(core: Arc<Core<M, S, A>>, mut hints: mpsc::Receiver<Hint>)
where
    M: MailStore + 'static,
    S: Submit + 'static,
    A: Execute + 'static,
{
    let backoff = core.backoffs.inbound;
    let mut failures: u32 = 0;
    let mut hints_open = true;
    loop {
        let synced = core.sync().await;
        // health hook (faults part): the last sync and JMAP error, for `taskmail doctor`
        core.health.note_sync(&synced, core.now());
        let retry = match synced {
            Ok(()) => {
                failures = 0;
                None
            }
            Err(error) => {
                let delay = backoff.delay(failures);
                failures = failures.saturating_add(1);
                tracing::warn!(
                    error = %crate::transport::smtp::error_chain(&error),
                    retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                    "cannot process the mailbox; will retry"
                );
                Some(tokio::time::Instant::now() + delay)
            }
        };
        let poll = core.settings.poll_interval;
        // NOTE: mail other daemons lease is looked at again every quarter of the lease
        // (their leases may expire without any change in the mailbox).
        let sweep = (core.settings.lease / 4).max(std::time::Duration::from_millis(250));
        tokio::select! {
            () = tokio::time::sleep(sweep), if core.worker => {}
            () = core.book.room.notified(), if core.worker && core.has_backlog() => {}
            hint = hints.recv(), if hints_open => match hint {
                Some(hint) => {
                    tracing::trace!(?hint, "hint");
                    // NOTE: hints that queued up meanwhile ask for the same Email/changes.
                    while hints.try_recv().is_ok() {}
                }
                None => {
                    hints_open = false;
                    tracing::warn!(poll_ms = u64::try_from(poll.as_millis()).unwrap_or(u64::MAX), "the hint source ended; polling");
                }
            },
            () = tokio::time::sleep(poll), if !hints_open => {}
            () = sleep_until(retry), if retry.is_some() => {}
        }
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl<M, S, A> Core<M, S, A>
where
    M: MailStore + 'static,
    S: Submit + 'static,
    A: Execute + 'static,
{
    /// One pass: mail released from quarantine, then changes (or a back-fill) since the saved
    /// state, processed, state saved.
    pub(crate) async fn sync(&self) -> Result<(), SyncError> {
        self.take_released().await?;
        let since = self.db.with(|s| s.jmap_state(&self.cursor))?;
        let Some(since) = since else {
            let state = self.mail.state().await?;
            self.save_state(&state)?;
            return Ok(());
        };
        let result = self.changes_since(&since).await;
        if self.worker {
            let mut expired = self.expired_watches();
            expired.extend(self.take_backlog(self.room()));
            let expired = self.worth_a_look(expired).await.map_err(|e| match e {
                super::lease::LeaseError::Mail(e) => SyncError::Mail(e),
                super::lease::LeaseError::Store(e) => SyncError::Store(e),
            })?;
            if !expired.is_empty() {
                tracing::debug!(
                    count = expired.len(),
                    "looking again at leased mail that did not change for a lease time"
                );
                self.process(expired).await?;
            }
        }
        result
    }

    async fn changes_since(&self, since: &str) -> Result<(), SyncError> {
        let since = since.to_owned();
        match self.mail.changes(&since).await {
            Ok(changes) => {
                self.saw_updates(&changes.updated);
                if !changes.created.is_empty() {
                    tracing::debug!(created = changes.created.len(), since = %since, "changes");
                    self.process(changes.created).await?;
                }
                if changes.new_state != since {
                    self.save_state(&changes.new_state)?;
                }
                Ok(())
            }
            Err(error) if error.is_cannot_calculate_changes() => {
                tracing::warn!(since = %since, "the server cannot calculate changes from the saved state; back-filling from the Inbox");
                self.restart_watches();
                self.backfill().await
            }
            Err(error) => Err(error.into()),
        }
    }

    fn save_state(&self, state: &str) -> Result<(), StoreError> {
        let now = self.now();
        self.db.atomically(|s| {
            s.set_jmap_state(&self.cursor, state, now)?;
            s.kv_set(&synced_key(&self.cursor), &now.to_rfc3339(), now)
        })
    }

    /// A bounded `Email/query` back-fill (module docs, step 2).
    async fn backfill(&self) -> Result<(), SyncError> {
        let synced_at = self
            .db
            .with(|s| s.kv_get(&synced_key(&self.cursor)))?
            .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
            .map(|t| t.with_timezone(&Utc));
        let mut after =
            synced_at.unwrap_or_else(|| self.now() - BACKFILL_DEFAULT) - BACKFILL_MARGIN;
        let mut state: Option<String> = None;
        for page_number in 0..BACKFILL_PAGES {
            let page = self.mail.query_inbox_since(after, BACKFILL_LIMIT).await?;
            state.get_or_insert_with(|| page.state.clone());
            let full = page.ids.len() >= BACKFILL_LIMIT;
            let last = page.ids.last().cloned();
            tracing::info!(page = page_number, ids = page.ids.len(), after = %after, "back-fill page");
            self.process(page.ids).await?;
            if !full {
                break;
            }
            let Some(last) = last else { break };
            let newest = self
                .mail
                .get_headers(std::slice::from_ref(&last))
                .await?
                .first()
                .and_then(|f| f.received_at);
            match newest {
                // NOTE: `after` is strict and second-grained: step back one second and let the
                // processed marks drop the overlap.
                Some(at) if at - TimeDelta::seconds(1) > after => {
                    after = at - TimeDelta::seconds(1)
                }
                _ => break,
            }
        }
        if let Some(state) = state {
            self.save_state(&state)?;
        }
        Ok(())
    }

    /// Steps 3 to 7 for `ids`.
    async fn process(&self, ids: Vec<String>) -> Result<(), SyncError> {
        let fresh: Vec<String> = self
            .db
            .with(|s| {
                let mut fresh = Vec::with_capacity(ids.len());
                let mut settled = Vec::new();
                for id in ids {
                    if s.is_processed(&self.key, &id)? {
                        settled.push(id);
                    } else {
                        fresh.push(id);
                    }
                }
                Ok((fresh, settled))
            })
            .map(|(fresh, settled): (Vec<String>, Vec<String>)| {
                for id in &settled {
                    self.unwatch(id);
                }
                fresh
            })?;
        for chunk in fresh.chunks(GET_CHUNK) {
            let mut headers = self.mail.get_headers(chunk).await?;
            headers.sort_by(|a, b| (a.received_at, &a.id).cmp(&(b.received_at, &b.id)));
            let mut takes = Vec::new();
            for fetched in headers {
                if !fetched.mailbox_ids.contains(&self.inbox_id) {
                    continue;
                }
                let span = tracing::info_span!(
                    "message",
                    message_id = fetched.inbound.message_id.as_deref().unwrap_or(""),
                    email_id = %fetched.id,
                    intent = tracing::field::Empty,
                    task_id = tracing::field::Empty,
                );
                let screened = span.in_scope(|| self.screen(fetched, &span))?;
                if let Some(take) = screened {
                    takes.push(take);
                }
            }
            // NOTE: mail for a task we dispatched is ours by the task in our store: no other
            // daemon can route it, so it takes no claim (and no round trip). The rest is
            // claimed as one batch (lease.rs: one write, one wait, one read-back).
            let mut wanted: Vec<String> = takes
                .iter()
                .filter(|t| !matches!(t.what, What::ForDispatcher { .. }))
                .map(|t| t.fetched.id.clone())
                .collect();
            // NOTE: claim no more than we have room to run: the rest waits in the backlog
            // (not settled), so that other daemons on the mailbox take their share.
            let later = wanted.split_off(self.room().min(wanted.len()));
            self.defer(&later);
            let (won, over) = self.claim_batch(&wanted).await.map_err(|e| match e {
                super::lease::LeaseError::Mail(e) => SyncError::Mail(e),
                super::lease::LeaseError::Store(e) => SyncError::Store(e),
            })?;
            let mut claimed = Vec::with_capacity(takes.len());
            for take in takes {
                if matches!(take.what, What::ForDispatcher { .. }) || won.contains(&take.fetched.id)
                {
                    claimed.push(take);
                } else if later.contains(&take.fetched.id) {
                    let _in = take.span.enter();
                    tracing::debug!("no room to run it now; left for later");
                } else if over.contains(&take.fetched.id) {
                    let _in = take.span.enter();
                    self.ignore(&take.fetched, "ignored:done-elsewhere", None)?;
                } else {
                    let _in = take.span.enter();
                    // NOTE: not settled: watched, and taken over if its holder goes silent.
                    tracing::debug!("leased by another daemon; watching");
                }
            }
            if claimed.is_empty() {
                continue;
            }
            let ids: Vec<String> = claimed.iter().map(|t| t.fetched.id.clone()).collect();
            let mut bodies: HashMap<String, Fetched> = self
                .mail
                .get_bodies(&ids)
                .await?
                .into_iter()
                .map(|f| (f.id.clone(), f))
                .collect();
            for mut take in claimed {
                let Some(full) = bodies.remove(&take.fetched.id) else {
                    self.ignore(&take.fetched, "ignored:gone", None)?;
                    continue;
                };
                take.fetched = full;
                if !self.check_signed_body(&take)? {
                    continue;
                }
                let span = take.span.clone();
                if self.inspect(&mut take).instrument(span).await? {
                    self.route_guarded(take).await?;
                }
            }
        }
        Ok(())
    }

    /// The release hook (step 1b): mail `taskmail quarantine release` moved back to the Inbox.
    /// A move is an update in `Email/changes`, never a creation, so the store's `released`
    /// rows are the signal, checked on every pass (the push hint the move causes starts one).
    /// Each goes through steps 3 to 7 again (the release forgot its processed mark): the gate
    /// and the claim, but no quarantine ([`Self::inspect`]). Then the rows are `done`.
    async fn take_released(&self) -> Result<(), SyncError> {
        if !self.worker {
            return Ok(());
        }
        let released = self
            .db
            .with(|s| s.quarantine_list(&self.key, Some(QuarantineState::Released)))?;
        if released.is_empty() {
            return Ok(());
        }
        let wanted: Vec<String> = released.iter().map(|q| q.email_id.clone()).collect();
        // NOTE: `quarantine release` records the release before it moves the mail back (so
        // that the push the move causes finds the row): a row whose mail is not in the Inbox
        // yet waits for a later pass; a mail that is gone is done with.
        let present = self.mail.get_headers(&wanted).await?;
        let ids: Vec<String> = wanted
            .iter()
            .filter(|id| {
                present
                    .iter()
                    .find(|f| &f.id == *id)
                    .is_none_or(|f| f.mailbox_ids.contains(&self.inbox_id))
            })
            .cloned()
            .collect();
        if ids.is_empty() {
            return Ok(());
        }
        tracing::info!(
            count = ids.len(),
            "mail released from quarantine; processing it again"
        );
        self.process(ids.clone()).await?;
        let now = self.now();
        self.db.atomically(|s| {
            for id in &ids {
                s.quarantine_transition(
                    &self.key,
                    id,
                    &[QuarantineState::Released],
                    QuarantineState::Done,
                    now,
                )?;
            }
            Ok(())
        })?;
        Ok(())
    }

    /// The body phase (step 7, before routing): the injection scan over the text an agent
    /// would get. Sets the take's trust level and flags. High risk: the mail moves to the
    /// quarantine mailbox, no ack, nothing runs (false). A mail the operator released is not
    /// held again (its flags still go to the agent).
    async fn inspect(&self, take: &mut Take) -> Result<bool, SyncError> {
        if !matches!(take.what, What::Dispatch | What::Reply { .. } | What::Plain) {
            // NOTE: cancels carry no text for an agent; mail for our dispatches goes to the
            // dispatcher, never to an agent.
            return Ok(true);
        }
        let inbound = &take.fetched.inbound;
        let body = inbound.body.as_ref();
        let html = body.and_then(|b| b.html.as_deref());
        let text = body.and_then(|b| b.text.as_deref());
        let subject = inbound.subject.as_deref().unwrap_or_default();
        // NOTE: the scan reads what the agent will be given: a dispatch's title and
        // instructions, a reply without the quoted history (which holds our own earlier mail),
        // a plain mail's new text.
        let agent_text = match (&take.what, classify(inbound)) {
            (What::Dispatch, Classified::Aamp(parsed)) => match parsed.message.payload {
                Payload::Dispatch(d) => format!("{}\n\n{}", d.title, d.instructions),
                _ => String::new(),
            },
            (What::Reply { .. }, Classified::Reply { text, .. }) => text.unwrap_or_default(),
            _ => {
                let new = crate::wire::reply::human_reply(text, html);
                let new = if new.trim().is_empty() {
                    plain_text(text, html)
                } else {
                    new
                };
                format!("{subject}\n\n{new}")
            }
        };
        let report = scan::scan(&agent_text, html);
        take.content = ContentTrust {
            level: TrustLevel::of(self.settings.authenticated, true),
            risk: report.risk,
            flags: report.flags.clone(),
            message_id: inbound.message_id.clone(),
        };
        if report.flags.is_empty() {
            return Ok(true);
        }
        tracing::info!(scan = %report.summary(), "injection scan flagged this mail");
        if report.risk < Risk::High {
            return Ok(true);
        }
        let released = self
            .db
            .with(|s| s.quarantine_get(&self.key, &take.fetched.id))?
            .is_some_and(|q| q.state == QuarantineState::Released);
        if released {
            tracing::info!("released by the operator: not held again");
            return Ok(true);
        }
        self.quarantine(take, &report).await?;
        Ok(false)
    }

    /// Holds a high-risk mail: recorded in the store, moved to the quarantine mailbox (created
    /// when missing) without our claim keyword, marked processed `quarantined` and audited with
    /// the flags (never the body). No ack; nothing runs.
    async fn quarantine(&self, take: &Take, report: &scan::Report) -> Result<(), SyncError> {
        let fetched = &take.fetched;
        let now = self.now();
        let flags = serde_json::to_string(&report.flags).unwrap_or_else(|_| "[]".to_owned());
        // NOTE: the row first: a crash after the move leaves a row that says where the mail
        // went; the claim journal makes the next pass finish the job.
        self.db.with(|s| {
            s.quarantine_hold(&Quarantined {
                account: self.key.clone(),
                email_id: fetched.id.clone(),
                message_id: fetched.inbound.message_id.clone(),
                sender: fetched.inbound.sender(),
                subject: fetched.inbound.subject.clone(),
                risk: report.risk.as_str().to_owned(),
                flags,
                state: QuarantineState::Held,
                quarantined_at: now,
                updated_at: now,
            })
        })?;
        let mailbox = crate::transport::find_or_create_mailbox(
            &*self.mail,
            &self.settings.quarantine_mailbox,
        )
        .await?;
        self.mail.move_to(&fetched.id, &mailbox.id).await?;
        self.release(&fetched.id).await;
        self.db.atomically(|s| {
            settle(
                s,
                &self.key,
                fetched,
                QUARANTINED,
                Some(SCAN_RULE),
                Some(report.summary()),
                None,
                now,
            )
        })?;
        tracing::warn!(
            mailbox = %self.settings.quarantine_mailbox,
            scan = %report.summary(),
            "high injection risk: quarantined; no ack, nothing runs"
        );
        self.events.emit(
            now,
            EventKind::Ignored {
                message_id: fetched.inbound.message_id.clone(),
                verdict: QUARANTINED.to_owned(),
            },
        );
        Ok(())
    }

    /// Routes one mail; gives it up after [`MAX_ROUTE_FAILURES`] failed passes.
    async fn route_guarded(&self, take: Take) -> Result<(), SyncError> {
        let fetched = take.fetched.clone();
        let span = take.span.clone();
        match self.route(take).instrument(span.clone()).await {
            Ok(()) => {
                self.failures_lock().remove(&fetched.id);
                Ok(())
            }
            Err(error) => {
                let count = {
                    let mut failures = self.failures_lock();
                    let count = failures.entry(fetched.id.clone()).or_insert(0);
                    *count += 1;
                    *count
                };
                if count < MAX_ROUTE_FAILURES {
                    return Err(error);
                }
                let text = crate::transport::smtp::error_chain(&error);
                span.in_scope(
                    || tracing::error!(error = %text, "cannot handle this mail; giving up on it"),
                );
                self.failures_lock().remove(&fetched.id);
                let now = self.now();
                self.db.atomically(|s| {
                    settle(
                        s,
                        &self.key,
                        &fetched,
                        "failed",
                        None,
                        Some(text),
                        None,
                        now,
                    )
                })?;
                Ok(())
            }
        }
    }

    fn failures_lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, u32>> {
        self.failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Marks a mail processed as ignored (audited) and says so.
    pub(crate) fn ignore(
        &self,
        fetched: &Fetched,
        verdict: &str,
        detail: Option<String>,
    ) -> Result<(), StoreError> {
        let now = self.now();
        // NOTE: the audit row's rule is what follows `ignored:` (`duplicate`, `own-message` ...).
        let rule = verdict.split_once(':').map(|(_, rule)| rule);
        self.db
            .atomically(|s| settle(s, &self.key, fetched, verdict, rule, detail, None, now))?;
        tracing::debug!(verdict, "mail left alone");
        self.events.emit(
            now,
            EventKind::Ignored {
                message_id: fetched.inbound.message_id.clone(),
                verdict: verdict.to_owned(),
            },
        );
        Ok(())
    }

    /// An ASMTP envelope: gated and indexed into the agent's mailbox ([`crate::mailbox`]),
    /// then marked processed (the mailbox serves it; it never starts a task).
    fn envelope(&self, fetched: &Fetched) -> Result<(), StoreError> {
        use crate::mailbox::Ingested;
        let Some(ingestor) = &self.settings.envelopes else {
            return self.ignore(fetched, "ignored:asmtp", None);
        };
        let now = self.now();
        let outcome = self.db.with(|s| {
            Ok(ingestor
                .ingest(s, fetched, now)
                .unwrap_or_else(|e| Ingested::Invalid(e.to_string())))
        })?;
        let (verdict, detail) = match outcome {
            Ingested::Indexed(frame) => ("ignored:asmtp-indexed", Some(frame.id.to_string())),
            Ingested::Duplicate(_) => ("ignored:asmtp-duplicate", None),
            Ingested::Refused(rule) => ("ignored:asmtp-refused", Some(rule)),
            Ingested::Invalid(why) => ("ignored:asmtp-invalid", Some(why)),
            Ingested::NotAsmtp => ("ignored:asmtp", None),
        };
        self.ignore(fetched, verdict, detail)
    }

    /// Step 4 and 5 (module docs): `None` when the mail was settled here.
    fn screen(&self, fetched: Fetched, span: &tracing::Span) -> Result<Option<Take>, StoreError> {
        let sender = fetched.inbound.sender();
        let message_id = fetched.inbound.message_id.clone();
        let (own, duplicate, journalled) = self.db.with(|s| {
            let own = match &message_id {
                Some(id) => s.outbox_get(id)?.is_some(),
                None => false,
            };
            let duplicate = match &message_id {
                Some(id) => s.seen_message_id(&self.key, id)?,
                None => false,
            };
            let journalled = s.kv_get(&claim_key(&self.key, &fetched.id))?.is_some();
            Ok((own, duplicate, journalled))
        })?;
        if own || sender.as_deref() == Some(self.email().as_str()) {
            self.ignore(&fetched, "ignored:own-message", None)?;
            return Ok(None);
        }
        if duplicate {
            // NOTE: replay and dedup (trust.md point 4) run before the rest of the gate: a
            // second copy never runs, whoever sent it; audited with the rule `replay`.
            tracing::info!("a Message-ID seen before; ignored");
            let now = self.now();
            self.db.atomically(|s| {
                settle(
                    s,
                    &self.key,
                    &fetched,
                    "ignored:duplicate",
                    Some("replay:message-id"),
                    None,
                    None,
                    now,
                )
            })?;
            self.events.emit(
                now,
                EventKind::Ignored {
                    message_id: fetched.inbound.message_id.clone(),
                    verdict: "ignored:duplicate".to_owned(),
                },
            );
            return Ok(None);
        }
        if super::lease::finished(&fetched.keywords) && !self.holds(&fetched.id) {
            self.ignore(&fetched, "ignored:done-elsewhere", None)?;
            return Ok(None);
        }
        // NOTE: a claim without a lease keyword is from a daemon before leases; leased mail
        // goes on to the claim step, which watches it or takes it over.
        let leased = super::lease::Lease::present(&fetched.keywords);
        if fetched.keywords.contains(CLAIMED) && !leased && !journalled {
            tracing::info!("claimed by another daemon; left alone");
            self.ignore(&fetched, "ignored:claimed-elsewhere", None)?;
            return Ok(None);
        }
        let classified = classify(&fetched.inbound);
        if let Some(task_id) = self.dispatcher_task_of(&classified)? {
            return self.screen_for_dispatcher(fetched, task_id, &classified, span);
        }
        if !self.worker {
            // NOTE: a dispatcher-only pipeline leaves everything else unmarked: a worker
            // daemon of the account reads it from its own cursor.
            tracing::debug!(
                kind = classified.kind(),
                "not for the dispatcher; left alone"
            );
            return Ok(None);
        }
        let mut context = None;
        let (kind_intent, what) = match &classified {
            Classified::Aamp(parsed) => {
                let message = &parsed.message;
                span.record("intent", message.intent().as_str());
                span.record("task_id", message.task_id.as_str());
                for warning in &parsed.warnings {
                    tracing::debug!(warning = %warning, "tolerated on input");
                }
                match &message.payload {
                    Payload::Dispatch(d) => {
                        context = Some(d.dispatch_context.clone());
                        (Some(Intent::TaskDispatch), What::Dispatch)
                    }
                    Payload::Cancel { .. } => (
                        Some(Intent::TaskCancel),
                        What::Cancel {
                            task_id: message.task_id.clone(),
                        },
                    ),
                    Payload::PairRequest(request) => {
                        return self.screen_pair_request(&fetched, request, &message.task_id);
                    }
                    other => {
                        // NOTE: acks, results, help requests, pair answers and cards are for a
                        // dispatcher (or a later issue); the worker leaves them alone.
                        let verdict = format!("ignored:not-for-worker:{}", other.intent());
                        self.ignore(&fetched, &verdict, None)?;
                        return Ok(None);
                    }
                }
            }
            Classified::Asmtp(_) => {
                self.envelope(&fetched)?;
                return Ok(None);
            }
            // NOTE: classify() reads handles from `owner.name` addresses only; an envelope
            // whose handle the directory maps (`[asmtp.directory]`, an account `handle`) is
            // checked by the mailbox's own, mapped reading.
            Classified::Invalid(_)
                if self.settings.envelopes.is_some()
                    && fetched
                        .inbound
                        .headers
                        .get(crate::wire::asmtp::header::ID)
                        .is_some() =>
            {
                self.envelope(&fetched)?;
                return Ok(None);
            }
            Classified::Invalid(reason) => {
                tracing::warn!(reason = %reason, "invalid AAMP mail; ignored");
                self.ignore(&fetched, "ignored:invalid", Some(reason.clone()))?;
                return Ok(None);
            }
            Classified::Reply { keys, .. } => {
                match self
                    .db
                    .with(|s| s.task_for_message_ids(&self.key, keys, Some(Role::Worker)))?
                {
                    Some((task_id, _)) => {
                        span.record("intent", "reply");
                        span.record("task_id", task_id.as_str());
                        (None, What::Reply { task_id })
                    }
                    None => (None, What::Plain),
                }
            }
            Classified::Plain => (None, What::Plain),
        };
        if what == What::Plain {
            span.record("intent", "plain");
            if !self.settings.plain_mail {
                self.ignore(&fetched, "ignored:plain-mail-off", None)?;
                return Ok(None);
            }
        }
        let kind = match (&what, kind_intent) {
            (What::Reply { .. }, _) => GateKind::Reply,
            (What::Plain, _) => GateKind::Plain,
            (_, Some(intent)) => GateKind::Aamp {
                intent,
                dispatch_context: context.as_ref(),
            },
            (_, None) => GateKind::Plain,
        };
        // NOTE: the grants are read from the store at check time (never cached), inside the
        // store lock, so a `grants revoke` from another process takes effect on the next mail.
        let now = self.now();
        let verdict = self.db.with(|s| {
            Ok(self.gate.check(&GateInput {
                account: &self.key,
                sender: sender.as_deref(),
                kind,
                inbound: &fetched.inbound,
                now,
                store: Some(s),
            }))
        })?;
        let (rule, grant) = match verdict {
            Verdict::Refuse { rule } => {
                self.refuse(&fetched, kind, &rule, &classified)?;
                return Ok(None);
            }
            Verdict::Admit { rule, grant } => (rule, grant),
        };
        let sender = sender.unwrap_or_default();
        let Some((rule, signature)) =
            self.check_signature(&fetched, &sender, kind, &classified, rule, grant.as_ref())?
        else {
            return Ok(None);
        };
        // Follow-ups must come from the task's peer. (Routing checks again: a follow-up may
        // come in the same batch as the dispatch that creates its task.)
        let follow_up = match (&what, &classified) {
            (What::Cancel { task_id } | What::Reply { task_id }, _) => Some(task_id.clone()),
            (What::Dispatch, Classified::Aamp(parsed)) => Some(parsed.message.task_id.clone()),
            _ => None,
        };
        if let Some(task_id) = follow_up {
            let task = self
                .db
                .with(|s| s.get_task(&self.key, &task_id, Role::Worker))?;
            match task {
                Some(task) if task.peer != sender => {
                    self.refuse(&fetched, kind, NOT_TASK_PEER, &classified)?;
                    return Ok(None);
                }
                _ => {}
            }
        }
        Ok(Some(Take {
            fetched,
            sender,
            what,
            rule,
            content: ContentTrust::default(),
            span: span.clone(),
            signature,
        }))
    }

    /// Agent signatures (README "Agent signatures"), right after the gate admitted a mail:
    /// [`crate::trust::sign::InboundPolicy::check`] on the headers. A refusal is settled here
    /// like any gate refusal (`None`); else the rule, with the key id when a signature
    /// verified, and what the body must hash to.
    fn check_signature(
        &self,
        fetched: &Fetched,
        sender: &str,
        kind: GateKind<'_>,
        classified: &Classified,
        rule: String,
        grant: Option<&crate::store::GrantRecord>,
    ) -> Result<Option<(String, Option<HeadersVerified>)>, StoreError> {
        let admitting = grant.map(|g| (g.require_signature, g.peer_key.as_deref()));
        match self
            .signatures
            .check(&fetched.inbound, sender, admitting, self.now())
        {
            Ok(Checked::Unsigned) => Ok(Some((rule, None))),
            Ok(Checked::Ignored(error)) => {
                tracing::info!(
                    reason = error.rule(),
                    "a signature that does not verify, on mail that needs none: taken as unsigned"
                );
                Ok(Some((rule, None)))
            }
            Ok(Checked::Verified(verified)) => {
                tracing::info!(key_id = %verified.key_id, pinned = verified.pinned, "signature verified (headers)");
                let rule = format!("{rule}; signature:{}", verified.key_id);
                Ok(Some((rule, Some(verified))))
            }
            Err(error) => {
                tracing::info!(error = %error, "refused: agent signature");
                self.refuse(fetched, kind, error.rule(), classified)?;
                Ok(None)
            }
        }
    }

    /// The body half of a verified signature, once the body is fetched. False (and the mail
    /// settled as refused, before any ack) when the body changed after signing.
    fn check_signed_body(&self, take: &Take) -> Result<bool, StoreError> {
        let (Some(verified), Some(body)) = (&take.signature, &take.fetched.inbound.body) else {
            return Ok(true);
        };
        let Err(error) = verified.check_body(BodyView::of_inbound(body)) else {
            return Ok(true);
        };
        let _in = take.span.enter();
        let classified = classify(&take.fetched.inbound);
        if matches!(take.what, What::ForDispatcher { .. }) {
            let intent = match &classified {
                Classified::Aamp(parsed) => parsed.message.intent().as_str(),
                _ => "reply",
            };
            self.refuse_quietly(&take.fetched, intent, error.rule())?;
            return Ok(false);
        }
        let kind = match &classified {
            Classified::Aamp(parsed) => GateKind::Aamp {
                intent: parsed.message.intent(),
                dispatch_context: None,
            },
            Classified::Reply { .. } => GateKind::Reply,
            _ => GateKind::Plain,
        };
        self.refuse(&take.fetched, kind, error.rule(), &classified)?;
        Ok(false)
    }

    /// A refused mail: audited and marked; per `trust.on-refused`, one neutral `rejected`
    /// result to the sender of a refused `task.dispatch` (never to automatic mail).
    fn refuse(
        &self,
        fetched: &Fetched,
        kind: GateKind<'_>,
        rule: &str,
        classified: &Classified,
    ) -> Result<(), StoreError> {
        let now = self.now();
        let sender = fetched.inbound.sender();
        let automatic = fetched
            .inbound
            .headers
            .get("Auto-Submitted")
            .is_some_and(|v| !v.trim().eq_ignore_ascii_case("no"));
        let answer = match (self.settings.on_refused, classified, &sender) {
            (OnRefused::Reject, Classified::Aamp(parsed), Some(to))
                if parsed.message.intent() == Intent::TaskDispatch && !automatic =>
            {
                let target = super::context::ReplyTarget {
                    message_id: fetched.inbound.message_id.clone().unwrap_or_default(),
                    references: fetched.inbound.references.clone(),
                };
                Some(outbound::render(
                    Reply {
                        account: &self.account,
                        to,
                        task_id: &parsed.message.task_id,
                        payload: Payload::Result(TaskResult {
                            status: Status::Rejected,
                            output: String::new(),
                            error_msg: Some("rejected".to_owned()),
                            structured_result: None,
                        }),
                        answering: &target,
                        thread: &[],
                        style: Style::Aamp,
                        attachments: Vec::new(),
                        signer: self.signer.as_ref(),
                    },
                    now,
                ))
            }
            _ => None,
        };
        self.db.atomically(|s| {
            settle(
                s,
                &self.key,
                fetched,
                &format!("refused:{rule}"),
                Some(rule),
                Some(format!("intent {}", kind.label())),
                None,
                now,
            )?;
            if let Some(rendered) = &answer {
                outbound::enqueue(s, &self.account, &self.key, rendered, None, now)?;
            }
            Ok(())
        })?;
        if answer.is_some() {
            self.outbox_kick.notify_one();
        }
        tracing::info!(
            from = sender.as_deref().unwrap_or(""),
            rule,
            answered = answer.is_some(),
            "refused by the gate: no ack, nothing runs"
        );
        self.events.emit(
            now,
            EventKind::Refused {
                message_id: fetched.inbound.message_id.clone(),
                from: sender,
                intent: kind.label().to_owned(),
                rule: rule.to_owned(),
            },
        );
        Ok(())
    }

    /// A follow-up refused at routing time (its task appeared in the same batch): audited and
    /// marked like any refusal, never answered.
    pub(crate) fn refuse_late(&self, fetched: &Fetched, intent: &str) -> Result<(), StoreError> {
        self.refuse_quietly(fetched, intent, NOT_TASK_PEER)
    }

    /// A refusal that is never answered (mail for our own tasks, a forged pairing): audited
    /// and marked with `rule`.
    pub(crate) fn refuse_quietly(
        &self,
        fetched: &Fetched,
        intent: &str,
        rule: &str,
    ) -> Result<(), StoreError> {
        let now = self.now();
        self.db.atomically(|s| {
            settle(
                s,
                &self.key,
                fetched,
                &format!("refused:{rule}"),
                Some(rule),
                Some(format!("intent {intent}")),
                None,
                now,
            )
        })?;
        tracing::info!(rule, "refused: no answer");
        self.events.emit(
            now,
            EventKind::Refused {
                message_id: fetched.inbound.message_id.clone(),
                from: fetched.inbound.sender(),
                intent: intent.to_owned(),
                rule: rule.to_owned(),
            },
        );
        Ok(())
    }
}

fn synced_key(account: &str) -> String {
    format!("inbound-synced-at/{account}")
}
