//! Email addresses, sender patterns, host names and HTTP(S) URLs as the config writes them.
//!
//! These checks are deliberately plain: they catch what people get wrong in a config file (a
//! display name around an address, a scheme in a host name, `htp:/`), not every corner of
//! RFC 5322 or RFC 3986. The servers remain the judges of what they accept.

use std::fmt;
use std::net::IpAddr;

use super::diagnostic::quote;

/// Why an address, host or URL was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// Not an email address.
    #[error("cannot parse {} as an email address: {reason}", quote(.text))]
    Email {
        /// The input.
        text: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Not an address or `*@domain` pattern.
    #[error("cannot parse {} as a sender: {reason}", quote(.text))]
    Peer {
        /// The input.
        text: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Not a host name or IP address.
    #[error("cannot use {} as a host: {reason}", quote(.text))]
    Host {
        /// The input.
        text: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Not an http or https URL.
    #[error("cannot parse {} as a URL: {reason}", quote(.text))]
    Url {
        /// The input.
        text: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// Checks that `text` is a bare email address such as `worker@example.test`.
pub fn check_email(text: &str) -> Result<(), AddressError> {
    let fail = |reason| AddressError::Email {
        text: text.to_owned(),
        reason,
    };
    if text.contains(['<', '>']) {
        return Err(fail(
            "write the bare address, without a display name or angle brackets",
        ));
    }
    if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(fail("it contains a space or a control character"));
    }
    let Some((local, domain)) = text.rsplit_once('@') else {
        return Err(fail("it has no '@'"));
    };
    if local.is_empty() || domain.is_empty() {
        return Err(fail("it needs text on both sides of the '@'"));
    }
    if local.contains('@') {
        return Err(fail("it has more than one '@'"));
    }
    check_domain(domain).map_err(fail)
}

fn check_domain(domain: &str) -> Result<(), &'static str> {
    if domain.split('.').any(str::is_empty) {
        return Err("its domain has an empty label (two dots in a row, or a dot at an end)");
    }
    let allowed = |c: char| c.is_alphanumeric() || c == '-' || c == '.' || c == '_';
    if !domain.chars().all(allowed) {
        return Err("its domain may only hold letters, digits, '-' and '.'");
    }
    Ok(())
}

/// A domain in the one form peers are compared in: lowercase ASCII, an internationalised name
/// as its `xn--` A-label (IDNA, UTS #46), without a final dot. A name IDNA refuses is only
/// lowercased (it then matches nothing but itself).
pub fn normalize_domain(domain: &str) -> String {
    let domain = domain.trim().trim_end_matches('.');
    idna::domain_to_ascii(domain).unwrap_or_else(|_| domain.to_lowercase())
}

/// An address in the one form peers are compared in: the local part lowercased, the domain by
/// [`normalize_domain`]. `Ada@Bücher.example` becomes `ada@xn--bcher-kva.example`.
pub fn normalize_address(address: &str) -> String {
    let address = address.trim();
    match address.rsplit_once('@') {
        Some((local, domain)) => format!("{}@{}", local.to_lowercase(), normalize_domain(domain)),
        None => address.to_lowercase(),
    }
}

/// Who a sender rule or grant applies to: one address, or everyone at a domain.
///
/// Both are stored in lowercase, and [`matches`](PeerPattern::matches) compares without regard to
/// case. Internationalised domains are compared as written (no IDNA mapping yet).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PeerPattern {
    /// Exactly this address, e.g. `dispatcher@example.test`.
    Address(String),
    /// Any address at this domain, written `*@example.test`.
    Domain(String),
}

impl PeerPattern {
    /// Reads `ada@example.test` or `*@example.test`.
    pub fn parse(text: &str) -> Result<PeerPattern, AddressError> {
        let fail = |reason| AddressError::Peer {
            text: text.to_owned(),
            reason,
        };
        let lower = normalize_address(text);
        if let Some(domain) = lower.strip_prefix("*@") {
            if domain.is_empty() || domain.contains(['*', '@']) {
                return Err(fail(
                    "write '*@' followed by one domain, e.g. '*@example.test'",
                ));
            }
            check_domain(domain).map_err(fail)?;
            return Ok(PeerPattern::Domain(domain.to_owned()));
        }
        if lower.contains('*') {
            return Err(fail(
                "the only wildcard is a whole domain, written '*@example.test'",
            ));
        }
        match check_email(&lower) {
            Ok(()) => Ok(PeerPattern::Address(lower)),
            Err(AddressError::Email { reason, .. }) => Err(fail(reason)),
            Err(other) => Err(other),
        }
    }

    /// Whether `address` (a bare address) is covered by this pattern.
    pub fn matches(&self, address: &str) -> bool {
        let address = normalize_address(address);
        match self {
            PeerPattern::Address(expected) => address == *expected,
            PeerPattern::Domain(domain) => address
                .rsplit_once('@')
                .is_some_and(|(_, other)| other == domain),
        }
    }
}

impl fmt::Display for PeerPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerPattern::Address(address) => f.write_str(address),
            PeerPattern::Domain(domain) => write!(f, "*@{domain}"),
        }
    }
}

