//! Tests of the local store: every method, the compare-and-set race, migrations, retention.

use std::path::Path;
use std::sync::{Arc, Barrier};

use chrono::{DateTime, TimeDelta, Utc};
use rusqlite::Connection;

use super::*;
use crate::wire::aamp::{Priority, Status, TaskId, TaskResult};

const ACCOUNT: &str = "work";

/// A fixed instant plus `secs`.
fn t(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_700_000_000 + secs, 0).unwrap()
}

fn days(n: i64) -> TimeDelta {
    TimeDelta::days(n)
}

fn mem() -> Store {
    Store::open_in_memory().unwrap()
}

fn tid(s: &str) -> TaskId {
    TaskId::new(s)
}

fn worker_task(id: &str, state: TaskState) -> NewTask {
    NewTask::new(ACCOUNT, tid(id), Role::Worker, state, "boss@example.com")
}

fn entry(message_id: &str, intent: &str, direction: Direction, at: DateTime<Utc>) -> ThreadEntry {
    ThreadEntry {
        message_id: message_id.to_owned(),
        intent: intent.to_owned(),
        direction,
        at,
    }
}

fn pragma_text(conn: &Connection, name: &str) -> String {
    conn.query_row(&format!("PRAGMA {name}"), [], |row| {
        row.get::<_, rusqlite::types::Value>(0)
    })
    .map(|v| match v {
        rusqlite::types::Value::Integer(i) => i.to_string(),
        rusqlite::types::Value::Text(s) => s,
        other => format!("{other:?}"),
    })
    .unwrap()
}

fn tables(conn: &Connection) -> Vec<String> {
    let mut stmt = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        .unwrap();
    stmt.query_map([], |row| row.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

// ---- types ------------------------------------------------------------------------------------

#[test]
fn store_is_send() {
    fn assert_send<T: Send>() {}
    assert_send::<Store>();
    assert_send::<StoreError>();
}

#[test]
fn task_states_round_trip_and_terminal_sql_matches() {
    for state in TaskState::ALL {
        assert_eq!(TaskState::parse(state.as_str()), Some(state));
        assert_eq!(state.to_string(), state.as_str());
        let quoted = format!("'{}'", state.as_str());
        assert_eq!(
            tasks::TERMINAL_SQL.contains(&quoted),
            state.is_terminal(),
            "{state}"
        );
    }
    assert_eq!(TaskState::parse("RUNNING"), None);
    for role in [Role::Worker, Role::Dispatcher] {
        assert_eq!(Role::parse(role.as_str()), Some(role));
        assert!(TaskState::Completed.is_valid_for(role));
        assert!(TaskState::Expired.is_valid_for(role));
    }
    assert!(TaskState::Running.is_valid_for(Role::Worker));
    assert!(!TaskState::Running.is_valid_for(Role::Dispatcher));
    assert!(!TaskState::Dispatched.is_valid_for(Role::Worker));
    assert_eq!(Role::Worker.states().len(), 9);
    assert_eq!(Role::Dispatcher.states().len(), 8);
    assert_eq!(
        TaskState::from_status(Status::Rejected),
        TaskState::Rejected
    );
    for d in [Direction::In, Direction::Out] {
        assert_eq!(Direction::parse(d.as_str()), Some(d));
    }
    for s in [
        OutboxStatus::Pending,
        OutboxStatus::Sent,
        OutboxStatus::Dead,
    ] {
        assert_eq!(OutboxStatus::parse(s.as_str()), Some(s));
    }
}

#[test]
fn error_messages_start_with_cannot() {
    let errors = [
        StoreError::TooNew {
            found: 9,
            supported: 1,
        },
        StoreError::InvalidState {
            role: "dispatcher",
            state: "running",
        },
        StoreError::UnknownValue {
            column: "state",
            value: "x".into(),
        },
        StoreError::NoSuchTask {
            account: "a".into(),
            task_id: "t".into(),
            role: "worker",
            message_id: "m@x".into(),
        },
    ];
    for e in errors {
        assert!(e.to_string().starts_with("cannot "), "{e}");
        assert!(!e.is_busy());
    }
}

// ---- open and migrations ----------------------------------------------------------------------

#[test]
fn open_creates_dirs_and_sets_pragmas() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a/b/state.sqlite3");
    let store = Store::open(&path).unwrap();
    assert!(path.exists());
    assert_eq!(store.path(), Some(path.as_path()));
    assert_eq!(pragma_text(&store.conn, "journal_mode"), "wal");
    assert_eq!(pragma_text(&store.conn, "synchronous"), "1");
    assert_eq!(pragma_text(&store.conn, "foreign_keys"), "1");
    assert_eq!(pragma_text(&store.conn, "busy_timeout"), "5000");
    assert_eq!(
        pragma_text(&store.conn, "user_version"),
        schema::SCHEMA_VERSION.to_string()
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&dir.path().join("a/b")), 0o700);
    }
}

#[test]
fn open_reports_an_unusable_path() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plain");
    std::fs::write(&file, b"x").unwrap();
    let err = Store::open(&file.join("store.sqlite3")).unwrap_err();
    assert!(matches!(err, StoreError::CreateDir { .. }), "{err:?}");
    assert!(
        err.to_string()
            .starts_with("cannot create the state directory")
    );
    assert!(std::error::Error::source(&err).is_some());

    // A file that is not a database.
    std::fs::write(
        &file,
        b"this is not sqlite, not at all, not even close......",
    )
    .unwrap();
    let err = Store::open(&file).unwrap_err();
    assert!(err.to_string().starts_with("cannot "), "{err}");
}

#[test]
fn migrates_from_an_empty_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sqlite3");
    {
        let conn = Connection::open(&path).unwrap();
        assert_eq!(schema::user_version(&conn).unwrap(), 0);
    }
    let store = Store::open(&path).unwrap();
    let latest = i64::try_from(schema::SCHEMA_VERSION).unwrap();
    assert_eq!(schema::user_version(&store.conn).unwrap(), latest);
    let names = tables(&store.conn);
    for table in [
        "audit",
        "jmap_state",
        "kv",
        "message_index",
        "outbox",
        "processed",
        "tasks",
    ] {
        assert!(names.iter().any(|n| n == table), "{table} in {names:?}");
    }
    assert_eq!(Store::schema_version(), schema::SCHEMA_VERSION);
}

