//! `/allowlist` and `/blocks`: who may reach the calling agent, kept as trust grants of its
//! account (`src/store/grants.rs`, `protocol/trust.md` point 2), the same grants
//! `taskmail grants` manages.
//!
//! An entry is a handle (`@owner.name`, mapped to its address the way the mailbox maps
//! recipients), an address, or a whole domain (`*@example.test`). ASMTP's owner globs
//! (`@owner.*`) have no grant form and are refused with a hint.
//!
//! - `GET /allowlist`: active grants; `POST /allowlist {"entries": [...]}` makes each an
//!   active grant that also admits envelopes (intent [`ENVELOPE_INTENT`], added to what the
//!   grant already allowed); `DELETE /allowlist {"entries": [...]}` (or `?entries=a,b`)
//!   revokes them.
//! - `GET /blocks`; `POST /blocks` blocks each (sticky: pairing never lifts it, and allowing
//!   a blocked or declined entry answers 409 `BLOCKED`); `DELETE /blocks` lifts the block (the grant
//!   becomes `revoked`, so the peer is not allowed either until allowed again).
//!
//! Grants from the config (`[[trust.grants]]`) are listed with `source: "config"` and cannot
//! be changed here (409 `CONFIG_GRANT`): edit the config file.
//!
//! Whoever holds an agent's token acts as the owner of that agent on this local API; the
//! tokens live in the operator's config.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Value, json};

use super::auth::query_param;
use super::error::{ApiError, ApiResult};
use super::messages::{parse_json, read_body};
use super::{AgentState, Caller, Shared};
use crate::config::{GrantState, PeerPattern};
use crate::store::{GrantRecord, GrantSource, state_name};
use crate::wire::asmtp::Handle;

/// The grant intent that admits ASMTP envelopes from a peer.
pub const ENVELOPE_INTENT: &str = "asmtp.envelope";

/// The most entries one request may change.
const MAX_ENTRIES: usize = 100;

/// An entry and the grant peer it stands for.
#[derive(Debug, Clone)]
struct Entry {
    text: String,
    peer: PeerPattern,
}

/// Reads one entry for `agent`.
fn entry(agent: &AgentState, text: &str) -> ApiResult<Entry> {
    let trimmed = text.trim();
    let bad = |why: &str| {
        ApiError::invalid(format!(
            "cannot use '{}' as an entry: {why}; write a handle (@owner.name), an address or *@domain",
            trimmed.chars().take(100).collect::<String>()
        ))
    };
    if trimmed.is_empty() {
        return Err(bad("it is empty"));
    }
    if trimmed.contains('@') && !trimmed.starts_with('@') {
        let peer = PeerPattern::parse(trimmed).map_err(|e| bad(&e.to_string()))?;
        return Ok(Entry {
            text: trimmed.to_owned(),
            peer,
        });
    }
    if trimmed.ends_with(".*") {
        return Err(bad("owner globs (@owner.*) have no grant form"));
    }
    let handle = Handle::parse(trimmed).map_err(|e| bad(&e.to_string()))?;
    let domain = agent
        .account
        .email
        .rsplit_once('@')
        .map(|(_, d)| d.to_owned())
        .unwrap_or_default();
    let address = agent.mailbox.directory().address_of(&handle, &domain);
    let peer = PeerPattern::parse(&address).map_err(|e| bad(&e.to_string()))?;
    Ok(Entry {
        text: handle.to_string(),
        peer,
    })
}

/// A grant as the API shows it (snake_case, like every ASMTP surface).
fn grant_json(agent: &AgentState, grant: &GrantRecord) -> Value {
    let handle = match &grant.peer {
        PeerPattern::Address(a) => agent
            .mailbox
            .directory()
            .handle_of_address(a)
            .map(|h| h.to_string()),
        _ => None,
    };
    json!({
        "entry": handle.clone().unwrap_or_else(|| grant.peer.to_string()),
        "peer": grant.peer.to_string(),
        "handle": handle,
        "state": state_name(grant.state),
        "intents": grant.intents,
        "source": grant.source.as_str(),
        "expires": grant.expires.map(|e| e.timestamp_millis()),
        "updated_at": grant.updated_at.timestamp_millis(),
    })
}

