//! The agent's local API as types: every request and every reply, shared by podnetd
//! (which serves them, [`crate::api`]) and every client (the `podnet` tool, the lab,
//! the tests), through the one [`Client`].
//!
//! On the wire: one JSON object per line each way. A request is
//! `{"v":1,"get":"<kind>",…}` ([`Request`]); `v` is [`API_VERSION`] (absent means 1). An
//! agent refuses a version it does not speak, with an error that says which it does. A
//! refused request is answered `{"error":"…"}`.

use crate::policy::{Denied, PodVerdict, PolicyStatus};
use crate::Status;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The API version this build speaks.
pub const API_VERSION: u32 = 1;

fn default_ping_size() -> u16 {
    56
}

/// What a client may ask.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "get", rename_all = "kebab-case")]
pub enum Request {
    /// The agent's view: node, lease, backend, peers, last sync → [`Status`].
    Status,
    /// The node's kernel state as data → [`NodeState`].
    State,
    /// One pod on this node, from its host veth and its own namespace → [`PodReport`].
    Pod { ip: Ipv4Addr },
    /// An ICMP echo with DF set from this node → [`PingReply`]. `size` is the payload.
    Ping {
        ip: Ipv4Addr,
        #[serde(default = "default_ping_size")]
        size: u16,
    },
    /// The NetworkPolicy datapath → [`PolicyStatus`].
    Policy,
    /// The same with the packets refused per pod and direction → [`PolicyStats`].
    PolicyStats,
    /// Only the revision the datapath reflects → [`PolicyRevision`].
    PolicyRevision,
    /// The version of each named object (`Pod ns/name`) the programmed verdicts
    /// reflect → [`PolicyVersions`].
    PolicyVersions {
        #[serde(default)]
        keys: Vec<String>,
    },
    /// The node's drop and flow events after `after` (0: every one kept), waiting up to
    /// `wait_ms` (at most 4000) for the first → [`EventsReply`]. `allowed: true` also
    /// turns allowed-flow events on for the next 5 s.
    Events {
        #[serde(default)]
        after: u64,
        #[serde(default)]
        wait_ms: u32,
        #[serde(default)]
        allowed: bool,
    },
    /// A new WireGuard key for this node, given to its device and published →
    /// [`crate::wireguard::Rotated`].
    RotateWireguardKey,
    /// What the programmed tables of local pod `ip` say of traffic with `peer` →
    /// [`PodVerdict`].
    Verdict {
        ip: Ipv4Addr,
        peer: Ipv4Addr,
        direction: podnet_policy::Direction,
        protocol: String,
        #[serde(default)]
        port: u16,
    },
}

/// A request as sent: the version, then the request.
#[derive(Serialize)]
struct Envelope<'a> {
    v: u32,
    #[serde(flatten)]
    request: &'a Request,
}

/// Reads a request line; an error says what is wrong, for the `error` reply.
pub fn parse_request(line: &str) -> Result<Request, String> {
    let mut v: serde_json::Value =
        serde_json::from_str(line).map_err(|e| format!("the request is not JSON: {e}"))?;
    let version = match v.as_object_mut().and_then(|o| o.remove("v")) {
        None => 1,
        Some(n) => n.as_u64().ok_or("\"v\" is the API version, a number")? as u32,
    };
    if version != API_VERSION {
        return Err(format!(
            "this agent speaks API version {API_VERSION}, the client {version}: use a podnet of the agent's release"
        ));
    }
    serde_json::from_value(v).map_err(|e| {
        format!(
            "{e}; send one of {{\"get\":\"status\"}}, {{\"get\":\"state\"}}, {{\"get\":\"pod\",\"ip\":…}}, {{\"get\":\"ping\",\"ip\":…,\"size\":N}}, {{\"get\":\"policy\"}}, {{\"get\":\"policy-stats\"}}, {{\"get\":\"policy-revision\"}}, {{\"get\":\"policy-versions\",\"keys\":[…]}}, {{\"get\":\"rotate-wireguard-key\"}}, {{\"get\":\"events\",\"after\":N,\"wait_ms\":N,\"allowed\":false}}, {{\"get\":\"verdict\",\"ip\":…,\"peer\":…,\"direction\":\"ingress\"|\"egress\",\"protocol\":\"TCP\",\"port\":N}}"
        )
    })
}

/// The answer to `events`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EventsReply {
    pub events: Vec<crate::observe::Event>,
    /// Ask after this next time.
    pub next: u64,
    /// Events lost so far on this node.
    pub lost: u64,
    /// Whether allowed-flow events are on now.
    #[serde(default)]
    pub allowed: bool,
}

