//! The worker side of pairing (`protocol/aamp.md` "Discovery and pairing"): an inbound
//! `pair.request` with a valid code becomes an active grant and is answered with
//! `pair.respond completed`; a bad code (unknown, used, expired) gets `pair.respond rejected`.
//!
//! It is handled at screening time, on headers only (the code is in `X-AAMP-Pair-Code`, the
//! peer's key in `X-ASMTP-Key`): no body is fetched and no agent runs. It must pass the
//! authentication step and the rate limit, not the sender policy ([`super::Gate::pairing`]);
//! a declined or blocked peer stays refused, silently, and so does a message that fails
//! authentication (an answer would go to the forged From). The code is spent, the grant
//! stored, the answer queued and the mail marked processed in one transaction.
//!
//! The answer carries our own key (`X-ASMTP-Key`) when `<state-dir>/keys/<account>.pub` exists:
//! its first line is the header value (the signature code writes that file).

use chrono::{DateTime, Utc};

use super::gate::{GateInput, GateKind, Verdict};
use super::inbound::{Take, settle};
use super::outbound::{self, Rendered};
use super::{Core, Execute};
use crate::config::{GrantState, PeerPattern};
use crate::store::{GrantRecord, GrantSource, PairCodeRefusal, StoreError};
use crate::transport::{Fetched, MailStore, Submit};
use crate::trust::pairing::{code_hash, valid_code};
use crate::wire::aamp::{AampMessage, Intent, PairRequest, PairRespond, Payload, Status, TaskId};
use crate::wire::message::{Mailbox, Outbound};

/// The header that carries a public key in pairing messages.
pub const KEY_HEADER: &str = "X-ASMTP-Key";

/// Most bytes of a peer key kept (a key is short; anything longer is not one).
const MAX_KEY_BYTES: usize = 1024;

/// Our public key for `account`, from `<state_dir>/keys/<account>.pub`, if present.
pub fn own_key(state_dir: &std::path::Path, account: &str) -> Option<String> {
    let text =
        std::fs::read_to_string(state_dir.join("keys").join(format!("{account}.pub"))).ok()?;
    let line = text.lines().next()?.trim();
    (!line.is_empty() && line.len() <= MAX_KEY_BYTES && !line.contains(['\r', '\n']))
        .then(|| line.to_owned())
}

/// A peer's key from its header: one line, printable ASCII, bounded.
pub fn peer_key(value: Option<&str>) -> Option<String> {
    let key: String = value?.split_whitespace().collect::<Vec<_>>().join(" ");
    (!key.is_empty()
        && key.len() <= MAX_KEY_BYTES
        && key.chars().all(|c| c.is_ascii_graphic() || c == ' '))
    .then_some(key)
}

/// Renders a `pair.respond` to `to`, answering `request` (its Message-ID and references).
pub(crate) fn render_respond(
    from: &Mailbox,
    to: &str,
    task_id: &TaskId,
    respond: PairRespond,
    request: &Fetched,
    key: Option<&str>,
    now: DateTime<Utc>,
) -> Rendered {
    let message = AampMessage::new(task_id.clone(), Payload::PairRespond(respond));
    let message_id = crate::ids::message_id(now, &crate::ids::domain_of(&from.email));
    let mut out = Outbound::aamp(
        &message,
        from.clone(),
        vec![Mailbox::new(to)],
        now,
        message_id.clone(),
    );
    if let Some(id) = &request.inbound.message_id {
        let (in_reply_to, references) =
            crate::wire::thread::reply_chain(id, &request.inbound.references);
        out.in_reply_to = Some(in_reply_to);
        out.references = references;
    }
    if let Some(key) = key {
        out.extra_headers.push((
            KEY_HEADER.to_owned(),
            crate::wire::aamp::ValueKind::Text,
            key.to_owned(),
        ));
    }
    Rendered {
        message_id,
        intent: Intent::PairRespond.as_str(),
        task_id: task_id.clone(),
        rcpt_to: vec![to.to_owned()],
        bytes: out.render(),
    }
}

