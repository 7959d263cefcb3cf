//! Leases: many daemons on one mailbox (README "Many workers, one mailbox").
//!
//! # Why not `ifInState`
//!
//! JMAP's `ifInState` looks like a compare-and-swap, but measured on both Stalwart and Cyrus two
//! concurrent updates made from the same state can both succeed, and every new delivery changes
//! the mailbox-wide Email state, so guarded claims keep failing under load. The claim protocol
//! here needs neither: it only needs each email's keyword set to behave as a register (a
//! whole-set write is atomic and a later read returns the last write), plus bounded timing.
//!
//! # The claim (Fischer-style mutual exclusion on one email's keywords)
//!
//! A mail is *free* when it carries no lease keyword and neither `$taskmail-result` nor
//! `$taskmail-done`. A claimer, for a batch of mails:
//!
//! 1. reads the keywords (`Email/get` of `keywords` only) at time `r` (when the request left);
//! 2. for each mail still free (or carrying a lease it watched expire, below) writes the whole
//!    keyword set: what it read, minus every lease keyword, plus its own lease. No `ifInState`:
//!    whoever writes last wins on the server. One `Email/set` for the batch;
//! 3. if the answer came back later than `r + delta/2` (`worker.claim-wait` is `delta`), it
//!    enters none of them: its write may have landed after another claimer's read-back;
//! 4. waits `delta`, reads the keywords again, and owns exactly the mails whose only lease is
//!    its own.
//!
//! Why no two daemons own a mail: say A and B both own it, B's confirming read-back the later
//! one. B's read-back saw B's lease, so A's write landed before B's write `w_B` (or after B's
//! read-back, impossible: A's read-back is earlier and saw A's lease). A read the mail free at
//! `r_A`, before `w_B`, else it would have seen B's lease. B read it free at `r_B`, before `w_A`
//! (else it saw A's lease; leases only go at the end), and wrote by `r_B + delta/2 < w_A +
//! delta/2`. A read back at `>= w_A + delta`, after `w_B > w_A`, and so saw B's lease, not its
//! own: a contradiction. The timing bound is checked by the claimer on its own clock (request
//! sent to answer received), so no clock synchronisation is needed.
//!
//! A claim that loses is not an error: the mail is *watched* (someone else has it).
//!
//! # Renewal, takeover, freshness
//!
//! The owner renews every quarter of `worker.lease` by flipping the lease keyword's beat
//! (`...-0` <-> `...-1`). Every keyword change is an update in `Email/changes`, and a watcher
//! restarts its watch on every update of a watched mail. A watcher takes a mail over only after
//! `lease` seconds without any update, by its own clock, and then through the same claim
//! (read, whole-set write, wait, read-back). So while the owner's writes are less than `lease`
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
//! Cyrus keeps at most 128 distinct user flags per mailbox: no timestamps in names. A lease is
//! `$taskmail-lease-<owner>-<seconds>-<beat>`, beat 0 or 1, so each daemon name costs two.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use super::inbound::{CLAIMED, DONE};
use super::{Core, Execute};
use crate::store::StoreError;
use crate::transport::{JmapError, KeywordWrite, MailStore, Submit};

/// The prefix of lease keywords.
pub const LEASE_PREFIX: &str = "$taskmail-lease-";
/// Set before the ack of a claimed mail is submitted.
pub const ACKED: &str = "$taskmail-acked";
/// Set before the result of a claimed mail's task is submitted: no takeover after it.
pub const RESULT: &str = "$taskmail-result";

/// One lease keyword, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The daemon that holds it (`worker.lease-owner`).
    pub owner: String,
    /// How long it holds without renewal, in seconds.
    pub seconds: u64,
    /// Flipped on every renewal.
    pub beat: u8,
}

impl Lease {
    /// The keyword (lowercase, as servers store it).
    pub fn keyword(&self) -> String {
        format!(
            "{LEASE_PREFIX}{}-{}-{}",
            self.owner, self.seconds, self.beat
        )
    }

    /// The same lease, renewed (the other beat).
    pub fn renewed(&self) -> Lease {
        Lease {
            beat: 1 - self.beat.min(1),
            ..self.clone()
        }
    }

