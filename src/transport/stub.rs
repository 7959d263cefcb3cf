//! In-memory stand-ins for [`Submit`] and [`MailStore`], for the daemon's logic tests (style
//! point 6, after lettre's `transport::stub`). They keep the semantics the daemon relies on:
//! Email states that move on every change, `Email/changes` that can become uncalculable,
//! `ifInState` compare-and-swap on keywords, Inbox-role mail, blobs, and scripted failures.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Mutex, MutexGuard, PoisonError};

use chrono::{DateTime, Utc};

use super::jmap::{Merge, checked_keyword};
use super::{
    Backfill, Changes, Fetched, JmapError, KeywordWrite, MailStore, MailboxInfo, SendError,
    SetOutcome, SmtpEnvelope, Submit,
};
use crate::wire::message::{Inbound, MessageError};

/// A failure a stub can be told to produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StubFailure {
    /// SMTP 451 / HTTP 503: retry later.
    Transient,
    /// SMTP 554 / JMAP `serverFail`: do not retry.
    Permanent,
    /// SMTP 535 / HTTP 401: the login was refused.
    Auth,
}

impl StubFailure {
    fn send_error(self) -> SendError {
        let endpoint = "memory".to_owned();
        match self {
            StubFailure::Transient => SendError::Temporary {
                endpoint,
                status: Some(451),
                attempts: 1,
                source: "451 4.3.0 stub: try again later".into(),
            },
            StubFailure::Permanent => SendError::Rejected {
                endpoint,
                status: 554,
                source: "554 5.6.0 stub: rejected".into(),
            },
            StubFailure::Auth => SendError::Auth {
                endpoint,
                status: Some(535),
                source: "535 5.7.8 stub: authentication refused".into(),
            },
        }
    }

