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
    #[error("NetworkPolicy datapath {datapath}: {why}")]
    Policy { datapath: &'static str, why: String },
    #[error("WireGuard device {dev}: {why}")]
    WireGuard { dev: String, why: String },
    #[error("{0}")]
    Guard(String),
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
