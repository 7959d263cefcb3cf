//! Agent signatures: the `X-ASMTP-Signature` header (`protocol/trust.md` point 6).
//!
//! DKIM proves which *domain* sent a mail; this layer proves which *agent key* did, end to end,
//! whatever server relayed it. It is optional per grant (`require-signature`, `peer-key`).
//! Pure: no I/O, no clock reads (callers pass `now`). Key files live in [`super::keys`].
//!
//! # The header
//!
//! ```text
//! X-ASMTP-Signature: v=1; a=ed25519; k=<key id>; t=<unix seconds>;
//!     h=<name>:<name>:...; bh=<base64 body hash>; b=<base64 signature>
//! ```
//!
//! Grammar (tags separated by `;`, white space around tags and inside tag values ignored, so
//! that a relay may fold the header anywhere; every tag exactly once, in any order):
//!
//! ```text
//! signature = tag *( ";" tag ) [ ";" ]
//! tag       = name "=" value
//! v         = "1"
//! a         = "ed25519"
//! k         = 11 base64url characters: the first 8 bytes of SHA-256(public key), no padding
//! t         = 1*DIGIT                          ; signing time, unix seconds
//! h         = hname *( ":" hname )             ; lowercase header names, no repeats
//! bh        = base64 (RFC 4648 §4, padded) of the 32-byte body hash
//! b         = base64 (padded) of the 64-byte Ed25519 signature
//! ```
//!
//! `h` must name at least [`REQUIRED_SIGNED`]; taskmail signs [`DEFAULT_SIGNED`]. A listed
//! header that is absent is signed *as absent*: adding it later (an `In-Reply-To` that
//! threads the mail elsewhere, an `X-AAMP-Expires-At`) breaks the signature. A header present
//! more than once is signed with every occurrence, so a second `X-AAMP-Intent` breaks it too.
//!
//! # What is signed (the canonical input)
//!
//! A length-prefixed serialisation: each item is written as `<decimal byte length>:<bytes>`,
//! back to back, never a bare separator join (so no value can shift bytes into its neighbour):
//!
//! 1. the context string [`CONTEXT`] (`taskmail-asmtp-sig-v1`);
//! 2. for each name of `h`, in order: the name, the number of occurrences in decimal (`0` for
//!    absent), then each occurrence's canonical value;
//! 3. the tag list rebuilt as `v=1; a=ed25519; k=..; t=..; h=..; bh=..; b=` (the `b` value
//!    empty), so the key id, time, header list and body hash are signed too.
//!
//! Canonical values are taken from the *parsed* message, so that re-folding, RFC 2047
//! re-encoding or a different Date format by a relay (Stalwart, Cyrus, Postfix) changes
//! nothing:
//!
//! - `from`, `to`, `cc`: the addresses only (no display names), trimmed, lowercased, joined
//!   with `,`; one occurrence when the list is not empty;
//! - `message-id`, `in-reply-to`, `references`: the ids without angle brackets, joined with
//!   one space;
//! - `date`: unix seconds in decimal;
//! - every other header (`subject`, `x-aamp-*`): the `asText` value (unfolded, RFC 2047
//!   decoded) with control characters made spaces, runs of white space collapsed to one space,
//!   and trimmed.
//!
//! # Body hash
//!
//! SHA-256 over a length-prefixed pair: for an ASMTP envelope, `json` and the JSON part's bytes
//! (trailing white space removed); for AAMP and plain mail, `text` and the text body with line
//! ends made LF, trailing white space removed from each line and trailing empty lines dropped.
//! Transfer encodings and line-end conversions of relays therefore do not break it.
//! Attachments are not covered (a known gap).
//!
//! # Verifying
//!
//! In two steps, because the trust gate runs before any body is fetched: [`verify_headers`]
//! checks the tags, the time window (`trust.transit-window` back, [`FUTURE_SKEW`] ahead), the
//! key against the pinned one and the signature itself; [`HeadersVerified::check_body`]
//! compares the signed body hash once the body is there. Each failure is a
//! [`SignatureError`] with a short [`rule`](SignatureError::rule) for the audit log.

use std::fmt;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use chrono::{DateTime, Utc};
use ed25519_dalek::{Signer as _, Verifier as _};
use sha2::{Digest, Sha256};

use crate::config::Grant;
use crate::wire::aamp::ValueKind;
use crate::wire::message::{Body, Inbound, Outbound};

/// The header name.
pub const HEADER: &str = "X-ASMTP-Signature";
/// The context string that starts every signing input.
pub const CONTEXT: &str = "taskmail-asmtp-sig-v1";
/// The prefix of a public key's text form.
pub const KEY_PREFIX: &str = "ed25519:";
/// How far in the future a signing time may lie (clock skew).
pub const FUTURE_SKEW: Duration = Duration::from_secs(60);

/// The headers taskmail signs, in this order.
pub const DEFAULT_SIGNED: [&str; 12] = [
    "from",
    "to",
    "message-id",
    "date",
    "subject",
    "in-reply-to",
    "x-aamp-intent",
    "x-aamp-taskid",
    "x-aamp-priority",
    "x-aamp-expires-at",
    "x-aamp-dispatch-context",
    "x-aamp-status",
];

/// The headers a signature must cover to be accepted (`protocol/trust.md` point 6).
pub const REQUIRED_SIGNED: [&str; 10] = [
    "from",
    "to",
    "message-id",
    "date",
    "subject",
    "in-reply-to",
    "x-aamp-intent",
    "x-aamp-taskid",
    "x-aamp-priority",
    "x-aamp-expires-at",
];

