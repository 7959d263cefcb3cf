//! Many workers on one mailbox, and crashes, against the real servers (README "Many workers,
//! one mailbox"): every task gets exactly one result mail in its thread, and no task runs twice.
//!
//! The agent is the `tally` profile: it sleeps a little, then, if the daemon that started it is
//! still its parent, appends its task's work dir name to a file shared by every worker of the
//! test (with the daemon's pid) and echoes. So the file counts the runs whose output reached a
//! daemon (a run whose daemon was killed under it is interrupted: its output is lost and nobody
//! can send it). A repeated run is accepted only when the daemon of every earlier run was then
//! killed before the result was submitted (the rule: re-run only if no result was sent). The
//! dispatcher's own mailbox is the record of what was sent.
//!
//! - `three_workers_share_one_mailbox`: three in-process daemons (separate state dirs, lease
//!   owners `f1`..`f3`) on worker@, `TASKMAIL_FAULT_TASKS` tasks (default 200), both servers.
//! - `a_killed_worker_loses_nothing`: a real `taskmail run` killed with SIGKILL
//!   `TASKMAIL_FAULT_KILLS` times (default 5) and restarted on its state dir (every other
//!   restart only after the lease ran out, so the live worker takes its mail over), next to an
//!   in-process worker, over `TASKMAIL_FAULT_KILL_TASKS` tasks (default 100), lease 6 s, runs
//!   of 0.2 s, both servers.
//!
//! Durations are printed (`-- --nocapture`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use support::Server;
use support::daemon::*;

fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `[worker]` lines and the `tally` profile, appending to `runs` and then sleeping `pause`
/// seconds (so that a kill can hit a run).
fn extra(server: &Server, owner: &str, runs: &Path, lease: &str, pause: &str) -> String {
    // NOTE: claims took up to 600 ms on both servers with three daemons on a loaded two-core
    // machine: a claim that overruns half the wait is not entered and costs a lease.
    let _ = server;
    let wait = "1500ms";
    format!(
        r#"lease = "{lease}"
lease-owner = "{owner}"
claim-wait = "{wait}"

[trust]
require-authentication = false
rate-limit = "100000/h"

[profiles.tally]
description = "echo, appending its work dir name to a shared file"
command = ["sh", "-c", 'sleep {pause}; if [ "$(cut -d" " -f4 /proc/$$/stat)" = "$PPID" ]; then echo "$(basename "$2") $PPID" >> "$3"; fi; printf "%s\n" "$1"', "tally", "{{prompt}}", "{{workdir}}", "{runs}"]
"#,
        runs = runs.display()
    )
}

/// Dispatches `n` tasks (8 submissions at a time); returns task id -> dispatch Message-ID.
async fn dispatch_all(
    dispatcher: &Mailer,
    token: &str,
    case: &str,
    n: usize,
) -> BTreeMap<String, String> {
    let mut sent = BTreeMap::new();
    let ids: Vec<String> = (0..n)
        .map(|i| task_id(token, &format!("{case}{i}")))
        .collect();
    for chunk in ids.chunks(8) {
        let texts: Vec<String> = chunk.iter().map(|id| format!("fault test {id}")).collect();
        let futures = chunk
            .iter()
            .zip(&texts)
            .map(|(id, text)| dispatcher.dispatch(id, text, None, None));
        let message_ids = futures_util::future::join_all(futures).await;
        for (id, message_id) in chunk.iter().zip(message_ids) {
            sent.insert(id.clone(), message_id);
        }
    }
    sent
}

