//! Threading (being written).
