//! Strict configuration loading shared by all services: a TOML file, then `TRIAS_`-prefixed
//! environment overrides, then deserialization into the service's `deny_unknown_fields` struct.
//!
//! Errors name where the bad value came from (the file and line, or the environment variable)
//! and the key, so a service fails at start-up with a message an operator can act on.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::Duration;

use serde::de::DeserializeOwned;
use toml::de::{DeTable, DeValue};

/// A configuration that cannot be loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Where the bad input came from: the file (with `:line` when known) or
    /// `environment variable TRIAS_ISSUER_X`.
    pub source: String,
    /// The dotted key at fault, when known.
    pub key: Option<String>,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.key {
            Some(key) => write!(f, "{}: key `{key}`: {}", self.source, self.reason),
            None => write!(f, "{}: {}", self.source, self.reason),
        }
    }
}

// Written by hand: `thiserror` would take the `source` field for the underlying error.
impl std::error::Error for ConfigError {}

/// Loads `T` from an optional TOML file and the environment variables starting with `prefix`.
///
/// `TRIAS_ISSUER_AUDIT__STRICT=false` with prefix `TRIAS_ISSUER_` sets `audit.strict`: the rest
/// of the name is lowercased and `__` separates nested tables. A value that parses as a TOML
/// value (`false`, `5`, `"x"`, `["a", "b"]`) is taken as such, anything else as a string.
/// The environment is passed in, so tests never touch the process environment.
pub fn load<T: DeserializeOwned>(
    file: Option<&Path>,
    env: &BTreeMap<String, String>,
    prefix: &str,
) -> Result<T, ConfigError> {
    let (mut table, text) = match file {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
                source: path.display().to_string(),
                key: None,
                reason: format!("cannot read: {e}"),
            })?;
            let table = text.parse::<toml::Table>().map_err(|e| ConfigError {
                source: with_line(path, &text, e.span()),
                key: None,
                reason: first_line(e.message()),
            })?;
            (table, Some((path, text)))
        }
        None => (toml::Table::new(), None),
    };

    // Which dotted key each environment variable set, to blame the variable on error.
    let mut from_env = BTreeMap::new();
    for (name, raw) in env {
        let Some(rest) = name.strip_prefix(prefix) else {
            continue;
        };
        let path: Vec<String> = rest.to_lowercase().split("__").map(str::to_owned).collect();
        let source = format!("environment variable {name}");
        if path.iter().any(String::is_empty) {
            return Err(ConfigError {
                source,
                key: None,
                reason: "empty key segment in variable name".to_owned(),
            });
        }
        set(&mut table, &path, env_value(raw)).map_err(|reason| ConfigError {
            source: source.clone(),
            key: Some(path.join(".")),
            reason,
        })?;
        from_env.insert(path.join("."), source);
    }

    T::deserialize(toml::Value::Table(table)).map_err(|error| {
        let key = error_key(&error);
        let env_source = key.as_deref().and_then(|key| {
            from_env
                .iter()
                .find(|(set, _)| key == set.as_str() || key.starts_with(&format!("{set}.")))
                .map(|(_, source)| source.clone())
        });
        let source = match (env_source, &text) {
            (Some(source), _) => source,
            (None, Some((path, text))) => {
                let span = key.as_deref().and_then(|key| key_span(text, key));
                with_line(path, text, span)
            }
            (None, None) => "configuration".to_owned(),
        };
        ConfigError {
            source,
            key,
            reason: first_line(error.message()),
        }
    })
}

/// An environment value: a TOML value if it parses as one, else the raw string.
fn env_value(raw: &str) -> toml::Value {
    format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()))
}

