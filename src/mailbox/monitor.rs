//! Monitor facts: sender-side delivery facts (`stored`, `bounced`, `expired`) per recipient of an
//! envelope sent with a `monitor` (`shared/protocol/asmtp.md`, "Monitor").
//!
//! # How a fact comes to be
//!
//! 1. Submission: a mail whose headers carry `X-ASMTP-Monitor` is submitted with SMTP DSN
//!    parameters (RFC 3461): `MAIL FROM ... RET=HDRS ENVID=<envelope id>`, `RCPT TO ...
//!    NOTIFY=SUCCESS,FAILURE,DELAY ORCPT=rfc822;<address>` ([`dsn_params`];
//!    [`crate::transport::SmtpSubmit`] adds them by itself from the header, so every send path
//!    asks for them).
//! 2. The sender's server mails a delivery report (`multipart/report;
//!    report-type=delivery-status`) per outcome to the sender's Inbox, where it waits while the
//!    sender is offline.
//! 3. The mailbox sync sees it: [`ingest`] reads a report whose parts are at hand (a message
//!    parsed from raw bytes), or notes a report seen in the headers-only phase as pending;
//!    [`resolve_pending`] later fetches the pending reports' parts (one `Email/get` of bodies,
//!    one blob download per part) and reads them.
//! 4. Reading ([`crate::wire::dsn`]): `Original-Envelope-Id` names the envelope; each recipient
//!    block gives a fact: `delivered`, `relayed` (Postfix's word for LMTP delivery) and
//!    `expanded` are `stored`; `failed` is `bounced`, or `expired` when its status is `X.4.7`
//!    (delivery time expired); `delayed` is no fact yet (a later report follows).
//! 5. A fact is kept once per envelope, recipient and fact ([`crate::store::MonitorRow`]) and
//!    served by [`facts`]; new facts are returned so the caller can push them
//!    ([`super::MailboxEvent::Monitor`]).
//!
//! # Whose reports count
//!
//! A report must name an envelope this account sent with a monitor: one noted by [`expect`]
//! (then only its recipients count), or, when none was noted, one whose returned headers carry
//! the same `X-ASMTP-Id`, an `X-ASMTP-From` handle, and a valid
//! `X-ASMTP-Monitor`. Reports never become envelopes: they carry no `X-ASMTP-*` headers of
//! their own.

use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::{Directory, Mailbox, MailboxError};
use crate::store::{MonitorRow, Store};
use crate::transport::{Fetched, MailStore};
use crate::wire::asmtp::{Envelope, EnvelopeId, Handle, is_valid_monitor};
use crate::wire::dsn::{self, Action, DeliveryReport};

/// What happened to one recipient's copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fact {
    /// The recipient's server stored it.
    Stored,
    /// Delivery failed for good.
    Bounced,
    /// Delivery did not happen in time.
    Expired,
}

impl Fact {
    /// `stored`, `bounced`, `expired`.
    pub fn as_str(self) -> &'static str {
        match self {
            Fact::Stored => "stored",
            Fact::Bounced => "bounced",
            Fact::Expired => "expired",
        }
    }

    fn parse(value: &str) -> Option<Fact> {
        Some(match value {
            "stored" => Fact::Stored,
            "bounced" => Fact::Bounced,
            "expired" => Fact::Expired,
            _ => return None,
        })
    }

    /// The fact a report's recipient block states; `None` for `delayed` (not final).
    pub fn of(status: &dsn::RecipientStatus) -> Option<Fact> {
        match status.action {
            Action::Delivered | Action::Relayed | Action::Expanded => Some(Fact::Stored),
            Action::Failed if status.timed_out() => Some(Fact::Expired),
            Action::Failed => Some(Fact::Bounced),
            Action::Delayed => None,
        }
    }
}

/// One delivery fact, in the ASMTP JSON shape (`{monitor, envelope_id, recipient_handle, fact, at_ms}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MonitorFact {
    /// The envelope's `monitor` value.
    pub monitor: String,
    /// The envelope the fact is about.
    pub envelope_id: EnvelopeId,
    /// The recipient, as a handle (`@owner.name`).
    pub recipient_handle: String,
    /// What happened.
    pub fact: Fact,
    /// When it was learnt (ms since the epoch).
    pub at_ms: u64,
}

