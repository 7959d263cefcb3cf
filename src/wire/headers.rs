//! Header fields on the wire: reading them the way JMAP `asText` does, and writing them so that
//! no line ever exceeds RFC 5322's 998-octet limit.
//!
//! Reading: every value we look at is held in its `asText` form (RFC 8621 §4.1.2.2): unfolded,
//! RFC 2047 encoded words decoded, surrounding white space removed. Values parsed from raw
//! bytes ([`crate::wire::message`]) and values returned by a JMAP server's
//! `header:Name:asText:all` property therefore compare equal, and one classifier serves both.
//!
//! Writing: [`write_text`] folds at single spaces and falls back to RFC 2047 `B` encoded words
//! for anything a plain header cannot carry exactly (non-ASCII, control characters, a literal
//! `=?`, or a word too long for one line). [`write_base64url`] folds base64url values with
//! `CRLF` plus two spaces and always an even number of folds, so that a receiver that computes
//! base64 padding from the raw length (the Python SDK's bug, see `protocol/aamp.md` #10) gets
//! the same answer whether or not a server unfolded the value.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

/// Preferred line length (RFC 5322 §2.1.1 "SHOULD be no more than 78").
pub const SOFT_LINE: usize = 78;
/// Hard line length limit, without the CRLF (RFC 5322 §2.1.1 "MUST be no more than 998").
pub const HARD_LINE: usize = 998;

/// Header fields in their `asText` form, in message order, names matched case-insensitively.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderMap {
    entries: Vec<(String, String)>,
}

impl HeaderMap {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends one field; the value should already be in `asText` form.
    pub fn push(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.entries.push((name.into(), value.into()));
    }

