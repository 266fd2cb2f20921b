//! A box for secrets (keys, client secrets, database URLs) whose `Debug` never shows the value.

use std::fmt;

/// A value that must not end up in logs.
///
/// `Debug` prints `Secret(<redacted>)`. `PartialEq` is deliberately missing: comparing secrets
/// with `==` can leak them through timing, so callers compare in constant time themselves.
#[derive(Clone, serde::Deserialize)]
#[serde(transparent)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    /// Wraps a secret value.
    pub fn new(value: T) -> Self {
        Self(value)
    }

    /// The secret itself; every call site is a place the secret leaves the box.
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_shows_no_secret() {
        let secret = Secret::new("hunter2".to_owned());
        let shown = format!("{secret:?} {:?}", Some(secret.clone()));
        assert!(!shown.contains("hunter2"), "{shown}");
        assert_eq!(format!("{secret:?}"), "Secret(<redacted>)");
        assert_eq!(secret.expose(), "hunter2");
    }

    #[test]
    fn deserializes_transparently() {
        #[derive(serde::Deserialize)]
        struct Config {
            key: Secret<String>,
        }
        let config: Config = toml::from_str("key = \"s3cret\"").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.key.expose(), "s3cret");
    }
}
