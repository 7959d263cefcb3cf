//! Trust: the pure parts of the gate in front of the agent (`protocol/trust.md`), and the key
//! material. No clock reads; only [`keys`] touches files. It may use `wire` and `config`, never
//! `daemon` or `cli`; the daemon ([`crate::daemon::gate`]) composes the parts with the store.
//!
//! - [`auth`]: the authentication verdict from `Authentication-Results` and `Received`.
//! - [`ratelimit`]: the per-peer sliding window of `trust.rate-limit`.
//! - [`pairing`]: pair codes, their hashes, and `aamp://connect` URLs.
//! - [`sign`]: agent signatures, the `X-ASMTP-Signature` header: format, signing, verifying.
//! - [`keys`]: the key files under `<state-dir>/keys/`.

pub mod auth;
pub mod keys;
pub mod pairing;
pub mod ratelimit;
pub mod sign;
