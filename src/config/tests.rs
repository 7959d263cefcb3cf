//! Tests of config validation: defaults, precedence, and the message of each kind of problem.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use super::*;

const ACCOUNT: &str = r#"
[accounts.worker]
email = "worker@example.test"
password = { env = "PW" }
jmap.session-url = "https://mail.example.test/.well-known/jmap"
smtp.host = "mail.example.test"
"#;

fn env() -> Env {
    Env::with_home("/home/ada")
}

fn parse(text: &str) -> Result<Config, ConfigErrors> {
    Config::from_toml_str_with_env(text, Mode::Strict, &env())
}

fn valid(text: &str) -> Config {
    match parse(text) {
        Ok(config) => config,
        Err(errors) => panic!(
            "expected a valid config, got:\n{}",
            errors.lines().join("\n")
        ),
    }
}

/// Every problem line of an invalid config.
fn problems(text: &str) -> String {
    match parse(text) {
        Ok(config) => panic!("expected problems, got a valid config: {config:?}"),
        Err(errors) => errors.lines().join("\n"),
    }
}

fn assert_contains(haystack: &str, needle: &str) {
    assert!(
        haystack.contains(needle),
        "missing {needle:?} in:\n{haystack}"
    );
}

#[test]
fn minimal_config_gets_every_default() {
    let config = valid(ACCOUNT);
    assert_eq!(
        config.state_dir(),
        Path::new("/home/ada/.local/state/taskmail")
    );
    assert_eq!(config.log_level(), "info");
    assert_eq!(config.log_format(), LogFormat::Text);
    let account = config.default_account();
    assert_eq!(account.name, "worker");
    assert_eq!(account.login, "worker@example.test");
    assert_eq!(account.server, "generic");
    assert_eq!(account.password, Secret::Env("PW".into()));
    assert_eq!(account.smtp.port, 587);
    assert_eq!(account.smtp.tls, SmtpTls::Starttls);
    assert_eq!(account.smtp.pool_size, 4);
    assert_eq!(account.smtp.timeout, Duration::from_secs(30));
    assert_eq!(account.jmap.push, PushMode::Auto);
    assert_eq!(account.jmap.poll_interval, Duration::from_secs(30));
    assert_eq!(account.jmap.push_liveness, Duration::from_secs(90));
    let worker = config.worker();
    assert_eq!(worker.account, "worker");
    assert_eq!(worker.agent, "echo");
    assert_eq!(worker.concurrency, 2);
    assert_eq!(worker.task_timeout, Duration::from_secs(1_800));
    assert_eq!(worker.cancel_grace, Duration::from_secs(10));
    assert_eq!(worker.shutdown_grace, Duration::from_secs(30));
    assert_eq!(worker.on_cancel, OnCancel::Reject);
    assert_eq!(
        worker.work_dir,
        PathBuf::from("/home/ada/.local/state/taskmail/work")
    );
    assert!(worker.allowed_senders.is_empty());
    assert!(!worker.plain_mail);
    assert_eq!(config.dispatcher().account, "worker");
    assert_eq!(
        config.dispatcher().default_timeout,
        Duration::from_secs(3_600)
    );
    assert_eq!(config.dispatcher().default_priority, Priority::Normal);
    let trust = config.trust();
    assert!(trust.require_authentication);
    assert_eq!(trust.on_refused, OnRefused::Silent);
    assert_eq!(trust.quarantine_mailbox, "Quarantine");
    assert_eq!(trust.dedup_retention, Duration::from_secs(7 * 86_400));
    assert_eq!(trust.transit_window, Duration::from_secs(48 * 3_600));
    assert_eq!(
        trust.rate_limit,
        RateLimit {
            count: 60,
            per: Duration::from_secs(3_600)
        }
    );
    assert_eq!(config.serve().listen.to_string(), "127.0.0.1:7878");
    assert_eq!(config.serve().body_limit, 1 << 20);
    assert!(!config.serve().allow_remote);
    assert!(config.warnings().is_empty(), "{:?}", config.warnings());
}