#[test]
fn reopening_keeps_data_and_version() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sqlite3");
    {
        let store = Store::open(&path).unwrap();
        store.set_jmap_state(ACCOUNT, "s42", t(0)).unwrap();
        store
            .upsert_task(&worker_task("t1", TaskState::Queued), t(0))
            .unwrap();
        store
            .mark_processed(ACCOUNT, "e1", Some("m1@x"), "admitted", None, t(0))
            .unwrap();
    }
    let mut store = Store::open(&path).unwrap();
    assert_eq!(store.jmap_state(ACCOUNT).unwrap().as_deref(), Some("s42"));
    assert!(store.is_processed(ACCOUNT, "e1").unwrap());
    let task = store.get_task(ACCOUNT, &tid("t1"), Role::Worker).unwrap();
    assert_eq!(task.unwrap().state, TaskState::Queued);
    // Opening applied every later migration; the list is now a no-op.
    assert_eq!(
        schema::migrate(&mut store.conn, schema::MIGRATIONS).unwrap(),
        schema::SCHEMA_VERSION
    );
    assert_eq!(
        schema::user_version(&store.conn).unwrap(),
        i64::try_from(schema::SCHEMA_VERSION).unwrap()
    );
}

#[test]
fn a_later_migration_applies_on_v1_once() {
    let mut store = mem();
    store
        .upsert_task(&worker_task("t1", TaskState::Queued), t(0))
        .unwrap();
    let v2 = "ALTER TABLE tasks ADD COLUMN note TEXT;";
    let mut list = schema::MIGRATIONS.to_vec();
    list.push(v2);
    let n = schema::SCHEMA_VERSION;
    let next = i64::try_from(n + 1).unwrap();
    assert_eq!(schema::migrate(&mut store.conn, &list).unwrap(), n);
    assert_eq!(schema::user_version(&store.conn).unwrap(), next);
    // Again: nothing to do (the ALTER would fail if it ran twice).
    assert_eq!(schema::migrate(&mut store.conn, &list).unwrap(), n + 1);
    let note: Option<String> = store
        .conn
        .query_row("SELECT note FROM tasks WHERE task_id = 't1'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(note, None);
    // The shorter list now meets a newer file.
    let err = schema::migrate(&mut store.conn, schema::MIGRATIONS).unwrap_err();
    assert!(
        matches!(err, StoreError::TooNew { found, supported } if found == next && supported == n),
        "{err:?}"
    );
}

#[test]
fn a_failing_migration_leaves_the_previous_version() {
    let mut store = mem();
    let bad = "CREATE TABLE half (x INTEGER); THIS IS NOT SQL;";
    let mut list = schema::MIGRATIONS.to_vec();
    list.push(bad);
    let n = schema::SCHEMA_VERSION;
    let err = schema::migrate(&mut store.conn, &list).unwrap_err();
    assert!(
        matches!(err, StoreError::Migrate { version, .. } if version == n + 1),
        "{err:?}"
    );
    assert_eq!(
        schema::user_version(&store.conn).unwrap(),
        i64::try_from(n).unwrap()
    );
    assert!(!tables(&store.conn).iter().any(|n| n == "half"));
}

#[test]
fn a_newer_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sqlite3");
    {
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", 7).unwrap();
    }
    let err = Store::open(&path).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "cannot use a store at schema version 7: this taskmail knows versions up to {}",
            schema::SCHEMA_VERSION
        )
    );
}

// ---- JMAP state and kv ------------------------------------------------------------------------

#[test]
fn jmap_state_per_account() {
    let store = mem();
    assert_eq!(store.jmap_state(ACCOUNT).unwrap(), None);
    store.set_jmap_state(ACCOUNT, "s1", t(0)).unwrap();
    store.set_jmap_state("other", "x9", t(0)).unwrap();
    store.set_jmap_state(ACCOUNT, "s2", t(1)).unwrap();
    assert_eq!(store.jmap_state(ACCOUNT).unwrap().as_deref(), Some("s2"));
    assert_eq!(store.jmap_state("other").unwrap().as_deref(), Some("x9"));
}

#[test]
fn kv_get_set_delete() {
    let store = mem();
    assert_eq!(store.kv_get("last-push-kind").unwrap(), None);
    store.kv_set("last-push-kind", "websocket", t(0)).unwrap();
    store.kv_set("last-push-kind", "eventsource", t(1)).unwrap();
    assert_eq!(
        store.kv_get("last-push-kind").unwrap().as_deref(),
        Some("eventsource")
    );
    assert!(store.kv_delete("last-push-kind").unwrap());
    assert!(!store.kv_delete("last-push-kind").unwrap());
    assert_eq!(store.kv_get("last-push-kind").unwrap(), None);
}

// ---- processed --------------------------------------------------------------------------------

