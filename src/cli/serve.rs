//! `taskmail serve [--listen IP:PORT] [--json]`: the local operator API (README "The local
//! operator API (taskmail serve)", module [`crate::serve`]).
//!
//! Starts every `[serve.agents.NAME]` mailbox and its follow loop, listens (default
//! `[serve] listen`, 127.0.0.1:7878), and runs until SIGINT or SIGTERM. With `--json`, JSON
//! Lines on stdout: a `ready` line (address and agents) and a `stopped` line; otherwise the
//! same on stderr as text.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;
use serde_json::json;

use super::{Exit, Failure, output};
use crate::config::Env;
use crate::serve::Server;

/// `taskmail serve`: the HTTP/WebSocket operator API for local agents.
#[derive(Debug, Args)]
pub struct ServeCommand {
    /// Address to listen on, e.g. 127.0.0.1:7878 (default: [serve] listen). A non-loopback
    /// address needs [serve] allow-remote = true.
    #[arg(long, value_name = "IP:PORT")]
    pub listen: Option<SocketAddr>,
    /// JSON Lines on stdout (ready, stopped).
    #[arg(long)]
    pub json: bool,
}

impl ServeCommand {
    /// Runs the verb until a signal; `global_config` is the global `-c FILE`.
    pub fn execute(self, global_config: Option<PathBuf>, env: &Env) -> anyhow::Result<Exit> {
        let json = self.json;
        super::finish(json, self.run(global_config, env))
    }

    fn run(self, global_config: Option<PathBuf>, env: &Env) -> Result<Exit, Failure> {
        let (config, path) = super::load_config(global_config.as_deref(), env)?;
        if let Some(listen) = self.listen
            && !listen.ip().is_loopback()
            && !config.serve().allow_remote
        {
            return Err(Failure::new(
                "usage",
                format!("cannot listen on {listen}: other machines could reach the operator API"),
                Exit::Usage,
            )
            .detail("use 127.0.0.1:PORT, or set [serve] allow-remote = true behind a TLS proxy"));
        }
        let runtime = super::runtime()?;
        runtime.block_on(async move {
            crate::transport::init_crypto();
            let server = Server::start(&config, self.listen).await.map_err(|e| {
                let failure = Failure::of("serve", &e, e.exit_code());
                match e {
                    crate::serve::ServeError::Bind { .. } => failure
                        .detail("another process uses the port: pick another with --listen or [serve] listen"),
                    crate::serve::ServeError::NoAgents | crate::serve::ServeError::Token { .. } => {
                        failure.detail(format!("fix [serve.agents] in '{}'", path.display()))
                    }
                    _ => failure,
                }
            })?;
            let agents: Vec<_> = server
                .agents()
                .iter()
                .map(|(name, account, handle)| json!({"agent": name, "account": account, "handle": handle}))
                .collect();
            let addr = server.local_addr();
            self.emit(json!({
                "event": "ready",
                "listen": addr.to_string(),
                "url": format!("http://{addr}"),
                "agents": agents,
                "config": path.display().to_string(),
                "version": env!("CARGO_PKG_VERSION"),
            }));
            tracing::info!(listen = %addr, agents = agents.len(), "operator API ready");
            server
                .run_until(async {
                    let signal = super::stop_signal().await;
                    tracing::info!(signal, "stopping");
                })
                .await
                .map_err(|e| Failure::of("serve", &e, e.exit_code()))?;
            self.emit(json!({"event": "stopped"}));
            Ok(Exit::Ok)
        })
    }

    fn emit(&self, value: serde_json::Value) {
        if self.json {
            let _ = output::write_stdout(format!("{value}\n").as_bytes());
            return;
        }
        match value["event"].as_str() {
            Some("ready") => {
                eprintln!(
                    "taskmail {} serving the operator API on {} (config {})",
                    value["version"].as_str().unwrap_or_default(),
                    value["url"].as_str().unwrap_or_default(),
                    value["config"].as_str().unwrap_or_default()
                );
                for agent in value["agents"].as_array().into_iter().flatten() {
                    eprintln!(
                        "  agent {} = {} (account {})",
                        agent["agent"].as_str().unwrap_or_default(),
                        agent["handle"].as_str().unwrap_or_default(),
                        agent["account"].as_str().unwrap_or_default()
                    );
                }
            }
            _ => eprintln!("stopped"),
        }
    }
}
