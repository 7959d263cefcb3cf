//! Threading (RFC 5322 §3.6.4): Message-IDs, In-Reply-To and References chains, and the
//! correlation keys that tie a mail to a task thread.
//!
//! Ids are held without angle brackets. Input is read leniently: the reference SDKs send bare
//! ids without brackets (`protocol/aamp.md` #11), some clients separate ids with commas.

/// `id` without surrounding white space and angle brackets.
pub fn strip_brackets(id: &str) -> String {
    id.trim()
        .trim_start_matches('<')
        .trim_end_matches('>')
        .trim()
        .to_owned()
}

/// A Message-ID for a message we send: `<ulid>@<domain>` (without brackets).
pub fn message_id(ulid: &str, domain: &str) -> String {
    format!("{ulid}@{}", domain.trim().to_ascii_lowercase())
}

/// The ids in an In-Reply-To or References value: `<a> <b>`, `a b`, `<a>,<b>`.
pub fn parse_id_list(value: &str) -> Vec<String> {
    let mut ids = Vec::new();
    let mut rest = value;
    while let Some(start) = rest.find(|c: char| !c.is_whitespace() && c != ',') {
        rest = &rest[start..];
        let (id, used) = if let Some(inner) = rest.strip_prefix('<') {
            match inner.find('>') {
                Some(end) => (&inner[..end], end + 2),
                None => (inner, rest.len()),
            }
        } else {
            let end = rest
                .find(|c: char| c.is_whitespace() || c == ',' || c == '<')
                .unwrap_or(rest.len());
            (&rest[..end], end.max(1))
        };
        let id = strip_brackets(id);
        if !id.is_empty() && !ids.contains(&id) {
            ids.push(id);
        }
        rest = &rest[used.min(rest.len())..];
    }
    ids
}

/// Most ids kept in a References chain we write; the oldest (the thread root) is always kept.
pub const MAX_REFERENCES: usize = 50;

/// In-Reply-To and References for a reply to `parent_id`, whose own References were
/// `parent_references`: the whole chain, oldest first, ending with the parent (RFC 5322
/// §3.6.4), trimmed to [`MAX_REFERENCES`] by dropping the oldest but the root.
pub fn reply_chain(parent_id: &str, parent_references: &[String]) -> (String, Vec<String>) {
    let parent = strip_brackets(parent_id);
    let mut chain: Vec<String> = Vec::with_capacity(parent_references.len() + 1);
    for id in parent_references.iter().map(|i| strip_brackets(i)) {
        if !id.is_empty() && id != parent && !chain.contains(&id) {
            chain.push(id);
        }
    }
    chain.push(parent.clone());
    if chain.len() > MAX_REFERENCES {
        let drop = chain.len() - MAX_REFERENCES;
        chain.drain(1..=drop);
    }
    (parent, chain)
}

/// The ids to look up in the Message-ID -> TaskId index, most specific first: In-Reply-To,
/// then References newest first.
pub fn correlation_keys(in_reply_to: &[String], references: &[String]) -> Vec<String> {
    let mut keys: Vec<String> = Vec::new();
    for id in in_reply_to.iter().chain(references.iter().rev()) {
        let id = strip_brackets(id);
        if !id.is_empty() && !keys.contains(&id) {
            keys.push(id);
        }
    }
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_lists_with_and_without_brackets() {
        assert_eq!(parse_id_list("<a@x> <b@x>"), ["a@x", "b@x"]);
        assert_eq!(parse_id_list("a@x b@x"), ["a@x", "b@x"]);
        assert_eq!(parse_id_list("<a@x>,<b@x>\r\n <a@x>"), ["a@x", "b@x"]);
        assert_eq!(parse_id_list("<unterminated"), ["unterminated"]);
        assert!(parse_id_list("  ").is_empty());
    }

    #[test]
    fn reply_chain_ends_with_parent_and_keeps_root() {
        let refs: Vec<String> = (0..60).map(|i| format!("m{i}@x")).collect();
        let (irt, chain) = reply_chain("<p@x>", &refs);
        assert_eq!(irt, "p@x");
        assert_eq!(chain.len(), MAX_REFERENCES);
        assert_eq!(chain.first().map(String::as_str), Some("m0@x"));
        assert_eq!(chain.last().map(String::as_str), Some("p@x"));
    }

    #[test]
    fn correlation_keys_newest_first() {
        let keys = correlation_keys(&["c@x".into()], &["a@x".into(), "b@x".into(), "c@x".into()]);
        assert_eq!(keys, ["c@x", "b@x", "a@x"]);
    }
}
