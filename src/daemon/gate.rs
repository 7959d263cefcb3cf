//! The trust gate in front of the worker: who may make it do anything (`protocol/trust.md`,
//! points 1 to 4). It runs on the headers only, before any body is fetched, and before any ack.
//!
//! [`TrustGate`] composes the steps, in this order, each verdict carrying the rule that decided:
//!
//! 1. **Authentication** ([`crate::trust::auth`]): the topmost `Authentication-Results` of
//!    `trust.authserv-id` with an aligned DMARC or DKIM pass, or (with
//!    `trust.same-server-submission`) an authenticated submission on this server. Skipped when
//!    `trust.require-authentication = false`. Refused as `auth:<why>` (`auth:dmarc=none`).
//! 2. **Sender policy** ([`SenderPolicy`], default deny): the sender is the header From
//!    (lowercased, never MAIL FROM). A declined, blocked or revoked grant covering it refuses
//!    (`grant-blocked:*@x.test`); else it is admitted by `worker.allowed-senders` (an exact
//!    address or `*@domain`) or by an active, unexpired grant of this account that lists the
//!    intent and whose Dispatch-Context rules the dispatch keeps. Grants come from
//!    `[[trust.grants]]` and from the store (read at every check, never cached, so a revoke
//!    takes effect at once); a stored grant wins over a config grant for the same peer.
//! 3. **Replay and dedup**: done before the gate by the pipeline (a Message-ID seen before is
//!    dropped, audited `ignored:duplicate`; the `processed` table keeps ids for
//!    max(`trust.dedup-retention`, Expires-At)).
//! 4. **Expiry**: an admitted dispatch whose Expires-At passed gets one `rejected` result and
//!    never runs (the worker's routing; audited `expired`).
//! 5. **Rate limit** ([`crate::trust::ratelimit`]): `trust.rate-limit` per peer, a sliding
//!    window over admitted mail; refused as `rate-limited`.
//!
//! Human replies and plain mail carry no intent: they act like a dispatch (they start or resume
//! a task), so they need an allowed sender or a grant for `task.dispatch`.
//!
//! A `pair.request` passes authentication and the rate limit but not the sender policy (it is
//! how a peer gets a grant); a declined or blocked peer stays refused ([`Gate::pairing`]).
//! Mail for a task this account dispatched passes authentication only ([`Gate::authenticate`]),
//! then must come from the task's peer. A queued task is checked again before it starts
//! ([`Gate::recheck`]): a grant revoked meanwhile stops it (`revoked-before-run`).

use std::sync::{Mutex, PoisonError};

use chrono::{DateTime, Utc};

use crate::config::{Config, GrantState, PeerPattern};
use crate::store::{GrantRecord, Store, state_name};
use crate::trust::auth::{self, AuthVerdict, Evidence};
use crate::trust::ratelimit::RateLimiter;
use crate::wire::aamp::{DispatchContext, Intent};
use crate::wire::message::Inbound;

/// What the message is, as far as the gate cares.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum GateKind<'a> {
    /// An AAMP message with this intent (and, for a dispatch, its Dispatch-Context).
    Aamp {
        /// The intent.
        intent: Intent,
        /// `X-AAMP-Dispatch-Context` of a dispatch.
        dispatch_context: Option<&'a DispatchContext>,
    },
    /// A person's reply in one of our task threads.
    Reply,
    /// A mail with no protocol headers and no known thread.
    Plain,
}

impl GateKind<'_> {
    /// The intent the grants are checked against: a reply or a plain mail counts as a dispatch.
    pub fn intent(&self) -> Intent {
        match self {
            GateKind::Aamp { intent, .. } => *intent,
            GateKind::Reply | GateKind::Plain => Intent::TaskDispatch,
        }
    }

    /// `task.dispatch`, ..., `reply`, `plain`: for logs and the audit.
    pub fn label(&self) -> &'static str {
        match self {
            GateKind::Aamp { intent, .. } => intent.as_str(),
            GateKind::Reply => "reply",
            GateKind::Plain => "plain",
        }
    }
}