#[test]
fn state_dir_precedence() {
    let key = format!("state-dir = \"~/state\"\n{ACCOUNT}");
    let systemd = Env {
        state_directory: Some(PathBuf::from("/var/lib/taskmail")),
        xdg_state_home: Some(PathBuf::from("/xdg/state")),
        ..env()
    };
    let xdg = Env {
        xdg_state_home: Some(PathBuf::from("/xdg/state")),
        ..env()
    };
    let dir = |text: &str, env: &Env| {
        Config::from_toml_str_with_env(text, Mode::Strict, env)
            .unwrap()
            .state_dir()
            .to_path_buf()
    };
    assert_eq!(dir(&key, &systemd), PathBuf::from("/home/ada/state"));
    assert_eq!(dir(ACCOUNT, &systemd), PathBuf::from("/var/lib/taskmail"));
    assert_eq!(dir(ACCOUNT, &xdg), PathBuf::from("/xdg/state/taskmail"));
    let homeless = Config::from_toml_str_with_env(ACCOUNT, Mode::Strict, &Env::default());
    let lines = homeless.unwrap_err().lines().join("\n");
    assert_contains(
        &lines,
        "error: state-dir: cannot work out a state directory",
    );
    assert_contains(
        &problems(&format!("state-dir = \"state\"\n{ACCOUNT}")),
        "error: state-dir: cannot use the relative path 'state'",
    );
}

#[test]
fn default_account_choice() {
    let two = format!(
        "{ACCOUNT}{}",
        ACCOUNT.replace("accounts.worker", "accounts.alpha")
    );
    let config = Config::from_toml_str_with_env(&two, Mode::Strict, &env()).unwrap();
    assert_eq!(config.default_account().name, "alpha");
    assert_eq!(config.worker().account, "alpha");
    assert_eq!(config.warnings()[0].path, "accounts");
    assert_contains(
        &config.warnings()[0].message,
        "no account has default = true; using 'alpha'",
    );

    let marked = two.replace("[accounts.worker]\n", "[accounts.worker]\ndefault = true\n");
    let config = valid(&marked);
    assert_eq!(config.default_account().name, "worker");
    assert!(config.warnings().is_empty());

    let both = marked.replace("[accounts.alpha]\n", "[accounts.alpha]\ndefault = true\n");
    let lines = problems(&both);
    assert_contains(
        &lines,
        "error: accounts.alpha.default: cannot mark more than one account as default",
    );
    assert_contains(
        &lines,
        "error: accounts.worker.default: cannot mark more than one account as default",
    );
    assert_contains(&problems(""), "error: accounts: cannot be empty");
}

#[test]
fn account_references_must_exist() {
    let text = format!(
        "{ACCOUNT}\n[worker]\naccount = \"wroker\"\nallowed-senders = [\"*@example.test\"]\n[dispatcher]\naccount = \"nobody\"\n"
    );
    let lines = problems(&text);
    assert_contains(
        &lines,
        "error: worker.account: cannot find account 'wroker'; hint: did you mean 'worker'?",
    );
    assert_contains(
        &lines,
        "error: dispatcher.account: cannot find account 'nobody'; hint: known accounts: worker",
    );
}

#[test]
fn missing_and_malformed_account_fields() {
    let lines = problems("[accounts.w]\nemail = \"Ada <ada@example.test>\"\n");
    assert_contains(
        &lines,
        "error: accounts.w.email: cannot parse 'Ada <ada@example.test>' as an email address: write the bare address",
    );
    assert_contains(&lines, "error: accounts.w.password: cannot be missing");
    assert_contains(
        &lines,
        "error: accounts.w.jmap.session-url: cannot be missing",
    );
    assert_contains(&lines, "error: accounts.w.smtp.host: cannot be missing");
    let lines = problems("[accounts.\"my acct\"]\n");
    assert_contains(
        &lines,
        "error: accounts.\"my acct\": cannot use 'my acct' as an account name",
    );
    assert_contains(
        &lines,
        "error: accounts.\"my acct\".email: cannot be missing",
    );
}

#[test]
fn smtp_host_defaults_to_the_jmap_host_with_a_warning() {
    let config = valid(&ACCOUNT.replace("smtp.host = \"mail.example.test\"\n", ""));
    assert_eq!(config.default_account().smtp.host, "mail.example.test");
    assert_eq!(config.warnings()[0].path, "accounts.worker.smtp.host");
}

