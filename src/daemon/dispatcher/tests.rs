//! Logic tests of the dispatcher side on the in-memory transports: the dispatcher-only
//! pipeline ([`follow`]) and the worker daemon ([`super::super::run`]) route acks, help
//! requests, results, cancels and replies for tasks we dispatched; answers and cancels thread
//! as the worker expects. The proof against real servers is `tests/dispatcher.rs`.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, oneshot};

use super::*;
use crate::config::{Env, Mode};
use crate::daemon::{Event, EventKind};
use crate::transport::{Hint, MemoryStore, MemorySubmit, PushKind};
use crate::wire::aamp::{AampMessage, Priority};
use crate::wire::message::{Inbound, Mailbox, Outbound};

const BOSS: &str = "boss@example.test";
const WORKER: &str = "worker@example.test";

struct Harness {
    dir: tempfile::TempDir,
    config: Config,
    mail: Arc<MemoryStore>,
    submit: Arc<MemorySubmit>,
    hints: mpsc::Sender<Hint>,
    events: broadcast::Receiver<Event>,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<Result<(), DaemonError>>>,
}

fn config(dir: &std::path::Path) -> Config {
    let text = format!(
        r#"
state-dir = "{state}"
[accounts.boss]
email = "{BOSS}"
password = {{ raw = "x" }}
smtp = {{ host = "127.0.0.1", port = 5587, tls = "plaintext", allow-plaintext = true }}
jmap = {{ session-url = "http://127.0.0.1:8080/.well-known/jmap", poll-interval = "1s" }}
[dispatcher]
account = "boss"
[worker]
account = "boss"
allowed-senders = ["{WORKER}"]
[trust]
require-authentication = false
"#,
        state = dir.display()
    );
    Config::from_toml_str_with_env(&text, Mode::Strict, &Env::with_home(dir)).unwrap()
}

