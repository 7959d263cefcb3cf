//! The worker daemon: [`run`] watches one mailbox over JMAP, admits AAMP `task.dispatch` mail
//! from allowed senders, acks it, runs an agent profile, and mails `task.help_needed` and
//! `task.result` back in the thread through SMTP submission.
//!
//! # Pieces
//!
//! - [`inbound`]: push hint or poll tick -> `Email/changes` since the persisted state (a
//!   bounded `Email/query` back-fill when the server cannot calculate changes) -> headers of
//!   Inbox mail -> [`crate::wire::classify()`] -> [`gate`] -> claim (a lease keyword, see
//!   [`lease`]) -> bodies of admitted mail only -> route. The JMAP state is saved once the
//!   batch is processed.
//! - [`worker`]: routing (dispatch, cancel, follow-up dispatch, human reply, plain mail), the
//!   run scheduler over [`queue::RunQueue`] and [`runner::Runner`], and crash recovery.
//! - [`outbound`]: render -> outbox row + thread index (same transaction as the state change)
//!   -> SMTP submission with retries and dead letters.
//! - [`gate`]: the trust gate behind the [`gate::Gate`] trait: authentication verdict, sender
//!   policy (config and stored grants), rate limit; pairing ([`pairing`]) answers
//!   `pair.request`s with a valid code.
//! - [`dispatcher`]: the dispatcher side: tasks this account sent (`taskmail dispatch`,
//!   `answer`, `cancel`), and the acks, help requests, results, cancels and human replies
//!   that come back for them, routed by the same pipeline (worker daemon or the
//!   dispatcher-only [`dispatcher::follow`]).
//! - [`status`]: who serves an account (the lock file) and its push status, for `doctor`.
//! - [`events`]: what happened, for `taskmail run --json` and tests.
//! - [`queue`], [`runner`]: the run queue and the agent runner.
//!
//! # Exactly once
//!
//! - **Inbound**: every mail handled is marked in the store's `processed` table with its verdict
//!   (by JMAP id, and found again by Message-ID), in the same transaction as what it caused. The
//!   JMAP state is saved only after the batch, so a crash re-reads the batch and the marks
//!   dedupe it. A mail another daemon leases is left to it while its lease lives, and taken over
//!   after ([`lease`], README "Many workers, one mailbox"); our leases are recorded in the store,
//!   so a restart with the same state dir knows its own. An ack or result of a leased mail is
//!   marked in the mailbox (`$taskmail-acked`, `$taskmail-result`) before it is submitted and
//!   never sent once the lease is lost: a task is re-run only if no result was sent.
//! - **Runs**: a run starts only through the store's compare-and-set
//!   ([`crate::store::Store::record_run_start`], `queued -> running`), so no task runs twice at
//!   once, here or in a second daemon on the same store.
//! - **Outbound**: a reply is rendered once, put in the outbox with its Message-ID in the same
//!   transaction as the state change it reports (`running -> completed` and its result), and
//!   resent byte for byte after a crash.
//!
//! # The restart rule (crash safety)
//!
//! On start, every worker task of the account still in `running` was interrupted: the process
//! died (or the shutdown grace ran out) before the run's outcome was recorded. Because the
//! outcome and the message reporting it are written in one transaction, such a task has sent
//! **no** result or help request, so it is run again, with the same context. A task
//! interrupted more than [`worker::MAX_INTERRUPTIONS`] times in a row is given up with one
//! `rejected` result (`ErrorMsg: interrupted`), so a task that crashes the machine cannot
//! crash-loop it. The agent therefore runs at most `1 + MAX_INTERRUPTIONS` times per
//! dispatch, answer or follow-up, and at most once more than the number of interruptions.
//! Tasks still `queued` (or `received`/`acked`) are queued again; `help_needed` tasks wait for
//! their answer; a result already recorded but not yet submitted is sent by the outbox.
//!
//! # Shutdown
//!
//! When the `shutdown` future completes, intake stops, queued tasks stay queued in the store
//! (the next start runs them), running tasks get `worker.shutdown-grace` to finish (a warning
//! if it overruns; what is still running then is interrupted, see the restart rule), and the
//! outbox gets a last pass.

