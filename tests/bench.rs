//! `taskmail bench` against the real servers: an in-process worker with the echo agent serves
//! worker@, the real binary dispatches a small burst from dispatcher@ and reports. The report's
//! counts must add up (every task answered once, nothing lost, nothing twice), its JSON must
//! have the documented shape, and the worker must have started each task exactly once.
//!
//! Run with `flock /tmp/taskmail-e2e.lock env TASKMAIL_REQUIRE_SERVERS=1 cargo test --test
//! bench`; `TASKMAIL_BENCH_TASKS` sets the burst (default 20).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use taskmail::daemon::EventKind;

use support::Server;
use support::daemon::{Worker, on_every_server, pushes};

fn tasks() -> usize {
    std::env::var("TASKMAIL_BENCH_TASKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20)
}

/// A config file for dispatcher@ of `server` in `dir`.
fn dispatcher_config(server: &Server, dir: &std::path::Path) -> std::path::PathBuf {
    let poll = if pushes(server) { "30s" } else { "250ms" };
    let text = format!(
        r#"
state-dir = "{dir}/dstate"

[accounts.dispatcher]
email = "dispatcher@{domain}"
password = {{ raw = "{password}" }}
smtp = {{ host = "{host}", port = {port}, tls = "plaintext", allow-plaintext = true, pool-size = 4, timeout = "15s" }}
jmap = {{ session-url = "{session}", poll-interval = "{poll}" }}

[dispatcher]
account = "dispatcher"
"#,
        dir = dir.display(),
        domain = server.domain,
        password = server.password,
        host = server.smtp_host,
        port = server.submission_port,
        session = server.jmap_session_url,
    );
    let path = dir.join("dispatcher.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bench_counts_every_task_once_with_an_echo_worker() {
    on_every_server(|server| async move {
        let n = tasks();
        let dir = tempfile::tempdir().unwrap();
        let worker = Worker::start(&server, dir.path(), "echo", "").await;
        let config = dispatcher_config(&server, dir.path());
        let output = tokio::time::timeout(
            Duration::from_secs(240),
            tokio::process::Command::new(env!("CARGO_BIN_EXE_taskmail"))
                .arg("-c")
                .arg(&config)
                .args([
                    "bench",
                    "--to",
                    &format!("worker@{}", server.domain),
                    "-n",
                    &n.to_string(),
                    "--concurrency",
                    "4",
                    "--body-size",
                    "200",
                    "--floor-samples",
                    "3",
                    "--floor-messages",
                    "10",
                    "--timeout",
                    "90s",
                    "--json",
                ])
                .env("TASKMAIL_LOG", "warn")
                .stdin(Stdio::null())
                .kill_on_drop(true)
                .output(),
        )
        .await
        .expect("the bench ends")
        .unwrap();
        let label = server.label();
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(
            output.status.code(),
            Some(0),
            "{label}: bench failed\nstdout: {stdout}\nstderr: {stderr}"
        );
        let report: Value = serde_json::from_str(stdout.trim())
            .unwrap_or_else(|e| panic!("{label}: not one JSON object ({e}): {stdout}"));
        eprintln!("{label}: {report}");
        assert_eq!(report["event"], "bench");
        assert_eq!(report["tasks"], n);
        assert_eq!(report["sent"], n, "{label}: {report}");
        assert_eq!(report["submitFailures"], 0);
        assert_eq!(report["answered"], n, "{label}: {report}");
        assert_eq!(report["results"], n, "{label}: {report}");
        assert_eq!(report["lost"], 0);
        assert_eq!(report["duplicates"], 0);
        assert!(report["redelivered"].is_number());
        for key in ["p50", "p90", "p99", "max"] {
            let v = report["latencyMs"][key].as_f64().unwrap_or(-1.0);
            assert!(v > 0.0, "{label}: latencyMs.{key} = {v}");
        }
        assert!(report["latencyMs"]["p50"].as_f64() <= report["latencyMs"]["max"].as_f64());
        assert!(report["tasksPerSecond"].as_f64().unwrap_or(0.0) > 0.0);
        assert_eq!(report["floor"]["samples"], 3, "{label}: {report}");
        assert!(report["floor"]["latencyMs"]["p50"].as_f64().unwrap_or(0.0) > 0.0);
        assert_eq!(report["floor"]["messages"], 10);
        assert!(report["floor"]["submitPerSecond"].as_f64().unwrap_or(0.0) > 0.0);
        assert_eq!(report["floor"]["delivered"], 10, "{label}: {report}");
        assert!(
            report["floor"]["deliverPerSecond"].as_f64().unwrap_or(0.0) > 0.0,
            "{label}: {report}"
        );
        assert!(report["overheadP50Ms"].is_number());

        // The worker ran each task exactly once.
        let mut runs: BTreeMap<String, usize> = BTreeMap::new();
        for event in worker.events().iter() {
            if let EventKind::Started { .. } = &event.kind
                && let Some(id) = event.kind.task_id()
            {
                *runs.entry(id.as_str().to_owned()).or_default() += 1;
            }
        }
        assert_eq!(runs.len(), n, "{label}: runs {runs:?}");
        assert!(runs.values().all(|&c| c == 1), "{label}: runs {runs:?}");
        worker.stop().await;
    })
    .await;
}
