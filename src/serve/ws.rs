//! `WS /connect`: live push frames and monitor facts for the calling agent.
//!
//! Frames are `{"type": "envelope.notify", ...push frame}` and `{"type": "monitor.fact",
//! ...fact}`, as the mailbox's follow loop finds them. Like the reference operator, nothing is
//! replayed on connect: a client catches up with `GET /mailbox` from its cursor (before or after
//! connecting) and drops frames it has already seen by id. A client too slow to keep up is
//! closed with code 1013 and catches up the same way.

use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;

use super::{Caller, Shared};
use crate::mailbox::MailboxEvent;

/// Seconds between pings on an idle connection.
const PING_EVERY: Duration = Duration::from_secs(30);

/// `GET /connect` with an upgrade: authenticated by [`Caller`] before the upgrade.
pub(crate) async fn connect(
    State(state): State<Shared>,
    caller: Caller,
    upgrade: WebSocketUpgrade,
) -> Response {
    upgrade.on_upgrade(move |socket| stream(state, caller, socket))
}

/// The JSON text of an event.
pub(crate) fn event_json(event: &MailboxEvent) -> String {
    let (kind, body) = match event {
        MailboxEvent::Frame(frame) => ("envelope.notify", serde_json::to_value(frame)),
        MailboxEvent::Monitor(fact) => ("monitor.fact", serde_json::to_value(fact)),
    };
    let mut out = serde_json::Map::new();
    out.insert("type".to_owned(), json!(kind));
    if let Ok(Value::Object(fields)) = body {
        out.extend(fields);
    }
    Value::Object(out).to_string()
}

async fn stream(state: Shared, caller: Caller, mut socket: WebSocket) {
    let agent = state.agent(caller);
    let mut events = agent.mailbox.subscribe();
    let mut shutdown = state.shutdown.clone();
    let stopping = async move {
        let _ = shutdown.wait_for(|s| *s).await;
    };
    tokio::pin!(stopping);
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.reset();
    tracing::debug!(agent = %agent.name, "WebSocket client connected");
    let close = loop {
        tokio::select! {
            event = events.recv() => match event {
                Ok(event) => {
                    if socket.send(Message::Text(event_json(&event).into())).await.is_err() {
                        break None;
                    }
                }
                Err(RecvError::Lagged(n)) => {
                    tracing::warn!(agent = %agent.name, "WebSocket client fell {n} events behind; closing it");
                    break Some((1013, "too slow: catch up with GET /mailbox from your cursor, then reconnect"));
                }
                Err(RecvError::Closed) => break Some((1001, "the mailbox closed")),
            },
            message = socket.recv() => match message {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break None,
                Some(Ok(_)) => {}
            },
            _ = ping.tick() => {
                if socket.send(Message::Ping(Vec::new().into())).await.is_err() {
                    break None;
                }
            }
            () = &mut stopping => break Some((1001, "the server is shutting down")),
        }
    };
    if let Some((code, reason)) = close {
        let _ = socket
            .send(Message::Close(Some(CloseFrame {
                code,
                reason: reason.into(),
            })))
            .await;
    }
    tracing::debug!(agent = %agent.name, "WebSocket client gone");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mailbox::{Fact, MonitorFact};
    use crate::wire::asmtp::EnvelopeId;

    #[test]
    fn monitor_fact_frame_has_its_type_first() {
        let fact = MonitorFact {
            monitor: "mon_1".to_owned(),
            envelope_id: EnvelopeId::parse("01JDK3T8ZQ4W5X6Y7Z8A9B0C1D").unwrap(),
            recipient_handle: "@a.b".to_owned(),
            fact: Fact::Bounced,
            at_ms: 7,
        };
        let text = event_json(&MailboxEvent::Monitor(fact));
        assert!(
            text.starts_with(r#"{"type":"monitor.fact","monitor":"mon_1""#),
            "{text}"
        );
        assert!(text.contains(r#""fact":"bounced""#));
    }
}
