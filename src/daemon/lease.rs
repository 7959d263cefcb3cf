//! Leases: many daemons on one mailbox (README "Many workers, one mailbox").
//!
//! # Why not `ifInState`
//!
//! JMAP's `ifInState` looks like a compare-and-swap, but measured on both Stalwart and Cyrus two
//! concurrent updates made from the same state can both succeed, and every new delivery changes
//! the mailbox-wide Email state, so guarded claims keep failing under load. The claim protocol
//! here needs neither: it only needs each email's keyword set to behave as a register (a
//! write of one email's keywords is atomic and a later read returns the last write), plus bounded timing.
//!
//! # The claim (Fischer-style mutual exclusion on one email's keywords)
//!
//! A mail is *free* when it carries no lease keyword and neither `$taskmail-result` nor
//! `$taskmail-done`. A claimer, for a batch of mails:
//!
//! 1. reads the keywords (`Email/get` of `keywords` only) at time `r` (when the request left);
//! 2. for each mail still free (or carrying a lease it watched expire, below) writes its own
//!    lease over every lease keyword: one patch that sets its lease's keywords and clears all
//!    the other lease keywords (the vocabulary is fixed, below), leaving the marks alone. No
//!    `ifInState`: whoever writes last wins on the server. One `Email/set` for the batch;
//! 3. if the answer came back later than `r + delta` (`worker.claim-wait` is `delta`), it
//!    enters none of them: its write may have landed after another claimer's read-back;
//! 4. waits `delta` from the answer, reads the keywords again, and owns exactly the mails whose
//!    lease is its own.
//!
//! Why no two daemons own a mail: say A and B both own it, B's confirming read-back `t_B` the
//! later one. Each write landed before its answer, and each read-back left at least `delta`
//! after that answer. B's read-back saw B's lease, and `t_B > t_A >= w_A + delta`, so A's write
//! landed first: `w_A < w_B`. A's read-back saw A's lease, so `w_B` did not land between `w_A`
//! and `t_A`: `w_B > t_A >= w_A + delta`. B read the mail free at `r_B`, so before `w_A` (from
//! `w_A` on the mail showed A's lease or a later one until `w_B`; leases only go when a task is
//! done). So `w_B - r_B > delta`, yet B's write was answered, hence landed, within `delta` of
//! `r_B`: a contradiction. The bound is checked by the claimer on its own clock (request sent to
//! answer received), so no clock synchronisation is needed.
//!
//! A claim that loses is not an error: the mail is *watched* (someone else has it).
//!
//! A read-back that failed (the server went away after taking the write in time) leaves our
//! lease on the mail, owned by nobody. Reading our own lease there again counts as reading the
//! mail free: the write landed within `delta` of a free read, which is all the argument above
//! uses of a write, so a fresh round (read, write, wait, read-back) decides as before, and the
//! mail need not wait a whole lease for a takeover. Only in memory: a daemon that crashed
//! between sending a write and its answer cannot know when that write landed.
//!
//! # Renewal, takeover, freshness
//!
//! The owner renews every quarter of `worker.lease` by flipping the lease's beat (setting or
//! clearing `$taskmail-beat`). Every keyword change is an update in `Email/changes`, and a watcher
//! restarts its watch on every update of a watched mail. A watcher takes a mail over only after
//! `lease` seconds without any update, by its own clock, and then through the same claim
//! (read, lease write, wait, read-back). So while the owner's writes are less than `lease`
//! apart no takeover can happen; an owner whose last confirmed write was sent more than half
//! the lease ago is *stale*: it sends nothing and runs nothing until a full claim round (read,
//! write, wait, read-back) shows the mail is still its own, else it has *lost* the mail.
//! A fresh owner sets its marks with a plain keyword patch (no wait).
//!
//! # Marks (exactly once)
//!
//! - `$taskmail-acked` before the ack is submitted: a taker-over that finds it sends no ack.
//! - `$taskmail-result` before the result is submitted: the commit point. A mail with it is
//!   never claimed or taken over again, so its task never runs again elsewhere; the outbox of
//!   the daemon that set it sends the result (again, with the same Message-ID, after a crash).
//! - `$taskmail-done` once the result is submitted; the lease keyword goes.
//!
//! # Bounded keyword names
//!
//! Cyrus keeps at most 128 distinct user flags per mailbox and never forgets one, so keyword
//! names must not grow with time or with the number of daemons a mailbox has seen (an owner
//! name in the keyword exhausted a test mailbox: `Too many user flags in mailbox`). A lease is
//! a set of keywords from a fixed vocabulary: the owner's code, 16 of the 32 keywords
//! `$taskmail-lo-00` .. `$taskmail-lo-31` (a constant-weight code of a hash of
//! `worker.lease-owner`), the term `$taskmail-lease-<seconds>` and, on odd beats,
//! `$taskmail-beat`. Writes that merged two leases cannot read as one: the union of two
//! different codes has more than 16 bits. So a mailbox spends 34 keywords on leases plus one
//! per `worker.lease` value ever used.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use super::inbound::{CLAIMED, DONE};
use super::{Core, Execute};
use crate::store::StoreError;
use crate::transport::{JmapError, KeywordWrite, MailStore, Submit};

/// The prefix of a lease's term keyword, `$taskmail-lease-<seconds>` (one keyword per
/// `worker.lease` value in use). Older releases named their owner after it
/// (`$taskmail-lease-<owner>-<secs>-<beat>`): such keywords still count as a lease of unknown
/// owner, and every claim clears them.
pub const LEASE_PREFIX: &str = "$taskmail-lease-";
/// The prefix of the owner-code keywords `$taskmail-lo-00` .. `$taskmail-lo-31`.
pub const CODE_PREFIX: &str = "$taskmail-lo-";
/// Present on a lease's odd beats.
pub const BEAT: &str = "$taskmail-beat";
/// Set before the ack of a claimed mail is submitted.
pub const ACKED: &str = "$taskmail-acked";
/// Set before the result of a claimed mail's task is submitted: no takeover after it.
pub const RESULT: &str = "$taskmail-result";

/// Owner-code keywords in all.
const CODE_BITS: u32 = 32;
/// Owner-code keywords in one lease: C(32, 16) = 601,080,390 owner codes.
const CODE_WEIGHT: u32 = 16;

/// One lease as it shows on a mail: the owner's code (a 32-bit mask with exactly
/// [`CODE_WEIGHT`] bits set), its term and its beat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// Which `$taskmail-lo-NN` keywords are set.
    pub code: u32,
    /// How long it holds without renewal, in seconds.
    pub seconds: u64,
    /// Flipped on every renewal ([`BEAT`] present when 1).
    pub beat: u8,
}

