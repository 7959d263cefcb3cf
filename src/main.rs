//! The `taskmail` binary: parse the command line, start logging, call the library, exit.

fn main() {}
