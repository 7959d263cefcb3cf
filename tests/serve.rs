//! The local operator API (`taskmail serve`) end to end, against the real servers of the
//! harness (`bash tests/mailserver/mailserver.sh up all`): Stalwart (push) and Cyrus+Postfix
//! (polling).
//!
//! Each case starts [`taskmail::serve::Server`] in-process on 127.0.0.1:0 with two agents,
//! `alpha` (`dispatcher@`, handle `@test.alpha`) and `beta` (`worker2@`, handle `@test.beta`),
//! and talks to it over real HTTP (reqwest) and WebSocket (tokio-tungstenite). Envelopes go
//! through SMTP submission and come back through JMAP: every assertion about a delivery reads
//! the recipient's mailbox through the API. Ids are fresh ULIDs and subjects carry
//! `support::unique_token()` (Cyrus mail persists across runs). With
//! `TASKMAIL_REQUIRE_SERVERS=1` a missing server fails.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use futures_util::{SinkExt as _, StreamExt as _};
use reqwest::StatusCode;
use serde_json::{Value, json};
use taskmail::config::{Config, Env, Mode};
use taskmail::serve::Server as ApiServer;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

use support::Server;
use support::daemon::{on_every_server, pushes};

const ALPHA_TOKEN: &str = "alpha-token-5f1c9a";
const BETA_TOKEN: &str = "beta-token-77d2e0";
const ALPHA: &str = "@test.alpha";
const BETA: &str = "@test.beta";

/// How long a delivery may take (Cyrus is polled every 250 ms; Stalwart pushes).
const DELIVERY: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------
// Harness

fn config_text(server: &Server, dir: &Path, extra: &str) -> String {
    let account = |name: &str, user: &str, handle: &str| {
        support::daemon::handle_account_toml(server, name, user, handle)
    };
    format!(
        r#"
state-dir = "{dir}/state"
{alpha}
{beta}
[asmtp]
backfill = "10m"

[trust]
require-authentication = false

[serve]
listen = "127.0.0.1:0"

[serve.agents.alpha]
account = "alpha"
token = {{ raw = "{ALPHA_TOKEN}" }}

[serve.agents.beta]
account = "beta"
token = {{ raw = "{BETA_TOKEN}" }}
{extra}
"#,
        dir = dir.display(),
        alpha = account("alpha", "dispatcher", ALPHA),
        beta = account("beta", "worker2", BETA),
    )
}

fn config(server: &Server, dir: &Path, extra: &str) -> Config {
    let text = config_text(server, dir, extra);
    Config::from_toml_str_with_env(&text, Mode::Strict, &Env::with_home(dir))
        .unwrap_or_else(|e| panic!("{}: test config: {e}\n{text}", server.label()))
}

/// A running API and an HTTP client for it.
struct Api {
    label: String,
    base: String,
    http: reqwest::Client,
    server: Option<ApiServer>,
    config: Config,
    _dir: tempfile::TempDir,
}

/// An answer: status and JSON body.
#[derive(Debug)]
struct Answer {
    status: StatusCode,
    body: Value,
}

impl Answer {
    fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
}

impl Api {
    async fn start(server: &Server) -> Api {
        support::init_crypto();
        let dir = tempfile::tempdir().unwrap();
        let config = config(server, dir.path(), "");
        let api = ApiServer::start(&config, None)
            .await
            .unwrap_or_else(|e| panic!("{}: serve: {e:?}", server.label()));
        let base = format!("http://{}", api.local_addr());
        Api {
            label: server.label(),
            base,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
            server: Some(api),
            config,
            _dir: dir,
        }
    }

    /// Stops the server and starts a new one on the same state dir (a new port): what a client
    /// sees across an operator restart.
    async fn restart(&mut self) {
        if let Some(server) = self.server.take() {
            server.stop().await.unwrap();
        }
        let api = ApiServer::start(&self.config, None).await.unwrap();
        self.base = format!("http://{}", api.local_addr());
        self.server = Some(api);
    }

