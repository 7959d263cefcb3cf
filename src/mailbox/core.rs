//! [`Mailbox`] and the per-mail [`Ingestor`] that the daemon's inbound pipeline shares with it.

use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use sha2::{Digest, Sha256};
use tokio::sync::{OnceCell, broadcast};

use super::identity::Directory;
use super::policy::Policy;
use super::{
    InlineFile, ListQuery, ListedFrame, MAX_GET_MANY, MAX_PAGE, MailboxError, MailboxEvent, Order,
    Page, ReadEnvelope, SendReceipt, SendRequest, monitor,
};
use crate::config::{Account, Config};
use crate::store::{AuditEntry, OutgoingMessage, SentRecord, Store, StoreError};
use crate::transport::jmap::{JmapClient, JmapError};
use crate::transport::push::{PushSettings, PushSupervisor};
use crate::transport::smtp::{SendError, SmtpSubmit, error_chain};
use crate::transport::{Fetched, MailStore, SmtpEnvelope, Submit};
use crate::wire::asmtp::{
    AsmtpError, ContentPart, Cursor, Envelope, EnvelopeId, Handle, PushFrame,
};
use crate::wire::message::Attachment;

/// Ids per `Email/get`.
const CHUNK: usize = 100;
/// Most Inbox mails a first sync (or a lost JMAP state) looks at.
const BACKFILL_LIMIT: usize = 1000;
/// The outbox intent of an envelope.
const INTENT: &str = "asmtp.envelope";
/// The `$seen` keyword.
const SEEN: &str = "$seen";

fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

fn jmap_error(e: &JmapError) -> MailboxError {
    if e.is_auth() {
        MailboxError::Unauthorized(error_chain(e))
    } else {
        MailboxError::Unavailable(format!("JMAP: {}", error_chain(e)))
    }
}

fn store_error(e: StoreError) -> MailboxError {
    MailboxError::from(e)
}

/// What [`Ingestor::ingest`] did with one mail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ingested {
    /// Indexed now, with this frame (`created_at` stamped).
    Indexed(PushFrame),
    /// Already in the index.
    Duplicate(EnvelopeId),
    /// Refused by the policy (the rule).
    Refused(String),
    /// An ASMTP mail whose headers cannot be used (why).
    Invalid(String),
    /// Not an ASMTP mail.
    NotAsmtp,
}

/// Gates and indexes single mails for one account: what [`Mailbox::sync`] and the daemon's
/// inbound pipeline both call, so that both admit and index alike.
#[derive(Debug, Clone)]
pub struct Ingestor {
    account: String,
    handle: Handle,
    directory: Directory,
    policy: Policy,
}

impl Ingestor {
    /// The ingestor of `account`; [`MailboxError::Invalid`] when the account has no handle.
    pub fn from_config(config: &Config, account: &str) -> Result<Ingestor, MailboxError> {
        let directory = Directory::from_config(config);
        let handle = directory.handle_of_account(account)?;
        Ok(Ingestor {
            account: account.to_owned(),
            handle,
            directory,
            policy: Policy::from_config(config, account, crate::clock::now()),
        })
    }

    /// The push frame of a headers-only mail, with addresses read through the directory.
    fn frame(&self, fetched: &Fetched) -> Result<Option<PushFrame>, AsmtpError> {
        let directory = &self.directory;
        PushFrame::from_inbound_mapped(&fetched.inbound, 0, &|a: &str| {
            directory.handle_of_address(a)
        })
    }

