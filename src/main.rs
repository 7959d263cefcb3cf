//! The `taskmail` binary: parse the command line, start logging, call the library, exit with
//! a documented code.

use std::process::ExitCode;

use clap::Parser as _;
use taskmail::cli::{Cli, Exit};
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
    let filter = cli
        .global
        .log_level
        .clone()
        .or_else(|| std::env::var("TASKMAIL_LOG").ok())
        .unwrap_or_else(|| "warn".to_owned());
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_new(&filter).unwrap_or_else(|_| EnvFilter::new("warn")))
        .with_writer(std::io::stderr)
        .init();
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