#[test]
fn plaintext_smtp_only_to_loopback_and_only_when_allowed() {
    let plain = |host: &str, allow: bool| {
        ACCOUNT.replace(
            "smtp.host = \"mail.example.test\"",
            &format!("smtp = {{ host = \"{host}\", port = 5587, tls = \"plaintext\", allow-plaintext = {allow} }}"),
        )
    };
    assert_contains(
        &problems(&plain("mail.example.test", true)),
        "error: accounts.worker.smtp.tls: cannot use 'plaintext' with host 'mail.example.test'",
    );
    assert_contains(
        &problems(&plain("127.0.0.1", false)),
        "error: accounts.worker.smtp.tls: cannot use 'plaintext' without allow-plaintext = true",
    );
    let config = valid(&plain("127.0.0.1", true));
    assert_eq!(config.default_account().smtp.port, 5587);
    valid(&plain("::1", true));
    valid(&plain("localhost", true));
}

#[test]
fn smtp_port_follows_tls_and_mismatches_warn() {
    let implicit = ACCOUNT.replace(
        "smtp.host = \"mail.example.test\"",
        "smtp = { host = \"mail.example.test\", tls = \"implicit\" }",
    );
    assert_eq!(valid(&implicit).default_account().smtp.port, 465);
    let odd = ACCOUNT.replace(
        "smtp.host = \"mail.example.test\"",
        "smtp = { host = \"mail.example.test\", tls = \"implicit\", port = 587 }",
    );
    assert_eq!(valid(&odd).warnings()[0].path, "accounts.worker.smtp.port");
    let zero = ACCOUNT.replace(
        "smtp.host = \"mail.example.test\"",
        "smtp = { host = \"mail.example.test:587\", port = 0, pool-size = 0 }",
    );
    let lines = problems(&zero);
    assert_contains(
        &lines,
        "error: accounts.worker.smtp.host: cannot use 'mail.example.test:587' as a host: write the port in the 'port' key",
    );
    assert_contains(&lines, "error: accounts.worker.smtp.port: cannot use '0'");
    assert_contains(
        &lines,
        "error: accounts.worker.smtp.pool-size: cannot use '0': expected a number from 1 to 64",
    );
}

#[test]
fn jmap_urls() {
    let with_url = |url: &str| ACCOUNT.replace("https://mail.example.test/.well-known/jmap", url);
    assert_contains(
        &problems(&with_url("htp:/x")),
        "error: accounts.worker.jmap.session-url: cannot parse 'htp:/x' as a URL: it needs a scheme and a host",
    );
    assert_contains(
        &problems(&with_url("http://mail.example.test/jmap")),
        "error: accounts.worker.jmap.session-url: cannot use plain http to 'mail.example.test'",
    );
    valid(&with_url("http://127.0.0.1:8080/.well-known/jmap"));
    let insecure = with_url("http://mail.example.test/jmap").replace(
        "jmap.session-url",
        "jmap.allow-insecure = true\njmap.session-url",
    );
    valid(&insecure);
    let origin = ACCOUNT.replace(
        "jmap.session-url",
        "jmap.public-origin = \"https://public.example.test/jmap\"\njmap.session-url",
    );
    assert_contains(
        &problems(&origin),
        "error: accounts.worker.jmap.public-origin: cannot use 'https://public.example.test/jmap' as an origin: it has a path",
    );
    let liveness = ACCOUNT.replace(
        "jmap.session-url",
        "jmap.push-liveness = \"20s\"\njmap.session-url",
    );
    assert_eq!(
        valid(&liveness).warnings()[0].path,
        "accounts.worker.jmap.push-liveness"
    );
}

#[test]
fn secrets() {
    let with = |secret: &str| {
        ACCOUNT.replace(
            "password = { env = \"PW\" }",
            &format!("password = {secret}"),
        )
    };
    let lines = problems(&with("\"hunter2\""));
    assert_contains(
        &lines,
        "error: accounts.worker.password: cannot use a bare string as a secret; hint: write { command = [",
    );
    assert!(
        !lines.contains("hunter2"),
        "the bare password must not be echoed:\n{lines}"
    );
    let secret = |text: &str| valid(&with(text)).default_account().password.clone();
    assert_eq!(
        secret("{ command = [\"pass\", \"show\", \"mail/worker\"] }"),
        Secret::Command(vec!["pass".into(), "show".into(), "mail/worker".into()])
    );
    assert_eq!(
        secret("{ file = \"~/.worker.pass\" }"),
        Secret::File(PathBuf::from("/home/ada/.worker.pass"))
    );
    let raw = valid(&with("{ raw = \"test-password\" }"));
    assert_eq!(
        raw.default_account().password,
        Secret::Raw("test-password".into())
    );
    assert_eq!(raw.warnings()[0].path, "accounts.worker.password.raw");
    assert_contains(
        &problems(&with("{ comand = [\"pass\"] }")),
        "error: accounts.worker.password.comand: cannot use unknown key 'comand'; hint: did you mean 'command'?",
    );
    assert_contains(
        &problems(&with("{ env = \"A\", file = \"/x\" }")),
        "error: accounts.worker.password: cannot take its value from several places at once (file, env)",
    );
    assert_contains(
        &problems(&with("{ file = \"pass.txt\" }")),
        "error: accounts.worker.password.file: cannot use the relative path 'pass.txt'",
    );
    assert_contains(
        &problems(&with("{ command = \"pass show x\" }")),
        "error: accounts.worker.password.command: cannot use the string 'pass show x' as a command",
    );
    assert_contains(
        &problems(&with("{ env = \"MY-VAR\" }")),
        "error: accounts.worker.password.env: cannot use 'MY-VAR' as an environment variable name",
    );
}