    /// Gates one headers-only Inbox mail and indexes it when it is an admitted envelope.
    /// Refusals and invalid envelopes are audited (never a body).
    pub fn ingest(
        &self,
        store: &Store,
        fetched: &Fetched,
        now: DateTime<Utc>,
    ) -> Result<Ingested, MailboxError> {
        let frame = match self.frame(fetched) {
            Ok(Some(frame)) => frame,
            Ok(None) => return Ok(Ingested::NotAsmtp),
            Err(e) => {
                self.audit(
                    store,
                    fetched,
                    "ignored",
                    "asmtp-invalid",
                    Some(e.to_string()),
                    now,
                );
                return Ok(Ingested::Invalid(e.to_string()));
            }
        };
        // NOTE: deduplicated on the envelope id only: JMAP ids are not stable across a server
        // that lost its data, envelope ids are.
        if store
            .mailbox_get(&self.account, &frame.id)
            .map_err(store_error)?
            .is_some()
        {
            return Ok(Ingested::Duplicate(frame.id));
        }
        let rule = match self.policy.admit(store, &fetched.inbound, now) {
            Ok(rule) => rule,
            Err(rule) => {
                self.audit(
                    store,
                    fetched,
                    "rejected",
                    &rule,
                    Some("asmtp envelope".to_owned()),
                    now,
                );
                return Ok(Ingested::Refused(rule));
            }
        };
        let seen = fetched.keywords.contains(SEEN);
        match store
            .mailbox_insert(&self.account, &frame, &fetched.id, seen, ms(now))
            .map_err(store_error)?
        {
            None => Ok(Ingested::Duplicate(frame.id)),
            Some(created_at) => {
                self.audit(
                    store,
                    fetched,
                    "admitted",
                    &rule,
                    Some(format!("asmtp envelope {}", frame.id)),
                    now,
                );
                let mut frame = frame;
                frame.created_at = created_at;
                Ok(Ingested::Indexed(frame))
            }
        }
    }

    fn audit(
        &self,
        store: &Store,
        fetched: &Fetched,
        verdict: &str,
        rule: &str,
        detail: Option<String>,
        now: DateTime<Utc>,
    ) {
        let entry = AuditEntry {
            at: now,
            account: self.account.clone(),
            message_id: fetched.inbound.message_id.clone(),
            peer: fetched
                .inbound
                .from
                .first()
                .map(|m| crate::config::normalize_address(&m.email)),
            verdict: verdict.to_owned(),
            rule: Some(rule.to_owned()),
            detail,
        };
        if let Err(e) = store.audit(&entry) {
            tracing::warn!(error = %error_chain(&e), "cannot audit an envelope verdict");
        }
    }
}

/// One local agent's mailbox (module docs of [`crate::mailbox`]). Cloning is cheap and shares
/// everything (store, server connections, subscribers).
#[derive(Clone)]
pub struct Mailbox {
    inner: Arc<Inner>,
}

struct Inner {
    account: Account,
    domain: String,
    backfill: Duration,
    ingestor: Ingestor,
    store: Mutex<Store>,
    events: broadcast::Sender<MailboxEvent>,
    jmap: OnceCell<Arc<JmapClient>>,
    smtp: OnceCell<Arc<SmtpSubmit>>,
    /// One sync at a time; holds the newest cursor already reported by `sync`.
    reported: tokio::sync::Mutex<Option<Cursor>>,
}

impl fmt::Debug for Mailbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mailbox")
            .field("account", &self.inner.account.name)
            .field("handle", &self.inner.ingestor.handle)
            .finish_non_exhaustive()
    }
}

