//! The `grants` and `pair_codes` tables (`protocol/trust.md` point 2, `protocol/aamp.md`
//! "Discovery and pairing").
//!
//! A grant says what one peer (a normalised address or `*@domain`) may do with one local
//! account: intents, Dispatch-Context rules, state (`active | declined | blocked | revoked`),
//! expiry, whether its mail must be signed, and the peer's public key as received in pairing
//! (opaque here). Grants change only through the operator CLI or a valid pair code, never
//! through mail content. A `declined` or `blocked` grant is sticky: [`Store::grant_put`] with
//! `force = false` never turns it back to active.
//!
//! A pair code is stored as its SHA-256 only, with the account, intents and rules it grants,
//! and an expiry; [`Store::pair_code_take`] uses it up in one statement, so two daemons cannot
//! both spend it.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension as _, Row, params};
use serde::Serialize;

use super::error::sql;
use super::{Store, StoreError, ms, opt_time_at, parsed_at, time_at, unknown};
use crate::config::{GrantState, PeerPattern};

/// Where a grant came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum GrantSource {
    /// `[[trust.grants]]` in the config (never stored; listed read-only).
    Config,
    /// `taskmail grants allow|block|revoke`.
    Cli,
    /// A pair code (`taskmail pair new` + an inbound pair.request, or `taskmail pair request`).
    Pairing,
}

impl GrantSource {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            GrantSource::Config => "config",
            GrantSource::Cli => "cli",
            GrantSource::Pairing => "pairing",
        }
    }

    fn parse(text: &str) -> Option<GrantSource> {
        match text {
            "config" => Some(GrantSource::Config),
            "cli" => Some(GrantSource::Cli),
            "pairing" => Some(GrantSource::Pairing),
            _ => None,
        }
    }
}

/// The stored name of a grant state.
pub fn state_name(state: GrantState) -> &'static str {
    match state {
        GrantState::Active => "active",
        GrantState::Declined => "declined",
        GrantState::Blocked => "blocked",
        GrantState::Revoked => "revoked",
    }
}

fn parse_state(text: &str) -> Option<GrantState> {
    match text {
        "active" => Some(GrantState::Active),
        "declined" => Some(GrantState::Declined),
        "blocked" => Some(GrantState::Blocked),
        "revoked" => Some(GrantState::Revoked),
        _ => None,
    }
}

/// One grant, from the store or the config (JSON keys in camelCase, as every `--json` output).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GrantRecord {
    /// The local account (config name).
    pub account: String,
    /// The peer: a lowercase address or `*@domain`.
    #[serde(serialize_with = "display")]
    pub peer: PeerPattern,
    /// The intents the peer may send.
    pub intents: Vec<String>,
    /// Whether the grant is in force.
    #[serde(serialize_with = "state_ser")]
    pub state: GrantState,
    /// When it lapses.
    pub expires: Option<DateTime<Utc>>,
    /// Allowed values per Dispatch-Context key.
    pub dispatch_context_rules: BTreeMap<String, Vec<String>>,
    /// Whether the peer's mail must carry a valid `X-ASMTP-Signature`.
    pub require_signature: bool,
    /// The peer's public key as received in pairing (its format belongs to the signature code).
    pub peer_key: Option<String>,
    /// Where it came from.
    pub source: GrantSource,
    /// When it was first stored (the config load time for config grants).
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

fn display<S: serde::Serializer>(peer: &PeerPattern, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(peer)
}

fn state_ser<S: serde::Serializer>(state: &GrantState, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(state_name(*state))
}

impl GrantRecord {
    /// A config grant as a record (source `config`, stamped `now`).
    pub fn from_config(grant: &crate::config::Grant, now: DateTime<Utc>) -> GrantRecord {
        GrantRecord {
            account: grant.account.clone(),
            peer: grant.peer.clone(),
            intents: grant.intents.clone(),
            state: grant.state,
            expires: grant.expires.map(|e| e.with_timezone(&Utc)),
            dispatch_context_rules: grant.dispatch_context_rules.clone(),
            require_signature: grant.require_signature,
            peer_key: None,
            source: GrantSource::Config,
            created_at: now,
            updated_at: now,
        }
    }

