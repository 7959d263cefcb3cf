//! Reads TOML into a raw config struct and reports *every* unknown key and mistyped value, each
//! with its path, instead of serde's first error only.
//!
//! How: a probe deserializer walks a raw type's serde derive once and records its [`Shape`]
//! (the field names of each struct, the variants of each enum, the type of each leaf). The
//! parsed TOML tree is then checked against that shape: unknown keys become errors (or warnings
//! in [`Mode::Permissive`]) with a "did you mean", mistyped values become errors, and both are
//! removed from the tree, so that serde then fills the struct from what is left. The raw types
//! keep `deny_unknown_fields`: the check runs first, so serde never meets an unknown key, and
//! the field lists come from serde itself, so the two cannot drift apart.

use std::fmt;

use serde::de::value::StrDeserializer;
use serde::de::{
    self, DeserializeOwned, DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess,
    VariantAccess, Visitor,
};
use toml::Value;

use super::diagnostic::{ConfigErrors, Diagnostic, did_you_mean, index, join, quote};

/// Whether unknown keys are errors or warnings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Mode {
    /// Unknown keys are errors (the default, and what `config check` uses).
    #[default]
    Strict,
    /// Unknown keys are warnings and ignored, e.g. to run a newer config with an older binary.
    Permissive,
}

/// What a serde type accepts, as far as the TOML check needs to know.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Shape {
    /// Anything (a `toml::Value`, checked later).
    Any,
    Bool,
    Int {
        min: i64,
        max: i64,
    },
    Float,
    Str,
    /// A unit-only enum written as one of these strings.
    Enum(&'static [&'static str]),
    /// A newtype; the name picks a friendlier description of the expected value.
    Newtype(&'static str, Box<Shape>),
    Seq(Box<Shape>),
    /// A table with arbitrary keys (`[accounts.NAME]`).
    Map(Box<Shape>),
    /// A table with these keys.
    Struct(Vec<(&'static str, Shape)>),
}

/// A failure of the probe itself, which means a raw type uses serde features the probe does
/// not model (flatten, untagged enums, non-unit variants).
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProbeError {
    #[error("cannot read the shape of a config type: {0}")]
    Unsupported(String),
}

impl de::Error for ProbeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        ProbeError::Unsupported(msg.to_string())
    }
}

/// The shape of `T`, read from its `Deserialize` implementation.
pub(crate) fn shape_of<T: DeserializeOwned>() -> Result<Shape, ProbeError> {
    let mut shape = Shape::Any;
    T::deserialize(Probe { slot: &mut shape })?;
    Ok(shape)
}

/// Parses `text` as TOML into `T`, reporting syntax errors, unknown keys and mistyped values.
///
/// Returns `None` only when nothing usable could be read (a TOML syntax error); otherwise `T`
/// holds every value that passed, and `report` holds the rest.
pub(crate) fn parse<T: DeserializeOwned>(
    text: &str,
    mode: Mode,
    report: &mut ConfigErrors,
) -> Option<T> {
    let table = match toml::from_str::<toml::Table>(text) {
        Ok(table) => table,
        Err(error) => {
            report.error(syntax_error(text, &error));
            return None;
        }
    };
    let shape = match shape_of::<T>() {
        Ok(shape) => shape,
        Err(error) => {
            report.error(Diagnostic::new("", error.to_string()));
            return None;
        }
    };
    let mut value = Value::Table(table);
    check(&mut value, &shape, "", mode, report);
    match value.try_into::<T>() {
        Ok(parsed) => Some(parsed),
        Err(error) => {
            // NOTE: unreachable while the shape check mirrors serde; kept as a plain report
            // rather than a panic in case a raw type gains a feature the probe does not model.
            let detail = error.to_string().trim().replace('\n', " ");
            report.error(Diagnostic::new(
                "",
                format!("cannot read the configuration: {detail}"),
            ));
            None
        }
    }
}

fn syntax_error(text: &str, error: &toml::de::Error) -> Diagnostic {
    let path = match error.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!("line {line}, column {column}")
        }
        None => String::new(),
    };
    Diagnostic::new(
        path,
        format!("cannot parse the file as TOML: {}", error.message().trim()),
    )
}

