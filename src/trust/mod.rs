//! Trust: what stands between mail and an agent (`protocol/trust.md`): the pure parts of the
//! gate, and the key material. No clock reads; only [`keys`] touches files. It may use `wire`
//! and `config`, never `daemon` or `cli`; the daemon ([`crate::daemon::gate`], the inbound
//! pipeline) composes the parts with the store.
//!
//! - [`auth`]: the authentication verdict from `Authentication-Results` and `Received` (point 1).
//! - [`ratelimit`]: the per-peer sliding window of `trust.rate-limit`.
//! - [`pairing`]: pair codes, their hashes, and `aamp://connect` URLs.
//! - [`content`]: the text an agent is given, wrapped in an `<external-content>` block whose
//!   boundaries carry a per-message random nonce, every look-alike of our tags in the body
//!   neutralised (point 5).
//! - [`scan`]: the injection scan over NFKC-normalised text (appendix-A categories), with flags
//!   and an overall risk; high risk sends the mail to the quarantine mailbox (point 5).
//! - [`sign`]: agent signatures, the `X-ASMTP-Signature` header: format, signing, verifying
//!   (point 6).
//! - [`keys`]: the key files under `<state-dir>/keys/`.

pub mod auth;
pub mod content;
pub mod keys;
pub mod pairing;
pub mod ratelimit;
pub mod scan;
pub mod sign;