    fn jmap_error(self) -> JmapError {
        let url = "memory:".to_owned();
        match self {
            StubFailure::Transient => JmapError::Http {
                url,
                status: 503,
                retry_after: None,
                detail: "stub".to_owned(),
            },
            StubFailure::Permanent => JmapError::Method {
                method: "stub".to_owned(),
                kind: "serverFail".to_owned(),
                description: None,
            },
            StubFailure::Auth => JmapError::Auth { url, status: 401 },
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One message a [`MemorySubmit`] accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentMessage {
    /// The envelope it was sent with.
    pub envelope: SmtpEnvelope,
    /// The bytes.
    pub bytes: Vec<u8>,
}

/// A [`Submit`] that records what it is given.
#[derive(Debug, Default)]
pub struct MemorySubmit {
    inner: Mutex<SubmitInner>,
}

#[derive(Debug, Default)]
struct SubmitInner {
    sent: Vec<SentMessage>,
    failures: VecDeque<StubFailure>,
    attempts: usize,
}

impl MemorySubmit {
    /// An empty outbox that accepts everything.
    pub fn new() -> MemorySubmit {
        MemorySubmit::default()
    }

    /// Makes the next `count` sends fail with `failure` (after any failures already queued).
    pub fn fail_next(&self, count: usize, failure: StubFailure) {
        lock(&self.inner)
            .failures
            .extend(std::iter::repeat_n(failure, count));
    }

    /// Every message accepted so far, in order.
    pub fn sent(&self) -> Vec<SentMessage> {
        lock(&self.inner).sent.clone()
    }

    /// How many times `send_raw` was called, failures included.
    pub fn attempts(&self) -> usize {
        lock(&self.inner).attempts
    }
}

impl Submit for MemorySubmit {
    async fn send_raw(&self, envelope: &SmtpEnvelope, bytes: &[u8]) -> Result<(), SendError> {
        let mut inner = lock(&self.inner);
        inner.attempts += 1;
        if let Some(failure) = inner.failures.pop_front() {
            return Err(failure.send_error());
        }
        inner.sent.push(SentMessage {
            envelope: envelope.clone(),
            bytes: bytes.to_vec(),
        });
        Ok(())
    }
}

/// The id of the stub's Inbox.
pub const MEMORY_INBOX: &str = "inbox";

/// A [`MailStore`] over an in-memory mailbox. States are decimal numbers that grow with every
/// change; states from before [`MemoryStore::forget_changes`] give `cannotCalculateChanges`.
#[derive(Debug)]
pub struct MemoryStore {
    inner: Mutex<StoreInner>,
}

#[derive(Debug)]
struct StoreInner {
    state: u64,
    /// States below this cannot be bridged by `changes`.
    horizon: u64,
    /// `(state after the change, id, kind)`.
    log: Vec<(u64, String, LogKind)>,
    emails: BTreeMap<String, StoredEmail>,
    mailboxes: Vec<MailboxInfo>,
    blobs: BTreeMap<String, Vec<u8>>,
    failures: VecDeque<StubFailure>,
    next_id: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LogKind {
    Created,
    Updated,
    Destroyed,
}

#[derive(Debug, Clone)]
struct StoredEmail {
    inbound: Inbound,
    mailbox_ids: BTreeSet<String>,
    keywords: BTreeSet<String>,
    received_at: DateTime<Utc>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore::new()
    }
}

impl MemoryStore {
    /// An empty account with an Inbox (id [`MEMORY_INBOX`]) and a Sent mailbox.
    pub fn new() -> MemoryStore {
        let mailbox = |id: &str, name: &str, role: &str| MailboxInfo {
            id: id.to_owned(),
            name: name.to_owned(),
            role: Some(role.to_owned()),
        };
        MemoryStore {
            inner: Mutex::new(StoreInner {
                state: 0,
                horizon: 0,
                log: Vec::new(),
                emails: BTreeMap::new(),
                mailboxes: vec![
                    mailbox(MEMORY_INBOX, "Inbox", "inbox"),
                    mailbox("sent", "Sent Items", "sent"),
                ],
                blobs: BTreeMap::new(),
                failures: VecDeque::new(),
                next_id: 1,
            }),
        }
    }

    /// Delivers raw RFC 5322 bytes to the Inbox; attachments become blobs. Returns the id.
    pub fn deliver(&self, raw: &[u8], received_at: DateTime<Utc>) -> Result<String, MessageError> {
        let inbound = Inbound::from_bytes(raw)?;
        Ok(self.deliver_inbound(inbound, received_at))
    }

    /// Delivers a parsed message to the Inbox. Attachments with bytes become blobs (their
    /// `blob_id` is set); a JSON part stays in `body.json_part`. Returns the id.
    pub fn deliver_inbound(&self, mut inbound: Inbound, received_at: DateTime<Utc>) -> String {
        let mut inner = lock(&self.inner);
        let id = format!("m{}", inner.next_id);
        inner.next_id += 1;
        if let Some(body) = inbound.body.as_mut() {
            for (i, attachment) in body.attachments.iter_mut().enumerate() {
                if let Some(bytes) = attachment.bytes.take() {
                    let blob_id = format!("{id}-b{i}");
                    inner.blobs.insert(blob_id.clone(), bytes);
                    attachment.blob_id = Some(blob_id);
                }
            }
        }
        inner.emails.insert(
            id.clone(),
            StoredEmail {
                inbound,
                mailbox_ids: BTreeSet::from([MEMORY_INBOX.to_owned()]),
                keywords: BTreeSet::new(),
                received_at,
            },
        );
        inner.record(&id, LogKind::Created);
        id
    }

    /// Stores a blob for [`MailStore::download`].
    pub fn add_blob(&self, blob_id: &str, bytes: Vec<u8>) {
        lock(&self.inner).blobs.insert(blob_id.to_owned(), bytes);
    }

    /// Adds a mailbox; returns its id.
    pub fn add_mailbox(&self, name: &str, role: Option<&str>) -> String {
        let mut inner = lock(&self.inner);
        let id = format!("mb{}", inner.mailboxes.len() + 1);
        inner.mailboxes.push(MailboxInfo {
            id: id.clone(),
            name: name.to_owned(),
            role: role.map(str::to_owned),
        });
        id
    }

    /// Destroys an email (as a person deleting it would).
    pub fn destroy(&self, id: &str) {
        let mut inner = lock(&self.inner);
        if inner.emails.remove(id).is_some() {
            inner.record(id, LogKind::Destroyed);
        }
    }

    /// Makes every state before the current one uncalculable, as a server that pruned its
    /// change log.
    pub fn forget_changes(&self) {
        let mut inner = lock(&self.inner);
        inner.horizon = inner.state;
        inner.log.clear();
    }

    /// Makes the next `count` calls (of any method) fail with `failure`.
    pub fn fail_next(&self, count: usize, failure: StubFailure) {
        lock(&self.inner)
            .failures
            .extend(std::iter::repeat_n(failure, count));
    }

    /// The keywords of an email.
    pub fn keywords(&self, id: &str) -> Option<BTreeSet<String>> {
        lock(&self.inner).emails.get(id).map(|e| e.keywords.clone())
    }

    /// The mailboxes of an email.
    pub fn mailbox_ids(&self, id: &str) -> Option<BTreeSet<String>> {
        lock(&self.inner)
            .emails
            .get(id)
            .map(|e| e.mailbox_ids.clone())
    }

    /// The current state, without going through a failure.
    pub fn current_state(&self) -> String {
        lock(&self.inner).state.to_string()
    }

    fn begin(&self) -> Result<MutexGuard<'_, StoreInner>, JmapError> {
        let mut inner = lock(&self.inner);
        match inner.failures.pop_front() {
            Some(failure) => Err(failure.jmap_error()),
            None => Ok(inner),
        }
    }

    fn fetch(&self, ids: &[String], with_body: bool) -> Result<Vec<Fetched>, JmapError> {
        let inner = self.begin()?;
        Ok(ids
            .iter()
            .filter_map(|id| {
                let email = inner.emails.get(id)?;
                let mut inbound = email.inbound.clone();
                if !with_body {
                    inbound.body = None;
                }
                Some(Fetched {
                    id: id.clone(),
                    inbound,
                    mailbox_ids: email.mailbox_ids.clone(),
                    keywords: email.keywords.clone(),
                    received_at: Some(email.received_at),
                })
            })
            .collect())
    }

    fn update(
        &self,
        id: &str,
        if_in_state: Option<&str>,
        change: impl FnOnce(&mut StoredEmail),
    ) -> Result<SetOutcome, JmapError> {
        let mut inner = self.begin()?;
        let old_state = inner.state.to_string();
        if let Some(expected) = if_in_state
            && expected != old_state
        {
            return Err(JmapError::StateMismatch {
                method: "Email/set".to_owned(),
                expected: expected.to_owned(),
            });
        }
        let Some(email) = inner.emails.get_mut(id) else {
            return Err(JmapError::SetFailed {
                id: id.to_owned(),
                kind: "notFound".to_owned(),
                description: None,
            });
        };
        change(email);
        inner.record(id, LogKind::Updated);
        Ok(SetOutcome {
            old_state: Some(old_state),
            new_state: inner.state.to_string(),
        })
    }
}

impl StoreInner {
    fn record(&mut self, id: &str, kind: LogKind) {
        self.state += 1;
        self.log.push((self.state, id.to_owned(), kind));
    }
}

impl MailStore for MemoryStore {
    async fn state(&self) -> Result<String, JmapError> {
        Ok(self.begin()?.state.to_string())
    }

    async fn changes(&self, since: &str) -> Result<Changes, JmapError> {
        let inner = self.begin()?;
        let cannot = || JmapError::CannotCalculateChanges {
            since: since.to_owned(),
            kind: "cannotCalculateChanges".to_owned(),
        };
        let since_n: u64 = since.parse().map_err(|_| cannot())?;
        if since_n < inner.horizon || since_n > inner.state {
            return Err(cannot());
        }
        let mut merge = Merge::default();
        for (_, id, kind) in inner.log.iter().filter(|(s, _, _)| *s > since_n) {
            let one = vec![id.clone()];
            match kind {
                LogKind::Created => merge.page(one, Vec::new(), Vec::new()),
                LogKind::Updated => merge.page(Vec::new(), one, Vec::new()),
                LogKind::Destroyed => merge.page(Vec::new(), Vec::new(), one),
            }
        }
        Ok(merge.finish(inner.state.to_string()))
    }

    async fn get_headers(&self, ids: &[String]) -> Result<Vec<Fetched>, JmapError> {
        self.fetch(ids, false)
    }

    async fn get_bodies(&self, ids: &[String]) -> Result<Vec<Fetched>, JmapError> {
        self.fetch(ids, true)
    }

    async fn download(
        &self,
        blob_id: &str,
        _name: &str,
        _content_type: &str,
    ) -> Result<Vec<u8>, JmapError> {
        let inner = self.begin()?;
        inner
            .blobs
            .get(blob_id)
            .cloned()
            .ok_or_else(|| JmapError::Http {
                url: format!("memory:blob/{blob_id}"),
                status: 404,
                retry_after: None,
                detail: "no such blob".to_owned(),
            })
    }

    async fn set_keywords(
        &self,
        id: &str,
        add: &[&str],
        remove: &[&str],
        if_in_state: Option<&str>,
    ) -> Result<SetOutcome, JmapError> {
        let add = add
            .iter()
            .map(|k| checked_keyword(k))
            .collect::<Result<Vec<_>, _>>()?;
        let remove = remove
            .iter()
            .map(|k| checked_keyword(k))
            .collect::<Result<Vec<_>, _>>()?;
        self.update(id, if_in_state, |email| {
            email.keywords.extend(add);
            for k in &remove {
                email.keywords.remove(k);
            }
        })
    }

    async fn get_keywords(
        &self,
        ids: &[String],
    ) -> Result<Vec<(String, BTreeSet<String>)>, JmapError> {
        let inner = self.begin()?;
        Ok(ids
            .iter()
            .filter_map(|id| Some((id.clone(), inner.emails.get(id)?.keywords.clone())))
            .collect())
    }

    async fn write_keywords(
        &self,
        writes: &[(String, KeywordWrite)],
    ) -> Result<Vec<Result<(), JmapError>>, JmapError> {
        let mut outcomes = Vec::with_capacity(writes.len());
        for (id, write) in writes {
            let checked = |keywords: &[String]| {
                keywords
                    .iter()
                    .map(|k| checked_keyword(k))
                    .collect::<Result<Vec<_>, _>>()
            };
            let outcome = match write {
                KeywordWrite::Replace(keywords) => {
                    let all: Vec<String> = keywords.iter().cloned().collect();
                    let keywords = checked(&all)?;
                    self.update(id, None, |email| {
                        email.keywords = keywords.into_iter().collect();
                    })
                }
                KeywordWrite::Patch { add, remove } => {
                    let add = checked(add)?;
                    let remove = checked(remove)?;
                    self.update(id, None, |email| {
                        email.keywords.extend(add);
                        for k in &remove {
                            email.keywords.remove(k);
                        }
                    })
                }
            };
            outcomes.push(outcome.map(|_| ()));
        }
        Ok(outcomes)
    }

    async fn inbox_id(&self) -> Result<String, JmapError> {
        drop(self.begin()?);
        Ok(MEMORY_INBOX.to_owned())
    }

    async fn query_inbox_since(
        &self,
        received_after: DateTime<Utc>,
        limit: usize,
    ) -> Result<Backfill, JmapError> {
        let inner = self.begin()?;
        let mut found: Vec<(&DateTime<Utc>, &String)> = inner
            .emails
            .iter()
            .filter(|(_, e)| e.mailbox_ids.contains(MEMORY_INBOX) && e.received_at > received_after)
            .map(|(id, e)| (&e.received_at, id))
            .collect();
        found.sort();
        Ok(Backfill {
            ids: found
                .into_iter()
                .take(limit)
                .map(|(_, id)| id.clone())
                .collect(),
            state: inner.state.to_string(),
        })
    }

    async fn mailbox_by_role(&self, role: &str) -> Result<Option<MailboxInfo>, JmapError> {
        let inner = self.begin()?;
        Ok(inner
            .mailboxes
            .iter()
            .find(|m| {
                m.role
                    .as_deref()
                    .is_some_and(|r| r.eq_ignore_ascii_case(role))
            })
            .cloned())
    }

    async fn mailbox_by_name(&self, name: &str) -> Result<Option<MailboxInfo>, JmapError> {
        let inner = self.begin()?;
        Ok(inner.mailboxes.iter().find(|m| m.name == name).cloned())
    }

    async fn move_to(&self, id: &str, mailbox_id: &str) -> Result<SetOutcome, JmapError> {
        self.update(id, None, |email| {
            email.mailbox_ids = BTreeSet::from([mailbox_id.to_owned()]);
        })
    }

    async fn create_mailbox(&self, name: &str) -> Result<MailboxInfo, JmapError> {
        drop(self.begin()?);
        let id = self.add_mailbox(name, None);
        Ok(MailboxInfo {
            id,
            name: name.to_owned(),
            role: None,
        })
    }

    async fn query_mailbox(
        &self,
        mailbox_id: &str,
        limit: usize,
    ) -> Result<Vec<String>, JmapError> {
        let inner = self.begin()?;
        let mut found: Vec<(&DateTime<Utc>, &String)> = inner
            .emails
            .iter()
            .filter(|(_, e)| e.mailbox_ids.contains(mailbox_id))
            .map(|(id, e)| (&e.received_at, id))
            .collect();
        found.sort();
        Ok(found
            .into_iter()
            .rev()
            .take(limit)
            .map(|(_, id)| id.clone())
            .collect())
    }

    async fn destroy_email(&self, id: &str) -> Result<(), JmapError> {
        let mut inner = self.begin()?;
        if inner.emails.remove(id).is_none() {
            return Err(JmapError::SetFailed {
                id: id.to_owned(),
                kind: "notFound".to_owned(),
                description: None,
            });
        }
        inner.record(id, LogKind::Destroyed);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RAW: &[u8] = b"From: a@x.test\r\nTo: b@x.test\r\nSubject: hello\r\nMessage-ID: <1@x.test>\r\nX-AAMP-Intent: task.dispatch\r\n\r\nbody\r\n";

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + seconds, 0).unwrap()
    }

    #[tokio::test]
    async fn memory_submit_records_and_fails_on_demand() {
        let submit = MemorySubmit::new();
        let env = SmtpEnvelope::new("a@x.test", ["b@x.test".to_owned()]);
        submit.fail_next(2, StubFailure::Transient);
        submit.fail_next(1, StubFailure::Auth);
        let e1 = submit.send_raw(&env, b"x").await.unwrap_err();
        assert!(e1.is_transient() && e1.status() == Some(451));
        assert!(
            submit
                .send_raw(&env, b"x")
                .await
                .unwrap_err()
                .is_transient()
        );
        assert!(submit.send_raw(&env, b"x").await.unwrap_err().is_auth());
        submit.send_raw(&env, b"x").await.unwrap();
        assert_eq!(submit.attempts(), 4);
        assert_eq!(
            submit.sent(),
            vec![SentMessage {
                envelope: env,
                bytes: b"x".to_vec()
            }]
        );
        submit.fail_next(1, StubFailure::Permanent);
        let e = submit
            .send_raw(&SmtpEnvelope::new("a@x.test", Vec::new()), b"y")
            .await
            .unwrap_err();
        assert!(e.is_permanent() && e.status() == Some(554));
    }

    #[tokio::test]
    async fn memory_store_changes_headers_and_bodies() {
        let store = MemoryStore::new();
        let s0 = store.state().await.unwrap();
        let id = store.deliver(RAW, at(0)).unwrap();
        let changes = store.changes(&s0).await.unwrap();
        assert_eq!(changes.created, vec![id.clone()]);
        assert!(store.changes(&changes.new_state).await.unwrap().is_empty());
        let headers = store
            .get_headers(&[id.clone(), "nope".into()])
            .await
            .unwrap();
        assert_eq!(headers.len(), 1);
        assert!(headers[0].inbound.body.is_none());
        assert_eq!(
            headers[0].inbound.headers.get("x-aamp-intent"),
            Some("task.dispatch")
        );
        assert!(headers[0].mailbox_ids.contains(MEMORY_INBOX));
        let bodies = store.get_bodies(std::slice::from_ref(&id)).await.unwrap();
        assert_eq!(
            bodies[0]
                .inbound
                .body
                .as_ref()
                .unwrap()
                .text
                .as_deref()
                .map(str::trim),
            Some("body")
        );
        // created then destroyed within the window: never seen
        let s1 = store.state().await.unwrap();
        let gone = store.deliver(RAW, at(1)).unwrap();
        store.destroy(&gone);
        assert!(store.changes(&s1).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn memory_store_compare_and_swap_on_keywords() {
        let store = MemoryStore::new();
        let id = store.deliver(RAW, at(0)).unwrap();
        let state = store.state().await.unwrap();
        let won = store
            .set_keywords(&id, &["$taskmail-claimed"], &[], Some(&state))
            .await
            .unwrap();
        assert_ne!(won.new_state, state);
        let lost = store
            .set_keywords(&id, &["$taskmail-claimed"], &[], Some(&state))
            .await
            .unwrap_err();
        assert!(lost.is_state_mismatch(), "{lost:?}");
        store
            .set_keywords(
                &id,
                &["$Taskmail-Done"],
                &["$taskmail-claimed"],
                Some(&won.new_state),
            )
            .await
            .unwrap();
        assert_eq!(
            store.keywords(&id).unwrap(),
            BTreeSet::from(["$taskmail-done".to_owned()])
        );
        let missing = store
            .set_keywords("nope", &["$x"], &[], None)
            .await
            .unwrap_err();
        assert!(missing.is_not_found());
        let changes = store.changes(&state).await.unwrap();
        assert_eq!(changes.updated, vec![id]);
    }

    #[tokio::test]
    async fn memory_store_backfill_after_forgotten_changes() {
        let store = MemoryStore::new();
        let old = store.state().await.unwrap();
        let a = store.deliver(RAW, at(10)).unwrap();
        let b = store.deliver(RAW, at(20)).unwrap();
        let junk = store.add_mailbox("Quarantine", None);
        store.move_to(&b, &junk).await.unwrap();
        let c = store.deliver(RAW, at(30)).unwrap();
        store.forget_changes();
        let error = store.changes(&old).await.unwrap_err();
        assert!(error.is_cannot_calculate_changes() && !error.is_permanent());
        assert!(
            store
                .changes("garbage")
                .await
                .unwrap_err()
                .is_cannot_calculate_changes()
        );
        let backfill = store.query_inbox_since(at(5), 10).await.unwrap();
        assert_eq!(backfill.ids, vec![a.clone(), c.clone()]);
        assert_eq!(backfill.state, store.current_state());
        assert_eq!(
            store.query_inbox_since(at(5), 1).await.unwrap().ids,
            vec![a]
        );
        assert_eq!(
            store
                .mailbox_by_name("Quarantine")
                .await
                .unwrap()
                .map(|m| m.id),
            Some(junk.clone())
        );
        assert_eq!(store.mailbox_ids(&b).unwrap(), BTreeSet::from([junk]));
        assert_eq!(store.inbox_id().await.unwrap(), MEMORY_INBOX);
        assert!(store.mailbox_by_role("INBOX").await.unwrap().is_some());
    }

    #[tokio::test]
    async fn memory_store_blobs_and_failures() {
        let store = MemoryStore::new();
        let raw = b"From: a@x.test\r\nSubject: f\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n--b\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=\"a.bin\"\r\n\r\nDATA\r\n--b--\r\n";
        let id = store.deliver(raw, at(0)).unwrap();
        let fetched = store.get_bodies(&[id]).await.unwrap();
        let attachment = &fetched[0].inbound.body.as_ref().unwrap().attachments[0];
        let blob = attachment.blob_id.clone().unwrap();
        assert_eq!(
            store
                .download(&blob, "a.bin", "application/octet-stream")
                .await
                .unwrap(),
            b"DATA"
        );
        assert_eq!(
            store.download("nope", "", "").await.unwrap_err().status(),
            Some(404)
        );
        store.fail_next(1, StubFailure::Transient);
        store.fail_next(1, StubFailure::Auth);
        assert!(store.state().await.unwrap_err().is_transient());
        assert!(store.state().await.unwrap_err().is_auth());
        assert!(store.state().await.is_ok());
    }
}