#[test]
fn worker_values() {
    let text = format!(
        "{ACCOUNT}\n[worker]\nconcurrency = 0\ntask-timeout = \"30 minutes\"\ncancel-grace = \"0s\"\nwork-dir = \"work\"\nallowed-senders = [\"*\", \"ada@example.test\", \"ADA@example.test\"]\n"
    );
    let lines = problems(&text);
    assert_contains(
        &lines,
        "error: worker.concurrency: cannot use '0': expected a number from 1 to 256",
    );
    assert_contains(
        &lines,
        "error: worker.task-timeout: cannot parse '30 minutes' as a duration: unknown unit 'minutes'; hint: write a number and a unit",
    );
    assert_contains(
        &lines,
        "error: worker.cancel-grace: cannot use '0s': it must be longer than zero",
    );
    assert_contains(
        &lines,
        "error: worker.work-dir: cannot use the relative path 'work'",
    );
    assert_contains(
        &lines,
        "error: worker.allowed-senders[0]: cannot parse '*' as a sender",
    );
    assert_contains(
        &lines,
        "warning: worker.allowed-senders[2]: lists 'ADA@example.test' twice",
    );
}

#[test]
fn empty_allowed_senders_warn_unless_a_grant_allows_dispatch() {
    let config = valid(&format!("{ACCOUNT}\n[worker]\n"));
    assert_eq!(config.warnings()[0].path, "worker.allowed-senders");
    let granted = format!("{ACCOUNT}\n[worker]\n[[trust.grants]]\npeer = \"boss@example.test\"\n");
    assert!(valid(&granted).warnings().is_empty());
    assert!(
        valid(ACCOUNT).warnings().is_empty(),
        "no [worker] table, no warning"
    );
}

#[test]
fn grants() {
    let text = format!(
        r#"{ACCOUNT}
[[trust.grants]]
peer = "Boss@Example.TEST"
expires = 2026-12-31T23:59:59Z
dispatch-context-rules = {{ project = ["alpha", "beta"] }}

[[trust.grants]]
peer = "*@partner.test"
intents = ["card.query"]
state = "blocked"
expires = "2027-01-01T00:00:00+01:00"
require-signature = true
"#
    );
    let config = valid(&text);
    let grants = &config.trust().grants;
    assert_eq!(grants[0].account, "worker");
    assert_eq!(
        grants[0].peer,
        PeerPattern::Address("boss@example.test".into())
    );
    assert_eq!(grants[0].intents, vec!["task.dispatch", "task.cancel"]);
    assert_eq!(grants[0].state, GrantState::Active);
    assert_eq!(
        grants[0].expires.unwrap().to_rfc3339(),
        "2026-12-31T23:59:59+00:00"
    );
    assert_eq!(
        grants[0].dispatch_context_rules["project"],
        vec!["alpha", "beta"]
    );
    assert_eq!(grants[1].peer, PeerPattern::Domain("partner.test".into()));
    assert_eq!(grants[1].state, GrantState::Blocked);
    assert!(grants[1].require_signature);

    let bad = format!(
        r#"{ACCOUNT}
[[trust.grants]]
peer = "boss@example.test"
intents = ["task.dispach", "task.everything"]
state = "paused"
expires = "next week"
dispatch-context-rules = {{ "Project" = ["a"], empty = [] }}

[[trust.grants]]
peer = "BOSS@example.test"

[[trust.grants]]
intents = []
"#
    );
    let lines = problems(&bad);
    assert_contains(
        &lines,
        "error: trust.grants[0].intents[0]: cannot use unknown intent 'task.dispach'; hint: did you mean 'task.dispatch'?",
    );
    assert_contains(
        &lines,
        "error: trust.grants[0].intents[1]: cannot use unknown intent 'task.everything'; hint: AAMP 1.1 intents: task.dispatch,",
    );
    assert_contains(
        &lines,
        "error: trust.grants[0].state: cannot use 'paused': expected one of 'active', 'declined', 'blocked', 'revoked'",
    );
    assert_contains(
        &lines,
        "error: trust.grants[0].expires: cannot parse 'next week' as an RFC 3339 date-time",
    );
    assert_contains(
        &lines,
        "error: trust.grants[0].dispatch-context-rules.Project: cannot use 'Project' as a Dispatch-Context key",
    );
    assert_contains(
        &lines,
        "error: trust.grants[0].dispatch-context-rules.empty: cannot be empty",
    );
    assert_contains(&lines, "error: trust.grants[2].peer: cannot be missing");
    assert_contains(&lines, "error: trust.grants[2].intents: cannot be empty");
}

