//! The gate in front of the worker: who may make it do anything (`protocol/trust.md`, points 2
//! and 3). It runs on the headers only, before any body is fetched, and before any ack.
//!
//! This is the sender-policy part of the trust gate: the sender is the header From (lowercased,
//! never MAIL FROM), and it is admitted when it matches `worker.allowed-senders` (an exact
//! address or `*@domain`) or an active, unexpired `[[trust.grants]]` entry of this account that
//! lists the intent (and whose Dispatch-Context rules the dispatch keeps). Everything else is
//! refused: default deny.
//!
//! Human replies and plain mail carry no intent: they act like a dispatch (they start or resume
//! a task), so they need an allowed sender or a grant for `task.dispatch`.
//!
//! # The seam for the full gate
//!
//! [`Gate`] is the interface the inbound pipeline calls. The full trust gate of a later issue
//! (authentication verdicts from `Authentication-Results`, DMARC/DKIM alignment, pairing,
//! rate limits, quarantine) implements it, or wraps [`SenderPolicy`]; [`GateInput::inbound`]
//! already carries every fetched header (`Authentication-Results`, `Auto-Submitted`, the
//! `X-AAMP-*` and `X-ASMTP-*` ones).

use chrono::{DateTime, Utc};

use crate::config::{Config, Grant, GrantState, PeerPattern};
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
}

/// The gate's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Go on; `rule` says which entry admitted it (`allowed-sender:*@example.test`,
    /// `grant:alice@example.test`).
    Admit {
        /// The rule, for the audit log.
        rule: String,
    },
    /// Stop here: no ack, nothing runs, the body is never fetched.
    Refuse {
        /// The rule, for the audit log (`no-sender`, `not-allowed`, `grant-expired` ...).
        rule: String,
    },
}

impl Verdict {
    /// Whether the message goes on.
    pub fn is_admitted(&self) -> bool {
        matches!(self, Verdict::Admit { .. })
    }

    /// The rule.
    pub fn rule(&self) -> &str {
        match self {
            Verdict::Admit { rule } | Verdict::Refuse { rule } => rule,
        }
    }
}

/// Decides whether a message may reach the worker.
pub trait Gate: Send + Sync + std::fmt::Debug {
    /// The verdict on one message.
    fn check(&self, input: &GateInput<'_>) -> Verdict;
}

/// Sender policy: `worker.allowed-senders` plus the account's active `[[trust.grants]]`.
#[derive(Debug, Clone)]
pub struct SenderPolicy {
    allowed: Vec<PeerPattern>,
    grants: Vec<Grant>,
}

impl SenderPolicy {
    /// The policy of `account` (a config account name) in `config`.
    pub fn from_config(config: &Config, account: &str) -> SenderPolicy {
        SenderPolicy::new(
            config.worker().allowed_senders.clone(),
            config
                .trust()
                .grants
                .iter()
                .filter(|g| g.account == account)
                .cloned()
                .collect(),
        )
    }

    /// A policy from its parts (grants of other accounts are ignored at check time too).
    pub fn new(allowed: Vec<PeerPattern>, grants: Vec<Grant>) -> SenderPolicy {
        SenderPolicy { allowed, grants }
    }
}

impl Gate for SenderPolicy {
    fn check(&self, input: &GateInput<'_>) -> Verdict {
        let refuse = |rule: &str| Verdict::Refuse {
            rule: rule.to_owned(),
        };
        let Some(sender) = input.sender.filter(|s| !s.is_empty()) else {
            return refuse("no-sender");
        };
        if let Some(pattern) = self.allowed.iter().find(|p| p.matches(sender)) {
            return Verdict::Admit {
                rule: format!("allowed-sender:{pattern}"),
            };
        }
        let intent = input.kind.intent();
        let mut why = "not-allowed";
        for grant in self
            .grants
            .iter()
            .filter(|g| g.account == input.account && g.peer.matches(sender))
        {
            if grant.state != GrantState::Active {
                // NOTE: a declined or blocked grant refuses even if another one would admit.
                return refuse(&format!("grant-{}:{}", state_name(grant.state), grant.peer));
            }
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
                && !context_allowed(grant, context)
            {
                why = "dispatch-context-not-allowed";
                continue;
            }
            return Verdict::Admit {
                rule: format!("grant:{}", grant.peer),
            };
        }
        refuse(why)
    }
}

fn state_name(state: GrantState) -> &'static str {
    match state {
        GrantState::Active => "active",
        GrantState::Declined => "declined",
        GrantState::Blocked => "blocked",
        GrantState::Revoked => "revoked",
    }
}

/// Every key the grant has rules for carries an allowed value (a key the dispatch leaves out
/// is not a violation).
fn context_allowed(grant: &Grant, context: &DispatchContext) -> bool {
    grant
        .dispatch_context_rules
        .iter()
        .all(|(key, allowed)| match context.0.get(key) {
            Some(value) => allowed.iter().any(|a| a == value),
            None => true,
        })
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
}
