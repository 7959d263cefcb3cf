//! Fuzzes the inbound path on raw bytes: parse, classify, describe, and for AAMP messages
//! render the typed value again and parse it back (it must still be the same intent and task).
#![no_main]

use libfuzzer_sys::fuzz_target;
use taskmail::wire::message::{Inbound, Mailbox, Outbound};
use taskmail::wire::{Classified, classify};

fuzz_target!(|data: &[u8]| {
    let Ok(msg) = Inbound::from_bytes(data) else {
        return;
    };
    let _ = taskmail::cli::parse::view(&msg);
    if let Classified::Aamp(parsed) = classify(&msg) {
        let m = parsed.message;
        let out = Outbound::aamp(
            &m,
            Mailbox::new("a@example.test"),
            vec![Mailbox::new("b@example.test")],
            chrono::DateTime::from_timestamp(0, 0).unwrap_or_default(),
            "fuzz@example.test",
        );
        let raw = out.render();
        assert!(taskmail::wire::headers::longest_line(&raw) <= 998);
        let again = Inbound::from_bytes(&raw).expect("rendered mail parses");
        match classify(&again) {
            Classified::Aamp(p) => {
                assert_eq!(p.message.intent(), m.intent());
                assert_eq!(p.message.task_id, m.task_id);
            }
            other => panic!("re-rendered AAMP mail became {other:?}"),
        }
    }
});