    async fn stop(mut self) {
        if let Some(server) = self.server.take() {
            server.stop().await.unwrap();
        }
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> Answer {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.header("content-type", "application/json").body(body);
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{}: {path}: {e}", self.label));
        let status = resp.status();
        let bytes = resp.bytes().await.unwrap();
        let body = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            panic!(
                "{}: {path}: HTTP {status}: not JSON ({e}): {}",
                self.label,
                String::from_utf8_lossy(&bytes)
            )
        });
        Answer { status, body }
    }

    async fn get(&self, path: &str, token: &str) -> Answer {
        self.call(reqwest::Method::GET, path, Some(token), None)
            .await
    }

    async fn post(&self, path: &str, token: &str, body: &Value) -> Answer {
        self.call(
            reqwest::Method::POST,
            path,
            Some(token),
            Some(body.to_string().into_bytes()),
        )
        .await
    }

    async fn delete(&self, path: &str, token: &str, body: &Value) -> Answer {
        self.call(
            reqwest::Method::DELETE,
            path,
            Some(token),
            Some(body.to_string().into_bytes()),
        )
        .await
    }

    /// Makes alpha and beta reach each other (both directions: reachability is symmetric).
    async fn pair_up(&self) {
        let a = self
            .post("/allowlist", ALPHA_TOKEN, &json!({"entries": [BETA]}))
            .await;
        assert_eq!(a.status, StatusCode::OK, "{}: {a:?}", self.label);
        let b = self
            .post("/allowlist", BETA_TOKEN, &json!({"entries": [ALPHA]}))
            .await;
        assert_eq!(b.status, StatusCode::OK, "{}: {b:?}", self.label);
    }

    /// Every row of the mailbox of `token` from `start` on, paging by `limit`.
    /// With `restart_after_first`, the server is restarted between the first and second page.
    async fn page_all(
        &mut self,
        token: &str,
        start: Option<(i64, String)>,
        limit: u32,
        restart_after_first: bool,
    ) -> Vec<Value> {
        let mut rows = Vec::new();
        let mut cursor = start;
        for n in 0..200 {
            if n == 1 && restart_after_first {
                self.restart().await;
            }
            let path = match &cursor {
                Some((at, id)) => {
                    format!("/mailbox?limit={limit}&after_created_at={at}&after_envelope_id={id}")
                }
                None => format!("/mailbox?limit={limit}"),
            };
            let page = self.get(&path, token).await;
            assert_eq!(page.status, StatusCode::OK, "{}: {page:?}", self.label);
            let got = page.body["envelopes"].as_array().unwrap().clone();
            assert!(got.len() <= limit as usize);
            rows.extend(got.iter().cloned());
            match page.body["next_cursor"].as_object() {
                Some(next) => {
                    assert_eq!(got.len(), limit as usize, "next_cursor only on a full page");
                    let last = got.last().unwrap();
                    assert_eq!(next["after_created_at"], last["created_at"]);
                    assert_eq!(next["after_envelope_id"], last["id"]);
                    cursor = Some((
                        next["after_created_at"].as_i64().unwrap(),
                        next["after_envelope_id"].as_str().unwrap().to_owned(),
                    ));
                }
                None => return rows,
            }
        }
        panic!("{}: more than 200 pages", self.label);
    }

    /// Waits until every id in `ids` is listed in the mailbox of `token`; returns the rows.
    async fn wait_listed(&self, token: &str, ids: &[String]) -> Vec<Value> {
        let what = format!("{}: {} envelope(s) listed", self.label, ids.len());
        support::eventually(&what, DELIVERY, || async {
            let page = self.get("/mailbox?order=desc&limit=1000", token).await;
            let rows = page.body["envelopes"].as_array()?.clone();
            let found: Vec<Value> = rows
                .into_iter()
                .filter(|r| ids.iter().any(|id| r["id"] == json!(id)))
                .collect();
            (found.len() >= ids.len()).then_some(found)
        })
        .await
    }
}