    /// Whether `state` is one that pairing may never turn back to active.
    pub fn is_sticky(&self) -> bool {
        matches!(self.state, GrantState::Declined | GrantState::Blocked)
    }
}

/// A stored pair code (its hash only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairCode {
    /// The local account the pairing grants access to.
    pub account: String,
    /// The intents the new grant gets.
    pub intents: Vec<String>,
    /// The Dispatch-Context rules the new grant gets.
    pub dispatch_context_rules: BTreeMap<String, Vec<String>>,
    /// When the code stops working.
    pub expires_at: DateTime<Utc>,
}

/// Why a pair code could not be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PairCodeRefusal {
    /// No such code (for this account).
    Unknown,
    /// Used before.
    Used,
    /// Past its expiry.
    Expired,
}

impl PairCodeRefusal {
    /// For the audit log.
    pub fn as_str(self) -> &'static str {
        match self {
            PairCodeRefusal::Unknown => "pair-code-unknown",
            PairCodeRefusal::Used => "pair-code-used",
            PairCodeRefusal::Expired => "pair-code-expired",
        }
    }
}

const GRANT_COLUMNS: &str = "account, peer, intents, state, expires_at, dispatch_context_rules,
    require_signature, peer_key, source, created_at, updated_at";

fn grant_from_row(row: &Row<'_>) -> rusqlite::Result<GrantRecord> {
    let intents_text: String = row.get(2)?;
    let rules_text: String = row.get(5)?;
    Ok(GrantRecord {
        account: row.get(0)?,
        peer: parsed_at(row, 1, "peer", |t| PeerPattern::parse(t).ok())?,
        intents: serde_json::from_str(&intents_text)
            .map_err(|_| unknown(2, "intents", intents_text.clone()))?,
        state: parsed_at(row, 3, "state", parse_state)?,
        expires: opt_time_at(row, 4, "expires_at")?,
        dispatch_context_rules: serde_json::from_str(&rules_text)
            .map_err(|_| unknown(5, "dispatch_context_rules", rules_text.clone()))?,
        require_signature: row.get::<_, i64>(6)? != 0,
        peer_key: row.get(7)?,
        source: parsed_at(row, 8, "source", GrantSource::parse)?,
        created_at: time_at(row, 9, "created_at")?,
        updated_at: time_at(row, 10, "updated_at")?,
    })
}

fn to_json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "null".to_owned())
}

impl Store {
    /// The stored grants of `account` that cover `sender` (its exact address and its
    /// `*@domain`), the exact one first.
    pub fn grants_for(&self, account: &str, sender: &str) -> Result<Vec<GrantRecord>, StoreError> {
        let sender = crate::config::normalize_address(sender);
        let domain = sender
            .rsplit_once('@')
            .map(|(_, d)| format!("*@{d}"))
            .unwrap_or_default();
        let run = || -> rusqlite::Result<Vec<GrantRecord>> {
            let mut stmt = self.conn.prepare_cached(&format!(
                "SELECT {GRANT_COLUMNS} FROM grants
                 WHERE account = ?1 AND peer IN (?2, ?3)
                 ORDER BY CASE WHEN peer = ?2 THEN 0 ELSE 1 END"
            ))?;
            let rows = stmt.query_map(params![account, sender, domain], grant_from_row)?;
            rows.collect()
        };
        run().map_err(sql("read the grants of a peer"))
    }

    /// The stored grant of `account` for exactly `peer`.
    pub fn grant_get(
        &self,
        account: &str,
        peer: &PeerPattern,
    ) -> Result<Option<GrantRecord>, StoreError> {
        self.conn
            .prepare_cached(&format!(
                "SELECT {GRANT_COLUMNS} FROM grants WHERE account = ?1 AND peer = ?2"
            ))
            .and_then(|mut stmt| {
                stmt.query_row(params![account, peer.to_string()], grant_from_row)
                    .optional()
            })
            .map_err(sql("read a grant"))
    }

