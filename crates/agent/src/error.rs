//! What can stop the agent, or fail one of its rounds: each error names the object
//! and says what to do.

use podnet_cni_spec::Ipv4Net;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Kernel(#[from] podnet_netlink::Error),
    #[error(transparent)]
    Datastore(#[from] podnet_datastore::Error),
    #[error("underlay link {dev}: {why}; name the node's physical interface with --underlay-dev")]
    Underlay { dev: String, why: String },
    #[error("this node's lease moved from {from} to {to} (it expired and another node took {from}); the node's pods still use {from}: drain the node, delete its pods, and restart podnetd")]
    LeaseMoved { from: Ipv4Net, to: Ipv4Net },
    #[error("NetworkPolicy datapath {datapath}: {source}")]
    Policy {
        datapath: &'static str,
        #[source]
        source: Failure,
    },
    #[error("WireGuard device {dev}: {why}")]
    WireGuard { dev: String, why: String },
    #[error("{0}")]
    Guard(Failure),
    #[error("node {node} runs the {backend} backend: only the wireguard backend has a key")]
    NoKey {
        node: String,
        backend: crate::Backend,
    },
    #[error("the device holds the new key but it could not be published: {0}; podnetd publishes it at its next lease renewal")]
    KeyNotPublished(Box<Error>),
    #[error("{what} {path}: {source}")]
    File {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The underlying error of a [`Failure`], kept whole as its source.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A failure of one of the agent's kernel or file operations below its own logic (a
/// map, a program, a filter, an nft transaction, the WireGuard device): what was being
/// done and on which object, with the underlying error kept as its source.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// An operation that failed: what, on which object, and the error it met.
    #[error("{what}: {source}")]
    Op {
        what: String,
        #[source]
        source: BoxError,
    },
    /// A netlink call that failed (the error names the operation and the object).
    #[error(transparent)]
    Kernel(#[from] podnet_netlink::Error),
    /// The datastore refused or could not be reached.
    #[error(transparent)]
    Datastore(#[from] podnet_datastore::Error),
    /// Another agent's API (`podnetd check-ready` asking the running agent).
    #[error(transparent)]
    Client(#[from] podnet_api::ClientError),
    /// A refusal or a finding that has no underlying error: what is wrong, and what
    /// to do.
    #[error("{0}")]
    Refused(String),
}

impl Failure {
    /// `what` failed with `source`.
    pub fn op(what: impl Into<String>, source: impl Into<BoxError>) -> Failure {
        Failure::Op {
            what: what.into(),
            source: source.into(),
        }
    }
}

impl From<String> for Failure {
    fn from(why: String) -> Failure {
        Failure::Refused(why)
    }
}

impl From<&str> for Failure {
    fn from(why: &str) -> Failure {
        Failure::Refused(why.to_string())
    }
}
