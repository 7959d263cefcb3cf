//! Classification (being written).

/// What an inbound message is.
#[derive(Debug)]
pub enum Classified {}

/// Classifies an inbound message.
pub fn classify() {}
