//! The worker daemon end to end, against the real servers of the harness (`bash
//! tests/mailserver/mailserver.sh up all`): Stalwart (push) and Cyrus+Postfix (polling).
//!
//! Each test runs [`taskmail::daemon::run`] in-process with the real `JmapClient` and
//! `SmtpSubmit` as `worker@example.test`, a temp state dir and an agent profile (`echo`, or a
//! `[profiles.NAME]` table of the test config), and acts as the dispatcher itself with `wire` and
//! `transport`: it renders dispatch mails, submits them as `dispatcher@example.test`, and reads
//! the worker's replies from the dispatcher's own mailbox over JMAP with `wire::classify`. Every
//! assertion is about mail that actually arrived there (or did not). A person's reply is written
//! by mutt (`support::mutt`), not by the test.
//!
//! One daemon at a time serves a server's worker mailbox (a per-server lock; the servers run in
//! parallel). Each case uses unique tokens: Cyrus mail persists across runs. With
//! `TASKMAIL_REQUIRE_SERVERS=1` a missing server fails.
//!
//! `push_latency_dispatch_to_result` prints the dispatch-to-result latency (p50/p99 over
//! `TASKMAIL_LATENCY_TASKS`, default 50, sequential echo tasks) next to the
//! submission-to-push-hint time, on every server that pushes (`-- --nocapture` to see it).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use chrono::TimeDelta;
use taskmail::daemon::{self, EventKind};
use taskmail::transport::{JmapClient, MailStore};
use taskmail::wire::aamp::{AampMessage, Dispatch, Payload, Status, TaskId};
use taskmail::wire::message::Attachment;

use support::Server;
use support::daemon::*;

// ---------------------------------------------------------------------------------------------
// The cases

/// With the echo agent, all at once against one daemon: dispatch -> ack -> result; help ->
/// follow-up dispatch -> result; help -> a person's reply written by mutt -> result -> a reply
/// to the result -> a second result; an expired task; a 1 MB body; a refused sender; a plain
/// mail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_worker_dispatch_help_expiry_size_refusal_and_plain_mail() {
    on_every_server(|server| async move {
        let started = Instant::now();
        let dir = tempfile::tempdir().unwrap();
        let worker = Worker::start(&server, dir.path(), "echo", "plain-mail = true").await;
        let dispatcher = Mailer::new(&server, "dispatcher").await;
        let outsider = Mailer::new(&server, "outsider").await;
        let token = support::unique_token();
        tokio::join!(
            basic(&server, &worker, &dispatcher, &token),
            help_by_dispatch(&worker, &dispatcher, &token),
            help_by_mutt(&server, &worker, &dispatcher, &token),
            expired(&worker, &dispatcher, &token),
            big_body(&worker, &dispatcher, &token),
            refused(&worker, &dispatcher, &outsider, &token),
            plain(&worker, &dispatcher, &token),
            plain_by_mutt(&server, &worker, &dispatcher, &token),
        );
        eprintln!(
            "{}: echo cases done in {} ms",
            server.label(),
            started.elapsed().as_millis()
        );
        worker.stop().await;
    })
    .await;
}

async fn basic(server: &Server, worker: &Worker, dispatcher: &Mailer, token: &str) {
    let id = task_id(token, "basic");
    let words = format!("Please echo the words {token} quickly.");
    let dispatch_id = dispatcher.dispatch(&id, &words, None, None).await;
    let ack = dispatcher.wait_intent(&id, "task.ack").await;
    assert_eq!(
        ack.fetched.inbound.in_reply_to,
        std::slice::from_ref(&dispatch_id)
    );
    let result = dispatcher.wait_intent(&id, "task.result").await;
    let r = result.result().unwrap();
    assert_eq!(r.status, Status::Completed, "{}: {r:?}", worker.label);
    assert!(r.output.contains(&words), "{}: {}", worker.label, r.output);
    assert_eq!(
        result.fetched.inbound.in_reply_to,
        std::slice::from_ref(&dispatch_id)
    );
    assert_eq!(
        result.fetched.inbound.references,
        std::slice::from_ref(&dispatch_id)
    );
    assert_eq!(
        result.fetched.inbound.sender().as_deref(),
        Some(dispatcher.worker.as_str())
    );
    assert_eq!(results(&dispatcher.all(&id).await), 1);
    assert_eq!(worker.started(&id), 1);
    // The dispatch in the worker's Inbox carries the claim and, the task being over, done.
    let jmap = JmapClient::from_account(&account(server, "worker"))
        .await
        .unwrap();
    support::eventually(
        "$taskmail-claimed and $taskmail-done on the dispatch",
        Duration::from_secs(15),
        || async {
            let recent = jmap
                .query_inbox_since(taskmail::clock::now() - TimeDelta::seconds(90), 1000)
                .await
                .unwrap();
            let fetched = jmap.get_headers(&recent.ids).await.unwrap();
            let dispatch = fetched
                .iter()
                .find(|f| f.inbound.message_id.as_deref() == Some(dispatch_id.as_str()))?;
            (dispatch.keywords.contains(daemon::inbound::CLAIMED)
                && dispatch.keywords.contains(daemon::inbound::DONE))
            .then_some(())
        },
    )
    .await;
}

