//! `taskmail mcp` driven by a real MCP client that is not written here: the official Python SDK
//! (`mcp` from PyPI) in a venv under `target/mcp-venv` (made on first use: `python3 -m venv`,
//! `pip install mcp`; `TASKMAIL_MCP_PYTHON` names another interpreter that has it).
//!
//! On every server of the harness, `tests/mcp/client.py` starts the real binary as
//! `dispatcher@` with a test config, lists the tools, checks two error results, sends a message
//! to itself and finds it with `check_inbox` (headers only) and `read_message` (the body)
//! through the real server, replies to it, reads the delivery fact of its monitored send
//! (`get_delivery_facts`), dispatches a task to an in-process worker daemon
//! (`support::daemon::Worker`, echo agent) and follows it with `get_task` until its result. This
//! test asserts on the script's JSON.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use support::Server;
use support::daemon::{Worker, on_every_server};

/// A Python with the `mcp` package: `TASKMAIL_MCP_PYTHON`, else the venv under target/ (made
/// here when missing).
fn python() -> PathBuf {
    if let Some(python) = std::env::var_os("TASKMAIL_MCP_PYTHON") {
        return PathBuf::from(python);
    }
    // NOTE: both servers' runs call this at once; one of them makes the venv.
    static MAKING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _making = MAKING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/mcp-venv");
    let python = venv.join("bin/python");
    let has_mcp = |python: &Path| {
        std::process::Command::new(python)
            .args(["-c", "import mcp.client.stdio"])
            .status()
            .is_ok_and(|s| s.success())
    };
    if python.exists() && has_mcp(&python) {
        return python;
    }
    let made = std::process::Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        made,
        "cannot make a venv at {}: install python3-venv (apt-get install python3-venv)",
        venv.display()
    );
    let installed = std::process::Command::new(venv.join("bin/pip"))
        .args(["install", "--quiet", "mcp"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        installed && has_mcp(&python),
        "cannot install the Python MCP SDK: {} -m pip install mcp",
        python.display()
    );
    python
}

/// The config of the MCP server: dispatcher@ of `server`, state under `dir`.
fn dispatcher_config(server: &Server, dir: &Path) -> PathBuf {
    let text = format!(
        r#"
state-dir = "{dir}/state"
{account}
[dispatcher]
account = "dispatcher"
default-timeout = "2m"

[trust]
require-authentication = false
"#,
        dir = dir.display(),
        account = support::daemon::handle_account_toml(
            server,
            "dispatcher",
            "dispatcher",
            "@acme.dispatcher"
        ),
    );
    let path = dir.join("config.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Runs the client script with `plan`; its JSON output.
async fn run_client(label: &str, plan: &Value) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/mcp/client.py");
    let output = tokio::time::timeout(
        Duration::from_secs(240),
        tokio::process::Command::new(python())
            .arg(&script)
            .arg(plan.to_string())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("{label}: the MCP client did not finish in 240 s"))
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{label}: the MCP client failed ({}):\n{stdout}\n{}",
        output.status,
        tail(&stderr, 3000)
    );
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("{label}: client output is no JSON ({e}):\n{stdout}\n{stderr}"))
}

