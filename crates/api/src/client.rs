//! The one way to talk to an agent: a request line out, a reply line back, over the
//! agent's Unix socket.

use crate::request::Envelope;
use crate::*;
use serde::de::DeserializeOwned;
use std::io::{BufRead, BufReader, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Why a call to the agent failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no agent answers on {path}: {source} (is podnetd running on this node?)")]
    Unreachable {
        path: String,
        source: std::io::Error,
    },
    #[error("the agent on {path} refused the request: {0}", .error)]
    Refused { path: String, error: String },
    #[error("the agent on {path} answered something this podnet cannot read ({why}): use a podnet of the agent's release")]
    Unreadable { path: String, why: String },
}

/// The one way to talk to an agent.
#[derive(Clone, Debug)]
pub struct Client {
    path: PathBuf,
}

impl Client {
    pub fn new(path: impl Into<PathBuf>) -> Client {
        Client { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sends `req`; its reply as `T`, or why not.
    pub fn call<T: DeserializeOwned>(&self, req: &Request) -> Result<T, ClientError> {
        let path = self.path.display().to_string();
        let unreachable = |source| ClientError::Unreachable {
            path: path.clone(),
            source,
        };
        let c = std::os::unix::net::UnixStream::connect(&self.path).map_err(unreachable)?;
        c.set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(unreachable)?;
        let line = serde_json::to_string(&Envelope {
            v: API_VERSION,
            request: req,
        })
        .expect("requests serialize");
        let mut w = &c;
        writeln!(w, "{line}").map_err(unreachable)?;
        let mut answer = String::new();
        BufReader::new(&c)
            .read_line(&mut answer)
            .map_err(unreachable)?;
        let v: serde_json::Value =
            serde_json::from_str(&answer).map_err(|e| ClientError::Unreadable {
                path: path.clone(),
                why: e.to_string(),
            })?;
        // A refusal is `{"error": …}` and nothing else; replies may carry an `error`
        // field of their own (the policy datapath's last failure).
        if let Some(e) = v
            .as_object()
            .filter(|o| o.len() == 1)
            .and_then(|o| o.get("error"))
            .and_then(|e| e.as_str())
        {
            return Err(ClientError::Refused {
                path,
                error: e.to_string(),
            });
        }
        serde_json::from_value(v).map_err(|e| ClientError::Unreadable {
            path,
            why: e.to_string(),
        })
    }

    pub fn status(&self) -> Result<Status, ClientError> {
        self.call(&Request::Status)
    }

    pub fn events(
        &self,
        after: u64,
        wait_ms: u32,
        allowed: bool,
    ) -> Result<EventsReply, ClientError> {
        self.call(&Request::Events {
            after,
            wait_ms,
            allowed,
        })
    }

    pub fn rotate_wireguard_key(&self) -> Result<Rotated, ClientError> {
        self.call(&Request::RotateWireguardKey)
    }

    pub fn state(&self) -> Result<NodeState, ClientError> {
        self.call(&Request::State)
    }

    /// The pod with address `ip` (either of a dual-stack pod's).
    pub fn pod(&self, ip: impl Into<IpAddr>) -> Result<PodReport, ClientError> {
        self.call(&Request::Pod { ip: ip.into() })
    }

    /// An echo of `size` bytes of payload from the node to `ip` (ICMPv6 to an IPv6
    /// address: agents before IPv6 underlays refuse those).
    pub fn ping(&self, ip: impl Into<IpAddr>, size: u16) -> Result<PingReply, ClientError> {
        self.call(&Request::Ping {
            ip: ip.into(),
            size,
        })
    }

    pub fn policy(&self) -> Result<PolicyStatus, ClientError> {
        self.call(&Request::Policy)
    }

    pub fn policy_stats(&self) -> Result<PolicyStats, ClientError> {
        self.call(&Request::PolicyStats)
    }

    pub fn policy_revision(&self) -> Result<PolicyRevision, ClientError> {
        self.call(&Request::PolicyRevision)
    }

    pub fn policy_versions(&self, keys: Vec<String>) -> Result<PolicyVersions, ClientError> {
        self.call(&Request::PolicyVersions { keys })
    }

    pub fn verdict(
        &self,
        ip: impl Into<IpAddr>,
        peer: impl Into<IpAddr>,
        direction: podnet_policy::Direction,
        protocol: &str,
        port: u16,
    ) -> Result<PodVerdict, ClientError> {
        self.call(&Request::Verdict {
            ip: ip.into(),
            peer: peer.into(),
            direction,
            protocol: protocol.to_string(),
            port,
        })
    }
}