async fn help_by_dispatch(worker: &Worker, dispatcher: &Mailer, token: &str) {
    let id = task_id(token, "helpd");
    let dispatch_id = dispatcher
        .dispatch(
            &id,
            &format!("Paint the shed.\nplease ask: Which colour for {token}?"),
            None,
            None,
        )
        .await;
    let help = dispatcher.wait_intent(&id, "task.help_needed").await;
    let Some(Payload::HelpNeeded(h)) = help.message.as_ref().map(|m| &m.payload) else {
        unreachable!()
    };
    assert_eq!(h.question, format!("Which colour for {token}?"));
    assert_eq!(
        help.fetched.inbound.in_reply_to,
        std::slice::from_ref(&dispatch_id)
    );
    let answer = format!("Blue, answered by dispatch {token}");
    let answer_id = dispatcher.dispatch(&id, &answer, None, Some(&help)).await;
    let result = dispatcher.wait_intent(&id, "task.result").await;
    let r = result.result().unwrap();
    assert_eq!(r.status, Status::Completed, "{}: {r:?}", worker.label);
    assert!(r.output.contains(&answer), "{}: {}", worker.label, r.output);
    assert_eq!(
        result.fetched.inbound.in_reply_to,
        std::slice::from_ref(&answer_id)
    );
    let refs = &result.fetched.inbound.references;
    assert_eq!(refs.first(), Some(&dispatch_id), "{refs:?}");
    assert!(refs.contains(&help.message_id()), "{refs:?}");
    assert_eq!(refs.last(), Some(&answer_id), "{refs:?}");
    let all = dispatcher.all(&id).await;
    assert_eq!(results(&all), 1);
    assert_eq!(
        all.iter()
            .filter(|g| g.intent() == Some("task.help_needed"))
            .count(),
        1
    );
}

async fn help_by_mutt(server: &Server, worker: &Worker, dispatcher: &Mailer, token: &str) {
    let missing = support::mutt::Mutt::missing_tools();
    assert!(
        missing.is_empty(),
        "{}: the human-reply case needs {missing:?} ({})",
        worker.label,
        support::mutt::INSTALL_HINT
    );
    let id = task_id(token, "helpm");
    let dispatch_id = dispatcher
        .dispatch(
            &id,
            &format!("Book a room.\nplease ask: Which floor for {token}?"),
            None,
            None,
        )
        .await;
    let help = dispatcher.wait_intent(&id, "task.help_needed").await;
    // The person behind the dispatcher address answers from mutt.
    let answer = format!("The third floor, says a person {token}");
    let (srv, who, help_id, text) = (
        server.clone(),
        server.account("dispatcher"),
        help.message_id(),
        answer.clone(),
    );
    tokio::task::spawn_blocking(move || {
        support::mutt::Mutt::new(&srv, &who).reply(&help_id, &text)
    })
    .await
    .unwrap();
    let result = dispatcher.wait_intent(&id, "task.result").await;
    let r = result.result().unwrap();
    assert_eq!(r.status, Status::Completed, "{}: {r:?}", worker.label);
    assert!(
        r.output.contains(&format!("> {answer}")),
        "{}: the answer reaches the agent: {}",
        worker.label,
        r.output
    );
    assert!(
        !r.output.contains("Operations desk"),
        "{}: the signature is stripped: {}",
        worker.label,
        r.output
    );
    // The result answers the person's reply, in the same thread.
    let received = worker
        .events_for(&id)
        .into_iter()
        .filter_map(|e| match e {
            EventKind::Received {
                intent, message_id, ..
            } if intent == "reply" => message_id,
            _ => None,
        })
        .next()
        .expect("the reply was taken as a reply");
    assert_eq!(
        result.fetched.inbound.in_reply_to,
        std::slice::from_ref(&received)
    );
    let refs = &result.fetched.inbound.references;
    assert_eq!(refs.first(), Some(&dispatch_id));
    assert!(refs.contains(&help.message_id()) && refs.last() == Some(&received));
    assert_eq!(results(&dispatcher.all(&id).await), 1);
    // A reply to the result is a follow-up instruction: the task runs again, same TaskId, and
    // the new result goes in the same thread.
    let follow_up = format!("Now the fourth floor please {token}");
    let (srv, who, result_id, text) = (
        server.clone(),
        server.account("dispatcher"),
        result.message_id(),
        follow_up.clone(),
    );
    tokio::task::spawn_blocking(move || {
        support::mutt::Mutt::new(&srv, &who).reply(&result_id, &text)
    })
    .await
    .unwrap();
    let second = dispatcher
        .wait(&format!("a second result of {id}"), |g| {
            g.task_id() == Some(id.as_str())
                && g.result()
                    .is_some_and(|r| r.output.contains(&format!("> {follow_up}")))
        })
        .await;
    assert_eq!(second.result().unwrap().status, Status::Completed);
    let refs = &second.fetched.inbound.references;
    assert_eq!(refs.first(), Some(&dispatch_id), "{refs:?}");
    assert!(refs.contains(&result.message_id()), "{refs:?}");
    assert_eq!(results(&dispatcher.all(&id).await), 2);
    assert_eq!(worker.started(&id), 3, "asked, answered, followed up");
}

