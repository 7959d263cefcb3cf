//! Golden tests: every fixture under `fixtures/{aamp,asmtp,human,malformed}` is parsed (with its
//! line ends as written, then converted to the other style) and compared with the `.json` beside
//! it; every `fixtures/aamp/render/*.input.json` is rendered by the CLI and compared byte for
//! byte with the `.eml` beside it. A mismatch writes `NAME.failed` next to the fixture.
//! `TASKMAIL_BLESS=1` writes missing expectations instead of failing (review them before
//! committing).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};
use taskmail::cli::parse::view;
use taskmail::wire::message::Inbound;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

fn eml_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(eml_files(&p));
        } else if p.extension().is_some_and(|x| x == "eml") {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// What `parse --json` prints for these bytes, or an `unreadable` verdict.
fn describe(raw: &[u8]) -> Value {
    match Inbound::from_bytes(raw) {
        Ok(msg) => view(&msg),
        Err(e) => json!({"kind": "unreadable", "error": e.to_string()}),
    }
}

fn to_crlf(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() + raw.len() / 20);
    for (i, &b) in raw.iter().enumerate() {
        if b == b'\n' && (i == 0 || raw[i - 1] != b'\r') {
            out.push(b'\r');
        }
        out.push(b);
    }
    out
}

fn to_lf(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    for (i, &b) in raw.iter().enumerate() {
        if b == b'\r' && raw.get(i + 1) == Some(&b'\n') {
            continue;
        }
        out.push(b);
    }
    out
}

/// Drops the fields whose values legitimately differ between LF and CRLF copies of a message:
/// none, for text fields (bodies are normalised to LF); attachment sizes of text attachments
/// may differ, so they are compared on the original copy only.
fn line_end_neutral(mut v: Value) -> Value {
    if let Some(list) = v.get_mut("attachments").and_then(Value::as_array_mut) {
        for a in list {
            if let Some(o) = a.as_object_mut() {
                o.remove("size");
            }
        }
    }
    v
}

#[test]
fn inbound_fixtures_match_their_json() {
    let bless = std::env::var("TASKMAIL_BLESS").is_ok_and(|v| v == "1");
    let mut ran = 0;
    let mut failures = Vec::new();
    for dir in ["aamp", "asmtp", "human", "malformed"] {
        for eml in eml_files(&fixtures().join(dir)) {
            let raw = std::fs::read(&eml).unwrap();
            let got = describe(&raw);
            let expected_path = eml.with_extension("json");
            let failed_path = eml.with_extension("failed");
            let expected: Value = match std::fs::read_to_string(&expected_path) {
                Ok(s) => serde_json::from_str(&s).unwrap(),
                Err(_) if bless => {
                    let mut s = serde_json::to_string_pretty(&got).unwrap();
                    s.push('\n');
                    std::fs::write(&expected_path, s).unwrap();
                    got.clone()
                }
                Err(_) => {
                    failures.push(format!("{}: no expected .json", eml.display()));
                    continue;
                }
            };
            if got != expected {
                std::fs::write(&failed_path, serde_json::to_string_pretty(&got).unwrap()).unwrap();
                failures.push(format!(
                    "{}: differs (see {})",
                    eml.display(),
                    failed_path.display()
                ));
                continue;
            }
            let _ = std::fs::remove_file(&failed_path);
            // The same message with the other line-end convention reads the same.
            let other = if raw.windows(2).any(|w| w == b"\r\n") {
                to_lf(&raw)
            } else {
                to_crlf(&raw)
            };
            if dir != "malformed" || got.get("kind") != Some(&json!("unreadable")) {
                let a = line_end_neutral(describe(&other));
                let b = line_end_neutral(expected.clone());
                if a != b {
                    failures.push(format!(
                        "{}: differs after changing line ends",
                        eml.display()
                    ));
                }
            }
            ran += 1;
        }
    }
    assert!(
        failures.is_empty(),
        "golden failures:\n{}",
        failures.join("\n")
    );
    assert!(
        ran >= 60,
        "only {ran} inbound fixtures ran; expected at least 60"
    );
}

#[test]
fn render_fixtures_match_byte_for_byte() {
    let bless = std::env::var("TASKMAIL_BLESS").is_ok_and(|v| v == "1");
    let dir = fixtures().join("aamp/render");
    let mut inputs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().ends_with(".input.json"))
        .collect();
    inputs.sort();
    let mut ran = 0;
    for input in &inputs {
        let stem = input
            .file_name()
            .unwrap()
            .to_string_lossy()
            .replace(".input.json", "");
        // The render subcommand is the longest known verb the fixture name starts with.
        let verbs = [
            "dispatch",
            "result",
            "help",
            "cancel",
            "ack",
            "stream",
            "pair-request",
            "pair-respond",
            "card-query",
            "card-response",
        ];
        let intent = verbs
            .iter()
            .filter(|v| stem.starts_with(*v))
            .max_by_key(|v| v.len())
            .unwrap_or_else(|| panic!("{stem}: name it after a render verb"));
        let out = Command::new(env!("CARGO_BIN_EXE_taskmail"))
            .args(["render", intent, "--json-input"])
            .arg(input)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{stem}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let expected_path = dir.join(format!("{stem}.eml"));
        if bless && !expected_path.exists() {
            std::fs::write(&expected_path, &out.stdout).unwrap();
        }
        let expected = std::fs::read(&expected_path).unwrap();
        if out.stdout != expected {
            std::fs::write(dir.join(format!("{stem}.failed")), &out.stdout).unwrap();
            panic!(
                "{stem}: rendered bytes differ from {}",
                expected_path.display()
            );
        }
        for line in out.stdout.split(|&b| b == b'\n') {
            assert!(
                line.len() <= 78 + 1,
                "{stem}: a line of {} octets",
                line.len()
            );
            assert!(
                line.ends_with(b"\r") || line.is_empty(),
                "{stem}: a bare LF"
            );
        }
        ran += 1;
    }
    assert!(ran >= 13, "only {ran} render fixtures ran");
}

#[test]
fn ten_megabyte_body_parses() {
    let mut raw = b"From: dispatcher@example.test\r\nTo: worker@example.test\r\n\
Subject: [AAMP Task] Big\r\nMessage-ID: <big@example.test>\r\nX-AAMP-Intent: task.dispatch\r\n\
X-AAMP-TaskId: big-1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
        .to_vec();
    let line = b"0123456789 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789\r\n";
    while raw.len() < 10 * 1024 * 1024 {
        raw.extend_from_slice(line);
    }
    let v = describe(&raw);
    assert_eq!(v["kind"], "aamp");
    assert_eq!(v["intent"], "task.dispatch");
    assert!(v["instructions"].as_str().unwrap().len() > 9 * 1024 * 1024);
}
