//! A per-peer sliding-window rate limit (`trust.rate-limit`, `COUNT/PERIOD`): a peer may have
//! at most `count` messages admitted within any window of `per`. Pure: the caller passes `now`.
//!
//! The window lives in memory: a restart forgets it, which only ever lets a peer through
//! earlier, never refuses it wrongly. A message counted once is not counted again while it is
//! in the window (a daemon looks at a mail again after a lost claim or from its backlog).

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

/// Sliding windows per peer.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    count: usize,
    per: TimeDelta,
    /// Per peer: the admitted messages in the window, oldest first.
    seen: HashMap<String, VecDeque<Counted>>,
}

/// When a message was counted, and its key (Message-ID) if it had one.
type Counted = (DateTime<Utc>, Option<String>);

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
        self.admit_once(peer, None, now)
    }

    /// [`RateLimiter::admit`] for the message `key` (its Message-ID): a key already counted in
    /// the window is admitted again without counting.
    pub fn admit_once(&mut self, peer: &str, key: Option<&str>, now: DateTime<Utc>) -> bool {
        let start = now
            .checked_sub_signed(self.per)
            .unwrap_or(DateTime::<Utc>::MIN_UTC);
        // NOTE: forget idle peers now and then, so the map stays as small as the active set.
        if self.seen.len() > 4096 {
            self.seen
                .retain(|_, times| times.back().is_some_and(|(t, _)| *t > start));
        }
        let times = self.seen.entry(peer.to_owned()).or_default();
        while times.front().is_some_and(|(t, _)| *t <= start) {
            times.pop_front();
        }
        if let Some(key) = key
            && times.iter().any(|(_, k)| k.as_deref() == Some(key))
        {
            return true;
        }
        if times.len() >= self.count {
            return false;
        }
        times.push_back((now, key.map(str::to_owned)));
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

    #[test]
    fn a_message_looked_at_again_counts_once() {
        let mut limit = RateLimiter::new(2, Duration::from_secs(60));
        let t0 = DateTime::from_timestamp(1_900_000_000, 0).unwrap();
        let at = |s: i64| t0 + TimeDelta::seconds(s);
        assert!(limit.admit_once("a@x.test", Some("<1@x>"), at(0)));
        assert!(limit.admit_once("a@x.test", Some("<1@x>"), at(5)));
        assert!(limit.admit_once("a@x.test", Some("<1@x>"), at(6)));
        assert!(limit.admit_once("a@x.test", Some("<2@x>"), at(7)));
        assert!(!limit.admit_once("a@x.test", Some("<3@x>"), at(8)));
        assert!(
            limit.admit_once("a@x.test", Some("<2@x>"), at(9)),
            "counted already"
        );
        assert!(
            !limit.admit_once("a@x.test", None, at(10)),
            "no key: always counts"
        );
        // Out of the window it is a new count.
        assert!(limit.admit_once("a@x.test", Some("<3@x>"), at(61)));
    }
}
