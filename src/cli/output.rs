//! Printing: JSON for scripts, aligned `key: value` lines for people. A closed stdout (a pipe
//! to `head`) ends the program quietly with success.

use std::io::{self, Write};

use serde::Serialize;

/// Writes `bytes` to stdout; a broken pipe is not an error.
pub fn write_stdout(bytes: &[u8]) -> io::Result<()> {
    let mut out = io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

/// Prints a value as pretty JSON followed by a newline.
pub fn print_json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    let mut s = serde_json::to_string_pretty(value)?;
    s.push('\n');
    write_stdout(s.as_bytes())?;
    Ok(())
}

/// Prints a JSON object as aligned `key: value` lines; nested values are printed as compact
/// JSON, multi-line strings are indented under their key.
pub fn print_fields(value: &serde_json::Value) -> anyhow::Result<()> {
    let Some(obj) = value.as_object() else {
        return print_json(value);
    };
    let width = obj.keys().map(String::len).max().unwrap_or(0);
    let mut s = String::new();
    for (k, v) in obj {
        let text = match v {
            serde_json::Value::String(t) => t.clone(),
            other => other.to_string(),
        };
        if text.contains('\n') {
            s.push_str(&format!("{k}:\n"));
            for line in text.lines() {
                s.push_str(&format!("    {line}\n"));
            }
        } else {
            s.push_str(&format!("{k:width$}  {text}\n"));
        }
    }
    write_stdout(s.as_bytes())?;
    Ok(())
}