async fn expired(worker: &Worker, dispatcher: &Mailer, token: &str) {
    let id = task_id(token, "expired");
    dispatcher
        .dispatch(&id, "This is too late.", Some(TimeDelta::minutes(-1)), None)
        .await;
    let result = dispatcher.wait_intent(&id, "task.result").await;
    let r = result.result().unwrap();
    assert_eq!(r.status, Status::Rejected);
    assert_eq!(r.error_msg.as_deref(), Some("expired"), "{}", worker.label);
    assert_eq!(worker.started(&id), 0, "{}: never run", worker.label);
    assert!(!worker.work_dir(&id).exists());
}

async fn big_body(worker: &Worker, dispatcher: &Mailer, token: &str) {
    let id = task_id(token, "big");
    let line = format!("{token} the quick brown fox jumps over the lazy dog 0123456789\n");
    let mut body = format!("Start of a big task {token}.\n");
    while body.len() < 1024 * 1024 {
        body.push_str(&line);
    }
    dispatcher.dispatch(&id, &body, None, None).await;
    let result = dispatcher.wait_intent(&id, "task.result").await;
    let r = result.result().unwrap();
    assert_eq!(r.status, Status::Completed, "{}: {r:?}", worker.label);
    assert!(r.output.contains(&format!("Start of a big task {token}.")));
    // The whole 1 MB reached the agent's task file (argv carries the first 100 KiB).
    let task_json = std::fs::read_to_string(worker.work_dir(&id).join("task.json")).unwrap();
    let task: serde_json::Value = serde_json::from_str(&task_json).unwrap();
    let instructions = task["instructions"].as_str().unwrap();
    assert!(
        instructions.len() >= 1024 * 1024 - line.len(),
        "{}",
        instructions.len()
    );
}

async fn refused(worker: &Worker, dispatcher: &Mailer, outsider: &Mailer, token: &str) {
    let id = task_id(token, "refused");
    let refused_id = outsider.dispatch(&id, "Let me in.", None, None).await;
    let event = worker
        .wait_event(
            "the refusal",
            REPLY_TIMEOUT,
            |e| matches!(e, EventKind::Refused { message_id: Some(m), .. } if *m == refused_id),
        )
        .await;
    assert!(
        matches!(&event.kind, EventKind::Refused { rule, .. } if rule == "not-allowed"),
        "{event:?}"
    );
    // Afterwards, a task of the allowed dispatcher goes all the way; the outsider still has
    // nothing, and nothing ran.
    let control = task_id(token, "control");
    dispatcher
        .dispatch(&control, "After the outsider.", None, None)
        .await;
    dispatcher.wait_intent(&control, "task.result").await;
    assert!(
        outsider.all(&id).await.is_empty(),
        "{}: no ack, no result",
        worker.label
    );
    assert!(worker.events_for(&id).is_empty());
    assert!(!worker.work_dir(&id).exists());
}

