//! The authentication verdict (`protocol/trust.md` point 1): is the header From of a message
//! vouched for by the receiving server?
//!
//! Evidence, read from headers only (no body, no I/O, no clock):
//!
//! - **`Authentication-Results`** ([RFC 8601](https://www.rfc-editor.org/rfc/rfc8601)): only the
//!   topmost field whose authserv-id is the configured one counts. A receiving server prepends
//!   its own field, so a forged one with our authserv-id written by the sender sits below it
//!   (Stalwart keeps such forgeries; measured in `tests/auth.rs`). A pass is an aligned
//!   `dmarc=pass` (its `header.from` equals the From domain) or an aligned `dkim=pass` (its
//!   `header.d`, or the domain of its `header.i`, equals the From domain or one is a subdomain of
//!   the other: relaxed alignment). SPF alone never passes; `dmarc=none` never passes.
//! - **Same-server authenticated submission** ([`Evidence::same_server_submission`]), for
//!   servers that write no `Authentication-Results` (Cyrus+Postfix): the From domain is the
//!   receiving account's own domain, and the topmost `Received` field that is not a local LMTP
//!   delivery hop names an authenticated SMTP protocol (RFC 3848: `ESMTPA`, `ESMTPSA`,
//!   `UTF8SMTPA`, `UTF8SMTPSA`). Our MTA prepends that field, so a sender cannot forge it; a
//!   spoof through the unauthenticated MX port says `with ESMTP`.
//!
//! The parser is lenient: comments (nested, with quoted pairs), quoted strings, any case,
//! whitespace around `=`, `.` and `/`, and a missing or garbled clause never panics; what does
//! not parse is simply not evidence.

use crate::wire::headers::HeaderMap;

/// What the receiving server gives as evidence, and how to read it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Evidence {
    /// The authserv-id of the receiving server's `Authentication-Results`; `None`: no such
    /// field is trusted.
    pub authserv_id: Option<String>,
    /// Whether an authenticated submission on this server (the `Received` marker) counts.
    pub same_server_submission: bool,
    /// The receiving account's own domain (lowercase), for the same-server rule.
    pub local_domain: String,
}

/// The verdict: pass or fail, with the rule that decided (for the audit log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthVerdict {
    /// The From is authenticated; the rule says how (`dmarc=pass:example.test`,
    /// `dkim=pass:other.test`, `same-server-submission:ESMTPA`).
    Pass(String),
    /// It is not; the rule says why (`no-from`, `no-authentication-results`, `dmarc=fail` ...).
    Fail(String),
}

impl AuthVerdict {
    /// Whether the From is authenticated.
    pub fn passed(&self) -> bool {
        matches!(self, AuthVerdict::Pass(_))
    }

    /// The rule.
    pub fn rule(&self) -> &str {
        match self {
            AuthVerdict::Pass(rule) | AuthVerdict::Fail(rule) => rule,
        }
    }
}

/// One `method=result` clause with its properties.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MethodResult {
    /// `dkim`, `spf`, `dmarc` ... (lowercase; a method version is dropped).
    pub method: String,
    /// `pass`, `fail`, `none` ... (lowercase).
    pub result: String,
    /// `(ptype.property, value)`, e.g. `("header.d", "example.test")`; names lowercase.
    pub properties: Vec<(String, String)>,
}

