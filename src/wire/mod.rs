//! The wire codec: pure functions between mail (RFC 5322 bytes or a JMAP header map) and typed
//! agent messages. Nothing here performs I/O or reads the clock.
//!
//! - [`headers`]: `asText` header values, folding and RFC 2047 on output.
//! - [`aamp`]: AAMP 1.1 intents, headers, subject and body templates (`protocol/aamp.md`).
//! - [`asmtp`]: ASMTP envelopes, push frames, cursors (`protocol/asmtp.md`).
//! - [`thread`]: Message-IDs, In-Reply-To and References chains.
//! - [`reply`]: the text a person actually wrote in a reply.
//! - [`message`]: [`message::Outbound`] -> bytes, bytes or JMAP properties -> [`message::Inbound`].
//! - [`classify`](mod@classify): what an inbound message is (AAMP, ASMTP, human reply, plain mail, not ours).

pub mod aamp;
pub mod asmtp;
pub mod classify;
pub mod dsn;
pub mod headers;
pub mod message;
pub mod reply;
pub mod thread;

pub use classify::{Classified, classify};