pub(crate) mod context;
pub mod dispatcher;
pub mod events;
pub mod gate;
pub mod inbound;
pub mod lease;
pub mod outbound;
pub mod pairing;
pub mod queue;
pub mod runner;
pub mod status;
pub mod worker;

#[cfg(test)]
mod tests;

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{Notify, broadcast, mpsc, watch};
use tokio::task::JoinSet;

use crate::config::{Account, Config, OnCancel, OnRefused};
use crate::store::{Store, StoreError};
use crate::transport::{
    Backoff, BackoffError, Hint, JmapClient, JmapError, MailStore, PushError, PushSettings,
    PushStatus, PushSupervisor, SendError, SmtpSubmit, Submit,
};

pub use events::{Event, EventKind};
pub use gate::{Gate, GateInput, GateKind, SenderPolicy, TrustGate, Verdict};
pub use queue::Clock;
pub use runner::{RunError, RunReport, RunRequest, Runner};

/// A future the daemon runs alongside itself and drops when it stops (the push supervisor).
pub type Background = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// Runs one task with the agent. [`Runner`] is the real one; logic tests script their own.
pub trait Execute: Send + Sync {
    /// Runs `request` to its outcome; `cancel` stops it.
    fn execute(
        &self,
        request: &RunRequest,
        cancel: runner::CancelSignal,
    ) -> impl Future<Output = Result<RunReport, RunError>> + Send;
}

impl Execute for Runner {
    fn execute(
        &self,
        request: &RunRequest,
        cancel: runner::CancelSignal,
    ) -> impl Future<Output = Result<RunReport, RunError>> + Send {
        self.run(request, cancel)
    }
}

/// What the daemon works with: the transports behind their traits, the hint stream, the agent.
pub struct Deps<M, S, A> {
    /// The mailbox (JMAP).
    pub mail: Arc<M>,
    /// SMTP submission.
    pub submit: Arc<S>,
    /// Agent runs.
    pub agent: Arc<A>,
    /// "Something may have changed" hints (push or poll ticks). When the sender side closes,
    /// the daemon polls on its own every `jmap.poll-interval`.
    pub hints: mpsc::Receiver<Hint>,
    /// What produces the hints (the push supervisor); run with the daemon, dropped with it.
    pub background: Vec<Background>,
    /// Where [`Event`]s go; `None` for nowhere.
    pub events: Option<broadcast::Sender<Event>>,
    /// The clock (default [`crate::clock::now`]; tests on paused time pass their own).
    pub clock: Clock,
    /// The account to serve (a config account name); default `worker.account`.
    pub account: Option<String>,
    /// The gate; default [`TrustGate::from_config`].
    pub gate: Option<Arc<dyn Gate>>,
    /// What the push supervisor is doing (set by [`Deps::connect`]; for `taskmail doctor`).
    pub push_status: Option<watch::Receiver<PushStatus>>,
}

impl<M, S, A> std::fmt::Debug for Deps<M, S, A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deps")
            .field("account", &self.account)
            .field("background", &self.background.len())
            .finish_non_exhaustive()
    }
}

impl<M, S, A> Deps<M, S, A> {
    /// Deps with the wall clock, no events, the configured account and gate.
    pub fn new(mail: Arc<M>, submit: Arc<S>, agent: Arc<A>, hints: mpsc::Receiver<Hint>) -> Self {
        Deps {
            mail,
            submit,
            agent,
            hints,
            background: Vec::new(),
            events: None,
            clock: Arc::new(crate::clock::now),
            account: None,
            gate: None,
            push_status: None,
        }
    }
}

impl<A> Deps<JmapClient, SmtpSubmit, A> {
    /// The real transports of `account`: a JMAP client (connected: the session is fetched, so
    /// bad credentials fail here), SMTP submission, and a push supervisor (WebSocket, then
    /// EventSource, then polling, per `jmap.push`) as the hint source.
    pub async fn connect(account: &Account, agent: Arc<A>) -> Result<Self, DaemonError> {
        let mail = Arc::new(JmapClient::from_account(account).await?);
        let submit = Arc::new(SmtpSubmit::from_account(account)?);
        let settings = PushSettings::from_config(&account.jmap)?;
        let (supervisor, hints, status) = PushSupervisor::new(Arc::clone(&mail), settings, 16);
        let mut deps = Deps::new(mail, submit, agent, hints);
        deps.account = Some(account.name.clone());
        deps.push_status = Some(status);
        deps.background
            .push(Box::pin(supervisor.run(std::future::pending())));
        Ok(deps)
    }
}

