//! Trust: the pure parts of the gate in front of the agent (`protocol/trust.md`). No I/O and no
//! clock reads; the daemon ([`crate::daemon::gate`]) composes them with the store.
//!
//! - [`auth`]: the authentication verdict from `Authentication-Results` and `Received`.
//! - [`ratelimit`]: the per-peer sliding window of `trust.rate-limit`.
//! - [`pairing`]: pair codes, their hashes, and `aamp://connect` URLs.

pub mod auth;
pub mod pairing;
pub mod ratelimit;