/// Everything the gate may look at.
#[derive(Debug, Clone, Copy)]
pub struct GateInput<'a> {
    /// The local account (its config name).
    pub account: &'a str,
    /// The first header From address, lowercased.
    pub sender: Option<&'a str>,
    /// What the message is.
    pub kind: GateKind<'a>,
    /// The headers-only message (no body yet).
    pub inbound: &'a Inbound,
    /// Now.
    pub now: DateTime<Utc>,
    /// The store, for the stored grants (read at check time); `None`: config grants only.
    pub store: Option<&'a Store>,
}

/// The gate's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Go on; `rule` says which entry admitted it (`allowed-sender:*@example.test`,
    /// `grant:alice@example.test [dmarc=pass:example.test]`).
    Admit {
        /// The rule, for the audit log.
        rule: String,
        /// The grant that admitted it (`None` for `allowed-senders` and non-policy checks):
        /// the signature check reads `require_signature` and `peer_key` from it.
        grant: Option<GrantRecord>,
    },
    /// Stop here: no ack, nothing runs, the body is never fetched.
    Refuse {
        /// The rule, for the audit log (`auth:dmarc=none`, `not-allowed`, `grant-expired` ...).
        rule: String,
    },
}

impl Verdict {
    /// Admitted by `rule`, no grant.
    pub fn admit(rule: impl Into<String>) -> Verdict {
        Verdict::Admit {
            rule: rule.into(),
            grant: None,
        }
    }

    /// Refused by `rule`.
    pub fn refuse(rule: impl Into<String>) -> Verdict {
        Verdict::Refuse { rule: rule.into() }
    }

    /// Whether the message goes on.
    pub fn is_admitted(&self) -> bool {
        matches!(self, Verdict::Admit { .. })
    }

    /// The rule.
    pub fn rule(&self) -> &str {
        match self {
            Verdict::Admit { rule, .. } | Verdict::Refuse { rule } => rule,
        }
    }

    /// The grant that admitted the message, if any.
    pub fn grant(&self) -> Option<&GrantRecord> {
        match self {
            Verdict::Admit { grant, .. } => grant.as_ref(),
            Verdict::Refuse { .. } => None,
        }
    }
}

/// Decides whether a message may reach the worker.
pub trait Gate: Send + Sync + std::fmt::Debug {
    /// The verdict on one message (every step, module docs).
    fn check(&self, input: &GateInput<'_>) -> Verdict;

    /// The authentication step alone (mail for a task we dispatched). Default: admitted.
    fn authenticate(&self, input: &GateInput<'_>) -> Verdict {
        let _ = input;
        Verdict::admit("authentication-off")
    }

    /// A `pair.request`: authentication, no sticky refusal (declined, blocked) for the sender,
    /// and the rate limit; not the sender policy. Default: the authentication step.
    fn pairing(&self, input: &GateInput<'_>) -> Verdict {
        self.authenticate(input)
    }

    /// Before a queued task starts: is its peer (`input.sender`) still admitted for a
    /// dispatch? Sender policy only (the mail was authenticated and counted when it came).
    /// Default: [`Gate::check`].
    fn recheck(&self, input: &GateInput<'_>) -> Verdict {
        self.check(input)
    }
}

/// Sender policy: `worker.allowed-senders`, the account's `[[trust.grants]]`, and the stored
/// grants of the account.
#[derive(Debug, Clone)]
pub struct SenderPolicy {
    allowed: Vec<PeerPattern>,
    grants: Vec<GrantRecord>,
}

impl SenderPolicy {
    /// The policy of `account` (a config account name) in `config`.
    pub fn from_config(config: &Config, account: &str) -> SenderPolicy {
        let now = crate::clock::now();
        SenderPolicy::new(
            config.worker().allowed_senders.clone(),
            config
                .trust()
                .grants
                .iter()
                .filter(|g| g.account == account)
                .map(|g| GrantRecord::from_config(g, now))
                .collect(),
        )
    }

    /// A policy from its parts (grants of other accounts are ignored at check time too).
    pub fn new(allowed: Vec<PeerPattern>, grants: Vec<GrantRecord>) -> SenderPolicy {
        SenderPolicy { allowed, grants }
    }