impl Harness {
    /// The dispatcher-only pipeline (`worker = false`) or the worker daemon (`true`).
    async fn start(worker: bool) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path());
        let mail = Arc::new(MemoryStore::new());
        let submit = Arc::new(MemorySubmit::new());
        let (hints, hints_rx) = mpsc::channel(16);
        let (events_tx, events) = broadcast::channel(1024);
        let (stop, stopped) = oneshot::channel::<()>();
        let cfg = config.clone();
        let (m, s) = (Arc::clone(&mail), Arc::clone(&submit));
        let handle = if worker {
            let mut deps = Deps::new(m, s, Arc::new(NoAgent), hints_rx);
            deps.events = Some(events_tx);
            tokio::spawn(async move {
                super::super::run(&cfg, deps, async {
                    let _ = stopped.await;
                })
                .await
            })
        } else {
            let mut deps = Deps::new(m, s, Arc::new(NoAgent), hints_rx);
            deps.events = Some(events_tx);
            let lock = PipelineLock::take(config.state_dir(), "boss")
                .unwrap()
                .unwrap();
            tokio::spawn(async move {
                follow(&cfg, deps, lock, async {
                    let _ = stopped.await;
                })
                .await
            })
        };
        let mut h = Harness {
            dir,
            config,
            mail,
            submit,
            hints,
            events,
            stop: Some(stop),
            handle: Some(handle),
        };
        h.wait_event(|e| matches!(e, EventKind::Ready { .. })).await;
        h
    }

    fn store(&self) -> Store {
        Store::open(&self.dir.path().join(crate::store::FILE_NAME)).unwrap()
    }

    fn account(&self) -> Account {
        self.config.account("boss").unwrap().clone()
    }

    async fn wait_event(&mut self, matches: impl Fn(&EventKind) -> bool) -> Event {
        loop {
            match tokio::time::timeout(Duration::from_secs(10), self.events.recv()).await {
                Ok(Ok(event)) if matches(&event.kind) => return event,
                Ok(Ok(_)) | Ok(Err(broadcast::error::RecvError::Lagged(_))) => {}
                other => panic!("no such event: {other:?}"),
            }
        }
    }

    /// Delivers a mail and hints the pipeline.
    fn deliver(&self, raw: &[u8]) -> String {
        let id = self.mail.deliver(raw, crate::clock::now()).unwrap();
        let _ = self.hints.try_send(Hint::StateChange(PushKind::WebSocket));
        id
    }

    /// A task dispatched to the worker (queued, then marked sent as the CLI would).
    fn dispatch(&self, title: &str, expires_in: Option<chrono::TimeDelta>) -> Queued {
        let store = self.store();
        let queued = enqueue_dispatch(
            &store,
            &self.account(),
            "boss",
            None,
            TaskId::new(crate::ids::task_id()),
            NewDispatch {
                to: WORKER.to_owned(),
                dispatch: Dispatch {
                    title: title.to_owned(),
                    instructions: format!("Do {title}."),
                    priority: Priority::High,
                    expires_at: expires_in.map(|d| crate::clock::now() + d),
                    dispatch_context: crate::wire::aamp::DispatchContext(BTreeMap::from([(
                        "project".to_owned(),
                        "x".to_owned(),
                    )])),
                    ..Dispatch::default()
                },
                attachments: Vec::new(),
            },
            crate::clock::now(),
        )
        .unwrap();
        store
            .outbox_mark_sent(&queued.message_id, crate::clock::now())
            .unwrap();
        queued
    }

    /// A reply from `from` in the task's thread, answering `parent`.
    fn reply(
        &self,
        from: &str,
        task_id: &TaskId,
        payload: Payload,
        parent: &str,
        refs: &[String],
    ) -> (String, Vec<u8>) {
        let now = crate::clock::now();
        let message_id = crate::ids::message_id(now, "example.test");
        let mut out = Outbound::aamp(
            &AampMessage::new(task_id.clone(), payload),
            Mailbox::new(from),
            vec![Mailbox::new(BOSS)],
            now,
            message_id.clone(),
        );
        let (irt, chain) = crate::wire::thread::reply_chain(parent, refs);
        out.in_reply_to = Some(irt);
        out.references = chain;
        (message_id, out.render())
    }

    fn task(&self, task_id: &TaskId) -> Task {
        self.store()
            .get_task("boss", task_id, Role::Dispatcher)
            .unwrap()
            .unwrap()
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(handle) = self.handle.take() {
            handle.await.unwrap().unwrap();
        }
    }
}

async fn progress(h: &mut Harness, intent: &str) -> Event {
    let intent = intent.to_owned();
    h.wait_event(move |e| matches!(e, EventKind::Progress { intent: i, .. } if *i == intent))
        .await
}