/// Why the daemon could not start (once it runs, failures are retried and logged).
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// `--account` or `worker.account` names no account.
    #[error("cannot find account '{0}' in the config")]
    UnknownAccount(String),
    /// The store could not be opened or used at start.
    #[error("cannot use the task store")]
    Store(#[from] StoreError),
    /// The mailbox could not be reached or read at start.
    #[error("cannot read the mailbox")]
    Mail(#[from] JmapError),
    /// SMTP submission could not be set up.
    #[error("cannot set up SMTP submission")]
    Submit(#[from] SendError),
    /// The push settings are invalid.
    #[error("cannot set up push")]
    Push(#[from] PushError),
    /// The account's signing key file cannot be used.
    #[error("cannot use the account's signing key")]
    Key(#[from] crate::trust::keys::KeyFileError),
    /// A retry delay is out of range (a bug).
    #[error("cannot use the retry delays")]
    Backoff(#[from] BackoffError),
    /// Another daemon already serves this account from this state dir.
    #[error("cannot serve account '{account}': {holder} holds '{}'", .path.display())]
    Locked {
        /// The account.
        account: String,
        /// The lock file.
        path: std::path::PathBuf,
        /// Who holds it (`taskmail run (pid 42)`, `taskmail dispatch --wait (pid 7)`, or
        /// `another taskmail daemon`).
        holder: String,
    },
    /// The lock file could not be created.
    #[error("cannot create the lock file '{}'", .path.display())]
    Lock {
        /// The lock file.
        path: std::path::PathBuf,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
}

impl DaemonError {
    /// The documented exit code: 77 login refused, 69 unreachable, 75 temporary, 2 for a
    /// config problem, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            DaemonError::UnknownAccount(_) | DaemonError::Push(_) | DaemonError::Key(_) => 2,
            DaemonError::Mail(e) => e.exit_code(),
            DaemonError::Submit(e) => e.exit_code(),
            DaemonError::Store(_) | DaemonError::Lock { .. } | DaemonError::Backoff(_) => 1,
            DaemonError::Locked { .. } => 75,
        }
    }
}

/// The worker settings the daemon uses, read once from the config.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) on_cancel: OnCancel,
    pub(crate) on_refused: OnRefused,
    pub(crate) plain_mail: bool,
    pub(crate) shutdown_grace: Duration,
    pub(crate) poll_interval: Duration,
    /// `trust.dedup-retention`: how long processed Message-IDs are kept (at least 7 days).
    pub(crate) dedup_retention: Duration,
    /// The state directory (`keys/<account>.pub` is our pairing key).
    pub(crate) state_dir: std::path::PathBuf,
    /// `trust.quarantine-mailbox`: where high-risk mail goes.
    pub(crate) quarantine_mailbox: String,
    /// Whether the gate requires authentication, so that admitted mail is `verified`.
    pub(crate) authenticated: bool,
    /// Gates and indexes ASMTP envelopes into the agent's mailbox (`None`: the account has
    /// no handle, envelopes are ignored).
    pub(crate) envelopes: Option<Arc<crate::mailbox::Ingestor>>,
    /// `worker.lease`: how long our claims hold without renewal ([`lease`]).
    pub(crate) lease: Duration,
    /// `worker.claim-wait`: the claim protocol's delta ([`lease`]).
    pub(crate) claim_wait: Duration,
}

impl Settings {
    /// The settings of `account` in `config`; `plain_mail` is off for a dispatcher-only
    /// pipeline, which never starts tasks.
    pub(crate) fn from_config(config: &Config, account: &Account, plain_mail: bool) -> Settings {
        let worker = config.worker();
        let trust = config.trust();
        Settings {
            on_cancel: worker.on_cancel,
            on_refused: trust.on_refused,
            plain_mail: plain_mail && worker.plain_mail,
            shutdown_grace: worker.shutdown_grace,
            poll_interval: account.jmap.poll_interval,
            dedup_retention: trust.dedup_retention,
            state_dir: config.state_dir().to_path_buf(),
            quarantine_mailbox: trust.quarantine_mailbox.clone(),
            authenticated: trust.require_authentication,
            envelopes: crate::mailbox::Ingestor::from_config(config, &account.name)
                .ok()
                .map(Arc::new),
            lease: worker.lease,
            claim_wait: worker.claim_wait,
        }
    }
}

/// The store behind a mutex: every call is short and never held across an `.await`.
#[derive(Debug, Clone)]
pub(crate) struct Db(Arc<Mutex<Store>>);

impl Db {
    pub(crate) fn new(store: Store) -> Db {
        Db(Arc::new(Mutex::new(store)))
    }

    /// Runs `f` with the store.
    pub(crate) fn with<T>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let store = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        f(&store)
    }

    /// Runs `f` as one transaction.
    pub(crate) fn atomically<T>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.with(|store| store.atomically(f))
    }
}

/// Everything the daemon's loops share.
pub(crate) struct Core<M, S, A> {
    pub(crate) account: Account,
    /// The store key of the account (its config name).
    pub(crate) key: String,
    /// Whether worker-side mail (dispatches, cancels, replies and plain mail for a worker
    /// task) is served. False in a dispatcher-only pipeline ([`dispatcher::follow`]), which
    /// leaves such mail unmarked for a worker daemon of the account.
    pub(crate) worker: bool,
    /// The store key of the JMAP cursor: the account for the worker daemon, its own key for a
    /// dispatcher-only pipeline (so that it never moves the worker's cursor past mail it left).
    pub(crate) cursor: String,
    pub(crate) settings: Settings,
    pub(crate) mail: Arc<M>,
    pub(crate) submit: Arc<S>,
    pub(crate) agent: Arc<A>,
    pub(crate) db: Db,
    pub(crate) queue: queue::RunQueue<()>,
    pub(crate) gate: Arc<dyn Gate>,
    /// The signature demands of the account's grants, checked right after the gate.
    pub(crate) signatures: crate::trust::sign::InboundPolicy,
    /// The account's signing key (`<state-dir>/keys/<account>.key`), when it has one.
    pub(crate) signer: Option<crate::trust::sign::SigningKey>,
    pub(crate) events: events::Events,
    pub(crate) clock: Clock,
    pub(crate) outbox_kick: Notify,
    pub(crate) inbox_id: String,
    /// Route failures per JMAP id, to give up on a mail that always fails.
    pub(crate) failures: Mutex<std::collections::HashMap<String, u32>>,
    pub(crate) backoffs: Backoffs,
    /// What the inbound loop and the outbox saw last ([`status::Health`]).
    pub(crate) health: status::Health,
    /// The leases we hold and watch ([`lease`]).
    pub(crate) book: lease::Book,
}

/// Retry delays of the daemon's loops.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Backoffs {
    /// A failed pass over the mailbox: 1 s up to 1 min.
    pub(crate) inbound: Backoff,
    /// A transient submission failure of an outbox row: 2 s up to 5 min.
    pub(crate) outbox: Backoff,
}

