//! Human replies (being written).
