//! Micro-benchmarks of the wire codec (divan): parse a typical dispatch and a typical result from
//! raw bytes, and render each. Target: under 20 µs per message each way. Run `cargo bench`.

use divan::{Bencher, black_box};
use taskmail::wire::aamp::{AampMessage, Dispatch, Payload, Priority, Status, TaskId, TaskResult};
use taskmail::wire::message::{Inbound, Mailbox, Outbound};
use taskmail::wire::{Classified, classify};

fn main() {
    divan::main();
}

const DISPATCH: &[u8] = include_bytes!("../fixtures/aamp/render/dispatch-full.eml");
const RESULT: &[u8] = include_bytes!("../fixtures/aamp/render/result-completed.eml");

fn outbound(msg: &AampMessage) -> Outbound {
    let mut out = Outbound::aamp(
        msg,
        Mailbox::new("worker@example.test"),
        vec![Mailbox::new("dispatcher@example.test")],
        chrono::DateTime::from_timestamp(1_790_000_000, 0).unwrap_or_default(),
        "01JDK3S8D0F2G4H6J8K0L2Z4X6@example.test",
    );
    out.in_reply_to = Some("01JDK3Q2W4E6R8T0Y1U3I5O7P9@example.test".into());
    out.references = vec!["01JDK3Q2W4E6R8T0Y1U3I5O7P9@example.test".into()];
    out
}

fn parse(raw: &[u8]) -> AampMessage {
    let inbound = Inbound::from_bytes(raw).expect("fixture parses");
    match classify(&inbound) {
        Classified::Aamp(p) => p.message,
        other => panic!("fixture is {other:?}"),
    }
}

#[divan::bench]
fn parse_dispatch() -> AampMessage {
    parse(black_box(DISPATCH))
}

#[divan::bench]
fn parse_result() -> AampMessage {
    parse(black_box(RESULT))
}

#[divan::bench]
fn render_dispatch(b: Bencher<'_, '_>) {
    let msg = AampMessage::new(
        TaskId::new("6f1c2d3e-4b5a-4c7d-8e9f-0a1b2c3d4e5f"),
        Payload::Dispatch(Dispatch {
            title: "Summarise the quarterly report".into(),
            instructions: "Read the attached report and write five bullet points.\nKeep it short."
                .into(),
            priority: Priority::High,
            session_key: Some("reports".into()),
            ..Dispatch::default()
        }),
    );
    b.bench(|| outbound(black_box(&msg)).render());
}

#[divan::bench]
fn render_result(b: Bencher<'_, '_>) {
    let msg = AampMessage::new(
        TaskId::new("6f1c2d3e-4b5a-4c7d-8e9f-0a1b2c3d4e5f"),
        Payload::Result(TaskResult {
            status: Status::Completed,
            output: "- Revenue up 12%\n- Costs flat\n- Headcount +3\n- Cash runway 18 months"
                .into(),
            error_msg: None,
            structured_result: Some(serde_json::json!([{"fieldKey": "summary", "value": "ok"}])),
        }),
    );
    b.bench(|| outbound(black_box(&msg)).render());
}