impl Backoffs {
    fn new() -> Result<Backoffs, BackoffError> {
        Ok(Backoffs {
            inbound: Backoff::new(Duration::from_secs(1), Duration::from_secs(60))?,
            outbox: Backoff::new(Duration::from_secs(2), Duration::from_secs(300))?,
        })
    }
}

impl<M, S, A> Core<M, S, A> {
    pub(crate) fn now(&self) -> DateTime<Utc> {
        (self.clock)()
    }

    /// Applies the store's retention rules (and drops the contexts of pruned tasks).
    pub(crate) fn prune(&self) {
        let now = self.now();
        match self.db.with(|s| {
            let contexts =
                context::prune(s, &self.key, now)? + dispatcher::prune_records(s, &self.key, now)?;
            let retention = chrono::TimeDelta::from_std(self.settings.dedup_retention)
                .unwrap_or(crate::store::PROCESSED_RETENTION);
            let report = s.prune_keeping(now, retention)?;
            Ok((contexts, report))
        }) {
            Ok((contexts, report)) if contexts + report.total() > 0 => {
                tracing::info!(contexts, rows = report.total(), "store pruned");
            }
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(error = %crate::transport::smtp::error_chain(&error), "cannot prune the store");
            }
        }
    }

    /// Our own address, lowercased.
    pub(crate) fn email(&self) -> String {
        self.account.email.trim().to_ascii_lowercase()
    }
}