    /// The grants that cover `sender` for `account`: stored ones (when `store` is given) and
    /// config ones whose peer no stored grant names (the stored grant wins).
    pub fn grants_for(
        &self,
        store: Option<&Store>,
        account: &str,
        sender: &str,
    ) -> Result<Vec<GrantRecord>, crate::store::StoreError> {
        let stored = match store {
            Some(store) => store.grants_for(account, sender)?,
            None => Vec::new(),
        };
        let mut all = stored.clone();
        all.extend(
            self.grants
                .iter()
                .filter(|g| g.account == account && g.peer.matches(sender))
                .filter(|g| !stored.iter().any(|s| s.peer == g.peer))
                .cloned(),
        );
        Ok(all)
    }

    /// The first declined, blocked or revoked grant covering `sender`, as a refusal rule.
    fn not_active(grants: &[GrantRecord], sticky_only: bool) -> Option<String> {
        grants
            .iter()
            .filter(|g| g.state != GrantState::Active)
            .find(|g| !sticky_only || g.is_sticky())
            .map(|g| format!("grant-{}:{}", state_name(g.state), g.peer))
    }
}

impl Gate for SenderPolicy {
    fn check(&self, input: &GateInput<'_>) -> Verdict {
        let Some(sender) = input.sender.filter(|s| !s.is_empty()) else {
            return Verdict::refuse("no-sender");
        };
        let grants = match self.grants_for(input.store, input.account, sender) {
            Ok(grants) => grants,
            Err(error) => {
                // NOTE: default deny: a store that cannot be read admits nobody by a grant.
                tracing::warn!(error = %crate::transport::smtp::error_chain(&error), "cannot read the grants; refusing");
                return Verdict::refuse("grants-unreadable");
            }
        };
        // NOTE: a declined, blocked or revoked grant refuses even if another entry would admit.
        if let Some(rule) = SenderPolicy::not_active(&grants, false) {
            return Verdict::refuse(rule);
        }
        if let Some(pattern) = self.allowed.iter().find(|p| p.matches(sender)) {
            return Verdict::admit(format!("allowed-sender:{pattern}"));
        }
        let intent = input.kind.intent();
        let mut why = "not-allowed";
        for grant in grants {
            if grant.expires.is_some_and(|at| at <= input.now) {
                why = "grant-expired";
                continue;
            }
            if !grant.intents.iter().any(|i| i == intent.as_str()) {
                why = "intent-not-granted";
                continue;
            }
            if let GateKind::Aamp {
                dispatch_context: Some(context),
                ..
            } = input.kind
                && !context_allowed(&grant, context)
            {
                why = "dispatch-context-not-allowed";
                continue;
            }
            return Verdict::Admit {
                rule: format!("grant:{}", grant.peer),
                grant: Some(grant),
            };
        }
        Verdict::refuse(why)
    }
}

/// Every key the grant has rules for carries an allowed value (a key the dispatch leaves out
/// is not a violation).
fn context_allowed(grant: &GrantRecord, context: &DispatchContext) -> bool {
    grant
        .dispatch_context_rules
        .iter()
        .all(|(key, allowed)| match context.0.get(key) {
            Some(value) => allowed.iter().any(|a| a == value),
            None => true,
        })
}

/// The whole gate (module docs): authentication, sender policy, rate limit.
#[derive(Debug)]
pub struct TrustGate {
    /// `None` when `trust.require-authentication = false`.
    evidence: Option<Evidence>,
    policy: SenderPolicy,
    limiter: Mutex<RateLimiter>,
}

impl TrustGate {
    /// The gate of `account` (a config account name) in `config`.
    pub fn from_config(config: &Config, account: &str) -> TrustGate {
        let trust = config.trust();
        let local_domain = config
            .account(account)
            .and_then(|a| {
                a.email
                    .rsplit_once('@')
                    .map(|(_, d)| d.trim().to_lowercase())
            })
            .unwrap_or_default();
        TrustGate::new(
            trust.require_authentication.then(|| Evidence {
                authserv_id: trust.authserv_id.clone(),
                same_server_submission: trust.same_server_submission,
                local_domain,
            }),
            SenderPolicy::from_config(config, account),
            RateLimiter::new(trust.rate_limit.count, trust.rate_limit.per),
        )
    }