/// POSTs `chunks` chunks of `size` spaces with `Transfer-Encoding: chunked` (no declared
/// length) over a raw connection; returns the response head and body as text.
async fn chunked_post(base: &str, path: &str, token: &str, chunks: usize, size: usize) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let addr = base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let chunk = format!("{size:x}\r\n{}\r\n", " ".repeat(size));
    for _ in 0..chunks {
        // NOTE: the server may answer and close before the last chunk; that is the point.
        if stream.write_all(chunk.as_bytes()).await.is_err() {
            break;
        }
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// The next WebSocket event of `kind` whose `field` is `id`, within [`DELIVERY`]; other
/// events are skipped.
async fn next_event<S>(label: &str, ws: &mut S, kind: &str, field: &str, id: &str) -> Value
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    tokio::time::timeout(DELIVERY, async {
        while let Some(msg) = ws.next().await {
            if let Ok(Message::Text(text)) = msg {
                let v: Value = serde_json::from_str(&text).unwrap();
                if v["type"] == json!(kind) && v[field] == json!(id) {
                    return Some(v);
                }
            }
        }
        None
    })
    .await
    .unwrap_or_else(|_| panic!("{label}: no {kind} within {DELIVERY:?}"))
    .unwrap_or_else(|| panic!("{label}: the WebSocket closed"))
}

fn new_id() -> String {
    ulid::Ulid::new().to_string()
}

fn envelope(id: &str, to: &str, subject: &str, text: &str) -> Value {
    json!({
        "id": id,
        "to": [to],
        "subject": subject,
        "content_parts": [{"type": "text", "text": text}],
    })
}

// ---------------------------------------------------------------------------------------------
// The cases

/// Tokens, health, the error shape and every 400 the API answers before touching mail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_health_and_request_errors() {
    on_every_server(|server| async move {
        let started = Instant::now();
        let api = Api::start(&server).await;
        let l = api.label.clone();

        // 401: no token, unknown token, another scheme; the token never echoes back.
        let none = api
            .call(reqwest::Method::GET, "/mailbox", None, None)
            .await;
        assert_eq!(none.status, StatusCode::UNAUTHORIZED, "{l}: {none:?}");
        assert_eq!(none.code(), "UNAUTHORIZED");
        let wrong = api.get("/mailbox", "not-a-token").await;
        assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
        assert!(!wrong.body.to_string().contains("not-a-token"));
        let basic = api
            .http
            .get(format!("{}/mailbox", api.base))
            .basic_auth("alpha", Some(ALPHA_TOKEN))
            .send()
            .await
            .unwrap();
        assert_eq!(basic.status(), StatusCode::UNAUTHORIZED);
        // ?token= only on /connect.
        let query = api
            .call(
                reqwest::Method::GET,
                &format!("/mailbox?token={ALPHA_TOKEN}"),
                None,
                None,
            )
            .await;
        assert_eq!(query.status, StatusCode::UNAUTHORIZED, "{l}: {query:?}");
        let ws = api
            .http
            .get(format!("{}/connect", api.base))
            .send()
            .await
            .unwrap();
        assert_eq!(ws.status(), StatusCode::UNAUTHORIZED);

        // healthz: no token, every server reachable.
        let health = api
            .call(reqwest::Method::GET, "/healthz", None, None)
            .await;
        assert_eq!(health.status, StatusCode::OK, "{l}: {health:?}");
        assert_eq!(health.body["ok"], json!(true));
        let agents = health.body["agents"].as_array().unwrap();
        assert_eq!(agents.len(), 2);
        assert!(agents.iter().all(|a| a["jmap"]["reachable"] == json!(true)
            && a["smtp"]["reachable"] == json!(true)));
        assert!(!health.body.to_string().contains(ALPHA_TOKEN));

        // Unknown route and method: JSON errors too.
        let nothing = api.get("/nothing", ALPHA_TOKEN).await;
        assert_eq!(nothing.status, StatusCode::NOT_FOUND);
        assert_eq!(nothing.code(), "NOT_FOUND");
        let method = api
            .call(reqwest::Method::PUT, "/messages", Some(ALPHA_TOKEN), None)
            .await;
        assert_eq!(method.status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(method.code(), "METHOD_NOT_ALLOWED");

        // Over 1 MiB: 400 PAYLOAD_TOO_LARGE, declared or streamed.
        let big = envelope(&new_id(), BETA, "big", &"x".repeat(1 << 20));
        let too_large = api.post("/messages", ALPHA_TOKEN, &big).await;
        assert_eq!(too_large.status, StatusCode::BAD_REQUEST, "{l}");
        assert_eq!(too_large.code(), "PAYLOAD_TOO_LARGE");
        let streamed = chunked_post(&api.base, "/messages", ALPHA_TOKEN, 20, 64 * 1024).await;
        assert!(streamed.starts_with("HTTP/1.1 400"), "{l}: {streamed}");
        assert!(streamed.contains("PAYLOAD_TOO_LARGE"), "{l}: {streamed}");

        // Malformed JSON: 400 naming line and column; an invalid envelope: 400.
        let malformed = api
            .call(
                reqwest::Method::POST,
                "/messages",
                Some(ALPHA_TOKEN),
                Some(b"{\"to\": [\"@test.beta\"],\n \"subject\": }".to_vec()),
            )
            .await;
        assert_eq!(malformed.status, StatusCode::BAD_REQUEST);
        assert_eq!(malformed.code(), "INVALID_REQUEST");
        let message = malformed.body["error"]["message"].as_str().unwrap();
        assert!(message.contains("line 2"), "{l}: {message}");
        let bad_id = api
            .post(
                "/messages",
                ALPHA_TOKEN,
                &json!({"id": "nope", "to": [BETA], "content_parts": [{"type": "text", "text": "x"}]}),
            )
            .await;
        assert_eq!(bad_id.status, StatusCode::BAD_REQUEST, "{l}: {bad_id:?}");

        // Listing and fetching parameters.
        let half = api.get("/mailbox?after_created_at=1", ALPHA_TOKEN).await;
        assert_eq!(half.status, StatusCode::BAD_REQUEST);
        assert!(
            half.body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("together")
        );
        for q in ["limit=0", "limit=1001", "order=sideways"] {
            let a = api.get(&format!("/mailbox?{q}"), ALPHA_TOKEN).await;
            assert_eq!(a.status, StatusCode::BAD_REQUEST, "{l}: {q}");
        }
        let ids: Vec<String> = (0..101).map(|_| new_id()).collect();
        let many = api
            .get(&format!("/messages?ids={}", ids.join(",")), ALPHA_TOKEN)
            .await;
        assert_eq!(many.status, StatusCode::BAD_REQUEST);
        assert!(
            many.body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("at most 100")
        );
        let unknown = api
            .get(&format!("/messages/{}", new_id()), ALPHA_TOKEN)
            .await;
        assert_eq!(unknown.status, StatusCode::NOT_FOUND, "{l}: {unknown:?}");

        let facts = api.get("/monitor", ALPHA_TOKEN).await;
        assert_eq!(facts.status, StatusCode::OK, "{l}: {facts:?}");
        assert!(facts.body["facts"].is_array());
        let bad = api.get("/monitor?envelope_id=nope", ALPHA_TOKEN).await;
        assert_eq!(bad.status, StatusCode::BAD_REQUEST);

        api.stop().await;
        eprintln!("{l}: request errors in {} ms", started.elapsed().as_millis());
    })
    .await;
}

