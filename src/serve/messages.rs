//! `POST /messages`, `GET /messages/{id}`, `GET /messages?ids=`, `GET /mailbox`,
//! `POST /mailbox/read`: envelopes in and out, push frames by cursor.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use futures_util::StreamExt as _;
use serde::Deserialize;
use serde_json::{Value, json};

use super::auth::{percent_decode, query_param};
use super::error::{ApiError, ApiResult};
use super::{Caller, Shared};
use crate::mailbox::policy::Policy;
use crate::mailbox::{
    ListQuery, MAX_GET_MANY, MAX_PAGE, MailboxError, Order, ReadEnvelope, SendRequest,
};
use crate::wire::asmtp::{Cursor, EnvelopeId, Handle};

/// Reads a request body up to `limit` bytes: a declared or actual excess is 400
/// `PAYLOAD_TOO_LARGE` (axum's own limit would answer 413 in plain text).
pub(crate) async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> ApiResult<Vec<u8>> {
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::too_large(limit));
    }
    let mut out = Vec::new();
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::invalid(format!("cannot read the request body: {e}")))?;
        if out.len() + chunk.len() > limit {
            return Err(ApiError::too_large(limit));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// Parses a JSON body into `T`, with serde's line and column in the message.
pub(crate) fn parse_json<T: for<'de> Deserialize<'de>>(bytes: &[u8], what: &str) -> ApiResult<T> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::invalid(format!(
            "the body is empty: send {what} as JSON"
        )));
    }
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::invalid(format!("cannot read the body as {what}: {e}")))
}

fn envelope_id(text: &str) -> ApiResult<EnvelopeId> {
    EnvelopeId::parse(text.trim()).map_err(|e| {
        ApiError::invalid(format!(
            "cannot use '{}' as an envelope id: {e}",
            text.chars().take(64).collect::<String>()
        ))
    })
}