/// The grants of the caller's account in `state` (stored, then the config's).
async fn grants_in(
    state: &Shared,
    caller: Caller,
    wanted: GrantState,
) -> ApiResult<Vec<GrantRecord>> {
    let account = state.agent(caller).account.name.clone();
    let store = Arc::clone(&state.store);
    let mut grants = tokio::task::spawn_blocking(move || {
        let store = store
            .lock()
            .map_err(|_| ApiError::internal("the store lock is poisoned"))?;
        Ok::<_, ApiError>(store.grants_list(Some(&account))?)
    })
    .await
    .map_err(|e| ApiError::internal(format!("store task failed: {e}")))??;
    let now = crate::clock::now();
    let account = &state.agent(caller).account.name;
    for grant in &state.config.trust().grants {
        if &grant.account == account && !grants.iter().any(|g| g.peer == grant.peer) {
            grants.push(GrantRecord::from_config(grant, now));
        }
    }
    grants.retain(|g| g.state == wanted && g.expires.is_none_or(|e| e > now));
    Ok(grants)
}

async fn listing(
    state: &Shared,
    caller: Caller,
    wanted: GrantState,
    key: &str,
) -> ApiResult<Json<Value>> {
    let agent = state.agent(caller);
    let grants = grants_in(state, caller, wanted).await?;
    let rows: Vec<Value> = grants.iter().map(|g| grant_json(agent, g)).collect();
    Ok(Json(json!({ key: rows })))
}

/// `GET /allowlist`.
pub(crate) async fn list_allowed(
    State(state): State<Shared>,
    caller: Caller,
) -> ApiResult<Json<Value>> {
    listing(&state, caller, GrantState::Active, "allowlist").await
}

/// `GET /blocks`.
pub(crate) async fn list_blocked(
    State(state): State<Shared>,
    caller: Caller,
) -> ApiResult<Json<Value>> {
    listing(&state, caller, GrantState::Blocked, "blocks").await
}

#[derive(Debug, Deserialize)]
struct EntriesBody {
    entries: Vec<String>,
}

/// The entries of a request: `?entries=a,b`, else the JSON body `{"entries": [...]}`.
async fn entries(
    state: &Shared,
    caller: Caller,
    query: Option<&str>,
    headers: &HeaderMap,
    body: Body,
) -> ApiResult<Vec<Entry>> {
    let texts: Vec<String> = match query.and_then(|q| query_param(q, "entries")) {
        Some(list) => list.split(',').map(str::to_owned).collect(),
        None => {
            let bytes = read_body(headers, body, state.body_limit).await?;
            parse_json::<EntriesBody>(&bytes, "{\"entries\": [\"@owner.name\", ...]}")?.entries
        }
    };
    if texts.is_empty() {
        return Err(ApiError::invalid(
            "entries is empty: name at least one handle, address or *@domain",
        ));
    }
    if texts.len() > MAX_ENTRIES {
        return Err(ApiError::invalid(format!(
            "{} entries, at most {MAX_ENTRIES} at once",
            texts.len()
        )));
    }
    let agent = state.agent(caller);
    texts.iter().map(|t| entry(agent, t)).collect()
}

/// What one change does to the grant of one entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    Allow,
    Disallow,
    Block,
    Unblock,
}