    /// Every stored grant (of `account` when given), by account and peer.
    pub fn grants_list(&self, account: Option<&str>) -> Result<Vec<GrantRecord>, StoreError> {
        let run = || -> rusqlite::Result<Vec<GrantRecord>> {
            let mut stmt = self.conn.prepare_cached(&format!(
                "SELECT {GRANT_COLUMNS} FROM grants WHERE ?1 IS NULL OR account = ?1
                 ORDER BY account, peer"
            ))?;
            let rows = stmt.query_map(params![account], grant_from_row)?;
            rows.collect()
        };
        run().map_err(sql("list the grants"))
    }

    /// Stores `grant` (insert or replace; `created_at` of an existing row is kept). Unless
    /// `force`, a stored `declined` or `blocked` grant is never made active again: then nothing
    /// changes and `false` is returned.
    pub fn grant_put(&self, grant: &GrantRecord, force: bool) -> Result<bool, StoreError> {
        let run = |tx: &rusqlite::Connection| -> rusqlite::Result<bool> {
            let current: Option<String> = tx
                .query_row(
                    "SELECT state FROM grants WHERE account = ?1 AND peer = ?2",
                    params![grant.account, grant.peer.to_string()],
                    |row| row.get(0),
                )
                .optional()?;
            let sticky = matches!(current.as_deref(), Some("declined" | "blocked"));
            if sticky && grant.state == GrantState::Active && !force {
                return Ok(false);
            }
            tx.execute(
                "INSERT INTO grants (account, peer, intents, state, expires_at,
                     dispatch_context_rules, require_signature, peer_key, source, created_at,
                     updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
                 ON CONFLICT (account, peer) DO UPDATE SET
                     intents = excluded.intents, state = excluded.state,
                     expires_at = excluded.expires_at,
                     dispatch_context_rules = excluded.dispatch_context_rules,
                     require_signature = excluded.require_signature,
                     peer_key = excluded.peer_key, source = excluded.source,
                     updated_at = excluded.updated_at",
                params![
                    grant.account,
                    grant.peer.to_string(),
                    to_json(&grant.intents),
                    state_name(grant.state),
                    grant.expires.map(ms),
                    to_json(&grant.dispatch_context_rules),
                    i64::from(grant.require_signature),
                    grant.peer_key,
                    grant.source.as_str(),
                    ms(grant.created_at),
                    ms(grant.updated_at),
                ],
            )?;
            Ok(true)
        };
        self.write(run).map_err(sql("store a grant"))
    }

    /// Sets the state of the stored grant of `account` for `peer`; false when there is none.
    pub fn grant_set_state(
        &self,
        account: &str,
        peer: &PeerPattern,
        state: GrantState,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        self.conn
            .prepare_cached(
                "UPDATE grants SET state = ?3, updated_at = ?4 WHERE account = ?1 AND peer = ?2",
            )
            .and_then(|mut stmt| {
                stmt.execute(params![
                    account,
                    peer.to_string(),
                    state_name(state),
                    ms(now)
                ])
            })
            .map(|n| n > 0)
            .map_err(sql("change a grant"))
    }

    /// Stores a new pair code by its hash.
    pub fn pair_code_put(
        &self,
        code_hash: &str,
        code: &PairCode,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "INSERT INTO pair_codes (code_hash, account, intents, dispatch_context_rules,
                     expires_at, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .and_then(|mut stmt| {
                stmt.execute(params![
                    code_hash,
                    code.account,
                    to_json(&code.intents),
                    to_json(&code.dispatch_context_rules),
                    ms(code.expires_at),
                    ms(now),
                ])
            })
            .map(drop)
            .map_err(sql("store a pair code"))
    }