/// SHA-256 (hex) of the envelope's canonical JSON with `date_ms` zeroed: equal for a retry of
/// the same body, whenever it is sent.
fn body_hash(envelope: &Envelope) -> String {
    let mut e = envelope.clone();
    e.date_ms = 0;
    let digest = Sha256::digest(e.canonical_json());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

impl Mailbox {
    /// Opens the mailbox of `account` (a config account name): its handle, the local store in
    /// the state dir. Servers are contacted lazily, on the first call that needs them.
    pub async fn open(config: &Config, account: &str) -> Result<Mailbox, MailboxError> {
        let acc = config.account(account).cloned().ok_or_else(|| {
            MailboxError::Invalid(format!(
                "no account '{account}' in the config: name one of its [accounts.NAME] tables"
            ))
        })?;
        let ingestor = Ingestor::from_config(config, account)?;
        let path = config.state_dir().join(crate::store::FILE_NAME);
        let store = tokio::task::spawn_blocking(move || Store::open(&path))
            .await
            .map_err(|e| MailboxError::Internal(e.to_string()))??;
        Ok(Mailbox::build(config, acc, ingestor, store))
    }

    /// A mailbox on an already open store (tests, and callers that hold a store).
    pub fn open_with_store(
        config: &Config,
        account: &str,
        store: Store,
    ) -> Result<Mailbox, MailboxError> {
        let acc = config.account(account).cloned().ok_or_else(|| {
            MailboxError::Invalid(format!("no account '{account}' in the config"))
        })?;
        let ingestor = Ingestor::from_config(config, account)?;
        Ok(Mailbox::build(config, acc, ingestor, store))
    }

    fn build(config: &Config, account: Account, ingestor: Ingestor, store: Store) -> Mailbox {
        let domain = crate::ids::domain_of(&account.email);
        let (events, _) = broadcast::channel(1024);
        // NOTE: `sync` reports what was indexed after this point, not the whole index.
        let newest = store
            .mailbox_page(&account.name, None, 1, false, true)
            .ok()
            .and_then(|rows| rows.first().map(|r| r.frame.cursor()));
        Mailbox {
            inner: Arc::new(Inner {
                account,
                domain,
                backfill: config.asmtp().backfill,
                ingestor,
                store: Mutex::new(store),
                events,
                jmap: OnceCell::new(),
                smtp: OnceCell::new(),
                reported: tokio::sync::Mutex::new(newest),
            }),
        }
    }

    /// The agent's own handle (`@owner.name`).
    pub fn handle(&self) -> &Handle {
        &self.inner.ingestor.handle
    }

    /// The config account name.
    pub fn account(&self) -> &str {
        &self.inner.account.name
    }

    /// The handle <-> address directory this mailbox resolves recipients with.
    pub fn directory(&self) -> &Directory {
        &self.inner.ingestor.directory
    }

    /// Runs `f` on the local store.
    pub fn with_store<T>(&self, f: impl FnOnce(&Store) -> T) -> T {
        let store = self
            .inner
            .store
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        f(&store)
    }

    /// The JMAP client (connected on first use).
    pub async fn jmap(&self) -> Result<Arc<JmapClient>, MailboxError> {
        self.inner
            .jmap
            .get_or_try_init(|| async {
                crate::transport::init_crypto();
                JmapClient::from_account(&self.inner.account)
                    .await
                    .map(Arc::new)
                    .map_err(|e| jmap_error(&e))
            })
            .await
            .cloned()
    }

    async fn smtp(&self) -> Result<Arc<SmtpSubmit>, MailboxError> {
        self.inner
            .smtp
            .get_or_try_init(|| async {
                crate::transport::init_crypto();
                SmtpSubmit::from_account(&self.inner.account)
                    .map(Arc::new)
                    .map_err(|e| MailboxError::Unavailable(format!("SMTP: {}", error_chain(&e))))
            })
            .await
            .cloned()
    }

    /// A recipient as given (a handle or an address) as a handle.
    fn recipient(&self, text: &str) -> Result<Handle, MailboxError> {
        let t = text.trim();
        if t.contains('@') && !t.starts_with('@') {
            return self
                .directory()
                .handle_of_address(t)
                .ok_or_else(|| MailboxError::Unreachable(t.to_owned()));
        }
        Handle::parse(t).map_err(|e| MailboxError::Invalid(e.to_string()))
    }

    /// The address of a handle.
    fn address_of(&self, handle: &Handle) -> String {
        self.directory().address_of(handle, &self.inner.domain)
    }

    /// Sends an envelope (module docs). All-or-nothing on reachability; idempotent on the id.
    pub async fn send(&self, req: SendRequest) -> Result<SendReceipt, MailboxError> {
        let now = crate::clock::now();
        let received_ms = u64::try_from(ms(now)).unwrap_or(0);
        let to = req
            .to
            .iter()
            .map(|t| self.recipient(t))
            .collect::<Result<Vec<_>, _>>()?;
        let cc = req
            .cc
            .iter()
            .map(|t| self.recipient(t))
            .collect::<Result<Vec<_>, _>>()?;
        let id = match req.id.clone() {
            Some(id) => id,
            None => EnvelopeId::parse(&crate::ids::ulid(now))
                .map_err(|e| MailboxError::Internal(e.to_string()))?,
        };
        let mut parts = req.content_parts.clone();
        for f in &req.files {
            parts.push(ContentPart::File {
                url: None,
                file_id: Some(format!("attachment:{}", f.name)),
                name: Some(f.name.clone()),
                mime_type: Some(f.mime_type.clone()),
                size: Some(f.bytes.len() as u64),
            });
        }
        let mut envelope = Envelope::new(id.clone(), self.handle().clone(), to, ms(now), parts);
        envelope.cc = cc;
        envelope.subject = req.subject.clone().filter(|s| !s.trim().is_empty());
        envelope.in_reply_to = req.in_reply_to.clone();
        envelope.references = req.references.clone();
        if envelope.references.is_empty()
            && let Some(irt) = &envelope.in_reply_to
        {
            envelope.references.push(irt.clone());
        }
        envelope.monitor = req.monitor.clone();
        let inline: usize = req.files.iter().map(|f| f.bytes.len()).sum();
        match envelope.validate() {
            Ok(()) => {}
            Err(AsmtpError::TooLarge(_)) => return Err(MailboxError::PayloadTooLarge),
            Err(e) => return Err(MailboxError::Invalid(e.to_string())),
        }
        if envelope.canonical_json().len() + inline > crate::wire::asmtp::MAX_BODY_BYTES * 25 {
            return Err(MailboxError::PayloadTooLarge);
        }
        let hash = body_hash(&envelope);
        let mut recipients = envelope.to.clone();
        recipients.extend(envelope.cc.iter().cloned());
        recipients.dedup();

        // Idempotency and reachability, on the local store.
        let replay = self.with_store(|s| -> Result<Option<SentRecord>, MailboxError> {
            let records = s.mailbox_sent_records(&id).map_err(store_error)?;
            if let Some(r) = records.iter().find(|r| r.account == self.account()) {
                return if r.body_hash == hash {
                    Ok(Some(r.clone()))
                } else {
                    Err(MailboxError::RetryMismatch)
                };
            }
            if !records.is_empty() {
                return Err(MailboxError::IdCollision);
            }
            let senders = s.mailbox_senders_of(&id).map_err(store_error)?;
            if senders.iter().any(|h| h != self.handle()) {
                return Err(MailboxError::IdCollision);
            }
            for r in &recipients {
                let address = self.address_of(r);
                if let Err(rule) = self.inner.ingestor.policy.peer(s, &address, now) {
                    tracing::info!(recipient = %r, rule = %rule, "envelope recipient not reachable");
                    return Err(MailboxError::Unreachable(r.to_string()));
                }
            }
            Ok(None)
        })?;
        if let Some(r) = replay {
            return Ok(SendReceipt {
                id,
                received_ms,
                created_at: u64::try_from(r.created_at).unwrap_or(0),
                recipients: r.recipients,
                replayed: true,
            });
        }

        // Render, queue, submit.
        let directory = self.directory().clone();
        let domain = self.inner.domain.clone();
        let mut outbound = envelope.to_outbound_mapped(&self.inner.domain, now, &|h: &Handle| {
            directory.address_of(h, &domain)
        });
        outbound.from.name = self.inner.account.display_name.clone();
        outbound.attachments = req
            .files
            .iter()
            .map(|f: &InlineFile| Attachment {
                filename: f.name.clone(),
                content_type: f.mime_type.clone(),
                bytes: f.bytes.clone(),
            })
            .collect();
        let bytes = outbound.render();
        let message_id = outbound.message_id.clone();
        let rcpt: Vec<String> = recipients.iter().map(|h| self.address_of(h)).collect();
        let smtp_from = self.inner.account.email.clone();
        self.with_store(|s| {
            s.outbox_put(
                &OutgoingMessage {
                    message_id: &message_id,
                    account: self.account(),
                    smtp_from: &smtp_from,
                    rcpt_to: &rcpt,
                    bytes: &bytes,
                    task_id: None,
                    intent: INTENT,
                },
                now,
            )
        })
        .map_err(store_error)?;
        let smtp = self.smtp().await?;
        let sent = smtp
            .send_raw(&SmtpEnvelope::new(smtp_from, rcpt.clone()), &bytes)
            .await;
        let done = crate::clock::now();
        match sent {
            Ok(()) => {
                let record = SentRecord {
                    account: self.account().to_owned(),
                    envelope_id: id.clone(),
                    body_hash: hash,
                    message_id: message_id.clone(),
                    recipients: recipients.clone(),
                    monitor: envelope.monitor.clone(),
                    created_at: ms(now),
                };
                self.with_store(|s| {
                    s.atomically(|s| {
                        s.outbox_mark_sent(&message_id, done)?;
                        s.mailbox_sent_put(&record)?;
                        Ok(())
                    })
                })
                .map_err(store_error)?;
                Ok(SendReceipt {
                    id,
                    received_ms,
                    created_at: received_ms,
                    recipients,
                    replayed: false,
                })
            }
            Err(e) => {
                let text = error_chain(&e);
                // NOTE: dead either way: the caller got an error and retries with the same id
                // (a new submission); a daemon draining the same outbox must not send it too.
                let _ = self.with_store(|s| s.outbox_mark_failed(&message_id, &text, true, done));
                Err(send_error(&e, &recipients))
            }
        }
    }

    /// Reads what changed on the server since the last sync, gates and indexes new envelopes,
    /// and returns the frames indexed since this value was opened or last synced (by this process or
    /// another one on the same store, such as the daemon), oldest first. Also broadcasts them.
    pub async fn sync(&self) -> Result<Vec<PushFrame>, MailboxError> {
        let mut reported = self.inner.reported.lock().await;
        let mail = self.jmap().await?;
        let inbox = mail.inbox_id().await.map_err(|e| jmap_error(&e))?;
        let now = crate::clock::now();
        let state = self
            .with_store(|s| s.mailbox_sync_state(self.account()))
            .map_err(store_error)?;
        let (ids, new_state) = match state {
            Some(state) => match mail.changes(&state).await {
                Ok(changes) => {
                    let mut ids = changes.created;
                    ids.extend(changes.updated);
                    (ids, changes.new_state)
                }
                Err(e) if e.is_cannot_calculate_changes() => {
                    let b = self.backfill(&mail, now).await?;
                    (b.ids, b.state)
                }
                Err(e) => return Err(jmap_error(&e)),
            },
            None => {
                let b = self.backfill(&mail, now).await?;
                (b.ids, b.state)
            }
        };
        let mut facts = Vec::new();
        for chunk in ids.chunks(CHUNK) {
            let fetched = mail.get_headers(chunk).await.map_err(|e| jmap_error(&e))?;
            let now = crate::clock::now();
            for f in fetched.iter().filter(|f| f.mailbox_ids.contains(&inbox)) {
                let outcome = self.with_store(|s| -> Result<(), MailboxError> {
                    match self.inner.ingestor.ingest(s, f, now)? {
                        Ingested::Duplicate(id) => {
                            // NOTE: an update: keep the seen flag in step with `$seen`.
                            if let Some(row) = s.mailbox_get(self.account(), &id)? {
                                if row.email_id != f.id {
                                    s.mailbox_set_email_id(self.account(), &id, &f.id)?;
                                }
                                let seen = f.keywords.contains(SEEN);
                                if row.seen != seen {
                                    s.mailbox_set_seen(self.account(), &row.frame.id, seen)?;
                                }
                            }
                        }
                        Ingested::NotAsmtp => {
                            facts.extend(monitor::ingest(s, self.account(), f)?);
                        }
                        Ingested::Indexed(_) | Ingested::Refused(_) | Ingested::Invalid(_) => {}
                    }
                    Ok(())
                });
                if let Err(e) = outcome {
                    tracing::warn!(email = %f.id, error = %e, "cannot ingest a mail into the mailbox");
                }
            }
        }
        self.with_store(|s| s.set_mailbox_sync_state(self.account(), &new_state, ms(now)))
            .map_err(store_error)?;
        // NOTE: delivery reports were only noted above (headers); read the noted ones now so
        // every surface (CLI, operator API, WebSocket, MCP) hears of facts from the same sync.
        // A failure leaves them noted for the next sync.
        match monitor::resolve(self).await {
            Ok(found) => facts.extend(found),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read delivery reports yet; retrying on the next sync")
            }
        }
        let frames = self.frames_after(reported.as_ref())?;
        if let Some(last) = frames.last() {
            *reported = Some(last.cursor());
        }
        for f in &frames {
            let _ = self.inner.events.send(MailboxEvent::Frame(f.clone()));
        }
        for f in facts {
            let _ = self.inner.events.send(MailboxEvent::Monitor(f));
        }
        Ok(frames)
    }

    async fn backfill(
        &self,
        mail: &JmapClient,
        now: DateTime<Utc>,
    ) -> Result<crate::transport::Backfill, MailboxError> {
        let since = now - TimeDelta::from_std(self.inner.backfill).unwrap_or(TimeDelta::days(7));
        mail.query_inbox_since(since, BACKFILL_LIMIT)
            .await
            .map_err(|e| jmap_error(&e))
    }

    /// Every indexed frame after `after`, oldest first.
    fn frames_after(&self, after: Option<&Cursor>) -> Result<Vec<PushFrame>, MailboxError> {
        let mut out = Vec::new();
        let mut cursor = after.cloned();
        loop {
            let rows = self
                .with_store(|s| {
                    s.mailbox_page(
                        self.account(),
                        cursor
                            .as_ref()
                            .map(|c| (c.created_at, c.envelope_id.as_str())),
                        MAX_PAGE,
                        false,
                        false,
                    )
                })
                .map_err(store_error)?;
            let full = rows.len() == MAX_PAGE as usize;
            cursor = rows.last().map(|r| r.frame.cursor()).or(cursor);
            out.extend(rows.into_iter().map(|r| r.frame));
            if !full {
                return Ok(out);
            }
        }
    }

    /// A page of the local index (no server call).
    pub fn list(&self, q: &ListQuery) -> Result<Page, MailboxError> {
        if q.limit == 0 || q.limit > MAX_PAGE {
            return Err(MailboxError::Invalid(format!(
                "cannot list {} rows: limit must be 1 to {MAX_PAGE}",
                q.limit
            )));
        }
        let rows = self
            .with_store(|s| {
                s.mailbox_page(
                    self.account(),
                    q.after
                        .as_ref()
                        .map(|c| (c.created_at, c.envelope_id.as_str())),
                    q.limit,
                    q.unread_only,
                    q.order == Order::Desc,
                )
            })
            .map_err(store_error)?;
        let next_cursor = (rows.len() == q.limit as usize)
            .then(|| rows.last().map(|r| r.frame.cursor()))
            .flatten();
        Ok(Page {
            frames: rows
                .into_iter()
                .map(|r| ListedFrame {
                    frame: r.frame,
                    seen: r.seen,
                })
                .collect(),
            next_cursor,
        })
    }

    /// Fetches one envelope's body from the server; with `mark_read`, sets `$seen` there and
    /// the seen flag locally.
    pub async fn read(
        &self,
        id: &EnvelopeId,
        mark_read: bool,
    ) -> Result<ReadEnvelope, MailboxError> {
        let mut got = self.fetch(std::slice::from_ref(id)).await?;
        let mut one = got.pop().ok_or(MailboxError::NotFound)?;
        if mark_read && !one.seen {
            self.mark_read(std::slice::from_ref(id)).await?;
            one.seen = true;
        }
        Ok(one)
    }

    /// Up to [`MAX_GET_MANY`] envelopes with their bodies (not marked read); unknown ids are
    /// left out.
    pub async fn get_many(&self, ids: &[EnvelopeId]) -> Result<Vec<ReadEnvelope>, MailboxError> {
        if ids.len() > MAX_GET_MANY {
            return Err(MailboxError::Invalid(format!(
                "cannot get {} envelopes at once: at most {MAX_GET_MANY}",
                ids.len()
            )));
        }
        self.fetch(ids).await
    }

    async fn fetch(&self, ids: &[EnvelopeId]) -> Result<Vec<ReadEnvelope>, MailboxError> {
        let rows = self
            .with_store(|s| {
                ids.iter()
                    .filter_map(|id| s.mailbox_get(self.account(), id).transpose())
                    .collect::<Result<Vec<_>, _>>()
            })
            .map_err(store_error)?;
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let mail = self.jmap().await?;
        let email_ids: Vec<String> = rows.iter().map(|r| r.email_id.clone()).collect();
        let fetched = mail
            .get_bodies(&email_ids)
            .await
            .map_err(|e| jmap_error(&e))?;
        let directory = self.directory();
        let mut out = Vec::new();
        for row in rows {
            let Some(f) = fetched.iter().find(|f| f.id == row.email_id) else {
                continue;
            };
            let envelope = match Envelope::from_inbound_mapped(&f.inbound, &|a: &str| {
                directory.handle_of_address(a)
            }) {
                Ok(Some(e)) if e.id == row.frame.id => e,
                other => {
                    // NOTE: unreadable, or the server lost the mail and reused its JMAP id.
                    tracing::warn!(envelope = %row.frame.id, email = %row.email_id, outcome = ?other.map(|e| e.map(|e| e.id)), "the mail of an indexed envelope does not carry it");
                    continue;
                }
            };
            out.push(ReadEnvelope {
                envelope,
                seen: row.seen || f.keywords.contains(SEEN),
                frame: row.frame,
            });
        }
        Ok(out)
    }

    /// Marks envelopes read (server `$seen` and the local flag); returns how many were known.
    pub async fn mark_read(&self, ids: &[EnvelopeId]) -> Result<usize, MailboxError> {
        let rows = self
            .with_store(|s| {
                ids.iter()
                    .filter_map(|id| s.mailbox_get(self.account(), id).transpose())
                    .collect::<Result<Vec<_>, _>>()
            })
            .map_err(store_error)?;
        if rows.is_empty() {
            return Ok(0);
        }
        let mail = self.jmap().await?;
        for row in &rows {
            match mail.set_keywords(&row.email_id, &[SEEN], &[], None).await {
                Ok(_) => {}
                Err(e) if e.is_not_found() => continue,
                Err(e) => return Err(jmap_error(&e)),
            }
            self.with_store(|s| s.mailbox_set_seen(self.account(), &row.frame.id, true))
                .map_err(store_error)?;
        }
        Ok(rows.len())
    }

    /// New frames and monitor facts, as [`Mailbox::sync`] and [`Mailbox::follow`] find them.
    pub fn subscribe(&self) -> broadcast::Receiver<MailboxEvent> {
        self.inner.events.subscribe()
    }

    /// Catches up, then syncs on every push hint (polling without push) and broadcasts, until
    /// `shutdown` completes. The push supervisor reconnects through server restarts; a failed
    /// sync is logged and retried on the next hint or tick.
    pub async fn follow(
        &self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), MailboxError> {
        let mail = self.jmap().await?;
        let settings = PushSettings::from_config(&self.inner.account.jmap)
            .map_err(|e| MailboxError::Invalid(error_chain(&e)))?;
        let poll = settings.poll_interval();
        let (supervisor, mut hints, _status) = PushSupervisor::new(mail, settings, 16);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let push = tokio::spawn(supervisor.run(async move {
            let _ = stopped.await;
        }));
        tokio::pin!(shutdown);
        if let Err(e) = self.sync().await {
            tracing::warn!(error = %e, "mailbox catch-up failed; retrying on the next hint");
        }
        // NOTE: a short retry timer on top of the hints: after a failed sync (server down) the
        // next attempt does not wait for the poll interval.
        let mut retry: Option<tokio::time::Instant> = None;
        loop {
            let wake = async {
                match retry {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = &mut shutdown => break,
                hint = hints.recv() => {
                    if hint.is_none() {
                        break;
                    }
                    while hints.try_recv().is_ok() {}
                }
                () = wake => {}
            }
            match self.sync().await {
                Ok(_) => retry = None,
                Err(e) => {
                    tracing::warn!(error = %e, "mailbox sync failed; retrying");
                    retry = Some(tokio::time::Instant::now() + poll.min(Duration::from_secs(2)));
                }
            }
        }
        let _ = stop.send(());
        let _ = push.await;
        Ok(())
    }
}

/// A submission failure as a mailbox error: a refused recipient is [`MailboxError::Unreachable`].
fn send_error(e: &SendError, recipients: &[Handle]) -> MailboxError {
    match e {
        SendError::Rejected { status, .. } if (550..=553).contains(status) => {
            MailboxError::Unreachable(
                recipients
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
            )
        }
        SendError::Auth { .. } | SendError::Secret(_) => MailboxError::Unauthorized(error_chain(e)),
        SendError::Rejected { .. } | SendError::Address { .. } | SendError::Failed { .. } => {
            MailboxError::Invalid(format!(
                "the server refused the envelope: {}",
                error_chain(e)
            ))
        }
        SendError::Temporary { .. } | SendError::Unreachable { .. } => {
            MailboxError::Unavailable(format!("SMTP: {}", error_chain(e)))
        }
    }
}