/// Why a signature does not admit a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// No `X-ASMTP-Signature`, but the grant requires one.
    #[error("cannot admit the message: it carries no X-ASMTP-Signature and the grant requires one")]
    Missing,
    /// The header is not in the grammar (or names a version or algorithm we do not know).
    #[error("cannot read the X-ASMTP-Signature: {0}")]
    Malformed(String),
    /// Signed with another key than the one pinned for the peer.
    #[error(
        "cannot admit the message: signed with key '{found}', but the peer's pinned key is '{pinned}'"
    )]
    KeyMismatch {
        /// The key id of the signature.
        found: String,
        /// The key id of the pinned key.
        pinned: String,
    },
    /// A signature is required, but there is no key to check it with.
    #[error("cannot check the signature of key '{0}': no key is pinned for the peer")]
    UnknownKey(String),
    /// The signature does not verify: a signed header or tag changed after signing.
    #[error(
        "cannot verify the signature: a signed header changed after signing, or it was not made with this key"
    )]
    BadSignature,
    /// The body does not match the signed body hash.
    #[error("cannot admit the message: its body changed after signing")]
    BodyHash,
    /// The signing time is older than the transit window.
    #[error("cannot admit the message: it was signed at {0}, before the transit window")]
    Expired(i64),
    /// The signing time is too far in the future.
    #[error("cannot admit the message: it was signed at {0}, in the future")]
    Future(i64),
}

impl SignatureError {
    /// The short rule name for the audit log and the gate verdict.
    pub fn rule(&self) -> &'static str {
        match self {
            SignatureError::Missing => "signature-missing",
            SignatureError::Malformed(_) => "signature-malformed",
            SignatureError::KeyMismatch { .. } => "signature-key-changed",
            SignatureError::UnknownKey(_) => "signature-key-unknown",
            SignatureError::BadSignature => "signature-invalid",
            SignatureError::BodyHash => "signature-body-changed",
            SignatureError::Expired(_) => "signature-expired",
            SignatureError::Future(_) => "signature-future",
        }
    }
}

/// Why a public or secret key's text form cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Not `ed25519:` followed by 43 base64url characters of a valid point.
    #[error("cannot read public key '{0}': expected 'ed25519:' and 43 base64url characters")]
    Public(String),
}

/// A peer's Ed25519 public key.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey(ed25519_dalek::VerifyingKey);

impl PublicKey {
    /// Reads the text form `ed25519:<base64url, no padding>` (surrounding white space allowed).
    pub fn parse(text: &str) -> Result<PublicKey, KeyError> {
        let bad = || KeyError::Public(shorten(text.trim()));
        let body = text.trim().strip_prefix(KEY_PREFIX).ok_or_else(bad)?;
        let bytes = URL_SAFE_NO_PAD.decode(body).map_err(|_| bad())?;
        let bytes: [u8; 32] = bytes.try_into().map_err(|_| bad())?;
        ed25519_dalek::VerifyingKey::from_bytes(&bytes)
            .map(PublicKey)
            .map_err(|_| bad())
    }

    /// The text form, `ed25519:<base64url>`: what `<account>.pub` holds, `peer-key` pins and
    /// the pairing header carries.
    pub fn to_text(&self) -> String {
        format!("{KEY_PREFIX}{}", URL_SAFE_NO_PAD.encode(self.0.as_bytes()))
    }

    /// The key id: base64url of the first 8 bytes of SHA-256 over the 32 key bytes.
    pub fn key_id(&self) -> String {
        let digest = Sha256::digest(self.0.as_bytes());
        URL_SAFE_NO_PAD.encode(&digest[..8])
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_text())
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_text())
    }
}

/// An agent's secret key. Never printed: its `Debug` shows the key id only.
#[derive(Clone)]
pub struct SigningKey(ed25519_dalek::SigningKey);

impl SigningKey {
    /// The key of a 32-byte secret seed.
    pub fn from_seed(seed: &[u8; 32]) -> SigningKey {
        SigningKey(ed25519_dalek::SigningKey::from_bytes(seed))
    }

    /// The 32-byte secret seed (for the key file only).
    pub fn seed(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// The public half.
    pub fn public_key(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    /// Signs `outbound` at `now`: adds (or replaces) its `X-ASMTP-Signature` header over
    /// [`DEFAULT_SIGNED`] and its body.
    pub fn sign_outbound(&self, outbound: &mut Outbound, now: DateTime<Utc>) {
        outbound
            .extra_headers
            .retain(|(name, _, _)| !name.eq_ignore_ascii_case(HEADER));
        let value = sign(
            &HeaderView::of_outbound(outbound),
            BodyView::of_outbound(outbound),
            self,
            now,
        );
        outbound
            .extra_headers
            .push((HEADER.to_owned(), ValueKind::Text, value));
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey(key id {})", self.public_key().key_id())
    }
}

/// The canonical values of a message's headers (module docs), by lowercase name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderView {
    entries: Vec<(String, String)>,
}

impl HeaderView {
    /// The headers of a message we are about to send.
    pub fn of_outbound(out: &Outbound) -> HeaderView {
        let mut view = HeaderView::default();
        view.addresses("from", std::iter::once(out.from.email.as_str()));
        view.addresses("to", out.to.iter().map(|m| m.email.as_str()));
        view.addresses("cc", out.cc.iter().map(|m| m.email.as_str()));
        view.push("subject", text(&out.subject));
        view.push("date", out.date.timestamp().to_string());
        view.ids("message-id", std::slice::from_ref(&out.message_id));
        view.ids("in-reply-to", out.in_reply_to.as_slice());
        view.ids("references", &out.references);
        for (name, kind, value) in &out.extra_headers {
            let value = match kind {
                ValueKind::Text => text(value),
                ValueKind::Base64Url => value.split_whitespace().collect(),
            };
            view.push(&name.to_ascii_lowercase(), value);
        }
        view
    }