    /// A gate from its parts.
    pub fn new(
        evidence: Option<Evidence>,
        policy: SenderPolicy,
        limiter: RateLimiter,
    ) -> TrustGate {
        TrustGate {
            evidence,
            policy,
            limiter: Mutex::new(limiter),
        }
    }

    /// Step 1: `Ok(Some(rule))` passed, `Ok(None)` not checked, `Err` the refusal rule.
    fn auth_step(&self, input: &GateInput<'_>) -> Result<Option<String>, String> {
        let Some(evidence) = &self.evidence else {
            return Ok(None);
        };
        match auth::verdict(
            &input.inbound.headers,
            input.sender,
            input.inbound.from.len(),
            evidence,
        ) {
            AuthVerdict::Pass(rule) => Ok(Some(rule)),
            AuthVerdict::Fail(rule) => Err(format!("auth:{rule}")),
        }
    }

    /// Step 5: counts the message against its peer's window; false when over the limit.
    fn rate_step(&self, input: &GateInput<'_>) -> bool {
        let sender = input.sender.unwrap_or_default();
        let mut limiter = self.limiter.lock().unwrap_or_else(PoisonError::into_inner);
        limiter.admit_once(sender, input.inbound.message_id.as_deref(), input.now)
    }
}

/// `rule [auth]`: the admitting rule with the authentication evidence, for the audit.
fn with_auth(rule: String, auth: Option<String>) -> String {
    match auth {
        Some(auth) => format!("{rule} [{auth}]"),
        None => rule,
    }
}

impl Gate for TrustGate {
    fn check(&self, input: &GateInput<'_>) -> Verdict {
        let auth = match self.auth_step(input) {
            Ok(auth) => auth,
            Err(rule) => return Verdict::refuse(rule),
        };
        let (rule, grant) = match self.policy.check(input) {
            Verdict::Admit { rule, grant } => (rule, grant),
            refused => return refused,
        };
        if !self.rate_step(input) {
            return Verdict::refuse("rate-limited");
        }
        Verdict::Admit {
            rule: with_auth(rule, auth),
            grant,
        }
    }

    fn authenticate(&self, input: &GateInput<'_>) -> Verdict {
        match self.auth_step(input) {
            Ok(Some(auth)) => Verdict::admit(auth),
            Ok(None) => Verdict::admit("authentication-off"),
            Err(rule) => Verdict::refuse(rule),
        }
    }

    fn pairing(&self, input: &GateInput<'_>) -> Verdict {
        let auth = match self.auth_step(input) {
            Ok(auth) => auth,
            Err(rule) => return Verdict::refuse(rule),
        };
        let Some(sender) = input.sender.filter(|s| !s.is_empty()) else {
            return Verdict::refuse("no-sender");
        };
        match self.policy.grants_for(input.store, input.account, sender) {
            Ok(grants) => {
                if let Some(rule) = SenderPolicy::not_active(&grants, true) {
                    return Verdict::refuse(rule);
                }
            }
            Err(_) => return Verdict::refuse("grants-unreadable"),
        }
        if !self.rate_step(input) {
            return Verdict::refuse("rate-limited");
        }
        Verdict::admit(with_auth("pair-request".to_owned(), auth))
    }