/// SMTP DSN parameters (RFC 3461) for a monitored envelope's submission.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DsnParams {
    /// `ENVID`: identifies the envelope in the reports.
    pub envid: String,
    /// `RET=HDRS` (true) or `RET=FULL`.
    pub ret_headers: bool,
    /// `NOTIFY` values (`SUCCESS`, `FAILURE`, `DELAY`).
    pub notify: Vec<String>,
}

/// The DSN parameters to submit `envelope` with, when it asks for a monitor: headers only
/// returned, every outcome reported, the envelope id as ENVID. The SMTP submission derives the
/// same from the rendered mail ([`crate::wire::dsn::DsnRequest::for_message`]).
pub fn dsn_params(envelope: &Envelope) -> Option<DsnParams> {
    envelope.monitor.as_ref()?;
    let request = dsn::DsnRequest::monitored(envelope.id.as_str());
    Some(DsnParams {
        envid: request.envid,
        ret_headers: request.ret_headers,
        notify: request.notify.iter().map(|n| (*n).to_owned()).collect(),
    })
}

/// Notes that `envelope` was sent with a monitor to `recipients` (`(address, handle)` pairs),
/// so that only reports about those recipients count. Without a monitor this does nothing.
pub fn expect(
    store: &Store,
    account: &str,
    envelope: &Envelope,
    recipients: &[(String, Handle)],
    now_ms: u64,
) -> Result<(), MailboxError> {
    let Some(monitor) = &envelope.monitor else {
        return Ok(());
    };
    let pairs: Vec<(String, String)> = recipients
        .iter()
        .map(|(a, h)| (a.trim().to_ascii_lowercase(), h.to_string()))
        .collect();
    let json = serde_json::to_string(&pairs).map_err(|e| MailboxError::Internal(e.to_string()))?;
    store.monitor_expect(
        account,
        envelope.id.as_str(),
        monitor,
        &json,
        i64::try_from(now_ms).unwrap_or(i64::MAX),
    )?;
    Ok(())
}

/// Whether a mail seen headers-only looks like a delivery report: auto-submitted, from a
/// mailer daemon or postmaster (or from nobody).
pub fn looks_like_report(fetched: &Fetched) -> bool {
    let inbound = &fetched.inbound;
    let auto = inbound
        .headers
        .get("Auto-Submitted")
        .is_some_and(|v| !v.trim().eq_ignore_ascii_case("no"));
    let daemon = inbound.from.is_empty()
        || inbound.from.iter().any(|m| {
            let local = m.email.split('@').next().unwrap_or_default();
            local.eq_ignore_ascii_case("mailer-daemon") || local.eq_ignore_ascii_case("postmaster")
        });
    auto && daemon
}

/// Reads a delivery report among Inbox mail that is no envelope (the mailbox sync calls this
/// for each). With the report's parts at hand (a message parsed from raw bytes, or parts
/// filled in by [`resolve_pending`]) the facts are recorded and the new ones returned; a report
/// seen headers-only is noted as pending for [`resolve_pending`]. Anything else gives nothing.
pub fn ingest(
    store: &Store,
    account: &str,
    fetched: &Fetched,
) -> Result<Vec<MonitorFact>, MailboxError> {
    ingest_with(store, account, fetched, None)
}

/// As [`ingest`], naming recipients by `directory` (addresses of local accounts and of the
/// `[asmtp.directory]` table become their handles).
pub fn ingest_with(
    store: &Store,
    account: &str,
    fetched: &Fetched,
    directory: Option<&Directory>,
) -> Result<Vec<MonitorFact>, MailboxError> {
    let at_ms = now_ms();
    if let Some(report) = report_of(fetched) {
        return ingest_report(store, account, &report, Some(&fetched.id), directory, at_ms);
    }
    if fetched.inbound.body.is_none() && looks_like_report(fetched) {
        store.monitor_pending_add(account, &fetched.id, as_i64(at_ms))?;
    }
    Ok(Vec::new())
}

/// Reads the parts of the reports [`ingest`] noted as pending (bodies, then one download per
/// report part), records their facts and returns the new ones. A mail that turns out to be no
/// report, or is gone, is forgotten. Call it after a sync.
pub async fn resolve_pending<M: MailStore>(
    store: &Mutex<Store>,
    account: &str,
    mail: &M,
    directory: Option<&Directory>,
) -> Result<Vec<MonitorFact>, MailboxError> {
    let pending = lock(store).monitor_pending(account, 50)?;
    if pending.is_empty() {
        return Ok(Vec::new());
    }
    let fetched = mail
        .get_bodies(&pending)
        .await
        .map_err(|e| MailboxError::Unavailable(crate::transport::smtp::error_chain(&e)))?;
    let mut facts = Vec::new();
    for mut f in fetched {
        download_report_parts(mail, &mut f).await?;
        let found = {
            let store = lock(store);
            let found = ingest_with(&store, account, &f, directory)?;
            store.monitor_pending_done(account, &f.id)?;
            found
        };
        facts.extend(found);
    }
    // NOTE: ids the server no longer has were left out of the answer: forget them too.
    let store = lock(store);
    for id in &pending {
        store.monitor_pending_done(account, id)?;
    }
    Ok(facts)
}