/// Sets `path` in `table`, creating intermediate tables.
fn set(table: &mut toml::Table, path: &[String], value: toml::Value) -> Result<(), String> {
    match path {
        [] => Err("empty key".to_owned()),
        [last] => {
            table.insert(last.clone(), value);
            Ok(())
        }
        [first, rest @ ..] => {
            let entry = table
                .entry(first.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            match entry {
                toml::Value::Table(inner) => set(inner, rest, value),
                _ => Err(format!("`{first}` is not a table")),
            }
        }
    }
}

/// The dotted key a deserialization error is about.
///
/// `toml` keeps the path only in its `Display` (a last line "in `a.b`"), and serde names the
/// field itself in messages about unknown or missing fields.
fn error_key(error: &toml::de::Error) -> Option<String> {
    let mut error = error.clone();
    error.set_input(None);
    let shown = error.to_string();
    let mut path: Vec<String> = shown
        .lines()
        .rev()
        .find_map(|line| line.strip_prefix("in `")?.strip_suffix('`'))
        .map(|keys| keys.split('.').map(str::to_owned).collect())
        .unwrap_or_default();
    let message = error.message();
    let field = ["unknown field `", "missing field `"]
        .iter()
        .find_map(|start| message.strip_prefix(start)?.split('`').next());
    if let Some(field) = field {
        path.push(field.to_owned());
    }
    (!path.is_empty()).then(|| path.join("."))
}

/// Where a dotted key is written in the TOML text, if it is.
fn key_span(text: &str, key: &str) -> Option<std::ops::Range<usize>> {
    let document = DeTable::parse(text).ok()?;
    let mut table: &DeTable<'_> = document.get_ref();
    let mut span = None;
    for segment in key.split('.') {
        let (k, v) = table.iter().find(|(k, _)| k.get_ref() == segment)?;
        span = Some(k.span());
        match v.get_ref() {
            DeValue::Table(inner) => table = inner,
            _ => break,
        }
    }
    span
}

/// `path:line` when the span is known, else just the path.
fn with_line(path: &Path, text: &str, span: Option<std::ops::Range<usize>>) -> String {
    match span {
        Some(span) => {
            let start = span.start.min(text.len());
            let line = text
                .get(..start)
                .map_or(0, |before| before.matches('\n').count())
                + 1;
            format!("{}:{line}", path.display())
        }
        None => path.display().to_string(),
    }
}

fn first_line(message: &str) -> String {
    message.lines().next().unwrap_or_default().to_owned()
}

/// Parses a duration written as a positive integer and a unit: `500ms`, `30s`, `5m`, `1h`, `1d`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let invalid =
        || format!("invalid duration `{s}`: expected a positive integer and ms, s, m, h or d");
    let n: u64 = number.parse().map_err(|_| invalid())?;
    if n == 0 {
        return Err(invalid());
    }
    let seconds = |factor: u64| n.checked_mul(factor).map(Duration::from_secs);
    match unit {
        "ms" => Some(Duration::from_millis(n)),
        "s" => seconds(1),
        "m" => seconds(60),
        "h" => seconds(3_600),
        "d" => seconds(86_400),
        _ => return Err(invalid()),
    }
    .ok_or_else(|| format!("duration `{s}` is too long"))
}

/// Writes a duration in the largest unit that represents it exactly.
pub(crate) fn format_duration(d: Duration) -> String {
    let millis = d.as_millis();
    if d.subsec_millis() != 0 || millis == 0 {
        return format!("{millis}ms");
    }
    let secs = d.as_secs();
    for (unit, factor) in [("d", 86_400), ("h", 3_600), ("m", 60)] {
        if secs.is_multiple_of(factor) {
            return format!("{}{unit}", secs / factor);
        }
    }
    format!("{secs}s")
}

/// Serde helpers for `#[serde(with = "trias_runtime::config::duration")]` fields written as
/// `"30s"`, `"5m"` and so on.
pub mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Reads a duration string such as `"30s"`.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(deserializer)?;
        super::parse_duration(&s).map_err(serde::de::Error::custom)
    }

    /// Writes a duration back as such a string.
    pub fn serialize<S: Serializer>(d: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&super::format_duration(*d))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]
mod tests {
    use std::io::Write;

    use serde::{Deserialize, Serialize};

    use super::*;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Config {
        listen: String,
        #[serde(default)]
        audiences: Vec<String>,
        #[serde(default)]
        audit: Audit,
    }