    /// The first value of `name`, if any.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of `name`, in message order.
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.entries
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// All fields, in message order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// Number of fields.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no field is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// True when any field name starts with `prefix` (case-insensitive).
    pub fn has_prefix(&self, prefix: &str) -> bool {
        self.entries
            .iter()
            .any(|(n, _)| starts_with_ignore_case(n, prefix))
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for HeaderMap {
    fn from_iter<T: IntoIterator<Item = (K, V)>>(iter: T) -> Self {
        Self {
            entries: iter
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        }
    }
}

pub(crate) fn starts_with_ignore_case(s: &str, prefix: &str) -> bool {
    s.len() >= prefix.len() && s.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
}

/// Makes a value safe for one header field: CR, LF, NUL and other control characters become
/// spaces (so no value can ever start a new header line), then surrounding white space is
/// trimmed. This is the normalisation every rendered text value goes through.
pub fn sanitize(value: &str) -> String {
    let cleaned: String = value
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    cleaned.trim().to_owned()
}

/// Writes `Name: value` as one or more folded lines ending in CRLF. The value is sanitised
/// first. When part of it needs RFC 2047, the leading plain words stay readable (so that a
/// filter matching `[AAMP Task]` in a raw Subject still matches) and only the rest is encoded.
pub fn write_text(out: &mut String, name: &str, value: &str) {
    let value = sanitize(value);
    if !needs_encoding(name, &value) {
        write_folded_plain(out, name, &value);
        return;
    }
    match plain_prefix_split(name, &value) {
        Some(i) => {
            let mut prefix = String::new();
            write_folded_plain(&mut prefix, name, &value[..i]);
            // Continue the same field: drop the prefix's CRLF and fold before the words.
            out.push_str(prefix.trim_end_matches("\r\n"));
            out.push_str("\r\n");
            write_encoded_words(out, &value[i + 1..], 1);
        }
        None => {
            out.push_str(name);
            out.push(':');
            write_encoded_words(out, &value, name.len() + 1);
        }
    }
}

/// The byte index of the clean fold point that ends the longest plain prefix a header can
/// carry (printable ASCII, no `=?`, every run between fold points short enough), if any.
fn plain_prefix_split(name: &str, value: &str) -> Option<usize> {
    let limit = HARD_LINE - name.len() - 2;
    let first_bad = value
        .find(|c: char| !(c.is_ascii_graphic() || c == ' '))
        .unwrap_or(value.len());
    let first_bad = value.find("=?").map_or(first_bad, |i| i.min(first_bad));
    let mut best = None;
    let mut start = 0;
    for p in fold_points(value) {
        if p > first_bad || p - start > limit {
            break;
        }
        best = Some(p);
        start = p;
    }
    best
}

/// Writes a header whose value is a base64url token (no white space of its own).
pub fn write_base64url(out: &mut String, name: &str, value: &str) {
    out.push_str(name);
    out.push_str(": ");
    let first = (SOFT_LINE - name.len() - 2).max(16);
    if value.len() <= first {
        out.push_str(value);
        out.push_str("\r\n");
        return;
    }
    // Later lines start with two spaces; keep them at 76 octets.
    const CHUNK: usize = 74;
    let mut chunks: Vec<&str> = vec![&value[..first]];
    let mut rest = &value[first..];
    while !rest.is_empty() {
        let take = rest.len().min(CHUNK);
        chunks.push(&rest[..take]);
        rest = &rest[take..];
    }
    // folds = chunks - 1 must be even: when it is odd, cut the last two chunks into three
    // balanced ones (one more fold, no stub lines).
    if (chunks.len() - 1) % 2 == 1 {
        let last = chunks.pop().unwrap_or_default();
        let prev = chunks.pop().unwrap_or_default();
        let tail = &value[value.len() - prev.len() - last.len()..];
        let third = tail.len() / 3;
        chunks.push(&tail[..third]);
        chunks.push(&tail[third..2 * third]);
        chunks.push(&tail[2 * third..]);
    }
    for (i, chunk) in chunks.iter().enumerate() {
        if i > 0 {
            out.push_str("\r\n  ");
        }
        out.push_str(chunk);
    }
    out.push_str("\r\n");
}

fn needs_encoding(name: &str, value: &str) -> bool {
    if !value.is_ascii() || value.contains("=?") {
        return true;
    }
    // Folding happens only at clean fold points; every run between two of them (which may hold
    // runs of spaces) must fit on one line.
    let limit = HARD_LINE - name.len() - 2;
    let mut start = 0;
    for p in fold_points(value) {
        if p - start > limit {
            return true;
        }
        start = p;
    }
    value.len() - start > limit
}

/// The byte offsets of single spaces between two non-space octets: the only places a value may
/// be folded without changing what any unfolding reader sees.
fn fold_points(value: &str) -> impl Iterator<Item = usize> + '_ {
    let b = value.as_bytes();
    (1..b.len().saturating_sub(1))
        .filter(move |&i| b[i] == b' ' && b[i - 1] != b' ' && b[i + 1] != b' ')
}

/// Folds at single spaces (never at a run of spaces, so that every unfolding reader, strict
/// RFC 5322 or mail-parser's collapsing one, restores the exact value).
fn write_folded_plain(out: &mut String, name: &str, value: &str) {
    out.push_str(name);
    out.push_str(": ");
    let mut col = name.len() + 2;
    let bytes = value.as_bytes();
    let mut start = 0;
    // Candidate fold points: a single space between two non-space octets.
    let mut i = 0;
    let mut last_fold_point: Option<usize> = None;
    while i < bytes.len() {
        if bytes[i] == b' '
            && i > 0
            && bytes[i - 1] != b' '
            && i + 1 < bytes.len()
            && bytes[i + 1] != b' '
        {
            if col + (i - start) > SOFT_LINE
                && let Some(p) = last_fold_point
            {
                out.push_str(&value[start..p]);
                out.push_str("\r\n");
                start = p; // the continuation line starts with the space
                col = 0;
            }
            last_fold_point = Some(i);
        }
        i += 1;
    }
    if col + (bytes.len() - start) > SOFT_LINE
        && let Some(p) = last_fold_point
        && p > start
    {
        out.push_str(&value[start..p]);
        out.push_str("\r\n");
        start = p;
    }
    out.push_str(&value[start..]);
    out.push_str("\r\n");
}

/// RFC 2047 `B` encoded words of at most 75 octets, split on character boundaries, each on
/// its own line; `col` is where the first one starts (after the name or on a fresh line).
fn write_encoded_words(out: &mut String, value: &str, col: usize) {
    // "=?utf-8?B?" + "?=" is 12 octets; every 3 input octets take 4.
    const OVERHEAD: usize = 12;
    const MAX_INPUT: usize = 45; // 60 base64 octets: a 73-octet continuation line
    let first_room = SOFT_LINE.saturating_sub(col + 1 + OVERHEAD) / 4 * 3;
    let mut rest = value;
    let mut first = true;
    while !rest.is_empty() {
        let room = if first {
            first_room.clamp(6, MAX_INPUT)
        } else {
            MAX_INPUT
        };
        let mut take = rest.len().min(room);
        while !rest.is_char_boundary(take) {
            take -= 1;
        }
        if take == 0 {
            // A character longer than the room (never with room >= 6): take it whole.
            take = rest.chars().next().map_or(rest.len(), char::len_utf8);
        }
        if !first {
            out.push_str("\r\n");
        }
        out.push_str(" =?utf-8?B?");
        out.push_str(&STANDARD.encode(&rest.as_bytes()[..take]));
        out.push_str("?=");
        rest = &rest[take..];
        first = false;
    }
    out.push_str("\r\n");
}

/// `asText` of a raw header value (the octets after `Name:` up to the end of the field):
/// unfolds, decodes RFC 2047 words, trims. Used on header maps built by tests and tools; the
/// message parser gets the same result from mail-parser.
pub fn as_text(raw: &str) -> String {
    let unfolded = raw.replace("\r\n", "\n");
    let mut joined = String::with_capacity(unfolded.len());
    for (i, line) in unfolded.split('\n').enumerate() {
        if i > 0 {
            joined.push(' ');
        }
        joined.push_str(line.trim_matches(|c| c == ' ' || c == '\t'));
    }
    decode_words(joined.trim())
}

/// Decodes RFC 2047 encoded words (utf-8 and us-ascii/latin-1 charsets, B and Q encodings);
/// white space between two adjacent encoded words is dropped, as RFC 2047 §6.2 requires.
/// Anything that does not decode is kept as it is.
pub fn decode_words(value: &str) -> String {
    if !value.contains("=?") {
        return value.to_owned();
    }
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    let mut pending_ws = String::new();
    let mut last_was_word = false;
    while !rest.is_empty() {
        if let Some((decoded, used)) = decode_one_word(rest) {
            if !last_was_word {
                out.push_str(&pending_ws);
            }
            pending_ws.clear();
            out.push_str(&decoded);
            rest = &rest[used..];
            last_was_word = true;
            continue;
        }
        let c = rest.chars().next().unwrap_or(' ');
        if c == ' ' || c == '\t' {
            pending_ws.push(c);
        } else {
            out.push_str(&pending_ws);
            pending_ws.clear();
            out.push(c);
            last_was_word = false;
        }
        rest = &rest[c.len_utf8()..];
    }
    out.push_str(&pending_ws);
    out
}

fn decode_one_word(s: &str) -> Option<(String, usize)> {
    let body = s.strip_prefix("=?")?;
    let q1 = body.find('?')?;
    let charset = &body[..q1];
    let after_cs = &body[q1 + 1..];
    let q2 = after_cs.find('?')?;
    let encoding = &after_cs[..q2];
    let text_start = &after_cs[q2 + 1..];
    let end = text_start.find("?=")?;
    let text = &text_start[..end];
    if text.contains(' ') || charset.is_empty() {
        return None;
    }
    let charset = charset.split('*').next().unwrap_or(charset);
    let bytes = if encoding.eq_ignore_ascii_case("B") {
        let cleaned: String = text.chars().filter(|c| !c.is_whitespace()).collect();
        base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(cleaned.trim_end_matches('='))
            .ok()?
    } else if encoding.eq_ignore_ascii_case("Q") {
        decode_q(text)?
    } else {
        return None;
    };
    let decoded = if charset.eq_ignore_ascii_case("utf-8") || charset.eq_ignore_ascii_case("utf8") {
        String::from_utf8_lossy(&bytes).into_owned()
    } else if charset.eq_ignore_ascii_case("us-ascii")
        || charset.eq_ignore_ascii_case("iso-8859-1")
        || charset.eq_ignore_ascii_case("latin1")
    {
        bytes.iter().map(|&b| b as char).collect()
    } else {
        String::from_utf8_lossy(&bytes).into_owned()
    };
    let used = 2 + q1 + 1 + q2 + 1 + end + 2;
    Some((decoded, used))
}

fn decode_q(text: &str) -> Option<Vec<u8>> {
    let b = text.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'_' => out.push(b' '),
            b'=' => {
                let hex = text.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    Some(out)
}

/// The longest line (without CRLF) of a rendered block, in octets.
pub fn longest_line(bytes: &[u8]) -> usize {
    bytes
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l).len())
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(name: &str, value: &str) -> String {
        let mut s = String::new();
        write_text(&mut s, name, value);
        s
    }

