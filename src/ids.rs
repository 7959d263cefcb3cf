//! Fresh identifiers: task ids (UUIDv4) and ULIDs for Message-IDs and envelope ids. Outside
//! `wire/` because they read randomness and the clock.

use chrono::{DateTime, Utc};
use ulid::Ulid;
use uuid::Uuid;

/// A new task id (UUIDv4, as the reference SDKs expect).
pub fn task_id() -> String {
    Uuid::new_v4().to_string()
}

/// A new ULID for `now`: 48 bits of milliseconds, 80 random bits.
pub fn ulid(now: DateTime<Utc>) -> String {
    let ms = u64::try_from(now.timestamp_millis()).unwrap_or(0);
    let random = Uuid::new_v4().as_u128() & ((1u128 << 80) - 1);
    Ulid::from_parts(ms, random).to_string()
}

/// A new Message-ID (without brackets) in `domain`.
pub fn message_id(now: DateTime<Utc>, domain: &str) -> String {
    crate::wire::thread::message_id(&ulid(now), domain)
}

/// The domain part of an address, lowercased (`localhost` when there is none).
pub fn domain_of(address: &str) -> String {
    address
        .rsplit_once('@')
        .map(|(_, d)| d.trim().trim_end_matches('>').to_ascii_lowercase())
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ulids_are_valid_and_ordered_by_time() {
        let a = ulid(DateTime::from_timestamp_millis(1_700_000_000_000).unwrap());
        let b = ulid(DateTime::from_timestamp_millis(1_700_000_000_001).unwrap());
        assert_eq!(a.len(), 26);
        assert!(a.starts_with("01"));
        assert!(a < b);
    }
}