/// Checks a host as written in `[accounts.NAME.smtp] host`: a name or an IP address, without a
/// scheme or a port.
pub fn check_host(text: &str) -> Result<(), AddressError> {
    let fail = |reason| AddressError::Host {
        text: text.to_owned(),
        reason,
    };
    if text.is_empty() {
        return Err(fail("it is empty"));
    }
    if text.contains("://") {
        return Err(fail("write only the host name, without a scheme"));
    }
    let bare = text
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or(text);
    if bare.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    if text.contains(':') {
        return Err(fail("write the port in the 'port' key, not after the host"));
    }
    let allowed = |c: char| c.is_alphanumeric() || c == '-' || c == '.' || c == '_';
    if !text.chars().all(allowed) || text.split('.').any(str::is_empty) {
        return Err(fail(
            "a host name holds letters, digits, '-' and single dots",
        ));
    }
    Ok(())
}

/// Whether `host` names this machine: `localhost`, `*.localhost`, `127.0.0.0/8` or `::1`.
pub fn is_loopback_host(host: &str) -> bool {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let lower = bare.to_ascii_lowercase();
    if lower == "localhost" || lower.ends_with(".localhost") {
        return true;
    }
    bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// An `http://` or `https://` URL, checked and split into its parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl {
    text: String,
    https: bool,
    host: String,
    port: Option<u16>,
    path: String,
}

impl HttpUrl {
    /// Reads a URL such as `https://mail.example.test/.well-known/jmap`.
    pub fn parse(text: &str) -> Result<HttpUrl, AddressError> {
        let fail = |reason| AddressError::Url {
            text: text.to_owned(),
            reason,
        };
        if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(fail("it contains a space or a control character"));
        }
        let Some((scheme, rest)) = text.split_once("://") else {
            return Err(fail("it needs a scheme and a host"));
        };
        let https = match scheme.to_ascii_lowercase().as_str() {
            "https" => true,
            "http" => false,
            _ => return Err(fail("the scheme must be 'http' or 'https'")),
        };
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(end);
        if authority.contains('@') {
            return Err(fail(
                "it holds credentials; put the login and password in the account instead",
            ));
        }
        let (host, port) = split_host_port(authority).map_err(fail)?;
        if host.is_empty() {
            return Err(fail("it has no host"));
        }
        check_host(host).map_err(|_| fail("its host is not a valid host name or IP address"))?;
        Ok(HttpUrl {
            text: text.to_owned(),
            https,
            host: host.to_owned(),
            port,
            path: path.to_owned(),
        })
    }

    /// The URL as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether the scheme is https.
    pub fn is_https(&self) -> bool {
        self.https
    }

    /// The host, with brackets around an IPv6 address.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port, explicit or implied by the scheme.
    pub fn port(&self) -> u16 {
        self.port.unwrap_or(if self.https { 443 } else { 80 })
    }

    /// Everything after the authority: path, query and fragment; possibly empty.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// `scheme://host[:port]`.
    pub fn origin(&self) -> String {
        let scheme = if self.https { "https" } else { "http" };
        match self.port {
            Some(port) => format!("{scheme}://{}:{port}", self.host),
            None => format!("{scheme}://{}", self.host),
        }
    }

    /// Whether the host names this machine.
    pub fn is_loopback(&self) -> bool {
        is_loopback_host(&self.host)
    }
}

impl fmt::Display for HttpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

