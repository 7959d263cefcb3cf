//! taskmail: agent task intents (AAMP 1.1) and agent envelopes (ASMTP) over ordinary email.
//!
//! # Layers (a module may only use the layers above it)
//!
//! ```text
//! wire        pure codec: RFC 5322 bytes / JMAP header maps <-> typed AAMP intents, ASMTP envelopes,
//!             human replies. No I/O, no clock reads: callers pass time and ids in.
//! config      TOML config -> validated Config (leaf)          profile   agent + server profiles (leaf)
//! transport   SMTP submission (lettre) and JMAP over HTTP and RFC 8887 WebSocket (our own small
//!             client: jmap-client 0.4 cannot follow Cyrus's relative session URLs); the only
//!             place lettre, reqwest and tungstenite appear
//! store       SQLite: JMAP state, processed ids, tasks, Message-ID -> TaskId index, outbox, audit
//! trust       sender policy, authentication verdicts, untrusted-content wrapping
//! daemon      the worker and dispatcher pipelines
//! cli         one file per verb; prints tables on a TTY and JSON with --json
//! mcp         `taskmail mcp`: the mailbox and task verbs as MCP tools on stdio (cli's layer)
//! ```
//!
//! # Data flow
//!
//! Inbound: a push hint or poll tick -> `Email/changes` since the persisted state -> headers-only
//! `Email/get` -> [`wire::message::Inbound`] -> [`wire::classify()`] -> trust gate -> body -> route.
//! Outbound: a typed intent -> [`wire::message::Outbound`] -> RFC 5322 bytes with a Message-ID we
//! chose -> outbox row -> SMTP submission.
//!
//! # Where a change belongs
//!
//! A new header or body layout goes in `wire/` with a fixture under `fixtures/`. A new CLI verb is
//! one file in `cli/`. Anything that talks to a server goes in `transport/`.

pub mod cli;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod ids;
pub mod mailbox;
pub mod mcp;
pub mod profile;
pub mod serve;
pub mod store;
pub mod transport;
pub mod trust;
pub mod wire;