    /// The headers of a received message (headers-only phase is enough), as
    /// [`Inbound::from_jmap`] or [`Inbound::from_bytes`] read them.
    pub fn of_inbound(inbound: &Inbound) -> HeaderView {
        let mut view = HeaderView::default();
        view.addresses("from", inbound.from.iter().map(|m| m.email.as_str()));
        view.addresses("to", inbound.to.iter().map(|m| m.email.as_str()));
        view.addresses("cc", inbound.cc.iter().map(|m| m.email.as_str()));
        if let Some(subject) = &inbound.subject {
            view.push("subject", text(subject));
        }
        if let Some(date) = inbound.date {
            view.push("date", date.timestamp().to_string());
        }
        view.ids("message-id", inbound.message_id.as_slice());
        view.ids("in-reply-to", &inbound.in_reply_to);
        view.ids("references", &inbound.references);
        for (name, value) in inbound.headers.iter() {
            let name = name.to_ascii_lowercase();
            if STRUCTURED.contains(&name.as_str()) {
                // NOTE: these come from the typed fields above; a raw copy must not count twice.
                continue;
            }
            view.push(&name, text(value));
        }
        view
    }

    fn push(&mut self, name: &str, value: String) {
        self.entries.push((name.to_owned(), value));
    }

    fn addresses<'a>(&mut self, name: &str, list: impl Iterator<Item = &'a str>) {
        let joined: Vec<String> = list.map(|a| a.trim().to_lowercase()).collect();
        if !joined.is_empty() {
            self.push(name, joined.join(","));
        }
    }

    fn ids(&mut self, name: &str, ids: &[String]) {
        let list: Vec<&str> = ids
            .iter()
            .map(|id| id.trim().trim_start_matches('<').trim_end_matches('>'))
            .filter(|id| !id.is_empty())
            .collect();
        if !list.is_empty() {
            self.push(name, list.join(" "));
        }
    }

    /// Every canonical value of `name` (lowercase), in order.
    pub fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.entries
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Headers whose canonical value comes from a parsed field, not from the header map.
const STRUCTURED: [&str; 8] = [
    "from",
    "to",
    "cc",
    "subject",
    "date",
    "message-id",
    "in-reply-to",
    "references",
];

/// The canonical form of a text header value (module docs).
fn text(value: &str) -> String {
    value
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// What the body hash covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyView<'a> {
    /// The text body of AAMP or plain mail.
    Text(&'a str),
    /// The `application/json` part of an ASMTP envelope.
    Json(&'a [u8]),
}

impl<'a> BodyView<'a> {
    /// The body of a message we are about to send.
    pub fn of_outbound(out: &'a Outbound) -> BodyView<'a> {
        match &out.json_part {
            Some(json) => BodyView::Json(json),
            None => BodyView::Text(&out.text),
        }
    }

    /// The body of a received message (a missing text part hashes as empty text).
    pub fn of_inbound(body: &'a Body) -> BodyView<'a> {
        match (&body.json_part, &body.text) {
            (Some(json), _) => BodyView::Json(json),
            (None, Some(text)) => BodyView::Text(text),
            (None, None) => BodyView::Text(""),
        }
    }

    /// SHA-256 of the length-prefixed kind and normalised content (module docs).
    pub fn hash(&self) -> [u8; 32] {
        let mut input = Vec::new();
        match self {
            BodyView::Text(t) => {
                put(&mut input, b"text");
                put(&mut input, normalise_text(t).as_bytes());
            }
            BodyView::Json(j) => {
                put(&mut input, b"json");
                put(&mut input, j.trim_ascii_end());
            }
        }
        Sha256::digest(&input).into()
    }
}

/// Line ends LF, trailing white space per line removed, trailing empty lines dropped.
pub fn normalise_text(text: &str) -> String {
    let unified = text.replace("\r\n", "\n").replace('\r', "\n");
    let mut lines: Vec<&str> = unified.split('\n').map(str::trim_end).collect();
    while lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }
    lines.join("\n")
}

/// Appends one length-prefixed item: `<decimal length>:<bytes>`.
fn put(out: &mut Vec<u8>, item: &[u8]) {
    out.extend_from_slice(item.len().to_string().as_bytes());
    out.push(b':');
    out.extend_from_slice(item);
}

/// The parsed tags of an `X-ASMTP-Signature` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    /// `k`: the signing key's id.
    pub key_id: String,
    /// `t`: the signing time, unix seconds.
    pub time: i64,
    /// `h`: the signed header names, lowercase.
    pub headers: Vec<String>,
    /// `bh`: the body hash.
    pub body_hash: [u8; 32],
    /// `b`: the signature.
    pub signature: [u8; 64],
}

impl Signature {
    /// Reads a header value (module docs, grammar).
    pub fn parse(value: &str) -> Result<Signature, SignatureError> {
        let bad = |why: &str| SignatureError::Malformed(why.to_owned());
        let mut tags: Vec<(String, String)> = Vec::new();
        for part in value.split(';') {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            let (name, raw) = part
                .split_once('=')
                .ok_or_else(|| bad("a tag without '='"))?;
            let name = name.trim().to_ascii_lowercase();
            if tags.iter().any(|(n, _)| *n == name) {
                return Err(bad(&format!("tag '{}' twice", shorten(&name))));
            }
            let compact: String = raw.split_whitespace().collect();
            tags.push((name, compact));
        }
        let tag = |name: &str| {
            tags.iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
                .ok_or_else(|| bad(&format!("no '{name}=' tag")))
        };
        if tag("v")? != "1" {
            return Err(bad("unknown version (v=1 is known)"));
        }
        if !tag("a")?.eq_ignore_ascii_case("ed25519") {
            return Err(bad("unknown algorithm (a=ed25519 is known)"));
        }
        let key_id = tag("k")?;
        if key_id.len() != 11
            || !key_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(bad("k= is not a key id"));
        }
        let time_text = tag("t")?;
        if time_text.is_empty()
            || time_text.len() > 12
            || !time_text.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(bad("t= is not unix seconds"));
        }
        let time: i64 = time_text
            .parse()
            .map_err(|_| bad("t= is not unix seconds"))?;
        let mut headers: Vec<String> = Vec::new();
        for name in tag("h")?.split(':') {
            let name = name.to_ascii_lowercase();
            let ok = !name.is_empty()
                && name.len() <= 76
                && name.bytes().all(|b| b.is_ascii_graphic() && b != b':');
            if !ok {
                return Err(bad("h= holds an invalid header name"));
            }
            if headers.contains(&name) {
                return Err(bad("h= names a header twice"));
            }
            headers.push(name);
        }
        if headers.len() > 64 {
            return Err(bad("h= names too many headers"));
        }
        let body_hash: [u8; 32] = STANDARD
            .decode(tag("bh")?)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| bad("bh= is not a base64 SHA-256 hash"))?;
        let signature: [u8; 64] = STANDARD
            .decode(tag("b")?)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| bad("b= is not a base64 Ed25519 signature"))?;
        Ok(Signature {
            key_id: key_id.to_owned(),
            time,
            headers,
            body_hash,
            signature,
        })
    }

    /// The tag list; with `signed`, the `b=` value too.
    fn tags(&self, signed: bool) -> String {
        let b = if signed {
            STANDARD.encode(self.signature)
        } else {
            String::new()
        };
        format!(
            "v=1; a=ed25519; k={}; t={}; h={}; bh={}; b={b}",
            self.key_id,
            self.time,
            self.headers.join(":"),
            STANDARD.encode(self.body_hash),
        )
    }

    /// The header value.
    pub fn to_value(&self) -> String {
        self.tags(true)
    }

    /// The bytes the signature is made over (module docs).
    fn input(&self, headers: &HeaderView) -> Vec<u8> {
        let mut out = Vec::with_capacity(1024);
        put(&mut out, CONTEXT.as_bytes());
        for name in &self.headers {
            let values: Vec<&str> = headers.values(name).collect();
            put(&mut out, name.as_bytes());
            put(&mut out, values.len().to_string().as_bytes());
            for value in values {
                put(&mut out, value.as_bytes());
            }
        }
        put(&mut out, self.tags(false).as_bytes());
        out
    }
}

