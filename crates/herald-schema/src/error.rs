//! The errors of the catalog: files that cannot be read or written, and inputs it cannot use.

use std::path::PathBuf;

/// What went wrong while reading, comparing or writing schemas (a failed compatibility check
/// is not an error but a [`Report`](crate::Report)).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A snapshot file or folder could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A snapshot file is not a snapshot Herald wrote.
    #[error("{}: not a schema snapshot: {reason}", path.display())]
    Snapshot {
        /// The file.
        path: PathBuf,
        /// Why it cannot be read.
        reason: String,
    },
    /// An event type cannot name a snapshot folder (it must be made of `A-Z a-z 0-9 . _ -`).
    #[error("event type `{0}` cannot name a snapshot folder (use letters, digits, `.`, `_`, `-`)")]
    EventType(String),
    /// The same (type, version) was registered twice.
    #[error("{event_type} v{version} is registered twice")]
    Duplicate {
        /// The event type.
        event_type: String,
        /// Its version.
        version: u32,
    },
    /// A Protobuf descriptor set could not be decoded or lacks the message.
    #[error("protobuf descriptor of `{message}`: {reason}")]
    Descriptor {
        /// The message's full name.
        message: String,
        /// What is wrong.
        reason: String,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
