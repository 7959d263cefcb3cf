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
            if let Some(handle) = Handle::from_address(&account.email) {
                accounts.insert(account.name.clone(), (handle, account.email.to_lowercase()));
            }
        }
        Directory {
            accounts,
            entries: BTreeMap::new(),
        }
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