/// Waits until every task has a result (or `timeout`), then a little more for duplicates.
async fn collect(
    dispatcher: &Mailer,
    tasks: &BTreeMap<String, String>,
    timeout: Duration,
) -> BTreeMap<String, Vec<Got>> {
    let deadline = Instant::now() + timeout;
    loop {
        dispatcher.poll().await;
        let done = {
            let seen = dispatcher.seen.lock().unwrap();
            tasks.keys().all(|id| {
                seen.iter()
                    .any(|g| g.task_id() == Some(id) && g.intent() == Some("task.result"))
            })
        };
        if done || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // NOTE: a duplicate would come late (a takeover after a lease): look again for a while.
    tokio::time::sleep(Duration::from_secs(5)).await;
    dispatcher.poll().await;
    let seen = dispatcher.seen.lock().unwrap();
    tasks
        .keys()
        .map(|id| {
            (
                id.clone(),
                seen.iter()
                    .filter(|g| g.task_id() == Some(id))
                    .cloned()
                    .collect(),
            )
        })
        .collect()
}

/// Every task: exactly one `completed` result, threaded onto its dispatch, and at most one ack.
fn assert_exactly_one_result(
    label: &str,
    tasks: &BTreeMap<String, String>,
    got: &BTreeMap<String, Vec<Got>>,
) {
    let mut problems = Vec::new();
    for (id, dispatch_id) in tasks {
        let mail = &got[id];
        // NOTE: counted by Message-ID: a copy of the same message (the mailbox reported one
        // twice) is not a second result; a second result has its own Message-ID.
        let mut ids = std::collections::BTreeSet::new();
        let results: Vec<&Got> = mail
            .iter()
            .filter(|g| g.intent() == Some("task.result") && ids.insert(g.message_id()))
            .collect();
        let acks = mail
            .iter()
            .filter(|g| g.intent() == Some("task.ack"))
            .map(Got::message_id)
            .collect::<std::collections::BTreeSet<_>>()
            .len();
        if results.len() != 1 {
            problems.push(format!("{id}: {} results", results.len()));
            continue;
        }
        let result = results[0];
        let bare = dispatch_id.trim_matches(['<', '>']);
        let threaded = result
            .fetched
            .inbound
            .in_reply_to
            .iter()
            .chain(result.fetched.inbound.references.iter())
            .any(|r| r.trim_matches(['<', '>']) == bare);
        if !threaded {
            problems.push(format!("{id}: the result is not in the dispatch's thread"));
        }
        if result.result().map(|r| r.status) != Some(taskmail::wire::aamp::Status::Completed) {
            problems.push(format!("{id}: result {:?}", result.result()));
        }
        if acks > 1 {
            problems.push(format!("{id}: {acks} acks"));
        }
    }
    assert!(problems.is_empty(), "{label}: {problems:#?}");
}

/// Runs per task, from the shared tally file.
fn runs(path: &Path, tasks: &BTreeMap<String, String>) -> BTreeMap<String, usize> {
    runs_by(path, tasks)
        .into_iter()
        .map(|(id, pids)| (id, pids.len()))
        .collect()
}

/// The daemon process (pid) of each run per task, in order, from the shared tally file.
fn runs_by(path: &Path, tasks: &BTreeMap<String, String>) -> BTreeMap<String, Vec<u32>> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    tasks
        .keys()
        .map(|id| {
            let name = taskmail::daemon::runner::work_dir_name(&taskmail::wire::aamp::TaskId::new(
                id.as_str(),
            ));
            let pids = text
                .lines()
                .filter_map(|l| l.split_once(' '))
                .filter(|(n, _)| *n == name)
                .map(|(_, pid)| pid.trim().parse().unwrap_or(0))
                .collect();
            (id.clone(), pids)
        })
        .collect()
}

fn started(worker: &Worker) -> usize {
    worker
        .events()
        .iter()
        .filter(|e| matches!(e.kind, taskmail::daemon::EventKind::Started { .. }))
        .count()
}

