//! Server profiles: presets and known quirks of a mail server, named by `[accounts.NAME] server`.
//!
//! A server profile never overrides what the JMAP session says at run time (push support,
//! limits); it fills in what the session cannot tell: where the authserv-id comes from, whether
//! header filters work, SMTP session limits. See `shared/mailservers.md` for the measurements
//! behind the built-in `stalwart` and `cyrus` files.

use serde::Deserialize;

use crate::config::{ConfigErrors, Diagnostic, PushMode};

use super::ProfileSource;

/// A server profile as written in TOML: every field optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawServerProfile {
    /// One line for listings.
    pub description: Option<String>,
    /// Where to find the server's authserv-id, shown when `trust.authserv-id` is unset.
    pub authserv_id_hint: Option<String>,
    /// The push mode an account with `push = "auto"` starts from.
    pub push: Option<PushMode>,
    /// Method calls per JMAP request when the session does not say.
    pub max_calls_in_request: Option<u32>,
    /// Whether `Email/query` can filter on headers.
    pub header_query_works: Option<bool>,
    /// Whether the session resource returns relative URLs.
    pub relative_session_urls: Option<bool>,
    /// Whether any MAIL FROM is accepted from an authenticated user.
    pub any_mail_from: Option<bool>,
    /// Messages per SMTP session before reconnecting.
    pub smtp_messages_per_session: Option<u32>,
    /// Free text for operators.
    pub notes: Option<String>,
}

impl RawServerProfile {
    /// This layer laid over `lower`: every field this layer sets wins.
    #[must_use]
    pub fn over(self, lower: RawServerProfile) -> RawServerProfile {
        RawServerProfile {
            description: self.description.or(lower.description),
            authserv_id_hint: self.authserv_id_hint.or(lower.authserv_id_hint),
            push: self.push.or(lower.push),
            max_calls_in_request: self.max_calls_in_request.or(lower.max_calls_in_request),
            header_query_works: self.header_query_works.or(lower.header_query_works),
            relative_session_urls: self.relative_session_urls.or(lower.relative_session_urls),
            any_mail_from: self.any_mail_from.or(lower.any_mail_from),
            smtp_messages_per_session: self
                .smtp_messages_per_session
                .or(lower.smtp_messages_per_session),
            notes: self.notes.or(lower.notes),
        }
    }

    /// Reports values that parse but make no sense.
    pub(crate) fn check(&self, report: &mut ConfigErrors) {
        for (key, value) in [
            ("max-calls-in-request", self.max_calls_in_request),
            ("smtp-messages-per-session", self.smtp_messages_per_session),
        ] {
            if value == Some(0) {
                report.error(Diagnostic::new(
                    key,
                    "cannot use '0': expected a number above zero",
                ));
            }
        }
    }
}

/// A resolved server profile, defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerProfile {
    /// The profile name.
    pub name: String,
    /// One line for listings.
    pub description: String,
    /// Where to find the server's authserv-id.
    pub authserv_id_hint: Option<String>,
    /// The push mode an account with `push = "auto"` starts from (default auto).
    pub push: PushMode,
    /// Method calls per JMAP request when the session does not say (default 16).
    pub max_calls_in_request: u32,
    /// Whether `Email/query` can filter on headers (default false).
    pub header_query_works: bool,
    /// Whether the session resource returns relative URLs (default false).
    pub relative_session_urls: bool,
    /// Whether any MAIL FROM is accepted (default false).
    pub any_mail_from: bool,
    /// Messages per SMTP session before reconnecting (default: no known limit).
    pub smtp_messages_per_session: Option<u32>,
    /// Free text for operators.
    pub notes: String,
    /// The highest layer that defined this profile.
    pub source: ProfileSource,
}

impl ServerProfile {
    pub(crate) fn from_raw(name: &str, raw: RawServerProfile, source: ProfileSource) -> Self {
        ServerProfile {
            name: name.to_owned(),
            description: raw.description.unwrap_or_default(),
            authserv_id_hint: raw.authserv_id_hint,
            push: raw.push.unwrap_or(PushMode::Auto),
            max_calls_in_request: raw.max_calls_in_request.unwrap_or(16),
            header_query_works: raw.header_query_works.unwrap_or(false),
            relative_session_urls: raw.relative_session_urls.unwrap_or(false),
            any_mail_from: raw.any_mail_from.unwrap_or(false),
            smtp_messages_per_session: raw.smtp_messages_per_session,
            notes: raw.notes.unwrap_or_default(),
            source,
        }
    }
}
