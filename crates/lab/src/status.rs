//! `lab status`: nodes, agents and pods, as each agent reports itself.

use super::*;

/// The lab's status as data (`lab status --output json`).
#[derive(Debug, Serialize)]
pub struct Status {
    pub name: String,
    /// What every node runs: how nodes reach each other, how pod packets cross a
    /// node, what enforces NetworkPolicy.
    pub backend: podnet_conventions::Backend,
    pub datapath: podnet_conventions::Datapath,
    pub policy_datapath: podnet_conventions::PolicyDatapath,
    /// `ipv4` or `dual`.
    pub ip_family: podnet_conventions::IpFamily,
    /// `ipv4` or `ipv6`: the family the nodes' overlay tunnels run over.
    pub underlay_family: podnet_conventions::UnderlayFamily,
    pub fabric: FabricStatus,
    pub nodes: Vec<NodeStatus>,
    pub pods: Vec<PodState>,
}

#[derive(Debug, Serialize)]
pub struct FabricStatus {
    pub netns: String,
    pub bridge: String,
}

#[derive(Debug, Serialize)]
pub struct NodeStatus {
    pub name: String,
    pub netns: String,
    pub underlay_ip: Ipv4Addr,
    /// A dual-stack node's underlay IPv6 address, as its agent publishes it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub underlay_ip6: Option<String>,
    /// Where the node's overlay tunnel ends (its underlay IPv6 address with
    /// `--underlay-family ipv6`), as its agent reports it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tunnel_ip: Option<String>,
    pub pod_cidr: Option<String>,
    /// A dual-stack node's IPv6 pod CIDR.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_cidr6: Option<String>,
    pub bridge: Option<String>,
    pub vxlan_dev: Option<String>,
    pub vtep_mac: Option<String>,
    pub agent_pid: Option<u32>,
    pub peers: usize,
    /// What the node's underlay guard holds and has dropped (VXLAN and WireGuard).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub underlay_guard: Option<podnet_api::GuardStatus>,
}

impl Lab {
    pub fn status(&self) -> Result<Status> {
        let st = self.load()?.with_context(|| {
            format!(
                "no lab {} on this machine; start one with `podnet lab up --name {}`",
                self.name, self.name
            )
        })?;
        let nodes = st
            .nodes
            .iter()
            .map(|n| {
                let agent = crate::ask(self, &n.name);
                let s = |f: fn(&podnet_api::Status) -> &String| {
                    agent.as_ref().map(f).filter(|v| !v.is_empty()).cloned()
                };
                NodeStatus {
                    name: n.name.clone(),
                    netns: n.netns.clone(),
                    underlay_ip: n.underlay_ip,
                    underlay_ip6: s(|a| &a.underlay_ip6),
                    tunnel_ip: s(|a| &a.tunnel_ip),
                    pod_cidr: s(|a| &a.pod_cidr),
                    pod_cidr6: s(|a| &a.pod_cidr6),
                    bridge: s(|a| &a.bridge),
                    vxlan_dev: s(|a| &a.vxlan_dev),
                    // Only a VXLAN node has a VTEP (host-gw and WireGuard have none).
                    vtep_mac: agent
                        .as_ref()
                        .filter(|a| !a.vxlan_dev.is_empty())
                        .map(|a| a.vtep_mac.clone()),
                    agent_pid: self.live_pid(&n.name, "podnetd"),
                    peers: agent.as_ref().map_or(0, |a| a.peers.len()),
                    underlay_guard: agent.as_ref().and_then(|a| a.underlay_guard.clone()),
                }
            })
            .collect();
        Ok(Status {
            name: st.name.clone(),
            backend: st.backend,
            datapath: st.datapath,
            policy_datapath: st.policy_datapath,
            ip_family: st.ip_family,
            underlay_family: st.underlay_family,
            fabric: FabricStatus {
                netns: self.fabric_ns(),
                bridge: "fabric0".into(),
            },
            nodes,
            pods: st.pods,
        })
    }
}

/// The agent's `status`, if it answers.
pub fn ask(lab: &Lab, node: &str) -> Option<podnet_api::Status> {
    lab.agent(node).status().ok()
}
