//! Server faults against the real servers, with an in-process worker (echo agent).
//!
//! `push_channel_silently_dead`: the server process is paused with SIGSTOP (no FIN reaches the
//! worker: its push channel just goes silent) while a burst is in flight, then resumed with
//! SIGCONT. The worker's push liveness (3 s here) must declare the channel dead and reconnect,
//! the worker must catch up through `Email/changes`, and every task of the burst, before and
//! after the pause, must get exactly one result, each run once. The pause lasts 8 s by default;
//! `TASKMAIL_FAULT_STOP_SECS=60` gives the 60 s variant. It applies to servers with push
//! whose env file names the server's PID (Stalwart); others are skipped with a note, since
//! without push there is no channel to go silent.
//!
//! The pause happens inside the test, which must run under the shared e2e lock
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
use support::daemon::{Mailer, Worker, on_every_server, pushes, results, worker_config_text};

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
        let text = worker_config_text(&server, dir.path(), "echo", "concurrency = 4")
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
        for id in &ids {
            let all = dispatcher.all(id).await;
            assert_eq!(
                results(&all),
                1,
                "{label}: task {id}: {} results",
                results(&all)
            );
        }
        let mut runs: BTreeMap<String, usize> = BTreeMap::new();
        for event in worker.events.lock().unwrap().iter() {
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
            "{label}: {} tasks, paused {:?}, {reconnects} reconnect(s), every task one result",
            ids.len(),
            resumed_at - stopped_at
        );
        worker.stop().await;
    })
    .await;
}
