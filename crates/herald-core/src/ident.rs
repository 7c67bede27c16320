//! SQL identifiers taken from configuration (schema and table names).
//!
//! They are validated once, when the configuration is built, so that SQL text assembled from
//! them can never carry anything but a plain name. Values always travel as bound parameters.

use std::fmt;

use crate::{Error, Result};

/// A validated SQL identifier: ASCII letters, digits and `_`, starting with a letter or `_`,
/// at most 63 bytes (PostgreSQL's limit). Rendered double-quoted, so reserved words are safe too.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Identifier(String);

impl Identifier {
    /// Longest identifier accepted (PostgreSQL truncates beyond 63 bytes).
    pub const MAX_LEN: usize = 63;

    /// Validates `name`; `what` names the setting in the error (`schema`, `table`).
    pub fn parse(what: &str, name: &str) -> Result<Self> {
        let valid_start = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
        let valid_rest = name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if name.is_empty() || name.len() > Self::MAX_LEN || !valid_start || !valid_rest {
            return Err(Error::Config(format!(
                "{what} name {name:?} is not a valid SQL identifier \
                 (letters, digits and _, starting with a letter or _, at most {} bytes)",
                Self::MAX_LEN
            )));
        }
        Ok(Identifier(name.to_owned()))
    }

    /// The bare name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name quoted for SQL (`"name"`).
    pub fn quoted(&self) -> String {
        format!("\"{}\"", self.0)
    }
}

impl fmt::Display for Identifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Identifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_names() {
        for name in ["herald", "_outbox", "Outbox_2", "select"] {
            assert_eq!(Identifier::parse("table", name).unwrap().as_str(), name);
        }
    }

    #[test]
    fn refuses_injection_attempts() {
        for name in [
            "",
            "outbox; drop table users",
            "a\"b",
            "1abc",
            "out box",
            "ünïcode",
            &"x".repeat(64),
        ] {
            let err = Identifier::parse("table", name).unwrap_err();
            assert!(matches!(err, Error::Config(_)), "{name:?} gave {err:?}");
        }
    }
}
