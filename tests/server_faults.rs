//! Server faults against the real servers, with an in-process worker (echo agent).
//!
//! `push_channel_silently_dead`: the server process is paused with SIGSTOP (no FIN reaches the
//! worker: its push channel just goes silent) while a burst is in flight, then resumed with
//! SIGCONT. The worker's push liveness (3 s here) must declare the channel dead and reconnect,
//! the worker must catch up through `Email/changes`, and every task of the burst, before and
//! after the pause, must get exactly one result, each run once. The pause lasts 8 s by default;
//! `TASKMAIL_FAULT_STOP_SECS=60` gives the issue's 60 s variant. It applies to servers with push
//! whose env file names the server's PID (Stalwart); others are skipped with a note, since
//! without push there is no channel to go silent.
//!
//! `server_restarted_mid_burst`: the server is stopped and started again on the same data
//! (`tests/mailserver/mailserver.sh restart NAME`, Stalwart or Cyrus+Postfix) while a burst of
//! slow tasks (the `counted` agent, 3 s a run) is running: runs finish while the server is away,
//! their results wait in the outbox; the worker must reconnect (JMAP and SMTP), catch up with the
//! tasks sent after the restart, and every task must get exactly one result, each run once.
//!
//! The pause and the restart happen inside the test, which must run under the shared e2e lock
//! (`flock /tmp/taskmail-e2e.lock env TASKMAIL_REQUIRE_SERVERS=1 cargo test --test
//! server_faults`); a drop guard resumes the server even when the test fails.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use taskmail::config::{Config, Env, Mode};
use taskmail::daemon::EventKind;
use taskmail::transport::Hint;

use support::Server;
use support::daemon::{Mailer, Worker, on_every_server, pushes, worker_config_text};

/// Tasks before the pause and after it.
const BURST: usize = 6;

fn stop_secs() -> u64 {
    std::env::var("TASKMAIL_FAULT_STOP_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8)
}

/// The server's PID from its env file (`PID=`), if it names one.
fn server_pid(server: &Server) -> Option<u32> {
    let text = std::fs::read_to_string(&server.env_file).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("PID="))
        .and_then(|v| v.trim().trim_matches('"').parse().ok())
}

fn signal(pid: u32, sig: &str) {
    let status = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill {sig} {pid} failed");
}

/// Resumes the paused server when dropped (also when the test panics).
struct Paused(u32);

