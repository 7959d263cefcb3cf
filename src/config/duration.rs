//! Durations written as strings: `"500ms"`, `"30s"`, `"5m"`, `"2h"`, `"7d"`, or sums such as
//! `"1h30m"`.
//!
//! Units: `ms` milliseconds, `s` seconds, `m` minutes, `h` hours, `d` days (24 hours). A bare
//! number is refused: `timeout = "30"` could mean seconds or minutes, so the unit is required.

use std::time::Duration;

/// Why a duration string could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// The string was empty or only whitespace.
    #[error("cannot parse an empty string as a duration")]
    Empty,
    /// A unit came without a number in front of it.
    #[error("cannot parse {} as a duration: expected a number before {}", super::diagnostic::quote(.text), super::diagnostic::quote(.unit))]
    MissingNumber {
        /// The whole input.
        text: String,
        /// The unit that had no number.
        unit: String,
    },
    /// A number came without a unit after it.
    #[error("cannot parse {} as a duration: the number {} has no unit", super::diagnostic::quote(.text), super::diagnostic::quote(.number))]
    MissingUnit {
        /// The whole input.
        text: String,
        /// The number that had no unit.
        number: String,
    },
    /// The unit is not one of ms, s, m, h, d.
    #[error("cannot parse {} as a duration: unknown unit {}", super::diagnostic::quote(.text), super::diagnostic::quote(.unit))]
    UnknownUnit {
        /// The whole input.
        text: String,
        /// The unit that is not known.
        unit: String,
    },
    /// A character that belongs to no number or unit.
    #[error("cannot parse {} as a duration: unexpected {}", super::diagnostic::quote(.text), super::diagnostic::quote(&.found.to_string()))]
    Unexpected {
        /// The whole input.
        text: String,
        /// The character that was not expected.
        found: char,
    },
    /// The total does not fit in a `Duration`.
    #[error("cannot parse {} as a duration: it is too long", super::diagnostic::quote(.text))]
    Overflow {
        /// The whole input.
        text: String,
    },
}

/// The hint shown with every duration error.
pub(crate) const DURATION_HINT: &str =
    "write a number and a unit (ms, s, m, h or d), e.g. '30s', '5m' or '1h30m'";

/// Reads a duration such as `"30s"` or `"1h30m"`.
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(DurationError::Empty);
    }
    let mut total = Duration::ZERO;
    let mut rest = trimmed;
    while !rest.is_empty() {
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        let (number, after) = rest.split_at(digits);
        let after = after.trim_start();
        let letters = after.len()
            - after
                .trim_start_matches(|c: char| c.is_ascii_alphabetic())
                .len();
        let (unit, after) = after.split_at(letters);
        if unit.is_empty()
            && let Some(found) = after.chars().next().filter(|c| !c.is_whitespace())
        {
            return Err(DurationError::Unexpected {
                text: text.to_owned(),
                found,
            });
        }
        if number.is_empty() {
            return Err(DurationError::MissingNumber {
                text: text.to_owned(),
                unit: unit.to_owned(),
            });
        }
        if unit.is_empty() {
            return Err(DurationError::MissingUnit {
                text: text.to_owned(),
                number: number.to_owned(),
            });
        }
        let millis_per_unit: u64 = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => {
                return Err(DurationError::UnknownUnit {
                    text: text.to_owned(),
                    unit: unit.to_owned(),
                });
            }
        };
        let overflow = || DurationError::Overflow {
            text: text.to_owned(),
        };
        let count: u64 = number.parse().map_err(|_| overflow())?;
        let millis = count.checked_mul(millis_per_unit).ok_or_else(overflow)?;
        total = total
            .checked_add(Duration::from_millis(millis))
            .ok_or_else(overflow)?;
        rest = after.trim_start();
    }
    Ok(total)
}

/// Writes a duration the way the config reads it: `1h30m`, `500ms`, `0s`.
pub fn format_duration(duration: Duration) -> String {
    let mut millis = duration.as_millis();
    if millis == 0 {
        return "0s".to_owned();
    }
    let mut out = String::new();
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
        ("ms", 1),
    ] {
        let count = millis / size;
        if count > 0 {
            out.push_str(&format!("{count}{unit}"));
            millis %= size;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_unit_and_sums() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7_200)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(604_800)));
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5_400)));
        assert_eq!(parse_duration("30 s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn refuses_missing_or_unknown_units() {
        assert!(matches!(
            parse_duration("30"),
            Err(DurationError::MissingUnit { .. })
        ));
        assert!(matches!(
            parse_duration("s"),
            Err(DurationError::MissingNumber { .. })
        ));
        assert!(matches!(
            parse_duration("-5s"),
            Err(DurationError::Unexpected { found: '-', .. })
        ));
        assert!(matches!(
            parse_duration("1.5h"),
            Err(DurationError::Unexpected { found: '.', .. })
        ));
        let error = parse_duration("30 minutes").unwrap_err();
        assert_eq!(
            error.to_string(),
            "cannot parse '30 minutes' as a duration: unknown unit 'minutes'"
        );
        assert_eq!(parse_duration(" "), Err(DurationError::Empty));
        assert!(matches!(
            parse_duration("99999999999999999999d"),
            Err(DurationError::Overflow { .. })
        ));
    }

    #[test]
    fn formats_back_to_what_it_parses() {
        for text in ["0s", "500ms", "30s", "1h30m", "7d", "1d2h3m4s5ms"] {
            let duration = parse_duration(text).unwrap();
            assert_eq!(format_duration(duration), text);
        }
    }
}
