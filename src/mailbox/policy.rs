//! Who may reach this mailbox, and whom it may reach (`protocol/asmtp.md` "Trust", mapped onto
//! taskmail's own trust settings).
//!
//! The entries are the ones the task gate uses (`daemon::gate`, which this layer cannot call):
//! `worker.allowed-senders`, the account's `[[trust.grants]]` and the grants in the store
//! (read at every check, a stored grant winning over a config grant for the same peer). For
//! envelopes:
//! - a declined, blocked or revoked grant covering the peer refuses, whatever else admits it;
//! - else an allowed-senders entry or any active, unexpired grant of the account admits it
//!   (whatever intents it lists: a peer we exchange tasks with may exchange envelopes);
//! - the account's own address is always admitted (self-send).
//!
//! Inbound, the sender (header From) must also pass authentication as for tasks
//! (`trust.require-authentication`, [`crate::trust::auth`]). Outbound, every recipient must be
//! admitted by the same rules (reachability is symmetric): one refused recipient refuses the
//! whole send.

use chrono::{DateTime, Utc};

use crate::config::{Config, GrantState, PeerPattern, normalize_address};
use crate::store::{GrantRecord, Store, state_name};
use crate::trust::auth::{self, AuthVerdict, Evidence};
use crate::wire::message::Inbound;

/// The envelope policy of one account.
#[derive(Debug, Clone)]
pub struct Policy {
    account: String,
    own_address: String,
    evidence: Option<Evidence>,
    allowed: Vec<PeerPattern>,
    config_grants: Vec<GrantRecord>,
}

impl Policy {
    /// The policy of `account` (a config account name).
    pub fn from_config(config: &Config, account: &str, now: DateTime<Utc>) -> Policy {
        let trust = config.trust();
        let own_address = config
            .account(account)
            .map(|a| normalize_address(&a.email))
            .unwrap_or_default();
        let local_domain = own_address
            .rsplit_once('@')
            .map(|(_, d)| d.to_owned())
            .unwrap_or_default();
        Policy {
            account: account.to_owned(),
            own_address,
            evidence: trust.require_authentication.then(|| Evidence {
                authserv_id: trust.authserv_id.clone(),
                same_server_submission: trust.same_server_submission,
                local_domain,
            }),
            allowed: config.worker().allowed_senders.clone(),
            config_grants: trust
                .grants
                .iter()
                .filter(|g| g.account == account)
                .map(|g| GrantRecord::from_config(g, now))
                .collect(),
        }
    }

    /// Whether `peer` (an address) is admitted by the sender policy: `Ok(rule)` or
    /// `Err(rule)`.
    pub fn peer(&self, store: &Store, peer: &str, now: DateTime<Utc>) -> Result<String, String> {
        let peer = normalize_address(peer);
        if peer.is_empty() {
            return Err("no-sender".to_owned());
        }
        if peer == self.own_address {
            return Ok("self".to_owned());
        }
        let stored = store
            .grants_for(&self.account, &peer)
            .map_err(|_| "grants-unreadable".to_owned())?;
        let mut grants = stored.clone();
        grants.extend(
            self.config_grants
                .iter()
                .filter(|g| g.peer.matches(&peer))
                .filter(|g| !stored.iter().any(|s| s.peer == g.peer))
                .cloned(),
        );
        if let Some(g) = grants.iter().find(|g| g.state != GrantState::Active) {
            return Err(format!("grant-{}:{}", state_name(g.state), g.peer));
        }
        if let Some(p) = self.allowed.iter().find(|p| p.matches(&peer)) {
            return Ok(format!("allowed-sender:{p}"));
        }
        match grants.iter().find(|g| g.expires.is_none_or(|at| at > now)) {
            Some(g) => Ok(format!("grant:{}", g.peer)),
            None if grants.is_empty() => Err("not-allowed".to_owned()),
            None => Err("grant-expired".to_owned()),
        }
    }

    /// The inbound check of one headers-only mail: authentication, then the sender policy.
    pub fn admit(
        &self,
        store: &Store,
        inbound: &Inbound,
        now: DateTime<Utc>,
    ) -> Result<String, String> {
        let sender = inbound.from.first().map(|m| normalize_address(&m.email));
        let auth = match &self.evidence {
            None => None,
            Some(evidence) => match auth::verdict(
                &inbound.headers,
                sender.as_deref(),
                inbound.from.len(),
                evidence,
            ) {
                AuthVerdict::Pass(rule) => Some(rule),
                AuthVerdict::Fail(rule) => return Err(format!("auth:{rule}")),
            },
        };
        let rule = self.peer(store, sender.as_deref().unwrap_or_default(), now)?;
        Ok(match auth {
            Some(a) => format!("{rule} [{a}]"),
            None => rule,
        })
    }
}