/// What the lease keywords of one mail say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reading {
    /// No lease keyword.
    Free,
    /// One well-formed lease.
    One(Lease),
    /// Lease keywords that do not make one lease (writes that merged, an older release's
    /// keywords): nobody owns the mail; it is taken over once it shows no change for `seconds`
    /// (`token` tells two such readings apart).
    Mixed { token: String, seconds: u64 },
}

impl Reading {
    /// A string that is equal for equal readings (`None` when free).
    pub fn token(&self) -> Option<String> {
        match self {
            Reading::Free => None,
            Reading::One(lease) => Some(lease.token()),
            Reading::Mixed { token, .. } => Some(token.clone()),
        }
    }
}

/// `n` choose `k` (exact for `n <= 32`).
fn choose(n: u32, k: u32) -> u64 {
    if k > n {
        return 0;
    }
    let k = k.min(n - k);
    (0..u64::from(k)).fold(1u64, |acc, i| acc * (u64::from(n) - i) / (i + 1))
}

/// The code of rank `rank` (below C(32, 16)) among the masks with [`CODE_WEIGHT`] bits set.
fn code_of_rank(mut rank: u64) -> u32 {
    let mut left = CODE_WEIGHT;
    let mut code = 0u32;
    for bit in (0..CODE_BITS).rev() {
        if left == 0 {
            break;
        }
        let below = choose(bit, left);
        if rank >= below {
            code |= 1 << bit;
            rank -= below;
            left -= 1;
        }
    }
    code
}

/// The owner code of a daemon name (`worker.lease-owner`): a constant-weight code, so that two
/// owners' codes written over each other never read as one lease. Two names share a code with
/// odds of 1 in 601,080,390.
pub fn owner_code(owner: &str) -> u32 {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(owner.as_bytes());
    let mut head = [0u8; 8];
    head.copy_from_slice(&digest[..8]);
    code_of_rank(u64::from_be_bytes(head) % choose(CODE_BITS, CODE_WEIGHT))
}

/// Whether `keyword` is one of the lease's (code, term, beat, or an older release's lease).
pub fn is_lease_keyword(keyword: &str) -> bool {
    let keyword = keyword.to_ascii_lowercase();
    keyword.starts_with(LEASE_PREFIX) || keyword.starts_with(CODE_PREFIX) || keyword == BEAT
}

impl Lease {
    /// The lease of `owner` (first beat).
    pub fn of(owner: &str, seconds: u64) -> Lease {
        Lease {
            code: owner_code(owner),
            seconds: seconds.max(1),
            beat: 0,
        }
    }

    /// Its keywords (lowercase, as servers store them).
    pub fn keywords(&self) -> Vec<String> {
        let mut keywords: Vec<String> = (0..CODE_BITS)
            .filter(|bit| self.code & (1 << bit) != 0)
            .map(|bit| format!("{CODE_PREFIX}{bit:02}"))
            .collect();
        keywords.push(format!("{LEASE_PREFIX}{}", self.seconds));
        if self.beat == 1 {
            keywords.push(BEAT.to_owned());
        }
        keywords
    }

    /// A compact form, equal for equal leases: `<code hex>-<seconds>-<beat>`.
    pub fn token(&self) -> String {
        format!("{:08x}-{}-{}", self.code, self.seconds, self.beat)
    }

    /// Parses [`Lease::token`].
    pub fn from_token(token: &str) -> Option<Lease> {
        let mut parts = token.split('-');
        let code = u32::from_str_radix(parts.next()?, 16).ok()?;
        let seconds = parts.next()?.parse::<u64>().ok()?;
        let beat = match parts.next()? {
            "0" => 0,
            "1" => 1,
            _ => return None,
        };
        if parts.next().is_some() || code.count_ones() != CODE_WEIGHT || seconds == 0 {
            return None;
        }
        Some(Lease {
            code,
            seconds,
            beat,
        })
    }

    /// The same lease, renewed (the other beat).
    pub fn renewed(&self) -> Lease {
        Lease {
            beat: 1 - self.beat.min(1),
            ..*self
        }
    }

    /// Reads the lease keywords of a mail. `default_seconds` is the term of a mixed reading
    /// that names none.
    pub fn read(keywords: &BTreeSet<String>, default_seconds: u64) -> Reading {
        let mut code = 0u32;
        let mut terms = Vec::new();
        let mut beat = 0u8;
        let mut other = false;
        for keyword in keywords {
            let keyword = keyword.to_ascii_lowercase();
            if let Some(bit) = keyword.strip_prefix(CODE_PREFIX) {
                match bit.parse::<u32>() {
                    Ok(n) if n < CODE_BITS && format!("{n:02}") == bit => code |= 1 << n,
                    _ => other = true,
                }
            } else if let Some(term) = keyword.strip_prefix(LEASE_PREFIX) {
                match term.parse::<u64>() {
                    Ok(seconds) if seconds > 0 && seconds.to_string() == term => {
                        terms.push(seconds)
                    }
                    _ => other = true,
                }
            } else if keyword == BEAT {
                beat = 1;
            }
        }
        if code == 0 && terms.is_empty() && !other {
            return if beat == 1 {
                Reading::Mixed {
                    token: "beat".to_owned(),
                    seconds: default_seconds.max(1),
                }
            } else {
                Reading::Free
            };
        }
        if code.count_ones() == CODE_WEIGHT && terms.len() == 1 && !other {
            return Reading::One(Lease {
                code,
                seconds: terms[0],
                beat,
            });
        }
        terms.sort_unstable();
        let seconds = terms.last().copied().unwrap_or(default_seconds).max(1);
        let token = format!(
            "mixed-{code:08x}-{}-{beat}{}",
            terms
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join("."),
            if other { "-x" } else { "" }
        );
        Reading::Mixed { token, seconds }
    }

    /// Whether any lease keyword is on the mail.
    pub fn present(keywords: &BTreeSet<String>) -> bool {
        keywords.iter().any(|k| is_lease_keyword(k))
    }
}

