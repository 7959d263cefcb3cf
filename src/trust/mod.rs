//! The trust gate's pure logic and key material (`protocol/trust.md`). It may use `wire` and
//! `config`, never `daemon` or `cli`.
//!
//! - [`sign`]: agent signatures, the `X-ASMTP-Signature` header: format, signing, verifying.
//! - [`keys`]: the key files under `<state-dir>/keys/`.

pub mod keys;
pub mod sign;
