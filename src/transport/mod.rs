//! Transport: the only layer that talks to mail servers.
//!
//! Two small traits stand between the daemon and the network (style point 6), each with an
//! in-memory stub for logic tests:
//!
//! - [`Submit`], the outbox: [`Submit::send_raw`] hands rendered RFC 5322 bytes and a separate
//!   [`SmtpEnvelope`] to SMTP submission ([RFC 6409](https://www.rfc-editor.org/rfc/rfc6409)).
//!   Real: [`smtp::SmtpSubmit`] (lettre, pooled, retries transient failures). Stub:
//!   [`MemorySubmit`].
//! - [`MailStore`], the inbox: JMAP Mail ([RFC 8621](https://www.rfc-editor.org/rfc/rfc8621))
//!   over JSON: `Email/changes`, headers-only and full `Email/get`, blob download, keyword
//!   compare-and-swap with `ifInState`, a bounded back-fill query and mailbox lookups. Real:
//!   [`jmap::JmapClient`] (our own small client over reqwest). Stub: [`MemoryStore`].
//!
//! [`push::PushSupervisor`] turns the server's push channels (RFC 8887 WebSocket, EventSource,
//! or nothing) into "something may have changed" hints. Push is only a hint: after each one the
//! daemon asks [`MailStore::changes`] since its persisted state, which is the truth.
//!
//! Errors classify themselves ([`SendError`], [`JmapError`]): `is_transient()` (retry the same
//! thing later), `is_permanent()` (do not), `is_auth()` (exit 77), and `status()` where the
//! server gave one. Call [`init_crypto`] once at startup, before any TLS or WebSocket use.

pub mod jmap;
pub mod push;
pub mod smtp;
mod stub;

use std::collections::BTreeSet;
use std::future::Future;
use std::hash::{BuildHasher as _, Hasher as _};
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::wire::message::Inbound;

pub use jmap::{JmapClient, JmapError, JmapSettings, Session};
pub use push::{Hint, PushError, PushKind, PushSettings, PushStatus, PushSupervisor};
pub use smtp::{RetryPolicy, SendError, SmtpSettings, SmtpSubmit};
pub use stub::{MEMORY_INBOX, MemoryStore, MemorySubmit, SentMessage, StubFailure};

/// Installs the aws-lc-rs rustls provider as the process default. Call it once before any TLS
/// or WebSocket use (later calls do nothing); without it the first WebSocket may panic.
pub fn init_crypto() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// The SMTP envelope (`MAIL FROM` and `RCPT TO`, RFC 5321), kept apart from the RFC 5322
/// header fields: a Bcc recipient is in the envelope and nowhere in the bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmtpEnvelope {
    /// The reverse path; servers such as Stalwart require it to match the login.
    pub mail_from: String,
    /// Every recipient.
    pub rcpt_to: Vec<String>,
}

impl SmtpEnvelope {
    /// An envelope from `mail_from` to `rcpt_to`.
    pub fn new(mail_from: impl Into<String>, rcpt_to: impl IntoIterator<Item = String>) -> Self {
        SmtpEnvelope {
            mail_from: mail_from.into(),
            rcpt_to: rcpt_to.into_iter().collect(),
        }
    }
}

/// The outbox: submits rendered messages.
pub trait Submit: Send + Sync {
    /// Submits `bytes` (a complete RFC 5322 message) to the envelope's recipients. Transient
    /// failures may be retried inside; the error says whether retrying later may help.
    fn send_raw(
        &self,
        envelope: &SmtpEnvelope,
        bytes: &[u8],
    ) -> impl Future<Output = Result<(), SendError>> + Send;
}

/// What changed in the mailbox between two states (`Email/changes`, RFC 8620 §5.2), merged over
/// every `hasMoreChanges` page.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// Emails created since the old state (and not destroyed again).
    pub created: Vec<String>,
    /// Emails updated (keywords, mailboxes) that were not created in this window.
    pub updated: Vec<String>,
    /// Emails destroyed that existed at the old state.
    pub destroyed: Vec<String>,
    /// The state to persist once these changes are processed.
    pub new_state: String,
}

impl Changes {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.created.is_empty() && self.updated.is_empty() && self.destroyed.is_empty()
    }
}

/// One email as `Email/get` returned it: the wire view plus the JMAP metadata the daemon needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Fetched {
    /// The JMAP id.
    pub id: String,
    /// Headers (and, from [`MailStore::get_bodies`], the body) for [`crate::wire::classify()`].
    pub inbound: Inbound,
    /// The mailboxes the email is in.
    pub mailbox_ids: BTreeSet<String>,
    /// Its keywords, lowercase as servers store them (`$seen`, `$taskmail-claimed`).
    pub keywords: BTreeSet<String>,
    /// When the server received it.
    pub received_at: Option<DateTime<Utc>>,
}

/// The state after a successful `Email/set`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetOutcome {
    /// The Email state before the update.
    pub old_state: Option<String>,
    /// The Email state after it: the `ifInState` for the next compare-and-swap.
    pub new_state: String,
}