/// Signs a message: the `X-ASMTP-Signature` value over [`DEFAULT_SIGNED`] and the body.
pub fn sign(
    headers: &HeaderView,
    body: BodyView<'_>,
    key: &SigningKey,
    now: DateTime<Utc>,
) -> String {
    let mut signature = Signature {
        key_id: key.public_key().key_id(),
        time: now.timestamp(),
        headers: DEFAULT_SIGNED.iter().map(|h| (*h).to_owned()).collect(),
        body_hash: body.hash(),
        signature: [0; 64],
    };
    signature.signature = key.0.sign(&signature.input(headers)).to_bytes();
    signature.to_value()
}

/// A signature whose headers verified; the body is checked once it is fetched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeadersVerified {
    /// The key id that signed.
    pub key_id: String,
    /// Whether the key was the one pinned for the peer (false: taken from the message).
    pub pinned: bool,
    body_hash: [u8; 32],
}

impl HeadersVerified {
    /// Compares the signed body hash with the fetched body.
    pub fn check_body(&self, body: BodyView<'_>) -> Result<(), SignatureError> {
        if body.hash() == self.body_hash {
            Ok(())
        } else {
            Err(SignatureError::BodyHash)
        }
    }
}

/// Checks the `X-ASMTP-Signature` `value` of a message with `headers` at `now`.
///
/// `key` is the pinned key of the peer, or else a key the message presented itself (`pinned =
/// false`); `None` when there is neither. `window` is `trust.transit-window`.
pub fn verify_headers(
    headers: &HeaderView,
    value: Option<&str>,
    key: Option<&PublicKey>,
    pinned: bool,
    now: DateTime<Utc>,
    window: Duration,
) -> Result<HeadersVerified, SignatureError> {
    let value = value.ok_or(SignatureError::Missing)?;
    let signature = Signature::parse(value)?;
    if let Some(missing) = REQUIRED_SIGNED
        .iter()
        .find(|name| !signature.headers.iter().any(|h| h == *name))
    {
        return Err(SignatureError::Malformed(format!(
            "h= does not cover '{missing}'"
        )));
    }
    let back = i64::try_from(window.as_secs()).unwrap_or(i64::MAX);
    let ahead = i64::try_from(FUTURE_SKEW.as_secs()).unwrap_or(0);
    let now_s = now.timestamp();
    if signature.time > now_s.saturating_add(ahead) {
        return Err(SignatureError::Future(signature.time));
    }
    if signature.time < now_s.saturating_sub(back) {
        return Err(SignatureError::Expired(signature.time));
    }
    let key = key.ok_or_else(|| SignatureError::UnknownKey(signature.key_id.clone()))?;
    let expected = key.key_id();
    if signature.key_id != expected {
        return Err(SignatureError::KeyMismatch {
            found: signature.key_id,
            pinned: expected,
        });
    }
    let sig = ed25519_dalek::Signature::from_bytes(&signature.signature);
    key.0
        .verify(&signature.input(headers), &sig)
        .map_err(|_| SignatureError::BadSignature)?;
    Ok(HeadersVerified {
        key_id: signature.key_id,
        pinned,
        body_hash: signature.body_hash,
    })
}

