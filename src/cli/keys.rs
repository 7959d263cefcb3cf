//! `taskmail keys new|show`: an account's agent signing key (`X-ASMTP-Signature`, README
//! "Agent signatures").
//!
//! - `keys new [--account NAME] [--force] [--json]` writes `<state-dir>/keys/NAME.key` (the
//!   secret seed, mode 0600, never printed) and `<state-dir>/keys/NAME.pub` (one line, the
//!   public key `ed25519:<base64url>` that peers pin as `peer-key`). An existing key is kept
//!   unless `--force`: replacing it makes every peer that pinned it refuse this account's mail.
//! - `keys show [--account NAME] [--json]` prints the public key and its key id.
//!
//! With `--json`: `{"account", "publicKey", "keyId", "secretFile", "publicFile"}` (and
//! `"created": true|false`); never the secret.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use serde_json::json;

use super::{Exit, Failure, output};
use crate::config::Env;
use crate::trust::keys::{self, KeyFileError};
use crate::trust::sign::PublicKey;

/// `taskmail keys`: the agent signing key of an account.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Make a new signing key for an account (refuses to replace one without --force).
    New(KeysNewCommand),
    /// Print an account's public key and key id.
    Show(KeysShowCommand),
}

/// `taskmail keys new`.
#[derive(Debug, Args)]
pub struct KeysNewCommand {
    /// The account (default: the default account).
    #[arg(long, value_name = "NAME")]
    pub account: Option<String>,
    /// Replace an existing key (peers that pinned the old one will refuse the new one).
    #[arg(long)]
    pub force: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `taskmail keys show`.
#[derive(Debug, Args)]
pub struct KeysShowCommand {
    /// The account (default: the default account).
    #[arg(long, value_name = "NAME")]
    pub account: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

impl KeysCommand {
    /// Runs the verb; `global_config` is the global `-c FILE`.
    pub fn execute(self, global_config: Option<PathBuf>, env: &Env) -> anyhow::Result<Exit> {
        let (json, result) = match self {
            KeysCommand::New(c) => (c.json, c.run(global_config, env)),
            KeysCommand::Show(c) => (c.json, c.run(global_config, env)),
        };
        super::finish(json, result)
    }
}

/// The config's state dir and the chosen account's name.
fn target(
    global_config: Option<PathBuf>,
    env: &Env,
    flag: Option<&str>,
) -> Result<(PathBuf, String), Failure> {
    let (config, _) = super::load_config(global_config.as_deref(), env)?;
    let fallback = config.default_account().name.clone();
    let account = super::pick_account(&config, flag, &fallback)?;
    Ok((config.state_dir().to_owned(), account.name.clone()))
}

fn key_failure(error: &KeyFileError, account: &str) -> Failure {
    let failure = Failure::of("key", error, 1);
    match error {
        KeyFileError::Exists { .. } => failure.detail(format!(
            "keep it (see it with: taskmail keys show --account {account}), or replace it with --force; peers that pinned the old key will then refuse this account's mail until they pin the new one"
        )),
        KeyFileError::Permissions { path, .. } => {
            failure.detail(format!("run: chmod 600 '{}'", path.display()))
        }
        _ => failure,
    }
}

fn report(
    state_dir: &Path,
    account: &str,
    public: &PublicKey,
    created: Option<bool>,
    json: bool,
) -> Result<(), Failure> {
    let secret_file = keys::secret_path(state_dir, account);
    let public_file = keys::public_path(state_dir, account);
    let mut value = json!({
        "account": account,
        "publicKey": public.to_text(),
        "keyId": public.key_id(),
        "secretFile": secret_file.display().to_string(),
        "publicFile": public_file.display().to_string(),
    });
    if let (Some(created), Some(map)) = (created, value.as_object_mut()) {
        map.insert("created".to_owned(), json!(created));
    }
    if json {
        output::print_json(&value)?;
    } else {
        output::print_fields(&value)?;
        if created == Some(true) {
            eprintln!(
                "Give the public key to the peers that should check this account's mail: \
                 peer-key = \"{}\" in their [[trust.grants]] entry for {account}'s address.",
                public.to_text()
            );
        }
    }
    Ok(())
}

impl KeysNewCommand {
    fn run(self, global_config: Option<PathBuf>, env: &Env) -> Result<Exit, Failure> {
        let (state_dir, account) = target(global_config, env, self.account.as_deref())?;
        let key = keys::generate().map_err(|e| key_failure(&e, &account))?;
        keys::write(&state_dir, &account, &key, self.force)
            .map_err(|e| key_failure(&e, &account))?;
        tracing::info!(account = %account, key_id = %key.public_key().key_id(), "signing key created");
        report(
            &state_dir,
            &account,
            &key.public_key(),
            Some(true),
            self.json,
        )?;
        Ok(Exit::Ok)
    }
}

impl KeysShowCommand {
    fn run(self, global_config: Option<PathBuf>, env: &Env) -> Result<Exit, Failure> {
        let (state_dir, account) = target(global_config, env, self.account.as_deref())?;
        // NOTE: the secret is the truth (it is what signs); the .pub file only if there is no
        // secret here (a copy of another machine's public key).
        let public =
            match keys::load(&state_dir, &account).map_err(|e| key_failure(&e, &account))? {
                Some(secret) => Some(secret.public_key()),
                None => keys::load_public(&state_dir, &account)
                    .map_err(|e| key_failure(&e, &account))?,
            };
        let Some(public) = public else {
            return Err(Failure::new(
                "key",
                format!("cannot show the key of account '{account}': it has none"),
                Exit::Failure,
            )
            .detail(format!(
                "make one with: taskmail keys new --account {account}"
            )));
        };
        report(&state_dir, &account, &public, None, self.json)?;
        Ok(Exit::Ok)
    }
}