    fn recheck(&self, input: &GateInput<'_>) -> Verdict {
        self.policy.check(input)
    }
}

impl<M, S, A> super::Core<M, S, A> {
    /// The re-check before a queued task starts ([`Gate::recheck`]): false when its peer is no
    /// longer admitted (a grant revoked or blocked while the task waited). Then the task is
    /// rejected without running and without an answer, and audited `revoked-before-run`.
    /// A store error also keeps the task from starting (it stays queued for the next start).
    pub(crate) fn still_admitted(&self, task_id: &crate::wire::aamp::TaskId) -> bool {
        use crate::store::{AuditEntry, Role, TaskState};
        let now = self.now();
        let checked = self.db.atomically(|s| {
            let Some(task) = s.get_task(&self.key, task_id, Role::Worker)? else {
                return Ok(None);
            };
            if task.state != TaskState::Queued {
                return Ok(None);
            }
            let inbound = Inbound::default();
            let verdict = self.gate.recheck(&GateInput {
                account: &self.key,
                sender: Some(task.peer.as_str()),
                kind: GateKind::Aamp {
                    intent: Intent::TaskDispatch,
                    dispatch_context: None,
                },
                inbound: &inbound,
                now,
                store: Some(s),
            });
            let Verdict::Refuse { rule } = verdict else {
                return Ok(None);
            };
            if !s.transition(
                &self.key,
                task_id,
                Role::Worker,
                &[TaskState::Queued],
                TaskState::Rejected,
                now,
            )? {
                return Ok(None);
            }
            s.audit(&AuditEntry {
                at: now,
                account: self.key.clone(),
                message_id: task.dispatch_message_id.clone(),
                peer: Some(task.peer.clone()),
                verdict: "refused".to_owned(),
                rule: Some(format!("revoked-before-run:{rule}")),
                detail: Some(format!("task.dispatch {task_id}")),
            })?;
            Ok(Some((task, rule)))
        });
        match checked {
            Ok(None) => true,
            Ok(Some((task, rule))) => {
                tracing::info!(task_id = %task_id, peer = %task.peer, rule = %rule, "the peer lost its grant while the task waited: not run");
                self.events.emit(
                    now,
                    super::EventKind::Refused {
                        message_id: task.dispatch_message_id,
                        from: Some(task.peer),
                        intent: "task.dispatch".to_owned(),
                        rule: format!("revoked-before-run:{rule}"),
                    },
                );
                false
            }
            Err(error) => {
                tracing::error!(task_id = %task_id, error = %crate::transport::smtp::error_chain(&error), "cannot re-check the task's peer; not starting it");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Env, Mode};

    fn config(extra: &str) -> Config {
        let text = format!(
            r#"
[accounts.worker]
email = "worker@example.test"
password = {{ raw = "x" }}
smtp = {{ host = "127.0.0.1", port = 5587, tls = "plaintext", allow-plaintext = true }}
jmap = {{ session-url = "http://127.0.0.1:8080/.well-known/jmap" }}
[worker]
allowed-senders = ["boss@example.test", "*@team.test"]
{extra}
"#
        );
        Config::from_toml_str_with_env(&text, Mode::Strict, &Env::with_home("/nonexistent"))
            .unwrap()
    }

    fn check(policy: &SenderPolicy, sender: &str, kind: GateKind<'_>) -> Verdict {
        let inbound = Inbound::default();
        policy.check(&GateInput {
            account: "worker",
            sender: Some(sender),
            kind,
            inbound: &inbound,
            now: DateTime::from_timestamp(1_900_000_000, 0).unwrap(),
            store: None,
        })
    }

    fn dispatch() -> GateKind<'static> {
        GateKind::Aamp {
            intent: Intent::TaskDispatch,
            dispatch_context: None,
        }
    }

    #[test]
    fn allowed_senders_exact_and_domain() {
        let policy = SenderPolicy::from_config(&config(""), "worker");
        assert!(check(&policy, "boss@example.test", dispatch()).is_admitted());
        assert!(check(&policy, "anyone@team.test", GateKind::Plain).is_admitted());
        let refused = check(&policy, "outsider@example.test", dispatch());
        assert_eq!(refused.rule(), "not-allowed");
        let inbound = Inbound::default();
        let no_sender = policy.check(&GateInput {
            account: "worker",
            sender: None,
            kind: GateKind::Reply,
            inbound: &inbound,
            now: DateTime::from_timestamp(0, 0).unwrap(),
            store: None,
        });
        assert_eq!(no_sender.rule(), "no-sender");
    }

    #[test]
    fn grants_by_intent_state_expiry_and_context() {
        let policy = SenderPolicy::from_config(
            &config(
                r#"
[[trust.grants]]
account = "worker"
peer = "peer@other.test"
intents = ["task.dispatch"]
dispatch-context-rules = { project = ["a"] }
[[trust.grants]]
account = "worker"
peer = "old@other.test"
expires = 2020-01-01T00:00:00Z
[[trust.grants]]
account = "worker"
peer = "*@blocked.test"
state = "blocked"
"#,
            ),
            "worker",
        );
        assert_eq!(
            check(&policy, "peer@other.test", dispatch()).rule(),
            "grant:peer@other.test"
        );
        let cancel = GateKind::Aamp {
            intent: Intent::TaskCancel,
            dispatch_context: None,
        };
        assert_eq!(
            check(&policy, "peer@other.test", cancel).rule(),
            "intent-not-granted"
        );
        let (bad, _) = DispatchContext::parse("project=b");
        let kind = GateKind::Aamp {
            intent: Intent::TaskDispatch,
            dispatch_context: Some(&bad),
        };
        assert_eq!(
            check(&policy, "peer@other.test", kind).rule(),
            "dispatch-context-not-allowed"
        );
        let (good, _) = DispatchContext::parse("project=a; other=x");
        let kind = GateKind::Aamp {
            intent: Intent::TaskDispatch,
            dispatch_context: Some(&good),
        };
        assert!(check(&policy, "peer@other.test", kind).is_admitted());
        assert_eq!(
            check(&policy, "old@other.test", dispatch()).rule(),
            "grant-expired"
        );
        assert_eq!(
            check(&policy, "x@blocked.test", dispatch()).rule(),
            "grant-blocked:*@blocked.test"
        );
    }

    const AR_PASS: &str = "mail.example.test; dkim=pass header.d=other.test header.s=ed25519; dmarc=pass header.from=other.test policy.dmarc=reject";
    const AR_SPOOF: &str = "mail.example.test; spf=fail smtp.mailfrom=boss@example.test; dmarc=none header.from=example.test policy.dmarc=reject";

    fn inbound(from: &str, ar: &str) -> Inbound {
        let mut inbound = Inbound::default();
        inbound.from.push(crate::wire::message::Mailbox::new(from));
        inbound.headers.push("Authentication-Results", ar);
        inbound
    }

    fn stored(peer: &str, state: GrantState) -> GrantRecord {
        let now = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        GrantRecord {
            account: "worker".to_owned(),
            peer: PeerPattern::parse(peer).unwrap(),
            intents: vec!["task.dispatch".to_owned()],
            state,
            expires: None,
            dispatch_context_rules: Default::default(),
            require_signature: true,
            peer_key: Some("key".to_owned()),
            source: crate::store::GrantSource::Pairing,
            created_at: now,
            updated_at: now,
        }
    }

    fn run(gate: &TrustGate, store: &Store, message: &Inbound, kind: GateKind<'_>) -> Verdict {
        let sender = message.sender();
        gate.check(&GateInput {
            account: "worker",
            sender: sender.as_deref(),
            kind,
            inbound: message,
            now: DateTime::from_timestamp(1_900_000_000, 0).unwrap(),
            store: Some(store),
        })
    }

    fn trust_gate(extra: &str) -> TrustGate {
        TrustGate::from_config(
            &config(&format!(
                "[trust]\nauthserv-id = \"mail.example.test\"\nrate-limit = \"2/h\"\n{extra}"
            )),
            "worker",
        )
    }

    #[test]
    fn authentication_comes_first_then_policy_then_rate() {
        let gate = trust_gate("");
        let store = Store::open_in_memory().unwrap();
        // A spoof of an allowed sender: refused by authentication, before the policy.
        let spoof = inbound("boss@example.test", AR_SPOOF);
        assert_eq!(
            run(&gate, &store, &spoof, dispatch()).rule(),
            "auth:dmarc=none"
        );
        // Authenticated but without a grant: default deny.
        let agent = inbound("agent@other.test", AR_PASS);
        assert_eq!(run(&gate, &store, &agent, dispatch()).rule(), "not-allowed");
        // A stored grant admits, and the verdict carries it.
        store
            .grant_put(&stored("agent@other.test", GrantState::Active), false)
            .unwrap();
        let admitted = run(&gate, &store, &agent, dispatch());
        assert_eq!(
            admitted.rule(),
            "grant:agent@other.test [dmarc=pass:other.test]"
        );
        let grant = admitted.grant().unwrap();
        assert!(grant.require_signature);
        assert_eq!(grant.peer_key.as_deref(), Some("key"));
        // The rate limit (2/h) counts admitted mail per peer.
        assert!(run(&gate, &store, &agent, dispatch()).is_admitted());
        assert_eq!(
            run(&gate, &store, &agent, dispatch()).rule(),
            "rate-limited"
        );
    }

    #[test]
    fn stored_grants_are_read_at_check_time_and_win_over_config() {
        let gate = trust_gate(
            "[[trust.grants]]\naccount = \"worker\"\npeer = \"agent@other.test\"\nintents = [\"task.dispatch\"]\n",
        );
        let store = Store::open_in_memory().unwrap();
        let agent = inbound("agent@other.test", AR_PASS);
        assert_eq!(
            run(&gate, &store, &agent, dispatch()).rule(),
            "grant:agent@other.test [dmarc=pass:other.test]"
        );
        assert_eq!(
            run(&gate, &store, &agent, dispatch())
                .grant()
                .unwrap()
                .source,
            crate::store::GrantSource::Config
        );
        // Revoked in the store (the CLI, another process): refused at once, no cache.
        store
            .grant_put(&stored("agent@other.test", GrantState::Revoked), false)
            .unwrap();
        assert_eq!(
            run(&gate, &store, &agent, dispatch()).rule(),
            "grant-revoked:agent@other.test"
        );
        // A domain block refuses even an allowed sender.
        let boss = {
            let mut m = inbound(
                "boss@example.test",
                "mail.example.test; dmarc=pass header.from=example.test",
            );
            m.headers.push("X-Other", "x");
            m
        };
        assert!(run(&gate, &store, &boss, dispatch()).is_admitted());
        store
            .grant_put(&stored("*@example.test", GrantState::Blocked), false)
            .unwrap();
        assert_eq!(
            run(&gate, &store, &boss, dispatch()).rule(),
            "grant-blocked:*@example.test"
        );
    }

    #[test]
    fn pairing_needs_authentication_and_no_sticky_refusal() {
        let gate = trust_gate("");
        let store = Store::open_in_memory().unwrap();
        let now = DateTime::from_timestamp(1_900_000_000, 0).unwrap();
        let input = |m: &'_ Inbound| -> Verdict {
            let sender = m.sender();
            gate.pairing(&GateInput {
                account: "worker",
                sender: sender.as_deref(),
                kind: GateKind::Aamp {
                    intent: Intent::PairRequest,
                    dispatch_context: None,
                },
                inbound: m,
                now,
                store: Some(&store),
            })
        };
        let agent = inbound("agent@other.test", AR_PASS);
        assert_eq!(input(&agent).rule(), "pair-request [dmarc=pass:other.test]");
        assert_eq!(
            input(&inbound("boss@example.test", AR_SPOOF)).rule(),
            "auth:dmarc=none"
        );
        // A revoked peer may pair again; a declined one may not.
        store
            .grant_put(&stored("agent@other.test", GrantState::Revoked), false)
            .unwrap();
        assert!(input(&agent).is_admitted());
        store
            .grant_put(&stored("agent@other.test", GrantState::Declined), false)
            .unwrap();
        assert_eq!(input(&agent).rule(), "grant-declined:agent@other.test");
        // Authentication off: the same gate without evidence admits a spoof to the policy.
        let off =
            TrustGate::from_config(&config("[trust]\nrequire-authentication = false"), "worker");
        assert_eq!(
            run(
                &off,
                &store,
                &inbound("boss@example.test", AR_SPOOF),
                dispatch()
            )
            .rule(),
            "allowed-sender:boss@example.test"
        );
    }
}