/// The claim write of `lease` on a mail whose keywords were `seen`: sets the lease's keywords
/// (and [`CLAIMED`]) and clears every other lease keyword of the vocabulary and every one seen,
/// so that the lease keywords are the last such writer's, while the marks (`$taskmail-result`,
/// `$taskmail-done`, `$taskmail-acked`) are never touched: a claim write that lands late cannot
/// erase the commit point another daemon set meanwhile, as a whole-set write would.
fn lease_write(seen: &BTreeSet<String>, lease: &Lease, claimed: bool) -> KeywordWrite {
    let mut add = lease.keywords();
    if claimed {
        add.push(CLAIMED.to_owned());
    }
    let mut remove: Vec<String> = (0..CODE_BITS)
        .filter(|bit| lease.code & (1 << bit) == 0)
        .map(|bit| format!("{CODE_PREFIX}{bit:02}"))
        .collect();
    if lease.beat == 0 {
        remove.push(BEAT.to_owned());
    }
    for keyword in seen.iter().filter(|k| is_lease_keyword(k)) {
        let lower = keyword.to_ascii_lowercase();
        if !add.contains(&lower) && !remove.contains(&lower) {
            remove.push(keyword.clone());
        }
    }
    KeywordWrite::Patch { add, remove }
}

/// The keywords to remove to drop the lease with `token` (its code, term and beat).
fn lease_keywords_of(token: &str) -> Vec<String> {
    let Some(lease) = Lease::from_token(token) else {
        return Vec::new();
    };
    let mut keywords = Lease { beat: 0, ..lease }.keywords();
    keywords.push(BEAT.to_owned());
    keywords
}

/// The seconds of a watched reading's token ([`Reading::token`]).
fn token_seconds(token: &str) -> Option<u64> {
    if let Some(lease) = Lease::from_token(token) {
        return Some(lease.seconds);
    }
    let rest = token.strip_prefix("mixed-")?;
    let terms = rest.split('-').nth(1)?;
    terms.split('.').filter_map(|t| t.parse().ok()).max()
}

/// Whether `keywords` say the task is over or its result is on its way.
pub fn finished(keywords: &BTreeSet<String>) -> bool {
    keywords.contains(RESULT) || keywords.contains(DONE)
}

/// A spread in `0..1` that differs per daemon and mail: watchers of the same mail do not all
/// try a takeover at once, and daemons do not take the same backlog mail first.
fn spread(owner: &str, id: &str) -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write(owner.as_bytes());
    hasher.write(id.as_bytes());
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// A random owner name: 8 lowercase hex digits.
pub fn random_owner() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..8].to_owned()
}

/// The store key of a lease this daemon holds (value: `<keyword> <marks found at the claim>`,
/// or `lost`).
pub(crate) fn held_key(account: &str, email_id: &str) -> String {
    format!("lease/{account}/{email_id}")
}

/// The store key of a mail another daemon holds (value: the keyword seen).
pub(crate) fn watch_key(account: &str, email_id: &str) -> String {
    format!("watch/{account}/{email_id}")
}

/// The store key of a mail left for later (value: empty).
pub(crate) fn backlog_key(account: &str, email_id: &str) -> String {
    format!("backlog/{account}/{email_id}")
}

/// The held-lease value of a lease that was lost.
const LOST: &str = "lost";

/// A lease we hold.
#[derive(Debug, Clone)]
pub(crate) struct Held {
    /// Our keyword on the mail now.
    keyword: String,
    /// When the request of our last confirmed write left (freshness).
    written: Instant,
    /// Another daemon has it now: send nothing, run nothing.
    lost: bool,
    /// Marks that were on the mail when we claimed it (an earlier holder's).
    found: BTreeSet<String>,
}

/// A mail another daemon leases, and since when we saw no change of it.
#[derive(Debug, Clone)]
struct Watched {
    keyword: String,
    since: Instant,
    /// Added to the lease before we try a takeover (a quarter of it at most).
    slack: Duration,
}

/// The leases we hold and the ones we watch.
#[derive(Debug, Default)]
pub(crate) struct Book {
    /// Our owner name in lease keywords (empty in a dispatcher-only pipeline).
    pub(crate) owner: String,
    held: Mutex<HashMap<String, Held>>,
    watched: Mutex<HashMap<String, Watched>>,
    /// Mails (and our lease token) whose claim write was answered in time but whose read-back
    /// failed (the server went away): a later round may claim them again at once (module docs,
    /// "A read-back that failed"). In memory only: after a crash the timing is unknown.
    unconfirmed: Mutex<HashMap<String, String>>,
    /// Free mail we left for later: claimed only when we have room to run it, so that the
    /// other daemons on the mailbox get their share meanwhile.
    backlog: Mutex<VecDeque<String>>,
    /// A run ended: there may be room for the backlog.
    pub(crate) room: tokio::sync::Notify,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Book {
    /// A book for `owner`.
    pub(crate) fn new(owner: String) -> Book {
        Book {
            owner,
            ..Book::default()
        }
    }
}

/// What the outbox may do with an ack or result of a leased mail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Guard {
    /// Send it (the mark is set, or the mail is not leased by us).
    Send,
    /// Another daemon holds the task now, or acked it already: never send this one.
    Superseded(String),
    /// Our lease is stale or the mark could not be set: try again later.
    Wait(String),
}