/// [`resolve_pending`] for a [`Mailbox`]: its store, its JMAP client, its directory.
pub async fn resolve(mailbox: &Mailbox) -> Result<Vec<MonitorFact>, MailboxError> {
    let account = mailbox.account().to_owned();
    let pending = mailbox.with_store(|s| s.monitor_pending(&account, 50))?;
    if pending.is_empty() {
        return Ok(Vec::new());
    }
    let mail = mailbox.jmap().await?;
    let fetched = mail
        .get_bodies(&pending)
        .await
        .map_err(|e| MailboxError::Unavailable(crate::transport::smtp::error_chain(&e)))?;
    let mut facts = Vec::new();
    for mut f in fetched {
        download_report_parts(&*mail, &mut f).await?;
        facts.extend(mailbox.with_store(|s| -> Result<_, MailboxError> {
            let found = ingest_with(s, &account, &f, Some(mailbox.directory()))?;
            s.monitor_pending_done(&account, &f.id)?;
            Ok(found)
        })?);
    }
    mailbox.with_store(|s| -> Result<(), MailboxError> {
        for id in &pending {
            s.monitor_pending_done(&account, id)?;
        }
        Ok(())
    })?;
    Ok(facts)
}

/// Downloads the report parts (`message/delivery-status`, the returned headers) of a mail read
/// with bodies, into their `bytes`. True when it has a delivery-status part.
pub async fn download_report_parts<M: MailStore>(
    mail: &M,
    fetched: &mut Fetched,
) -> Result<bool, MailboxError> {
    let Some(body) = fetched.inbound.body.as_mut() else {
        return Ok(false);
    };
    let mut has_status = false;
    for part in &mut body.attachments {
        let kind = part.content_type.to_ascii_lowercase();
        let wanted = is_status_type(&kind) || is_returned_type(&kind);
        has_status |= is_status_type(&kind);
        if !wanted || part.bytes.is_some() || part.size > 1 << 20 {
            continue;
        }
        let Some(blob) = part.blob_id.clone() else {
            continue;
        };
        let bytes = mail
            .download(&blob, part.name.as_deref().unwrap_or("part"), &kind)
            .await
            .map_err(|e| MailboxError::Unavailable(crate::transport::smtp::error_chain(&e)))?;
        part.bytes = Some(bytes);
    }
    Ok(has_status)
}

fn is_status_type(kind: &str) -> bool {
    matches!(
        kind,
        "message/delivery-status" | "message/global-delivery-status"
    )
}

fn is_returned_type(kind: &str) -> bool {
    matches!(
        kind,
        "message/rfc822" | "message/global" | "text/rfc822-headers" | "message/global-headers"
    )
}

/// The report in a mail whose parts are at hand.
fn report_of(fetched: &Fetched) -> Option<DeliveryReport> {
    let body = fetched.inbound.body.as_ref()?;
    let status = body
        .attachments
        .iter()
        .find(|a| is_status_type(&a.content_type.to_ascii_lowercase()))?;
    let mut report = dsn::parse_status(status.bytes.as_deref()?)?;
    if let Some(returned) = body
        .attachments
        .iter()
        .find(|a| is_returned_type(&a.content_type.to_ascii_lowercase()))
        .and_then(|a| a.bytes.as_deref())
    {
        // NOTE: the returned headers alone are read as a message of their own.
        let mut headers = returned.to_vec();
        headers.extend_from_slice(b"\r\n\r\n");
        if let Ok(original) = crate::wire::message::Inbound::from_bytes(&headers) {
            report.original_message_id = original.message_id.clone();
            let get = |name: &str| original.headers.get(name).map(|v| v.trim().to_owned());
            report.original_monitor = get("X-ASMTP-Monitor");
            report.original_asmtp_id = get("X-ASMTP-Id");
            report.original_from = get("X-ASMTP-From");
        }
    }
    Some(report)
}