/// Three daemons, one mailbox: each task runs once and is answered once; each daemon did some.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_workers_share_one_mailbox() {
    on_every_server(|server: Server| async move {
        let label = server.label();
        let n = env_count("TASKMAIL_FAULT_TASKS", 200);
        let root = tempfile::tempdir().unwrap();
        let tally = root.path().join("runs.log");
        let mut workers = Vec::new();
        for owner in ["f1", "f2", "f3"] {
            let dir = root.path().join(owner);
            std::fs::create_dir_all(&dir).unwrap();
            workers.push(Worker::start(&server, &dir, "tally", &extra(&server, owner, &tally, "10s", "0")).await);
        }
        let dispatcher = Mailer::new(&server, "dispatcher").await;
        let token = support::unique_token();
        let began = Instant::now();
        let tasks = dispatch_all(&dispatcher, &token, "three", n).await;
        let submitted = began.elapsed();
        let got = collect(&dispatcher, &tasks, Duration::from_secs(60 + n as u64)).await;
        let elapsed = began.elapsed();
        let counts = runs(&tally, &tasks);
        for (id, mail) in &got {
            let results: Vec<String> = mail
                .iter()
                .filter(|g| g.intent() == Some("task.result"))
                .map(|g| g.message_id())
                .collect();
            if results.len() != 1 {
                println!("{label}: {id}: runs {} results {results:?}", counts[id]);
            }
        }
        assert_exactly_one_result(&label, &tasks, &got);
        let twice: Vec<_> = counts.iter().filter(|(_, c)| **c != 1).collect();
        assert!(twice.is_empty(), "{label}: runs per task not 1: {twice:?}");
        let shares: Vec<usize> = workers.iter().map(started).collect();
        assert_eq!(shares.iter().sum::<usize>(), n, "{label}: {shares:?}");
        assert!(
            shares.iter().all(|s| *s > 0),
            "{label}: every worker does a share: {shares:?}"
        );
        println!(
            "{label}: three workers, {n} tasks: submitted in {submitted:?}, all results in {elapsed:?} ({:.1} tasks/s), shares {shares:?}",
            n as f64 / elapsed.as_secs_f64()
        );
        for worker in workers {
            worker.stop().await;
        }
        assert_fixed_keyword_vocabulary(&server).await;
    })
    .await;
}

/// Every `$taskmail-` keyword on the worker's Inbox (newest 2,000 mails) comes from the fixed
/// vocabulary of leases and marks: Cyrus keeps at most 128 keyword names per mailbox and never
/// forgets one, so a name that varies with the daemon (its owner) or with time would in the end
/// leave no room for claims (`Too many user flags in mailbox`).
async fn assert_fixed_keyword_vocabulary(server: &Server) {
    let jmap = server.jmap(&server.account("worker")).await;
    let inbox = jmap.mailbox_with_role("inbox").await;
    let query = jmap
        .call(
            "Email/query",
            serde_json::json!({
                "filter": { "inMailbox": inbox },
                "sort": [{ "property": "receivedAt", "isAscending": false }],
                "limit": 2000,
            }),
        )
        .await;
    let ids: Vec<String> = query["ids"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|id| id.as_str().map(str::to_owned))
        .collect();
    let mut names = std::collections::BTreeSet::new();
    for chunk in ids.chunks(200) {
        for email in jmap.get_emails(chunk, &["keywords"]).await {
            if let Some(keywords) = email["keywords"].as_object() {
                names.extend(
                    keywords
                        .keys()
                        .map(|k| k.to_ascii_lowercase())
                        .filter(|k| k.starts_with("$taskmail-")),
                );
            }
        }
    }
    let fixed = |name: &str| {
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        matches!(
            name,
            "$taskmail-claimed"
                | "$taskmail-acked"
                | "$taskmail-result"
                | "$taskmail-done"
                | "$taskmail-beat"
        ) || name
            .strip_prefix("$taskmail-lo-")
            .is_some_and(|n| n.len() == 2 && digits(n) && n < "32")
            || name.strip_prefix("$taskmail-lease-").is_some_and(digits)
    };
    let odd: Vec<&String> = names.iter().filter(|n| !fixed(n)).collect();
    assert!(
        odd.is_empty(),
        "{}: keyword names outside the fixed vocabulary on {} mails: {odd:?}",
        server.label(),
        ids.len()
    );
    assert!(
        names.contains("$taskmail-done"),
        "{}: no finished task seen on {} mails: {names:?}",
        server.label(),
        ids.len()
    );
    // The mailbox's own table of keyword names (IMAP FLAGS: Cyrus lists every user flag it
    // ever allocated for the mailbox; Stalwart lists the system flags only).
    let table = imap_flags(server, "worker").await;
    let ours: Vec<&String> = table
        .iter()
        .filter(|f| f.starts_with("$taskmail-"))
        .collect();
    let odd: Vec<&&String> = ours.iter().filter(|n| !fixed(n)).collect();
    assert!(
        odd.is_empty(),
        "{}: the mailbox allocated keyword names outside the fixed vocabulary: {odd:?}",
        server.label()
    );
    assert!(
        ours.len() <= 32 + 1 + 4 + 4,
        "{}: {} taskmail keyword names allocated: {ours:?}",
        server.label(),
        ours.len()
    );
}

