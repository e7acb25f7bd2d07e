//! A request as it travels: what a client may ask ([`Request`]), and how the agent reads
//! a request line ([`parse_request`]), checking the API version.

use serde::{Deserialize, Serialize};
use std::net::IpAddr;

/// The API version this build speaks.
pub const API_VERSION: u32 = 1;

fn default_ping_size() -> u16 {
    56
}

/// What a client may ask.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "get", rename_all = "kebab-case")]
pub enum Request {
    /// The agent's view: node, lease, backend, peers, last sync → [`crate::Status`].
    Status,
    /// The node's kernel state as data → [`crate::NodeState`].
    State,
    /// One pod on this node, from its host veth and its own namespace → [`crate::PodReport`].
    Pod { ip: IpAddr },
    /// An ICMP echo with DF set from this node (ICMPv6, unfragmented, to an IPv6
    /// address) → [`crate::PingReply`]. `size` is the payload.
    Ping {
        ip: IpAddr,
        #[serde(default = "default_ping_size")]
        size: u16,
    },
    /// The NetworkPolicy datapath → [`crate::PolicyStatus`].
    Policy,
    /// The same with the packets refused per pod and direction → [`crate::PolicyStats`].
    PolicyStats,
    /// Only the revision the datapath reflects → [`crate::PolicyRevision`].
    PolicyRevision,
    /// The version of each named object (`Pod ns/name`) the programmed verdicts
    /// reflect → [`crate::PolicyVersions`].
    PolicyVersions {
        #[serde(default)]
        keys: Vec<String>,
    },
    /// The node's drop and flow events after `after` (0: every one kept), waiting up to
    /// `wait_ms` (at most 4000) for the first → [`crate::EventsReply`]. `allowed: true` also
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
    /// [`crate::Rotated`].
    RotateWireguardKey,
    /// What the programmed tables of local pod `ip` say of traffic with `peer` →
    /// [`PodVerdict`].
    Verdict {
        ip: IpAddr,
        peer: IpAddr,
        direction: podnet_policy::Direction,
        protocol: String,
        #[serde(default)]
        port: u16,
    },
    /// What this node's kube-proxy does to packets for a Service → [`crate::ServiceReport`]:
    /// `target` is a ClusterIP, or `namespace/name` (`name`: in `default`); `port` 0
    /// and `protocol` "" match every port. `ipv6`: kube-proxy's IPv6 rules (a
    /// dual-stack Service's IPv6 ClusterIP); an IPv6 `target` implies it.
    Service {
        target: String,
        #[serde(default)]
        port: u16,
        #[serde(default)]
        protocol: String,
        #[serde(default)]
        ipv6: bool,
    },
}

/// A request as sent: the version, then the request.
#[derive(Serialize)]
pub(crate) struct Envelope<'a> {
    pub(crate) v: u32,
    #[serde(flatten)]
    pub(crate) request: &'a Request,
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