/// Why a lease round failed (retried on the next round).
#[derive(Debug, thiserror::Error)]
pub(crate) enum LeaseError {
    #[error("cannot update the lease in the mailbox")]
    Mail(#[from] JmapError),
    #[error("cannot read the lease records")]
    Store(#[from] StoreError),
}

/// What a write, wait and read-back round saw ([`Core::round`]).
struct Round {
    /// When the write's request left (the lease's freshness starts there).
    sent: Instant,
    /// The keywords read back, for the writes the server took.
    back: HashMap<String, BTreeSet<String>>,
    /// Mails whose write the server refused (not not-found).
    refused: Vec<String>,
}

/// What a claim candidate is, judged from its keywords.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Standing {
    /// Free, or our own lease (restart), or a watched lease that expired: claim it (the
    /// keyword to replace, if any).
    Claimable(Option<String>),
    /// Another daemon's live lease (the keyword): watch it.
    Leased(String),
    /// Result or done set: the task is over elsewhere.
    Finished,
}

impl<M, S, A> Core<M, S, A>
where
    M: MailStore + 'static,
    S: Submit + 'static,
    A: Execute + 'static,
{
    /// This daemon's lease (first beat).
    pub(crate) fn own_lease(&self) -> Lease {
        Lease::of(&self.book.owner, self.lease_seconds())
    }

    /// `worker.lease` in whole seconds (at least 1).
    fn lease_seconds(&self) -> u64 {
        self.settings.lease.as_secs().max(1)
    }

    /// What the lease keywords on a mail say.
    fn reading(&self, keywords: &BTreeSet<String>) -> Reading {
        Lease::read(keywords, self.lease_seconds())
    }

    fn fresh_for(&self) -> Duration {
        self.settings.lease / 2
    }

    /// Loads the held leases and the watch list from the store (at start): held leases are
    /// stale until the keeper confirms them; watches start now.
    pub(crate) fn load_leases(&self) -> Result<(), StoreError> {
        let held_prefix = held_key(&self.key, "");
        let watch_prefix = watch_key(&self.key, "");
        let (held, watched) = self.db.with(|s| {
            Ok((
                s.kv_with_prefix(&held_prefix)?,
                s.kv_with_prefix(&watch_prefix)?,
            ))
        })?;
        let stale = Instant::now()
            .checked_sub(self.settings.lease)
            .unwrap_or_else(Instant::now);
        let mut book = lock(&self.book.held);
        for (key, value) in held {
            let Some(id) = key.strip_prefix(&held_prefix) else {
                continue;
            };
            let mut parts = value.split(' ');
            let keyword = parts.next().unwrap_or_default().to_owned();
            let found = parts
                .next()
                .map(|m| {
                    m.split(',')
                        .filter(|m| !m.is_empty())
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default();
            book.insert(
                id.to_owned(),
                Held {
                    lost: keyword == LOST,
                    keyword,
                    written: stale,
                    found,
                },
            );
        }
        drop(book);
        let backlog_prefix = backlog_key(&self.key, "");
        let backlog = self.db.with(|s| s.kv_with_prefix(&backlog_prefix))?;
        lock(&self.book.backlog).extend(
            backlog
                .into_iter()
                .filter_map(|(key, _)| key.strip_prefix(&backlog_prefix).map(str::to_owned)),
        );
        let now = Instant::now();
        let mut book = lock(&self.book.watched);
        for (key, keyword) in watched {
            if let Some(id) = key.strip_prefix(&watch_prefix) {
                book.insert(
                    id.to_owned(),
                    Watched {
                        slack: self
                            .settings
                            .lease
                            .mul_f64(spread(&self.book.owner, id) / 4.0),
                        keyword,
                        since: now,
                    },
                );
            }
        }
        Ok(())
    }

    fn persist_held(&self, id: &str, held: &Held) {
        let value = if held.lost {
            LOST.to_owned()
        } else {
            let found: Vec<&str> = held.found.iter().map(String::as_str).collect();
            format!("{} {}", held.keyword, found.join(","))
        };
        let now = self.now();
        if let Err(error) = self
            .db
            .with(|s| s.kv_set(&held_key(&self.key, id), &value, now))
        {
            tracing::warn!(email_id = %id, error = %crate::transport::smtp::error_chain(&error), "cannot record a lease");
        }
    }

    /// Forgets a lease (the mail is done or gone).
    pub(crate) fn forget(&self, id: &str) {
        lock(&self.book.held).remove(id);
        let _ = self.db.with(|s| s.kv_delete(&held_key(&self.key, id)));
    }

    fn lose(&self, id: &str, why: &str) {
        let mut book = lock(&self.book.held);
        if let Some(held) = book.get_mut(id) {
            if !held.lost {
                tracing::warn!(email_id = %id, reason = why, "lost the lease on this mail: its task is another daemon's now");
            }
            held.lost = true;
            let held = held.clone();
            drop(book);
            self.persist_held(id, &held);
        }
    }

    /// Starts (or keeps) watching a mail leased with `keyword`.
    pub(crate) fn watch(&self, id: &str, keyword: &str) {
        let mut book = lock(&self.book.watched);
        let same = book.get(id).is_some_and(|w| w.keyword == keyword);
        if same {
            return;
        }
        book.insert(
            id.to_owned(),
            Watched {
                keyword: keyword.to_owned(),
                since: Instant::now(),
                slack: self
                    .settings
                    .lease
                    .mul_f64(spread(&self.book.owner, id) / 4.0),
            },
        );
        drop(book);
        let now = self.now();
        let _ = self
            .db
            .with(|s| s.kv_set(&watch_key(&self.key, id), keyword, now));
    }

    /// Stops watching `id` (settled, or claimed by us).
    pub(crate) fn unwatch(&self, id: &str) {
        if lock(&self.book.watched).remove(id).is_some() {
            let _ = self.db.with(|s| s.kv_delete(&watch_key(&self.key, id)));
        }
    }

    /// How many more mails we may claim now: eight times the run slots (at least 64: a claim
    /// round takes `claim-wait`, runs may take milliseconds), less what waits or runs.
    pub(crate) fn room(&self) -> usize {
        let slots = (self.queue.concurrency().max(1) * 8).max(64);
        slots.saturating_sub(self.queue.len() + self.queue.running())
    }

    /// Leaves free mail for later (no room to run it now).
    pub(crate) fn defer(&self, ids: &[String]) {
        if ids.is_empty() {
            return;
        }
        let mut backlog = lock(&self.book.backlog);
        for id in ids {
            if !backlog.contains(id) {
                backlog.push_back(id.clone());
            }
        }
        drop(backlog);
        let now = self.now();
        let _ = self.db.atomically(|s| {
            for id in ids {
                s.kv_set(&backlog_key(&self.key, id), "", now)?;
            }
            Ok(())
        });
    }

    /// Takes up to `room` mails from the backlog, for another look: from the oldest quarter
    /// (at least `room`), in an order of its own, so that daemons sharing a backlog do not all
    /// go for the same mails.
    pub(crate) fn take_backlog(&self, room: usize) -> Vec<String> {
        let mut backlog = lock(&self.book.backlog);
        let n = room.min(backlog.len());
        let window = (backlog.len() / 4).max(n).min(backlog.len());
        let mut order: Vec<(u64, usize)> = (0..window)
            .map(|i| {
                let id = &backlog[i];
                ((spread(&self.book.owner, id) * 1e9) as u64, i)
            })
            .collect();
        order.sort_unstable();
        let mut picked: Vec<usize> = order.into_iter().take(n).map(|(_, i)| i).collect();
        picked.sort_unstable_by(|a, b| b.cmp(a));
        let mut ids: Vec<String> = picked
            .into_iter()
            .filter_map(|i| backlog.remove(i))
            .collect();
        ids.reverse();
        drop(backlog);
        let _ = self.db.atomically(|s| {
            for id in &ids {
                s.kv_delete(&backlog_key(&self.key, id))?;
            }
            Ok(())
        });
        ids
    }

    /// Whether mail waits in the backlog.
    pub(crate) fn has_backlog(&self) -> bool {
        !lock(&self.book.backlog).is_empty()
    }

    /// Restarts the watch of every watched mail in `updated` (an `Email/changes` pass): a
    /// changed mail has a live holder.
    pub(crate) fn saw_updates(&self, updated: &[String]) {
        let mut book = lock(&self.book.watched);
        if book.is_empty() {
            return;
        }
        let now = Instant::now();
        for id in updated {
            if let Some(watch) = book.get_mut(id) {
                watch.since = now;
            }
        }
    }

    /// Restarts every watch (the changes since the saved state are unknown).
    pub(crate) fn restart_watches(&self) {
        let now = Instant::now();
        for watch in lock(&self.book.watched).values_mut() {
            watch.since = now;
        }
    }

    /// Watched mails whose lease may have expired: looked at again.
    pub(crate) fn expired_watches(&self) -> Vec<String> {
        let now = Instant::now();
        let default = self.lease_seconds();
        lock(&self.book.watched)
            .iter()
            .filter(|(_, w)| {
                let seconds = token_seconds(&w.keyword).unwrap_or(default);
                now.duration_since(w.since) >= Duration::from_secs(seconds) + w.slack
            })
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Whether we have a lease record on `id`, lost or not.
    pub(crate) fn holds_any(&self, id: &str) -> bool {
        lock(&self.book.held).contains_key(id)
    }

    /// Whether we hold a live (not lost) lease on `id`.
    pub(crate) fn holds(&self, id: &str) -> bool {
        lock(&self.book.held).get(id).is_some_and(|h| !h.lost)
    }

    fn standing(&self, id: &str, keywords: &BTreeSet<String>) -> Standing {
        if finished(keywords) {
            return Standing::Finished;
        }
        let reading = self.reading(keywords);
        let (keyword, seconds) = match &reading {
            Reading::Free => return Standing::Claimable(None),
            Reading::One(lease) => (lease.token(), lease.seconds),
            Reading::Mixed { token, seconds } => (token.clone(), *seconds),
        };
        if matches!(reading, Reading::One(_))
            && (lock(&self.book.held)
                .get(id)
                .is_some_and(|h| !h.lost && h.keyword == keyword)
                || lock(&self.book.unconfirmed).get(id) == Some(&keyword))
        {
            return Standing::Claimable(Some(keyword));
        }
        // NOTE: a mixed reading is nobody's (every claimer that read it back lost), so it is
        // taken over like a silent lease.
        let expired = lock(&self.book.watched).get(id).is_some_and(|w| {
            w.keyword == keyword
                && Instant::now().duration_since(w.since) >= Duration::from_secs(seconds)
        });
        if expired {
            Standing::Claimable(Some(keyword))
        } else {
            Standing::Leased(keyword)
        }
    }

    /// Mail to look at again (expired watches, the backlog), less what is still leased by
    /// another daemon (watched on, not screened again: screening counts against the sender's
    /// rate limit).
    pub(crate) async fn worth_a_look(&self, ids: Vec<String>) -> Result<Vec<String>, LeaseError> {
        if ids.is_empty() {
            return Ok(ids);
        }
        let current = self.mail.get_keywords(&ids).await?;
        let mut keep = Vec::with_capacity(ids.len());
        for (id, keywords) in current {
            match self.standing(&id, &keywords) {
                Standing::Leased(keyword) => self.watch(&id, &keyword),
                Standing::Claimable(_) | Standing::Finished => keep.push(id),
            }
        }
        Ok(keep)
    }

    /// The claim protocol (module docs) for a batch: returns the ids we own now. Mail leased
    /// by another daemon is watched; mail whose task is over elsewhere is in `finished`.
    pub(crate) async fn claim_batch(
        &self,
        ids: &[String],
    ) -> Result<(HashSet<String>, HashSet<String>), LeaseError> {
        let mut won = HashSet::new();
        let mut over = HashSet::new();
        if ids.is_empty() {
            return Ok((won, over));
        }
        let wait = self.settings.claim_wait;
        let read_at = Instant::now();
        let current = self.mail.get_keywords(ids).await?;
        let mut writes = Vec::new();
        let mut found: HashMap<String, BTreeSet<String>> = HashMap::new();
        for (id, keywords) in current {
            match self.standing(&id, &keywords) {
                Standing::Finished => {
                    over.insert(id);
                }
                Standing::Leased(keyword) => self.watch(&id, &keyword),
                Standing::Claimable(Some(old))
                    if self.holds(&id)
                        && lock(&self.book.held)
                            .get(&id)
                            .is_some_and(|h| h.keyword == old) =>
                {
                    // NOTE: already ours (a restart re-reads its last batch): the keeper
                    // confirms it (a stale lease gets a full round); nothing runs or is sent
                    // until then (`may_run`, `guard`).
                    won.insert(id);
                }
                Standing::Claimable(_) => {
                    let ours = self.own_lease();
                    let write = lease_write(&keywords, &ours, true);
                    found.insert(
                        id.clone(),
                        keywords.iter().filter(|k| *k == ACKED).cloned().collect(),
                    );
                    writes.push((id, ours.token(), write));
                }
            }
        }
        if writes.is_empty() {
            return Ok((won, over));
        }
        let Some(round) = self.round(read_at, &writes).await? else {
            tracing::warn!(
                limit_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                "a claim took longer than worker.claim-wait; not entered: its mails wait a lease for a takeover (raise worker.claim-wait on a slow server)"
            );
            for (id, keyword, _) in &writes {
                self.lose(id, "claim too slow");
                self.watch(id, keyword);
            }
            return Ok((won, over));
        };
        let sent = round.sent;
        self.defer(&round.refused);
        for (id, keyword, _) in writes {
            let Some(keywords) = round.back.get(&id) else {
                continue;
            };
            let reading = self.reading(keywords);
            let mine = reading.token().as_deref() == Some(keyword.as_str()) && !finished(keywords);
            if mine {
                let held = Held {
                    keyword,
                    written: sent,
                    lost: false,
                    found: found.remove(&id).unwrap_or_default(),
                };
                lock(&self.book.held).insert(id.clone(), held.clone());
                self.persist_held(&id, &held);
                self.unwatch(&id);
                won.insert(id);
            } else if finished(keywords) {
                self.lose(&id, "finished elsewhere");
                over.insert(id);
            } else {
                self.lose(&id, "claimed by another daemon");
                self.watch(&id, &reading.token().unwrap_or_default());
            }
        }
        Ok((won, over))
    }

    /// One renewal round over every lease we hold (module docs): fresh leases flip their beat
    /// with a patch; stale ones go through a full claim round; a mail that shows another lease
    /// (or lost ours) is lost.
    pub(crate) async fn keep_leases(&self) -> Result<(), LeaseError> {
        let held: Vec<(String, Held)> = lock(&self.book.held)
            .iter()
            .filter(|(_, h)| !h.lost)
            .map(|(id, h)| (id.clone(), h.clone()))
            .collect();
        if held.is_empty() {
            return Ok(());
        }
        let ids: Vec<String> = held.iter().map(|(id, _)| id.clone()).collect();
        let read_at = Instant::now();
        let current: HashMap<String, BTreeSet<String>> =
            self.mail.get_keywords(&ids).await?.into_iter().collect();
        let mut patches = Vec::new();
        let mut stale = Vec::new();
        for (id, h) in held {
            let Some(keywords) = current.get(&id) else {
                self.forget(&id);
                continue;
            };
            if keywords.contains(DONE) {
                // NOTE: we still hold it, so we did not finish it (`mark_done` forgets what it
                // marks): another daemon took it over and answered. Forgetting it would let
                // our own pending ack or result through `guard` (no entry = not ours to
                // check); losing it supersedes them.
                self.lose(&id, "another daemon finished the task");
                continue;
            }
            let lease = match self.reading(keywords) {
                Reading::One(lease) if lease.token() == h.keyword => lease,
                _ => {
                    self.lose(&id, "another lease is on the mail");
                    continue;
                }
            };
            let next = lease.renewed();
            if read_at.duration_since(h.written) < self.fresh_for() {
                let beat = vec![BEAT.to_owned()];
                let (add, remove) = if next.beat == 1 {
                    (beat, Vec::new())
                } else {
                    (Vec::new(), beat)
                };
                patches.push((id, next.token(), KeywordWrite::Patch { add, remove }));
            } else {
                stale.push((id, next.token(), lease_write(keywords, &next, false)));
            }
        }
        // Fresh: a patch each, in one call.
        if !patches.is_empty() {
            let batch: Vec<(String, KeywordWrite)> = patches
                .iter()
                .map(|(id, _, w)| (id.clone(), w.clone()))
                .collect();
            let sent = Instant::now();
            let outcomes = self.mail.write_keywords(&batch).await?;
            for ((id, next, _), outcome) in patches.into_iter().zip(outcomes) {
                match outcome {
                    Ok(()) => self.renewed(&id, next, sent),
                    Err(error) if error.is_not_found() => self.forget(&id),
                    Err(error) => {
                        tracing::debug!(email_id = %id, error = %error, "cannot renew a lease now")
                    }
                }
            }
        }
        // Stale: the claim round again (write, wait, read back), within the timing bound.
        if !stale.is_empty() {
            let Some(round) = self.round(read_at, &stale).await? else {
                for (id, _, _) in &stale {
                    self.lose(id, "renewal of a stale lease too slow");
                }
                return Ok(());
            };
            for (id, next, _) in stale {
                let token = round.back.get(&id).and_then(|k| self.reading(k).token());
                if token.as_deref() == Some(next.as_str()) {
                    tracing::info!(email_id = %id, "stale lease confirmed ours again");
                    self.renewed(&id, next, round.sent);
                } else {
                    self.lose(&id, "a stale lease did not confirm");
                }
            }
        }
        Ok(())
    }

    /// Notes writes that landed in time but were never read back (module docs).
    fn unconfirmed<'a>(&self, writes: impl Iterator<Item = (&'a String, &'a String)>) {
        let mut unconfirmed = lock(&self.book.unconfirmed);
        for (id, token) in writes {
            unconfirmed.insert(id.clone(), token.clone());
        }
    }

    /// The write, wait and read-back of a claim round (module docs) whose read left at
    /// `read_at`: `writes` are (email id, our lease token, write). `None` when the write was
    /// answered later than `claim-wait` after the read (enter none). The read-back
    /// covers the writes the server took; refused ones are logged and returned.
    async fn round(
        &self,
        read_at: Instant,
        writes: &[(String, String, KeywordWrite)],
    ) -> Result<Option<Round>, LeaseError> {
        let wait = self.settings.claim_wait;
        let batch: Vec<(String, KeywordWrite)> = writes
            .iter()
            .map(|(id, _, w)| (id.clone(), w.clone()))
            .collect();
        let sent = Instant::now();
        let outcomes = match self.mail.write_keywords(&batch).await {
            Ok(outcomes) => outcomes,
            Err(error) => {
                // NOTE: a failure seen within the bound means the write, if it landed at all,
                // landed within it (the server that took it answered or died by then).
                if read_at.elapsed() <= wait {
                    self.unconfirmed(writes.iter().map(|(id, token, _)| (id, token)));
                }
                return Err(error.into());
            }
        };
        let answered = Instant::now();
        if answered.duration_since(read_at) > wait {
            tracing::debug!(
                took_ms =
                    u64::try_from(answered.duration_since(read_at).as_millis()).unwrap_or(u64::MAX),
                "lease write answered too late"
            );
            return Ok(None);
        }
        let mut refused = Vec::new();
        let mut taken = Vec::new();
        for ((id, _, _), outcome) in writes.iter().zip(outcomes) {
            match outcome {
                Ok(()) => taken.push(id.clone()),
                Err(error) if error.is_not_found() => {}
                Err(error) => {
                    let error = crate::transport::smtp::error_chain(&error);
                    tracing::warn!(email_id = %id, error = %error, "the server refused the lease keywords on this mail; tried again later (taskmail doctor shows the last refusal)");
                    self.health.claim_failed(&error, self.now());
                    refused.push(id.clone());
                }
            }
        }
        if !taken.is_empty() {
            self.health.claimed(self.now());
        }
        tokio::time::sleep_until(answered + wait).await;
        let back = match self.mail.get_keywords(&taken).await {
            Ok(back) => back.into_iter().collect(),
            Err(error) => {
                self.unconfirmed(
                    writes
                        .iter()
                        .filter(|(id, _, _)| taken.contains(id))
                        .map(|(id, token, _)| (id, token)),
                );
                return Err(error.into());
            }
        };
        {
            let mut unconfirmed = lock(&self.book.unconfirmed);
            for id in &taken {
                unconfirmed.remove(id);
            }
        }
        Ok(Some(Round {
            sent,
            back,
            refused,
        }))
    }

    fn renewed(&self, id: &str, keyword: String, sent: Instant) {
        let mut book = lock(&self.book.held);
        let Some(held) = book.get_mut(id) else {
            return;
        };
        if held.lost {
            return;
        }
        held.keyword = keyword;
        held.written = sent;
        let held = held.clone();
        drop(book);
        self.persist_held(id, &held);
    }

    /// Whether the task's mails may run now: none lost, and every one we hold fresh. Waits
    /// (up to the lease) for the keeper to confirm stale leases after a restart.
    pub(crate) async fn may_run(&self, emails: &[String]) -> bool {
        let deadline = Instant::now() + self.settings.lease;
        loop {
            let (lost, stale) = {
                let book = lock(&self.book.held);
                let now = Instant::now();
                let mut lost = false;
                let mut stale = false;
                for id in emails {
                    if let Some(h) = book.get(id) {
                        lost |= h.lost;
                        stale |= now.duration_since(h.written) >= self.fresh_for();
                    }
                }
                (lost, stale)
            };
            if lost {
                return false;
            }
            if !stale || Instant::now() >= deadline {
                return !stale;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The outbox's check before an ack ([`ACKED`]) or result ([`RESULT`]) goes out: on every
    /// mail we hold, sets the mark with a patch while our lease is fresh. One `Email/set` for
    /// all `wants` (email id, mark). Mail we hold no lease on is not checked (claimed before
    /// leases, or for a task we dispatched).
    pub(crate) async fn guard(
        &self,
        wants: &[(String, &'static str)],
    ) -> Result<HashMap<(String, &'static str), Guard>, LeaseError> {
        let mut verdicts = HashMap::new();
        let mut patches: Vec<(String, &'static str)> = Vec::new();
        {
            let book = lock(&self.book.held);
            let now = Instant::now();
            for (id, mark) in wants {
                let verdict = match book.get(id) {
                    None => Guard::Send,
                    Some(h) if h.lost => {
                        Guard::Superseded(format!("the lease on email {id} was lost"))
                    }
                    Some(h) if *mark == ACKED && h.found.contains(ACKED) => {
                        Guard::Superseded(format!("email {id} was acked by an earlier holder"))
                    }
                    Some(h) if now.duration_since(h.written) >= self.fresh_for() => {
                        Guard::Wait(format!("the lease on email {id} is not confirmed yet"))
                    }
                    Some(_) => {
                        patches.push((id.clone(), mark));
                        continue;
                    }
                };
                verdicts.insert((id.clone(), *mark), verdict);
            }
        }
        if patches.is_empty() {
            return Ok(verdicts);
        }
        let batch: Vec<(String, KeywordWrite)> = patches
            .iter()
            .map(|(id, mark)| {
                (
                    id.clone(),
                    KeywordWrite::Patch {
                        add: vec![(*mark).to_owned()],
                        remove: Vec::new(),
                    },
                )
            })
            .collect();
        let sent = Instant::now();
        let outcomes = self.mail.write_keywords(&batch).await?;
        let answered = Instant::now();
        for ((id, mark), outcome) in patches.into_iter().zip(outcomes) {
            let verdict = match outcome {
                Ok(()) => {
                    let fresh = lock(&self.book.held).get(&id).is_some_and(|h| {
                        !h.lost && answered.duration_since(h.written) < self.settings.lease
                    });
                    if fresh {
                        let mut book = lock(&self.book.held);
                        if let Some(h) = book.get_mut(&id) {
                            h.written = h.written.max(sent);
                        }
                        Guard::Send
                    } else {
                        Guard::Wait(format!("the mark on email {id} came too late"))
                    }
                }
                Err(error) if error.is_not_found() => {
                    self.forget(&id);
                    Guard::Send
                }
                Err(error) => Guard::Wait(format!("cannot mark email {id}: {error}")),
            };
            verdicts.insert((id, mark), verdict);
        }
        Ok(verdicts)
    }

    /// Marks mails `$taskmail-done` and drops our lease keyword, in one `Email/set` (best
    /// effort: the store is the record; a lease left behind is taken over and seen done).
    pub(crate) async fn mark_done(&self, emails: &[String]) {
        if emails.is_empty() {
            return;
        }
        let batch: Vec<(String, KeywordWrite)> = {
            let book = lock(&self.book.held);
            emails
                .iter()
                .map(|id| {
                    let remove = book
                        .get(id)
                        .filter(|h| !h.lost)
                        .map(|h| lease_keywords_of(&h.keyword))
                        .unwrap_or_default();
                    (
                        id.clone(),
                        KeywordWrite::Patch {
                            add: vec![DONE.to_owned()],
                            remove,
                        },
                    )
                })
                .collect()
        };
        match self.mail.write_keywords(&batch).await {
            Ok(outcomes) => {
                for ((id, _), outcome) in batch.iter().zip(outcomes) {
                    match outcome {
                        Ok(()) => self.forget(id),
                        Err(error) if error.is_not_found() => self.forget(id),
                        Err(error) => {
                            tracing::warn!(email_id = %id, error = %crate::transport::smtp::error_chain(&error), "cannot mark the mail done")
                        }
                    }
                }
            }
            Err(error) => {
                tracing::warn!(error = %crate::transport::smtp::error_chain(&error), "cannot mark mail done");
            }
        }
    }

    /// Drops our lease keyword from a mail we will not run (quarantine).
    pub(crate) async fn release(&self, id: &str) {
        let keyword = lock(&self.book.held).get(id).map(|h| h.keyword.clone());
        let mut remove = vec![CLAIMED.to_owned()];
        remove.extend(keyword.iter().flat_map(|k| lease_keywords_of(k)));
        let batch = [(
            id.to_owned(),
            KeywordWrite::Patch {
                add: Vec::new(),
                remove,
            },
        )];
        if let Err(error) = self.mail.write_keywords(&batch).await {
            tracing::warn!(error = %crate::transport::smtp::error_chain(&error), "cannot drop the claim of a mail");
        }
        self.forget(id);
    }
}

/// Renews the leases every quarter of `worker.lease`; lives (and dies) with the daemon.
pub(crate) async fn keep<M, S, A>(core: std::sync::Arc<Core<M, S, A>>)
where
    M: MailStore + 'static,
    S: Submit + 'static,
    A: Execute + 'static,
{
    let every = (core.settings.lease / 4).max(Duration::from_millis(250));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(error) = core.keep_leases().await {
            tracing::warn!(error = %crate::transport::smtp::error_chain(&error), "cannot renew leases; next round");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(keywords: &[String]) -> BTreeSet<String> {
        keywords.iter().cloned().collect()
    }

    #[test]
    fn owner_codes_have_sixteen_of_thirty_two_bits_and_differ() {
        let mut seen = HashSet::new();
        for rank in [0, 1, 2, 1000, 601_080_389] {
            let code = code_of_rank(rank);
            assert_eq!(code.count_ones(), CODE_WEIGHT, "rank {rank}");
            assert!(seen.insert(code), "rank {rank}");
        }
        assert_eq!(code_of_rank(0), 0x0000_ffff);
        assert_eq!(code_of_rank(601_080_389), 0xffff_0000);
        for rank in 0..5000u64 {
            assert!(seen.insert(code_of_rank(rank * 120_211 + 7)), "rank {rank}");
        }
        assert_eq!(owner_code("w1"), owner_code("w1"));
        assert_ne!(owner_code("w1"), owner_code("w2"));
    }

    #[test]
    fn lease_keywords_round_trip_flip_and_stay_few() {
        let lease = Lease::of("w1", 60);
        let keywords = lease.keywords();
        assert_eq!(keywords.len(), 17);
        assert!(keywords.contains(&"$taskmail-lease-60".to_owned()));
        for keyword in &keywords {
            assert!(is_lease_keyword(keyword), "{keyword}");
            assert!(crate::transport::jmap::checked_keyword(keyword).is_ok());
        }
        let mut on_mail = set(&keywords);
        on_mail.insert(CLAIMED.to_owned());
        on_mail.insert(ACKED.to_owned());
        assert_eq!(Lease::read(&on_mail, 60), Reading::One(lease));
        let renewed = lease.renewed();
        assert_eq!(renewed.beat, 1);
        assert!(renewed.keywords().contains(&BEAT.to_owned()));
        assert_eq!(
            Lease::read(&set(&renewed.keywords()), 60),
            Reading::One(renewed)
        );
        assert_eq!(renewed.renewed(), lease);
        assert_eq!(Lease::from_token(&lease.token()), Some(lease));
        assert_eq!(token_seconds(&lease.token()), Some(60));
        // Upper case as a server may hand it back.
        let upper: BTreeSet<String> = keywords.iter().map(|k| k.to_ascii_uppercase()).collect();
        assert_eq!(Lease::read(&upper, 60), Reading::One(lease));
        // The keyword names in use do not depend on the owner: any number of owners over a
        // mailbox's life use the 32 code keywords, the beat and one term per lease length.
        let mut names = BTreeSet::new();
        for n in 0..500 {
            let lease = Lease::of(&format!("owner{n}"), 60);
            names.extend(lease.keywords());
            names.extend(lease.renewed().keywords());
        }
        assert_eq!(names.len(), 34);
    }

    #[test]
    fn merged_or_foreign_lease_keywords_read_as_nobodys() {
        let a = Lease::of("a", 60);
        let b = Lease::of("b", 60);
        let mut merged = set(&a.keywords());
        merged.extend(b.keywords());
        let Reading::Mixed { seconds, token } = Lease::read(&merged, 30) else {
            panic!("a merge of two codes must not read as one lease");
        };
        assert_eq!(seconds, 60);
        assert_eq!(token_seconds(&token), Some(60));
        let mut two_terms = set(&a.keywords());
        two_terms.insert("$taskmail-lease-120".to_owned());
        assert!(matches!(
            Lease::read(&two_terms, 30),
            Reading::Mixed { seconds: 120, .. }
        ));
        // An older release's lease: nobody's, with the reader's own term.
        let old = set(&["$taskmail-lease-w1-60-0".to_owned(), CLAIMED.to_owned()]);
        assert!(Lease::present(&old));
        assert!(matches!(
            Lease::read(&old, 30),
            Reading::Mixed { seconds: 30, .. }
        ));
        for odd in ["$taskmail-lo-5", "$taskmail-lo-32", "$taskmail-lease-060"] {
            let mut keywords = set(&a.keywords());
            keywords.insert(odd.to_owned());
            assert!(
                matches!(Lease::read(&keywords, 30), Reading::Mixed { .. }),
                "{odd}"
            );
        }
        let free = set(&[CLAIMED.to_owned(), ACKED.to_owned(), "$seen".to_owned()]);
        assert_eq!(Lease::read(&free, 30), Reading::Free);
        assert!(!Lease::present(&free));
        for bad in [
            "0000ffff-60",
            "0000fff0-60-0",
            "0000ffff-0-0",
            "0000ffff-60-2",
            "x-60-0",
        ] {
            assert_eq!(Lease::from_token(bad), None, "{bad}");
        }
        let mut dropped = set(&a.renewed().keywords());
        for keyword in lease_keywords_of(&a.renewed().token()) {
            dropped.remove(&keyword);
        }
        assert!(dropped.is_empty(), "{dropped:?}");
    }

    /// What a keyword write leaves on a mail that had `before`.
    fn apply(before: &BTreeSet<String>, write: &KeywordWrite) -> BTreeSet<String> {
        match write {
            KeywordWrite::Replace(all) => all.clone(),
            KeywordWrite::Patch { add, remove } => {
                let mut after: BTreeSet<String> = before
                    .iter()
                    .filter(|k| !remove.iter().any(|r| r.eq_ignore_ascii_case(k)))
                    .cloned()
                    .collect();
                after.extend(add.iter().cloned());
                after
            }
        }
    }

    #[test]
    fn a_claim_write_replaces_any_lease_and_keeps_the_marks() {
        let a = Lease::of("a", 60);
        let b = Lease::of("b", 90).renewed();
        let marks = [RESULT.to_owned(), ACKED.to_owned(), "$seen".to_owned()];
        let write = lease_write(&set(&a.keywords()), &b, true);
        // The write lands after the marks and another beat were set: it keeps them.
        let mut now = set(&a.renewed().keywords());
        now.extend(marks.iter().cloned());
        let after = apply(&now, &write);
        let mut leases = after.clone();
        for mark in marks.iter().chain([&CLAIMED.to_owned()]) {
            assert!(leases.remove(mark), "{mark} kept");
        }
        assert_eq!(leases, set(&b.keywords()));
        assert_eq!(Lease::read(&after, 60), Reading::One(b));
        // A lease term it did not see stays: the mail then reads as nobody's (never as ours).
        now.insert("$taskmail-lease-30".to_owned());
        assert!(matches!(
            Lease::read(&apply(&now, &write), 60),
            Reading::Mixed { .. }
        ));
        // Last writer wins, whichever order: both orders read as the last one's lease (with
        // the same term; daemons with different terms leave a mixed reading, nobody's).
        let free = set(&marks);
        let a = Lease::of("a", 90);
        let wa = lease_write(&free, &a, true);
        let wb = lease_write(&free, &b, true);
        assert_eq!(
            Lease::read(&apply(&apply(&free, &wa), &wb), 60),
            Reading::One(b)
        );
        assert_eq!(
            Lease::read(&apply(&apply(&free, &wb), &wa), 60),
            Reading::One(a)
        );
    }

    #[test]
    fn finished_means_result_or_done() {
        let mut k = BTreeSet::new();
        assert!(!finished(&k));
        k.insert(ACKED.to_owned());
        assert!(!finished(&k));
        k.insert(RESULT.to_owned());
        assert!(finished(&k));
    }

    #[test]
    fn random_owners_are_valid_and_differ() {
        let a = random_owner();
        let b = random_owner();
        assert!(crate::config::valid_lease_owner(&a), "{a}");
        assert_ne!(a, b);
    }
}