fn split_host_port(authority: &str) -> Result<(&str, Option<u16>), &'static str> {
    let (host, port) = if authority.starts_with('[') {
        match authority.find(']') {
            Some(close) => {
                let (host, rest) = authority.split_at(close + 1);
                match rest.strip_prefix(':') {
                    Some(port) => (host, Some(port)),
                    None if rest.is_empty() => (host, None),
                    None => return Err("text follows the IPv6 address"),
                }
            }
            None => return Err("its IPv6 address has no closing ']'"),
        }
    } else {
        match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    let port = match port {
        None => None,
        Some(port) => match port.parse::<u16>() {
            Ok(0) | Err(_) => return Err("its port must be a number from 1 to 65535"),
            Ok(port) => Some(port),
        },
    };
    Ok((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_compare_in_one_form_whatever_the_spelling_of_the_domain() {
        assert_eq!(
            normalize_address(" Ada@Bücher.Example. "),
            "ada@xn--bcher-kva.example"
        );
        let unicode = PeerPattern::parse("*@bücher.example").unwrap();
        assert_eq!(unicode.to_string(), "*@xn--bcher-kva.example");
        assert!(unicode.matches("ada@xn--bcher-kva.example"));
        assert!(unicode.matches("Ada@BÜCHER.example"));
        assert!(!unicode.matches("ada@bucher.example"));
        let ascii = PeerPattern::parse("Ada@xn--bcher-kva.example").unwrap();
        assert!(ascii.matches("ada@bücher.example"));
        // Fullwidth letters fold to ASCII under UTS #46: no look-alike slips past a grant.
        assert!(
            PeerPattern::parse("boss@example.test")
                .unwrap()
                .matches("boss@ｅｘａｍｐｌｅ.test")
        );
    }

    #[test]
    fn emails() {
        assert!(check_email("worker@example.test").is_ok());
        assert!(check_email("worker@localhost").is_ok());
        for bad in [
            "worker",
            "@example.test",
            "worker@",
            "Ada <ada@example.test>",
            "a b@example.test",
            "a@b@example.test",
            "a@example..test",
        ] {
            assert!(check_email(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn peers_are_lowercased_and_domain_wildcards_match() {
        assert_eq!(
            PeerPattern::parse("Ada@Example.TEST").unwrap(),
            PeerPattern::Address("ada@example.test".into())
        );
        let domain = PeerPattern::parse("*@Example.test").unwrap();
        assert_eq!(domain, PeerPattern::Domain("example.test".into()));
        assert!(domain.matches("Bob@example.test"));
        assert!(!domain.matches("bob@sub.example.test"));
        for bad in ["*", "*@", "*@*.test", "ada*@example.test"] {
            assert!(PeerPattern::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn hosts_and_loopback() {
        assert!(check_host("mail.example.test").is_ok());
        assert!(check_host("::1").is_ok());
        assert!(check_host("[::1]").is_ok());
        assert!(check_host("smtp://mail.example.test").is_err());
        assert!(check_host("mail.example.test:587").is_err());
        assert!(is_loopback_host("127.0.0.1"));
        assert!(is_loopback_host("127.1.2.3"));
        assert!(is_loopback_host("[::1]"));
        assert!(is_loopback_host("LocalHost"));
        assert!(!is_loopback_host("mail.example.test"));
        assert!(!is_loopback_host("10.0.0.1"));
    }

    #[test]
    fn urls() {
        let url = HttpUrl::parse("http://127.0.0.1:8080/.well-known/jmap").unwrap();
        assert!(!url.is_https());
        assert_eq!(url.host(), "127.0.0.1");
        assert_eq!(url.port(), 8080);
        assert_eq!(url.path(), "/.well-known/jmap");
        assert_eq!(url.origin(), "http://127.0.0.1:8080");
        assert!(url.is_loopback());
        let v6 = HttpUrl::parse("https://[::1]/jmap").unwrap();
        assert_eq!(v6.port(), 443);
        assert!(v6.is_loopback());
        let error = HttpUrl::parse("htp:/x").unwrap_err().to_string();
        assert!(
            error.starts_with("cannot parse 'htp:/x' as a URL: "),
            "{error}"
        );
        for bad in [
            "ftp://x.test/",
            "https://",
            "https://user:pw@x.test/",
            "https://x.test:0/",
            "https://x.test:99999/",
            "https://x .test/",
        ] {
            assert!(HttpUrl::parse(bad).is_err(), "{bad}");
        }
    }
}