impl Paused {
    fn new(pid: u32) -> Paused {
        let paused = Paused(pid);
        signal(pid, "-STOP");
        paused
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-CONT", &self.0.to_string()])
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn push_channel_silently_dead() {
    on_every_server(|server| async move {
        let label = server.label();
        let Some(pid) = server_pid(&server).filter(|_| pushes(&server)) else {
            eprintln!(
                "{label}: no push or no PID in the env file: the SIGSTOP case does not apply"
            );
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        // NOTE: a claim round in flight when the server stops is answered after it resumes,
        // too late to be entered: its mails wait `lease` for a takeover (src/daemon/lease.rs),
        // kept short here to stay within the wait for results.
        let text = worker_config_text(
            &server,
            dir.path(),
            "echo",
            "concurrency = 4\nlease = \"15s\"",
        )
        .replace("concurrency = 2\n", "")
        .replace(
                "poll-interval = \"30s\" }",
                "poll-interval = \"30s\", push-liveness = \"3s\" }",
            );
        assert!(text.contains("push-liveness"), "{label}: config: {text}");
        let config =
            Config::from_toml_str_with_env(&text, Mode::Strict, &Env::with_home(dir.path()))
                .unwrap_or_else(|e| panic!("{label}: config: {e}\n{text}"));
        let worker = Worker::start_with_config(&server, dir.path(), "echo", config).await;
        let dispatcher = Mailer::new(&server, "dispatcher").await;
        let token = support::unique_token();

        // A burst, then the pause right behind it: some tasks are mid-flight when it hits.
        let mut ids = Vec::new();
        for i in 0..BURST {
            let id = format!("faultstop-{token}-a{i}");
            dispatcher
                .dispatch(&id, &format!("before {i}"), None, None)
                .await;
            ids.push(id);
        }
        let stopped_at = Instant::now();
        {
            let _paused = Paused::new(pid);
            tokio::time::sleep(Duration::from_secs(stop_secs())).await;
        }
        let resumed_at = Instant::now();
        for i in 0..BURST {
            let id = format!("faultstop-{token}-b{i}");
            dispatcher
                .dispatch(&id, &format!("after {i}"), None, None)
                .await;
            ids.push(id);
        }
        for id in &ids {
            dispatcher.wait_intent(id, "task.result").await;
        }
        // Late duplicates would show up now.
        tokio::time::sleep(Duration::from_secs(3)).await;
        // One result mail per task: distinct Message-IDs. The same mail delivered twice (an
        // SMTP resend after a reply lost in the pause, same Message-ID) is counted apart.
        let mut redelivered = 0;
        for id in &ids {
            let all = dispatcher.all(id).await;
            let mut message_ids: Vec<String> = all
                .iter()
                .filter(|g| g.intent() == Some("task.result"))
                .map(|g| g.message_id())
                .collect();
            let copies = message_ids.len();
            message_ids.sort();
            message_ids.dedup();
            redelivered += copies - message_ids.len();
            assert_eq!(
                message_ids.len(),
                1,
                "{label}: task {id}: {} results ({copies} mails)",
                message_ids.len()
            );
        }
        let mut runs: BTreeMap<String, usize> = BTreeMap::new();
        for event in worker.events().iter() {
            if let EventKind::Started { .. } = &event.kind
                && let Some(id) = event.kind.task_id()
            {
                *runs.entry(id.as_str().to_owned()).or_default() += 1;
            }
        }
        for id in &ids {
            assert_eq!(runs.get(id), Some(&1), "{label}: task {id} runs: {runs:?}");
        }
        // The worker noticed the silence and reconnected: a Connected hint after the pause
        // began (the liveness time is shorter than the pause).
        let reconnects = worker
            .hints
            .lock()
            .unwrap()
            .iter()
            .filter(|(at, hint)| *at > stopped_at && matches!(hint, Hint::Connected(_)))
            .count();
        assert!(
            reconnects >= 1,
            "{label}: no reconnect after the pause ({:?} paused)",
            resumed_at - stopped_at
        );
        eprintln!(
            "{label}: {} tasks, paused {:?}, {reconnects} reconnect(s), every task one result ({redelivered} redelivered copies)",
            ids.len(),
            resumed_at - stopped_at
        );
        worker.stop().await;
    })
    .await;
}

/// Runs `tests/mailserver/mailserver.sh restart NAME` (under the caller's e2e lock) and returns
/// how long it took.
async fn restart_server(server: &Server) -> Duration {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/mailserver/mailserver.sh"
    );
    let started = Instant::now();
    let output = tokio::process::Command::new("bash")
        .args([script, "restart", &server.name])
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "{}: restart failed: {}",
        server.label(),
        String::from_utf8_lossy(&output.stderr)
    );
    started.elapsed()
}

/// Runs per task from the worker's events.
fn runs_per_task(worker: &Worker) -> BTreeMap<String, usize> {
    let mut runs: BTreeMap<String, usize> = BTreeMap::new();
    for event in worker.events().iter() {
        if let EventKind::Started { .. } = &event.kind
            && let Some(id) = event.kind.task_id()
        {
            *runs.entry(id.as_str().to_owned()).or_default() += 1;
        }
    }
    runs
}

/// Every task of `ids` has exactly one result mail (distinct Message-IDs; the same mail
/// delivered twice is counted apart and returned).
async fn assert_one_result_each(label: &str, dispatcher: &Mailer, ids: &[String]) -> usize {
    let mut redelivered = 0;
    for id in ids {
        let all = dispatcher.all(id).await;
        let mut message_ids: Vec<String> = all
            .iter()
            .filter(|g| g.intent() == Some("task.result"))
            .map(|g| g.message_id())
            .collect();
        let copies = message_ids.len();
        message_ids.sort();
        message_ids.dedup();
        redelivered += copies - message_ids.len();
        assert_eq!(
            message_ids.len(),
            1,
            "{label}: task {id}: {} results ({copies} mails)",
            message_ids.len()
        );
    }
    redelivered
}

/// Tasks before the restart (slow: some are running when it hits) and after it.
const RESTART_BEFORE: usize = 10;
const RESTART_AFTER: usize = 6;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn server_restarted_mid_burst() {
    on_every_server(|server| async move {
        let label = server.label();
        let dir = tempfile::tempdir().unwrap();
        // NOTE: a claim round cut by the restart after its write was answered late leaves our
        // lease on its mails, owned by nobody, until a takeover after `lease` (the module docs
        // of src/daemon/lease.rs): a short lease keeps that within the wait for results.
        let text = worker_config_text(
            &server,
            dir.path(),
            "counted",
            "concurrency = 4\nlease = \"15s\"",
        )
        .replace("concurrency = 2\n", "");
        let config =
            Config::from_toml_str_with_env(&text, Mode::Strict, &Env::with_home(dir.path()))
                .unwrap_or_else(|e| panic!("{label}: config: {e}\n{text}"));
        let worker = Worker::start_with_config(&server, dir.path(), "counted", config).await;
        let dispatcher = Mailer::new(&server, "dispatcher").await;
        let token = support::unique_token();
        let started = Instant::now();

        let mut ids = Vec::new();
        for i in 0..RESTART_BEFORE {
            let id = format!("restart-{token}-a{i}");
            dispatcher
                .dispatch(&id, &format!("before {i}"), None, None)
                .await;
            ids.push(id);
        }
        // The restart hits while the first runs are in flight (3 s each, 4 at a time).
        worker
            .wait_event("a first run", Duration::from_secs(30), |e| {
                matches!(e, EventKind::Started { .. })
            })
            .await;
        let restart_at = Instant::now();
        let away = restart_server(&server).await;
        for i in 0..RESTART_AFTER {
            let id = format!("restart-{token}-b{i}");
            dispatcher
                .dispatch(&id, &format!("after {i}"), None, None)
                .await;
            ids.push(id);
        }
        for id in &ids {
            dispatcher.wait_intent(id, "task.result").await;
        }
        let caught_up = started.elapsed();
        // Late duplicates would show up now.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let redelivered = assert_one_result_each(&label, &dispatcher, &ids).await;
        let runs = runs_per_task(&worker);
        for id in &ids {
            assert_eq!(runs.get(id), Some(&1), "{label}: task {id} runs: {runs:?}");
        }
        // With push, the channel broke with the server and came back.
        let reconnects = worker
            .hints
            .lock()
            .unwrap()
            .iter()
            .filter(|(at, hint)| *at > restart_at && matches!(hint, Hint::Connected(_)))
            .count();
        if pushes(&server) {
            assert!(reconnects >= 1, "{label}: push never reconnected after the restart");
        }
        // The health file tells the same: a sync after the restart, nothing left in the outbox,
        // the lost push channel counted.
        let back = taskmail::clock::now();
        let health = support::eventually("a fresh health file", Duration::from_secs(15), || async {
            taskmail::daemon::status::read_health(&dir.path().join("state"), "worker")
                .filter(|h| h.recorded_at > back)
        })
        .await;
        assert!(
            health.events.last_sync_at.is_some_and(|t| t > back - chrono::TimeDelta::seconds(30)),
            "{label}: {health:?}"
        );
        assert_eq!(health.outbox.pending, 0, "{label}: {health:?}");
        if pushes(&server) {
            assert!(health.reconnects() >= 1, "{label}: {health:?}");
            assert!(health.problems(back).is_empty(), "{label}: {health:?}");
        }
        eprintln!(
            "{label}: {} tasks, server away {away:?} (restart script), all results after {caught_up:?}, {reconnects} push reconnect(s), every task one result and one run ({redelivered} redelivered copies)",
            ids.len()
        );
        worker.stop().await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// JMAP 429 and 503: a stand-in server on 127.0.0.1 (no real server can be told to refuse)

/// Serves the session, then answers the API with `refusals` (status, Retry-After) in turn and
/// afterwards with a `Core/echo` response; counts the API requests.
async fn refusing_server(
    refusals: Vec<(u16, Option<&'static str>)>,
) -> (String, std::sync::Arc<std::sync::Mutex<Vec<Instant>>>) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let hits = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = std::sync::Arc::clone(&hits);
    let session = serde_json::json!({
        "capabilities": {
            "urn:ietf:params:jmap:core": { "maxCallsInRequest": 16 },
            "urn:ietf:params:jmap:mail": {},
        },
        "username": "worker@example.test",
        "apiUrl": "/api",
        "downloadUrl": "/download/{accountId}/{blobId}/{name}?accept={type}",
        "uploadUrl": "/upload/{accountId}/",
        "state": "s0",
        "primaryAccounts": { "urn:ietf:params:jmap:mail": "a1" },
    })
    .to_string();
    tokio::spawn(async move {
        let mut refusals = refusals.into_iter();
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let mut buffer = Vec::new();
            let mut chunk = [0u8; 4096];
            // Headers, then the body by Content-Length.
            let (head_end, length) = loop {
                let n = stream.read(&mut chunk).await.unwrap_or(0);
                if n == 0 {
                    break (None, 0);
                }
                buffer.extend_from_slice(&chunk[..n]);
                if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&buffer[..end]).to_ascii_lowercase();
                    let length = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    break (Some(end + 4), length);
                }
            };
            let Some(head_end) = head_end else { continue };
            while buffer.len() < head_end + length {
                let n = stream.read(&mut chunk).await.unwrap_or(0);
                if n == 0 {
                    break;
                }
                buffer.extend_from_slice(&chunk[..n]);
            }
            let (status, extra, body) = if buffer.starts_with(b"GET") {
                (200, String::new(), session.clone())
            } else {
                log.lock().unwrap().push(Instant::now());
                match refusals.next() {
                    Some((status, retry_after)) => (
                        status,
                        retry_after
                            .map(|v| format!("Retry-After: {v}\r\n"))
                            .unwrap_or_default(),
                        "{}".to_owned(),
                    ),
                    None => (
                        200,
                        String::new(),
                        r#"{"methodResponses":[["Core/echo",{"hello":"again"},"c0"]],"sessionState":"s0"}"#
                            .to_owned(),
                    ),
                }
            };
            let reply = format!(
                "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(reply.as_bytes()).await;
            let _ = stream.shutdown().await;
        }
    });
    (base, hits)
}

#[tokio::test]
async fn jmap_429_and_503_are_retried_honouring_retry_after() {
    taskmail::transport::init_crypto();
    let (base, hits) = refusing_server(vec![(429, Some("2")), (503, None)]).await;
    let settings = taskmail::transport::JmapSettings::new(
        format!("{base}/.well-known/jmap"),
        "worker@example.test",
        "pw",
    );
    let client = taskmail::transport::JmapClient::connect(settings)
        .await
        .unwrap();
    let started = Instant::now();
    let answer = client
        .call("Core/echo", serde_json::json!({ "hello": "again" }))
        .await
        .unwrap();
    assert_eq!(answer["hello"], "again");
    let hits = hits.lock().unwrap().clone();
    assert_eq!(hits.len(), 3, "one request, two refusals, one success");
    // Retry-After: 2 was honoured, then the 1 s default backoff after the 503.
    assert!(
        hits[1] - hits[0] >= Duration::from_millis(1900),
        "{:?}",
        hits[1] - hits[0]
    );
    assert!(
        hits[2] - hits[1] >= Duration::from_millis(900),
        "{:?}",
        hits[2] - hits[1]
    );
    assert!(started.elapsed() < Duration::from_secs(10));

    // A server that keeps refusing: the error comes back after the bounded retries, and a
    // Retry-After longer than the in-request limit goes straight back to the caller.
    let (base, hits) = refusing_server(vec![(503, Some("0")); 10]).await;
    let client = taskmail::transport::JmapClient::connect(taskmail::transport::JmapSettings::new(
        format!("{base}/s"),
        "w@example.test",
        "pw",
    ))
    .await
    .unwrap();
    let error = client
        .call("Core/echo", serde_json::json!({}))
        .await
        .unwrap_err();
    assert_eq!(error.status(), Some(503));
    assert!(error.is_transient());
    assert_eq!(
        hits.lock().unwrap().len(),
        4,
        "the first try and three retries"
    );
    let (base, hits) = refusing_server(vec![(429, Some("120"))]).await;
    let client = taskmail::transport::JmapClient::connect(taskmail::transport::JmapSettings::new(
        format!("{base}/s"),
        "w@example.test",
        "pw",
    ))
    .await
    .unwrap();
    let error = client
        .call("Core/echo", serde_json::json!({}))
        .await
        .unwrap_err();
    assert_eq!(error.retry_after(), Some(Duration::from_secs(120)));
    assert_eq!(hits.lock().unwrap().len(), 1);
}

// ---------------------------------------------------------------------------------------------
// SMTP 4xx and timeouts: a faulty proxy in front of the real submission port

/// The faults the proxy still has to inject, each used once, in the order the commands come.
#[derive(Debug, Default, Clone)]
struct SmtpFaults {
    /// `451` to a `MAIL FROM` (not forwarded).
    refuse_mail: usize,
    /// `451` to a `DATA` command (not forwarded).
    refuse_data: usize,
    /// No answer at all to a `MAIL FROM`: the client must time out.
    stall_mail: usize,
    /// The message is forwarded and accepted by the server, but its `250` is swallowed and the
    /// connection goes silent: the client times out and must resend (same Message-ID).
    lose_reply: usize,
}

impl SmtpFaults {
    fn take(counter: &mut usize) -> bool {
        let hit = *counter > 0;
        *counter = counter.saturating_sub(1);
        hit
    }

    fn left(&self) -> usize {
        self.refuse_mail + self.refuse_data + self.stall_mail + self.lose_reply
    }
}

/// Listens on 127.0.0.1 and relays every connection to `upstream`, one command and its reply
/// at a time, injecting `faults`. Returns the port.
async fn faulty_smtp_proxy(
    upstream: String,
    faults: std::sync::Arc<std::sync::Mutex<SmtpFaults>>,
) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else {
                return;
            };
            let upstream = upstream.clone();
            let faults = std::sync::Arc::clone(&faults);
            tokio::spawn(async move {
                let _ = relay(client, &upstream, faults).await;
            });
        }
    });
    port
}

