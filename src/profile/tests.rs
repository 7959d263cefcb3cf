//! Tests of profile resolution: the built-in files, layering, listing and the echo agent itself.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::*;
use crate::config::{ExitAction, PromptVia};

const ACCOUNT: &str = r#"
[accounts.worker]
email = "worker@example.test"
password = { env = "PW" }
jmap.session-url = "https://mail.example.test/.well-known/jmap"
smtp.host = "mail.example.test"
"#;

/// A config home in a temporary directory, with optional user profile files.
struct Home {
    dir: tempfile::TempDir,
}

impl Home {
    fn new() -> Home {
        Home {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn env(&self) -> Env {
        Env::with_home(self.dir.path())
    }

    fn user_file(&self, kind: &str, name: &str, text: &str) -> PathBuf {
        let dir = self.dir.path().join(".config/taskmail/profiles").join(kind);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}.toml"));
        std::fs::write(&path, text).unwrap();
        path
    }

    fn config(&self, extra: &str) -> Config {
        Config::from_toml_str_with_env(&format!("{ACCOUNT}{extra}"), Mode::Strict, &self.env())
            .unwrap()
    }
}

#[test]
fn every_built_in_profile_resolves() {
    let home = Home::new();
    let config = home.config("");
    for (name, _) in BUILT_IN_AGENTS {
        let profile = agent(name, &config, &home.env()).unwrap();
        assert_eq!(profile.source, ProfileSource::BuiltIn, "{name}");
        assert!(!profile.description.is_empty(), "{name}");
    }
    for (name, _) in BUILT_IN_SERVERS {
        let profile = server(name, &home.env()).unwrap();
        assert!(!profile.description.is_empty(), "{name}");
    }
    let stalwart = server("stalwart", &home.env()).unwrap();
    assert!(!stalwart.header_query_works);
    assert_eq!(stalwart.smtp_messages_per_session, Some(10));
    let cyrus = server("cyrus", &home.env()).unwrap();
    assert!(cyrus.relative_session_urls);
    assert!(cyrus.any_mail_from);
    let claude = agent("claude", &config, &home.env()).unwrap();
    assert_eq!(
        claude.argv(
            &Placeholders {
                prompt: "hi",
                ..Placeholders::default()
            },
            false
        ),
        ["claude", "-p", "hi", "--output-format", "text"]
    );
    assert_eq!(claude.help_marker, "HELP:");
    assert_eq!(claude.structured_marker, "TASKMAIL_STRUCTURED_RESULT:");
}

#[test]
fn built_in_files_match_the_repository() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("profiles");
    for (kind, table) in [
        ("agents", &BUILT_IN_AGENTS[..]),
        ("servers", &BUILT_IN_SERVERS[..]),
    ] {
        let mut on_disk: Vec<String> = std::fs::read_dir(root.join(kind))
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
            .map(|path| path.file_stem().unwrap().to_string_lossy().into_owned())
            .collect();
        on_disk.sort();
        let mut embedded: Vec<String> = table.iter().map(|(name, _)| (*name).to_owned()).collect();
        embedded.sort();
        assert_eq!(
            on_disk, embedded,
            "every file in profiles/{kind} is embedded"
        );
    }
}

#[test]
fn user_files_and_config_tables_layer_over_built_ins() {
    let home = Home::new();
    let user_path = home.user_file(
        "agents",
        "claude",
        "timeout = \"2h\"\nhelp-marker = \"ASK:\"\n",
    );
    home.user_file(
        "agents",
        "mybot",
        "description = \"mine\"\ncommand = [\"mybot\", \"{task_file}\"]\n",
    );
    let config = home.config("[profiles.claude]\nhelp-marker = \"QUESTION:\"\n");
    let claude = agent("claude", &config, &home.env()).unwrap();
    assert_eq!(claude.command[0], "claude", "the built-in command stays");
    assert_eq!(
        claude.timeout,
        Some(Duration::from_secs(7_200)),
        "the user file's timeout"
    );
    assert_eq!(claude.help_marker, "QUESTION:", "the config table wins");
    assert_eq!(claude.source, ProfileSource::Config);

    let mybot = agent("mybot", &config, &home.env()).unwrap();
    assert_eq!(
        mybot.source,
        ProfileSource::User(
            home.dir
                .path()
                .join(".config/taskmail/profiles/agents/mybot.toml")
        )
    );
    assert_eq!(mybot.prompt_via, PromptVia::Argv);

    let listing = list_agents(&config, &home.env()).unwrap();
    let claude_entry = listing.iter().find(|entry| entry.name == "claude").unwrap();
    assert_eq!(
        claude_entry.layers,
        [
            ProfileSource::BuiltIn,
            ProfileSource::User(user_path),
            ProfileSource::Config
        ]
    );
    let names: Vec<&str> = listing.iter().map(|entry| entry.name.as_str()).collect();
    assert_eq!(
        names,
        ["claude", "codex", "command", "echo", "gemini", "mybot"]
    );
    assert_eq!(listing[5].description.as_deref(), Some("mine"));
}