/// Result of a bounded back-fill query (after `cannotCalculateChanges`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backfill {
    /// Inbox emails received after the given time, oldest first, at most the limit.
    pub ids: Vec<String>,
    /// The Email state read just before the query: persist it once the ids are processed, and
    /// anything newer shows up in the next [`MailStore::changes`].
    pub state: String,
}

/// A mailbox (`Mailbox/get`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailboxInfo {
    /// The JMAP id.
    pub id: String,
    /// The display name (differs between servers: find standard ones by role).
    pub name: String,
    /// The role (`inbox`, `sent`, `junk`...), lowercase.
    pub role: Option<String>,
}

/// One email's keyword update in [`MailStore::write_keywords`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeywordWrite {
    /// The whole keyword set becomes this one.
    Replace(BTreeSet<String>),
    /// These keywords are added and those removed; the others stay.
    Patch {
        /// Keywords to set.
        add: Vec<String>,
        /// Keywords to clear.
        remove: Vec<String>,
    },
}

/// The inbox: JMAP Mail, JSON in and [`Inbound`] out.
pub trait MailStore: Send + Sync {
    /// The current Email state.
    fn state(&self) -> impl Future<Output = Result<String, JmapError>> + Send;

    /// Everything that changed since `since`, following `hasMoreChanges`. A state the server
    /// can no longer compute from gives [`JmapError::CannotCalculateChanges`]: back-fill with
    /// [`MailStore::query_inbox_since`], never skip the gap.
    fn changes(&self, since: &str) -> impl Future<Output = Result<Changes, JmapError>> + Send;

    /// Headers only: thread ids, addresses, subject, dates, mailboxes, keywords and every
    /// protocol header in `asText` form. Ids that no longer exist are left out.
    fn get_headers(
        &self,
        ids: &[String],
    ) -> impl Future<Output = Result<Vec<Fetched>, JmapError>> + Send;

    /// As [`MailStore::get_headers`], plus the text and HTML bodies (format=flowed undone),
    /// attachment metadata, and the ASMTP `application/json` part downloaded into
    /// `body.json_part`.
    fn get_bodies(
        &self,
        ids: &[String],
    ) -> impl Future<Output = Result<Vec<Fetched>, JmapError>> + Send;

    /// The content of a blob (an attachment's `blob_id`).
    fn download(
        &self,
        blob_id: &str,
        name: &str,
        content_type: &str,
    ) -> impl Future<Output = Result<Vec<u8>, JmapError>> + Send;

    /// Adds and removes keywords on one email. With `if_in_state`, the update happens only if
    /// the Email state is still that one (compare-and-swap); otherwise
    /// [`JmapError::StateMismatch`]: refresh and retry.
    fn set_keywords(
        &self,
        id: &str,
        add: &[&str],
        remove: &[&str],
        if_in_state: Option<&str>,
    ) -> impl Future<Output = Result<SetOutcome, JmapError>> + Send;

    /// The keywords of `ids` (lowercase), in one `Email/get` of `id` and `keywords` only: the
    /// cheap read of the claim protocol. Ids that no longer exist are left out.
    fn get_keywords(
        &self,
        ids: &[String],
    ) -> impl Future<Output = Result<Vec<(String, BTreeSet<String>)>, JmapError>> + Send;

    /// Updates the keywords of many emails in one `Email/set`, never guarded by a state:
    /// [`KeywordWrite::Replace`] writes the whole set (the last writer wins, whatever was
    /// there), [`KeywordWrite::Patch`] adds and removes single keywords. One outcome per id,
    /// in order.
    fn write_keywords(
        &self,
        writes: &[(String, KeywordWrite)],
    ) -> impl Future<Output = Result<Vec<Result<(), JmapError>>, JmapError>> + Send;

    /// The id of the mailbox with role `inbox`.
    fn inbox_id(&self) -> impl Future<Output = Result<String, JmapError>> + Send;

    /// Inbox emails received after `received_after`, oldest first, at most `limit`.
    fn query_inbox_since(
        &self,
        received_after: DateTime<Utc>,
        limit: usize,
    ) -> impl Future<Output = Result<Backfill, JmapError>> + Send;

    /// The mailbox with `role` (lowercase, e.g. `junk`), if there is one.
    fn mailbox_by_role(
        &self,
        role: &str,
    ) -> impl Future<Output = Result<Option<MailboxInfo>, JmapError>> + Send;

