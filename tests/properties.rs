//! Property tests of the wire codec: render then parse gives back the same typed value for
//! arbitrary Unicode field values (up to 64 KB), no rendered line is ever longer than 998
//! octets, and parsing arbitrary bytes never panics.

#![allow(clippy::unwrap_used)]

use chrono::{DateTime, Utc};
use proptest::prelude::*;
use taskmail::wire::aamp::{
    self, AampMessage, Dispatch, DispatchContext, HelpNeeded, Payload, Priority, Status, TaskId,
    TaskResult,
};
use taskmail::wire::headers::{longest_line, sanitize};
use taskmail::wire::message::{Inbound, Mailbox, Outbound};
use taskmail::wire::{Classified, classify};

/// Any Unicode text, mostly short, sometimes up to 64 KB.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => any::<String>(),
        3 => "[ -~\\n]{0,300}",
        1 => proptest::collection::vec(any::<char>(), 0..65_536).prop_map(|v| v.into_iter().collect()),
    ]
}

fn one_line() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => any::<String>(),
        1 => "[ -~]{0,2000}",
        // Short words with runs of spaces: a value that folds nowhere (found by the fuzzer).
        1 => "([a-z0-9=?]{1,6} {1,3}){0,600}",
    ]
}

fn instant() -> impl Strategy<Value = DateTime<Utc>> {
    (0i64..4_102_444_800_000).prop_map(|ms| DateTime::from_timestamp_millis(ms).unwrap())
}

fn roundtrip(msg: &AampMessage) -> (AampMessage, Vec<u8>) {
    let out = Outbound::aamp(
        msg,
        Mailbox::new("dispatcher@example.test"),
        vec![Mailbox::new("worker@example.test")],
        DateTime::from_timestamp(1_790_000_000, 0).unwrap(),
        "01JDK3Q2W4E6R8T0Y1U3I5O7P9@example.test",
    );
    let raw = out.render();
    let inbound = Inbound::from_bytes(&raw).expect("rendered mail parses");
    match classify(&inbound) {
        Classified::Aamp(p) => (p.message, raw),
        other => panic!("rendered AAMP mail classified as {other:?}"),
    }
}

fn check_lines(raw: &[u8]) {
    assert!(longest_line(raw) <= 998, "a line over 998 octets");
    let head_end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(raw.len());
    assert!(
        longest_line(&raw[..head_end]) <= 998,
        "a header line over 998 octets"
    );
}

/// Text a labelled body section can carry unchanged: labels of the same template inside the
/// value would end the section early (a property of the AAMP body format itself).
fn free_of(labels: &[&str], s: &str) -> bool {
    let lower = s.to_ascii_lowercase();
    labels.iter().all(|l| !lower.contains(&format!("\n{l}")))
}

