//! Sending test mail: raw RFC 5322 messages written by hand (so a test controls every byte,
//! folding included) and SMTP submission through lettre, the project's own SMTP dependency.

use std::time::Duration;

use lettre::{
    Address, AsyncSmtpTransport, Tokio1Executor,
    address::Envelope,
    transport::smtp::{PoolConfig, authentication::Credentials},
};

use super::{Account, Server};

/// The lettre transport the tests use.
pub(crate) type Smtp = AsyncSmtpTransport<Tokio1Executor>;

/// A submission transport: AUTH as `account` (none if `None`), no TLS (loopback), a pool of up
/// to `pool` connections that lettre reuses across messages.
pub(crate) fn submission(server: &Server, account: Option<&Account>, pool: u32) -> Smtp {
    let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&server.smtp_host)
        .port(server.submission_port)
        .timeout(Some(Duration::from_secs(30)))
        .pool_config(PoolConfig::new().max_size(pool.max(1)));
    if let Some(account) = account {
        builder = builder.credentials(Credentials::new(
            account.email.clone(),
            account.password.clone(),
        ));
    }
    builder.build()
}

/// The SMTP envelope `from` -> `to`.
pub(crate) fn envelope(from: &str, to: &[&str]) -> Envelope {
    let parse = |a: &str| {
        a.parse::<Address>()
            .unwrap_or_else(|e| panic!("bad address {a:?}: {e}"))
    };
    Envelope::new(Some(parse(from)), to.iter().map(|a| parse(a)).collect())
        .unwrap_or_else(|e| panic!("bad envelope {from} -> {to:?}: {e}"))
}

/// A plain-text message with CRLF line ends, a Date and a Message-ID (`<token@domain>`).
/// `headers` are written as given: fold long values yourself (see [`fold`]).
pub(crate) fn message(
    from: &str,
    to: &str,
    subject: &str,
    message_id: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Vec<u8> {
    let mut out = format!(
        "From: {from}\r\nTo: {to}\r\nSubject: {subject}\r\nDate: {}\r\nMessage-ID: <{message_id}>\r\n",
        taskmail::clock::now().to_rfc2822()
    );
    for (name, value) in headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str("MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n");
    for line in body.lines() {
        out.push_str(line);
        out.push_str("\r\n");
    }
    out.into_bytes()
}

/// Fold a header value made of space-separated words into lines of at most `width` characters
/// (the first line counts `name: `), each break a CRLF before an existing space (RFC 5322
/// section 2.2.3). Unfolding (removing the CRLFs) gives back `value` exactly.
pub(crate) fn fold(name: &str, value: &str, width: usize) -> String {
    let mut out = String::with_capacity(value.len() + value.len() / width * 3);
    let mut line_len = name.len() + 2;
    for (i, word) in value.split(' ').enumerate() {
        if i > 0 {
            if line_len + 1 + word.len() > width {
                out.push_str("\r\n");
                line_len = 0;
            }
            out.push(' ');
            line_len += 1;
        }
        out.push_str(word);
        line_len += word.len();
    }
    out
}

/// Fold a value without spaces (e.g. base64url) into lines of at most `width` characters (the
/// first line counts `name: `) by inserting CRLF + space. Unfolding leaves those spaces in;
/// receivers of base64url drop whitespace.
pub(crate) fn fold_inserting(name: &str, value: &str, width: usize) -> String {
    let mut out = String::with_capacity(value.len() + value.len() / width * 3);
    let mut room = width.saturating_sub(name.len() + 2).max(1);
    for (i, c) in value.chars().enumerate() {
        if i > 0 && room == 0 {
            out.push_str("\r\n ");
            room = width - 1;
        }
        out.push(c);
        room -= 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{fold, fold_inserting};

    #[test]
    fn fold_keeps_lines_short_and_unfolds_exactly() {
        let value = (0..400)
            .map(|i| format!("w{i}"))
            .collect::<Vec<_>>()
            .join(" ");
        let folded = fold("X-AAMP-TaskId", &value, 76);
        assert!(folded.contains("\r\n "));
        let first = format!("X-AAMP-TaskId: {folded}");
        assert!(first.split("\r\n").all(|l| l.len() <= 76), "{first}");
        assert_eq!(folded.replace("\r\n", ""), value);
    }

    #[test]
    fn fold_inserting_breaks_long_tokens() {
        let folded = fold_inserting("X-Name", &"a".repeat(200), 76);
        let lengths: Vec<usize> = folded.split("\r\n ").map(str::len).collect();
        assert_eq!(lengths, [68, 75, 57]);
        assert_eq!(folded.replace("\r\n ", ""), "a".repeat(200));
    }
}