    /// The mailbox called `name` (exact match), if there is one.
    fn mailbox_by_name(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<MailboxInfo>, JmapError>> + Send;

    /// Moves one email into `mailbox_id` (and out of every other mailbox).
    fn move_to(
        &self,
        id: &str,
        mailbox_id: &str,
    ) -> impl Future<Output = Result<SetOutcome, JmapError>> + Send;

    /// Creates a top-level mailbox called `name` (`Mailbox/set`); use
    /// [`find_or_create_mailbox`] to reuse an existing one.
    fn create_mailbox(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<MailboxInfo, JmapError>> + Send;

    /// The ids of the emails in `mailbox_id`, newest first, at most `limit` (`Email/query`).
    fn query_mailbox(
        &self,
        mailbox_id: &str,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<String>, JmapError>> + Send;

    /// Destroys one email (`Email/set` destroy); a missing one is [`JmapError::SetFailed`]
    /// with `notFound`.
    fn destroy_email(&self, id: &str) -> impl Future<Output = Result<(), JmapError>> + Send;
}

/// The mailbox called `name`, created when there is none (the quarantine mailbox).
pub async fn find_or_create_mailbox<M: MailStore>(
    mail: &M,
    name: &str,
) -> Result<MailboxInfo, JmapError> {
    if let Some(found) = mail.mailbox_by_name(name).await? {
        return Ok(found);
    }
    match mail.create_mailbox(name).await {
        Ok(created) => Ok(created),
        // NOTE: another daemon (or the CLI) may have created it meanwhile.
        Err(error) => match mail.mailbox_by_name(name).await? {
            Some(found) => Ok(found),
            None => Err(error),
        },
    }
}

/// Why a [`Backoff`] cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackoffError {
    /// The minimum is zero.
    #[error("cannot use a backoff minimum of zero: it must be longer than zero")]
    ZeroMinimum,
    /// The maximum is below the minimum.
    #[error("cannot use a backoff maximum of {max:?}: it is shorter than the minimum {min:?}")]
    MaxBelowMin {
        /// The minimum asked for.
        min: Duration,
        /// The maximum asked for.
        max: Duration,
    },
}

/// Jittered exponential backoff between `min` and `max`, checked at construction (style point
/// 31, after linkerd's `exp-backoff`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    min: Duration,
    max: Duration,
}

impl Backoff {
    /// A backoff from `min` up to `max`.
    pub fn new(min: Duration, max: Duration) -> Result<Backoff, BackoffError> {
        if min.is_zero() {
            return Err(BackoffError::ZeroMinimum);
        }
        if max < min {
            return Err(BackoffError::MaxBelowMin { min, max });
        }
        Ok(Backoff { min, max })
    }

    /// The shortest delay.
    pub fn min(&self) -> Duration {
        self.min
    }

    /// The longest delay.
    pub fn max(&self) -> Duration {
        self.max
    }

    /// The delay before retry `attempt` (0 for the first): `min * 2^attempt`, capped at `max`,
    /// then jittered uniformly into its upper half, so that many clients that failed together do
    /// not retry together.
    pub fn delay(&self, attempt: u32) -> Duration {
        self.delay_with(attempt, jitter_unit())
    }

    /// [`Backoff::delay`] with the random part given (`unit` in `0.0..=1.0`), for tests.
    pub fn delay_with(&self, attempt: u32, unit: f64) -> Duration {
        let factor = 2u32.saturating_pow(attempt.min(31));
        let base = self.min.saturating_mul(factor).min(self.max);
        let unit = unit.clamp(0.0, 1.0);
        (base / 2 + (base / 2).mul_f64(unit)).max(self.min.min(base))
    }
}

/// A random number in `0.0..1.0` from the standard library's per-process random hash keys: good
/// enough for jitter, and no extra dependency.
fn jitter_unit() -> f64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        crate::clock::now()
            .timestamp_nanos_opt()
            .unwrap_or_default() as u128,
    );
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_validated() {
        let s = Duration::from_secs;
        assert_eq!(Backoff::new(s(0), s(1)), Err(BackoffError::ZeroMinimum));
        assert!(matches!(
            Backoff::new(s(2), s(1)),
            Err(BackoffError::MaxBelowMin { .. })
        ));
        assert!(Backoff::new(s(1), s(1)).is_ok());
        assert!(
            BackoffError::ZeroMinimum
                .to_string()
                .starts_with("cannot use")
        );
    }

    #[test]
    fn backoff_doubles_up_to_the_maximum_with_jitter_in_the_upper_half() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1)).unwrap();
        assert_eq!(b.delay_with(0, 1.0), Duration::from_millis(100));
        assert_eq!(b.delay_with(1, 1.0), Duration::from_millis(200));
        assert_eq!(b.delay_with(3, 1.0), Duration::from_millis(800));
        assert_eq!(b.delay_with(4, 1.0), Duration::from_secs(1));
        assert_eq!(b.delay_with(1000, 1.0), Duration::from_secs(1));
        assert_eq!(b.delay_with(4, 0.0), Duration::from_millis(500));
        assert_eq!(b.delay_with(0, 0.0), Duration::from_millis(100));
        for attempt in 0..40 {
            let d = b.delay(attempt);
            assert!(d >= b.min() && d <= b.max(), "{attempt}: {d:?}");
        }
        let spread: BTreeSet<Duration> = (0..20).map(|_| b.delay(6)).collect();
        assert!(spread.len() > 1, "jitter varies: {spread:?}");
    }

    #[test]
    fn changes_is_empty() {
        assert!(Changes::default().is_empty());
        let c = Changes {
            destroyed: vec!["x".into()],
            ..Changes::default()
        };
        assert!(!c.is_empty());
    }
}