    fn raw_value(rendered: &str, name: &str) -> String {
        rendered
            .strip_prefix(name)
            .and_then(|r| r.strip_prefix(':'))
            .unwrap()
            .trim_end_matches("\r\n")
            .to_owned()
    }

    #[test]
    fn short_ascii_is_one_line() {
        assert_eq!(render("X-AAMP-TaskId", "abc"), "X-AAMP-TaskId: abc\r\n");
    }

    #[test]
    fn crlf_never_starts_a_header() {
        let r = render("X-AAMP-ErrorMsg", "bad\r\nBcc: victim@example.com");
        assert_eq!(r.matches("\r\n").count(), 1);
        assert_eq!(
            as_text(&raw_value(&r, "X-AAMP-ErrorMsg")),
            "bad  Bcc: victim@example.com"
        );
    }

    #[test]
    fn long_text_folds_and_round_trips() {
        let v = "word ".repeat(300).trim().to_owned();
        let r = render("Subject", &v);
        assert!(longest_line(r.as_bytes()) <= SOFT_LINE);
        assert_eq!(as_text(&raw_value(&r, "Subject")), v);
    }

    #[test]
    fn non_ascii_and_long_words_are_encoded() {
        for v in [
            "héllo wörld ✓",
            &"x".repeat(3000),
            "a =?utf-8?q?x?= b",
            "tab\there",
        ] {
            let r = render("Subject", v);
            assert!(longest_line(r.as_bytes()) <= SOFT_LINE, "{r}");
            assert_eq!(as_text(&raw_value(&r, "Subject")), sanitize(v));
        }
    }

