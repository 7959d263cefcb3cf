//! The one place that reads the wall clock, so that everything else takes time as a value.

use chrono::{DateTime, Utc};

/// The current time, in UTC.
#[allow(clippy::disallowed_methods)]
pub fn now() -> DateTime<Utc> {
    Utc::now()
}