/// `POST /messages`: 202 `{id, received_ms, created_at, recipients, replayed}`.
pub(crate) async fn send(
    State(state): State<Shared>,
    caller: Caller,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<impl IntoResponse> {
    let bytes = read_body(&headers, body, state.body_limit).await?;
    // NOTE: the JSON shape is checked here first so that a syntax error names its line and
    // column; SendRequest::from_json then reads the envelope fields (and ignores `from`).
    let _: Value = parse_json(&bytes, "an envelope")?;
    let request = SendRequest::from_json(&bytes)?;
    let agent = state.agent(caller);
    local_recipients_admit(&state, agent, &request)?;
    let receipt = agent.mailbox.send(request).await?;
    tracing::info!(agent = %agent.name, id = %receipt.id, replayed = receipt.replayed, "envelope accepted");
    Ok((StatusCode::ACCEPTED, Json(receipt)))
}

/// Reachability is symmetric: a recipient that is a local account (of this config) must admit
/// the sender by its own policy, or the whole send is refused (404, like a sender-side refusal,
/// which [`crate::mailbox::Mailbox::send`] checks). A remote recipient's policy is its own
/// server's business: its gate drops what it does not admit.
fn local_recipients_admit(
    state: &Shared,
    agent: &super::AgentState,
    request: &SendRequest,
) -> ApiResult<()> {
    let now = crate::clock::now();
    let directory = agent.mailbox.directory();
    for text in request.to.iter().chain(&request.cc) {
        let t = text.trim();
        let handle = if t.contains('@') && !t.starts_with('@') {
            directory.handle_of_address(t)
        } else {
            Handle::parse(t).ok()
        };
        let Some(account) = handle.as_ref().and_then(|h| directory.account_of_handle(h)) else {
            continue;
        };
        if account == agent.account.name {
            continue;
        }
        let policy = Policy::from_config(&state.config, account, now);
        let verdict = agent
            .mailbox
            .with_store(|s| policy.peer(s, &agent.account.email, now));
        if let Err(rule) = verdict {
            tracing::info!(agent = %agent.name, recipient = %t, %rule, "local recipient does not admit the sender");
            return Err(MailboxError::Unreachable(t.to_owned()).into());
        }
    }
    Ok(())
}

/// An envelope with its body as the API shows it: the envelope's own JSON plus `created_at`
/// (the cursor time) and `seen`.
fn envelope_json(read: &ReadEnvelope) -> Value {
    let mut value = serde_json::to_value(&read.envelope).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut value {
        map.insert("type_hint".to_owned(), json!(read.frame.type_hint));
        map.insert("size_hint".to_owned(), json!(read.frame.size_hint));
        map.insert("created_at".to_owned(), json!(read.frame.created_at));
        map.insert("seen".to_owned(), json!(read.seen));
    }
    value
}

/// `GET /messages/{id}`: the envelope with its body; marks it read (the body fetch is the read).
pub(crate) async fn get_one(
    State(state): State<Shared>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let id = envelope_id(&id)?;
    let read = state.agent(caller).mailbox.read(&id, true).await?;
    Ok(Json(envelope_json(&read)))
}

/// `GET /messages?ids=a,b`: up to 100 envelopes with bodies, not marked read;
/// `{"messages": [...], "missing": [ids not in this mailbox]}`.
pub(crate) async fn get_many(
    State(state): State<Shared>,
    caller: Caller,
    RawQuery(query): RawQuery,
) -> ApiResult<Json<Value>> {
    let list = query
        .as_deref()
        .and_then(|q| query_param(q, "ids"))
        .ok_or_else(|| {
            ApiError::invalid("name the envelopes: GET /messages?ids=ID1,ID2 (up to 100)")
        })?;
    let mut ids: Vec<EnvelopeId> = Vec::new();
    for text in list.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        let id = envelope_id(text)?;
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    if ids.is_empty() {
        return Err(ApiError::invalid(
            "ids is empty: GET /messages?ids=ID1,ID2 (up to 100)",
        ));
    }
    if ids.len() > MAX_GET_MANY {
        return Err(ApiError::invalid(format!(
            "{} ids asked for, at most {MAX_GET_MANY} at once: split the request",
            ids.len()
        )));
    }
    let found = state.agent(caller).mailbox.get_many(&ids).await?;
    let missing: Vec<&EnvelopeId> = ids
        .iter()
        .filter(|id| !found.iter().any(|r| &r.envelope.id == *id))
        .collect();
    let messages: Vec<Value> = found.iter().map(envelope_json).collect();
    Ok(Json(json!({"messages": messages, "missing": missing})))
}

/// The query of `GET /mailbox`.
fn list_query(query: Option<&str>) -> ApiResult<ListQuery> {
    let mut q = ListQuery::default();
    let mut after_created_at = None;
    let mut after_id = None;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let (key, value) = (percent_decode(k), percent_decode(v));
        match key.as_str() {
            "after_created_at" => {
                after_created_at = Some(value.trim().parse::<i64>().ok().filter(|t| *t >= 0).ok_or_else(
                    || ApiError::invalid(format!("after_created_at must be a time in ms since the epoch, not '{value}'")),
                )?);
            }
            "after_envelope_id" => after_id = Some(envelope_id(&value)?),
            "limit" => {
                q.limit = value
                    .trim()
                    .parse::<u32>()
                    .ok()
                    .filter(|n| (1..=MAX_PAGE).contains(n))
                    .ok_or_else(|| {
                        ApiError::invalid(format!("limit must be 1 to {MAX_PAGE}, not '{value}'"))
                    })?;
            }
            "order" => {
                q.order = match value.trim().to_ascii_lowercase().as_str() {
                    "asc" => Order::Asc,
                    "desc" => Order::Desc,
                    _ => {
                        return Err(ApiError::invalid(format!(
                            "order must be 'asc' or 'desc', not '{value}'"
                        )));
                    }
                }
            }
            "unread" | "unread_only" => {
                q.unread_only = match value.trim() {
                    "" | "true" | "1" => true,
                    "false" | "0" => false,
                    _ => {
                        return Err(ApiError::invalid(format!(
                            "{key} must be true or false, not '{value}'"
                        )));
                    }
                }
            }
            _ => {
                return Err(ApiError::invalid(format!(
                    "unknown parameter '{key}': use after_created_at, after_envelope_id, limit, order, unread"
                )));
            }
        }
    }
    q.after = match (after_created_at, after_id) {
        (Some(at), Some(id)) => Some(Cursor::new(at, id)),
        (None, None) => None,
        _ => {
            return Err(ApiError::invalid(
                "after_created_at and after_envelope_id go together: pass both (a next_cursor) or neither",
            ));
        }
    };
    Ok(q)
}

