//! Trust: what stands between mail and an agent (`protocol/trust.md`).
//!
//! Pure logic only (no I/O, no clock reads); it may use `wire` and `config`, never `daemon` or
//! `cli`. The daemon calls it:
//!
//! - [`content`]: the text an agent is given, wrapped in an `<external-content>` block whose
//!   boundaries carry a per-message random nonce, with every look-alike of our tags in the
//!   body neutralised (point 5);
//! - [`scan`]: the injection scan over NFKC-normalised text (appendix-A categories), with flags
//!   and an overall risk; high risk sends the mail to the quarantine mailbox (point 5).

pub mod content;
pub mod scan;