async fn plain(worker: &Worker, dispatcher: &Mailer, token: &str) {
    let subject = format!("Plain request {token}");
    let message_id = format!(
        "plain-{token}@{}",
        taskmail::ids::domain_of(&dispatcher.email)
    );
    let raw = support::mail::message(
        &dispatcher.email,
        &dispatcher.worker,
        &subject,
        &message_id,
        &[],
        &format!("Could you echo {token} for me?\n\n-- \nA person"),
    );
    dispatcher.submit(&raw).await;
    let id = taskmail::daemon::worker::plain_task_id(&message_id);
    let result = dispatcher.wait_intent(id.as_str(), "task.result").await;
    assert_eq!(
        result.fetched.inbound.subject.as_deref(),
        Some(format!("Re: {subject}").as_str()),
        "{}",
        worker.label
    );
    assert_eq!(result.fetched.inbound.in_reply_to, [message_id]);
    let text = result.text();
    assert!(
        text.contains(&format!("Could you echo {token} for me?")),
        "{text}"
    );
    assert!(
        !text.contains("AAMP Task Result"),
        "a readable reply: {text}"
    );
    assert_eq!(results(&dispatcher.all(id.as_str()).await), 1);
    assert!(
        dispatcher
            .all(id.as_str())
            .await
            .iter()
            .all(|g| g.intent() == Some("task.result")),
        "no ack for plain mail"
    );
}

/// A person writes a new plain mail in mutt (no X-AAMP headers, no thread): it runs as a task
/// and the answer comes back as a readable reply threaded under that mail.
async fn plain_by_mutt(server: &Server, worker: &Worker, dispatcher: &Mailer, token: &str) {
    let missing = support::mutt::Mutt::missing_tools();
    assert!(
        missing.is_empty(),
        "{}: the plain-mail case needs {missing:?} ({})",
        worker.label,
        support::mutt::INSTALL_HINT
    );
    let subject = format!("Echo this for me {token}");
    let text = format!("Hello agent, please echo {token}-mutt back to me.\n\nThanks");
    let (srv, who, to, subj, body) = (
        server.clone(),
        server.account("dispatcher"),
        dispatcher.worker.clone(),
        subject.clone(),
        text.clone(),
    );
    tokio::task::spawn_blocking(move || {
        support::mutt::Mutt::new(&srv, &who).compose(&to, &subj, &body)
    })
    .await
    .unwrap();
    let reply_subject = format!("Re: {subject}");
    let result = dispatcher
        .wait(&format!("the reply to the plain mail '{subject}'"), |g| {
            g.fetched.inbound.subject.as_deref() == Some(reply_subject.as_str())
        })
        .await;
    assert_eq!(result.intent(), Some("task.result"), "{}", worker.label);
    assert_eq!(
        result.fetched.inbound.in_reply_to.len(),
        1,
        "{}: threaded under the person's mail",
        worker.label
    );
    let task_id = taskmail::daemon::worker::plain_task_id(&result.fetched.inbound.in_reply_to[0]);
    assert_eq!(
        result.message.as_ref().map(|m| m.task_id.as_str()),
        Some(task_id.as_str()),
        "{}: the task id derives from the person's Message-ID",
        worker.label
    );
    let reply = result.text();
    assert!(
        reply.contains(&format!("please echo {token}-mutt back")),
        "{reply}"
    );
    assert!(
        !reply.contains("AAMP Task Result"),
        "a readable reply: {reply}"
    );
}

/// task.cancel while the agent runs: the run is stopped and exactly one `rejected` result with
/// ErrorMsg `cancelled` arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_during_a_run_sends_one_rejected_result() {
    on_every_server(|server| async move {
        let dir = tempfile::tempdir().unwrap();
        let worker = Worker::start(&server, dir.path(), "slow", "").await;
        let dispatcher = Mailer::new(&server, "dispatcher").await;
        let token = support::unique_token();
        let id = task_id(&token, "cancel");
        dispatcher
            .dispatch(&id, "Take your time.", None, None)
            .await;
        let ack = dispatcher.wait_intent(&id, "task.ack").await;
        worker
            .wait_event(
                "the run",
                REPLY_TIMEOUT,
                |e| matches!(e, EventKind::Started { task_id, .. } if task_id.as_str() == id),
            )
            .await;
        let started = Instant::now();
        let cancel = AampMessage::new(
            TaskId::new(&id),
            Payload::Cancel {
                reason: format!("Never mind {token}."),
            },
        );
        dispatcher.send_aamp(&cancel, Some(&ack), Vec::new()).await;
        let result = dispatcher.wait_intent(&id, "task.result").await;
        let r = result.result().unwrap();
        assert_eq!(r.status, Status::Rejected, "{}", worker.label);
        assert_eq!(r.error_msg.as_deref(), Some("cancelled"));
        assert!(
            started.elapsed() < Duration::from_secs(25),
            "{}: the 30 s run was stopped",
            worker.label
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(results(&dispatcher.all(&id).await), 1, "{}", worker.label);
        worker.stop().await;
    })
    .await;
}

