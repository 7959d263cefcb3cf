//! Pairing, the pure parts (`protocol/aamp.md` "Discovery and pairing"): pair codes, their
//! stored hashes, and the `aamp://connect?...` URL.
//!
//! A code is 6 random bytes in base64url (8 characters). Only its SHA-256 is stored, so a copy
//! of the state file does not hand out live codes. The URL is
//! `aamp://connect?mailbox=<email>&pair_code=<code>[&dispatch_context_rules=<base64url JSON>]`.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest as _, Sha256};

/// The default lifetime of a pair code.
pub const DEFAULT_TTL: std::time::Duration = std::time::Duration::from_secs(300);

/// A pair code from 6 random bytes.
pub fn code_from_bytes(bytes: [u8; 6]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// What the store keeps of a code: its SHA-256, hex.
pub fn code_hash(code: &str) -> String {
    let digest = Sha256::digest(code.trim().as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// A parsed `aamp://connect` URL.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ConnectUrl {
    /// The mailbox to send the pair.request to.
    pub mailbox: String,
    /// The pair code.
    pub pair_code: String,
    /// Dispatch-Context rules the pairing will carry.
    pub dispatch_context_rules: BTreeMap<String, Vec<String>>,
}

/// Why a connect URL cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PairingError {
    /// Not `aamp://connect?...`.
    #[error(
        "cannot read '{0}' as a pairing URL: expected aamp://connect?mailbox=...&pair_code=..."
    )]
    NotConnect(String),
    /// A required parameter is missing.
    #[error("cannot read the pairing URL: it has no {0}")]
    Missing(&'static str),
    /// The code has characters outside `[A-Za-z0-9_-]`.
    #[error("cannot use the pair code: only [A-Za-z0-9_-] is allowed")]
    BadCode,
    /// The rules are not base64url JSON `{key: [values]}`.
    #[error("cannot read dispatch_context_rules: expected base64url JSON {{\"key\": [\"value\"]}}")]
    BadRules,
}

/// Renders the URL.
pub fn connect_url(mailbox: &str, code: &str, rules: &BTreeMap<String, Vec<String>>) -> String {
    let mut url = format!(
        "aamp://connect?mailbox={}&pair_code={code}",
        percent(mailbox)
    );
    if !rules.is_empty() {
        url.push_str("&dispatch_context_rules=");
        url.push_str(&encode_rules(rules));
    }
    url
}

/// `{key: [values]}` as base64url JSON (`e30` when empty), as X-AAMP-Dispatch-Context-Rules.
pub fn encode_rules(rules: &BTreeMap<String, Vec<String>>) -> String {
    let json = serde_json::to_string(rules).unwrap_or_else(|_| "{}".to_owned());
    URL_SAFE_NO_PAD.encode(json)
}

/// Reads base64url JSON rules (whitespace ignored, padding tolerated).
pub fn decode_rules(text: &str) -> Result<BTreeMap<String, Vec<String>>, PairingError> {
    let compact: String = text
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '=')
        .collect();
    let bytes = URL_SAFE_NO_PAD
        .decode(compact)
        .map_err(|_| PairingError::BadRules)?;
    serde_json::from_slice(&bytes).map_err(|_| PairingError::BadRules)
}

/// Whether `code` is a well-formed pair code.
pub fn valid_code(code: &str) -> bool {
    !code.is_empty()
        && code.len() <= 128
        && code
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Parses `aamp://connect?...`.
pub fn parse_connect_url(url: &str) -> Result<ConnectUrl, PairingError> {
    let url = url.trim();
    let query = url
        .strip_prefix("aamp://connect?")
        .or_else(|| url.strip_prefix("aamp://connect/?"))
        .ok_or_else(|| PairingError::NotConnect(url.to_owned()))?;
    let mut mailbox = None;
    let mut code = None;
    let mut rules = BTreeMap::new();
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = unpercent(value);
        match key {
            "mailbox" => mailbox = Some(value),
            "pair_code" => code = Some(value),
            "dispatch_context_rules" => rules = decode_rules(&value)?,
            _ => {}
        }
    }
    let mailbox = mailbox
        .filter(|m| m.contains('@'))
        .ok_or(PairingError::Missing("mailbox"))?;
    let pair_code = code.ok_or(PairingError::Missing("pair_code"))?;
    if !valid_code(&pair_code) {
        return Err(PairingError::BadCode);
    }
    Ok(ConnectUrl {
        mailbox,
        pair_code,
        dispatch_context_rules: rules,
    })
}

fn percent(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"@.-_~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn unpercent(text: &str) -> String {
    crate::wire::decode_hex_escapes(text, b'%')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_urls_and_rules_round_trip() {
        let code = code_from_bytes([1, 2, 3, 250, 251, 252]);
        assert_eq!(code.len(), 8);
        assert!(valid_code(&code));
        assert_eq!(code_hash(&code).len(), 64);
        assert_ne!(code_hash(&code), code_hash("other"));
        let mut rules = BTreeMap::new();
        rules.insert("project".to_owned(), vec!["a b".to_owned()]);
        let url = connect_url("worker+x@example.test", &code, &rules);
        assert!(url.starts_with("aamp://connect?mailbox=worker%2Bx@example.test&pair_code="));
        let parsed = parse_connect_url(&url).unwrap();
        assert_eq!(parsed.mailbox, "worker+x@example.test");
        assert_eq!(parsed.pair_code, code);
        assert_eq!(parsed.dispatch_context_rules, rules);
        assert_eq!(encode_rules(&BTreeMap::new()), "e30");
    }

    #[test]
    fn bad_urls_are_refused() {
        assert!(matches!(
            parse_connect_url("https://x"),
            Err(PairingError::NotConnect(_))
        ));
        assert_eq!(
            parse_connect_url("aamp://connect?pair_code=abc"),
            Err(PairingError::Missing("mailbox"))
        );
        assert_eq!(
            parse_connect_url("aamp://connect?mailbox=a@b.test&pair_code=a%0Db"),
            Err(PairingError::BadCode)
        );
        assert_eq!(
            parse_connect_url(
                "aamp://connect?mailbox=a@b.test&pair_code=ab&dispatch_context_rules=!!"
            ),
            Err(PairingError::BadRules)
        );
        assert!(!valid_code(""));
        assert!(!valid_code("a b"));
    }
}