#[test]
fn duplicate_grants_are_refused() {
    let text = format!(
        "{ACCOUNT}\n[[trust.grants]]\npeer = \"boss@example.test\"\n[[trust.grants]]\npeer = \"BOSS@example.test\"\n"
    );
    assert_contains(
        &problems(&text),
        "error: trust.grants[1].peer: cannot grant 'boss@example.test' twice for account 'worker': trust.grants[0] already does",
    );
}

#[test]
fn trust_values() {
    let text = format!(
        "{ACCOUNT}\n[trust]\nauthserv-id = \"mail example\"\nrate-limit = \"lots\"\ndedup-retention = \"1d\"\n"
    );
    let lines = problems(&text);
    assert_contains(
        &lines,
        "error: trust.authserv-id: cannot use 'mail example' as an authserv-id",
    );
    assert_contains(
        &lines,
        "error: trust.rate-limit: cannot parse 'lots' as a rate limit: it has no '/'",
    );
    assert_contains(
        &lines,
        "warning: trust.dedup-retention: is shorter than 7 days",
    );
    let rate = |limit: &str| {
        valid(&format!("{ACCOUNT}\n[trust]\nrate-limit = \"{limit}\"\n"))
            .trust()
            .rate_limit
    };
    assert_eq!(
        rate("5/m"),
        RateLimit {
            count: 5,
            per: Duration::from_secs(60)
        }
    );
    assert_eq!(
        rate("100/30m"),
        RateLimit {
            count: 100,
            per: Duration::from_secs(1_800)
        }
    );
    let open = valid(&format!(
        "{ACCOUNT}\n[trust]\nrequire-authentication = false\n"
    ));
    assert_eq!(open.warnings()[0].path, "trust.require-authentication");
}

#[test]
fn log_level_accepts_levels_and_directives() {
    for level in ["debug", "WARN", "info,taskmail::transport=debug"] {
        valid(&format!("log-level = \"{level}\"\n{ACCOUNT}"));
    }
    assert_contains(
        &problems(&format!("log-level = \"verbose\"\n{ACCOUNT}")),
        "error: log-level: cannot use 'verbose' as a log level; hint: use off, error, warn",
    );
    assert_contains(
        &problems(&format!("log-level = \"inf\"\n{ACCOUNT}")),
        "hint: did you mean 'info'?",
    );
    assert_contains(
        &problems(&format!("log-format = \"xml\"\n{ACCOUNT}")),
        "error: log-format: cannot use 'xml': expected one of 'text', 'json'",
    );
}

