//! Black-box tests of the `taskmail` binary: exit codes, JSON output, and render | parse pipes.

#![allow(clippy::unwrap_used)]

use std::io::Write as _;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

fn taskmail(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let home = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_taskmail"))
        .args(args)
        .env("HOME", home.path())
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("TASKMAIL_CONFIG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(input) = stdin {
        child.stdin.take().unwrap().write_all(input).unwrap();
    }
    drop(child.stdin.take());
    child.wait_with_output().unwrap()
}

fn parse_json(raw: &[u8]) -> Value {
    let out = taskmail(&["parse", "--json", "-"], Some(raw));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn dispatch_renders_and_parses_back() {
    let out = taskmail(
        &[
            "render",
            "dispatch",
            "--from",
            "dispatcher@example.test",
            "--to",
            "worker@example.test",
            "--title",
            "Résumé the report",
            "--body",
            "Line one\nLine two",
            "--priority",
            "urgent",
            "--context",
            "user_key=alice smith",
            "--session-key",
            "s1",
        ],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = parse_json(&out.stdout);
    assert_eq!(v["kind"], "aamp");
    assert_eq!(v["intent"], "task.dispatch");
    assert_eq!(v["title"], "Résumé the report");
    assert_eq!(v["instructions"], "Line one\nLine two");
    assert_eq!(v["priority"], "urgent");
    assert_eq!(v["sessionKey"], "s1");
    assert_eq!(v["dispatchContext"]["user_key"], "alice smith");
    assert_eq!(v["taskId"].as_str().unwrap().len(), 36, "a UUIDv4 task id");
    assert!(v["messageId"].as_str().unwrap().ends_with("@example.test"));
}

#[test]
fn replies_need_in_reply_to_and_carry_the_chain() {
    let out = taskmail(
        &[
            "render",
            "ack",
            "--from",
            "w@example.test",
            "--to",
            "d@example.test",
            "--task-id",
            "t1",
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--in-reply-to"));
    let out = taskmail(
        &[
            "render",
            "result",
            "--from",
            "w@example.test",
            "--to",
            "d@example.test",
            "--task-id",
            "t1",
            "--status",
            "rejected",
            "--error",
            "no access",
            "--in-reply-to",
            "<b@example.test>",
            "--references",
            "a@example.test",
        ],
        None,
    );
    assert!(out.status.success());
    let v = parse_json(&out.stdout);
    assert_eq!(v["status"], "rejected");
    assert_eq!(v["errorMsg"], "no access");
    assert_eq!(v["inReplyTo"], "b@example.test");
    assert_eq!(
        v["references"],
        serde_json::json!(["a@example.test", "b@example.test"])
    );
}

#[test]
fn envelope_renders_and_parses_back() {
    let out = taskmail(
        &[
            "render",
            "envelope",
            "--from",
            "@acme.planner",
            "--to",
            "@acme.coder",
            "--text",
            "hello",
            "--data",
            r#"{"k":1}"#,
            "--schema",
            "demo/1",
        ],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = parse_json(&out.stdout);
    assert_eq!(v["kind"], "asmtp");
    assert_eq!(v["envelope"]["from"], "@acme.planner");
    assert_eq!(v["envelope"]["content_parts"][1]["data"]["k"], 1);
    assert_eq!(v["pushFrame"]["type_hint"], "mixed");
}

#[test]
fn invalid_message_exits_1_and_usage_errors_exit_2() {
    let raw = b"From: a@example.test\r\nX-AAMP-Intent: task.teleport\r\nX-AAMP-TaskId: t\r\n\r\nx";
    let out = taskmail(&["parse", "--json", "-"], Some(raw));
    assert_eq!(out.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["kind"], "invalid");
    assert_eq!(
        taskmail(&["render", "dispatch", "--nope"], None)
            .status
            .code(),
        Some(2)
    );
    assert_eq!(taskmail(&["frobnicate"], None).status.code(), Some(2));
}

#[test]
fn config_check_exit_codes() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config.example.toml");
    assert_eq!(
        taskmail(&["config", "check", example], None).status.code(),
        Some(0)
    );
    let bad = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(bad.path(), "[accounts.w]\nemial = \"x@example.test\"\n").unwrap();
    let out = taskmail(
        &["config", "check", "--json", bad.path().to_str().unwrap()],
        None,
    );
    assert_eq!(out.status.code(), Some(2));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["valid"], false);
    assert!(v["errors"].to_string().contains("email"), "{v}");
}