/// A file attached to the dispatch arrives in the run's `in/`; files the agent leaves in its
/// outbox come back attached to the result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attachments_go_both_ways() {
    on_every_server(|server| async move {
        let dir = tempfile::tempdir().unwrap();
        let worker = Worker::start(&server, dir.path(), "files", "").await;
        let dispatcher = Mailer::new(&server, "dispatcher").await;
        let token = support::unique_token();
        let id = task_id(&token, "files");
        let name = format!("data-{token}.csv");
        let content = format!("token,value\n{token},42\n").into_bytes();
        let message = AampMessage::new(
            TaskId::new(&id),
            Payload::Dispatch(Dispatch {
                title: "Look at the file".into(),
                instructions: "Copy the file back.".into(),
                ..Dispatch::default()
            }),
        );
        dispatcher
            .send_aamp(
                &message,
                None,
                vec![Attachment {
                    filename: name.clone(),
                    content_type: "text/csv".into(),
                    bytes: content.clone(),
                }],
            )
            .await;
        let result = dispatcher.wait_intent(&id, "task.result").await;
        assert_eq!(result.result().unwrap().status, Status::Completed);
        assert_eq!(
            std::fs::read(worker.work_dir(&id).join("in").join(&name)).unwrap(),
            content,
            "{}: the attachment is in in/",
            worker.label
        );
        let listing = dispatcher.download(&result, "listing.txt").await;
        assert_eq!(String::from_utf8(listing).unwrap().trim(), name);
        assert_eq!(dispatcher.download(&result, &name).await, content);
        worker.stop().await;
    })
    .await;
}

/// The daemon dies (its future is dropped) while the agent runs; a new one on the same state
/// dir finishes the task: exactly one result mail, and the agent ran once more than the one
/// interruption (the restart rule in `taskmail::daemon`'s docs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_mid_run_completes_the_task_exactly_once() {
    on_every_server(|server| async move {
        let dir = tempfile::tempdir().unwrap();
        let first = Worker::start(&server, dir.path(), "counted", "").await;
        let dispatcher = Mailer::new(&server, "dispatcher").await;
        let token = support::unique_token();
        let id = task_id(&token, "restart");
        let words = format!("Survive a restart {token}.");
        dispatcher.dispatch(&id, &words, None, None).await;
        first
            .wait_event(
                "the run",
                REPLY_TIMEOUT,
                |e| matches!(e, EventKind::Started { task_id, .. } if task_id.as_str() == id),
            )
            .await;
        let runs_file = first.work_dir(&id).join(".runs");
        support::eventually("the agent started", Duration::from_secs(10), || async {
            runs_file.exists().then_some(())
        })
        .await;
        let before_kill = first.kill().await;
        // NOTE: on a loaded machine the first run may end (3 s) before the kill lands: then it
        // was not interrupted and nothing runs again.
        let interrupted = !before_kill.iter().any(
            |e| matches!(&e.kind, EventKind::Result { task_id, .. } if task_id.as_str() == id),
        );
        let second = Worker::start(&server, dir.path(), "counted", "").await;
        let result = dispatcher.wait_intent(&id, "task.result").await;
        let r = result.result().unwrap();
        assert_eq!(r.status, Status::Completed, "{}: {r:?}", second.label);
        assert!(r.output.contains(&words));
        // Give a duplicate every chance to show up.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let all = dispatcher.all(&id).await;
        assert_eq!(results(&all), 1, "{}: exactly one result", second.label);
        let runs = std::fs::read_to_string(&runs_file).unwrap().len();
        assert_eq!(
            runs,
            1 + usize::from(interrupted),
            "{}: one run, one re-run after the interruption (at most 1 + {}); interrupted: {interrupted}",
            second.label,
            taskmail::daemon::worker::MAX_INTERRUPTIONS
        );
        second.stop().await;
    })
    .await;
}

