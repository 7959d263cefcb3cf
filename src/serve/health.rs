//! `GET /healthz` (no token): whether the API runs and each agent's mail server answers.
//!
//! Reachability is a TCP connect to the account's JMAP host and SMTP submission port (2 s
//! each, all in parallel): cheap, no login, and it tells a dead server from a live one. The
//! answer names agents and hosts, never addresses or tokens.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

use super::Shared;

const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

async fn answers(host: &str, port: u16) -> bool {
    matches!(
        tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect((host, port))).await,
        Ok(Ok(_))
    )
}

/// 200 `{"ok": true, "agents": [...]}` when every server answers, else 503 with `ok: false`.
pub(crate) async fn healthz(State(state): State<Shared>) -> (StatusCode, Json<Value>) {
    let probes = state.agents.iter().map(|agent| async move {
        let jmap = &agent.account.jmap.session_url;
        let smtp = &agent.account.smtp;
        let (jmap_up, smtp_up) = tokio::join!(
            answers(jmap.host(), jmap.port()),
            answers(&smtp.host, smtp.port)
        );
        let follow = agent.follow.lock().map(|f| f.clone()).unwrap_or_default();
        json!({
            "agent": agent.name,
            "handle": agent.mailbox.handle(),
            "jmap": {"host": jmap.host(), "port": jmap.port(), "reachable": jmap_up},
            "smtp": {"host": smtp.host, "port": smtp.port, "reachable": smtp_up},
            "follow": {"restarts": follow.restarts, "last_error": follow.last_error},
        })
    });
    let agents: Vec<Value> = futures_util::future::join_all(probes).await;
    let ok = agents.iter().all(|a| {
        a["jmap"]["reachable"] == Value::Bool(true) && a["smtp"]["reachable"] == Value::Bool(true)
    });
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({"ok": ok, "version": env!("CARGO_PKG_VERSION"), "agents": agents})),
    )
}