/// Send, the idempotency answers, read, read-many, mark read, and paging without gaps or
/// overlaps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_idempotency_read_and_paging() {
    on_every_server(|server| async move {
        let started = Instant::now();
        let mut api = Api::start(&server).await;
        let l = api.label.clone();
        let token = support::unique_token();
        api.pair_up().await;

        // 202, then the same id and body: 202 again, replayed, no second delivery.
        let id = new_id();
        let first = envelope(&id, BETA, &format!("idem {token}"), "hello beta");
        let sent = api.post("/messages", ALPHA_TOKEN, &first).await;
        assert_eq!(sent.status, StatusCode::ACCEPTED, "{l}: {sent:?}");
        assert_eq!(sent.body["id"], json!(id));
        assert_eq!(sent.body["recipients"], json!([BETA]));
        assert!(sent.body["received_ms"].as_u64().unwrap() > 0);
        assert!(sent.body["created_at"].as_u64().unwrap() > 0);
        let again = api.post("/messages", ALPHA_TOKEN, &first).await;
        assert_eq!(again.status, StatusCode::ACCEPTED, "{l}: {again:?}");
        assert_eq!(again.body["replayed"], json!(true));
        assert_eq!(again.body["created_at"], sent.body["created_at"]);

        // Same id, other body: 409 RETRY_MISMATCH; another sender's id: 409 ID_COLLISION.
        let changed = envelope(&id, BETA, &format!("idem {token}"), "another text");
        let mismatch = api.post("/messages", ALPHA_TOKEN, &changed).await;
        assert_eq!(mismatch.status, StatusCode::CONFLICT, "{l}: {mismatch:?}");
        assert_eq!(mismatch.code(), "RETRY_MISMATCH");
        let theirs = envelope(&id, ALPHA, &format!("idem {token}"), "hello beta");
        let collision = api.post("/messages", BETA_TOKEN, &theirs).await;
        assert_eq!(collision.status, StatusCode::CONFLICT, "{l}: {collision:?}");
        assert_eq!(collision.code(), "ID_COLLISION");

        // An unknown recipient fails the whole send: 404, nothing delivered to beta.
        let partial_id = new_id();
        let partial = json!({
            "id": partial_id,
            "to": [BETA, "@nobody.unknown"],
            "subject": format!("partial {token}"),
            "content_parts": [{"type": "text", "text": "x"}],
        });
        let refused = api.post("/messages", ALPHA_TOKEN, &partial).await;
        assert_eq!(refused.status, StatusCode::NOT_FOUND, "{l}: {refused:?}");

        // Exactly one delivery of the idempotent send.
        let rows = api.wait_listed(BETA_TOKEN, std::slice::from_ref(&id)).await;
        assert_eq!(rows.len(), 1, "{l}: {rows:?}");
        let row = &rows[0];
        assert_eq!(row["from"], json!(ALPHA));
        assert_eq!(row["seen"], json!(false));
        assert!(row.get("content_parts").is_none(), "frames carry no body");

        // Read: the body, marked read.
        let read = api.get(&format!("/messages/{id}"), BETA_TOKEN).await;
        assert_eq!(read.status, StatusCode::OK, "{l}: {read:?}");
        assert_eq!(read.body["content_parts"][0]["text"], json!("hello beta"));
        assert_eq!(read.body["from"], json!(ALPHA));
        let after = api.wait_listed(BETA_TOKEN, std::slice::from_ref(&id)).await;
        assert_eq!(after[0]["seen"], json!(true), "{l}");
        let other = api.get(&format!("/messages/{id}"), ALPHA_TOKEN).await;
        assert_eq!(
            other.status,
            StatusCode::NOT_FOUND,
            "{l}: not in alpha's mailbox"
        );

        // Five more for paging; get them all at once, then mark them read.
        let mut ids = Vec::new();
        for n in 0..5 {
            let pid = new_id();
            let sent = api
                .post(
                    "/messages",
                    ALPHA_TOKEN,
                    &envelope(&pid, BETA, &format!("page {n} {token}"), &format!("n={n}")),
                )
                .await;
            assert_eq!(sent.status, StatusCode::ACCEPTED, "{l}: {sent:?}");
            ids.push(pid);
        }
        api.wait_listed(BETA_TOKEN, &ids).await;
        let mut query = ids.clone();
        query.push(partial_id.clone());
        let many = api
            .get(&format!("/messages?ids={}", query.join(",")), BETA_TOKEN)
            .await;
        assert_eq!(many.status, StatusCode::OK, "{l}: {many:?}");
        assert_eq!(many.body["messages"].as_array().unwrap().len(), 5);
        assert_eq!(many.body["missing"], json!([partial_id]));

        // Pages of 2 from just before the first, the server restarted after the first page:
        // every id once, in cursor order.
        let newest = api.get("/mailbox?order=desc&limit=7", BETA_TOKEN).await;
        let newest = newest.body["envelopes"].as_array().unwrap().clone();
        let start = newest
            .iter()
            .position(|r| r["id"] == json!(id))
            .and_then(|i| newest.get(i + 1));
        let start = start.map(|r| {
            (
                r["created_at"].as_i64().unwrap(),
                r["id"].as_str().unwrap().to_owned(),
            )
        });
        let paged = api.page_all(BETA_TOKEN, start, 2, true).await;
        let cursors: Vec<(i64, String)> = paged
            .iter()
            .map(|r| {
                (
                    r["created_at"].as_i64().unwrap(),
                    r["id"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        assert!(cursors.windows(2).all(|w| w[0] < w[1]), "{l}: {cursors:?}");
        for want in ids.iter().chain(std::iter::once(&id)) {
            let n = cursors.iter().filter(|(_, got)| got == want).count();
            assert_eq!(n, 1, "{l}: {want} listed {n} times");
        }

        // The idempotency record survives the restart too.
        let replay = api.post("/messages", ALPHA_TOKEN, &first).await;
        assert_eq!(replay.status, StatusCode::ACCEPTED, "{l}: {replay:?}");
        assert_eq!(replay.body["replayed"], json!(true));

        let marked = api
            .post("/mailbox/read", BETA_TOKEN, &json!({"ids": ids}))
            .await;
        assert_eq!(marked.status, StatusCode::OK, "{l}: {marked:?}");
        assert_eq!(marked.body["marked"], json!(5));
        let unread = api.get("/mailbox?unread=true&limit=1000", BETA_TOKEN).await;
        let unread = unread.body["envelopes"].as_array().unwrap();
        assert!(
            !unread
                .iter()
                .any(|r| ids.iter().any(|i| r["id"] == json!(i))),
            "{l}: marked envelopes still unread"
        );

        api.stop().await;
        eprintln!(
            "{l}: send/read/paging in {} ms",
            started.elapsed().as_millis()
        );
    })
    .await;
}

/// A WebSocket client gets the frame of a new envelope live (push on Stalwart, polling on
/// Cyrus), authenticated by header or by ?token=.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_frames_arrive_live() {
    on_every_server(|server| async move {
        let api = Api::start(&server).await;
        let l = api.label.clone();
        let token = support::unique_token();
        api.pair_up().await;
        let ws_base = api.base.replacen("http://", "ws://", 1);

        let mut by_header = format!("{ws_base}/connect").into_client_request().unwrap();
        by_header.headers_mut().insert(
            "authorization",
            format!("Bearer {BETA_TOKEN}").parse().unwrap(),
        );
        let (mut header_ws, _) = tokio_tungstenite::connect_async(by_header).await.unwrap();
        let (mut query_ws, _) =
            tokio_tungstenite::connect_async(format!("{ws_base}/connect?token={BETA_TOKEN}"))
                .await
                .unwrap();
        let refused =
            tokio_tungstenite::connect_async(format!("{ws_base}/connect?token=wrong")).await;
        assert!(refused.is_err(), "{l}: a wrong token upgraded");

        let id = new_id();
        let started = Instant::now();
        let sent = api
            .post(
                "/messages",
                ALPHA_TOKEN,
                &envelope(&id, BETA, &format!("live {token}"), "ping"),
            )
            .await;
        assert_eq!(sent.status, StatusCode::ACCEPTED, "{l}: {sent:?}");
        let mut cursor = None;
        for ws in [&mut header_ws, &mut query_ws] {
            let frame = next_event(&l, ws, "envelope.notify", "id", &id).await;
            assert_eq!(frame["from"], json!(ALPHA));
            assert_eq!(frame["to"], json!([BETA]));
            assert_eq!(frame["subject"], json!(format!("live {token}")));
            assert!(frame.get("content_parts").is_none());
            cursor = Some(frame["created_at"].as_i64().unwrap());
        }
        let frame_ms = started.elapsed().as_millis();
        eprintln!(
            "{l}: send -> WebSocket frame in {frame_ms} ms ({})",
            if pushes(&server) { "push" } else { "polling" }
        );
        // A client that went away catches up from the cursor of the last frame it saw.
        let _ = header_ws.send(Message::Close(None)).await;
        let missed = new_id();
        let sent = api
            .post(
                "/messages",
                ALPHA_TOKEN,
                &envelope(&missed, BETA, &format!("missed {token}"), "while away"),
            )
            .await;
        assert_eq!(sent.status, StatusCode::ACCEPTED, "{l}: {sent:?}");
        api.wait_listed(BETA_TOKEN, std::slice::from_ref(&missed))
            .await;
        let at = cursor.unwrap();
        let catch_up = api
            .get(
                &format!("/mailbox?after_created_at={at}&after_envelope_id={id}"),
                BETA_TOKEN,
            )
            .await;
        let rows = catch_up.body["envelopes"].as_array().unwrap();
        assert!(
            rows.iter().any(|r| r["id"] == json!(missed)),
            "{l}: {catch_up:?}"
        );
        assert!(
            !rows.iter().any(|r| r["id"] == json!(id)),
            "{l}: the cursor row came back"
        );
        api.stop().await;
        // The server closes the other socket on shutdown.
        let end = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match query_ws.next().await {
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                    Some(Ok(_)) => {}
                }
            }
        })
        .await;
        assert!(end.is_ok(), "{l}: WebSocket still open after stop");
    })
    .await;
}