/// One SMTP reply (every line of a multi-line one).
async fn read_reply(from: &mut (impl tokio::io::AsyncBufRead + Unpin)) -> std::io::Result<Vec<u8>> {
    use tokio::io::AsyncBufReadExt as _;
    let mut reply = Vec::new();
    loop {
        let mut line = Vec::new();
        if from.read_until(b'\n', &mut line).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let last = line.get(3) != Some(&b'-');
        reply.extend_from_slice(&line);
        if last {
            return Ok(reply);
        }
    }
}

async fn relay(
    client: tokio::net::TcpStream,
    upstream: &str,
    faults: std::sync::Arc<std::sync::Mutex<SmtpFaults>>,
) -> std::io::Result<()> {
    use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
    let server = tokio::net::TcpStream::connect(upstream).await?;
    let (client_read, mut client_write) = client.into_split();
    let (server_read, mut server_write) = server.into_split();
    let mut client_read = BufReader::new(client_read);
    let mut server_read = BufReader::new(server_read);
    client_write
        .write_all(&read_reply(&mut server_read).await?)
        .await?;
    loop {
        let mut line = Vec::new();
        if client_read.read_until(b'\n', &mut line).await? == 0 {
            return Ok(());
        }
        let upper = String::from_utf8_lossy(&line).to_ascii_uppercase();
        let is_mail = upper.starts_with("MAIL FROM");
        let is_data = upper.trim_end() == "DATA";
        let (refuse, stall) = {
            let mut f = faults.lock().unwrap();
            if is_mail && SmtpFaults::take(&mut f.refuse_mail) {
                (true, false)
            } else if is_mail && SmtpFaults::take(&mut f.stall_mail) {
                (false, true)
            } else if is_data && SmtpFaults::take(&mut f.refuse_data) {
                (true, false)
            } else {
                (false, false)
            }
        };
        if stall {
            // Silence until the client gives up.
            let mut rest = Vec::new();
            let _ = tokio::io::AsyncReadExt::read_to_end(&mut client_read, &mut rest).await;
            return Ok(());
        }
        if refuse {
            client_write
                .write_all(b"451 4.3.0 proxy: try again later\r\n")
                .await?;
            continue;
        }
        server_write.write_all(&line).await?;
        let reply = read_reply(&mut server_read).await?;
        client_write.write_all(&reply).await?;
        if is_data && reply.starts_with(b"354") {
            // The message, up to the lone dot, then the server's verdict on it.
            loop {
                let mut body_line = Vec::new();
                if client_read.read_until(b'\n', &mut body_line).await? == 0 {
                    return Ok(());
                }
                server_write.write_all(&body_line).await?;
                if body_line == b".\r\n" {
                    break;
                }
            }
            let verdict = read_reply(&mut server_read).await?;
            if SmtpFaults::take(&mut faults.lock().unwrap().lose_reply) {
                let mut rest = Vec::new();
                let _ = tokio::io::AsyncReadExt::read_to_end(&mut client_read, &mut rest).await;
                return Ok(());
            }
            client_write.write_all(&verdict).await?;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn smtp_4xx_and_timeouts_neither_lose_nor_duplicate() {
    on_every_server(|server| async move {
        let label = server.label();
        let faults = std::sync::Arc::new(std::sync::Mutex::new(SmtpFaults {
            refuse_mail: 5,
            refuse_data: 2,
            stall_mail: 1,
            lose_reply: 1,
        }));
        let planned = faults.lock().unwrap().left();
        let port = faulty_smtp_proxy(
            format!("{}:{}", server.smtp_host, server.submission_port),
            std::sync::Arc::clone(&faults),
        )
        .await;
        let dir = tempfile::tempdir().unwrap();
        let text = worker_config_text(&server, dir.path(), "echo", "")
            .replace(
                &format!("port = {}, ", server.submission_port),
                &format!("port = {port}, "),
            )
            .replace("timeout = \"15s\"", "timeout = \"2s\"");
        assert!(text.contains(&format!("port = {port}")), "{label}: {text}");
        let config =
            Config::from_toml_str_with_env(&text, Mode::Strict, &Env::with_home(dir.path()))
                .unwrap_or_else(|e| panic!("{label}: config: {e}\n{text}"));
        let worker = Worker::start_with_config(&server, dir.path(), "echo", config).await;
        let dispatcher = Mailer::new(&server, "dispatcher").await;
        let token = support::unique_token();
        let started = Instant::now();
        let mut ids = Vec::new();
        for i in 0..8 {
            let id = format!("smtpfault-{token}-{i}");
            dispatcher.dispatch(&id, &format!("task {i}"), None, None).await;
            ids.push(id);
        }
        for id in &ids {
            dispatcher.wait_intent(id, "task.result").await;
        }
        let elapsed = started.elapsed();
        tokio::time::sleep(Duration::from_secs(3)).await;
        let left = faults.lock().unwrap().left();
        assert_eq!(left, 0, "{label}: {left} of {planned} faults were never hit");
        assert_one_result_each(&label, &dispatcher, &ids).await;
        let runs = runs_per_task(&worker);
        for id in &ids {
            assert_eq!(runs.get(id), Some(&1), "{label}: task {id} runs: {runs:?}");
        }
        // Copies of one mail (any intent) under one Message-ID: the resend after the lost reply,
        // unless the server dropped the copy itself.
        let mut copies = 0;
        for id in &ids {
            let all = dispatcher.all(id).await;
            let mut message_ids: Vec<String> = all.iter().map(|g| g.message_id()).collect();
            let n = message_ids.len();
            message_ids.sort();
            message_ids.dedup();
            copies += n - message_ids.len();
        }
        // The outbox marked every message sent once, under one Message-ID.
        let mut sent: BTreeMap<String, usize> = BTreeMap::new();
        for event in worker.events().iter() {
            if let EventKind::Sent { message_id, .. } = &event.kind {
                *sent.entry(message_id.clone()).or_default() += 1;
            }
        }
        assert!(
            sent.values().all(|n| *n == 1),
            "{label}: a message was sent twice: {sent:?}"
        );
        // `taskmail doctor` reads the daemon's health file: the SMTP errors went by, nothing
        // is pending, the push channel (if any) and the last sync are reported.
        let after = taskmail::clock::now();
        let health = support::eventually("a fresh health file", Duration::from_secs(15), || async {
            taskmail::daemon::status::read_health(&dir.path().join("state"), "worker")
                .filter(|h| h.recorded_at > after)
        })
        .await;
        assert!(health.events.last_smtp_error.is_some(), "{label}: {health:?}");
        assert_eq!(health.outbox.pending, 0, "{label}: {health:?}");
        std::fs::write(dir.path().join("config.toml"), &text).unwrap();
        let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_taskmail"))
            .arg("-c")
            .arg(dir.path().join("config.toml"))
            .args(["doctor", "--json", "--account", "worker"])
            .env("HOME", dir.path())
            .env_remove("TASKMAIL_CONFIG")
            .output()
            .await
            .unwrap();
        let report: serde_json::Value = serde_json::from_slice(&output.stdout)
            .unwrap_or_else(|e| panic!("{label}: doctor printed no JSON ({e}): {output:?}"));
        let check = report["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["check"] == "health")
            .unwrap_or_else(|| panic!("{label}: no health check: {report:#}"))
            .clone();
        assert_eq!(check["status"], "pass", "{label}: {check:#}");
        let smtp_error = check["data"]["lastSmtpError"].as_str().unwrap_or_default();
        assert!(
            smtp_error.contains("451") || smtp_error.contains("no answer"),
            "{label}: {check:#}"
        );
        assert!(check["data"]["lastSyncAt"].is_string(), "{label}: {check:#}");
        assert_eq!(check["data"]["outbox"]["pending"], 0, "{label}: {check:#}");
        assert_eq!(
            check["data"]["push"]["channel"] != "poll",
            pushes(&server),
            "{label}: {check:#}"
        );
        eprintln!(
            "{label}: {} tasks through {planned} SMTP faults in {elapsed:?}: one result each, one run each, {} outbox sends, {copies} duplicate cop(ies) under one Message-ID",
            ids.len(),
            sent.len()
        );
        worker.stop().await;
    })
    .await;
}