#[test]
fn user_server_profiles_override_fields() {
    let home = Home::new();
    home.user_file("servers", "stalwart", "smtp-messages-per-session = 50\n");
    home.user_file("servers", "bad", "max-calls-in-request = 0\nbogus = 1\n");
    let stalwart = server("stalwart", &home.env()).unwrap();
    assert_eq!(stalwart.smtp_messages_per_session, Some(50));
    assert!(!stalwart.header_query_works, "built-in fields stay");
    let error = server("bad", &home.env()).unwrap_err();
    let ProfileError::Invalid { problems, .. } = &error else {
        panic!("{error:?}");
    };
    let lines = problems.lines().join("\n");
    assert!(
        lines.contains("error: bogus: cannot use unknown key 'bogus'"),
        "{lines}"
    );
    assert!(
        lines.contains("error: max-calls-in-request: cannot use '0'"),
        "{lines}"
    );
}

#[test]
fn unknown_and_unsafe_names() {
    let home = Home::new();
    let config = home.config("");
    let error = agent("clade", &config, &home.env()).unwrap_err();
    assert_eq!(error.to_string(), "cannot find agent profile 'clade'");
    assert!(error.hint().unwrap().starts_with("did you mean 'claude'?"));
    assert!(matches!(
        agent("../../etc/passwd", &config, &home.env()),
        Err(ProfileError::BadName { .. })
    ));
    assert!(matches!(
        server("nope", &home.env()),
        Err(ProfileError::NotFound { .. })
    ));
}

#[test]
fn incomplete_config_profiles_are_reported_by_check() {
    let home = Home::new();
    let config = home.config(
        "[worker]\nagent = \"mybot\"\nallowed-senders = [\"*@example.test\"]\n[trust]\nauthserv-id = \"mx\"\n[profiles.mybot]\nprompt-via = \"argv\"\n[profiles.claude]\ntimeout = \"1h\"\n",
    );
    let report = check(&config, &home.env());
    let lines = report.lines().join("\n");
    assert_eq!(report.errors.len(), 1, "{lines}");
    assert!(
        lines.contains("error: profiles.mybot.command: cannot be missing"),
        "{lines}"
    );
}

#[test]
fn broken_user_files_are_named_in_check() {
    let home = Home::new();
    home.user_file("agents", "mybot", "command = []\n");
    let config = home.config("[worker]\nagent = \"mybot\"\n");
    let lines = check(&config, &home.env()).lines().join("\n");
    assert!(
        lines.contains("error: worker.agent: cannot use agent profile 'mybot' from user file"),
        "{lines}"
    );
    assert!(lines.contains("command: cannot be empty"), "{lines}");
    assert!(
        lines.contains("warning: trust.authserv-id: is not set"),
        "{lines}"
    );
}

#[test]
fn exit_code_table_and_resume_command() {
    let home = Home::new();
    let config = home.config(
        "[profiles.mybot]\ncommand = [\"bot\", \"{prompt}\"]\nresume-command = [\"bot\", \"--continue\", \"{prompt}\"]\nexit-codes = { 3 = \"help\" }\n",
    );
    let bot = agent("mybot", &config, &home.env()).unwrap();
    assert_eq!(bot.exit_action(3), ExitAction::Help);
    let values = Placeholders {
        prompt: "p",
        ..Placeholders::default()
    };
    assert_eq!(bot.argv(&values, true), ["bot", "--continue", "p"]);
    assert_eq!(bot.argv(&values, false), ["bot", "p"]);
}

/// Runs the echo profile's real command in `workdir`.
fn run_echo(profile: &AgentProfile, prompt: &str, workdir: &Path) -> String {
    let workdir_text = workdir.to_string_lossy();
    let values = Placeholders {
        prompt,
        task_id: "t-1",
        session_key: "",
        workdir: &workdir_text,
        task_file: "",
    };
    let argv = profile.argv(&values, false);
    let output = Command::new(&argv[0])
        .args(&argv[1..])
        .current_dir(workdir)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn echo_agent_prints_the_prompt_and_asks_once() {
    let home = Home::new();
    let config = home.config("");
    let echo = agent("echo", &config, &home.env()).unwrap();
    let work = tempfile::tempdir().unwrap();

    let plain = "Task: greet\nSay hello; $(touch pwned) `id` {task_id}";
    assert_eq!(run_echo(&echo, plain, work.path()), format!("{plain}\n"));
    assert!(
        !work.path().join("pwned").exists(),
        "the prompt is never run as shell code"
    );

    let asking = "Task: deploy\r\nDeploy the site.\r\n  please ask: which region?\r\n";
    assert_eq!(
        run_echo(&echo, asking, work.path()),
        "HELP: which region?\n"
    );
    assert!(work.path().join(".taskmail-echo-asked").exists());
    let resumed = run_echo(&echo, asking, work.path());
    assert!(
        resumed.starts_with("Task: deploy"),
        "asks only once per work dir: {resumed}"
    );
}
