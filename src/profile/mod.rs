//! Agent and server profiles (being written).
