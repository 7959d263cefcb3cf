//! SMTP DSN parameters (RFC 3461) on submission, for monitored ASMTP envelopes.
//!
//! lettre 0.11's [`AsyncSmtpConnection::send`] takes no `MAIL FROM`/`RCPT TO` parameters, so a
//! message whose headers ask for delivery reports ([`DsnRequest::for_message`]: an
//! `X-ASMTP-Monitor` header) is submitted here command by command on the same pooled
//! connection: `MAIL FROM:<a> RET=HDRS ENVID=<id>` (plus lettre's own `SMTPUTF8` and
//! `BODY=8BITMIME` rules), `RCPT TO:<b> NOTIFY=SUCCESS,FAILURE,DELAY ORCPT=rfc822;b`, `DATA`.
//! A server that refuses the parameters (a permanent reply to `MAIL FROM`, e.g. `555` from a
//! server without the DSN extension) gets the message once more without them: delivery
//! matters more than its report.

use lettre::address::Envelope;
use lettre::transport::smtp::client::AsyncSmtpConnection;
use lettre::transport::smtp::commands::{Data, Mail, Rcpt};
use lettre::transport::smtp::extension::{
    Extension, MailBodyParameter, MailParameter, RcptParameter,
};

use super::{SendError, SmtpSubmit, classify};
use crate::wire::dsn::DsnRequest;

/// How a DSN submission went.
pub(super) enum DsnOutcome {
    /// Submitted with the DSN parameters.
    Sent,
    /// The server refused the parameters in `MAIL FROM`: send without them.
    Refused,
}

impl SmtpSubmit {
    /// One submission attempt with DSN parameters (module docs).
    pub(super) async fn send_once_dsn(
        &self,
        envelope: &Envelope,
        dsn: &DsnRequest,
        bytes: &[u8],
    ) -> Result<DsnOutcome, SendError> {
        let mut conn = self.checkout().await?;
        let attempt = tokio::time::timeout(
            self.inner.timeout,
            submit_with_dsn(&mut conn, envelope, dsn, bytes),
        )
        .await;
        match attempt {
            Ok(Ok(outcome)) => {
                self.checkin(conn);
                Ok(outcome)
            }
            Ok(Err(e)) => {
                // NOTE: after any error the session's state is unknown: never reuse it.
                conn.abort().await;
                Err(classify(&self.endpoint, e, 1))
            }
            Err(_) => {
                conn.abort().await;
                Err(SendError::Temporary {
                    endpoint: self.endpoint.clone(),
                    status: None,
                    attempts: 1,
                    source: format!("no answer within {:?}", self.inner.timeout).into(),
                })
            }
        }
    }
}

async fn submit_with_dsn(
    conn: &mut AsyncSmtpConnection,
    envelope: &Envelope,
    dsn: &DsnRequest,
    bytes: &[u8],
) -> Result<DsnOutcome, lettre::transport::smtp::Error> {
    let mut mail = Vec::new();
    let non_ascii = envelope
        .from()
        .into_iter()
        .chain(envelope.to())
        .any(|a| !a.to_string().is_ascii());
    if non_ascii && conn.server_info().supports_feature(Extension::SmtpUtfEight) {
        mail.push(MailParameter::SmtpUtfEight);
    }
    if !bytes.is_ascii() && conn.server_info().supports_feature(Extension::EightBitMime) {
        mail.push(MailParameter::Body(MailBodyParameter::EightBitMime));
    }
    for (keyword, value) in dsn.mail_parameters() {
        mail.push(MailParameter::Other {
            keyword: keyword.to_owned(),
            value: Some(value),
        });
    }
    match conn
        .command(Mail::new(envelope.from().cloned(), mail))
        .await
    {
        Ok(_) => {}
        Err(e) if e.is_permanent() => {
            tracing::warn!(error = %super::error_chain(&e), "the server refused the DSN parameters; sending without delivery reports");
            let _ = conn.command(lettre::transport::smtp::commands::Rset).await;
            return Ok(DsnOutcome::Refused);
        }
        Err(e) => return Err(e),
    }
    for to in envelope.to() {
        let params = dsn
            .rcpt_parameters(to.as_ref())
            .into_iter()
            .map(|(keyword, value)| RcptParameter::Other {
                keyword: keyword.to_owned(),
                value: Some(value),
            })
            .collect();
        conn.command(Rcpt::new(to.clone(), params)).await?;
    }
    conn.command(Data).await?;
    conn.message(bytes).await?;
    Ok(DsnOutcome::Sent)
}
