//! Problems found in a config file, each keyed by the dotted path of the key it concerns.
//!
//! A [`Diagnostic`] reads `accounts.worker.smtp.port: cannot use 'abc' (a string): expected an
//! integer from 0 to 65535`, optionally followed by `; hint: ...`. [`ConfigErrors`] gathers every
//! error and warning of one validation run, so that a user fixes a file in one pass instead of
//! one error per run (style points 14 and 17).

use std::fmt;

use serde::Serialize;

/// One problem, keyed by the TOML path of the key it concerns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    /// Dotted TOML path, `accounts.worker.jmap.session-url` or `trust.grants[0].peer`; empty when
    /// the problem concerns the whole file.
    pub path: String,
    /// What is wrong, lowercase, starting with "cannot" for errors.
    pub message: String,
    /// What to do about it, when there is something useful to say.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

impl Diagnostic {
    /// A diagnostic without a hint.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Diagnostic {
            path: path.into(),
            message: message.into(),
            hint: None,
        }
    }

    /// The same diagnostic with a hint.
    #[must_use]
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, "; hint: {hint}")?;
        }
        Ok(())
    }
}

/// Every error and warning found while validating one config file.
///
/// It is the error type of [`Config::from_raw`](super::Config::from_raw) and
/// [`Config::from_toml_str`](super::Config::from_toml_str); a valid config carries its warnings in
/// [`Config::warnings`](super::Config::warnings).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ConfigErrors {
    /// Problems that make the config unusable.
    pub errors: Vec<Diagnostic>,
    /// Things worth telling that do not stop taskmail: applied defaults, ignored keys.
    pub warnings: Vec<Diagnostic>,
}

impl ConfigErrors {
    /// Whether any error (not warning) was found.
    pub fn has_errors(&self) -> bool {
        !self.errors.is_empty()
    }

    /// One line per problem, errors first: `error: PATH: message` and `warning: PATH: message`.
    pub fn lines(&self) -> Vec<String> {
        let errors = self.errors.iter().map(|d| format!("error: {d}"));
        let warnings = self.warnings.iter().map(|d| format!("warning: {d}"));
        errors.chain(warnings).collect()
    }

    pub(crate) fn error(&mut self, diagnostic: Diagnostic) {
        self.errors.push(diagnostic);
    }

    pub(crate) fn warn(&mut self, diagnostic: Diagnostic) {
        self.warnings.push(diagnostic);
    }

    pub(crate) fn extend(&mut self, other: ConfigErrors) {
        self.errors.extend(other.errors);
        self.warnings.extend(other.warnings);
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = self.errors.len();
        write!(
            f,
            "cannot accept the configuration: {count} {}",
            plural(count, "problem", "problems")
        )?;
        for error in &self.errors {
            write!(f, "\n  {error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// `one` or `many` by count, for messages.
pub(crate) fn plural<'a>(count: usize, one: &'a str, many: &'a str) -> &'a str {
    if count == 1 { one } else { many }
}

/// The path of `key` inside the table at `parent`, quoting keys that are not bare TOML keys.
pub(crate) fn join(parent: &str, key: &str) -> String {
    let key = if is_bare_key(key) {
        key.to_owned()
    } else {
        format!("\"{}\"", key.escape_default())
    };
    if parent.is_empty() {
        key
    } else {
        format!("{parent}.{key}")
    }
}

/// The path of element `index` of the array at `parent`.
pub(crate) fn index(parent: &str, index: usize) -> String {
    format!("{parent}[{index}]")
}

fn is_bare_key(key: &str) -> bool {
    !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// A value as it appears in a message: in single quotes, control characters escaped, and cut
/// short when long so that one problem stays one line.
pub(crate) fn quote(value: &str) -> String {
    const LIMIT: usize = 80;
    let mut out = String::with_capacity(value.len().min(LIMIT) + 2);
    out.push('\'');
    for (count, c) in value.chars().enumerate() {
        if count == LIMIT {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out.push('\'');
    out
}

/// The candidate closest to `input`, if it is close enough to be a likely typo.
///
/// Comparison ignores case and treats `_` as `-`, so `session_url` suggests `session-url`.
pub(crate) fn did_you_mean<'a>(
    input: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let normal = normalise_key(input);
    let limit = (normal.chars().count() / 3).max(1);
    candidates
        .into_iter()
        .map(|candidate| (edit_distance(&normal, &normalise_key(candidate)), candidate))
        .filter(|(distance, _)| *distance <= limit)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate)
}

fn normalise_key(key: &str) -> String {
    key.to_lowercase().replace('_', "-")
}

/// Optimal string alignment distance: insertions, deletions, substitutions and adjacent swaps.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    // NOTE: three rolling rows instead of a full matrix; config keys are short, but profile
    // commands can hold long shell scripts that go through the placeholder typo check.
    let mut before: Vec<usize> = vec![0; b.len() + 1];
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    let mut current: Vec<usize> = vec![0; b.len() + 1];
    for i in 1..=a.len() {
        current[0] = i;
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (previous[j] + 1)
                .min(current[j - 1] + 1)
                .min(previous[j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(before[j - 2] + 1);
            }
            current[j] = best;
        }
        std::mem::swap(&mut before, &mut previous);
        std::mem::swap(&mut previous, &mut current);
    }
    previous[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_quote_keys_that_are_not_bare() {
        assert_eq!(join("", "accounts"), "accounts");
        assert_eq!(join("accounts", "my acct"), "accounts.\"my acct\"");
        assert_eq!(index("trust.grants", 2), "trust.grants[2]");
    }

    #[test]
    fn suggestions_catch_typos_and_snake_case() {
        let keys = ["session-url", "public-origin", "push"];
        assert_eq!(did_you_mean("sesion-url", keys), Some("session-url"));
        assert_eq!(did_you_mean("session_url", keys), Some("session-url"));
        assert_eq!(did_you_mean("pusj", keys), Some("push"));
        assert_eq!(did_you_mean("colour", keys), None);
        assert_eq!(edit_distance("concurency", "concurrency"), 1);
        assert_eq!(edit_distance("ab", "ba"), 1);
    }

    #[test]
    fn quoting_escapes_control_characters_and_truncates() {
        assert_eq!(quote("a\nb"), "'a\\nb'");
        assert!(quote(&"x".repeat(200)).ends_with("…'"));
    }

    #[test]
    fn display_joins_path_message_and_hint() {
        let d = Diagnostic::new("worker.concurrency", "cannot use '0'").with_hint("use 1 to 256");
        assert_eq!(
            d.to_string(),
            "worker.concurrency: cannot use '0'; hint: use 1 to 256"
        );
    }
}