impl MethodResult {
    /// The value of property `name` (`header.from`), if present.
    pub fn property(&self, name: &str) -> Option<&str> {
        self.properties
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One parsed `Authentication-Results` field.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AuthResults {
    /// Who wrote it (lowercase).
    pub authserv_id: String,
    /// The clauses, in order.
    pub results: Vec<MethodResult>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Word(String),
    Quoted(String),
    Eq,
    Semi,
    Slash,
}

/// Splits a header value into tokens, dropping comments and whitespace.
fn tokens(value: &str) -> Vec<Token> {
    let mut out = Vec::new();
    let mut chars = value.chars().peekable();
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut Vec<Token>| {
        if !word.is_empty() {
            out.push(Token::Word(std::mem::take(word)));
        }
    };
    while let Some(c) = chars.next() {
        match c {
            '(' => {
                flush(&mut word, &mut out);
                let mut depth = 1usize;
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => {
                            chars.next();
                        }
                        '(' => depth += 1,
                        ')' => {
                            depth -= 1;
                            if depth == 0 {
                                break;
                            }
                        }
                        _ => {}
                    }
                }
            }
            '"' => {
                flush(&mut word, &mut out);
                let mut text = String::new();
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => {
                            if let Some(next) = chars.next() {
                                text.push(next);
                            }
                        }
                        '"' => break,
                        _ => text.push(c),
                    }
                }
                out.push(Token::Quoted(text));
            }
            '=' => {
                flush(&mut word, &mut out);
                out.push(Token::Eq);
            }
            ';' => {
                flush(&mut word, &mut out);
                out.push(Token::Semi);
            }
            '/' => {
                flush(&mut word, &mut out);
                out.push(Token::Slash);
            }
            c if c.is_whitespace() => flush(&mut word, &mut out),
            c => word.push(c),
        }
    }
    flush(&mut word, &mut out);
    // NOTE: CFWS is allowed around the `.` of `ptype.property`: glue `header . d` back together.
    let mut glued: Vec<Token> = Vec::with_capacity(out.len());
    for token in out {
        match (glued.last_mut(), &token) {
            (Some(Token::Word(last)), Token::Word(next))
                if last.ends_with('.') || next.starts_with('.') =>
            {
                last.push_str(next);
            }
            _ => glued.push(token),
        }
    }
    glued
}

/// Parses one `Authentication-Results` value (RFC 8601 section 2.2). `None` when it has no
/// authserv-id.
pub fn parse_auth_results(value: &str) -> Option<AuthResults> {
    let tokens = tokens(value);
    let mut parts = tokens.split(|t| *t == Token::Semi);
    let head = parts.next()?;
    let authserv_id = match head.first()? {
        Token::Word(w) | Token::Quoted(w) => w.to_ascii_lowercase(),
        _ => return None,
    };
    let mut results = Vec::new();
    for clause in parts {
        if let Some(result) = parse_clause(clause) {
            results.push(result);
        }
    }
    Some(AuthResults {
        authserv_id,
        results,
    })
}

fn text(token: Option<&Token>) -> Option<&str> {
    match token? {
        Token::Word(w) | Token::Quoted(w) => Some(w),
        _ => None,
    }
}

/// `method [/ version] = result [reason = value] [ptype.property = value]...`
fn parse_clause(clause: &[Token]) -> Option<MethodResult> {
    let method = text(clause.first())?.to_ascii_lowercase();
    let mut at = 1;
    if clause.get(at) == Some(&Token::Slash) {
        at += 2;
    }
    if clause.get(at) != Some(&Token::Eq) {
        return None;
    }
    let result = text(clause.get(at + 1))?.to_ascii_lowercase();
    at += 2;
    let mut properties = Vec::new();
    while at + 2 < clause.len() {
        let (Some(name), Some(Token::Eq)) = (text(clause.get(at)), clause.get(at + 1)) else {
            at += 1;
            continue;
        };
        let Some(value) = text(clause.get(at + 2)) else {
            at += 1;
            continue;
        };
        properties.push((name.to_ascii_lowercase(), value.to_owned()));
        at += 3;
    }
    Some(MethodResult {
        method,
        result,
        properties,
    })
}

/// The topmost `Authentication-Results` of `authserv_id` among `headers` (message order).
pub fn ours(headers: &HeaderMap, authserv_id: &str) -> Option<AuthResults> {
    headers
        .get_all("Authentication-Results")
        .filter_map(parse_auth_results)
        .find(|ar| ar.authserv_id.eq_ignore_ascii_case(authserv_id))
}

/// Relaxed alignment: equal, or one a subdomain of the other (both lowercase, no dots around).
pub fn aligned(a: &str, b: &str) -> bool {
    let a = crate::config::normalize_domain(a);
    let b = crate::config::normalize_domain(b);
    if a.is_empty() || b.is_empty() {
        return false;
    }
    a == b || a.ends_with(&format!(".{b}")) || b.ends_with(&format!(".{a}"))
}