#[test]
fn processed_by_email_id_and_message_id() {
    let store = mem();
    assert!(!store.is_processed(ACCOUNT, "e1").unwrap());
    assert!(!store.seen_message_id(ACCOUNT, "m1@x").unwrap());
    store
        .mark_processed(ACCOUNT, "e1", Some("<m1@x>"), "admitted", None, t(0))
        .unwrap();
    store
        .mark_processed(ACCOUNT, "e2", None, "ignored:not-aamp", None, t(0))
        .unwrap();
    assert!(store.is_processed(ACCOUNT, "e1").unwrap());
    assert!(store.is_processed(ACCOUNT, "e2").unwrap());
    assert!(!store.is_processed("other", "e1").unwrap());
    // Brackets do not matter; the account does.
    assert!(store.seen_message_id(ACCOUNT, "m1@x").unwrap());
    assert!(store.seen_message_id(ACCOUNT, " <m1@x> ").unwrap());
    assert!(!store.seen_message_id("other", "m1@x").unwrap());

    // Marking again keeps the first time, takes the later expiry and the new verdict.
    store
        .mark_processed(ACCOUNT, "e1", None, "rejected", Some(t(100)), t(50))
        .unwrap();
    store
        .mark_processed(ACCOUNT, "e1", None, "rejected:again", Some(t(10)), t(60))
        .unwrap();
    let (verdict, at, exp, mid): (String, i64, i64, String) = store
        .conn
        .query_row(
            "SELECT verdict, processed_at, expires_at, message_id FROM processed
             WHERE email_id = 'e1'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .unwrap();
    assert_eq!(verdict, "rejected:again");
    assert_eq!(at, ms(t(0)));
    assert_eq!(exp, ms(t(100)));
    assert_eq!(mid, "m1@x");
}

#[test]
fn prune_processed_keeps_future_expiry_and_open_tasks() {
    let store = mem();
    let now = t(0) + days(30);
    // Old, no expiry: goes.
    store
        .mark_processed(ACCOUNT, "old", Some("old@x"), "admitted", None, t(0))
        .unwrap();
    // Old, expiry passed: goes.
    store
        .mark_processed(
            ACCOUNT,
            "expired",
            None,
            "admitted",
            Some(t(0) + days(20)),
            t(0),
        )
        .unwrap();
    // Old, expiry in the future: stays.
    store
        .mark_processed(
            ACCOUNT,
            "future",
            None,
            "admitted",
            Some(now + days(1)),
            t(0),
        )
        .unwrap();
    // Recent (inside 7 days): stays.
    store
        .mark_processed(ACCOUNT, "recent", None, "admitted", None, now - days(6))
        .unwrap();
    // Old, but the dispatch of an open task: stays with the flag.
    store
        .mark_processed(ACCOUNT, "open", Some("d1@x"), "admitted", None, t(0))
        .unwrap();
    store
        .upsert_task(&worker_task("t1", TaskState::Running), t(0))
        .unwrap();
    store
        .index_message(
            ACCOUNT,
            &tid("t1"),
            Role::Worker,
            &entry("d1@x", "task.dispatch", Direction::In, t(0)),
        )
        .unwrap();

    // A cutoff later than now - 7 days is clamped: "recent" survives even with cutoff = now.
    assert_eq!(store.prune_processed(now, now, true).unwrap(), 2);
    for (id, kept) in [
        ("old", false),
        ("expired", false),
        ("future", true),
        ("recent", true),
        ("open", true),
    ] {
        assert_eq!(store.is_processed(ACCOUNT, id).unwrap(), kept, "{id}");
    }
    // Without the flag, the open task's mail goes too.
    assert_eq!(store.prune_processed(now, now, false).unwrap(), 1);
    assert!(!store.is_processed(ACCOUNT, "open").unwrap());
    // Once the expiry passes, the future row goes (and "recent" is 8 days old by then).
    let later = now + days(2);
    assert_eq!(store.prune_processed(later, later, true).unwrap(), 2);
    assert!(!store.is_processed(ACCOUNT, "future").unwrap());
    assert!(!store.is_processed(ACCOUNT, "recent").unwrap());
}

// ---- tasks ------------------------------------------------------------------------------------

#[test]
fn upsert_inserts_then_refreshes_without_moving_state() {
    let store = mem();
    let mut task = worker_task("t1", TaskState::Received);
    task.title = "First".into();
    task.priority = Priority::High;
    task.expires_at = Some(t(3600));
    task.session_key = Some("sess".into());
    task.dispatch_message_id = Some("<d1@x>".into());
    assert!(store.upsert_task(&task, t(0)).unwrap());
    let got = store
        .get_task(ACCOUNT, &tid("t1"), Role::Worker)
        .unwrap()
        .unwrap();
    assert_eq!(got.state, TaskState::Received);
    assert_eq!(got.title, "First");
    assert_eq!(got.priority, Priority::High);
    assert_eq!(got.expires_at, Some(t(3600)));
    assert_eq!(got.session_key.as_deref(), Some("sess"));
    assert_eq!(got.dispatch_message_id.as_deref(), Some("d1@x"));
    assert_eq!(got.peer, "boss@example.com");
    assert_eq!(got.created_at, t(0));
    assert_eq!(got.updated_at, t(0));
    assert_eq!(got.attempts, 0);
    assert_eq!(got.result, None);
    assert_eq!(got.help_question, None);

    // A follow-up: new title, no session key given, another state asked for.
    let mut again = worker_task("t1", TaskState::Completed);
    again.title = "Second".into();
    assert!(!store.upsert_task(&again, t(10)).unwrap());
    let got = store
        .get_task(ACCOUNT, &tid("t1"), Role::Worker)
        .unwrap()
        .unwrap();
    assert_eq!(got.state, TaskState::Received);
    assert_eq!(got.title, "Second");
    assert_eq!(got.priority, Priority::Normal);
    assert_eq!(got.session_key.as_deref(), Some("sess"));
    assert_eq!(got.dispatch_message_id.as_deref(), Some("d1@x"));
    assert_eq!(got.created_at, t(0));
    assert_eq!(got.updated_at, t(10));

    // The same task id on the other side is another row.
    let dispatcher = NewTask::new(
        ACCOUNT,
        tid("t1"),
        Role::Dispatcher,
        TaskState::Dispatched,
        "w@x",
    );
    assert!(store.upsert_task(&dispatcher, t(0)).unwrap());
    assert!(
        store
            .get_task("other", &tid("t1"), Role::Worker)
            .unwrap()
            .is_none()
    );
}

#[test]
fn upsert_refuses_a_state_of_the_other_role() {
    let store = mem();
    let err = store
        .upsert_task(&worker_task("t1", TaskState::Dispatched), t(0))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "cannot put a worker task in state 'dispatched'"
    );
}