/// What the grants of an account demand of one peer's signatures.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Requirement {
    /// A signature must be there and valid.
    pub required: bool,
    /// The keys pinned for the peer (any of them may sign).
    pub pinned: Vec<PublicKey>,
}

impl Requirement {
    /// The demands of every grant of `account` matching `sender`: a signature is required
    /// when any of them says `require-signature` or pins a `peer-key`.
    pub fn of(grants: &[Grant], account: &str, sender: &str) -> Requirement {
        let mut requirement = Requirement::default();
        for grant in grants
            .iter()
            .filter(|g| g.account == account && g.peer.matches(sender))
        {
            requirement.add(grant.require_signature, grant.peer_key.as_deref());
        }
        requirement
    }

    /// Adds one grant's demands: `required`, and a pinned key (which requires a signature
    /// too). A key that does not parse pins nothing but still requires a signature, so a
    /// corrupt stored key fails closed.
    pub fn add(&mut self, required: bool, peer_key: Option<&str>) {
        self.required |= required;
        if let Some(text) = peer_key {
            self.required = true;
            if let Ok(key) = PublicKey::parse(text)
                && !self.pinned.contains(&key)
            {
                self.pinned.push(key);
            }
        }
    }
}

/// What [`check_inbound`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checked {
    /// No signature demanded and none verified: go on as before.
    Unsigned,
    /// The headers verified; check the body with [`HeadersVerified::check_body`] once fetched.
    Verified(HeadersVerified),
    /// No signature demanded; one was there but did not verify (or could not be checked), so
    /// the message counts as unsigned. Worth a log line.
    Ignored(SignatureError),
}

/// The inbound hook, right after the gate admitted a message (headers only).
///
/// `presented` is a key the message carries itself (the pairing header), used only when the
/// grant pins none. When a signature is required, any failure refuses. When it is not, a
/// valid signature is reported (and its body checked later) and anything else counts as
/// unsigned.
pub fn check_inbound(
    requirement: &Requirement,
    inbound: &Inbound,
    presented: Option<&str>,
    now: DateTime<Utc>,
    window: Duration,
) -> Result<Checked, SignatureError> {
    let value = inbound.headers.get(HEADER);
    if value.is_none() && !requirement.required {
        return Ok(Checked::Unsigned);
    }
    let headers = HeaderView::of_inbound(inbound);
    let presented = presented.and_then(|p| PublicKey::parse(p).ok());
    let result = if requirement.pinned.is_empty() {
        verify_headers(&headers, value, presented.as_ref(), false, now, window)
    } else {
        // NOTE: the signature names its key; try the pinned key with that id, else report the
        // change against the first pinned key.
        let wanted = value
            .and_then(|v| Signature::parse(v).ok())
            .map(|s| s.key_id);
        let key = requirement
            .pinned
            .iter()
            .find(|k| Some(k.key_id()) == wanted)
            .unwrap_or(&requirement.pinned[0]);
        verify_headers(&headers, value, Some(key), true, now, window)
    };
    match result {
        Ok(verified) => Ok(Checked::Verified(verified)),
        Err(error) if requirement.required => Err(error),
        Err(error) => Ok(Checked::Ignored(error)),
    }
}

/// The signature demands of one local account, from the config: what the inbound pipeline
/// asks right after the gate admitted a message.
#[derive(Debug, Clone, Default)]
pub struct InboundPolicy {
    account: String,
    grants: Vec<Grant>,
    window: Duration,
}

impl InboundPolicy {
    /// The grants of `account` in `config` and its `trust.transit-window`.
    pub fn from_config(config: &crate::config::Config, account: &str) -> InboundPolicy {
        InboundPolicy::new(
            account,
            config
                .trust()
                .grants
                .iter()
                .filter(|g| g.account == account)
                .cloned()
                .collect(),
            config.trust().transit_window,
        )
    }

    /// A policy from its parts.
    pub fn new(account: &str, grants: Vec<Grant>, window: Duration) -> InboundPolicy {
        InboundPolicy {
            account: account.to_owned(),
            grants,
            window,
        }
    }

    /// [`check_inbound`] for a message from `sender` (the lowercased header From), with the
    /// key the message presents in `X-ASMTP-Key`, if any.
    ///
    /// `admitting` is what the grant that admitted the message demands besides the config
    /// grants (a grant from the store: `require-signature`, and the key pinned by pairing or
    /// `taskmail grants`), as `(required, peer key)`.
    pub fn check(
        &self,
        inbound: &Inbound,
        sender: &str,
        admitting: Option<(bool, Option<&str>)>,
        now: DateTime<Utc>,
    ) -> Result<Checked, SignatureError> {
        let mut requirement = Requirement::of(&self.grants, &self.account, sender);
        if let Some((required, key)) = admitting {
            requirement.add(required, key);
        }
        let presented = inbound.headers.get(PRESENTED_KEY_HEADER);
        check_inbound(&requirement, inbound, presented, now, self.window)
    }
}

/// The header a message may present its own public key in (the pairing header).
pub const PRESENTED_KEY_HEADER: &str = "X-ASMTP-Key";