/// The protocol (`with` clause) of a `Received` value, uppercase, if any.
pub fn received_protocol(value: &str) -> Option<String> {
    let mut words = tokens(value).into_iter().filter_map(|t| match t {
        Token::Word(w) => Some(w),
        _ => None,
    });
    while let Some(word) = words.next() {
        if word.eq_ignore_ascii_case("with") {
            return words.next().map(|w| w.to_ascii_uppercase());
        }
    }
    None
}

/// Whether `protocol` is an authenticated SMTP submission (RFC 3848).
fn authenticated_smtp(protocol: &str) -> bool {
    matches!(protocol, "ESMTPA" | "ESMTPSA" | "UTF8SMTPA" | "UTF8SMTPSA")
}

/// The authentication verdict on a message: `from` is its header From (lowercase address;
/// `from_count` how many From addresses it has), `headers` its fetched headers.
pub fn verdict(
    headers: &HeaderMap,
    from: Option<&str>,
    from_count: usize,
    evidence: &Evidence,
) -> AuthVerdict {
    let Some(from) = from.filter(|f| !f.is_empty()) else {
        return AuthVerdict::Fail("no-from".to_owned());
    };
    if from_count > 1 {
        // NOTE: DMARC is undefined for several From addresses; so is our policy.
        return AuthVerdict::Fail("several-from".to_owned());
    }
    let Some((_, domain)) = from.rsplit_once('@') else {
        return AuthVerdict::Fail("no-from-domain".to_owned());
    };
    let mut why = None;
    if let Some(id) = &evidence.authserv_id {
        match ours(headers, id) {
            Some(ar) => {
                if let Some(rule) = ar_pass(&ar, domain) {
                    return AuthVerdict::Pass(rule);
                }
                why = Some(ar_failure(&ar));
            }
            None => why = Some("no-authentication-results".to_owned()),
        }
    }
    if evidence.same_server_submission {
        let hop = headers.get_all("Received").find_map(|r| {
            let protocol = received_protocol(r).unwrap_or_default();
            (!protocol.starts_with("LMTP")).then_some(protocol)
        });
        match hop {
            Some(p) if authenticated_smtp(&p) && domain == evidence.local_domain => {
                return AuthVerdict::Pass(format!("same-server-submission:{p}"));
            }
            Some(p) if authenticated_smtp(&p) => {
                why.get_or_insert_with(|| "same-server-submission:other-domain".to_owned());
            }
            Some(p) => {
                why.get_or_insert_with(|| {
                    format!(
                        "not-a-submission:{}",
                        if p.is_empty() { "unknown" } else { &p }
                    )
                });
            }
            None => {
                why.get_or_insert_with(|| "no-received".to_owned());
            }
        }
    }
    AuthVerdict::Fail(why.unwrap_or_else(|| "no-evidence-configured".to_owned()))
}

fn ar_pass(ar: &AuthResults, domain: &str) -> Option<String> {
    let passes = || ar.results.iter().filter(|r| r.result == "pass");
    // NOTE: DMARC first: it is the verdict the domain owner asked for.
    let dmarc = passes().any(|r| {
        r.method == "dmarc"
            && r.property("header.from")
                .is_some_and(|d| d.trim().eq_ignore_ascii_case(domain))
    });
    if dmarc {
        return Some(format!("dmarc=pass:{domain}"));
    }
    passes().filter(|r| r.method == "dkim").find_map(|r| {
        let d = r.property("header.d").map(str::to_owned);
        let i = r
            .property("header.i")
            .and_then(|i| i.rsplit_once('@').map(|(_, d)| d.to_owned()));
        [d, i]
            .into_iter()
            .flatten()
            .find(|s| aligned(s, domain))
            .map(|signer| format!("dkim=pass:{}", signer.to_ascii_lowercase()))
    })
}

