//! An adapter's own config table and the error a bad one produces.
//!
//! The hub hands each adapter the `[adapters.config]` table of its entry; the
//! adapter deserializes it into its typed struct (`#[serde(deny_unknown_fields)]`)
//! with [`AdapterConfig::parse`], which reports the exact key at fault.

use std::fmt;

use serde::de::DeserializeOwned;

/// A configuration problem in one adapter's table.
///
/// The hub adds the file name and the adapter name when it reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted path of the key at fault inside the adapter's config table
    /// (`webhooks[0].url`), if the problem is with one key.
    pub key: Option<String>,
    /// What is wrong and what would be valid.
    pub message: String,
}

impl ConfigError {
    /// An error about one key.
    pub fn key(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            key: Some(key.into()),
            message: message.into(),
        }
    }

    /// An error about the table as a whole.
    pub fn table(message: impl Into<String>) -> Self {
        ConfigError {
            key: None,
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.key {
            Some(k) => write!(f, "key `{k}`: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

/// The configuration handed to an adapter factory.
#[derive(Debug, Clone, Default)]
pub struct AdapterConfig {
    /// The instance name (`[[adapters]] name`).
    pub name: String,
    /// The `[adapters.config]` table, empty when absent.
    pub table: toml::Table,
    /// The directory relative file paths in the table are relative to: the
    /// config file's. `None`: the working directory (inline configs, and
    /// plugins loaded as shared libraries).
    pub base_dir: Option<std::path::PathBuf>,
}

impl AdapterConfig {
    /// A config from an instance name and TOML text (the form in which
    /// config crosses a plugin boundary).
    pub fn from_toml_str(name: &str, text: &str) -> Result<Self, ConfigError> {
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigError::table(e.to_string()))?;
        Ok(AdapterConfig {
            name: name.to_owned(),
            table,
            base_dir: None,
        })
    }

    /// A file path from the table, made relative to [`Self::base_dir`] when
    /// it is relative (certificates, keys, CA and key files).
    pub fn resolve(&self, path: &std::path::Path) -> std::path::PathBuf {
        match &self.base_dir {
            Some(dir) if path.is_relative() => dir.join(path),
            _ => path.to_path_buf(),
        }
    }

    /// The table as TOML text.
    pub fn to_toml_string(&self) -> String {
        toml::to_string(&self.table).unwrap_or_default()
    }

    /// Deserializes the table into `T`, reporting the key at fault.
    ///
    /// With `#[serde(deny_unknown_fields)]` on `T`, a misspelled key gives
    /// `key `lisen`: unknown field `lisen`, expected one of ...`.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, ConfigError> {
        let value = toml::Value::Table(self.table.clone());
        serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let message = inner.message().trim_end().to_owned();
            // serde_path_to_error already ends the path with an unknown key.
            let key = if path != "." {
                Some(path)
            } else {
                unknown_field_name(&message).map(str::to_owned)
            };
            ConfigError { key, message }
        })
    }
}

/// Pulls `x` out of serde's "unknown field `x`, expected ..." message.
fn unknown_field_name(msg: &str) -> Option<&str> {
    let rest = msg.strip_prefix("unknown field `")?;
    rest.split('`').next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Demo {
        listen: String,
        #[serde(default)]
        hooks: Vec<Hook>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Hook {
        url: String,
    }

    fn cfg(text: &str) -> AdapterConfig {
        AdapterConfig::from_toml_str("demo", text).unwrap()
    }

    #[test]
    fn misspelled_key_is_named_with_the_valid_ones() {
        let e = cfg("lisen = \"x\"").parse::<Demo>().unwrap_err();
        assert_eq!(e.key.as_deref(), Some("lisen"));
        assert!(
            e.message.contains("expected `listen` or `hooks`"),
            "{}",
            e.message
        );
    }

    #[test]
    fn nested_key_errors_carry_their_path() {
        let e = cfg("listen = \"x\"\nhooks = [{ url = 3 }]")
            .parse::<Demo>()
            .unwrap_err();
        assert_eq!(e.key.as_deref(), Some("hooks[0].url"));
        let e = cfg("listen = \"x\"\nhooks = [{ ur = \"y\" }]")
            .parse::<Demo>()
            .unwrap_err();
        assert_eq!(e.key.as_deref(), Some("hooks[0].ur"));
    }

    #[test]
    fn missing_key_is_reported() {
        let e = cfg("").parse::<Demo>().unwrap_err();
        assert!(
            e.message.contains("missing field `listen`"),
            "{}",
            e.message
        );
    }
}