#[tokio::test]
async fn ack_help_answer_result_on_the_dispatcher_only_pipeline() {
    let mut h = Harness::start(false).await;
    let q = h.dispatch("paint", None);
    let refs = vec![q.message_id.clone()];
    let (_, ack) = h.reply(WORKER, &q.task_id, Payload::Ack, &q.message_id, &[]);
    h.deliver(&ack);
    progress(&mut h, "task.ack").await;
    assert_eq!(h.task(&q.task_id).state, TaskState::Acked);
    let (help_id, help) = h.reply(
        WORKER,
        &q.task_id,
        Payload::HelpNeeded(HelpNeeded {
            question: "Which colour?".into(),
            blocked_reason: "no spec".into(),
            suggested_options: vec!["red".into(), "blue".into()],
        }),
        &q.message_id,
        &[],
    );
    let help_email = h.deliver(&help);
    progress(&mut h, "task.help_needed").await;
    let task = h.task(&q.task_id);
    assert_eq!(task.state, TaskState::HelpNeeded);
    assert_eq!(task.help_question.as_deref(), Some("Which colour?"));
    // No claim on dispatcher mail.
    assert!(h.mail.keywords(&help_email).unwrap().is_empty());
    let store = h.store();
    let record = load_record(&store, "boss", &q.task_id).unwrap();
    let asked = record.last_help().unwrap();
    assert_eq!(asked.options, ["red", "blue"]);
    assert_eq!(asked.blocked_reason.as_deref(), Some("no spec"));

    // The answer: same TaskId, In-Reply-To the help mail, References the chain.
    let answer = enqueue_answer(
        &store,
        &h.account(),
        "boss",
        None,
        &q.task_id,
        "Blue.",
        crate::clock::now(),
    )
    .unwrap();
    assert_eq!(h.task(&q.task_id).state, TaskState::Answered);
    let row = store.outbox_get(&answer.message_id).unwrap().unwrap();
    let sent = Inbound::from_bytes(&row.bytes).unwrap();
    let Classified::Aamp(parsed) = classify(&sent) else {
        panic!("not AAMP")
    };
    assert_eq!(parsed.message.task_id, q.task_id);
    let Payload::Dispatch(d) = &parsed.message.payload else {
        panic!("not a dispatch")
    };
    assert_eq!(d.instructions.trim(), "Blue.");
    assert_eq!(d.priority, Priority::High);
    assert_eq!(
        d.dispatch_context.0.get("project").map(String::as_str),
        Some("x")
    );
    assert_eq!(sent.in_reply_to, std::slice::from_ref(&help_id));
    assert_eq!(sent.references.first(), Some(&q.message_id));
    assert_eq!(sent.references.last(), Some(&help_id));
    assert_eq!(row.rcpt_to, [WORKER]);
    // A second answer is refused: the task is no longer waiting.
    assert!(matches!(
        enqueue_answer(
            &store,
            &h.account(),
            "boss",
            None,
            &q.task_id,
            "again",
            crate::clock::now()
        ),
        Err(DispatcherError::NotWaiting { .. })
    ));
    // The pipeline's outbox drain sends the answer.
    for _ in 0..100 {
        if !h.submit.sent().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(h.submit.sent().len(), 1, "the answer went out");

    let (_, ack2) = h.reply(WORKER, &q.task_id, Payload::Ack, &answer.message_id, &refs);
    h.deliver(&ack2);
    progress(&mut h, "task.ack").await;
    assert_eq!(h.task(&q.task_id).state, TaskState::Acked);
    let (result_id, result) = h.reply(
        WORKER,
        &q.task_id,
        Payload::Result(TaskResult {
            status: Status::Completed,
            output: "Painted blue.".into(),
            error_msg: None,
            structured_result: Some(serde_json::json!({"colour": "blue"})),
        }),
        &answer.message_id,
        &refs,
    );
    h.deliver(&result);
    let event = progress(&mut h, "task.result").await;
    assert!(matches!(&event.kind, EventKind::Progress { state, .. } if state == "completed"));
    let task = h.task(&q.task_id);
    assert_eq!(Outcome::of(task.state), Some(Outcome::Completed));
    let stored = task.result.unwrap();
    assert_eq!(stored.output.trim(), "Painted blue.");
    assert_eq!(
        stored.structured_result.as_deref(),
        Some(r#"{"colour":"blue"}"#)
    );
    let thread = store.thread("boss", &q.task_id, Role::Dispatcher).unwrap();
    let intents: Vec<(&str, Direction)> = thread
        .iter()
        .map(|e| (e.intent.as_str(), e.direction))
        .collect();
    assert_eq!(
        intents,
        [
            ("task.dispatch", Direction::Out),
            ("task.ack", Direction::In),
            ("task.help_needed", Direction::In),
            ("task.dispatch", Direction::Out),
            ("task.ack", Direction::In),
            ("task.result", Direction::In),
        ]
    );
    assert_eq!(thread.last().unwrap().message_id, result_id);
    h.stop().await;
}

#[tokio::test]
async fn strangers_dispatches_and_worker_side_mail_are_left_alone() {
    let mut h = Harness::start(false).await;
    let q = h.dispatch("guarded", None);
    // A result from someone else than the task's peer is refused.
    let (_, forged) = h.reply(
        "mallory@example.test",
        &q.task_id,
        Payload::Result(TaskResult::default()),
        &q.message_id,
        &[],
    );
    h.deliver(&forged);
    h.wait_event(|e| matches!(e, EventKind::Refused { rule, .. } if rule == "not-task-peer"))
        .await;
    assert_eq!(h.task(&q.task_id).state, TaskState::Dispatched);
    // A dispatch to this account is worker-side mail: not acked, not marked processed.
    let (_, dispatch) = h.reply(
        WORKER,
        &TaskId::new("incoming"),
        Payload::Dispatch(Dispatch {
            title: "for a worker".into(),
            ..Dispatch::default()
        }),
        "x@y",
        &[],
    );
    let email = h.deliver(&dispatch);
    // Then a real update, to know the pipeline went past the dispatch.
    let (_, ack) = h.reply(WORKER, &q.task_id, Payload::Ack, &q.message_id, &[]);
    h.deliver(&ack);
    progress(&mut h, "task.ack").await;
    let store = h.store();
    assert!(!store.is_processed("boss", &email).unwrap());
    assert!(h.mail.keywords(&email).unwrap().is_empty());
    assert!(h.submit.sent().is_empty(), "no ack for the dispatch");
    // The worker daemon's cursor was not touched; the dispatcher pipeline has its own.
    assert!(store.jmap_state("boss").unwrap().is_none());
    assert!(store.jmap_state(&cursor_key("boss")).unwrap().is_some());
    // A person's reply to our dispatch is recorded and surfaced, no state change.
    let now = crate::clock::now();
    let raw = format!(
        "From: {WORKER}\r\nTo: {BOSS}\r\nSubject: Re: task\r\nDate: {}\r\nMessage-ID: <human-1@example.test>\r\nIn-Reply-To: <{}>\r\nReferences: <{}>\r\n\r\nI will do it tomorrow.\r\n\r\nOn Monday someone wrote:\r\n> Do it.\r\n",
        now.to_rfc2822(),
        q.message_id,
        q.message_id
    );
    h.deliver(raw.as_bytes());
    progress(&mut h, "reply").await;
    assert_eq!(h.task(&q.task_id).state, TaskState::Acked);
    let record = load_record(&store, "boss", &q.task_id).unwrap();
    let reply = record
        .messages
        .iter()
        .find(|m| m.intent == "reply")
        .unwrap();
    assert_eq!(reply.text.as_deref(), Some("I will do it tomorrow."));
    h.stop().await;
}

#[tokio::test]
async fn expired_rejections_cancels_and_the_waiters_own_expiry() {
    let mut h = Harness::start(false).await;
    let store = h.store();
    // The worker rejects with ErrorMsg "expired": the task is expired (exit 4).
    let q = h.dispatch("late", None);
    let (_, rejected) = h.reply(
        WORKER,
        &q.task_id,
        Payload::Result(TaskResult {
            status: Status::Rejected,
            output: String::new(),
            error_msg: Some("expired".into()),
            structured_result: None,
        }),
        &q.message_id,
        &[],
    );
    h.deliver(&rejected);
    progress(&mut h, "task.result").await;
    let task = h.task(&q.task_id);
    assert_eq!(task.state, TaskState::Expired);
    assert_eq!(Outcome::of(task.state).unwrap().exit_code(), 4);
    // A plain rejection is rejected (exit 3).
    let q = h.dispatch("fails", None);
    let (_, rejected) = h.reply(
        WORKER,
        &q.task_id,
        Payload::Result(TaskResult {
            status: Status::Rejected,
            output: "partial".into(),
            error_msg: Some("boom".into()),
            structured_result: None,
        }),
        &q.message_id,
        &[],
    );
    h.deliver(&rejected);
    progress(&mut h, "task.result").await;
    assert_eq!(
        Outcome::of(h.task(&q.task_id).state).unwrap().exit_code(),
        3
    );
    // Cancel a sent dispatch: cancelled, a task.cancel In-Reply-To the dispatch.
    let q = h.dispatch("cancel me", None);
    let Cancelled::Queued(cancel) = enqueue_cancel(
        &store,
        &h.account(),
        "boss",
        None,
        &q.task_id,
        "changed my mind",
        crate::clock::now(),
    )
    .unwrap() else {
        panic!("the dispatch was sent")
    };
    assert_eq!(h.task(&q.task_id).state, TaskState::Cancelled);
    let row = store.outbox_get(&cancel.message_id).unwrap().unwrap();
    let mail = Inbound::from_bytes(&row.bytes).unwrap();
    assert_eq!(mail.in_reply_to, std::slice::from_ref(&q.message_id));
    assert!(matches!(
        enqueue_cancel(
            &store,
            &h.account(),
            "boss",
            None,
            &q.task_id,
            "",
            crate::clock::now()
        ),
        Err(DispatcherError::Finished { .. })
    ));
    // A late result after the cancel is recorded but changes nothing.
    let (_, late) = h.reply(
        WORKER,
        &q.task_id,
        Payload::Result(TaskResult {
            status: Status::Rejected,
            error_msg: Some("cancelled".into()),
            ..TaskResult::default()
        }),
        &q.message_id,
        &[],
    );
    h.deliver(&late);
    progress(&mut h, "task.result").await;
    assert_eq!(h.task(&q.task_id).state, TaskState::Cancelled);
    // Cancel an unsent dispatch: withdrawn, nothing to send.
    let unsent = enqueue_dispatch(
        &store,
        &h.account(),
        "boss",
        None,
        TaskId::new("unsent"),
        NewDispatch {
            to: WORKER.into(),
            dispatch: Dispatch {
                title: "never".into(),
                ..Dispatch::default()
            },
            attachments: Vec::new(),
        },
        crate::clock::now(),
    )
    .unwrap();
    // NOTE: mark it failed first so that the pipeline's drain does not send it meanwhile.
    store
        .outbox_mark_failed(
            &unsent.message_id,
            "x",
            false,
            crate::clock::now() + chrono::TimeDelta::hours(1),
        )
        .unwrap();
    assert_eq!(
        enqueue_cancel(
            &store,
            &h.account(),
            "boss",
            None,
            &unsent.task_id,
            "",
            crate::clock::now()
        )
        .unwrap(),
        Cancelled::Withdrawn
    );
    assert_eq!(
        store
            .outbox_get(&unsent.message_id)
            .unwrap()
            .unwrap()
            .status,
        OutboxStatus::Dead
    );
    // The waiter's own expiry.
    let q = h.dispatch("short", Some(chrono::TimeDelta::milliseconds(-1)));
    let task = h.task(&q.task_id);
    assert!(expire_if_due(&store, "boss", &task, crate::clock::now()).unwrap());
    assert_eq!(h.task(&q.task_id).state, TaskState::Expired);
    assert!(!expire_if_due(&store, "boss", &h.task(&q.task_id), crate::clock::now()).unwrap());
    h.stop().await;
}

#[tokio::test]
async fn the_worker_daemon_routes_dispatcher_mail_of_its_account() {
    let mut h = Harness::start(true).await;
    let q = h.dispatch("via run", None);
    let (_, result) = h.reply(
        WORKER,
        &q.task_id,
        Payload::Result(TaskResult {
            status: Status::Completed,
            output: "ok".into(),
            ..TaskResult::default()
        }),
        &q.message_id,
        &[],
    );
    let email = h.deliver(&result);
    progress(&mut h, "task.result").await;
    assert_eq!(h.task(&q.task_id).state, TaskState::Completed);
    assert!(h.mail.keywords(&email).unwrap().is_empty(), "no claim");
    assert!(
        h.submit.sent().is_empty(),
        "the worker daemon does not answer a result"
    );
    h.stop().await;
}

#[test]
fn records_dedupe_and_cap() {
    let mut record = Record::default();
    let message = |id: &str| RecordedMessage {
        message_id: id.to_owned(),
        intent: "task.ack".into(),
        ..RecordedMessage::default()
    };
    assert!(record.add(message("a")));
    assert!(!record.add(message("a")));
    for n in 0..(MAX_RECORD_MESSAGES + 10) {
        record.add(message(&format!("m{n}")));
    }
    assert_eq!(record.messages.len(), MAX_RECORD_MESSAGES);
    assert_eq!(record.messages[0].message_id, "a", "the first stays");
}