    /// Uses up the pair code with this hash for `account`, by `peer`: it must exist, be unused
    /// and unexpired. Single use, even across connections (one UPDATE decides).
    pub fn pair_code_take(
        &self,
        account: &str,
        code_hash: &str,
        peer: &str,
        now: DateTime<Utc>,
    ) -> Result<Result<PairCode, PairCodeRefusal>, StoreError> {
        let run =
            |tx: &rusqlite::Connection| -> rusqlite::Result<Result<PairCode, PairCodeRefusal>> {
                let row = tx
                    .query_row(
                        "SELECT account, intents, dispatch_context_rules, expires_at, used_at
                     FROM pair_codes WHERE code_hash = ?1 AND account = ?2",
                        params![code_hash, account],
                        |row| {
                            Ok((
                                row.get::<_, String>(0)?,
                                row.get::<_, String>(1)?,
                                row.get::<_, String>(2)?,
                                time_at(row, 3, "expires_at")?,
                                row.get::<_, Option<i64>>(4)?,
                            ))
                        },
                    )
                    .optional()?;
                let Some((account, intents, rules, expires_at, used_at)) = row else {
                    return Ok(Err(PairCodeRefusal::Unknown));
                };
                if used_at.is_some() {
                    return Ok(Err(PairCodeRefusal::Used));
                }
                if expires_at <= now {
                    return Ok(Err(PairCodeRefusal::Expired));
                }
                let taken = tx.execute(
                    "UPDATE pair_codes SET used_at = ?2, used_by = ?3
                 WHERE code_hash = ?1 AND used_at IS NULL",
                    params![code_hash, ms(now), peer],
                )?;
                if taken == 0 {
                    return Ok(Err(PairCodeRefusal::Used));
                }
                Ok(Ok(PairCode {
                    account,
                    intents: serde_json::from_str(&intents).unwrap_or_default(),
                    dispatch_context_rules: serde_json::from_str(&rules).unwrap_or_default(),
                    expires_at,
                }))
            };
        self.write(run).map_err(sql("use a pair code"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeDelta;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_900_000_000 + s, 0).unwrap()
    }

    fn grant(peer: &str, state: GrantState) -> GrantRecord {
        GrantRecord {
            account: "worker".to_owned(),
            peer: PeerPattern::parse(peer).unwrap(),
            intents: vec!["task.dispatch".to_owned()],
            state,
            expires: Some(t(3600)),
            dispatch_context_rules: BTreeMap::from([("p".to_owned(), vec!["a".to_owned()])]),
            require_signature: true,
            peer_key: Some("ed25519:k1:AAAA".to_owned()),
            source: GrantSource::Cli,
            created_at: t(0),
            updated_at: t(0),
        }
    }

    #[test]
    fn grants_round_trip_and_match_address_then_domain() {
        let store = Store::open_in_memory().unwrap();
        assert!(
            store
                .grant_put(&grant("*@other.test", GrantState::Active), false)
                .unwrap()
        );
        assert!(
            store
                .grant_put(&grant("Agent@Other.test", GrantState::Active), false)
                .unwrap()
        );
        let found = store.grants_for("worker", "AGENT@other.test").unwrap();
        assert_eq!(found.len(), 2);
        assert_eq!(found[0].peer.to_string(), "agent@other.test");
        assert_eq!(found[0], grant("agent@other.test", GrantState::Active));
        assert_eq!(store.grants_for("worker", "x@other.test").unwrap().len(), 1);
        assert!(
            store
                .grants_for("other", "agent@other.test")
                .unwrap()
                .is_empty()
        );
        assert_eq!(store.grants_list(None).unwrap().len(), 2);
        let peer = PeerPattern::parse("agent@other.test").unwrap();
        assert!(
            store
                .grant_set_state("worker", &peer, GrantState::Revoked, t(5))
                .unwrap()
        );
        let revoked = store.grant_get("worker", &peer).unwrap().unwrap();
        assert_eq!(revoked.state, GrantState::Revoked);
        assert_eq!(revoked.updated_at, t(5));
        assert!(
            !store
                .grant_set_state(
                    "worker",
                    &PeerPattern::parse("n@x.test").unwrap(),
                    GrantState::Revoked,
                    t(5)
                )
                .unwrap()
        );
    }

    #[test]
    fn declined_and_blocked_are_sticky_unless_forced() {
        let store = Store::open_in_memory().unwrap();
        let peer = PeerPattern::parse("agent@other.test").unwrap();
        store
            .grant_put(&grant("agent@other.test", GrantState::Blocked), false)
            .unwrap();
        assert!(
            !store
                .grant_put(&grant("agent@other.test", GrantState::Active), false)
                .unwrap()
        );
        assert_eq!(
            store.grant_get("worker", &peer).unwrap().unwrap().state,
            GrantState::Blocked
        );
        assert!(
            store
                .grant_put(&grant("agent@other.test", GrantState::Active), true)
                .unwrap()
        );
        assert_eq!(
            store.grant_get("worker", &peer).unwrap().unwrap().state,
            GrantState::Active
        );
        // A revoked grant is not sticky.
        store
            .grant_set_state("worker", &peer, GrantState::Revoked, t(1))
            .unwrap();
        assert!(
            store
                .grant_put(&grant("agent@other.test", GrantState::Active), false)
                .unwrap()
        );
    }

    #[test]
    fn pair_codes_are_single_use_and_expire() {
        let store = Store::open_in_memory().unwrap();
        let code = PairCode {
            account: "worker".to_owned(),
            intents: vec!["task.dispatch".to_owned()],
            dispatch_context_rules: BTreeMap::new(),
            expires_at: t(300),
        };
        store.pair_code_put("h1", &code, t(0)).unwrap();
        store.pair_code_put("h2", &code, t(0)).unwrap();
        assert_eq!(
            store
                .pair_code_take("other", "h1", "p@x.test", t(1))
                .unwrap(),
            Err(PairCodeRefusal::Unknown)
        );
        assert_eq!(
            store
                .pair_code_take("worker", "h1", "p@x.test", t(1))
                .unwrap(),
            Ok(code.clone())
        );
        assert_eq!(
            store
                .pair_code_take("worker", "h1", "p@x.test", t(2))
                .unwrap(),
            Err(PairCodeRefusal::Used)
        );
        assert_eq!(
            store
                .pair_code_take("worker", "h2", "p@x.test", t(300))
                .unwrap(),
            Err(PairCodeRefusal::Expired)
        );
        assert_eq!(
            store
                .pair_code_take("worker", "nope", "p@x.test", t(1))
                .unwrap(),
            Err(PairCodeRefusal::Unknown)
        );
        let _ = TimeDelta::zero();
    }

    #[test]
    fn audit_find_filters_by_peer_and_domain() {
        let store = Store::open_in_memory().unwrap();
        for (i, peer) in ["a@x.test", "b@x.test", "a@y.test", "a@x.test"]
            .iter()
            .enumerate()
        {
            store
                .audit(&crate::store::AuditEntry {
                    at: t(i64::try_from(i).unwrap()),
                    account: "worker".to_owned(),
                    message_id: Some(format!("m{i}@x")),
                    peer: Some((*peer).to_owned()),
                    verdict: "refused".to_owned(),
                    rule: Some("not-allowed".to_owned()),
                    detail: None,
                })
                .unwrap();
        }
        assert_eq!(store.audit_find(10, None).unwrap().len(), 4);
        assert_eq!(store.audit_find(10, Some("A@x.test")).unwrap().len(), 2);
        assert_eq!(store.audit_find(10, Some("*@x.test")).unwrap().len(), 3);
        let newest = store.audit_find(1, Some("*@x.test")).unwrap();
        assert_eq!(newest[0].entry.message_id.as_deref(), Some("m3@x"));
    }
}