/// Checks `value` against `shape`, reporting under `path`. Returns whether the value may stay;
/// a struct or map drops its own bad children, an array is dropped whole if one item is bad
/// (so that later paths keep their indices).
pub(crate) fn check(
    value: &mut Value,
    shape: &Shape,
    path: &str,
    mode: Mode,
    report: &mut ConfigErrors,
) -> bool {
    match (shape, value) {
        (Shape::Newtype(_, inner), value) if is_container(inner) => {
            check(value, inner, path, mode, report)
        }
        (Shape::Struct(fields), Value::Table(table)) => {
            let keys: Vec<String> = table.keys().cloned().collect();
            for key in keys {
                let child_path = join(path, &key);
                let keep = match fields.iter().find(|(name, _)| *name == key) {
                    Some((_, child_shape)) => table
                        .get_mut(&key)
                        .is_none_or(|child| check(child, child_shape, &child_path, mode, report)),
                    None => {
                        unknown_key(&key, fields, path, &child_path, mode, report);
                        false
                    }
                };
                if !keep {
                    table.remove(&key);
                }
            }
            true
        }
        (Shape::Map(inner), Value::Table(table)) => {
            let keys: Vec<String> = table.keys().cloned().collect();
            for key in keys {
                let child_path = join(path, &key);
                let keep = table
                    .get_mut(&key)
                    .is_none_or(|child| check(child, inner, &child_path, mode, report));
                if !keep {
                    table.remove(&key);
                }
            }
            true
        }
        (Shape::Seq(inner), Value::Array(items)) => {
            let mut all_kept = true;
            for (i, item) in items.iter_mut().enumerate() {
                all_kept &= check(item, inner, &index(path, i), mode, report);
            }
            all_kept
        }
        (shape, value) if leaf_matches(value, shape) => true,
        (shape, value) => {
            report.error(mismatch(value, shape, path));
            false
        }
    }
}

fn is_container(shape: &Shape) -> bool {
    matches!(shape, Shape::Struct(_) | Shape::Map(_) | Shape::Seq(_))
}

fn leaf_matches(value: &Value, shape: &Shape) -> bool {
    match (shape, value) {
        (Shape::Any, _) => true,
        (Shape::Bool, Value::Boolean(_)) => true,
        (Shape::Int { min, max }, Value::Integer(n)) => (*min..=*max).contains(n),
        (Shape::Float, Value::Float(_) | Value::Integer(_)) => true,
        (Shape::Str, Value::String(_)) => true,
        (Shape::Enum(variants), Value::String(s)) => variants.contains(&s.as_str()),
        (Shape::Newtype(_, inner), value) => leaf_matches(value, inner),
        _ => false,
    }
}

fn mismatch(value: &Value, shape: &Shape, path: &str) -> Diagnostic {
    if let (Shape::Enum(variants), Value::String(text)) = (shape, value) {
        let diagnostic = Diagnostic::new(
            path,
            format!("cannot use {}: expected {}", quote(text), expected(shape)),
        );
        return match did_you_mean(text, variants.iter().copied()) {
            Some(suggestion) => diagnostic.with_hint(format!("did you mean '{suggestion}'?")),
            None => diagnostic,
        };
    }
    let diagnostic = Diagnostic::new(
        path,
        format!("cannot use {}: expected {}", found(value), expected(shape)),
    );
    match (shape, value) {
        (Shape::Newtype("RawDuration", _), Value::Integer(_) | Value::Float(_)) => {
            diagnostic.with_hint("durations are strings with a unit, e.g. '30s'")
        }
        _ => diagnostic,
    }
}

/// How a found value is described: `'abc' (a string)`, `'3' (an integer)`, `a table`.
fn found(value: &Value) -> String {
    match value {
        Value::String(s) => format!("{} (a string)", quote(s)),
        Value::Integer(n) => format!("'{n}' (an integer)"),
        Value::Float(x) => format!("'{x}' (a number with a fraction)"),
        Value::Boolean(b) => format!("'{b}' (a boolean)"),
        Value::Datetime(d) => format!("'{d}' (a date-time)"),
        Value::Array(_) => "an array".to_owned(),
        Value::Table(_) => "a table".to_owned(),
    }
}

fn expected(shape: &Shape) -> String {
    match shape {
        Shape::Any => "any value".to_owned(),
        Shape::Bool => "true or false".to_owned(),
        Shape::Int { min, max } => format!("an integer from {min} to {max}"),
        Shape::Float => "a number".to_owned(),
        Shape::Str => "a string".to_owned(),
        Shape::Enum(variants) => {
            let quoted: Vec<String> = variants.iter().map(|v| format!("'{v}'")).collect();
            format!("one of {}", quoted.join(", "))
        }
        Shape::Newtype("RawDuration", _) => "a duration string such as '30s'".to_owned(),
        Shape::Newtype(_, inner) => expected(inner),
        Shape::Seq(_) => "an array".to_owned(),
        Shape::Map(_) | Shape::Struct(_) => "a table".to_owned(),
    }
}

