//! Delivery status notifications: asking for them on submission
//! ([RFC 3461](https://www.rfc-editor.org/rfc/rfc3461), the SMTP DSN extension) and reading the
//! reports that come back ([RFC 3464](https://www.rfc-editor.org/rfc/rfc3464),
//! `multipart/report; report-type=delivery-status`).
//!
//! Pure: bytes in, typed values out. A monitored ASMTP envelope (`X-ASMTP-Monitor`) is
//! submitted with `MAIL FROM ... RET=HDRS ENVID=<envelope id>` and, per recipient, `RCPT TO ...
//! NOTIFY=SUCCESS,FAILURE,DELAY ORCPT=rfc822;<address>` ([`DsnRequest::for_message`]). The
//! sender's server then mails a report per outcome to the sender's Inbox; [`parse_report`]
//! reads it: the envelope id (`Original-Envelope-Id`), one [`RecipientStatus`] per recipient
//! (`Final-Recipient`, `Original-Recipient`, `Action`, `Status`) and, from the returned
//! headers, the original `X-ASMTP-Monitor` and `Message-ID`.
//!
//! Parsing is lenient (servers differ: Stalwart writes `Message-ID: <<...>>`, Postfix reports
//! LMTP delivery as `relayed`) and never panics on hostile input; mail that is no delivery
//! report gives `None`.

use mail_parser::{MessageParser, MimeHeaders as _};

/// The per-recipient action of a report (RFC 3464 §2.3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Delivered to the recipient's mailbox.
    Delivered,
    /// Handed to a system that sends no further reports (Postfix says this of LMTP delivery).
    Relayed,
    /// Delivered and forwarded to further addresses (an alias or list).
    Expanded,
    /// Delivery failed for good.
    Failed,
    /// Still trying; a later report follows.
    Delayed,
}

impl Action {
    /// The action of an `Action:` value (case-insensitive), if known.
    pub fn parse(value: &str) -> Option<Action> {
        let value = value.trim();
        let value = value
            .split(|c: char| c.is_whitespace() || c == '(')
            .next()?;
        Some(match value.to_ascii_lowercase().as_str() {
            "delivered" => Action::Delivered,
            "relayed" => Action::Relayed,
            "expanded" => Action::Expanded,
            "failed" => Action::Failed,
            "delayed" => Action::Delayed,
            _ => return None,
        })
    }

    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Delivered => "delivered",
            Action::Relayed => "relayed",
            Action::Expanded => "expanded",
            Action::Failed => "failed",
            Action::Delayed => "delayed",
        }
    }
}

/// What a report says about one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipientStatus {
    /// `Final-Recipient`, the address part (lowercase).
    pub final_recipient: String,
    /// `Original-Recipient` (the ORCPT we sent), the address part (lowercase), if given.
    pub original_recipient: Option<String>,
    /// `Action`.
    pub action: Action,
    /// `Status`, e.g. `2.1.5`, `5.1.1`, `4.4.7`.
    pub status: Option<String>,
    /// `Diagnostic-Code`, unfolded (the remote server's answer), if given.
    pub diagnostic: Option<String>,
}

impl RecipientStatus {
    /// The address the sender used: `Original-Recipient` if given, else `Final-Recipient`.
    pub fn recipient(&self) -> &str {
        self.original_recipient
            .as_deref()
            .unwrap_or(&self.final_recipient)
    }

    /// True when the status code says the delivery time ran out (`X.4.7`).
    pub fn timed_out(&self) -> bool {
        self.status
            .as_deref()
            .is_some_and(|s| s.get(1..).is_some_and(|rest| rest.starts_with(".4.7")))
    }
}

/// A delivery report.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeliveryReport {
    /// `Original-Envelope-Id` (xtext decoded): the ENVID we submitted with.
    pub envelope_id: Option<String>,
    /// `Reporting-MTA`.
    pub reporting_mta: Option<String>,
    /// One entry per recipient block.
    pub recipients: Vec<RecipientStatus>,
    /// `Message-ID` of the returned original, without angle brackets.
    pub original_message_id: Option<String>,
    /// `X-ASMTP-Monitor` of the returned original.
    pub original_monitor: Option<String>,
    /// `X-ASMTP-Id` of the returned original.
    pub original_asmtp_id: Option<String>,
    /// `X-ASMTP-From` of the returned original.
    pub original_from: Option<String>,
}