/// `GET /mailbox`: `{"envelopes": [frame + seen], "next_cursor": {after_created_at,
/// after_envelope_id} | null}`; `next_cursor` is set when the page is full.
pub(crate) async fn list(
    State(state): State<Shared>,
    caller: Caller,
    RawQuery(query): RawQuery,
) -> ApiResult<Json<Value>> {
    let q = list_query(query.as_deref())?;
    let mailbox = state.agent(caller).mailbox.clone();
    let page = tokio::task::spawn_blocking(move || mailbox.list(&q))
        .await
        .map_err(|e| ApiError::internal(format!("listing task failed: {e}")))??;
    let next = page
        .next_cursor
        .map(|c| json!({"after_created_at": c.created_at, "after_envelope_id": c.envelope_id}));
    Ok(Json(json!({"envelopes": page.frames, "next_cursor": next})))
}

/// The body of `POST /mailbox/read`.
#[derive(Debug, Deserialize)]
struct ReadBody {
    ids: Vec<String>,
}

/// `POST /mailbox/read {"ids": [...]}`: `{"marked": N}` (how many were in the mailbox).
pub(crate) async fn mark_read(
    State(state): State<Shared>,
    caller: Caller,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<Value>> {
    let bytes = read_body(&headers, body, state.body_limit).await?;
    let body: ReadBody = parse_json(&bytes, "{\"ids\": [...]}")?;
    if body.ids.len() > MAX_PAGE as usize {
        return Err(ApiError::invalid(format!(
            "{} ids, at most {MAX_PAGE} at once: split the request",
            body.ids.len()
        )));
    }
    let ids = body
        .ids
        .iter()
        .map(|t| envelope_id(t))
        .collect::<ApiResult<Vec<_>>>()?;
    let marked = state.agent(caller).mailbox.mark_read(&ids).await?;
    Ok(Json(json!({"marked": marked})))
}

/// `GET /monitor[?envelope_id=ID]`: the persisted delivery facts of envelopes this agent sent
/// with a `monitor`, oldest first: `{"facts": [{monitor, envelope_id, recipient_handle, fact,
/// at_ms}]}`. They are kept while the agent is offline (the WebSocket pushes them live).
pub(crate) async fn monitor_facts(
    State(state): State<Shared>,
    caller: Caller,
    RawQuery(query): RawQuery,
) -> ApiResult<Json<Value>> {
    let id = query
        .as_deref()
        .and_then(|q| query_param(q, "envelope_id"))
        .map(|t| envelope_id(&t))
        .transpose()?;
    let agent = state.agent(caller);
    let mailbox = agent.mailbox.clone();
    let account = agent.account.name.clone();
    let facts = tokio::task::spawn_blocking(move || {
        mailbox.with_store(|s| crate::mailbox::monitor::facts(s, &account, id.as_ref()))
    })
    .await
    .map_err(|e| ApiError::internal(format!("store task failed: {e}")))??;
    Ok(Json(json!({"facts": facts})))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "01JDK3T8ZQ4W5X6Y7Z8A9B0C1D";

    #[test]
    fn mailbox_query_needs_both_cursor_halves() {
        let q = list_query(Some(&format!(
            "after_created_at=5&after_envelope_id={ID}&limit=2&order=desc&unread"
        )))
        .unwrap();
        assert_eq!(q.after.unwrap().created_at, 5);
        assert_eq!((q.limit, q.order, q.unread_only), (2, Order::Desc, true));
        assert!(
            list_query(Some("after_created_at=5"))
                .unwrap_err()
                .message
                .contains("go together")
        );
        assert!(list_query(Some(&format!("after_envelope_id={ID}"))).is_err());
        assert!(list_query(Some("limit=0")).is_err());
        assert!(list_query(Some("limit=1001")).is_err());
        assert!(list_query(Some("order=up")).is_err());
        assert!(list_query(Some("bogus=1")).is_err());
        assert_eq!(list_query(None).unwrap(), ListQuery::default());
    }
}