#[test]
fn list_tasks_filters_and_orders() {
    let store = mem();
    let specs = [
        ("a", TaskState::Queued, Priority::Normal, 0),
        ("b", TaskState::Queued, Priority::Urgent, 1),
        ("c", TaskState::Running, Priority::High, 2),
        ("d", TaskState::Queued, Priority::High, 3),
        ("e", TaskState::Completed, Priority::Urgent, 4),
    ];
    for (id, state, priority, at) in specs {
        let mut task = worker_task(id, state);
        task.priority = priority;
        store.upsert_task(&task, t(at)).unwrap();
    }
    let d = NewTask::new(
        "other",
        tid("z"),
        Role::Dispatcher,
        TaskState::Dispatched,
        "w@x",
    );
    store.upsert_task(&d, t(5)).unwrap();

    let ids = |filter: TaskFilter| -> Vec<String> {
        store
            .list_tasks(&filter)
            .unwrap()
            .into_iter()
            .map(|t| t.task_id.to_string())
            .collect()
    };
    assert_eq!(ids(TaskFilter::default()), ["z", "e", "d", "c", "b", "a"]);
    assert_eq!(
        ids(TaskFilter {
            order: TaskOrder::OldestFirst,
            limit: Some(2),
            ..TaskFilter::default()
        }),
        ["a", "b"]
    );
    assert_eq!(
        ids(TaskFilter {
            role: Some(Role::Worker),
            states: vec![TaskState::Queued],
            order: TaskOrder::Queue,
            ..TaskFilter::default()
        }),
        ["b", "d", "a"]
    );
    assert_eq!(
        ids(TaskFilter {
            states: vec![TaskState::Running, TaskState::Completed],
            ..TaskFilter::default()
        }),
        ["e", "c"]
    );
    assert_eq!(
        ids(TaskFilter {
            account: Some("other".into()),
            ..TaskFilter::default()
        }),
        ["z"]
    );
    assert_eq!(
        ids(TaskFilter {
            role: Some(Role::Dispatcher),
            account: Some(ACCOUNT.into()),
            ..TaskFilter::default()
        }),
        Vec::<String>::new()
    );
    assert_eq!(
        ids(TaskFilter {
            limit: Some(0),
            ..TaskFilter::default()
        }),
        Vec::<String>::new()
    );
}

#[test]
fn transition_is_compare_and_set() {
    let store = mem();
    let id = tid("t1");
    store
        .upsert_task(&worker_task("t1", TaskState::Received), t(0))
        .unwrap();
    let tr = |from: &[TaskState], to, at| {
        store
            .transition(ACCOUNT, &id, Role::Worker, from, to, t(at))
            .unwrap()
    };
    assert!(tr(&[TaskState::Received], TaskState::Acked, 1));
    assert!(!tr(&[TaskState::Received], TaskState::Acked, 2));
    assert!(tr(
        &[TaskState::Received, TaskState::Acked],
        TaskState::Queued,
        3
    ));
    assert!(!tr(&[], TaskState::Running, 4));
    let got = store.get_task(ACCOUNT, &id, Role::Worker).unwrap().unwrap();
    assert_eq!(got.state, TaskState::Queued);
    assert_eq!(got.updated_at, t(3));
    // Unknown task, wrong role, wrong account: false.
    assert!(
        !store
            .transition(
                ACCOUNT,
                &tid("nope"),
                Role::Worker,
                &[TaskState::Queued],
                TaskState::Running,
                t(5)
            )
            .unwrap()
    );
    assert!(
        !store
            .transition(
                "other",
                &id,
                Role::Worker,
                &[TaskState::Queued],
                TaskState::Running,
                t(5)
            )
            .unwrap()
    );
    // A state of the other role: an error, nothing changed.
    let err = store
        .transition(
            ACCOUNT,
            &id,
            Role::Worker,
            &[TaskState::Queued],
            TaskState::Answered,
            t(5),
        )
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidState { .. }));
    assert_eq!(
        store
            .get_task(ACCOUNT, &id, Role::Worker)
            .unwrap()
            .unwrap()
            .state,
        TaskState::Queued
    );
}

#[test]
fn two_runners_race_and_exactly_one_wins() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("race.sqlite3");
    const TASKS: usize = 25;
    const THREADS: usize = 4;
    {
        let store = Store::open(&path).unwrap();
        for i in 0..TASKS {
            store
                .upsert_task(&worker_task(&format!("t{i}"), TaskState::Queued), t(0))
                .unwrap();
        }
    }
    let barrier = Arc::new(Barrier::new(THREADS));
    let handles: Vec<_> = (0..THREADS)
        .map(|n| {
            let path = path.clone();
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                // Each thread is its own connection, like a second daemon on the same file.
                let store = Store::open(&path).unwrap();
                let mut won = Vec::new();
                for i in 0..TASKS {
                    barrier.wait();
                    let id = tid(&format!("t{i}"));
                    let ok = if n % 2 == 0 {
                        store
                            .transition(
                                ACCOUNT,
                                &id,
                                Role::Worker,
                                &[TaskState::Queued],
                                TaskState::Running,
                                t(1),
                            )
                            .unwrap()
                    } else {
                        store
                            .record_run_start(ACCOUNT, &id, &[TaskState::Queued], t(1))
                            .unwrap()
                    };
                    won.push(ok);
                }
                won
            })
        })
        .collect();
    let results: Vec<Vec<bool>> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    for i in 0..TASKS {
        let winners = results.iter().filter(|r| r[i]).count();
        assert_eq!(winners, 1, "task t{i}");
    }
    let store = Store::open(&path).unwrap();
    let running = store
        .list_tasks(&TaskFilter {
            states: vec![TaskState::Running],
            ..TaskFilter::default()
        })
        .unwrap();
    assert_eq!(running.len(), TASKS);
    assert!(running.iter().all(|t| t.attempts <= 1));
}

#[test]
fn run_start_counts_attempts() {
    let store = mem();
    let id = tid("t1");
    store
        .upsert_task(&worker_task("t1", TaskState::Queued), t(0))
        .unwrap();
    assert!(
        store
            .record_run_start(ACCOUNT, &id, &[TaskState::Queued], t(1))
            .unwrap()
    );
    assert!(
        !store
            .record_run_start(ACCOUNT, &id, &[TaskState::Queued], t(2))
            .unwrap()
    );
    // Interrupted (say, a restart): back to the queue, and run again.
    assert!(
        store
            .transition(
                ACCOUNT,
                &id,
                Role::Worker,
                &[TaskState::Running],
                TaskState::Queued,
                t(3)
            )
            .unwrap()
    );
    assert!(
        store
            .record_run_start(ACCOUNT, &id, &[TaskState::Queued], t(4))
            .unwrap()
    );
    let got = store.get_task(ACCOUNT, &id, Role::Worker).unwrap().unwrap();
    assert_eq!(got.state, TaskState::Running);
    assert_eq!(got.attempts, 2);
    assert_eq!(got.updated_at, t(4));
    // A dispatcher row with the same id is not a run.
    let d = NewTask::new(
        ACCOUNT,
        tid("t2"),
        Role::Dispatcher,
        TaskState::Acked,
        "w@x",
    );
    store.upsert_task(&d, t(0)).unwrap();
    assert!(
        !store
            .record_run_start(ACCOUNT, &tid("t2"), &[TaskState::Acked], t(5))
            .unwrap()
    );
}

