//! Errors from the kernel interface. Each names the operation and the object.

use std::io;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// "operation object", or just "operation" when there is no object to name.
fn what(op: &str, obj: &str) -> String {
    if obj.is_empty() {
        op.to_string()
    } else {
        format!("{op} {obj}")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The object the operation needs does not exist (ENODEV, ENOENT, ESRCH).
    #[error("{}: not found{}", what(op, obj), .ext.as_deref().map(|e| format!(" (kernel says: {e})")).unwrap_or_default())]
    NotFound {
        op: &'static str,
        obj: String,
        ext: Option<String>,
    },
    /// The object the operation would create exists already (EEXIST).
    #[error("{}: already exists", what(op, obj))]
    Exists { op: &'static str, obj: String },
    /// A link of that name exists, but of another kind than needed.
    #[error("link {name} exists but is a {kind}, not a {want}")]
    WrongKind {
        name: String,
        kind: String,
        want: &'static str,
    },
    /// The kernel refused the operation for another reason.
    #[error("{}: {}{}", what(op, obj), .source, .ext.as_deref().map(|e| format!(" (kernel says: {e})")).unwrap_or_default())]
    Kernel {
        op: &'static str,
        obj: String,
        #[source]
        source: io::Error,
        /// The kernel's extended-ack explanation, when it sent one.
        ext: Option<String>,
    },
    /// A system call around netlink (socket, setns, mount…) failed.
    #[error("{}: {source}", what(op, obj))]
    Io {
        op: &'static str,
        obj: String,
        #[source]
        source: io::Error,
    },
    /// The kernel's answer could not be understood.
    #[error("{}: {why}", what(op, obj))]
    Malformed {
        op: &'static str,
        obj: String,
        why: String,
    },
}

impl Error {
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::NotFound { .. })
    }

    pub fn is_exists(&self) -> bool {
        matches!(self, Error::Exists { .. })
    }

    /// The kernel does not know what was asked (a link kind it has no module for).
    pub fn is_not_supported(&self) -> bool {
        self.errno() == Some(libc::EOPNOTSUPP)
    }

    /// The errno behind the error, if any.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::NotFound { .. } => Some(libc::ENOENT),
            Error::Exists { .. } => Some(libc::EEXIST),
            Error::Kernel { source, .. } | Error::Io { source, .. } => source.raw_os_error(),
            Error::Malformed { .. } | Error::WrongKind { .. } => None,
        }
    }

    /// Builds the right variant for a kernel errno.
    pub fn from_errno(
        op: &'static str,
        obj: impl Into<String>,
        errno: i32,
        ext: Option<String>,
    ) -> Error {
        let obj = obj.into();
        match errno {
            libc::ENODEV | libc::ENOENT | libc::ESRCH => Error::NotFound { op, obj, ext },
            libc::EEXIST => Error::Exists { op, obj },
            _ => Error::Kernel {
                op,
                obj,
                source: io::Error::from_raw_os_error(errno),
                ext,
            },
        }
    }

    pub fn io(op: &'static str, obj: impl Into<String>, source: io::Error) -> Error {
        Error::Io {
            op,
            obj: obj.into(),
            source,
        }
    }
}
