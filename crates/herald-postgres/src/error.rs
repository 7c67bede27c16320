//! sqlx errors as [`herald_core::Error`]s: classified (transient or not) and stripped of secrets.

use herald_core::error::{Message, error_chain};
use herald_core::redact::scrub;
use herald_core::{Error, Result};

/// SQLSTATE codes (or classes, when two characters) after which the same operation may succeed.
const TRANSIENT_SQLSTATES: [&str; 10] = [
    "08",    // connection exception
    "53",    // insufficient resources (too many connections, out of memory, disk full)
    "40001", // serialization failure
    "40P01", // deadlock detected
    "55P03", // lock not available
    "57014", // query canceled (statement timeout)
    "57P01", // admin shutdown
    "57P02", // crash shutdown
    "57P03", // cannot connect now (starting up)
    "58000", // system error
];

/// Whether `error` may go away if the operation is tried again later.
pub(crate) fn is_transient(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            TRANSIENT_SQLSTATES.iter().any(|t| {
                if t.len() == 2 {
                    code.starts_with(t)
                } else {
                    code == *t
                }
            })
        }),
        _ => false,
    }
}

/// Turns a sqlx error into a store error for `operation`.
///
/// The driver error (with its causes) is rendered to text, every one of `secrets` (the
/// connection password, when known) is removed, and the text becomes the source: no secret
/// survives in `Display`, in the chain or in `Debug`.
pub(crate) fn store_error(
    operation: &'static str,
    error: sqlx::Error,
    secrets: &[String],
) -> Error {
    let transient = is_transient(&error);
    let text = scrub_all(&error_chain(&error), secrets);
    Error::store(operation, transient, Message(text))
}

/// Shorthand to map a sqlx result for `operation`.
pub(crate) trait ResultExt<T> {
    /// Maps the error with [`store_error`].
    fn store_err(self, operation: &'static str, secrets: &[String]) -> Result<T>;
}

impl<T> ResultExt<T> for std::result::Result<T, sqlx::Error> {
    fn store_err(self, operation: &'static str, secrets: &[String]) -> Result<T> {
        self.map_err(|error| store_error(operation, error, secrets))
    }
}

/// The password of a connection URL (`scheme://user:password@host/…` or `?password=…`), both
/// as written and percent-decoded, so that it can be scrubbed from driver messages.
pub(crate) fn url_secrets(url: &str) -> Vec<String> {
    let mut secrets = Vec::new();
    if let Some(scheme_end) = url.find("://") {
        let rest = &url[scheme_end + 3..];
        let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let authority = &rest[..authority_end];
        if let Some(at) = authority.rfind('@')
            && let Some((_, password)) = authority[..at].split_once(':')
        {
            secrets.push(password.to_owned());
        }
    }
    if let Some((_, query)) = url.split_once('?') {
        for pair in query.split('&') {
            if let Some((key, value)) = pair.split_once('=')
                && key.eq_ignore_ascii_case("password")
            {
                secrets.push(value.to_owned());
            }
        }
    }
    let decoded: Vec<String> = secrets.iter().map(|s| percent_decode(s)).collect();
    secrets.extend(decoded);
    secrets.retain(|s| !s.is_empty());
    secrets.sort();
    secrets.dedup();
    secrets
}

/// Removes every secret of `secrets` from `text`.
pub(crate) fn scrub_all(text: &str, secrets: &[String]) -> String {
    secrets
        .iter()
        .fold(text.to_owned(), |text, secret| scrub(&text, Some(secret)))
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(hi), Some(lo)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push((hi * 16 + lo) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_passwords_in_urls() {
        assert_eq!(url_secrets("postgres://app:s3cret@db/x"), vec!["s3cret"]);
        assert_eq!(
            url_secrets("postgres://app:p%40ss@db/x"),
            vec!["p%40ss", "p@ss"]
        );
        assert_eq!(
            url_secrets("postgres://db/x?user=a&password=hunter2"),
            vec!["hunter2"]
        );
        assert!(url_secrets("postgres://app@db/x").is_empty());
        assert!(url_secrets("not a url").is_empty());
    }

    #[test]
    fn scrubs_every_secret() {
        let secrets = url_secrets("postgres://app:p%40ss@db/x");
        assert_eq!(
            scrub_all("failed for p@ss and p%40ss", &secrets),
            "failed for *** and ***"
        );
    }

    #[test]
    fn classifies_driver_errors() {
        let io = sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert!(is_transient(&io));
        assert!(is_transient(&sqlx::Error::PoolTimedOut));
        assert!(!is_transient(&sqlx::Error::RowNotFound));
        assert!(!is_transient(&sqlx::Error::PoolClosed));
        let err = store_error("claim", io, &[]);
        assert!(err.is_transient());
        assert!(err.chain().starts_with("outbox store failed to claim: "));
    }
}