#[test]
fn results_are_stored_once_and_capped() {
    let store = mem();
    let id = tid("t1");
    store
        .upsert_task(&worker_task("t1", TaskState::Running), t(0))
        .unwrap();
    let result = TaskResult {
        status: Status::Completed,
        output: "done".into(),
        error_msg: None,
        structured_result: Some(serde_json::json!({"ok": true, "n": 3})),
    };
    assert!(
        store
            .record_result(ACCOUNT, &id, Role::Worker, &result, t(1))
            .unwrap()
    );
    let got = store.get_task(ACCOUNT, &id, Role::Worker).unwrap().unwrap();
    assert_eq!(got.state, TaskState::Completed);
    let stored = got.result.unwrap();
    assert_eq!(stored.status, Status::Completed);
    assert_eq!(stored.output, "done");
    assert_eq!(stored.error, None);
    assert_eq!(
        stored.structured_result.as_deref(),
        Some(r#"{"ok":true,"n":3}"#)
    );
    assert!(!stored.truncated);
    // Terminal: a second result is refused.
    assert!(
        !store
            .record_result(ACCOUNT, &id, Role::Worker, &result, t(2))
            .unwrap()
    );

    // A dispatcher records the peer's rejection, with a huge output cut on a char boundary.
    let d = NewTask::new(
        ACCOUNT,
        tid("t2"),
        Role::Dispatcher,
        TaskState::Acked,
        "w@x",
    );
    store.upsert_task(&d, t(0)).unwrap();
    let big = TaskResult {
        status: Status::Rejected,
        output: "é".repeat(MAX_OUTPUT_BYTES),
        error_msg: Some("no".into()),
        structured_result: Some(serde_json::Value::String("x".repeat(MAX_OUTPUT_BYTES))),
    };
    assert!(
        store
            .record_result(ACCOUNT, &tid("t2"), Role::Dispatcher, &big, t(3))
            .unwrap()
    );
    let got = store
        .get_task(ACCOUNT, &tid("t2"), Role::Dispatcher)
        .unwrap()
        .unwrap();
    assert_eq!(got.state, TaskState::Rejected);
    let stored = got.result.unwrap();
    assert_eq!(stored.status, Status::Rejected);
    assert_eq!(stored.output.len(), MAX_OUTPUT_BYTES);
    assert!(stored.output.chars().all(|c| c == 'é'));
    assert_eq!(stored.error.as_deref(), Some("no"));
    assert_eq!(stored.structured_result, None);
    assert!(stored.truncated);

    // Cancelled first: the late result is not stored.
    store
        .upsert_task(&worker_task("t3", TaskState::Running), t(0))
        .unwrap();
    assert!(
        store
            .transition(
                ACCOUNT,
                &tid("t3"),
                Role::Worker,
                &[TaskState::Running],
                TaskState::Cancelled,
                t(1)
            )
            .unwrap()
    );
    assert!(
        !store
            .record_result(ACCOUNT, &tid("t3"), Role::Worker, &result, t(2))
            .unwrap()
    );
    let got = store
        .get_task(ACCOUNT, &tid("t3"), Role::Worker)
        .unwrap()
        .unwrap();
    assert_eq!(got.state, TaskState::Cancelled);
    assert_eq!(got.result, None);
}

#[test]
fn help_requests_keep_the_question() {
    let store = mem();
    let id = tid("t1");
    assert!(
        !store
            .record_help_needed(ACCOUNT, &id, Role::Worker, "which?", t(0))
            .unwrap()
    );
    store
        .upsert_task(&worker_task("t1", TaskState::Running), t(0))
        .unwrap();
    assert!(
        store
            .record_help_needed(ACCOUNT, &id, Role::Worker, "which branch?", t(1))
            .unwrap()
    );
    let got = store.get_task(ACCOUNT, &id, Role::Worker).unwrap().unwrap();
    assert_eq!(got.state, TaskState::HelpNeeded);
    assert_eq!(got.help_question.as_deref(), Some("which branch?"));
    // The answer resumes the run.
    assert!(
        store
            .record_run_start(ACCOUNT, &id, &[TaskState::HelpNeeded], t(2))
            .unwrap()
    );
}

#[test]
fn ten_thousand_tasks_insert_and_list() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("many.sqlite3")).unwrap();
    const N: i64 = 10_000;
    // One transaction: one commit instead of 10,000.
    store
        .atomically(|store| {
            for i in 0..N {
                let state = if i % 4 == 0 {
                    TaskState::Completed
                } else {
                    TaskState::Queued
                };
                let mut task = worker_task(&format!("task-{i:05}"), state);
                task.title = format!("Task {i}");
                assert!(store.upsert_task(&task, t(i))?);
            }
            Ok(())
        })
        .unwrap();
    let all = store.list_tasks(&TaskFilter::default()).unwrap();
    assert_eq!(all.len(), 10_000);
    assert_eq!(all[0].task_id.as_str(), "task-09999");
    assert_eq!(all[9_999].task_id.as_str(), "task-00000");
    assert!(all.windows(2).all(|w| w[0].created_at > w[1].created_at));
    let queued = store
        .list_tasks(&TaskFilter {
            states: vec![TaskState::Queued],
            order: TaskOrder::Queue,
            ..TaskFilter::default()
        })
        .unwrap();
    assert_eq!(queued.len(), 7_500);
    assert_eq!(queued[0].task_id.as_str(), "task-00001");
    let stats = store.stats().unwrap();
    assert_eq!(stats.tasks, 10_000);
    assert_eq!(stats.open_tasks, 7_500);
}