/// Records the facts of a parsed report (module docs, "Whose reports count"); returns the
/// new ones.
pub fn ingest_report(
    store: &Store,
    account: &str,
    report: &DeliveryReport,
    report_id: Option<&str>,
    directory: Option<&Directory>,
    at_ms: u64,
) -> Result<Vec<MonitorFact>, MailboxError> {
    let Some(envelope_id) = report
        .envelope_id
        .as_deref()
        .or(report.original_asmtp_id.as_deref())
        .and_then(|id| EnvelopeId::parse(id.trim()).ok())
    else {
        return Ok(Vec::new());
    };
    let expected = store.monitor_expected(account, envelope_id.as_str())?;
    let (monitor, recipients): (String, Option<Vec<(String, String)>>) = match expected {
        Some((monitor, json)) => (monitor, serde_json::from_str(&json).ok()),
        None => {
            // NOTE: without a note from the send, the returned headers must be those of an
            // envelope: the same X-ASMTP-Id and a sender handle.
            let consistent = report
                .original_asmtp_id
                .as_deref()
                .is_some_and(|id| id.trim() == envelope_id.as_str())
                && report
                    .original_from
                    .as_deref()
                    .is_some_and(|from| Handle::parse(from.trim()).is_ok());
            match report.original_monitor.as_deref() {
                Some(m) if consistent && is_valid_monitor(m.trim()) => (m.trim().to_owned(), None),
                _ => {
                    tracing::debug!(envelope = %envelope_id, "a delivery report about no monitored envelope of ours; ignored");
                    return Ok(Vec::new());
                }
            }
        }
    };
    let mut new = Vec::new();
    for status in &report.recipients {
        let Some(fact) = Fact::of(status) else {
            continue;
        };
        let address = status.recipient().to_ascii_lowercase();
        let handle = match &recipients {
            Some(list) => match list.iter().find(|(a, _)| {
                *a == address
                    || Some(a.as_str()) == status.original_recipient.as_deref()
                    || *a == status.final_recipient
            }) {
                Some((_, h)) => h.clone(),
                None => {
                    tracing::debug!(envelope = %envelope_id, recipient = %address, "a report about a recipient the envelope did not have; ignored");
                    continue;
                }
            },
            None => directory
                .and_then(|d| d.handle_of_address(&address))
                .or_else(|| Handle::from_address(&address))
                .map_or_else(|| address.clone(), |h| h.to_string()),
        };
        let row = MonitorRow {
            account: account.to_owned(),
            envelope_id: envelope_id.to_string(),
            recipient: handle.clone(),
            fact: fact.as_str().to_owned(),
            monitor: monitor.clone(),
            at_ms: as_i64(at_ms),
            status: status.status.clone(),
            detail: status.diagnostic.clone(),
            report_id: report_id.map(str::to_owned),
        };
        if store.monitor_record(&row)? {
            new.push(MonitorFact {
                monitor: monitor.clone(),
                envelope_id: envelope_id.clone(),
                recipient_handle: handle,
                fact,
                at_ms,
            });
        }
    }
    Ok(new)
}

/// Reads a whole delivery report from raw bytes (e.g. a `.eml`) and records its facts.
pub fn ingest_raw(
    store: &Store,
    account: &str,
    raw: &[u8],
    at_ms: u64,
) -> Result<Vec<MonitorFact>, MailboxError> {
    match dsn::parse_report(raw) {
        Some(report) => ingest_report(store, account, &report, None, None, at_ms),
        None => Ok(Vec::new()),
    }
}

/// The persisted facts of `account`, of one envelope or of all, oldest first.
pub fn facts(
    store: &Store,
    account: &str,
    envelope_id: Option<&EnvelopeId>,
) -> Result<Vec<MonitorFact>, MailboxError> {
    let rows = store.monitor_facts(account, envelope_id.map(EnvelopeId::as_str))?;
    Ok(rows
        .into_iter()
        .filter_map(|row| {
            Some(MonitorFact {
                envelope_id: EnvelopeId::parse(&row.envelope_id).ok()?,
                fact: Fact::parse(&row.fact)?,
                monitor: row.monitor,
                recipient_handle: row.recipient,
                at_ms: u64::try_from(row.at_ms).unwrap_or_default(),
            })
        })
        .collect())
}

fn lock(store: &Mutex<Store>) -> std::sync::MutexGuard<'_, Store> {
    store
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn now_ms() -> u64 {
    u64::try_from(crate::clock::now().timestamp_millis()).unwrap_or_default()
}

fn as_i64(ms: u64) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX)
}
