//! Raw JMAP ([RFC 8620](https://www.rfc-editor.org/rfc/rfc8620),
//! [RFC 8621](https://www.rfc-editor.org/rfc/rfc8621)) over the session's own URLs, for tests.
//!
//! JSON in, JSON out, with every URL of the session resolved against the URL the session was
//! actually served from (after redirects), as servers may return relative ones (Cyrus does). The
//! typed client the daemon uses is `jmap-client`; see [`super::Server::jmap_client`].

use std::time::Duration;

use serde_json::{Value, json};

use super::{Account, Server, eventually, http};

/// Capabilities every call here uses.
const USING: [&str; 2] = ["urn:ietf:params:jmap:core", "urn:ietf:params:jmap:mail"];
/// The WebSocket capability ([RFC 8887](https://www.rfc-editor.org/rfc/rfc8887)).
pub(crate) const WEBSOCKET_CAPABILITY: &str = "urn:ietf:params:jmap:websocket";

/// One account's JMAP session.
#[derive(Debug, Clone)]
pub(crate) struct Jmap {
    pub(crate) account: Account,
    /// The session object as served.
    pub(crate) session: Value,
    /// Where the session was finally served from (after redirects).
    pub(crate) session_url: String,
    /// `apiUrl`, resolved.
    pub(crate) api_url: String,
    /// `primaryAccounts["urn:ietf:params:jmap:mail"]` (opaque on Stalwart, the address on Cyrus).
    pub(crate) account_id: String,
}

/// What a server offers for push, found from its session and an HTTP probe (never its name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PushSupport {
    /// `eventSourceUrl` answers `200 text/event-stream`.
    pub(crate) event_source: bool,
    /// The session advertises `urn:ietf:params:jmap:websocket`.
    pub(crate) websocket: bool,
    /// What the eventSourceUrl probe returned: status and content type.
    pub(crate) event_source_probe: String,
}

impl PushSupport {
    /// The kinds, in the env file's spelling (`eventsource websocket`).
    pub(crate) fn kinds(&self) -> Vec<String> {
        let mut kinds = Vec::new();
        if self.event_source {
            kinds.push("eventsource".to_string());
        }
        if self.websocket {
            kinds.push("websocket".to_string());
        }
        kinds
    }
}

impl Jmap {
    /// Fetch the session for `account` (Basic auth up front; follows up to 5 redirects).
    pub(crate) async fn connect(server: &Server, account: &Account) -> Jmap {
        let mut url = server.jmap_session_url.clone();
        let mut response = None;
        for _ in 0..5 {
            let r = http::Request::get(&url)
                .basic_auth(&account.email, &account.password)
                .header("Accept", "application/json")
                .send()
                .await
                .unwrap_or_else(|e| panic!("{}: JMAP session: {e}", server.name));
            if (300..400).contains(&r.status) {
                let location = r.header("location").unwrap_or_else(|| {
                    panic!("{}: redirect {} without Location", server.name, r.status)
                });
                url = http::resolve(&url, location);
                continue;
            }
            response = Some(r);
            break;
        }
        let response = response.unwrap_or_else(|| {
            panic!(
                "{}: more than 5 redirects from the session URL",
                server.name
            )
        });
        assert_eq!(
            response.status,
            200,
            "{}: JMAP session for {} at {url}: {}",
            server.name,
            account.email,
            String::from_utf8_lossy(&response.body)
        );
        let session = response.json();
        let api_url = http::resolve(
            &url,
            session["apiUrl"]
                .as_str()
                .unwrap_or_else(|| panic!("{}: session without apiUrl: {session}", server.name)),
        );
        let account_id = session["primaryAccounts"]["urn:ietf:params:jmap:mail"]
            .as_str()
            .unwrap_or_else(|| panic!("{}: no primary mail account: {session}", server.name))
            .to_string();
        Jmap {
            account: account.clone(),
            session,
            session_url: url,
            api_url,
            account_id,
        }
    }

    /// A session URL (or URL template), resolved against the session's own URL.
    pub(crate) fn resolve(&self, url: &str) -> String {
        http::resolve(&self.session_url, url)
    }

    /// Send method calls (`[name, arguments]`, call ids `c0`, `c1`...); return the method
    /// responses as `(name, arguments)`. HTTP-level failures panic.
    pub(crate) async fn request(&self, calls: &[(&str, Value)]) -> Vec<(String, Value)> {
        let body = json!({
            "using": USING,
            "methodCalls": calls
                .iter()
                .enumerate()
                .map(|(i, (name, args))| json!([name, args, format!("c{i}")]))
                .collect::<Vec<_>>(),
        });
        let response = http::Request::post(
            &self.api_url,
            "application/json",
            body.to_string().into_bytes(),
        )
        .basic_auth(&self.account.email, &self.account.password)
        .send()
        .await
        .unwrap_or_else(|e| panic!("JMAP request failed: {e}"));
        assert_eq!(
            response.status,
            200,
            "JMAP request to {}: {}",
            self.api_url,
            String::from_utf8_lossy(&response.body)
        );
        let value = response.json();
        value["methodResponses"]
            .as_array()
            .unwrap_or_else(|| panic!("no methodResponses in {value}"))
            .iter()
            .map(|r| (r[0].as_str().unwrap_or_default().to_string(), r[1].clone()))
            .collect()
    }