#[test]
fn atomically_commits_all_or_nothing() {
    let store = mem();
    // Ok: both writes land.
    store
        .atomically(|s| {
            s.mark_processed(ACCOUNT, "e1", None, "admitted", None, t(0))?;
            s.set_jmap_state(ACCOUNT, "s1", t(0))
        })
        .unwrap();
    assert!(store.is_processed(ACCOUNT, "e1").unwrap());
    assert_eq!(store.jmap_state(ACCOUNT).unwrap().as_deref(), Some("s1"));

    // Err: nothing lands, and the error comes back as it was.
    let err = store
        .atomically(|s| {
            s.mark_processed(ACCOUNT, "e2", None, "admitted", None, t(1))?;
            s.set_jmap_state(ACCOUNT, "s2", t(1))?;
            s.upsert_task(&worker_task("t1", TaskState::Dispatched), t(1))
        })
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidState { .. }), "{err:?}");
    assert!(!store.is_processed(ACCOUNT, "e2").unwrap());
    assert_eq!(store.jmap_state(ACCOUNT).unwrap().as_deref(), Some("s1"));

    // Nested: an inner failure that the outer step handles undoes only the inner writes.
    store
        .atomically(|s| {
            s.kv_set("outer", "1", t(2))?;
            let inner = s.atomically(|s| {
                s.kv_set("inner", "1", t(2))?;
                s.index_message(
                    ACCOUNT,
                    &tid("missing"),
                    Role::Worker,
                    &entry("m@x", "task.ack", Direction::Out, t(2)),
                )
            });
            assert!(matches!(inner, Err(StoreError::NoSuchTask { .. })));
            Ok(())
        })
        .unwrap();
    assert_eq!(store.kv_get("outer").unwrap().as_deref(), Some("1"));
    assert_eq!(store.kv_get("inner").unwrap(), None);
    // And the connection is back in autocommit mode.
    assert!(store.conn.is_autocommit());
}

// ---- thread index -----------------------------------------------------------------------------

#[test]
fn message_index_threads_and_lookups() {
    let store = mem();
    let id = tid("t1");
    let err = store
        .index_message(
            ACCOUNT,
            &id,
            Role::Worker,
            &entry("d1@x", "task.dispatch", Direction::In, t(0)),
        )
        .unwrap_err();
    assert!(matches!(err, StoreError::NoSuchTask { .. }), "{err:?}");

    store
        .upsert_task(&worker_task("t1", TaskState::Received), t(0))
        .unwrap();
    let thread = [
        entry("<d1@x>", "task.dispatch", Direction::In, t(0)),
        entry("a1@y", "task.ack", Direction::Out, t(1)),
        entry("h1@y", "task.help_needed", Direction::Out, t(2)),
        entry("r1@x", "human.reply", Direction::In, t(3)),
    ];
    for e in &thread {
        assert!(store.index_message(ACCOUNT, &id, Role::Worker, e).unwrap());
    }
    assert!(
        !store
            .index_message(ACCOUNT, &id, Role::Worker, &thread[1])
            .unwrap()
    );
    let got = store.thread(ACCOUNT, &id, Role::Worker).unwrap();
    assert_eq!(got.len(), 4);
    assert_eq!(got[0].message_id, "d1@x");
    assert_eq!(got[0].direction, Direction::In);
    assert_eq!(got[2].intent, "task.help_needed");
    assert_eq!(got[3].at, t(3));
    let task = store.get_task(ACCOUNT, &id, Role::Worker).unwrap().unwrap();
    assert_eq!(task.last_message_id.as_deref(), Some("r1@x"));

    // Another task, dispatched by us to ourselves: the same Message-ID on both sides.
    let d = NewTask::new(
        ACCOUNT,
        tid("t2"),
        Role::Dispatcher,
        TaskState::Dispatched,
        "me@x",
    );
    store.upsert_task(&d, t(0)).unwrap();
    store
        .upsert_task(&worker_task("t2", TaskState::Received), t(0))
        .unwrap();
    let e2 = entry("d2@x", "task.dispatch", Direction::Out, t(5));
    store
        .index_message(ACCOUNT, &tid("t2"), Role::Dispatcher, &e2)
        .unwrap();
    let e2in = entry("d2@x", "task.dispatch", Direction::In, t(6));
    store
        .index_message(ACCOUNT, &tid("t2"), Role::Worker, &e2in)
        .unwrap();

    let ids = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    // The first indexed id in the given order wins.
    assert_eq!(
        store
            .task_for_message_ids(ACCOUNT, &ids(&["unknown@z", "<h1@y>", "d2@x"]), None)
            .unwrap(),
        Some((tid("t1"), Role::Worker))
    );
    assert_eq!(
        store
            .task_for_message_ids(ACCOUNT, &ids(&["d2@x", "h1@y"]), None)
            .unwrap(),
        Some((tid("t2"), Role::Worker))
    );
    assert_eq!(
        store
            .task_for_message_ids(ACCOUNT, &ids(&["d2@x"]), Some(Role::Dispatcher))
            .unwrap(),
        Some((tid("t2"), Role::Dispatcher))
    );
    assert_eq!(
        store
            .task_for_message_ids(ACCOUNT, &ids(&["h1@y"]), Some(Role::Dispatcher))
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .task_for_message_ids("other", &ids(&["h1@y"]), None)
            .unwrap(),
        None
    );
    assert_eq!(
        store.task_for_message_ids(ACCOUNT, &[], None).unwrap(),
        None
    );
    assert!(
        store
            .thread(ACCOUNT, &tid("nope"), Role::Worker)
            .unwrap()
            .is_empty()
    );
}

// ---- outbox -----------------------------------------------------------------------------------

fn outgoing<'a>(message_id: &'a str, rcpt: &'a [String], bytes: &'a [u8]) -> OutgoingMessage<'a> {
    OutgoingMessage {
        message_id,
        account: ACCOUNT,
        smtp_from: "me@example.com",
        rcpt_to: rcpt,
        bytes,
        task_id: None,
        intent: "task.ack",
    }
}