    #[test]
    fn runs_of_double_spaces_are_encoded_not_overlong() {
        let v = "ab  ".repeat(600);
        let r = render("X-AAMP-TaskId", &v);
        assert!(longest_line(r.as_bytes()) <= SOFT_LINE, "{r}");
        assert_eq!(as_text(&raw_value(&r, "X-AAMP-TaskId")), sanitize(&v));
        let v = format!("[AAMP Task] {}", "x".repeat(990));
        let r = render("Subject", &v);
        assert!(longest_line(r.as_bytes()) <= HARD_LINE, "{r}");
        assert_eq!(as_text(&raw_value(&r, "Subject")), v);
    }

    #[test]
    fn leading_plain_words_stay_readable() {
        let r = render("Subject", "[AAMP Task] Résumé of the week");
        assert!(r.starts_with("Subject: [AAMP Task]\r\n =?utf-8?B?"), "{r}");
        assert_eq!(
            as_text(&raw_value(&r, "Subject")),
            "[AAMP Task] Résumé of the week"
        );
        let r = render("Subject", "a  é");
        assert_eq!(as_text(&raw_value(&r, "Subject")), "a  é");
    }

    #[test]
    fn base64url_folds_evenly() {
        for len in [10, 60, 61, 200, 1000, 5000, 20_000, 20_001] {
            let v: String = "Ab0_-".chars().cycle().take(len).collect();
            let mut s = String::new();
            write_base64url(&mut s, "X-AAMP-StructuredResult", &v);
            let folds = s.matches("\r\n").count() - 1;
            assert_eq!(folds % 2, 0, "len {len}: {folds} folds");
            assert!(longest_line(s.as_bytes()) <= SOFT_LINE);
            let raw = raw_value(&s, "X-AAMP-StructuredResult");
            let stripped: String = raw.chars().filter(|c| !c.is_whitespace()).collect();
            assert_eq!(stripped, v);
            // Unfolded (CRLF removed, white space kept), the length modulo 4 is unchanged.
            let unfolded = raw.trim_start().replace("\r\n", "");
            assert_eq!(unfolded.len() % 4, v.len() % 4);
        }
    }

    #[test]
    fn decodes_python_style_q_words() {
        let v = "=?utf-8?q?eyJh?= =?utf-8?q?Ijox?=\r\n =?utf-8?q?fQ?=";
        assert_eq!(as_text(v), "eyJhIjoxfQ");
    }

    #[test]
    fn header_map_is_case_insensitive() {
        let m: HeaderMap = [("X-Aamp-Taskid", "t1"), ("x-aamp-taskid", "t2")]
            .into_iter()
            .collect();
        assert_eq!(m.get("X-AAMP-TaskId"), Some("t1"));
        assert_eq!(m.get_all("X-AAMP-TASKID").count(), 2);
    }
}