/// The last `n` bytes of `text` (on a char boundary).
fn tail(text: &str, n: usize) -> &str {
    let mut start = text.len().saturating_sub(n);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

fn step<'a>(out: &'a Value, name: &str) -> &'a Value {
    &out["steps"][name]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn python_mcp_client_sends_reads_and_dispatches() {
    on_every_server(|server| async move {
        let label = server.label();
        let dir = tempfile::tempdir().unwrap();
        let worker_dir = dir.path().join("worker");
        std::fs::create_dir_all(&worker_dir).unwrap();
        let worker = Worker::start(&server, &worker_dir, "echo", "").await;
        let config = dispatcher_config(&server, dir.path());
        let token = support::unique_token();
        let plan = json!({
            "binary": env!("CARGO_BIN_EXE_taskmail"),
            "config": config,
            "account": "dispatcher",
            "token": token,
            "worker": format!("worker@{}", server.domain),
            "send_to": "@acme.dispatcher",
            "mailbox": std::env::var("TASKMAIL_MCP_SKIP_MAILBOX").is_err(),
            "env": {
                "HOME": dir.path(),
                "PATH": std::env::var("PATH").unwrap_or_default(),
                "TASKMAIL_LOG": "info",
                "NO_COLOR": "1",
            },
        });
        let started = Instant::now();
        let out = run_client(&label, &plan).await;
        eprintln!(
            "{label}: MCP client run {:.1}s: {}",
            started.elapsed().as_secs_f64(),
            serde_json::to_string_pretty(&out).unwrap()
        );
        worker.stop().await;

        // The handshake and the tool list, with their schemas.
        assert_eq!(out["server"]["name"], "taskmail", "{label}: {out}");
        assert_eq!(out["server"]["tools"], true, "{label}");
        for (tool, required) in [
            ("send_message", vec!["to"]),
            ("check_inbox", vec![]),
            ("read_message", vec!["id"]),
            ("reply", vec!["id", "text"]),
            ("dispatch_task", vec!["to", "title"]),
            ("get_task", vec!["task_id"]),
            ("get_delivery_facts", vec![]),
            ("answer_help", vec!["task_id", "text"]),
        ] {
            assert_eq!(
                out["tools"][tool]["required"],
                json!(required),
                "{label}: tool {tool} in {}",
                out["tools"]
            );
        }
        // Errors are tool results naming the problem and the fix.
        let bad = step(&out, "bad_task");
        assert_eq!(bad["isError"], true, "{label}: {bad}");
        assert_eq!(
            bad["structured"]["error"]["code"], "NOT_FOUND",
            "{label}: {bad}"
        );
        assert!(
            bad["text"].as_str().unwrap().contains("Fix:"),
            "{label}: {bad}"
        );
        let bad = step(&out, "bad_send");
        assert_eq!(bad["isError"], true, "{label}: {bad}");
        assert_eq!(
            bad["structured"]["error"]["code"], "INVALID_ARGUMENT",
            "{label}: {bad}"
        );

        if plan["mailbox"] == true {
            // A message sent through the real server, listed headers-only, then read.
            let sent = step(&out, "send_message");
            assert_eq!(sent["isError"], false, "{label}: send_message: {sent}");
            let id = sent["structured"]["id"].as_str().unwrap().to_owned();
            let inbox = step(&out, "check_inbox");
            assert_eq!(inbox["found"], true, "{label}: check_inbox: {inbox}");
            let frame = inbox["structured"]["frames"]
                .as_array()
                .unwrap()
                .iter()
                .find(|f| f["id"] == id.as_str())
                .unwrap();
            assert_eq!(frame["subject"], format!("mcp {token}"), "{label}: {frame}");
            for body_key in ["content_parts", "text", "body"] {
                assert!(
                    frame.get(body_key).is_none(),
                    "{label}: a frame carries no body: {frame}"
                );
            }
            let read = step(&out, "read_message");
            assert_eq!(read["isError"], false, "{label}: read_message: {read}");
            assert_eq!(
                read["structured"]["envelope"]["content_parts"][0]["text"],
                format!("hello from the MCP client {token}"),
                "{label}: {read}"
            );
            let reply = step(&out, "reply");
            assert_eq!(reply["isError"], false, "{label}: reply: {reply}");
            // The send asked for a monitor: the server's delivery report becomes a fact.
            let facts = step(&out, "get_delivery_facts");
            assert_eq!(facts["found"], true, "{label}: get_delivery_facts: {facts}");
            let fact = &facts["structured"]["facts"][0];
            assert_eq!(fact["fact"], "stored", "{label}: {fact}");
            assert_eq!(
                fact["recipient_handle"], "@acme.dispatcher",
                "{label}: {fact}"
            );
            assert_eq!(fact["envelope_id"], id.as_str(), "{label}: {fact}");
            assert!(
                fact["monitor"].as_str().unwrap().starts_with("mon_"),
                "{label}: {fact}"
            );
            eprintln!(
                "{label}: send_message -> check_inbox found it after {}s",
                inbox["seconds"]
            );
        }

        // A task dispatched to the worker daemon and followed to its result.
        let dispatched = step(&out, "dispatch_task");
        assert_eq!(
            dispatched["isError"], false,
            "{label}: dispatch_task: {dispatched}"
        );
        assert_eq!(dispatched["structured"]["status"], "sent", "{label}");
        let task = step(&out, "get_task");
        assert_eq!(task["finished"], true, "{label}: get_task: {task}");
        assert_eq!(task["structured"]["state"], "completed", "{label}: {task}");
        let output = task["structured"]["result"]["output"].as_str().unwrap();
        assert!(output.contains(&token), "{label}: result output {output:?}");
        eprintln!(
            "{label}: dispatch_task -> get_task completed after {}s",
            task["seconds"]
        );
        // Answering a task that asks nothing is refused with a reason.
        let late = step(&out, "answer_help_not_waiting");
        assert_eq!(late["isError"], true, "{label}: {late}");
    })
    .await;
}