/// The allowlist and block endpoints change who gets through: a blocked sender's send is 404
/// and nothing arrives; lifting the block and allowing again lets mail through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowlist_and_blocks_decide_delivery() {
    on_every_server(|server| async move {
        let api = Api::start(&server).await;
        let l = api.label.clone();
        let token = support::unique_token();
        api.pair_up().await;

        let listed = api.get("/allowlist", BETA_TOKEN).await;
        assert_eq!(listed.status, StatusCode::OK);
        assert!(
            listed.body["allowlist"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["entry"] == json!(ALPHA)),
            "{l}: {listed:?}"
        );
        let glob = api
            .post("/allowlist", BETA_TOKEN, &json!({"entries": ["@test.*"]}))
            .await;
        assert_eq!(glob.status, StatusCode::BAD_REQUEST, "{l}: {glob:?}");

        // Beta blocks alpha: alpha's send is refused whole (404), nothing arrives.
        let blocked = api
            .post("/blocks", BETA_TOKEN, &json!({"entries": [ALPHA]}))
            .await;
        assert_eq!(blocked.status, StatusCode::OK, "{l}: {blocked:?}");
        assert_eq!(blocked.body["blocks"][0]["entry"], json!(ALPHA));
        let allow_blocked = api
            .post("/allowlist", BETA_TOKEN, &json!({"entries": [ALPHA]}))
            .await;
        assert_eq!(allow_blocked.status, StatusCode::CONFLICT);
        assert_eq!(allow_blocked.code(), "BLOCKED");
        let refused_id = new_id();
        let refused = api
            .post(
                "/messages",
                ALPHA_TOKEN,
                &envelope(&refused_id, BETA, &format!("blocked {token}"), "x"),
            )
            .await;
        assert_eq!(refused.status, StatusCode::NOT_FOUND, "{l}: {refused:?}");

        // Lift the block and allow again: mail gets through.
        let lifted = api
            .delete("/blocks", BETA_TOKEN, &json!({"entries": [ALPHA]}))
            .await;
        assert_eq!(lifted.status, StatusCode::OK, "{l}: {lifted:?}");
        assert_eq!(lifted.body["changed"], json!(1));
        assert_eq!(lifted.body["blocks"], json!([]));
        let ok_id = new_id();
        let still = api
            .post(
                "/messages",
                ALPHA_TOKEN,
                &envelope(&ok_id, BETA, &format!("unlisted {token}"), "x"),
            )
            .await;
        assert_eq!(
            still.status,
            StatusCode::NOT_FOUND,
            "{l}: unblocked is not allowed: {still:?}"
        );
        let allowed = api
            .post("/allowlist", BETA_TOKEN, &json!({"entries": [ALPHA]}))
            .await;
        assert_eq!(allowed.status, StatusCode::OK, "{l}: {allowed:?}");
        let sent = api
            .post(
                "/messages",
                ALPHA_TOKEN,
                &envelope(&ok_id, BETA, &format!("allowed {token}"), "x"),
            )
            .await;
        assert_eq!(sent.status, StatusCode::ACCEPTED, "{l}: {sent:?}");
        api.wait_listed(BETA_TOKEN, std::slice::from_ref(&ok_id))
            .await;
        let rows = api.get("/mailbox?order=desc&limit=1000", BETA_TOKEN).await;
        assert!(
            !rows.body["envelopes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["id"] == json!(refused_id)),
            "{l}: the refused envelope arrived"
        );

        // Disallow by query string.
        let removed = api
            .call(
                reqwest::Method::DELETE,
                &format!("/allowlist?entries={}", ALPHA.replace('@', "%40")),
                Some(BETA_TOKEN),
                None,
            )
            .await;
        assert_eq!(removed.status, StatusCode::OK, "{l}: {removed:?}");
        assert_eq!(removed.body["changed"], json!(1));
        api.stop().await;
    })
    .await;
}

