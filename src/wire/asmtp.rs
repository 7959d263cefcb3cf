//! ASMTP envelopes on mail (being written).
