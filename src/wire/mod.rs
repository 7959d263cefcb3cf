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

/// Decodes `<marker>XX` hex escapes (`%XX` in URLs, `+XX` in RFC 3461 xtext) into bytes, then
/// the bytes as UTF-8 (lossy). A malformed escape stays as it is.
pub(crate) fn decode_hex_escapes(text: &str, marker: u8) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == marker
            && let Some(hex) = text.get(i + 1..i + 3)
            && let Ok(b) = u8::from_str_radix(hex, 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
