//! Black-box tests of the trust verbs (`taskmail grants`, `pair new`, `audit`) against a temp
//! state dir: exit codes, JSON output, sticky blocks, single-use codes stored as hashes.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

const CONFIG: &str = r#"
state-dir = "STATE"
[accounts.worker]
email = "worker@example.test"
password = { raw = "x" }
smtp = { host = "127.0.0.1", port = 5587, tls = "plaintext", allow-plaintext = true }
jmap = { session-url = "http://127.0.0.1:8080/.well-known/jmap" }
[worker]
allowed-senders = ["dispatcher@example.test"]
[trust]
authserv-id = "mail.example.test"
[[trust.grants]]
account = "worker"
peer = "*@partner.test"
intents = ["task.dispatch"]
"#;

fn setup() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let text = CONFIG.replace("STATE", &dir.path().join("state").display().to_string());
    std::fs::write(dir.path().join("config.toml"), text).unwrap();
    dir
}

fn taskmail(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_taskmail"))
        .arg("-c")
        .arg(dir.join("config.toml"))
        .args(args)
        .env("HOME", dir)
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("TASKMAIL_CONFIG")
        .output()
        .unwrap()
}

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[test]
fn grants_allow_list_block_revoke() {
    let dir = setup();
    let d = dir.path();
    let out = taskmail(
        d,
        &[
            "grants",
            "allow",
            "Agent@Other.test",
            "--intents",
            "task.dispatch,task.cancel",
            "--expires",
            "30d",
            "--rules",
            r#"{"project": ["a"]}"#,
            "--require-signature",
            "--json",
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let grant = &json(&out)["grant"];
    assert_eq!(grant["peer"], "agent@other.test");
    assert_eq!(grant["state"], "active");
    assert_eq!(grant["source"], "cli");
    assert_eq!(grant["requireSignature"], true);
    assert_eq!(grant["dispatchContextRules"]["project"][0], "a");

    let list = json(&taskmail(d, &["grants", "list", "--json"]));
    let grants = list["grants"].as_array().unwrap();
    assert_eq!(grants.len(), 2, "{list}");
    assert!(
        grants
            .iter()
            .any(|g| g["peer"] == "*@partner.test" && g["source"] == "config")
    );

    // A block is sticky: allow needs --force, and says so.
    assert_eq!(
        taskmail(d, &["grants", "block", "agent@other.test"])
            .status
            .code(),
        Some(0)
    );
    let out = taskmail(d, &["grants", "allow", "agent@other.test"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("blocked") && err.contains("--force"), "{err}");
    let out = taskmail(
        d,
        &["grants", "allow", "agent@other.test", "--force", "--json"],
    );
    assert_eq!(json(&out)["grant"]["state"], "active");
    let out = taskmail(d, &["grants", "revoke", "agent@other.test", "--json"]);
    assert_eq!(json(&out)["grant"]["state"], "revoked");
    // Revoking a peer with no stored grant records the refusal anyway.
    let out = taskmail(d, &["grants", "revoke", "x@partner.test", "--json"]);
    assert_eq!(json(&out)["grant"]["state"], "revoked");

    // Usage errors name the problem and the fix, exit 2.
    let out = taskmail(d, &["grants", "allow", "*bad*", "--json"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(json(&out)["kind"], "usage");
    let out = taskmail(
        d,
        &["grants", "allow", "a@b.test", "--intents", "task.dispatsh"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("task.dispatch"));

    let table = taskmail(d, &["grants", "list"]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.starts_with("ACCOUNT"), "{text}");
    assert!(
        text.contains("x@partner.test") && text.contains("revoked"),
        "{text}"
    );
}

#[test]
fn pair_new_prints_a_url_and_stores_only_a_hash() {
    let dir = setup();
    let d = dir.path();
    let out = taskmail(
        d,
        &[
            "pair",
            "new",
            "--intents",
            "task.dispatch",
            "--rules",
            r#"{"p": ["x"]}"#,
            "--ttl",
            "120s",
            "--json",
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = json(&out);
    let code = v["code"].as_str().unwrap();
    assert_eq!(code.len(), 8);
    let url = v["url"].as_str().unwrap();
    assert!(
        url.starts_with("aamp://connect?mailbox=worker@example.test&pair_code="),
        "{url}"
    );
    assert!(
        url.contains(code) && url.contains("dispatch_context_rules="),
        "{url}"
    );
    // The code itself is nowhere in the state file.
    let state = std::fs::read(d.join("state/taskmail.sqlite3")).unwrap();
    assert!(!state.windows(code.len()).any(|w| w == code.as_bytes()));
    // Human output: the URL on the first line.
    let out = taskmail(d, &["pair", "new"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines().next().unwrap().starts_with("aamp://connect?"),
        "{text}"
    );
    let out = taskmail(d, &["pair", "new", "--ttl", "soon"]);
    assert_eq!(out.status.code(), Some(2));
    let out = taskmail(d, &["pair", "request", "https://not-a-pair-url", "--json"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(json(&out)["kind"], "usage");
}

#[test]
fn audit_lists_verdicts_as_json_and_table() {
    let dir = setup();
    let d = dir.path();
    let out = taskmail(d, &["audit", "--json"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(json(&out)["audit"].as_array().unwrap().len(), 0);
    let out = taskmail(d, &["audit", "--peer", "*@other.test", "--limit", "5"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("(no verdicts)"));
}