/// Takes `<state-dir>/worker-<account>.lock` (an advisory file lock, released when the file
/// is closed, by the kernel if the process dies) and writes `<pid> <holder>` into it, so that
/// others can say who serves the account ([`status::lock_holder`]). `holder` is `run` for the
/// worker daemon, `dispatch` for a `taskmail dispatch --wait` pipeline.
pub(crate) fn lock(
    state_dir: &std::path::Path,
    account: &str,
    holder: &str,
) -> Result<std::fs::File, DaemonError> {
    let path = status::lock_path(state_dir, account);
    if let Some(parent) = path.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| DaemonError::Lock {
            path: path.clone(),
            source,
        })?;
    match file.try_lock() {
        Ok(()) => {
            status::write_holder(&file, holder);
            Ok(file)
        }
        Err(std::fs::TryLockError::WouldBlock) => Err(DaemonError::Locked {
            account: account.to_owned(),
            holder: status::lock_holder(state_dir, account)
                .map_or_else(|| "another taskmail daemon".to_owned(), |h| h.describe()),
            path,
        }),
        Err(std::fs::TryLockError::Error(source)) => Err(DaemonError::Lock { path, source }),
    }
}

/// Says at start what the trust gate will require, so an operator sees a gate that admits
/// nobody (authentication on, but no evidence configured) before the first refusal.
pub(crate) fn log_trust(config: &Config) {
    let trust = config.trust();
    if !trust.require_authentication {
        tracing::warn!(
            "trust.require-authentication = false: the From of an allowed sender can be forged"
        );
    } else if trust.authserv_id.is_none() && !trust.same_server_submission {
        tracing::warn!(
            "trust.require-authentication is on, but neither trust.authserv-id nor trust.same-server-submission is set: every mail will be refused as auth:no-evidence-configured"
        );
    } else {
        tracing::info!(
            authserv_id = trust.authserv_id.as_deref().unwrap_or(""),
            same_server_submission = trust.same_server_submission,
            "trust gate: authentication required"
        );
    }
}

/// The owner name of our leases: `worker.lease-owner`, else one made up at the first start and
/// kept in the store (so a restart with the same state dir knows its own leases).
fn lease_owner(
    store: &Store,
    account: &str,
    configured: Option<&str>,
) -> Result<String, StoreError> {
    if let Some(owner) = configured {
        return Ok(owner.to_owned());
    }
    let key = format!("lease-owner/{account}");
    if let Some(owner) = store.kv_get(&key)?
        && crate::config::valid_lease_owner(&owner)
    {
        return Ok(owner);
    }
    let owner = lease::random_owner();
    store.kv_set(&key, &owner, crate::clock::now())?;
    Ok(owner)
}

/// How often the store is pruned while the daemon runs (once at start, too).
const PRUNE_EVERY: Duration = Duration::from_secs(6 * 3600);

/// Prunes the store every [`PRUNE_EVERY`]; lives (and dies) with the daemon.
async fn prune_periodically<M, S, A>(core: Arc<Core<M, S, A>>) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + PRUNE_EVERY, PRUNE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        core.prune();
    }
}

