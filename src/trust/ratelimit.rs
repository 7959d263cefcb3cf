//! A per-peer sliding-window rate limit (`trust.rate-limit`, `COUNT/PERIOD`): a peer may have
//! at most `count` messages admitted within any window of `per`. Pure: the caller passes `now`.
//!
//! The window lives in memory: a restart forgets it, which only ever lets a peer through
//! earlier, never refuses it wrongly.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

/// Sliding windows per peer.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    count: usize,
    per: TimeDelta,
    seen: HashMap<String, VecDeque<DateTime<Utc>>>,
}

impl RateLimiter {
    /// At most `count` per `per`.
    pub fn new(count: u32, per: Duration) -> RateLimiter {
        RateLimiter {
            count: usize::try_from(count).unwrap_or(usize::MAX).max(1),
            per: TimeDelta::from_std(per).unwrap_or(TimeDelta::MAX),
            seen: HashMap::new(),
        }
    }

    /// Whether `peer` may have one more message at `now`; if so it is counted.
    pub fn admit(&mut self, peer: &str, now: DateTime<Utc>) -> bool {
        let start = now
            .checked_sub_signed(self.per)
            .unwrap_or(DateTime::<Utc>::MIN_UTC);
        // NOTE: forget idle peers now and then, so the map stays as small as the active set.
        if self.seen.len() > 4096 {
            self.seen
                .retain(|_, times| times.back().is_some_and(|t| *t > start));
        }
        let times = self.seen.entry(peer.to_owned()).or_default();
        while times.front().is_some_and(|t| *t <= start) {
            times.pop_front();
        }
        if times.len() >= self.count {
            return false;
        }
        times.push_back(now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sliding_window_per_peer() {
        let mut limit = RateLimiter::new(2, Duration::from_secs(60));
        let t0 = DateTime::from_timestamp(1_900_000_000, 0).unwrap();
        let at = |s: i64| t0 + TimeDelta::seconds(s);
        assert!(limit.admit("a@x.test", at(0)));
        assert!(limit.admit("a@x.test", at(10)));
        assert!(!limit.admit("a@x.test", at(59)));
        assert!(
            limit.admit("b@x.test", at(59)),
            "another peer has its own window"
        );
        // The first one leaves the window at 60 s.
        assert!(limit.admit("a@x.test", at(60)));
        assert!(!limit.admit("a@x.test", at(69)));
        assert!(limit.admit("a@x.test", at(71)));
    }
}