/// Dispatch-to-result latency with the echo agent over push, next to the submission-to-hint
/// time of the same tasks. Prints the figures; asserts only that every task completed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_latency_dispatch_to_result() {
    let tasks: usize = std::env::var("TASKMAIL_LATENCY_TASKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    on_every_server(move |server| async move {
        if !pushes(&server) {
            eprintln!("{}: no push; latency is measured on push servers only", server.label());
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let worker = Worker::start(&server, dir.path(), "echo", "").await;
        let dispatcher = Mailer::new(&server, "dispatcher").await;
        let token = support::unique_token();
        let mut to_result = Vec::with_capacity(tasks);
        let mut to_hint = Vec::with_capacity(tasks);
        let mut to_received = Vec::with_capacity(tasks);
        let mut to_sent = Vec::with_capacity(tasks);
        for n in 0..tasks {
            // NOTE: a pause between tasks, so that the previous task's own state changes
            // (keywords, its result) are not taken for this task's push hint.
            tokio::time::sleep(Duration::from_millis(100)).await;
            let id = task_id(&token, &format!("lat{n}"));
            let (sent, sent_at) = (Instant::now(), taskmail::clock::now());
            dispatcher.dispatch(&id, "Quick.", None, None).await;
            let result = dispatcher.wait_intent(&id, "task.result").await;
            assert_eq!(result.result().unwrap().status, Status::Completed);
            to_result.push(result.seen - sent);
            if let Some((at, _)) = worker
                .hints
                .lock()
                .unwrap()
                .iter()
                .find(|(at, _)| *at >= sent)
            {
                to_hint.push(*at - sent);
            }
            if let Some(sent_result) = worker.events().iter().find(|e| {
                matches!(&e.kind, EventKind::Sent { task_id: Some(t), intent, .. }
                    if t.as_str() == id && intent == "task.result")
            }) {
                to_sent.push((sent_result.at - sent_at).to_std().unwrap_or_default());
            }
            if let Some(received) = worker.events().iter().find(|e| {
                matches!(&e.kind, EventKind::Received { task_id, .. } if task_id.as_str() == id)
            }) {
                to_received.push((received.at - sent_at).to_std().unwrap_or_default());
            }
        }
        let throttle = server
            .vars
            .get("PUSH_THROTTLE")
            .cloned()
            .unwrap_or_else(|| "?".to_owned());
        let build = server
            .vars
            .get("BUILD")
            .cloned()
            .unwrap_or_else(|| "?".to_owned());
        eprintln!(
            "LATENCY {} ({build} build, push throttle {throttle}, echo agent, {tasks} sequential tasks): \
             dispatch->result p50 {} ms p99 {} ms max {} ms; submission->push hint p50 {} ms p99 {} ms \
             ({} samples); submission->task received (changes, headers, gate, claim, body) p50 {} ms p99 {} ms; \
             submission->result accepted by the worker's submission server p50 {} ms p99 {} ms",
            server.label(),
            percentile(&mut to_result, 50),
            percentile(&mut to_result, 99),
            percentile(&mut to_result, 100),
            percentile(&mut to_hint, 50),
            percentile(&mut to_hint, 99),
            to_hint.len(),
            percentile(&mut to_received, 50),
            percentile(&mut to_received, 99),
            percentile(&mut to_sent, 50),
            percentile(&mut to_sent, 99),
        );
        worker.stop().await;
    })
    .await;
}

fn percentile(samples: &mut [Duration], p: usize) -> u128 {
    if samples.is_empty() {
        return 0;
    }
    samples.sort();
    let rank = (samples.len() * p).div_ceil(100).clamp(1, samples.len());
    samples[rank - 1].as_millis()
}

// ---------------------------------------------------------------------------------------------
// The binary