#[test]
fn outbox_put_is_idempotent_on_message_id() {
    let store = mem();
    let rcpt = vec!["boss@example.com".to_owned(), "cc@example.com".to_owned()];
    let task = tid("t1");
    let mut first = outgoing("<m1@example.com>", &rcpt, b"first bytes");
    first.task_id = Some(&task);
    assert!(store.outbox_put(&first, t(0)).unwrap());
    assert!(
        !store
            .outbox_put(&outgoing("m1@example.com", &rcpt, b"other bytes"), t(1))
            .unwrap()
    );
    let item = store.outbox_get("m1@example.com").unwrap().unwrap();
    assert_eq!(item.bytes, b"first bytes");
    assert_eq!(item.rcpt_to, rcpt);
    assert_eq!(item.task_id, Some(task));
    assert_eq!(item.intent, "task.ack");
    assert_eq!(item.smtp_from, "me@example.com");
    assert_eq!(item.status, OutboxStatus::Pending);
    assert_eq!(item.attempts, 0);
    assert_eq!(item.created_at, t(0));
    assert_eq!(item.next_attempt_at, t(0));
    assert_eq!(item.sent_at, None);
    assert_eq!(store.outbox_get("nope@x").unwrap(), None);
}

#[test]
fn outbox_lifecycle_retry_dead_and_sent() {
    let store = mem();
    let rcpt = vec!["a@x".to_owned()];
    for (i, id) in ["m1@x", "m2@x", "m3@x"].into_iter().enumerate() {
        let at = t(i64::try_from(i).unwrap());
        assert!(store.outbox_put(&outgoing(id, &rcpt, b"x"), at).unwrap());
    }
    let due = |now, limit| -> Vec<String> {
        store
            .outbox_pending(now, limit)
            .unwrap()
            .into_iter()
            .map(|i| i.message_id)
            .collect()
    };
    assert_eq!(due(t(10), 10), ["m1@x", "m2@x", "m3@x"]);
    assert_eq!(due(t(10), 2), ["m1@x", "m2@x"]);
    assert_eq!(due(t(1), 10), ["m1@x", "m2@x"]);

    // Transient failure: retried from next_attempt_at.
    assert!(
        store
            .outbox_mark_failed("m1@x", "451 try later", false, t(100))
            .unwrap()
    );
    assert_eq!(due(t(10), 10), ["m2@x", "m3@x"]);
    assert_eq!(due(t(100), 10), ["m1@x", "m2@x", "m3@x"]);
    let m1 = store.outbox_get("m1@x").unwrap().unwrap();
    assert_eq!(m1.attempts, 1);
    assert_eq!(m1.last_error.as_deref(), Some("451 try later"));
    assert_eq!(m1.status, OutboxStatus::Pending);

    // Permanent failure: dead, never due again, cannot be marked sent.
    assert!(
        store
            .outbox_mark_failed("m2@x", "550 no such user", true, t(100))
            .unwrap()
    );
    assert_eq!(due(t(1000), 10), ["m1@x", "m3@x"]);
    assert!(!store.outbox_mark_sent("m2@x", t(5)).unwrap());
    assert!(
        !store
            .outbox_mark_failed("m2@x", "again", false, t(5))
            .unwrap()
    );
    assert_eq!(
        store.outbox_get("m2@x").unwrap().unwrap().status,
        OutboxStatus::Dead
    );

    // Sent: once.
    assert!(store.outbox_mark_sent("<m3@x>", t(20)).unwrap());
    assert!(!store.outbox_mark_sent("m3@x", t(21)).unwrap());
    let m3 = store.outbox_get("m3@x").unwrap().unwrap();
    assert_eq!(m3.status, OutboxStatus::Sent);
    assert_eq!(m3.sent_at, Some(t(20)));
    assert_eq!(due(t(1000), 10), ["m1@x"]);
    assert!(!store.outbox_mark_sent("unknown@x", t(21)).unwrap());
}

#[test]
fn a_crash_between_put_and_send_resends_the_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sqlite3");
    let rcpt = vec!["a@x".to_owned()];
    {
        let store = Store::open(&path).unwrap();
        store
            .outbox_put(
                &outgoing("m1@x", &rcpt, b"Message-ID: <m1@x>\r\n\r\nhi"),
                t(0),
            )
            .unwrap();
        // ... the process dies before the SMTP submission.
    }
    let store = Store::open(&path).unwrap();
    // The re-rendered message (new bytes, same id) does not replace the stored one.
    assert!(
        !store
            .outbox_put(&outgoing("m1@x", &rcpt, b"re-rendered"), t(5))
            .unwrap()
    );
    let pending = store.outbox_pending(t(5), 10).unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].message_id, "m1@x");
    assert_eq!(pending[0].bytes, b"Message-ID: <m1@x>\r\n\r\nhi");
}

// ---- audit ------------------------------------------------------------------------------------

fn verdict(at: DateTime<Utc>, verdict: &str) -> AuditEntry {
    AuditEntry {
        at,
        account: ACCOUNT.into(),
        message_id: Some("<m@x>".into()),
        peer: Some("boss@example.com".into()),
        verdict: verdict.into(),
        rule: Some("grant:boss@example.com".into()),
        detail: None,
    }
}

#[test]
fn audit_appends_and_lists() {
    let store = mem();
    let a = store.audit(&verdict(t(0), "admitted")).unwrap();
    let mut long = verdict(t(10), "rejected");
    long.detail = Some("d".repeat(MAX_AUDIT_DETAIL_BYTES + 10));
    let b = store.audit(&long).unwrap();
    let c = store.audit(&verdict(t(20), "quarantined")).unwrap();
    assert!(a < b && b < c);

    let all = store.audit_list(100, None).unwrap();
    assert_eq!(all.len(), 3);
    assert_eq!(all[0].id, a);
    assert_eq!(all[0].entry.message_id.as_deref(), Some("m@x"));
    assert_eq!(all[0].entry.peer.as_deref(), Some("boss@example.com"));
    assert_eq!(
        all[1].entry.detail.as_ref().map(String::len),
        Some(MAX_AUDIT_DETAIL_BYTES)
    );
    // The newest two, oldest first.
    let last: Vec<_> = store
        .audit_list(2, None)
        .unwrap()
        .into_iter()
        .map(|r| r.entry.verdict)
        .collect();
    assert_eq!(last, ["rejected", "quarantined"]);
    let since: Vec<_> = store
        .audit_list(100, Some(t(10)))
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(since, [b, c]);
    assert!(store.audit_list(0, None).unwrap().is_empty());
}

