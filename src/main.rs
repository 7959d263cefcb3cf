//! The `taskmail` binary: parse the command line, start logging, call the library, exit with
//! a documented code.

use std::process::ExitCode;

use clap::Parser as _;
use taskmail::cli::{Cli, Exit, GlobalArgs};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() {
                Exit::Usage
            } else {
                Exit::Ok
            };
            let _ = e.print();
            return code.into();
        }
    };
    init_logging(&cli.global);
    match cli.execute() {
        Ok(code) => code.into(),
        Err(e) => {
            eprintln!("error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            eprintln!("  hint: rerun with --log-level debug for details");
            Exit::Failure.into()
        }
    }
}

/// Starts logging to stderr. Level: `--log-level`, then `$TASKMAIL_LOG`, then the config file's
/// `log-level`, then `warn`. Format: the config file's `log-format` (`text` or `json`). The config
/// is only peeked at here (unreadable or invalid files are reported by the verb that loads them).
fn init_logging(global: &GlobalArgs) {
    let (config_level, config_format) = peek_log_settings(global);
    let filter = global
        .log_level
        .clone()
        .or_else(|| std::env::var("TASKMAIL_LOG").ok())
        .or(config_level)
        .unwrap_or_else(|| "warn".to_owned());
    let filter = EnvFilter::try_new(&filter).unwrap_or_else(|_| EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if config_format.as_deref() == Some("json") {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn peek_log_settings(global: &GlobalArgs) -> (Option<String>, Option<String>) {
    let env = taskmail::config::Env::from_process();
    let path = taskmail::config::locate(global.config.as_deref(), &env);
    let Ok(text) = std::fs::read_to_string(path) else {
        return (None, None);
    };
    let Ok(value) = text.parse::<toml::Table>() else {
        return (None, None);
    };
    let get = |key: &str| value.get(key).and_then(|v| v.as_str()).map(str::to_owned);
    (get("log-level"), get("log-format"))
}