#[test]
fn serve_section() {
    let text = format!(
        "{ACCOUNT}\n[serve]\nlisten = \"0.0.0.0:8765\"\nallow-remote = true\nbody-limit = 2048\n[serve.agents.bot]\naccount = \"worker\"\ntoken = {{ env = \"BOT_TOKEN\" }}\n"
    );
    let config = valid(&text);
    let serve = config.serve();
    assert_eq!(serve.agents[0].name, "bot");
    assert_eq!(serve.agents[0].account, "worker");
    assert_eq!(serve.agents[0].token, Secret::Env("BOT_TOKEN".to_owned()));
    assert_eq!(serve.body_limit, 2048);
    assert_eq!(config.warnings()[0].path, "serve.listen");
    let remote = format!("{ACCOUNT}\n[serve]\nlisten = \"0.0.0.0:8765\"\n");
    assert_contains(
        &problems(&remote),
        "error: serve.listen: cannot listen on '0.0.0.0:8765': other machines could reach the operator API",
    );
    let bad = format!(
        "{ACCOUNT}\n[serve]\nlisten = \"localhost:80\"\nbody-limit = 10\n[serve.agents.bot]\naccount = \"worker\"\ntoken = \"plain\"\n[serve.agents.bot2]\naccount = \"worker\"\ntoken = {{ env = \"T\" }}\n[serve.agents.bot3]\naccount = \"nope\"\ntoken = {{ env = \"T\" }}\n"
    );
    let lines = problems(&bad);
    assert_contains(
        &lines,
        "error: serve.listen: cannot parse 'localhost:80' as a listen address",
    );
    assert_contains(
        &lines,
        "error: serve.body-limit: cannot use 10 bytes as the body limit",
    );
    assert_contains(
        &lines,
        "error: serve.agents.bot.token: cannot use a bare string as a secret",
    );
    assert_contains(
        &lines,
        "error: serve.agents.bot2.account: cannot give account 'worker' a second agent",
    );
    assert_contains(
        &lines,
        "error: serve.agents.bot3.account: cannot find account 'nope'",
    );
}

#[test]
fn inline_profiles_are_checked_with_their_paths() {
    let text = format!(
        "{ACCOUNT}\n[profiles.mybot]\ncommand = []\ntimeout = \"soon\"\noutbox-dir = \"../out\"\nprompt-via = \"pipe\"\n"
    );
    let lines = problems(&text);
    assert_contains(&lines, "error: profiles.mybot.command: cannot be empty");
    assert_contains(
        &lines,
        "error: profiles.mybot.timeout: cannot parse 'soon' as a duration",
    );
    assert_contains(
        &lines,
        "error: profiles.mybot.outbox-dir: cannot use '../out' as the outbox directory",
    );
    assert_contains(
        &lines,
        "error: profiles.mybot.prompt-via: cannot use 'pipe': expected one of 'argv', 'stdin'",
    );
    let ok = format!(
        "{ACCOUNT}\n[profiles.mybot]\ncommand = [\"bot\", \"{{prompt}}\"]\nexit-codes = {{ 3 = \"help\" }}\n"
    );
    let config = valid(&ok);
    let layer = &config.profiles()["mybot"];
    assert_eq!(layer.exit_codes.as_ref().unwrap()[&3], ExitAction::Help);
}

#[test]
fn every_problem_in_a_file_is_reported_at_once() {
    let text = r#"
log-levle = "debug"
[accounts.worker]
email = "worker"
password = "secret"
jmap.session-url = "htp:/x"
smtp = { host = "mail.example.test", tls = "plaintext", prot = 25 }
[worker]
concurrency = 0
task-timeout = "soon"
"#;
    let errors = parse(text).unwrap_err();
    let lines = errors.lines().join("\n");
    for expected in [
        "error: log-levle: cannot use unknown key 'log-levle'; hint: did you mean 'log-level'?",
        "error: accounts.worker.smtp.prot: cannot use unknown key 'prot'; hint: did you mean 'port'?",
        "error: accounts.worker.email: cannot parse 'worker' as an email address",
        "error: accounts.worker.password: cannot use a bare string as a secret",
        "error: accounts.worker.jmap.session-url: cannot parse 'htp:/x' as a URL",
        "error: accounts.worker.smtp.tls: cannot use 'plaintext' with host 'mail.example.test'",
        "error: worker.concurrency: cannot use '0'",
        "error: worker.task-timeout: cannot parse 'soon' as a duration",
    ] {
        assert_contains(&lines, expected);
    }
    assert_eq!(errors.errors.len(), 8, "{lines}");
    assert!(
        errors
            .to_string()
            .starts_with("cannot accept the configuration: 8 problems")
    );
}

#[test]
fn permissive_mode_warns_and_continues() {
    let text = format!("colour = \"blue\"\n{ACCOUNT}smtp.colour = \"red\"\n");
    assert_contains(
        &problems(&text),
        "error: colour: cannot use unknown key 'colour'",
    );
    let config = Config::from_toml_str_with_env(&text, Mode::Permissive, &env()).unwrap();
    let paths: Vec<&str> = config.warnings().iter().map(|w| w.path.as_str()).collect();
    assert_eq!(paths, ["accounts.worker.smtp.colour", "colour"]);
}