/// The binary: `taskmail serve --json` prints a ready line with the bound address, answers
/// `/healthz`, and exits 0 with a stopped line on SIGTERM; a non-loopback `--listen` without
/// `allow-remote` is exit 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_serve_verb_starts_answers_and_stops() {
    on_every_server(|server| async move {
        use tokio::io::AsyncBufReadExt as _;
        let l = server.label();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, config_text(&server, dir.path(), "")).unwrap();
        let bin = env!("CARGO_BIN_EXE_taskmail");

        let refused = tokio::process::Command::new(bin)
            .args([
                "-c",
                path.to_str().unwrap(),
                "serve",
                "--json",
                "--listen",
                "0.0.0.0:7878",
            ])
            .output()
            .await
            .unwrap();
        assert_eq!(refused.status.code(), Some(2), "{l}: {refused:?}");
        let error: Value = serde_json::from_slice(&refused.stdout).unwrap();
        assert!(
            error["message"]
                .as_str()
                .unwrap()
                .contains("other machines"),
            "{l}: {error}"
        );

        let mut child = tokio::process::Command::new(bin)
            .args([
                "-c",
                path.to_str().unwrap(),
                "serve",
                "--json",
                "--listen",
                "127.0.0.1:0",
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let ready = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let ready: Value = serde_json::from_str(&ready).unwrap();
        assert_eq!(ready["event"], json!("ready"), "{l}: {ready}");
        assert_eq!(ready["agents"].as_array().unwrap().len(), 2);
        assert!(!ready.to_string().contains(ALPHA_TOKEN));
        let url = ready["url"].as_str().unwrap();
        let health: Value = reqwest::get(format!("{url}/healthz"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(health["ok"], json!(true), "{l}: {health}");
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id().unwrap()).unwrap());
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(status.code(), Some(0), "{l}");
        let stopped = lines.next_line().await.unwrap().unwrap_or_default();
        assert!(stopped.contains("\"stopped\""), "{l}: {stopped}");
    })
    .await;
}

