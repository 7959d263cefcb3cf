//! Monitor facts: sender-side delivery facts (`stored`, `bounced`, `expired`) per recipient of an
//! envelope sent with a `monitor` (`shared/protocol/asmtp.md`, "Monitor").
//!
//! Skeleton declared by the mailbox core so that every part compiles; the MCPMON part owns and
//! fills this file (DSN parameters for the submission, ingest of delivery reports, persistence).

use serde::{Deserialize, Serialize};

use super::MailboxError;
use crate::store::Store;
use crate::transport::Fetched;
use crate::wire::asmtp::{Envelope, EnvelopeId};

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

/// The DSN parameters to submit `envelope` with, when it asks for a monitor.
pub fn dsn_params(envelope: &Envelope) -> Option<DsnParams> {
    let _ = envelope;
    None
}

/// Reads a delivery report (multipart/report) from the Inbox into facts and persists them.
/// Mail that is no delivery report gives no facts.
pub fn ingest(
    store: &Store,
    account: &str,
    fetched: &Fetched,
) -> Result<Vec<MonitorFact>, MailboxError> {
    let _ = (store, account, fetched);
    Ok(Vec::new())
}

/// The persisted facts of `account`, of one envelope or of all.
pub fn facts(
    store: &Store,
    account: &str,
    envelope_id: Option<&EnvelopeId>,
) -> Result<Vec<MonitorFact>, MailboxError> {
    let _ = (store, account, envelope_id);
    Ok(Vec::new())
}