/// A refusal: `{"error":"…"}`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ErrorReply {
    pub error: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PolicyRevision {
    pub datapath: String,
    /// Revision of the objects the datapath reflects (0: not programmed yet).
    pub revision: u64,
    pub error: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PolicyVersions {
    pub datapath: String,
    pub revision: u64,
    pub error: Option<String>,
    /// Each asked key → the version programmed (`None`: none, or the object is absent).
    pub versions: BTreeMap<String, Option<String>>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PolicyStats {
    #[serde(flatten)]
    pub status: PolicyStatus,
    #[serde(default)]
    pub denied: Vec<Denied>,
    /// Packets to or from addresses of the node's pod CIDR no programmed pod holds.
    #[serde(default)]
    pub closed_packets: u64,
    /// Why the counters could not be read, if they could not.
    #[serde(default)]
    pub denied_error: Option<String>,
    /// What is missing from the kernel now, read when asked
    /// ([`crate::policy::enforcement_problems`]): each one opens pods (or lets one
    /// forge its source) until the agent's next round puts it back.
    #[serde(default)]
    pub enforcement: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PingReply {
    pub ip: Ipv4Addr,
    pub size: u16,
    pub result: crate::probe::Echo,
}

/// The node's kernel state, as `ip`/`bridge` would show it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct NodeState {
    pub bridge: String,
    pub vxlan_dev: String,
    pub links: Vec<LinkState>,
    pub routes: Vec<RouteState>,
    pub neigh: Vec<NeighState>,
    /// The VXLAN device's FDB.
    pub fdb: Vec<FdbState>,
    pub forwarding: bool,
    pub conntrack: Conntrack,
    /// `rp_filter` of `all`, `default`, the VXLAN device and the bridge.
    pub rp_filter: BTreeMap<String, u64>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct LinkState {
    pub name: String,
    pub index: u32,
    pub kind: Option<String>,
    pub up: bool,
    pub mtu: u32,
    pub mac: String,
    /// The bridge it is on.
    pub master: Option<String>,
    pub vxlan: Option<VxlanState>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct VxlanState {
    pub vni: u32,
    pub port: u16,
    pub local: Option<Ipv4Addr>,
    pub learning: bool,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RouteState {
    /// `default` or `a.b.c.d/n`.
    pub dst: String,
    pub gateway: Option<Ipv4Addr>,
    pub dev: Option<String>,
    #[serde(default)]
    pub onlink: bool,
    #[serde(default)]
    pub protocol: u8,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NeighState {
    pub ip: Ipv4Addr,
    pub mac: Option<String>,
    /// The device (node entries; a pod's own are all on its interface).
    #[serde(default)]
    pub dev: String,
    /// `PERMANENT`, `REACHABLE`, `FAILED`…
    pub state: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct FdbState {
    pub mac: String,
    pub dst: Option<Ipv4Addr>,
    pub dev: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Conntrack {
    pub count: Option<u64>,
    pub max: Option<u64>,
}

/// One pod on this node, as its host veth and its own namespace show it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PodReport {
    pub ip: Ipv4Addr,
    /// Whether a host veth with this pod's MAC exists.
    pub found: bool,
    pub host_veth: Option<HostVeth>,
    /// The pod's namespace, as the veth's alias records it.
    pub netns: Option<String>,
    pub ifname: Option<String>,
    pub pod: Option<PodInside>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct HostVeth {
    pub name: String,
    pub up: bool,
    /// The kernel's operational state (`IF_OPER_*`: 6 is up, 2 down).
    pub operstate: u8,
    pub mtu: u32,
    pub master: Option<String>,
    pub mac: String,
}

/// Inside the pod's namespace; `error` if it could not be entered.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PodInside {
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub link: Option<PodLink>,
    #[serde(default)]
    pub addrs: Vec<String>,
    #[serde(default)]
    pub routes: Vec<RouteState>,
    #[serde(default)]
    pub neigh: Vec<NeighState>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PodLink {
    pub name: String,
    pub up: bool,
    pub mtu: u32,
    pub mac: String,
}

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

    pub fn rotate_wireguard_key(&self) -> Result<crate::wireguard::Rotated, ClientError> {
        self.call(&Request::RotateWireguardKey)
    }

    pub fn state(&self) -> Result<NodeState, ClientError> {
        self.call(&Request::State)
    }

    pub fn pod(&self, ip: Ipv4Addr) -> Result<PodReport, ClientError> {
        self.call(&Request::Pod { ip })
    }

    pub fn ping(&self, ip: Ipv4Addr, size: u16) -> Result<PingReply, ClientError> {
        self.call(&Request::Ping { ip, size })
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
        ip: Ipv4Addr,
        peer: Ipv4Addr,
        direction: podnet_policy::Direction,
        protocol: &str,
        port: u16,
    ) -> Result<PodVerdict, ClientError> {
        self.call(&Request::Verdict {
            ip,
            peer,
            direction,
            protocol: protocol.to_string(),
            port,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_versions_are_checked() {
        for r in [
            Request::Status,
            Request::Pod {
                ip: "10.244.0.5".parse().unwrap(),
            },
            Request::Ping {
                ip: "192.168.1.11".parse().unwrap(),
                size: 1422,
            },
            Request::PolicyVersions {
                keys: vec!["Pod default/a".into()],
            },
            Request::Verdict {
                ip: "10.244.0.5".parse().unwrap(),
                peer: "10.244.1.5".parse().unwrap(),
                direction: podnet_policy::Direction::Ingress,
                protocol: "TCP".into(),
                port: 80,
            },
        ] {
            let line = serde_json::to_string(&Envelope { v: 1, request: &r }).unwrap();
            assert!(line.contains("\"v\":1"), "{line}");
            assert_eq!(parse_request(&line).unwrap(), r);
        }
        // Older clients send no version.
        assert_eq!(
            parse_request(r#"{"get":"status"}"#).unwrap(),
            Request::Status
        );
        assert_eq!(
            parse_request(r#"{"get":"ping","ip":"10.0.0.1"}"#).unwrap(),
            Request::Ping {
                ip: "10.0.0.1".parse().unwrap(),
                size: 56
            }
        );
        let e = parse_request(r#"{"v":2,"get":"status"}"#).unwrap_err();
        assert!(e.contains("version 1"), "{e}");
        let e = parse_request(r#"{"get":"nope"}"#).unwrap_err();
        assert!(e.contains("send one of"), "{e}");
        let e = parse_request(r#"{"get":"pod","ip":"not-an-ip"}"#).unwrap_err();
        assert!(e.contains("send one of"), "{e}");
        assert!(parse_request("not json").unwrap_err().contains("not JSON"));
    }
}