/// Applies `change` to every entry (all checked first: nothing changes when one is refused).
async fn apply(
    state: &Shared,
    caller: Caller,
    list: Vec<Entry>,
    change: Change,
) -> ApiResult<usize> {
    let agent = state.agent(caller);
    let account = agent.account.name.clone();
    let config_peers: Vec<PeerPattern> = state
        .config
        .trust()
        .grants
        .iter()
        .filter(|g| g.account == account)
        .map(|g| g.peer.clone())
        .collect();
    if let Some(e) = list.iter().find(|e| config_peers.contains(&e.peer)) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "CONFIG_GRANT",
            format!(
                "'{}' has a grant in the config file ([[trust.grants]]): change it there",
                e.text
            ),
        ));
    }
    let store = Arc::clone(&state.store);
    tokio::task::spawn_blocking(move || {
        let store = store
            .lock()
            .map_err(|_| ApiError::internal("the store lock is poisoned"))?;
        let now: DateTime<Utc> = crate::clock::now();
        let mut current = Vec::new();
        for e in &list {
            let grant = store.grant_get(&account, &e.peer)?;
            if change == Change::Allow
                && let Some(g) = grant.as_ref().filter(|g| g.is_sticky())
            {
                let hint = if g.state == GrantState::Blocked {
                    "lift the block first (DELETE /blocks)"
                } else {
                    "a decline is sticky: re-allow it with taskmail grants allow --force"
                };
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "BLOCKED",
                    format!("'{}' is {}: {hint}", e.text, state_name(g.state)),
                ));
            }
            current.push(grant);
        }
        let mut changed = 0;
        for (e, grant) in list.iter().zip(current) {
            match (change, grant) {
                (Change::Allow | Change::Block, existing) => {
                    let mut record = existing.unwrap_or_else(|| GrantRecord {
                        account: account.clone(),
                        peer: e.peer.clone(),
                        intents: Vec::new(),
                        state: GrantState::Active,
                        expires: None,
                        dispatch_context_rules: Default::default(),
                        require_signature: false,
                        peer_key: None,
                        source: GrantSource::Cli,
                        created_at: now,
                        updated_at: now,
                    });
                    if change == Change::Allow {
                        if !record.intents.iter().any(|i| i == ENVELOPE_INTENT) {
                            record.intents.push(ENVELOPE_INTENT.to_owned());
                        }
                        record.state = GrantState::Active;
                    } else {
                        record.state = GrantState::Blocked;
                    }
                    record.updated_at = now;
                    if store.grant_put(&record, change == Change::Block)? {
                        changed += 1;
                    }
                }
                (Change::Disallow, Some(g)) if g.state == GrantState::Active => {
                    changed += usize::from(store.grant_set_state(
                        &account,
                        &e.peer,
                        GrantState::Revoked,
                        now,
                    )?);
                }
                (Change::Unblock, Some(g)) if g.state == GrantState::Blocked => {
                    changed += usize::from(store.grant_set_state(
                        &account,
                        &e.peer,
                        GrantState::Revoked,
                        now,
                    )?);
                }
                _ => {}
            }
        }
        Ok(changed)
    })
    .await
    .map_err(|e| ApiError::internal(format!("store task failed: {e}")))?
}

async fn change(
    state: Shared,
    caller: Caller,
    query: Option<String>,
    headers: HeaderMap,
    body: Body,
    what: Change,
) -> ApiResult<Json<Value>> {
    let list = entries(&state, caller, query.as_deref(), &headers, body).await?;
    let changed = apply(&state, caller, list, what).await?;
    tracing::info!(agent = %state.agent(caller).name, ?what, changed, "trust grants changed through the operator API");
    let (wanted, key) = match what {
        Change::Allow | Change::Disallow => (GrantState::Active, "allowlist"),
        Change::Block | Change::Unblock => (GrantState::Blocked, "blocks"),
    };
    let Json(mut listing) = listing(&state, caller, wanted, key).await?;
    if let Value::Object(map) = &mut listing {
        map.insert("changed".to_owned(), json!(changed));
    }
    Ok(Json(listing))
}

/// `POST /allowlist`.
pub(crate) async fn allow(
    State(state): State<Shared>,
    caller: Caller,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<Value>> {
    change(state, caller, query, headers, body, Change::Allow).await
}

/// `DELETE /allowlist`.
pub(crate) async fn disallow(
    State(state): State<Shared>,
    caller: Caller,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<Value>> {
    change(state, caller, query, headers, body, Change::Disallow).await
}

/// `POST /blocks`.
pub(crate) async fn block(
    State(state): State<Shared>,
    caller: Caller,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<Value>> {
    change(state, caller, query, headers, body, Change::Block).await
}

/// `DELETE /blocks`.
pub(crate) async fn unblock(
    State(state): State<Shared>,
    caller: Caller,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<Value>> {
    change(state, caller, query, headers, body, Change::Unblock).await
}