/// A send with a monitor: the sender's WebSocket hears `monitor.fact` `stored` for the
/// recipient (from the server's delivery report, read by the follow loop's sync), and
/// `GET /monitor` serves the same persisted fact afterwards. The sender is beta (worker2@):
/// alpha's Inbox (dispatcher@) holds thousands of mails by this point of a full run, and a new
/// mailbox's first sync back-fills the oldest 1,000 of the window before it follows changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn monitor_facts_reach_the_senders_websocket() {
    on_every_server(|server| async move {
        let api = Api::start(&server).await;
        let l = api.label.clone();
        let token = support::unique_token();
        api.pair_up().await;
        let ws_base = api.base.replacen("http://", "ws://", 1);
        let (mut sender_ws, _) =
            tokio_tungstenite::connect_async(format!("{ws_base}/connect?token={BETA_TOKEN}"))
                .await
                .unwrap();
        let id = new_id();
        let monitor = format!("mon_{}", token.replace('-', "_"));
        let mut body = envelope(&id, ALPHA, &format!("monitored {token}"), "watch me");
        body["monitor"] = json!(monitor);
        let sent = api.post("/messages", BETA_TOKEN, &body).await;
        assert_eq!(sent.status, StatusCode::ACCEPTED, "{l}: {sent:?}");
        let started = Instant::now();
        let fact = next_event(&l, &mut sender_ws, "monitor.fact", "envelope_id", &id).await;
        eprintln!(
            "{l}: send -> monitor.fact on the WebSocket in {} ms",
            started.elapsed().as_millis()
        );
        assert_eq!(fact["fact"], json!("stored"), "{l}: {fact}");
        assert_eq!(fact["recipient_handle"], json!(ALPHA), "{l}: {fact}");
        assert_eq!(fact["monitor"], json!(monitor), "{l}: {fact}");
        let listed = api
            .get(&format!("/monitor?envelope_id={id}"), BETA_TOKEN)
            .await;
        assert_eq!(listed.status, StatusCode::OK, "{l}: {listed:?}");
        let facts = listed.body["facts"].as_array().unwrap();
        assert_eq!(facts.len(), 1, "{l}: {listed:?}");
        assert_eq!(facts[0]["fact"], json!("stored"), "{l}: {listed:?}");
        api.stop().await;
    })
    .await;
}