/// The DSN parameters of one submission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DsnRequest {
    /// `ENVID`, unencoded (an envelope id: a ULID).
    pub envid: String,
    /// `RET=HDRS` (true) or `RET=FULL`.
    pub ret_headers: bool,
    /// `NOTIFY` values, e.g. `SUCCESS`, `FAILURE`, `DELAY`.
    pub notify: Vec<&'static str>,
    /// Add `ORCPT=rfc822;<address>` to every recipient.
    pub orcpt: bool,
}

impl DsnRequest {
    /// The request for a monitored envelope whose id is `envid`: headers only, every outcome.
    pub fn monitored(envid: &str) -> DsnRequest {
        DsnRequest {
            envid: envid.to_owned(),
            ret_headers: true,
            notify: vec!["SUCCESS", "FAILURE", "DELAY"],
            orcpt: true,
        }
    }

    /// The request for an outgoing message: when its header section has `X-ASMTP-Monitor`
    /// and an `X-ASMTP-Id`, a monitored request with that id as ENVID; else `None`.
    pub fn for_message(message: &[u8]) -> Option<DsnRequest> {
        let headers = header_section(message);
        field(headers, "x-asmtp-monitor").filter(|m| !m.is_empty())?;
        let id = field(headers, "x-asmtp-id").filter(|id| !id.is_empty())?;
        Some(DsnRequest::monitored(&id))
    }

    /// The `MAIL FROM` parameters, as `(keyword, value)` pairs.
    pub fn mail_parameters(&self) -> Vec<(&'static str, String)> {
        vec![
            (
                "RET",
                if self.ret_headers { "HDRS" } else { "FULL" }.to_owned(),
            ),
            ("ENVID", xtext(&self.envid)),
        ]
    }

    /// The `RCPT TO` parameters for `address`, as `(keyword, value)` pairs.
    pub fn rcpt_parameters(&self, address: &str) -> Vec<(&'static str, String)> {
        let mut params = Vec::new();
        if !self.notify.is_empty() {
            params.push(("NOTIFY", self.notify.join(",")));
        }
        if self.orcpt {
            params.push(("ORCPT", format!("rfc822;{}", xtext(address.trim()))));
        }
        params
    }
}

/// RFC 3461 xtext: `+`, `=`, controls, space and non-ASCII as `+HH`.
pub fn xtext(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if (33..=126).contains(&byte) && byte != b'+' && byte != b'=' {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("+{byte:02X}"));
        }
    }
    out
}

/// Undoes [`xtext`]; a malformed `+` escape is kept as it is.
pub fn xtext_decode(value: &str) -> String {
    super::decode_hex_escapes(value, b'+')
}

/// Reads a whole message; `Some` when it is a delivery report with at least one recipient
/// block we understand.
pub fn parse_report(raw: &[u8]) -> Option<DeliveryReport> {
    let message = MessageParser::default().parse(raw)?;
    let root = message.content_type()?;
    if !root.ctype().eq_ignore_ascii_case("multipart")
        || !root
            .subtype()
            .is_some_and(|s| s.eq_ignore_ascii_case("report"))
    {
        return None;
    }
    let mut report: Option<DeliveryReport> = None;
    let mut returned: Option<Vec<u8>> = None;
    for part in &message.parts {
        let Some(ct) = part.content_type() else {
            continue;
        };
        let (ctype, subtype) = (
            ct.ctype().to_ascii_lowercase(),
            ct.subtype().unwrap_or_default().to_ascii_lowercase(),
        );
        match (ctype.as_str(), subtype.as_str()) {
            ("message", "delivery-status" | "global-delivery-status") if report.is_none() => {
                report = parse_status(part.contents());
            }
            ("message", "rfc822" | "global") | ("text", "rfc822-headers") if returned.is_none() => {
                returned = Some(part.contents().to_vec());
            }
            _ => {}
        }
    }
    let mut report = report?;
    if let Some(returned) = returned {
        let headers = header_section(&returned);
        report.original_message_id =
            field(headers, "message-id").map(|id| strip_brackets(&id).to_owned());
        report.original_monitor = field(headers, "x-asmtp-monitor");
        report.original_asmtp_id = field(headers, "x-asmtp-id");
        report.original_from = field(headers, "x-asmtp-from");
    }
    Some(report)
}