/// Runs the worker for one account until `shutdown` completes (see the module docs).
///
/// Fails only at start: an unknown account, a store that cannot be opened, a mailbox that
/// cannot be read (the exit code says which, [`DaemonError::exit_code`]). Afterwards every
/// failure is logged and retried.
pub async fn run<M, S, A>(
    config: &Config,
    deps: Deps<M, S, A>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DaemonError>
where
    M: MailStore + 'static,
    S: Submit + 'static,
    A: Execute + 'static,
{
    let Deps {
        mail,
        submit,
        agent,
        hints,
        background,
        events,
        clock,
        account,
        gate,
        push_status,
    } = deps;
    let name = account.unwrap_or_else(|| config.worker().account.clone());
    let account = config
        .account(&name)
        .cloned()
        .ok_or_else(|| DaemonError::UnknownAccount(name.clone()))?;
    let store = Store::open(&config.state_dir().join(crate::store::FILE_NAME))?;
    // NOTE: one daemon per account and state dir: the restart rule takes every `running` task
    // of the account for an interrupted one. The lock goes with this future (a crash frees it).
    let _lock = lock(config.state_dir(), &name, "run")?;
    let inbox_id = mail.inbox_id().await?;
    let gate = gate.unwrap_or_else(|| Arc::new(TrustGate::from_config(config, &name)));
    let signer = crate::trust::keys::signer(config, &name)?;
    let worker = config.worker();
    log_trust(config);
    let owner = lease_owner(&store, &name, worker.lease_owner.as_deref())?;
    let core = Arc::new(Core {
        key: name.clone(),
        worker: true,
        cursor: name.clone(),
        settings: Settings::from_config(config, &account, true),
        account,
        mail,
        submit,
        agent,
        db: Db::new(store),
        queue: queue::RunQueue::with_clock(usize::from(worker.concurrency), Arc::clone(&clock)),
        gate,
        signatures: crate::trust::sign::InboundPolicy::from_config(config, &name),
        signer,
        events: events::Events::new(events),
        clock,
        outbox_kick: Notify::new(),
        inbox_id,
        failures: Mutex::new(std::collections::HashMap::new()),
        backoffs: Backoffs::new()?,
        health: status::Health::default(),
        book: lease::Book::new(owner),
    });
    core.load_leases()?;
    let state = core.start_state().await?;
    let recovered = core.recover()?;
    core.prune();

    // NOTE: every loop lives in a JoinSet owned by this future: dropping the future (a crash
    // in a test) aborts them all, and the agent processes die with their runs.
    let mut side = JoinSet::new();
    for future in background {
        side.spawn(future);
    }
    side.spawn(prune_periodically(Arc::clone(&core)));
    side.spawn(status::report_health(
        Arc::clone(&core),
        push_status.clone(),
    ));
    side.spawn(lease::keep(Arc::clone(&core)));
    if let Some(push_status) = push_status {
        side.spawn(status::record_push_status(
            core.db.clone(),
            core.key.clone(),
            push_status,
            Arc::clone(&core.clock),
        ));
    }
    let (stop_outbox, outbox_stopped) = watch::channel(false);
    let mut drainer = JoinSet::new();
    drainer.spawn(outbound::drain(Arc::clone(&core), outbox_stopped));
    let mut scheduler = JoinSet::new();
    scheduler.spawn(worker::schedule(Arc::clone(&core)));

    tracing::info!(
        account = %core.key,
        email = %core.account.email,
        state = %state,
        recovered,
        signing_key = core.signer.as_ref().map(|k| k.public_key().key_id()).unwrap_or_default(),
        "worker ready"
    );
    core.events.emit(
        core.now(),
        EventKind::Ready {
            account: core.key.clone(),
            email: core.account.email.clone(),
            state,
            recovered,
        },
    );

    tokio::select! {
        () = shutdown => {}
        () = inbound::listen(Arc::clone(&core), hints) => {}
    }

    // Graceful stop.
    let grace = core.settings.shutdown_grace;
    let deadline = tokio::time::Instant::now() + grace;
    let left = core.queue.close();
    let running = core.queue.running();
    tracing::info!(
        running,
        queued = left.len(),
        grace_ms = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX),
        "shutting down: waiting for running tasks"
    );
    let mut interrupted = 0;
    if tokio::time::timeout_at(deadline, scheduler.join_next())
        .await
        .is_err()
    {
        interrupted = core.queue.running();
        tracing::warn!(
            interrupted,
            "the shutdown grace ran out with tasks still running; they are stopped and run again on the next start"
        );
        scheduler.abort_all();
        while scheduler.join_next().await.is_some() {}
    }
    let _ = stop_outbox.send(true);
    let flush = deadline
        .saturating_duration_since(tokio::time::Instant::now())
        .max(Duration::from_secs(5));
    let flushed = tokio::time::timeout(flush, drainer.join_next()).await;
    if flushed.is_err() {
        tracing::warn!(
            "the outbox was not empty when the shutdown grace ran out; it is sent on the next start"
        );
    }
    side.abort_all();
    core.events
        .emit(core.now(), EventKind::Stopped { interrupted });
    tracing::info!("worker stopped");
    Ok(())
}