    /// One method call; a JMAP method error panics with the error object.
    pub(crate) async fn call(&self, name: &str, mut args: Value) -> Value {
        if args.get("accountId").is_none() {
            args["accountId"] = json!(self.account_id);
        }
        let mut responses = self.request(&[(name, args)]).await;
        let (got, value) = responses.remove(0);
        assert_eq!(
            got, name,
            "{name} failed for {}: {value}",
            self.account.email
        );
        value
    }

    /// The current Email state (`Email/get` with no ids).
    pub(crate) async fn email_state(&self) -> String {
        self.call("Email/get", json!({ "ids": [] })).await["state"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// The id of the mailbox with `role` (e.g. `inbox`).
    pub(crate) async fn mailbox_with_role(&self, role: &str) -> String {
        let got = self
            .call(
                "Mailbox/get",
                json!({ "ids": null, "properties": ["name", "role"] }),
            )
            .await;
        got["list"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| m["role"] == role)
            .and_then(|m| m["id"].as_str())
            .unwrap_or_else(|| panic!("{}: no mailbox with role {role}: {got}", self.account.email))
            .to_string()
    }

    /// `Email/changes` since `state`, following `hasMoreChanges`: (created ids, new state).
    pub(crate) async fn created_since(&self, state: &str) -> (Vec<String>, String) {
        let mut created = Vec::new();
        let mut since = state.to_string();
        loop {
            let changes = self
                .call("Email/changes", json!({ "sinceState": since }))
                .await;
            created.extend(
                changes["created"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|id| id.as_str().map(str::to_string)),
            );
            since = changes["newState"].as_str().unwrap_or_default().to_string();
            if changes["hasMoreChanges"] != json!(true) {
                return (created, since);
            }
        }
    }

    /// `Email/get` of `ids` with `properties`.
    pub(crate) async fn get_emails(&self, ids: &[String], properties: &[&str]) -> Vec<Value> {
        if ids.is_empty() {
            return Vec::new();
        }
        let got = self
            .call("Email/get", json!({ "ids": ids, "properties": properties }))
            .await;
        got["list"].as_array().cloned().unwrap_or_default()
    }

    /// Wait until `count` messages whose subject contains `token` were created since `state`;
    /// return them (with `properties`, plus `id` and `subject`).
    pub(crate) async fn wait_for_token(
        &self,
        state: &str,
        token: &str,
        count: usize,
        properties: &[&str],
        timeout: Duration,
    ) -> Vec<Value> {
        let mut props = vec!["id", "subject"];
        props.extend_from_slice(properties);
        let props = &props;
        let what = format!(
            "{count} message(s) with '{token}' in {}",
            self.account.email
        );
        eventually(&what, timeout, || async move {
            let (created, _) = self.created_since(state).await;
            let mut found = Vec::new();
            // NOTE: a server may cap `ids` per Email/get (maxObjectsInGet, 500 on Stalwart)
            for chunk in created.chunks(200) {
                found.extend(
                    self.get_emails(chunk, props)
                        .await
                        .into_iter()
                        .filter(|e| e["subject"].as_str().is_some_and(|s| s.contains(token))),
                );
            }
            (found.len() >= count).then_some(found)
        })
        .await
    }

    /// The eventSourceUrl with its template variables filled in (`types=*`, `closeafter=no`,
    /// `ping=0`), resolved; `None` if the session has none.
    pub(crate) fn event_source_url(&self) -> Option<String> {
        let template = self.session["eventSourceUrl"].as_str()?;
        Some(
            self.resolve(
                &template
                    .replace("{types}", "*")
                    .replace("{closeafter}", "no")
                    .replace("{ping}", "0"),
            ),
        )
    }

    /// Detect push support from the session and an HTTP probe of the eventSourceUrl.
    pub(crate) async fn push_support(&self) -> PushSupport {
        let websocket = self.session["capabilities"]
            .get(WEBSOCKET_CAPABILITY)
            .is_some();
        let (event_source, event_source_probe) = match self.event_source_url() {
            None => (false, "no eventSourceUrl in the session".to_string()),
            Some(url) => {
                let r = http::Request::get(&url)
                    .basic_auth(&self.account.email, &self.account.password)
                    .header("Accept", "text/event-stream")
                    .head_only()
                    .send()
                    .await
                    .unwrap_or_else(|e| panic!("eventSourceUrl probe: {e}"));
                let content_type = r.header("content-type").unwrap_or_default().to_string();
                let is_stream = r.status == 200 && content_type.starts_with("text/event-stream");
                // NOTE: anything but a stream or "204 No Content" (Cyrus without push) is a
                // broken server or harness, not a "no push" answer
                assert!(
                    is_stream || r.status == 204,
                    "{}: GET {url} answered {} {content_type:?}: neither an event stream nor 204",
                    self.account.email,
                    r.status
                );
                (
                    is_stream,
                    format!("{} {content_type}", r.status).trim().to_string(),
                )
            }
        };
        PushSupport {
            event_source,
            websocket,
            event_source_probe,
        }
    }
}