/// Reads the body of a `message/delivery-status` part: the per-message block, then one block
/// per recipient. `None` when no recipient block has a known `Action` and a recipient.
pub fn parse_status(body: &[u8]) -> Option<DeliveryReport> {
    let text = String::from_utf8_lossy(body);
    let mut blocks: Vec<Vec<(String, String)>> = vec![Vec::new()];
    let mut current: Option<(String, String)> = None;
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            if let Some(f) = current.take()
                && let Some(block) = blocks.last_mut()
            {
                block.push(f);
            }
            if blocks.last().is_some_and(|b| !b.is_empty()) {
                blocks.push(Vec::new());
            }
            continue;
        }
        if line.starts_with([' ', '\t']) {
            if let Some((_, value)) = current.as_mut() {
                value.push(' ');
                value.push_str(line.trim());
            }
            continue;
        }
        if let Some(f) = current.take()
            && let Some(block) = blocks.last_mut()
        {
            block.push(f);
        }
        if let Some((name, value)) = line.split_once(':') {
            current = Some((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
    }
    if let Some(f) = current.take()
        && let Some(block) = blocks.last_mut()
    {
        block.push(f);
    }
    blocks.retain(|b| !b.is_empty());
    let get = |block: &[(String, String)], name: &str| {
        block
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    let mut report = DeliveryReport::default();
    let mut rest = blocks.as_slice();
    if let Some(first) = blocks.first()
        && get(first, "action").is_none()
    {
        report.envelope_id = get(first, "original-envelope-id").map(|v| xtext_decode(v.trim()));
        report.reporting_mta = get(first, "reporting-mta").map(|v| typed_value(&v).to_owned());
        rest = &blocks[1..];
    }
    for block in rest {
        let Some(action) = get(block, "action").and_then(|a| Action::parse(&a)) else {
            continue;
        };
        let final_recipient = get(block, "final-recipient").map(|v| address_value(&v));
        let original_recipient = get(block, "original-recipient").map(|v| address_value(&v));
        let Some(final_recipient) = final_recipient.or_else(|| original_recipient.clone()) else {
            continue;
        };
        if final_recipient.is_empty() {
            continue;
        }
        report.recipients.push(RecipientStatus {
            final_recipient,
            original_recipient: original_recipient.filter(|r| !r.is_empty()),
            action,
            status: get(block, "status")
                .map(|s| s.split_whitespace().next().unwrap_or_default().to_owned())
                .filter(|s| !s.is_empty()),
            diagnostic: get(block, "diagnostic-code").map(|v| typed_value(&v).to_owned()),
        });
    }
    (!report.recipients.is_empty()).then_some(report)
}

/// `type; value` -> `value` (trimmed); a value without a type is returned whole.
fn typed_value(value: &str) -> &str {
    value.split_once(';').map_or(value, |(_, v)| v).trim()
}

/// `rfc822; <Addr>` -> `addr` (xtext decoded, brackets off, lowercase).
fn address_value(value: &str) -> String {
    let v = xtext_decode(typed_value(value));
    strip_brackets(v.trim()).trim().to_ascii_lowercase()
}

fn strip_brackets(value: &str) -> &str {
    value.trim().trim_start_matches('<').trim_end_matches('>')
}

/// The header section of a message (up to the first empty line).
fn header_section(message: &[u8]) -> &[u8] {
    let mut i = 0;
    while i < message.len() {
        let rest = &message[i..];
        if rest.starts_with(b"\r\n") || rest.starts_with(b"\n") {
            return &message[..i];
        }
        match rest.iter().position(|&b| b == b'\n') {
            Some(n) => i += n + 1,
            None => return message,
        }
    }
    message
}

/// The first header field `name` (lowercase) of a header section, unfolded and trimmed.
fn field(headers: &[u8], name: &str) -> Option<String> {
    let text = String::from_utf8_lossy(headers);
    let mut found: Option<String> = None;
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if line.starts_with([' ', '\t']) {
            if let Some(value) = found.as_mut() {
                value.push_str(line.trim_start());
                continue;
            }
            continue;
        }
        if found.is_some() {
            break;
        }
        if let Some((n, v)) = line.split_once(':')
            && n.trim().eq_ignore_ascii_case(name)
        {
            found = Some(v.trim().to_owned());
        }
    }
    found.map(|v| v.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xtext_round_trips_and_encodes_specials() {
        assert_eq!(xtext("a+b=c d"), "a+2Bb+3Dc+20d");
        assert_eq!(xtext_decode("a+2Bb+3Dc+20d"), "a+b=c d");
        assert_eq!(xtext_decode("bad+zz"), "bad+zz");
        assert_eq!(xtext_decode("end+"), "end+");
    }

    #[test]
    fn request_comes_from_the_monitor_header_only() {
        let monitored = b"From: a@x\r\nX-ASMTP-Id: 01JABCDEFGHJKMNPQRSTVWXYZ0\r\nX-ASMTP-Monitor:\r\n mon_abc\r\n\r\nX-ASMTP-Monitor: not-a-header\r\n";
        let request = DsnRequest::for_message(monitored).unwrap();
        assert_eq!(request.envid, "01JABCDEFGHJKMNPQRSTVWXYZ0");
        assert_eq!(
            request.mail_parameters(),
            vec![
                ("RET", "HDRS".to_owned()),
                ("ENVID", "01JABCDEFGHJKMNPQRSTVWXYZ0".to_owned())
            ]
        );
        assert_eq!(
            request.rcpt_parameters("a+b@x.test"),
            vec![
                ("NOTIFY", "SUCCESS,FAILURE,DELAY".to_owned()),
                ("ORCPT", "rfc822;a+2Bb@x.test".to_owned())
            ]
        );
        let plain = b"From: a@x\r\nX-ASMTP-Id: 01JABCDEFGHJKMNPQRSTVWXYZ0\r\n\r\nX-ASMTP-Monitor: mon_x\r\n";
        assert_eq!(DsnRequest::for_message(plain), None);
        assert_eq!(
            DsnRequest::for_message(b"X-ASMTP-Monitor: mon_x\r\n\r\n"),
            None
        );
    }

    #[test]
    fn status_blocks_with_folding_and_types() {
        let body = b"Reporting-MTA: dns; mx.example\r\nOriginal-Envelope-Id: 01ENV+2B1\r\n\r\nFinal-Recipient: rfc822; <Bob@Example.TEST>\r\nOriginal-Recipient: rfc822;bob@example.test\r\nAction: failed\r\nStatus: 5.1.1 (unknown)\r\nDiagnostic-Code: smtp; 550 5.1.1\r\n  no such user\r\n\r\nFinal-Recipient: rfc822;carol@example.test\r\nAction: Delayed\r\nStatus: 4.4.7\r\n";
        let report = parse_status(body).unwrap();
        assert_eq!(report.envelope_id.as_deref(), Some("01ENV+1"));
        assert_eq!(report.reporting_mta.as_deref(), Some("mx.example"));
        assert_eq!(report.recipients.len(), 2);
        let bob = &report.recipients[0];
        assert_eq!(bob.final_recipient, "bob@example.test");
        assert_eq!(bob.action, Action::Failed);
        assert_eq!(bob.status.as_deref(), Some("5.1.1"));
        assert_eq!(bob.diagnostic.as_deref(), Some("550 5.1.1 no such user"));
        assert!(!bob.timed_out());
        assert_eq!(report.recipients[1].action, Action::Delayed);
        assert!(report.recipients[1].timed_out());
    }

    #[test]
    fn garbage_is_no_report() {
        assert_eq!(parse_status(b""), None);
        assert_eq!(
            parse_status(b"Action: exploded\r\nFinal-Recipient: a@b\r\n"),
            None
        );
        assert_eq!(parse_status(b"\xff\xfe:\r\n\r\n\t\r\n:::"), None);
        assert_eq!(parse_report(b"Subject: hi\r\n\r\nhello"), None);
        assert_eq!(parse_report(b""), None);
        assert_eq!(
            parse_report(
                b"Content-Type: multipart/report; boundary=x\r\n\r\n--x\r\nContent-Type: message/delivery-status\r\n\r\n\r\n--x--\r\n"
            ),
            None
        );
    }
}