    /// Parses a keyword; `None` for anything that is not a lease.
    pub fn parse(keyword: &str) -> Option<Lease> {
        let rest = keyword.to_ascii_lowercase();
        let rest = rest.strip_prefix(LEASE_PREFIX)?;
        let mut parts = rest.split('-');
        let owner = parts.next()?;
        let seconds = parts.next()?.parse::<u64>().ok()?;
        let beat = match parts.next()? {
            "0" => 0,
            "1" => 1,
            _ => return None,
        };
        if parts.next().is_some() || !crate::config::valid_lease_owner(owner) || seconds == 0 {
            return None;
        }
        Some(Lease {
            owner: owner.to_owned(),
            seconds,
            beat,
        })
    }

    /// Every lease keyword in `keywords`.
    pub fn all(keywords: &BTreeSet<String>) -> Vec<Lease> {
        keywords.iter().filter_map(|k| Lease::parse(k)).collect()
    }
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
        Lease {
            owner: self.book.owner.clone(),
            seconds: self.settings.lease.as_secs().max(1),
            beat: 0,
        }
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

    /// How many more mails we may claim now: four times the run slots (at least 32: a claim
    /// round takes `claim-wait`, runs may take milliseconds), less what waits or runs.
    pub(crate) fn room(&self) -> usize {
        let slots = (self.queue.concurrency().max(1) * 4).max(32);
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
        lock(&self.book.watched)
            .iter()
            .filter(|(_, w)| {
                let seconds = Lease::parse(&w.keyword).map_or(0, |l| l.seconds);
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
        let leases = Lease::all(keywords);
        let Some(first) = leases.first() else {
            return Standing::Claimable(None);
        };
        let keyword = first.keyword();
        if leases.len() == 1
            && lock(&self.book.held)
                .get(id)
                .is_some_and(|h| !h.lost && h.keyword == keyword)
        {
            return Standing::Claimable(Some(keyword));
        }
        let expired = leases.len() == 1
            && lock(&self.book.watched).get(id).is_some_and(|w| {
                w.keyword == keyword
                    && Instant::now().duration_since(w.since) >= Duration::from_secs(first.seconds)
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
                    let mut next: BTreeSet<String> = keywords
                        .iter()
                        .filter(|k| Lease::parse(k).is_none())
                        .cloned()
                        .collect();
                    next.insert(CLAIMED.to_owned());
                    next.insert(ours.keyword());
                    found.insert(
                        id.clone(),
                        keywords.iter().filter(|k| *k == ACKED).cloned().collect(),
                    );
                    writes.push((id, ours.keyword(), KeywordWrite::Replace(next)));
                }
            }
        }
        if writes.is_empty() {
            return Ok((won, over));
        }
        let batch: Vec<(String, KeywordWrite)> = writes
            .iter()
            .map(|(id, _, w)| (id.clone(), w.clone()))
            .collect();
        let sent = Instant::now();
        let outcomes = self.mail.write_keywords(&batch).await?;
        let answered = Instant::now();
        if answered.duration_since(read_at) > wait / 2 {
            tracing::warn!(
                took_ms =
                    u64::try_from(answered.duration_since(read_at).as_millis()).unwrap_or(u64::MAX),
                limit_ms = u64::try_from((wait / 2).as_millis()).unwrap_or(u64::MAX),
                "a claim took longer than half of worker.claim-wait; not entered (raise worker.claim-wait on a slow server)"
            );
            for (id, keyword, _) in &writes {
                self.lose(id, "claim too slow");
                self.watch(id, keyword);
            }
            return Ok((won, over));
        }
        let written: Vec<(String, String)> = writes
            .into_iter()
            .zip(outcomes)
            .filter_map(|((id, keyword, _), outcome)| match outcome {
                Ok(()) => Some((id, keyword)),
                Err(error) => {
                    tracing::debug!(email_id = %id, error = %error, "claim not written");
                    None
                }
            })
            .collect();
        tokio::time::sleep_until(answered + wait).await;
        let ids: Vec<String> = written.iter().map(|(id, _)| id.clone()).collect();
        let back: HashMap<String, BTreeSet<String>> =
            self.mail.get_keywords(&ids).await?.into_iter().collect();
        for (id, keyword) in written {
            let Some(keywords) = back.get(&id) else {
                continue;
            };
            let leases = Lease::all(keywords);
            let mine = leases.len() == 1 && leases[0].keyword() == keyword && !finished(keywords);
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
                let theirs = leases
                    .iter()
                    .find(|l| l.keyword() != keyword)
                    .or(leases.first())
                    .map(Lease::keyword)
                    .unwrap_or_default();
                self.watch(&id, &theirs);
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
            let leases = Lease::all(keywords);
            let ours = leases.len() == 1 && leases[0].keyword() == h.keyword;
            if !ours {
                self.lose(&id, "another lease is on the mail");
                continue;
            }
            let next = leases[0].renewed().keyword();
            if read_at.duration_since(h.written) < self.fresh_for() {
                patches.push((
                    id,
                    next.clone(),
                    KeywordWrite::Patch {
                        add: vec![next],
                        remove: vec![h.keyword.clone()],
                    },
                ));
            } else {
                let mut set: BTreeSet<String> = keywords
                    .iter()
                    .filter(|k| Lease::parse(k).is_none())
                    .cloned()
                    .collect();
                set.insert(next.clone());
                stale.push((id, next, KeywordWrite::Replace(set)));
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
            let batch: Vec<(String, KeywordWrite)> = stale
                .iter()
                .map(|(id, _, w)| (id.clone(), w.clone()))
                .collect();
            let sent = Instant::now();
            let outcomes = self.mail.write_keywords(&batch).await?;
            let answered = Instant::now();
            if answered.duration_since(read_at) > self.settings.claim_wait / 2 {
                for (id, _, _) in &stale {
                    self.lose(id, "renewal of a stale lease too slow");
                }
                return Ok(());
            }
            tokio::time::sleep_until(answered + self.settings.claim_wait).await;
            let ids: Vec<String> = stale.iter().map(|(id, _, _)| id.clone()).collect();
            let back: HashMap<String, BTreeSet<String>> =
                self.mail.get_keywords(&ids).await?.into_iter().collect();
            for ((id, next, _), outcome) in stale.into_iter().zip(outcomes) {
                let leases = back.get(&id).map(Lease::all).unwrap_or_default();
                if outcome.is_ok() && leases.len() == 1 && leases[0].keyword() == next {
                    tracing::info!(email_id = %id, "stale lease confirmed ours again");
                    self.renewed(&id, next, sent);
                } else {
                    self.lose(&id, "a stale lease did not confirm");
                }
            }
        }
        Ok(())
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
                        .map(|h| vec![h.keyword.clone()])
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
        remove.extend(keyword);
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

    #[test]
    fn lease_keywords_round_trip_and_flip() {
        let lease = Lease {
            owner: "w1".into(),
            seconds: 60,
            beat: 0,
        };
        assert_eq!(lease.keyword(), "$taskmail-lease-w1-60-0");
        assert_eq!(Lease::parse(&lease.keyword()), Some(lease.clone()));
        assert_eq!(lease.renewed().keyword(), "$taskmail-lease-w1-60-1");
        assert_eq!(lease.renewed().renewed(), lease);
        assert_eq!(
            Lease::parse("$TaskMail-Lease-AB12-5-1").map(|l| l.owner),
            Some("ab12".to_owned())
        );
        assert!(crate::transport::jmap::checked_keyword(&lease.keyword()).is_ok());
        for bad in [
            "$taskmail-claimed",
            "$taskmail-lease-w1-60",
            "$taskmail-lease-w1-60-2",
            "$taskmail-lease-w1-0-0",
            "$taskmail-lease-w1-x-0",
            "$taskmail-lease--60-0",
            "$taskmail-lease-w_1-60-0",
            "$taskmail-lease-w1-60-0-9",
        ] {
            assert_eq!(Lease::parse(bad), None, "{bad}");
        }
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