/// Why our Authentication-Results do not pass: the DMARC result if any, else DKIM's.
fn ar_failure(ar: &AuthResults) -> String {
    let of = |method: &str| ar.results.iter().find(|r| r.method == method);
    match (of("dmarc"), of("dkim")) {
        (Some(r), _) if r.result != "pass" => format!("dmarc={}", r.result),
        (_, Some(r)) if r.result != "pass" => format!("dkim={}", r.result),
        (Some(_), _) | (_, Some(_)) => "not-aligned".to_owned(),
        (None, None) => "no-dmarc-or-dkim".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Real headers, as Stalwart 0.16 (hairpin mode, tests/auth.rs) and Cyrus 3.6 + Postfix 3.7
    // wrote them in the test harness (unfolded, as JMAP `asText` returns them).
    const STALWART_SUBMISSION: &str = "mail.example.test; dkim=pass header.d=example.test header.s=ed25519 header.b=2hDkt79J; dkim=pass header.d=example.test header.s=rsa2048 header.b=CJMvyJQW; spf=pass (mail.example.test: domain of postmaster@out.example.test designates 127.0.0.2 as permitted sender) smtp.helo=out.example.test; spf=pass (mail.example.test: domain of dispatcher@example.test designates 127.0.0.2 as permitted sender) smtp.mailfrom=dispatcher@example.test; dmarc=pass header.from=example.test policy.dmarc=reject";
    const STALWART_SPOOF: &str = "mail.example.test; spf=none (mail.example.test: no SPF records found for postmaster@spoofer.test) smtp.helo=spoofer.test; spf=fail (mail.example.test: domain of dispatcher@example.test does not designate 127.0.0.1 as permitted sender) smtp.mailfrom=dispatcher@example.test; dmarc=none header.from=example.test policy.dmarc=reject";
    const STALWART_SPOOF_OWN_MAILFROM: &str = "mail.example.test; spf=none (mail.example.test: no SPF records found for postmaster@spoofer.test) smtp.helo=spoofer.test; spf=pass (mail.example.test: domain of attacker@elsewhere.test designates 127.0.0.1 as permitted sender) smtp.mailfrom=attacker@elsewhere.test; dmarc=fail (policy not aligned) header.from=example.test policy.dmarc=reject";
    const STALWART_OTHER: &str = "mail.example.test; dkim=pass header.d=other.test header.s=ed25519 header.b=zZSAr1yC; dkim=pass header.d=other.test header.s=rsa2048 header.b=rOWCuIVo; spf=pass (mail.example.test: domain of postmaster@out.other.test designates 127.0.0.3 as permitted sender) smtp.helo=out.other.test; spf=pass (mail.example.test: domain of agent@other.test designates 127.0.0.3 as permitted sender) smtp.mailfrom=agent@other.test; dmarc=pass header.from=other.test policy.dmarc=reject";
    const FORGED_OURS: &str = "mail.example.test; dkim=pass header.d=example.test header.s=forged; spf=pass smtp.mailfrom=dispatcher@example.test; dmarc=pass header.from=example.test";
    const FORGED_OTHER_ID: &str = "mx.forger.test; dkim=pass header.d=example.test header.s=forged; spf=pass smtp.mailfrom=dispatcher@example.test; dmarc=pass header.from=example.test";
    const STALWART_RECEIVED: &str = "from spoofer.test (unknown [127.0.0.1]) by mail.example.test (Stalwart SMTP) with ESMTP id 4BEA0E3AFE9902C; Sat, 21 Nov 2026 23:44:34 +0000";
    const CYRUS_LMTP: &str = "from mail.example.test (localhost [127.0.0.1]) by mail.example.test (Cyrus 3.6.1-Debian-3.6.1-4+deb12u5) with LMTPA; Sat, 21 Nov 2026 23:44:34 +0000";
    const POSTFIX_SUBMISSION: &str = "from [127.0.0.1] (unknown [127.0.0.1]) by mail.example.test (Postfix) with ESMTPA id 908BCE0380 for <worker@example.test>; Sat, 21 Nov 2026 23:44:34 +0000 (UTC)";
    const POSTFIX_SPOOF: &str = "from spoofer.test (unknown [127.0.0.1]) by mail.example.test (Postfix) with ESMTP id B4FDFE0380 for <worker@example.test>; Sat, 21 Nov 2026 23:44:34 +0000 (UTC)";

    fn stalwart() -> Evidence {
        Evidence {
            authserv_id: Some("mail.example.test".to_owned()),
            same_server_submission: false,
            local_domain: "example.test".to_owned(),
        }
    }

    fn cyrus() -> Evidence {
        Evidence {
            authserv_id: None,
            same_server_submission: true,
            local_domain: "example.test".to_owned(),
        }
    }

    fn headers(fields: &[(&str, &str)]) -> HeaderMap {
        fields.iter().map(|(n, v)| (*n, *v)).collect()
    }

    fn check(fields: &[(&str, &str)], from: &str, evidence: &Evidence) -> AuthVerdict {
        verdict(&headers(fields), Some(from), 1, evidence)
    }

    #[test]
    fn parses_the_real_stalwart_field() {
        let ar = parse_auth_results(STALWART_SUBMISSION).unwrap();
        assert_eq!(ar.authserv_id, "mail.example.test");
        let methods: Vec<_> = ar
            .results
            .iter()
            .map(|r| format!("{}={}", r.method, r.result))
            .collect();
        assert_eq!(
            methods,
            [
                "dkim=pass",
                "dkim=pass",
                "spf=pass",
                "spf=pass",
                "dmarc=pass"
            ]
        );
        assert_eq!(ar.results[0].property("header.d"), Some("example.test"));
        assert_eq!(ar.results[4].property("policy.dmarc"), Some("reject"));
        assert_eq!(
            ar.results[3].property("smtp.mailfrom"),
            Some("dispatcher@example.test")
        );
    }

    #[test]
    fn parses_comments_quotes_case_versions_and_spacing() {
        let ar = parse_auth_results(
            "MAIL.Example.TEST 1 (comment; with = signs (nested) \\) ); DKIM/1 = Pass (good) \
             reason=\"a; b\" header . d = \"Example.Test\" header.b=abc; dmarc=PASS header.from=example.test",
        )
        .unwrap();
        assert_eq!(ar.authserv_id, "mail.example.test");
        assert_eq!(ar.results.len(), 2);
        assert_eq!(ar.results[0].method, "dkim");
        assert_eq!(ar.results[0].result, "pass");
        assert_eq!(ar.results[0].property("reason"), Some("a; b"));
        assert_eq!(ar.results[0].property("header.d"), Some("Example.Test"));
        assert_eq!(ar.results[1].result, "pass");
        assert!(parse_auth_results("").is_none());
        assert!(parse_auth_results("; dkim=pass").is_none());
        let none = parse_auth_results("mail.example.test; none").unwrap();
        assert!(none.results.is_empty());
        // Garbage never panics.
        for junk in ["(((", "\"", "a; =; ==; b=", "x; dkim=", "x; dkim/", "x;;;"] {
            let _ = parse_auth_results(junk);
        }
    }

    #[test]
    fn an_aligned_dmarc_or_dkim_pass_passes() {
        let v = check(
            &[("Authentication-Results", STALWART_SUBMISSION)],
            "dispatcher@example.test",
            &stalwart(),
        );
        assert_eq!(v, AuthVerdict::Pass("dmarc=pass:example.test".to_owned()));
        let v = check(
            &[("Authentication-Results", STALWART_OTHER)],
            "agent@other.test",
            &stalwart(),
        );
        assert!(v.passed(), "{v:?}");
        // DKIM alone, aligned through a subdomain.
        let v = check(
            &[(
                "Authentication-Results",
                "mail.example.test; dkim=pass header.d=mail.other.test; dmarc=none header.from=other.test",
            )],
            "agent@other.test",
            &stalwart(),
        );
        assert_eq!(v, AuthVerdict::Pass("dkim=pass:mail.other.test".to_owned()));
        // header.i counts by its domain.
        let v = check(
            &[(
                "Authentication-Results",
                "mail.example.test; dkim=pass header.i=@other.test",
            )],
            "agent@other.test",
            &stalwart(),
        );
        assert!(v.passed());
    }

    #[test]
    fn spf_alone_dmarc_none_and_unaligned_passes_fail() {
        let v = check(
            &[("Authentication-Results", STALWART_SPOOF)],
            "dispatcher@example.test",
            &stalwart(),
        );
        assert_eq!(v, AuthVerdict::Fail("dmarc=none".to_owned()));
        let v = check(
            &[("Authentication-Results", STALWART_SPOOF_OWN_MAILFROM)],
            "dispatcher@example.test",
            &stalwart(),
        );
        assert_eq!(v, AuthVerdict::Fail("dmarc=fail".to_owned()));
        // A real pass for other.test does not vouch for a From at example.test.
        let v = check(
            &[("Authentication-Results", STALWART_OTHER)],
            "dispatcher@example.test",
            &stalwart(),
        );
        assert_eq!(v, AuthVerdict::Fail("not-aligned".to_owned()));
        let v = check(
            &[(
                "Authentication-Results",
                "mail.example.test; spf=pass smtp.mailfrom=dispatcher@example.test",
            )],
            "dispatcher@example.test",
            &stalwart(),
        );
        assert_eq!(v, AuthVerdict::Fail("no-dmarc-or-dkim".to_owned()));
        // A sibling is not aligned, nor is a suffix that is not a label boundary.
        assert!(!aligned("a.example.test", "b.example.test"));
        assert!(!aligned("badexample.test", "example.test"));
        assert!(aligned("EXAMPLE.test.", "example.test"));
    }

    #[test]
    fn only_the_topmost_field_with_our_authserv_id_counts() {
        // What Stalwart delivered for a spoof carrying forged fields: its own on top.
        let fields = [
            ("Authentication-Results", STALWART_SPOOF),
            ("Authentication-Results", FORGED_OTHER_ID),
            ("Authentication-Results", FORGED_OURS),
            ("Received", STALWART_RECEIVED),
        ];
        let v = check(&fields, "dispatcher@example.test", &stalwart());
        assert_eq!(v, AuthVerdict::Fail("dmarc=none".to_owned()));
        // Another authserv-id alone is no evidence at all.
        let v = check(
            &[("Authentication-Results", FORGED_OTHER_ID)],
            "dispatcher@example.test",
            &stalwart(),
        );
        assert_eq!(v, AuthVerdict::Fail("no-authentication-results".to_owned()));
        // Without an authserv-id configured, no field is trusted.
        let mut none = stalwart();
        none.authserv_id = None;
        let v = check(
            &[("Authentication-Results", STALWART_SUBMISSION)],
            "dispatcher@example.test",
            &none,
        );
        assert_eq!(v, AuthVerdict::Fail("no-evidence-configured".to_owned()));
    }

    #[test]
    fn same_server_submission_reads_the_topmost_smtp_hop() {
        let submission = [("Received", CYRUS_LMTP), ("Received", POSTFIX_SUBMISSION)];
        let v = check(&submission, "dispatcher@example.test", &cyrus());
        assert_eq!(
            v,
            AuthVerdict::Pass("same-server-submission:ESMTPA".to_owned())
        );
        let spoof = [("Received", CYRUS_LMTP), ("Received", POSTFIX_SPOOF)];
        let v = check(&spoof, "dispatcher@example.test", &cyrus());
        assert_eq!(v, AuthVerdict::Fail("not-a-submission:ESMTP".to_owned()));
        // A forged ESMTPA hop below the real one does not help.
        let forged = [
            ("Received", CYRUS_LMTP),
            ("Received", POSTFIX_SPOOF),
            ("Received", POSTFIX_SUBMISSION),
        ];
        assert!(!check(&forged, "dispatcher@example.test", &cyrus()).passed());
        // Another domain's From through our submission is not vouched for.
        let v = check(&submission, "agent@other.test", &cyrus());
        assert_eq!(
            v,
            AuthVerdict::Fail("same-server-submission:other-domain".to_owned())
        );
        // Off by default: the Stalwart evidence ignores Received entirely.
        assert!(!check(&submission, "dispatcher@example.test", &stalwart()).passed());
        assert_eq!(
            received_protocol(POSTFIX_SUBMISSION).as_deref(),
            Some("ESMTPA")
        );
        assert_eq!(received_protocol("from x by y"), None);
    }

    #[test]
    fn no_from_or_several_from_fail() {
        let h = headers(&[("Authentication-Results", STALWART_SUBMISSION)]);
        assert_eq!(
            verdict(&h, None, 0, &stalwart()),
            AuthVerdict::Fail("no-from".to_owned())
        );
        assert_eq!(
            verdict(&h, Some("dispatcher@example.test"), 2, &stalwart()),
            AuthVerdict::Fail("several-from".to_owned())
        );
    }
}