#[test]
fn from_raw_works_without_toml() {
    let account = RawAccount {
        email: Some("w@example.test".into()),
        password: Some(toml::Value::Table(toml::Table::from_iter([(
            "env".to_owned(),
            toml::Value::String("PW".into()),
        )]))),
        jmap: Some(RawJmap {
            session_url: Some("https://mail.example.test/jmap".into()),
            ..RawJmap::default()
        }),
        smtp: Some(RawSmtp {
            host: Some("mail.example.test".into()),
            timeout: Some("1m".into()),
            ..RawSmtp::default()
        }),
        ..RawAccount::default()
    };
    let raw = RawConfig {
        accounts: Some([("w".to_owned(), account)].into_iter().collect()),
        ..RawConfig::default()
    };
    let config = Config::from_raw(raw, &env()).unwrap();
    assert_eq!(
        config.default_account().smtp.timeout,
        Duration::from_secs(60)
    );
    let errors = Config::from_raw(RawConfig::default(), &env()).unwrap_err();
    assert_eq!(errors.errors[0].path, "accounts");
}

#[test]
fn load_reports_unreadable_files() {
    let dir = tempfile::tempdir().unwrap();
    let missing = Config::load(&dir.path().join("none.toml"), Mode::Strict, &env());
    assert!(matches!(missing, Err(ConfigError::Read { .. })));
    let file = dir.path().join("config.toml");
    std::fs::write(&file, ACCOUNT).unwrap();
    assert!(Config::load(&file, Mode::Strict, &env()).is_ok());
    std::fs::write(&file, "x = 1").unwrap();
    let error = Config::load(&file, Mode::Strict, &env()).unwrap_err();
    assert!(error.to_string().starts_with("cannot use config file"));
}

#[test]
fn names() {
    assert!(is_valid_name("worker-1_b"));
    for bad in ["", "a b", "../x", "a.b", &"x".repeat(65)] {
        assert!(!is_valid_name(bad), "{bad}");
    }
}

/// Every key path of a shape, with `*` for table names and `[]` for array items.
fn key_paths(shape: &schema::Shape, prefix: &str, out: &mut Vec<String>) {
    use schema::Shape;
    match shape {
        Shape::Struct(fields) => {
            for (name, child) in fields {
                let path = if prefix.is_empty() {
                    (*name).to_owned()
                } else {
                    format!("{prefix}.{name}")
                };
                out.push(path.clone());
                key_paths(child, &path, out);
            }
        }
        Shape::Map(inner) => key_paths(inner, &format!("{prefix}.*"), out),
        Shape::Seq(inner) => key_paths(inner, &format!("{prefix}[]"), out),
        Shape::Newtype(_, inner) => key_paths(inner, prefix, out),
        _ => {}
    }
}

/// The same paths as they occur in a TOML document.
fn toml_paths(value: &toml::Value, prefix: &str, out: &mut BTreeSet<String>) {
    match value {
        toml::Value::Table(table) => {
            for (key, child) in table {
                for path in [format!("{prefix}.{key}"), format!("{prefix}.*")] {
                    let path = path.trim_start_matches('.').to_owned();
                    out.insert(path.clone());
                    toml_paths(child, &path, out);
                }
            }
        }
        toml::Value::Array(items) => {
            for item in items {
                toml_paths(item, &format!("{prefix}[]"), out);
            }
        }
        _ => {}
    }
}

#[test]
fn example_config_shows_every_key() {
    let shape = schema::shape_of::<RawConfig>().unwrap();
    let mut schema_paths = Vec::new();
    key_paths(&shape, "", &mut schema_paths);
    let example: toml::Value = toml::from_str(include_str!("../../config.example.toml")).unwrap();
    let mut example_paths = BTreeSet::new();
    toml_paths(&example, "", &mut example_paths);
    let missing: Vec<&String> = schema_paths
        .iter()
        .filter(|path| !example_paths.contains(*path))
        .collect();
    assert!(schema_paths.len() > 70, "{schema_paths:?}");
    assert!(
        missing.is_empty(),
        "config.example.toml does not show: {missing:?}"
    );
}