fn option_ok(o: &str) -> bool {
    let s = sanitize(o);
    let numbered = s.bytes().take_while(u8::is_ascii_digit).count() > 0
        && s.trim_start_matches(|c: char| c.is_ascii_digit())
            .starts_with('.');
    !s.is_empty() && !s.starts_with(['-', '*']) && !numbered
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]

    #[test]
    fn dispatch_round_trips(
        title in one_line(), instructions in text(), key in one_line(),
        ctx in proptest::collection::btree_map("[a-z0-9_-]{1,12}", one_line(), 0..6),
        parent in proptest::option::of(one_line()), expires in proptest::option::of(instant()),
        priority in prop_oneof![Just(Priority::Urgent), Just(Priority::High), Just(Priority::Normal)],
    ) {
        prop_assume!(!instructions.trim_end().ends_with(aamp::DISPATCH_FOOTER));
        let msg = AampMessage::new(TaskId::new("t-1"), Payload::Dispatch(Dispatch {
            title: title.clone(), instructions: instructions.clone(), priority,
            expires_at: expires, session_key: Some(key.clone()),
            dispatch_context: DispatchContext(ctx.clone()), parent_task_id: parent.clone().map(TaskId::new),
        }));
        let (got, raw) = roundtrip(&msg);
        check_lines(&raw);
        let Payload::Dispatch(d) = got.payload else { panic!("not a dispatch") };
        prop_assert_eq!(d.title, sanitize(&title));
        prop_assert_eq!(d.instructions, aamp::normalize_body(&instructions));
        prop_assert_eq!(d.priority, priority);
        prop_assert_eq!(d.expires_at, expires);
        prop_assert_eq!(d.session_key, Some(sanitize(&key)).filter(|k| !k.is_empty()));
        let expected_ctx: std::collections::BTreeMap<String, String> = ctx.iter()
            .filter(|(_, v)| !v.trim().is_empty())
            .map(|(k, v)| (k.clone(), v.trim().to_owned())).collect();
        prop_assert_eq!(d.dispatch_context.0, expected_ctx);
        prop_assert_eq!(d.parent_task_id, parent.map(TaskId::new).filter(|p| !p.as_str().is_empty()));
    }

    #[test]
    fn result_round_trips(
        output in text(), error in proptest::option::of(one_line()), rejected in any::<bool>(),
        structured in proptest::option::of(proptest::collection::vec((one_line(), any::<i64>()), 0..200)),
    ) {
        prop_assume!(free_of(&["error:"], &output) || !rejected);
        let status = if rejected { Status::Rejected } else { Status::Completed };
        let structured = structured.map(|v| serde_json::Value::Array(v.into_iter()
            .map(|(s, n)| serde_json::json!({"fieldKey": s, "value": n})).collect()));
        let msg = AampMessage::new(TaskId::new("t-2"), Payload::Result(TaskResult {
            status, output: output.clone(), error_msg: error.clone(), structured_result: structured.clone(),
        }));
        let (got, raw) = roundtrip(&msg);
        check_lines(&raw);
        let Payload::Result(r) = got.payload else { panic!("not a result") };
        prop_assert_eq!(r.status, status);
        prop_assert_eq!(r.output, aamp::normalize_body(&output));
        prop_assert_eq!(r.error_msg, error.map(|e| sanitize(&e)).filter(|e| !e.is_empty()));
        prop_assert_eq!(r.structured_result, structured);
    }

    #[test]
    fn help_round_trips(
        question in text(), blocked in text(),
        options in proptest::collection::vec(one_line(), 0..8),
    ) {
        prop_assume!(free_of(&["blocked reason:", "suggested options:"], &question));
        prop_assume!(free_of(&["suggested options:"], &blocked));
        prop_assume!(!aamp::normalize_body(&question).is_empty() || !aamp::normalize_body(&blocked).is_empty());
        prop_assume!(options.iter().all(|o| option_ok(o)));
        let msg = AampMessage::new(TaskId::new("t-3"), Payload::HelpNeeded(HelpNeeded {
            question: question.clone(), blocked_reason: blocked.clone(), suggested_options: options.clone(),
        }));
        let (got, raw) = roundtrip(&msg);
        check_lines(&raw);
        let Payload::HelpNeeded(h) = got.payload else { panic!("not a help request") };
        prop_assert_eq!(h.question, aamp::normalize_body(&question));
        prop_assert_eq!(h.blocked_reason, aamp::normalize_body(&blocked));
        let expected: Vec<String> = options.iter().map(|o| sanitize(o)).collect();
        prop_assert_eq!(h.suggested_options, expected);
    }

    #[test]
    fn cancel_and_ack_round_trip(reason in text(), task in one_line()) {
        prop_assume!(!sanitize(&task).is_empty());
        let msg = AampMessage::new(TaskId::new(&task), Payload::Cancel { reason: reason.clone() });
        let (got, raw) = roundtrip(&msg);
        check_lines(&raw);
        prop_assert_eq!(&got.task_id, &TaskId::new(&task));
        let expected = match aamp::normalize_body(&reason) {
            r if r.is_empty() => aamp::DEFAULT_CANCEL_TEXT.to_owned(),
            r => r,
        };
        prop_assert_eq!(got.payload, Payload::Cancel { reason: expected });
        let (ack, _) = roundtrip(&AampMessage::new(TaskId::new(&task), Payload::Ack));
        prop_assert_eq!(ack.payload, Payload::Ack);
    }

    #[test]
    fn arbitrary_bytes_never_panic(raw in proptest::collection::vec(any::<u8>(), 0..8192)) {
        if let Ok(m) = Inbound::from_bytes(&raw) {
            let _ = classify(&m);
            let _ = taskmail::cli::parse::view(&m);
        }
    }

    #[test]
    fn mutated_fixtures_never_panic(flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..64)) {
        let base = include_bytes!("../fixtures/aamp/render/result-structured-20kb.eml");
        let mut raw = base.to_vec();
        for (i, b) in flips {
            let at = i.index(raw.len());
            raw[at] = b;
        }
        if let Ok(m) = Inbound::from_bytes(&raw) {
            let _ = taskmail::cli::parse::view(&m);
        }
    }
}