    #[derive(Debug, Default, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Audit {
        #[serde(default)]
        strict: bool,
        #[serde(default)]
        batch: u32,
    }

    const PREFIX: &str = "TRIAS_ISSUER_";

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(text.as_bytes()).unwrap();
        file
    }

    fn env(vars: &[(&str, &str)]) -> BTreeMap<String, String> {
        vars.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn file_only() {
        let f = file("listen = \"127.0.0.1:8443\"\n[audit]\nstrict = true\n");
        let config: Config = load(Some(f.path()), &env(&[]), PREFIX).unwrap();
        assert_eq!(config.listen, "127.0.0.1:8443");
        assert!(config.audit.strict);
    }

    #[test]
    fn environment_overrides_file_and_sets_nested_keys() {
        let f = file("listen = \"127.0.0.1:8443\"\n[audit]\nstrict = true\n");
        let vars = env(&[
            ("TRIAS_ISSUER_LISTEN", "0.0.0.0:9000"),
            ("TRIAS_ISSUER_AUDIT__STRICT", "false"),
            ("TRIAS_ISSUER_AUDIT__BATCH", "5"),
            ("TRIAS_ISSUER_AUDIENCES", "[\"a\", \"b\"]"),
            ("TRIAS_VALIDATOR_LISTEN", "ignored"),
        ]);
        let config: Config = load(Some(f.path()), &vars, PREFIX).unwrap();
        assert_eq!(
            config,
            Config {
                listen: "0.0.0.0:9000".to_owned(),
                audiences: vec!["a".to_owned(), "b".to_owned()],
                audit: Audit {
                    strict: false,
                    batch: 5
                },
            }
        );
    }

    #[test]
    fn environment_alone_is_enough() {
        let vars = env(&[("TRIAS_ISSUER_LISTEN", "\"quoted\"")]);
        let config: Config = load(None, &vars, PREFIX).unwrap();
        assert_eq!(config.listen, "quoted");
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let f = file("listen = \"x\"\n\n[audit]\nstrikt = true\n");
        let error = load::<Config>(Some(f.path()), &env(&[]), PREFIX).unwrap_err();
        assert_eq!(error.key.as_deref(), Some("audit.strikt"), "{error}");
        assert!(error.source.ends_with(":4"), "{error}");
        assert!(error.to_string().contains("key `audit.strikt`"), "{error}");
    }

    #[test]
    fn bad_type_names_key_and_line() {
        let f = file("listen = \"x\"\n[audit]\nstrict = \"yes\"\n");
        let error = load::<Config>(Some(f.path()), &env(&[]), PREFIX).unwrap_err();
        let path = f.path().display().to_string();
        assert_eq!(error.source, format!("{path}:3"));
        assert_eq!(error.key.as_deref(), Some("audit.strict"));
        assert!(error.reason.contains("invalid type"), "{error}");
    }

    #[test]
    fn bad_environment_value_names_the_variable() {
        let vars = env(&[
            ("TRIAS_ISSUER_LISTEN", "x"),
            ("TRIAS_ISSUER_AUDIT__BATCH", "many"),
        ]);
        let error = load::<Config>(None, &vars, PREFIX).unwrap_err();
        assert_eq!(
            error.source,
            "environment variable TRIAS_ISSUER_AUDIT__BATCH"
        );
        assert_eq!(error.key.as_deref(), Some("audit.batch"));
    }

    #[test]
    fn unknown_environment_key_is_named() {
        let vars = env(&[("TRIAS_ISSUER_LISTEN", "x"), ("TRIAS_ISSUER_LISTNE", "y")]);
        let error = load::<Config>(None, &vars, PREFIX).unwrap_err();
        assert_eq!(error.source, "environment variable TRIAS_ISSUER_LISTNE");
        assert_eq!(error.key.as_deref(), Some("listne"));
    }

    #[test]
    fn missing_key_is_named() {
        let f = file("[audit]\n");
        let error = load::<Config>(Some(f.path()), &env(&[]), PREFIX).unwrap_err();
        assert_eq!(error.key.as_deref(), Some("listen"), "{error}");
    }

    #[test]
    fn syntax_error_has_a_line() {
        let f = file("listen = \"x\"\n\nbroken = = 1\n");
        let error = load::<Config>(Some(f.path()), &env(&[]), PREFIX).unwrap_err();
        assert!(error.source.ends_with(":3"), "{error}");
    }

    #[test]
    fn durations_parse_and_print() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3_600)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86_400)));
        for bad in ["", "0s", "-1s", "5", "1.5h", "5 weeks", "s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }

        #[derive(Debug, Deserialize, Serialize, PartialEq)]
        struct Timeouts {
            #[serde(with = "duration")]
            ttl: Duration,
        }
        let t: Timeouts = toml::from_str("ttl = \"2h\"").unwrap();
        assert_eq!(t.ttl, Duration::from_secs(7_200));
        assert_eq!(toml::to_string(&t).unwrap().trim(), "ttl = \"2h\"");
        let t = Timeouts {
            ttl: Duration::from_millis(1_500),
        };
        assert_eq!(toml::to_string(&t).unwrap().trim(), "ttl = \"1500ms\"");
    }
}
