//! Config fixtures through the library, as a user's file would go.
//!
//! - every `fixtures/config/valid/*.toml` must validate;
//! - every `fixtures/config/invalid/*.toml` must fail, and its report must contain each line of
//!   the `NAME.expected` file next to it (substrings of `error: PATH: message; hint: ...` lines);
//! - `config.example.toml`, which documents every key, must pass `taskmail config check`.
//!
//! A fixed [`Env`] stands in for the process environment, so results do not depend on the
//! machine (`~` expands to `/home/fixture`).

use std::path::{Path, PathBuf};

use taskmail::cli::config::ConfigCheckCommand;
use taskmail::config::{Config, ConfigErrors, Env, Mode};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn env() -> Env {
    Env::with_home("/home/fixture")
}

/// The `.toml` files of one fixture directory, sorted.
fn fixtures(kind: &str) -> Vec<PathBuf> {
    let dir = root().join("fixtures/config").join(kind);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|entry| entry.expect("a readable directory entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
        .collect();
    files.sort();
    files
}

fn name(path: &Path) -> String {
    path.file_name()
        .expect("a fixture path ends in a file name")
        .to_string_lossy()
        .into_owned()
}

fn report_text(errors: &ConfigErrors) -> String {
    errors.lines().join("\n")
}

#[test]
fn valid_fixtures_validate() {
    let files = fixtures("valid");
    let mut failures = Vec::new();
    for path in &files {
        let text = std::fs::read_to_string(path).unwrap();
        if let Err(errors) = Config::from_toml_str_with_env(&text, Mode::Strict, &env()) {
            failures.push(format!("{}:\n{}", name(path), report_text(&errors)));
        }
    }
    assert!(
        failures.is_empty(),
        "valid fixtures failed:\n\n{}",
        failures.join("\n\n")
    );
    assert!(files.len() >= 5, "only {} valid fixtures ran", files.len());
}

#[test]
fn invalid_fixtures_report_every_expected_problem() {
    let files = fixtures("invalid");
    let mut failures = Vec::new();
    for path in &files {
        let expected_path = path.with_extension("expected");
        let Ok(expected) = std::fs::read_to_string(&expected_path) else {
            failures.push(format!("{}: no {} file", name(path), name(&expected_path)));
            continue;
        };
        let text = std::fs::read_to_string(path).unwrap();
        let report = match Config::from_toml_str_with_env(&text, Mode::Strict, &env()) {
            Ok(_) => {
                failures.push(format!("{}: validated, but it should not", name(path)));
                continue;
            }
            Err(errors) => report_text(&errors),
        };
        let missing: Vec<&str> = expected
            .lines()
            .filter(|line| !line.trim().is_empty())
            .filter(|line| !report.contains(*line))
            .collect();
        if !missing.is_empty() {
            failures.push(format!(
                "{}: missing\n  {}\nin the report\n  {}",
                name(path),
                missing.join("\n  "),
                report.replace('\n', "\n  ")
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "invalid fixtures:\n\n{}",
        failures.join("\n\n")
    );
    assert!(
        files.len() >= 10,
        "only {} invalid fixtures ran",
        files.len()
    );
}

#[test]
fn example_config_passes_config_check() {
    let example = root().join("config.example.toml");
    let command = ConfigCheckCommand {
        file: Some(example.clone()),
        json: true,
    };
    let report = command.check(&env());
    assert!(report.valid, "config.example.toml: {:#?}", report.errors);
    // NOTE: the example targets the loopback test server, whose password it writes as a raw
    // secret; that is the only thing worth a warning.
    for warning in &report.warnings {
        assert!(
            warning.message.contains("raw secrets are for tests only"),
            "unexpected warning in config.example.toml: {warning}"
        );
    }
    assert!(
        report
            .summary
            .starts_with("config OK: 2 accounts, worker agent 'echo'"),
        "{}",
        report.summary
    );

    let text = std::fs::read_to_string(&example).unwrap();
    let config = Config::from_toml_str_with_env(&text, Mode::Strict, &env()).unwrap();
    assert_eq!(config.default_account().email, "worker@example.test");
    assert_eq!(config.default_account().smtp.port, 5587);
}