/// The FLAGS of the account's INBOX over IMAP (EXAMINE: read-only), lowercased.
async fn imap_flags(server: &Server, user: &str) -> Vec<String> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let label = server.label();
    let account = server.account(user);
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", server.imap_port))
        .await
        .unwrap_or_else(|e| panic!("{label}: IMAP connect: {e}"));
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    let mut flags = None;
    // One command at a time, each answered (tagged) before the next.
    let commands = [
        format!("a LOGIN \"{}\" \"{}\"", account.email, account.password),
        "b EXAMINE INBOX".to_owned(),
        "c LOGOUT".to_owned(),
    ];
    for command in commands {
        let tag = command[..2].to_owned();
        write
            .write_all(format!("{command}\r\n").as_bytes())
            .await
            .unwrap();
        loop {
            let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
                .await
                .unwrap_or_else(|_| panic!("{label}: IMAP: no answer to {tag}"))
                .unwrap_or_else(|e| panic!("{label}: IMAP: {e}"))
                .unwrap_or_else(|| panic!("{label}: IMAP: closed before {tag}"));
            if let Some(list) = line.strip_prefix("* FLAGS (") {
                flags = Some(
                    list.trim_end_matches(')')
                        .split_ascii_whitespace()
                        .map(str::to_ascii_lowercase)
                        .collect(),
                );
            }
            if let Some(status) = line.strip_prefix(&tag) {
                assert!(
                    status.starts_with("OK"),
                    "{label}: IMAP {}: {line}",
                    &command[..7]
                );
                break;
            }
        }
    }
    flags.unwrap_or_else(|| panic!("{label}: no FLAGS in the EXAMINE answer"))
}

/// The child's stderr: appended to `run.log` in its dir (kept with `TASKMAIL_FAULT_KEEP=1`).
fn log_file(home: &Path) -> std::process::Stdio {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(home.join("run.log"))
        .map(std::process::Stdio::from)
        .unwrap_or_else(|_| std::process::Stdio::null())
}

