//! Bearer tokens: one per local agent (`[serve.agents.NAME] token`), resolved once at startup.
//!
//! Only SHA-256 digests of the tokens are kept. A presented token is hashed and compared with
//! every agent's digest in constant time, without stopping at the first match, so neither
//! timing nor length tells anything about the tokens. A token never reaches a log line or an
//! answer.

use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

use super::error::ApiError;

/// The digests of the agents' tokens, in agent order.
#[derive(Clone)]
pub struct Tokens {
    digests: Vec<[u8; 32]>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("agents", &self.digests.len())
            .finish_non_exhaustive()
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl Tokens {
    /// The table of `tokens` (resolved secrets), agent `i` owning `tokens[i]`. Two agents with
    /// one token are refused (the token would not say who is calling).
    pub fn new(tokens: &[String]) -> Result<Tokens, String> {
        let digests: Vec<[u8; 32]> = tokens.iter().map(|t| digest(t)).collect();
        for (i, d) in digests.iter().enumerate() {
            if digests[..i].iter().any(|e| bool::from(e.ct_eq(d))) {
                return Err(format!(
                    "agent number {} has the same token as another agent: give each agent its own",
                    i + 1
                ));
            }
        }
        Ok(Tokens { digests })
    }

    /// The agent index whose token is `presented`, comparing with every digest.
    pub fn find(&self, presented: &str) -> Option<usize> {
        let d = digest(presented);
        let mut found = None;
        for (i, candidate) in self.digests.iter().enumerate() {
            if bool::from(candidate.ct_eq(&d)) {
                found = Some(i);
            }
        }
        found
    }
}

/// The token of a request: `Authorization: Bearer TOKEN`, else (when `query_allowed`) the
/// `token` query parameter. Errors say what is missing, never what was sent.
pub fn presented(
    headers: &HeaderMap,
    query: Option<&str>,
    query_allowed: bool,
) -> Result<String, ApiError> {
    if let Some(value) = headers.get(AUTHORIZATION) {
        let text = value.to_str().map_err(|_| {
            ApiError::unauthorized(
                "the Authorization header is not ASCII text: send 'Bearer TOKEN'",
            )
        })?;
        let (scheme, token) = text.trim().split_once(' ').ok_or_else(|| {
            ApiError::unauthorized("the Authorization header needs the form 'Bearer TOKEN'")
        })?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(ApiError::unauthorized(
                "only Bearer tokens are accepted: send 'Authorization: Bearer TOKEN'",
            ));
        }
        return Ok(token.trim().to_owned());
    }
    if query_allowed && let Some(token) = query.and_then(|q| query_param(q, "token")) {
        return Ok(token);
    }
    Err(ApiError::unauthorized(if query_allowed {
        "no token: send 'Authorization: Bearer TOKEN' or ?token=TOKEN"
    } else {
        "no token: send 'Authorization: Bearer TOKEN'"
    }))
}

/// The first value of `name` in a query string, percent-decoded.
pub fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k) == name).then(|| percent_decode(v))
    })
}

/// Decodes `%XX` escapes and `+` (as a space); invalid escapes stay as they are.
pub fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_agent_of_a_token_and_no_other() {
        let tokens = Tokens::new(&["alpha-token".to_owned(), "beta".to_owned()]).unwrap();
        assert_eq!(tokens.find("alpha-token"), Some(0));
        assert_eq!(tokens.find("beta"), Some(1));
        assert_eq!(tokens.find("alpha"), None);
        assert_eq!(tokens.find(""), None);
        assert!(Tokens::new(&["same".to_owned(), "same".to_owned()]).is_err());
        assert!(!format!("{tokens:?}").contains("alpha"));
    }

    #[test]
    fn reads_bearer_header_and_query_token() {
        let mut headers = HeaderMap::new();
        assert_eq!(
            presented(&headers, Some("token=a%2Bb"), true).unwrap(),
            "a+b"
        );
        assert_eq!(
            presented(&headers, Some("token=x"), false)
                .unwrap_err()
                .code,
            "UNAUTHORIZED"
        );
        headers.insert(AUTHORIZATION, "bearer  tok ".parse().unwrap());
        assert_eq!(presented(&headers, None, false).unwrap(), "tok");
        headers.insert(AUTHORIZATION, "Basic dXNlcg==".parse().unwrap());
        let e = presented(&headers, None, false).unwrap_err();
        assert!(!e.message.contains("dXNlcg"));
    }

    #[test]
    fn percent_decoding_is_lenient() {
        assert_eq!(percent_decode("a%20b%zz%4"), "a b%zz%4");
        assert_eq!(
            query_param("ids=A,B&limit=3", "limit").as_deref(),
            Some("3")
        );
        assert_eq!(query_param("x", "x").as_deref(), Some(""));
    }
}
