//! Identity: an account's ASMTP handle and handle <-> address resolution.
//!
//! A handle `@owner.name` maps to `owner.name@<agent-domain>`, the agent domain being the
//! account's own domain. Accounts whose address is not of that form set
//! `[accounts.NAME] handle = "@owner.name"`, and peers whose address differs are listed in the
//! `[asmtp.directory]` table (`"@owner.name" = "address"`).

use std::collections::BTreeMap;

use super::MailboxError;
use crate::config::Config;
use crate::wire::asmtp::Handle;

/// Handle <-> address resolution for one config.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Directory {
    /// Account name -> (handle, address).
    accounts: BTreeMap<String, (Handle, String)>,
    /// Explicit entries, handle -> address (lowercase).
    entries: BTreeMap<Handle, String>,
}

impl Directory {
    /// The directory of `config`: every account that has a handle, plus the explicit table.
    pub fn from_config(config: &Config) -> Directory {
        let mut accounts = BTreeMap::new();
        for account in config.accounts() {
            let handle = match &account.handle {
                Some(h) => Handle::parse(h).ok(),
                None => Handle::from_address(&account.email),
            };
            if let Some(handle) = handle {
                accounts.insert(
                    account.name.clone(),
                    (handle, account.email.trim().to_lowercase()),
                );
            }
        }
        let entries = config
            .asmtp()
            .directory
            .iter()
            .filter_map(|(h, a)| Handle::parse(h).ok().map(|h| (h, a.clone())))
            .collect();
        Directory { accounts, entries }
    }

    /// The handle of a config account.
    pub fn handle_of_account(&self, account: &str) -> Result<Handle, MailboxError> {
        self.accounts
            .get(account)
            .map(|(h, _)| h.clone())
            .ok_or_else(|| {
                MailboxError::Invalid(format!(
                    "account '{account}' has no ASMTP handle: set [accounts.{account}] handle = \"@owner.name\""
                ))
            })
    }

    /// The config account whose handle is `handle`, if it is local.
    pub fn account_of_handle(&self, handle: &Handle) -> Option<&str> {
        self.accounts
            .iter()
            .find(|(_, (h, _))| h == handle)
            .map(|(name, _)| name.as_str())
    }

    /// The address of a handle: an explicit entry or a local account, else
    /// `owner.name@default_domain`.
    pub fn address_of(&self, handle: &Handle, default_domain: &str) -> String {
        if let Some(a) = self.entries.get(handle) {
            return a.clone();
        }
        if let Some((_, a)) = self.accounts.values().find(|(h, _)| h == handle) {
            return a.clone();
        }
        handle.to_address(default_domain)
    }

    /// The handle an address stands for: an explicit entry or a local account, else the
    /// `owner.name` local part.
    pub fn handle_of_address(&self, address: &str) -> Option<Handle> {
        let address = address.trim().to_lowercase();
        if let Some((h, _)) = self.entries.iter().find(|(_, a)| **a == address) {
            return Some(h.clone());
        }
        if let Some((h, _)) = self.accounts.values().find(|(_, a)| *a == address) {
            return Some(h.clone());
        }
        Handle::from_address(&address)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Env, Mode};

    const CONFIG: &str = r#"
state-dir = "/tmp/x"
[accounts.a]
default = true
email = "dispatcher@example.test"
handle = "@T.Dispatcher"
password = { raw = "p" }
smtp = { host = "127.0.0.1", port = 5587, tls = "plaintext", allow-plaintext = true }
jmap = { session-url = "http://127.0.0.1:8080/.well-known/jmap" }
[accounts.b]
email = "acme.planner@agents.test"
password = { raw = "p" }
smtp = { host = "127.0.0.1", port = 5587, tls = "plaintext", allow-plaintext = true }
jmap = { session-url = "http://127.0.0.1:8080/.well-known/jmap" }
[accounts.c]
email = "nodot@example.test"
password = { raw = "p" }
smtp = { host = "127.0.0.1", port = 5587, tls = "plaintext", allow-plaintext = true }
jmap = { session-url = "http://127.0.0.1:8080/.well-known/jmap" }
[asmtp.directory]
"@x.peer" = "Peer@Remote.test"
"#;

    #[test]
    fn handles_from_config_directory_and_addresses() {
        let config =
            Config::from_toml_str_with_env(CONFIG, Mode::Strict, &Env::with_home("/tmp")).unwrap();
        assert_eq!(
            config.account("a").unwrap().handle.as_deref(),
            Some("@t.dispatcher"),
            "{:?}",
            config.warnings()
        );
        let d = Directory::from_config(&config);
        let h = |s: &str| Handle::parse(s).unwrap();
        assert_eq!(d.handle_of_account("a").unwrap(), h("@t.dispatcher"));
        assert_eq!(d.handle_of_account("b").unwrap(), h("@acme.planner"));
        assert!(matches!(
            d.handle_of_account("c"),
            Err(MailboxError::Invalid(_))
        ));
        assert_eq!(d.account_of_handle(&h("@t.dispatcher")), Some("a"));
        assert_eq!(
            d.address_of(&h("@t.dispatcher"), "x.test"),
            "dispatcher@example.test"
        );
        assert_eq!(d.address_of(&h("@x.peer"), "x.test"), "peer@remote.test");
        assert_eq!(d.address_of(&h("@o.n"), "x.test"), "o.n@x.test");
        assert_eq!(
            d.handle_of_address("DISPATCHER@example.test"),
            Some(h("@t.dispatcher"))
        );
        assert_eq!(d.handle_of_address("peer@remote.test"), Some(h("@x.peer")));
        assert_eq!(d.handle_of_address("o.n@y.test"), Some(h("@o.n")));
        assert_eq!(d.handle_of_address("nodot@example.test"), None);
    }
}