fn unknown_key(
    key: &str,
    fields: &[(&'static str, Shape)],
    parent: &str,
    path: &str,
    mode: Mode,
    report: &mut ConfigErrors,
) {
    let message = match mode {
        Mode::Strict => format!("cannot use unknown key {}", quote(key)),
        Mode::Permissive => format!("ignoring unknown key {}", quote(key)),
    };
    let names = fields.iter().map(|(name, _)| *name);
    let hint = if let Some(suggestion) = did_you_mean(key, names.clone()) {
        format!("did you mean '{suggestion}'?")
    } else if let Some(table) = nested_home(key, fields) {
        format!("'{key}' belongs in [{}]", join(parent, table))
    } else if fields.is_empty() {
        "this table takes no keys".to_owned()
    } else {
        let known: Vec<&str> = names.collect();
        format!("known keys here: {}", known.join(", "))
    };
    let diagnostic = Diagnostic::new(path, message).with_hint(hint);
    match mode {
        Mode::Strict => report.error(diagnostic),
        Mode::Permissive => report.warn(diagnostic),
    }
}

/// The sub-table directly below that has a key called `key`, e.g. `port` at account level
/// belongs in `smtp`.
fn nested_home(key: &str, fields: &[(&'static str, Shape)]) -> Option<&'static str> {
    fields.iter().find_map(|(name, shape)| {
        let inner = match shape {
            Shape::Newtype(_, inner) => inner.as_ref(),
            other => other,
        };
        match inner {
            Shape::Struct(sub) if sub.iter().any(|(sub_name, _)| *sub_name == key) => Some(*name),
            _ => None,
        }
    })
}

// ---- the probe -------------------------------------------------------------------------------

/// A deserializer that produces a default value of any type while recording its shape.
struct Probe<'a> {
    slot: &'a mut Shape,
}

macro_rules! probe_int {
    ($method:ident, $visit:ident, $ty:ty) => {
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeError> {
            *self.slot = Shape::Int {
                min: i64::try_from(<$ty>::MIN).unwrap_or(i64::MIN),
                max: i64::try_from(<$ty>::MAX).unwrap_or(i64::MAX),
            };
            visitor.$visit(0)
        }
    };
}

impl<'de> Deserializer<'de> for Probe<'_> {
    type Error = ProbeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeError> {
        *self.slot = Shape::Any;
        visitor.visit_bool(false)
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeError> {
        *self.slot = Shape::Bool;
        visitor.visit_bool(false)
    }

    probe_int!(deserialize_i8, visit_i8, i8);
    probe_int!(deserialize_i16, visit_i16, i16);
    probe_int!(deserialize_i32, visit_i32, i32);
    probe_int!(deserialize_i64, visit_i64, i64);
    probe_int!(deserialize_u8, visit_u8, u8);
    probe_int!(deserialize_u16, visit_u16, u16);
    probe_int!(deserialize_u32, visit_u32, u32);
    probe_int!(deserialize_u64, visit_u64, u64);

    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeError> {
        *self.slot = Shape::Float;
        visitor.visit_f32(0.0)
    }

    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeError> {
        *self.slot = Shape::Float;
        visitor.visit_f64(0.0)
    }

    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeError> {
        *self.slot = Shape::Str;
        visitor.visit_char(' ')
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeError> {
        *self.slot = Shape::Str;
        visitor.visit_str("")
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeError> {
        *self.slot = Shape::Str;
        visitor.visit_str("")
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeError> {
        *self.slot = Shape::Any;
        visitor.visit_bytes(&[])
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeError> {
        *self.slot = Shape::Any;
        visitor.visit_bytes(&[])
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeError> {
        visitor.visit_some(self)
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeError> {
        *self.slot = Shape::Any;
        visitor.visit_unit()
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, ProbeError> {
        *self.slot = Shape::Any;
        visitor.visit_unit()
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, ProbeError> {
        *self.slot = Shape::Newtype(name, Box::new(Shape::Any));
        match self.slot {
            Shape::Newtype(_, inner) => visitor.visit_newtype_struct(Probe { slot: inner }),
            _ => Err(ProbeError::Unsupported(format!("newtype {name}"))),
        }
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeError> {
        *self.slot = Shape::Seq(Box::new(Shape::Any));
        match self.slot {
            Shape::Seq(inner) => visitor.visit_seq(OneElement { slot: Some(inner) }),
            _ => Err(ProbeError::Unsupported("sequence".to_owned())),
        }
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        _len: usize,
        _visitor: V,
    ) -> Result<V::Value, ProbeError> {
        Err(ProbeError::Unsupported("tuple".to_owned()))
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        _len: usize,
        _visitor: V,
    ) -> Result<V::Value, ProbeError> {
        Err(ProbeError::Unsupported(format!("tuple struct {name}")))
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeError> {
        *self.slot = Shape::Map(Box::new(Shape::Any));
        match self.slot {
            Shape::Map(inner) => visitor.visit_map(OneEntry {
                slot: Some(inner),
                key_given: false,
            }),
            _ => Err(ProbeError::Unsupported("map".to_owned())),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, ProbeError> {
        *self.slot = Shape::Struct(fields.iter().map(|f| (*f, Shape::Any)).collect());
        match self.slot {
            Shape::Struct(entries) => visitor.visit_map(EveryField {
                entries: entries.as_mut_slice(),
                next: 0,
            }),
            _ => Err(ProbeError::Unsupported(format!("struct {name}"))),
        }
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, ProbeError> {
        *self.slot = Shape::Enum(variants);
        let first = variants
            .first()
            .ok_or_else(|| ProbeError::Unsupported(format!("enum {name} without variants")))?;
        visitor.visit_enum(UnitVariant(first))
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeError> {
        visitor.visit_str("")
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeError> {
        *self.slot = Shape::Any;
        visitor.visit_unit()
    }
}

/// A sequence of one element, whose shape is the element shape.
struct OneElement<'a> {
    slot: Option<&'a mut Shape>,
}

impl<'de> SeqAccess<'de> for OneElement<'_> {
    type Error = ProbeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, ProbeError> {
        match self.slot.take() {
            Some(slot) => seed.deserialize(Probe { slot }).map(Some),
            None => Ok(None),
        }
    }
}

/// A map of one entry with a string key, whose value shape is the map's value shape.
struct OneEntry<'a> {
    slot: Option<&'a mut Shape>,
    key_given: bool,
}

impl<'de> MapAccess<'de> for OneEntry<'_> {
    type Error = ProbeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, ProbeError> {
        if self.key_given {
            return Ok(None);
        }
        self.key_given = true;
        seed.deserialize(StrDeserializer::<ProbeError>::new("name"))
            .map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, ProbeError> {
        match self.slot.take() {
            Some(slot) => seed.deserialize(Probe { slot }),
            None => Err(ProbeError::Unsupported("map value without key".to_owned())),
        }
    }
}

/// A struct presented as a map holding every field once.
struct EveryField<'a> {
    entries: &'a mut [(&'static str, Shape)],
    next: usize,
}

impl<'de> MapAccess<'de> for EveryField<'_> {
    type Error = ProbeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, ProbeError> {
        match self.entries.get(self.next) {
            Some((name, _)) => seed
                .deserialize(StrDeserializer::<ProbeError>::new(name))
                .map(Some),
            None => Ok(None),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, ProbeError> {
        let current = self.next;
        self.next += 1;
        match self.entries.get_mut(current) {
            Some((_, slot)) => seed.deserialize(Probe { slot }),
            None => Err(ProbeError::Unsupported(
                "struct value without key".to_owned(),
            )),
        }
    }
}

/// The first variant of a unit-only enum.
struct UnitVariant(&'static str);

impl<'de> EnumAccess<'de> for UnitVariant {
    type Error = ProbeError;
    type Variant = UnitVariant;

    fn variant_seed<V: DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, UnitVariant), ProbeError> {
        let variant = seed.deserialize(StrDeserializer::<ProbeError>::new(self.0))?;
        Ok((variant, self))
    }
}

impl<'de> VariantAccess<'de> for UnitVariant {
    type Error = ProbeError;

    fn unit_variant(self) -> Result<(), ProbeError> {
        Ok(())
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(
        self,
        _seed: T,
    ) -> Result<T::Value, ProbeError> {
        Err(ProbeError::Unsupported(format!(
            "newtype variant {}",
            self.0
        )))
    }

    fn tuple_variant<V: Visitor<'de>>(
        self,
        _len: usize,
        _visitor: V,
    ) -> Result<V::Value, ProbeError> {
        Err(ProbeError::Unsupported(format!("tuple variant {}", self.0)))
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, ProbeError> {
        Err(ProbeError::Unsupported(format!(
            "struct variant {}",
            self.0
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::raw::RawConfig;

    fn field<'a>(shape: &'a Shape, name: &str) -> &'a Shape {
        match shape {
            Shape::Struct(fields) => fields
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, s)| s)
                .unwrap(),
            Shape::Map(inner) | Shape::Seq(inner) => field(inner, name),
            other => panic!("no field {name} in {other:?}"),
        }
    }

    #[test]
    fn probe_reads_nested_fields_enums_and_ranges() {
        let shape = shape_of::<RawConfig>().unwrap();
        let accounts = field(&shape, "accounts");
        assert!(matches!(accounts, Shape::Map(_)));
        let smtp = field(accounts, "smtp");
        assert_eq!(
            field(smtp, "port"),
            &Shape::Int {
                min: 0,
                max: 65_535
            }
        );
        assert_eq!(
            field(smtp, "tls"),
            &Shape::Enum(&["starttls", "implicit", "plaintext"])
        );
        assert!(matches!(
            field(smtp, "timeout"),
            Shape::Newtype("RawDuration", _)
        ));
        assert_eq!(field(accounts, "password"), &Shape::Any);
        let grants = field(field(&shape, "trust"), "grants");
        assert!(matches!(grants, Shape::Seq(_)));
        assert!(matches!(field(grants, "intents"), Shape::Seq(_)));
    }

    #[test]
    fn every_problem_is_reported_and_the_rest_is_kept() {
        let text = r#"
            log-levle = "debug"
            [accounts.w]
            email = "w@example.test"
            port = 25
            [accounts.w.smtp]
            port = "abc"
            tls = "startls"
            timeout = 30
            [worker]
            concurrency = -1
            allowed-senders = ["a@example.test", 3]
        "#;
        let mut report = ConfigErrors::default();
        let raw: RawConfig = parse(text, Mode::Strict, &mut report).unwrap();
        let lines = report.lines().join("\n");
        for expected in [
            "log-levle: cannot use unknown key 'log-levle'; hint: did you mean 'log-level'?",
            "accounts.w.port: cannot use unknown key 'port'; hint: 'port' belongs in [accounts.w.smtp]",
            "accounts.w.smtp.port: cannot use 'abc' (a string): expected an integer from 0 to 65535",
            "accounts.w.smtp.tls: cannot use 'startls': expected one of 'starttls', 'implicit', 'plaintext'; hint: did you mean 'starttls'?",
            "accounts.w.smtp.timeout: cannot use '30' (an integer): expected a duration string such as '30s'",
            "worker.concurrency: cannot use '-1' (an integer): expected an integer from 0 to 65535",
            "worker.allowed-senders[1]: cannot use '3' (an integer): expected a string",
        ] {
            assert!(lines.contains(expected), "missing {expected:?} in\n{lines}");
        }
        assert_eq!(report.errors.len(), 7, "{lines}");
        let account = &raw.accounts.unwrap()["w"];
        assert_eq!(account.email.as_deref(), Some("w@example.test"));
        assert_eq!(raw.worker.unwrap().allowed_senders, None);
    }

    #[test]
    fn permissive_mode_turns_unknown_keys_into_warnings() {
        let mut report = ConfigErrors::default();
        let raw: Option<RawConfig> = parse("colour = 'blue'\n", Mode::Permissive, &mut report);
        assert!(raw.is_some());
        assert!(!report.has_errors());
        assert_eq!(report.warnings[0].path, "colour");
        assert!(
            report.warnings[0]
                .message
                .starts_with("ignoring unknown key")
        );
    }

    #[test]
    fn syntax_errors_carry_line_and_column() {
        let mut report = ConfigErrors::default();
        let raw: Option<RawConfig> = parse("a = 1\nb = \n", Mode::Strict, &mut report);
        assert!(raw.is_none());
        assert!(
            report.errors[0].path.starts_with("line 2, column"),
            "{report:?}"
        );
        assert!(
            report.errors[0]
                .message
                .starts_with("cannot parse the file as TOML")
        );
    }
}
