//! The files and messages that pass between podnet's programs, as types both sides
//! use: the node file podnetd writes for podnet-cni ([`NodeFile`]), and the report
//! podnet-cni sends podnetd after each invocation ([`CniReport`]).

use crate::Datapath;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// What the node's agent publishes for the plugin, at [`crate::DEFAULT_NODE_FILE`]
/// (written whole and renamed into place: a reader sees the old file or the new one).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeFile {
    /// The node's name (informational: the plugin does not read it).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub node: String,
    /// The node's pod CIDR, leased from the datastore.
    #[serde(rename = "podCIDR")]
    pub pod_cidr: Option<String>,
    /// The node's pod CIDRs, one per family (a dual-stack node's `spec.podCIDRs`);
    /// when present, podnet-cni reads them instead of `podCIDR`.
    #[serde(rename = "podCIDRs", default, skip_serializing_if = "Vec::is_empty")]
    pub pod_cidrs: Vec<String>,
    /// The cluster's pod CIDR: where a pod's UDP to an overlay port may go.
    #[serde(rename = "clusterCIDR", default)]
    pub cluster_cidr: Option<String>,
    /// A dual-stack cluster's pod CIDRs, one per family (`--cluster-cidr`): the IPv6 one
    /// is where a dual-stack pod's IPv6 UDP to an overlay port may go.
    #[serde(
        rename = "clusterCIDRs",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub cluster_cidrs: Vec<String>,
    /// The node's overlay UDP ports (VXLAN, WireGuard), closed to pods except towards
    /// other pods (anti-spoofing's overlay guard).
    #[serde(default)]
    pub overlay_ports: Vec<u16>,
    /// The pod MTU.
    pub mtu: Option<u32>,
    /// The node bridge.
    pub bridge: Option<String>,
    /// How the node's podnetd moves pod packets.
    #[serde(default)]
    pub datapath: Option<Datapath>,
    /// With the eBPF policy datapath: where podnetd pinned the two programs every
    /// pod's host veth must carry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_programs: Option<PolicyPrograms>,
    /// A bpffs directory of podnetd's where podnet-cni pins the node's anti-spoofing
    /// program and map, so they outlive the node's last pod (published only when the
    /// directory is on a bpffs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bpf_dir: Option<PathBuf>,
}

/// The eBPF policy programs a pod's host veth carries, pinned by podnetd.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyPrograms {
    /// On the host veth's ingress: the pod's egress policy.
    pub from_pod: PathBuf,
    /// On the host veth's egress: the pod's ingress policy.
    pub to_pod: PathBuf,
}

/// One podnet-cni invocation, as the plugin reports it to the node's agent (one
/// datagram to [`crate::cni_report_socket`], for the agent's metrics).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CniReport {
    /// `ADD`, `DEL`, `CHECK`, `STATUS` or `GC`.
    pub verb: String,
    /// `ok` or `error`.
    pub result: String,
    /// From the plugin's start to its answer.
    pub seconds: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_node_file_keeps_its_wire_names() {
        let f = NodeFile {
            node: "n1".into(),
            pod_cidr: Some("10.244.1.0/24".into()),
            pod_cidrs: vec!["10.244.1.0/24".into(), "fd00:10:244:1::/64".into()],
            cluster_cidr: Some("10.244.0.0/16".into()),
            cluster_cidrs: vec!["10.244.0.0/16".into(), "fd00:10:244::/56".into()],
            overlay_ports: vec![8472],
            mtu: Some(1450),
            bridge: Some("podnet0".into()),
            datapath: Some(Datapath::Ebpf),
            policy_programs: Some(PolicyPrograms {
                from_pod: "/sys/fs/bpf/podnet/from_pod".into(),
                to_pod: "/sys/fs/bpf/podnet/to_pod".into(),
            }),
            bpf_dir: Some("/sys/fs/bpf/podnet".into()),
        };
        let v = serde_json::to_value(&f).unwrap();
        for k in [
            "podCIDR",
            "podCIDRs",
            "clusterCIDR",
            "clusterCIDRs",
            "overlayPorts",
            "mtu",
            "bridge",
            "datapath",
            "bpfDir",
        ] {
            assert!(v.get(k).is_some(), "{k} missing from {v}");
        }
        assert_eq!(
            v["policyPrograms"]["fromPod"],
            "/sys/fs/bpf/podnet/from_pod"
        );
        assert_eq!(serde_json::from_value::<NodeFile>(v).unwrap(), f);
        // A file from an older agent: only the pod CIDR, MTU and bridge.
        let old: NodeFile =
            serde_json::from_str(r#"{"podCIDR":"10.244.0.0/24","mtu":1450,"bridge":"podnet0"}"#)
                .unwrap();
        assert_eq!(old.datapath, None);
        assert!(old.overlay_ports.is_empty());
        // A datapath this build does not know is refused, not read as the default.
        assert!(serde_json::from_str::<NodeFile>(
            r#"{"podCIDR":null,"mtu":null,"bridge":null,"datapath":"xdp"}"#
        )
        .is_err());
    }
}