/// `taskmail run --json`, the binary itself: banner on stderr, JSON Lines events on stdout, a
/// task served, SIGTERM drains and exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_run_command_serves_tasks_until_sigterm() {
    use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, BufReader};
    on_every_server(|server| async move {
        let label = server.label();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, worker_config_text(&server, dir.path(), "echo", "")).unwrap();
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_taskmail"))
            .arg("-c")
            .arg(&path)
            .args(["run", "--json"])
            .env("HOME", dir.path())
            .env_remove("XDG_CONFIG_HOME")
            .env("TASKMAIL_LOG", "info")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut stderr = child.stderr.take().unwrap();
        let mut events: Vec<serde_json::Value> = Vec::new();
        let mut next_event = async |events: &mut Vec<serde_json::Value>, name: &str| {
            loop {
                let line = tokio::time::timeout(REPLY_TIMEOUT, lines.next_line())
                    .await
                    .unwrap_or_else(|_| panic!("{label}: no '{name}' event; got {events:#?}"))
                    .unwrap()
                    .unwrap_or_else(|| {
                        panic!("{label}: stdout closed before '{name}'; got {events:#?}")
                    });
                let event: serde_json::Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("{label}: not JSON: {line:?}: {e}"));
                events.push(event.clone());
                if event["event"] == name {
                    return event;
                }
            }
        };
        next_event(&mut events, "ready").await;
        let dispatcher = Mailer::new(&server, "dispatcher").await;
        let token = support::unique_token();
        let id = task_id(&token, "cli");
        dispatcher
            .dispatch(&id, &format!("From the CLI {token}"), None, None)
            .await;
        let result = next_event(&mut events, "result").await;
        assert_eq!(result["taskId"], id.as_str(), "{label}");
        assert_eq!(result["status"], "completed", "{label}");
        for name in ["received", "acked", "started"] {
            assert!(
                events
                    .iter()
                    .any(|e| e["event"] == name && e["taskId"] == id.as_str()),
                "{label}: a '{name}' event: {events:#?}"
            );
        }
        let mail = dispatcher.wait_intent(&id, "task.result").await;
        assert!(mail.result().unwrap().output.contains(&token));
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(child.id().unwrap()).unwrap()),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let stopped = next_event(&mut events, "stopped").await;
        assert_eq!(stopped["interrupted"], 0, "{label}");
        let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
            .await
            .unwrap()
            .unwrap();
        let mut err = String::new();
        stderr.read_to_string(&mut err).await.unwrap();
        assert_eq!(status.code(), Some(0), "{label}: {err}");
        for expected in [
            concat!("taskmail ", env!("CARGO_PKG_VERSION"), " worker"),
            "account      worker <worker@",
            "session      http://127.0.0.1:",
            "api          http://127.0.0.1:",
            "push         auto",
            "state dir    ",
            "agent        echo",
            "concurrency  2",
            "SIGTERM received",
        ] {
            assert!(
                err.contains(expected),
                "{label}: '{expected}' on stderr:\n{err}"
            );
        }
        // Secrets never appear in logs, `--json` output or mail.
        let events_text = serde_json::to_string(&events).unwrap();
        let raw = format!("{:?}", mail.fetched.inbound);
        for (what, text) in [
            ("stderr", &err),
            ("--json events", &events_text),
            ("the result mail", &raw),
        ] {
            assert!(
                !text.contains(server.password.as_str()),
                "{label}: the account password appears in {what}"
            );
        }
    })
    .await;
}

/// An invalid config stops `taskmail run` before it connects anywhere: exit 2, every problem
/// listed (and one JSON error object on stdout with `--json`). Needs no server.
#[test]
fn the_run_command_refuses_an_invalid_config_with_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(
        &path,
        r#"
[accounts.worker]
email = "worker@example.test"
password = { raw = "x" }
smtp = { host = "127.0.0.1", port = 99999, tls = "plaintext", allow-plaintext = true }
jmap = { session-url = "http://127.0.0.1:1/.well-known/jmap" }
[worker]
concurrency = 0
"#,
    )
    .unwrap();
    let run = |json: bool| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_taskmail"));
        command
            .arg("-c")
            .arg(&path)
            .arg("run")
            .env("HOME", dir.path());
        if json {
            command.arg("--json");
        }
        command.output().unwrap()
    };
    let human = run(false);
    assert_eq!(human.status.code(), Some(2));
    let err = String::from_utf8_lossy(&human.stderr);
    assert!(err.contains("accounts.worker.smtp.port"), "{err}");
    assert!(err.contains("worker.concurrency"), "{err}");
    let json = run(true);
    assert_eq!(json.status.code(), Some(2));
    let line: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(line["event"], "error");
    assert_eq!(line["kind"], "config");
    assert!(line["details"].as_array().unwrap().len() >= 2, "{line}");
}