fn shorten(text: &str) -> String {
    text.chars().take(80).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::aamp::{AampMessage, Dispatch, Payload, Priority, TaskId};
    use crate::wire::message::Mailbox;
    use proptest::prelude::*;

    const WINDOW: Duration = Duration::from_secs(48 * 3600);

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_900_000_000, 0).unwrap()
    }

    fn key(n: u8) -> SigningKey {
        SigningKey::from_seed(&[n; 32])
    }

    fn dispatch(title: &str, instructions: &str) -> Outbound {
        let message = AampMessage::new(
            TaskId::new("4a1f3c2e-8b7d-4e6f-9a0b-1c2d3e4f5a6b"),
            Payload::Dispatch(Dispatch {
                title: title.to_owned(),
                instructions: instructions.to_owned(),
                priority: Priority::High,
                ..Dispatch::default()
            }),
        );
        Outbound::aamp(
            &message,
            Mailbox::new("Dispatcher@Example.test"),
            vec![Mailbox::new("worker@example.test")],
            now(),
            "01JABCDEF@example.test",
        )
    }

    /// Signs, renders, parses the bytes back.
    fn signed_inbound(out: &Outbound, with: &SigningKey, at: DateTime<Utc>) -> Inbound {
        let mut out = out.clone();
        with.sign_outbound(&mut out, at);
        Inbound::from_bytes(&out.render()).unwrap()
    }

    fn verify(inbound: &Inbound, pinned: &PublicKey) -> Result<HeadersVerified, SignatureError> {
        let verified = verify_headers(
            &HeaderView::of_inbound(inbound),
            inbound.headers.get(HEADER),
            Some(pinned),
            true,
            now(),
            WINDOW,
        )?;
        verified.check_body(BodyView::of_inbound(inbound.body.as_ref().unwrap()))?;
        Ok(verified)
    }

    /// The raw bytes with `from` replaced by `to` (once, in the header section).
    fn tamper(raw: &[u8], from: &str, to: &str) -> Vec<u8> {
        let text = String::from_utf8(raw.to_vec()).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(from), "{from} not in {head}");
        format!("{}\r\n\r\n{body}", head.replacen(from, to, 1)).into_bytes()
    }

    fn signed_raw(out: &Outbound) -> Vec<u8> {
        let mut out = out.clone();
        key(1).sign_outbound(&mut out, now());
        out.render()
    }

    #[test]
    fn round_trip_and_header_format() {
        let inbound = signed_inbound(&dispatch("Hi", "Do it"), &key(1), now());
        let value = inbound.headers.get(HEADER).unwrap();
        assert!(value.starts_with("v=1; a=ed25519; k="), "{value}");
        assert!(value.contains("; h=from:to:message-id:date:subject:in-reply-to:x-aamp-intent"));
        let verified = verify(&inbound, &key(1).public_key()).unwrap();
        assert_eq!(verified.key_id, key(1).public_key().key_id());
        assert_eq!(verified.key_id.len(), 11);
    }

    #[test]
    fn public_key_text_form() {
        let public = key(3).public_key();
        let text = public.to_text();
        assert!(text.starts_with("ed25519:") && text.len() == 8 + 43);
        assert_eq!(PublicKey::parse(&format!("  {text}\n")).unwrap(), public);
        for bad in [
            "",
            "ed25519:",
            "ed25519:abc",
            "rsa:AAAA",
            &text[..text.len() - 1],
        ] {
            assert!(PublicKey::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn each_signed_header_tampered_is_refused() {
        let raw = signed_raw(&dispatch("Hi there", "Do it"));
        let pinned = key(1).public_key();
        let cases = [
            (
                "Subject: [AAMP Task] Hi there",
                "Subject: [AAMP Task] Hi therE",
            ),
            ("X-AAMP-TaskId: 4a1f3c2e", "X-AAMP-TaskId: 5a1f3c2e"),
            ("X-AAMP-Intent: task.dispatch", "X-AAMP-Intent: task.cancel"),
            ("X-AAMP-Priority: high", "X-AAMP-Priority: urgent"),
            ("From: Dispatcher@Example.test", "From: other@example.test"),
            ("To: worker@example.test", "To: worker2@example.test"),
            (
                "Message-ID: <01JABCDEF@example.test>",
                "Message-ID: <01JABCDEG@example.test>",
            ),
            (
                "Date: ",
                "Date: Mon, 1 Jan 2029 00:00:00 +0000\r\nX-Old-Date: ",
            ),
        ];
        for (from, to) in cases {
            let inbound = Inbound::from_bytes(&tamper(&raw, from, to)).unwrap();
            assert_eq!(
                verify(&inbound, &pinned).map_err(|e| e.rule()),
                Err("signature-invalid"),
                "{from}"
            );
        }
    }

    #[test]
    fn added_headers_listed_but_absent_are_refused() {
        let raw = signed_raw(&dispatch("Hi", "Do it"));
        let pinned = key(1).public_key();
        for added in [
            "In-Reply-To: <other@example.test>",
            "X-AAMP-Expires-At: 2030-01-01T00:00:00Z",
            "X-AAMP-Intent: task.cancel",
        ] {
            let inbound = Inbound::from_bytes(&tamper(
                &raw,
                "MIME-Version: 1.0",
                &format!("{added}\r\nMIME-Version: 1.0"),
            ))
            .unwrap();
            assert_eq!(
                verify(&inbound, &pinned).map_err(|e| e.rule()),
                Err("signature-invalid"),
                "{added}"
            );
        }
        // An unsigned header may be added.
        let inbound = Inbound::from_bytes(&tamper(
            &raw,
            "MIME-Version: 1.0",
            "X-Spam-Score: 0\r\nMIME-Version: 1.0",
        ))
        .unwrap();
        assert!(verify(&inbound, &pinned).is_ok());
    }

    #[test]
    fn body_tamper_is_refused_and_transport_changes_are_not() {
        let raw = signed_raw(&dispatch("Hi", "Line one\nLine two"));
        let pinned = key(1).public_key();
        let inbound = Inbound::from_bytes(&tamper_body(&raw, "Line two", "Line 2")).unwrap();
        assert_eq!(verify(&inbound, &pinned), Err(SignatureError::BodyHash));
        let verified = verify_headers(
            &HeaderView::of_inbound(&inbound),
            inbound.headers.get(HEADER),
            Some(&pinned),
            true,
            now(),
            WINDOW,
        )
        .unwrap();
        for same in [
            "Line one\nLine two",
            "Line one  \r\nLine two\r\n\r\n\n",
            "Line one\rLine two \t",
        ] {
            let text = body_text(&raw).replace("Line one\r\nLine two", same);
            assert!(
                verified.check_body(BodyView::Text(&text)).is_ok(),
                "{same:?}"
            );
        }
        assert!(
            verified
                .check_body(BodyView::Text("Line one\n\nLine two"))
                .is_err()
        );
        assert!(verified.check_body(BodyView::Json(b"{}")).is_err());
    }

    fn body_text(raw: &[u8]) -> String {
        Inbound::from_bytes(raw)
            .unwrap()
            .body
            .unwrap()
            .text
            .unwrap()
    }

    fn tamper_body(raw: &[u8], from: &str, to: &str) -> Vec<u8> {
        let text = String::from_utf8(raw.to_vec()).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(body.contains(from));
        format!("{head}\r\n\r\n{}", body.replacen(from, to, 1)).into_bytes()
    }

    #[test]
    fn refolding_and_reencoding_do_not_break_it() {
        let long =
            "A long subject with ünïcödé that a relay may fold and encode differently ".repeat(3);
        let raw = signed_raw(&dispatch(&long, "Do it"));
        let pinned = key(1).public_key();
        // Unfold every header (a relay that rewrites the header section) and refold the
        // signature header at other places.
        let text = String::from_utf8(raw).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let unfolded = head.replace("\r\n ", " ").replace("\r\n\t", " ");
        let refolded = unfolded.replace("; ", ";\r\n\t");
        let inbound = Inbound::from_bytes(format!("{refolded}\r\n\r\n{body}").as_bytes()).unwrap();
        assert!(verify(&inbound, &pinned).is_ok());
        // The Date in another zone and format is the same instant.
        let date = Inbound::from_bytes(text.as_bytes()).unwrap().date.unwrap();
        let other = date
            .with_timezone(&chrono::FixedOffset::east_opt(3600 * 2).unwrap())
            .format("%a, %e %b %Y %H:%M:%S %z")
            .to_string();
        let line = head.lines().find(|l| l.starts_with("Date: ")).unwrap();
        let moved = format!(
            "{}\r\n\r\n{body}",
            head.replace(line, &format!("Date: {other}"))
        );
        let inbound = Inbound::from_bytes(moved.as_bytes()).unwrap();
        assert!(verify(&inbound, &pinned).is_ok());
    }

    #[test]
    fn each_error_has_its_rule() {
        let out = dispatch("Hi", "Do it");
        let pinned = key(1).public_key();
        let unsigned = Inbound::from_bytes(&out.render()).unwrap();
        assert_eq!(verify(&unsigned, &pinned), Err(SignatureError::Missing));
        let other = signed_inbound(&out, &key(2), now());
        let err = verify(&other, &pinned).unwrap_err();
        assert_eq!(err.rule(), "signature-key-changed");
        let old = signed_inbound(&out, &key(1), now() - chrono::TimeDelta::hours(49));
        assert_eq!(
            verify(&old, &pinned).unwrap_err().rule(),
            "signature-expired"
        );
        let ok_old = signed_inbound(&out, &key(1), now() - chrono::TimeDelta::hours(47));
        assert!(verify(&ok_old, &pinned).is_ok());
        let ahead = signed_inbound(&out, &key(1), now() + chrono::TimeDelta::seconds(61));
        assert_eq!(
            verify(&ahead, &pinned).unwrap_err().rule(),
            "signature-future"
        );
        let skew = signed_inbound(&out, &key(1), now() + chrono::TimeDelta::seconds(59));
        assert!(verify(&skew, &pinned).is_ok());
        for (value, why) in [
            ("garbage", "without '='"),
            ("v=2; a=ed25519", "version"),
            ("v=1; a=rsa-sha256", "algorithm"),
            ("v=1; v=1", "twice"),
            (
                "v=1; a=ed25519; k=short; t=1; h=from; bh=AA==; b=AA==",
                "key id",
            ),
        ] {
            match Signature::parse(value) {
                Err(SignatureError::Malformed(text)) => assert!(text.contains(why), "{text}"),
                other => panic!("{value}: {other:?}"),
            }
        }
        // A valid signature whose h= leaves out a required header is not accepted.
        let mut short = Signature::parse(other.headers.get(HEADER).unwrap()).unwrap();
        short.headers.retain(|h| h != "subject");
        let err = verify_headers(
            &HeaderView::default(),
            Some(&short.to_value()),
            Some(&pinned),
            true,
            now(),
            WINDOW,
        )
        .unwrap_err();
        assert_eq!(err.rule(), "signature-malformed");
        assert_eq!(SignatureError::BadSignature.rule(), "signature-invalid");
        assert_eq!(SignatureError::BodyHash.rule(), "signature-body-changed");
        assert_eq!(
            SignatureError::UnknownKey(String::new()).rule(),
            "signature-key-unknown"
        );
    }

    fn grants(extra: &str) -> Vec<Grant> {
        let text = format!(
            r#"
[accounts.worker]
email = "worker@example.test"
password = {{ raw = "x" }}
smtp = {{ host = "127.0.0.1", port = 5587, tls = "plaintext", allow-plaintext = true }}
jmap = {{ session-url = "http://127.0.0.1:8080/.well-known/jmap" }}
[worker]
allowed-senders = ["boss@example.test"]
{extra}
"#
        );
        crate::config::Config::from_toml_str_with_env(
            &text,
            crate::config::Mode::Strict,
            &crate::config::Env::with_home("/nonexistent"),
        )
        .unwrap()
        .trust()
        .grants
        .clone()
    }

    #[test]
    fn a_stored_grant_adds_its_demands_and_a_corrupt_key_fails_closed() {
        let pinned = key(1).public_key().to_text();
        let mut requirement = Requirement::default();
        requirement.add(false, None);
        assert_eq!(requirement, Requirement::default());
        requirement.add(false, Some(&pinned));
        assert!(requirement.required);
        assert_eq!(requirement.pinned, vec![key(1).public_key()]);
        requirement.add(true, Some(&pinned));
        assert_eq!(requirement.pinned.len(), 1, "the same key is pinned once");
        let mut corrupt = Requirement::default();
        corrupt.add(false, Some("ed25519:not-a-key"));
        assert!(corrupt.required && corrupt.pinned.is_empty());
        let out = dispatch("Hi", "Do it");
        let good = signed_inbound(&out, &key(1), now());
        assert!(check_inbound(&corrupt, &good, None, now(), WINDOW).is_err());
    }

    #[test]
    fn inbound_hook_by_requirement() {
        let pinned = key(1).public_key().to_text();
        let grants = grants(&format!(
            r#"
[[trust.grants]]
account = "worker"
peer = "dispatcher@example.test"
peer-key = "{pinned}"
[[trust.grants]]
account = "worker"
peer = "*@other.test"
require-signature = true
"#
        ));
        let pinned_req = Requirement::of(&grants, "worker", "dispatcher@example.test");
        assert!(pinned_req.required && pinned_req.pinned.len() == 1);
        let open = Requirement::of(&grants, "worker", "boss@example.test");
        assert_eq!(open, Requirement::default());
        let out = dispatch("Hi", "Do it");
        let unsigned = Inbound::from_bytes(&out.render()).unwrap();
        let good = signed_inbound(&out, &key(1), now());
        let bad = signed_inbound(&out, &key(2), now());
        let check = |req: &Requirement, m: &Inbound, presented: Option<&str>| {
            check_inbound(req, m, presented, now(), WINDOW)
        };
        assert!(matches!(check(&pinned_req, &good, None), Ok(Checked::Verified(v)) if v.pinned));
        assert_eq!(
            check(&pinned_req, &unsigned, None),
            Err(SignatureError::Missing)
        );
        assert_eq!(
            check(&pinned_req, &bad, None).unwrap_err().rule(),
            "signature-key-changed"
        );
        // A presented key never replaces a pinned one.
        let other = key(2).public_key().to_text();
        assert!(check(&pinned_req, &bad, Some(&other)).is_err());
        // Not required: unsigned is fine, a valid signature is reported, a bad one ignored.
        assert_eq!(check(&open, &unsigned, None), Ok(Checked::Unsigned));
        assert!(matches!(check(&open, &bad, Some(&other)), Ok(Checked::Verified(v)) if !v.pinned));
        assert!(matches!(
            check(&open, &bad, None),
            Ok(Checked::Ignored(SignatureError::UnknownKey(_)))
        ));
        // Required without a pinned key: only a presented key can check it.
        let required = Requirement::of(&grants, "worker", "a@other.test");
        assert!(required.required && required.pinned.is_empty());
        assert_eq!(
            check(&required, &bad, None).unwrap_err().rule(),
            "signature-key-unknown"
        );
        assert!(check(&required, &bad, Some(&other)).is_ok());
    }

    #[test]
    fn config_rejects_a_bad_peer_key() {
        let text = r#"
[accounts.worker]
email = "worker@example.test"
password = { raw = "x" }
smtp = { host = "127.0.0.1", port = 5587, tls = "plaintext", allow-plaintext = true }
jmap = { session-url = "http://127.0.0.1:8080/.well-known/jmap" }
[[trust.grants]]
account = "worker"
peer = "dispatcher@example.test"
peer-key = "ed25519:nope"
"#;
        let err = crate::config::Config::from_toml_str_with_env(
            text,
            crate::config::Mode::Strict,
            &crate::config::Env::with_home("/nonexistent"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("trust.grants[0].peer-key"), "{err}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn any_dispatch_round_trips(
            title in "[ -~]{1,120}",
            body in "[ -~\n\u{e9}\u{4e2d}]{0,400}",
            seed in any::<[u8; 32]>(),
        ) {
            prop_assume!(!title.trim().is_empty());
            let signer = SigningKey::from_seed(&seed);
            let inbound = signed_inbound(&dispatch(&title, &body), &signer, now());
            prop_assert!(verify(&inbound, &signer.public_key()).is_ok());
        }

        #[test]
        fn parse_never_panics(value in "\\PC{0,200}") {
            let _ = Signature::parse(&value);
        }

        #[test]
        fn a_changed_title_never_verifies(title in "[a-z]{3,40}", other in "[a-z]{3,40}") {
            prop_assume!(title != other);
            let raw = signed_raw(&dispatch(&title, "x"));
            let changed = tamper(&raw, &format!("] {title}"), &format!("] {other}"));
            let inbound = Inbound::from_bytes(&changed).unwrap();
            prop_assert!(verify(&inbound, &key(1).public_key()).is_err());
        }
    }
}
