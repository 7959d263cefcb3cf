//! The worker and dispatcher pipelines.
//!
//! - [`queue`]: the run queue: urgent > high > normal, FIFO within a priority, a concurrency
//!   cap, expiry checked at dequeue time, cancel of queued and running tasks, no duplicate runs.
//! - [`runner`]: runs one task with an agent profile in its own work dir and maps what the
//!   process did to a [`runner::RunOutcome`] (completed, help needed, rejected, cancelled).

pub mod queue;
pub mod runner;