/// A real `taskmail run` child on its own state dir.
fn spawn_run(config: &Path, home: &Path) -> tokio::process::Child {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_taskmail"))
        .arg("-c")
        .arg(config)
        .args(["run", "--json"])
        .env("HOME", home)
        .env_remove("XDG_CONFIG_HOME")
        .env(
            "TASKMAIL_LOG",
            std::env::var("TASKMAIL_FAULT_CHILD_LOG").unwrap_or_else(|_| "warn".to_owned()),
        )
        .stdout(std::process::Stdio::null())
        .stderr(log_file(home))
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// A worker process killed with SIGKILL again and again, restarted on its state dir, next to a
/// live in-process worker: every task gets exactly one result; a task runs again only when a
/// kill interrupted it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_worker_loses_nothing() {
    on_every_server(|server: Server| async move {
        let label = server.label();
        let n = env_count("TASKMAIL_FAULT_KILL_TASKS", 100);
        let kills = env_count("TASKMAIL_FAULT_KILLS", 5);
        let dir = tempfile::tempdir().unwrap();
        let (root, _guard) = if std::env::var("TASKMAIL_FAULT_KEEP").is_ok() {
            let kept = dir.keep();
            println!("{label}: keeping {}", kept.display());
            (kept, None)
        } else {
            (dir.path().to_path_buf(), Some(dir))
        };
        let tally = root.as_path().join("runs.log");
        let victim_dir = root.as_path().join("k1");
        std::fs::create_dir_all(&victim_dir).unwrap();
        let config = victim_dir.join("config.toml");
        std::fs::write(
            &config,
            worker_config_text(&server, &victim_dir, "tally", &extra(&server, "k1", &tally, "6s", "0.2")),
        )
        .unwrap();
        let live_dir = root.as_path().join("k2");
        std::fs::create_dir_all(&live_dir).unwrap();
        let live = Worker::start(&server, &live_dir, "tally", &extra(&server, "k2", &tally, "6s", "0.2")).await;
        let mut child = spawn_run(&config, &victim_dir);
        // NOTE: the child's first start fixes its JMAP cursor; give it time to be ready.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let dispatcher = Mailer::new(&server, "dispatcher").await;
        let token = support::unique_token();
        let began = Instant::now();
        let tasks = dispatch_all(&dispatcher, &token, "kill", n).await;
        // NOTE: the kills are spread over the burst; every other restart waits out the lease
        // (6 s), so that the live worker takes the victim's mail over.
        // NOTE: a kill soon after each restart would hit the same re-run again and again (the
        // restart rule gives a task up after three interruptions): 3.5 s or more apart.
        let gap = (12_000 * n as u64 / 100 / kills.max(1) as u64).clamp(3500, 6000);
        let mut killed = std::collections::BTreeSet::new();
        for kill in 0..kills {
            let jitter = (kill as u64 * 7919) % 1500;
            tokio::time::sleep(Duration::from_millis(gap + jitter)).await;
            killed.extend(child.id());
            child.start_kill().unwrap();
            let _ = child.wait().await;
            let down = if kill % 2 == 0 { 300 } else { 8000 };
            tokio::time::sleep(Duration::from_millis(down)).await;
            child = spawn_run(&config, &victim_dir);
        }
        let got = collect(&dispatcher, &tasks, Duration::from_secs(90 + n as u64)).await;
        let elapsed = began.elapsed();
        assert_exactly_one_result(&label, &tasks, &got);
        let counts = runs(&tally, &tasks);
        let never: Vec<_> = counts.iter().filter(|(_, c)| **c == 0).collect();
        assert!(never.is_empty(), "{label}: never ran: {never:?}");
        let again: usize = counts.values().map(|c| c.saturating_sub(1)).sum();
        // NOTE: a run counts when its output reached a living daemon (the tally profile). A
        // daemon killed after that but before its result was submitted sent no result, so the
        // task runs again (by it after a restart, or by the worker that took its mail over);
        // any other repeat is a failure.
        let by = runs_by(&tally, &tasks);
        let twice: Vec<_> = by
            .iter()
            .filter(|(_, pids)| {
                pids.len() > 1 && !pids[..pids.len() - 1].iter().all(|p| killed.contains(p))
            })
            .collect();
        assert!(twice.is_empty(), "{label}: ran twice: {twice:?} (killed {killed:?})");
        println!(
            "{label}: {kills} kills over {n} tasks: all results in {elapsed:?}, {again} runs repeated after a kill between a run's end and its result's submission, live worker ran {}",
            started(&live)
        );
        child.start_kill().unwrap();
        let _ = child.wait().await;
        live.stop().await;
    })
    .await;
}