impl<M, S, A> Core<M, S, A>
where
    M: MailStore + 'static,
    S: Submit + 'static,
    A: Execute + 'static,
{
    /// Screening of a `pair.request` (module docs); always settles the mail here.
    pub(crate) fn screen_pair_request(
        &self,
        fetched: &Fetched,
        request: &PairRequest,
        task_id: &TaskId,
    ) -> Result<Option<Take>, StoreError> {
        let now = self.now();
        let sender = fetched.inbound.sender();
        let kind = GateKind::Aamp {
            intent: Intent::PairRequest,
            dispatch_context: None,
        };
        let verdict = self.db.with(|s| {
            Ok(self.gate.pairing(&GateInput {
                account: &self.key,
                sender: sender.as_deref(),
                kind,
                inbound: &fetched.inbound,
                now,
                store: Some(s),
            }))
        })?;
        let (Verdict::Admit { rule, .. }, Some(sender)) = (verdict.clone(), sender.clone()) else {
            self.refuse_quietly(fetched, "pair.request", verdict.rule())?;
            return Ok(None);
        };
        let Ok(peer) = PeerPattern::parse(&sender) else {
            self.refuse_quietly(fetched, "pair.request", "no-sender")?;
            return Ok(None);
        };
        let key = peer_key(fetched.inbound.headers.get(KEY_HEADER));
        let own = own_key(&self.settings.state_dir, &self.key);
        let from = Mailbox {
            name: self.account.display_name.clone(),
            email: self.account.email.clone(),
        };
        let hash = code_hash(&request.pair_code);
        let outcome = self.db.atomically(|s| {
            let taken = if valid_code(&request.pair_code) {
                s.pair_code_take(&self.key, &hash, &sender, now)?
            } else {
                Err(PairCodeRefusal::Unknown)
            };
            let (respond, verdict, rule) = match taken {
                Ok(code) => {
                    let grant = GrantRecord {
                        account: self.key.clone(),
                        peer: peer.clone(),
                        intents: code.intents,
                        state: GrantState::Active,
                        expires: None,
                        dispatch_context_rules: code.dispatch_context_rules,
                        require_signature: false,
                        peer_key: key.clone(),
                        source: GrantSource::Pairing,
                        created_at: now,
                        updated_at: now,
                    };
                    // NOTE: the gate refused sticky peers already; `force = false` keeps it so
                    // even if a block landed in between.
                    if s.grant_put(&grant, false)? {
                        (
                            PairRespond {
                                status: Status::Completed,
                                error_msg: None,
                            },
                            "admitted",
                            format!("{rule} pair-code"),
                        )
                    } else {
                        (rejected(), "refused", "grant-sticky".to_owned())
                    }
                }
                Err(refusal) => (rejected(), "refused", refusal.as_str().to_owned()),
            };
            let completed = respond.status == Status::Completed;
            let rendered = render_respond(
                &from,
                &sender,
                task_id,
                respond,
                fetched,
                own.as_deref().filter(|_| completed),
                now,
            );
            outbound::enqueue(s, &self.account, &self.key, &rendered, None, now)?;
            settle(
                s,
                &self.key,
                fetched,
                &format!("{verdict}:{rule}"),
                Some(&rule),
                Some(format!(
                    "pair.request -> pair.respond {}",
                    if completed { "completed" } else { "rejected" }
                )),
                None,
                now,
            )?;
            Ok((completed, rule))
        })?;
        self.outbox_kick.notify_one();
        let (completed, rule) = outcome;
        tracing::info!(from = %sender, completed, rule = %rule, "pair.request answered");
        let event = if completed {
            super::EventKind::Paired {
                peer: sender,
                message_id: fetched.inbound.message_id.clone(),
            }
        } else {
            super::EventKind::Refused {
                message_id: fetched.inbound.message_id.clone(),
                from: Some(sender),
                intent: "pair.request".to_owned(),
                rule,
            }
        };
        self.events.emit(now, event);
        Ok(None)
    }
}

/// The neutral rejection: it says nothing about why.
fn rejected() -> PairRespond {
    PairRespond {
        status: Status::Rejected,
        error_msg: Some("rejected".to_owned()),
    }
}