#[test]
fn audit_rows_cannot_be_updated_or_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sqlite3");
    let store = Store::open(&path).unwrap();
    store.audit(&verdict(t(0), "admitted")).unwrap();
    // Even a raw connection that bypasses the API cannot.
    let raw = Connection::open(&path).unwrap();
    for sql in [
        "UPDATE audit SET verdict = 'forged'",
        "DELETE FROM audit",
        "DELETE FROM audit WHERE id = 1",
    ] {
        let err = raw.execute(sql, []).unwrap_err();
        assert!(
            err.to_string().contains("the audit log is append-only"),
            "{sql}: {err}"
        );
    }
    // And prune never touches it.
    store.prune(t(0) + days(10_000)).unwrap();
    let all = store.audit_list(10, None).unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].entry.verdict, "admitted");
}

// ---- retention and stats ----------------------------------------------------------------------

#[test]
fn prune_applies_every_rule_in_one_go() {
    let store = mem();
    let now = t(0) + days(120);
    // Tasks: an old terminal one (goes, with its thread), an old open one, a recent terminal one.
    for (id, state) in [
        ("old-done", TaskState::Completed),
        ("old-open", TaskState::Running),
        ("new-done", TaskState::Rejected),
    ] {
        store.upsert_task(&worker_task(id, state), t(0)).unwrap();
        store
            .index_message(
                ACCOUNT,
                &tid(id),
                Role::Worker,
                &entry(&format!("{id}@x"), "task.dispatch", Direction::In, t(0)),
            )
            .unwrap();
        store
            .mark_processed(
                ACCOUNT,
                id,
                Some(&format!("{id}@x")),
                "admitted",
                None,
                t(0),
            )
            .unwrap();
    }
    // Touch "new-done" recently.
    store
        .index_message(
            ACCOUNT,
            &tid("new-done"),
            Role::Worker,
            &entry("late@x", "task.result", Direction::Out, now - days(1)),
        )
        .unwrap();
    // Processed: one with a future expiry.
    store
        .mark_processed(
            ACCOUNT,
            "future",
            None,
            "admitted",
            Some(now + days(1)),
            t(0),
        )
        .unwrap();
    // Outbox: old sent (goes), recent sent, old dead (goes), old pending (stays).
    let rcpt = vec!["a@x".to_owned()];
    for id in ["sent-old", "sent-new", "dead-old", "pending-old"] {
        store.outbox_put(&outgoing(id, &rcpt, b"x"), t(0)).unwrap();
    }
    store.outbox_mark_sent("sent-old", t(0)).unwrap();
    store.outbox_mark_sent("sent-new", now - days(1)).unwrap();
    store
        .outbox_mark_failed("dead-old", "550", true, t(0))
        .unwrap();
    store.audit(&verdict(t(0), "admitted")).unwrap();

    let before = store.stats().unwrap();
    assert_eq!(before.tasks, 3);
    assert_eq!(before.open_tasks, 1);
    assert_eq!(before.message_index, 4);
    assert_eq!(before.processed, 4);
    assert_eq!(before.outbox_pending, 1);
    assert_eq!(before.outbox_sent, 2);
    assert_eq!(before.outbox_dead, 1);
    assert_eq!(before.audit, 1);

    let report = store.prune(now).unwrap();
    assert_eq!(
        report,
        PruneReport {
            processed: 2, // old-done, new-done; old-open is an open thread, future not expired
            tasks: 1,
            message_index: 1,
            outbox: 2,
        }
    );
    assert_eq!(report.total(), 6);
    assert!(
        store
            .get_task(ACCOUNT, &tid("old-done"), Role::Worker)
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .get_task(ACCOUNT, &tid("old-open"), Role::Worker)
            .unwrap()
            .is_some()
    );
    assert!(store.is_processed(ACCOUNT, "old-open").unwrap());
    assert!(store.is_processed(ACCOUNT, "future").unwrap());
    assert!(!store.is_processed(ACCOUNT, "old-done").unwrap());
    assert_eq!(
        store
            .task_for_message_ids(ACCOUNT, &["old-done@x".to_owned()], None)
            .unwrap(),
        None
    );
    assert!(store.outbox_get("sent-old").unwrap().is_none());
    assert!(store.outbox_get("dead-old").unwrap().is_none());
    assert!(store.outbox_get("sent-new").unwrap().is_some());
    assert!(store.outbox_get("pending-old").unwrap().is_some());
    // Nothing left to do.
    assert_eq!(store.prune(now).unwrap().total(), 0);
}

#[test]
fn stats_count_rows_and_bytes() {
    let store = mem();
    let empty = store.stats().unwrap();
    assert_eq!(empty.path, None);
    assert_eq!(
        empty.schema_version,
        i64::try_from(schema::SCHEMA_VERSION).unwrap()
    );
    assert_eq!(empty.tasks, 0);
    assert!(empty.db_bytes > 0);
    assert_eq!(empty.wal_bytes, 0);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sqlite3");
    let store = Store::open(&path).unwrap();
    store.set_jmap_state(ACCOUNT, "s", t(0)).unwrap();
    store.kv_set("k", "v", t(0)).unwrap();
    let stats = store.stats().unwrap();
    assert_eq!(stats.path.as_deref(), Some(path.as_path()));
    assert_eq!(stats.jmap_states, 1);
    assert_eq!(stats.kv, 1);
    assert!(stats.db_bytes > 0);
    assert!(stats.wal_bytes > 0);
    assert!(
        serde_json::to_string(&stats)
            .unwrap()
            .contains("\"jmap_states\":1")
    );
}

/// Several processes opening a new store file together all succeed (switching to WAL needs an
/// exclusive lock that SQLite refuses at once, without the busy handler, under contention).
#[test]
fn concurrent_first_opens_of_a_new_file_all_succeed() {
    for round in 0..5 {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(format!("state-{round}/taskmail.sqlite3"));
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(8));
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let (path, barrier) = (path.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    Store::open(&path).map(|_| ())
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap().unwrap();
        }
    }
}
