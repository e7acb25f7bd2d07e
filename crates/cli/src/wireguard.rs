//! `podnet wireguard status|rotate`: the WireGuard backend per node (device, key,
//! peers and their latest handshakes), and re-keying a node while traffic flows, with
//! what the traffic lost measured (in a lab) and reported.

use anyhow::{Context, Result};
use podnet_api::Client;
use podnet_api::Rotated;
use podnet_api::WireGuardStatus;
use serde::Serialize;
use std::path::PathBuf;

#[derive(Clone, Debug, Serialize)]
pub struct NodeWireGuard {
    pub node: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wireguard: Option<WireGuardStatus>,
    /// Why there is nothing to show (agent down, another backend).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Peer name by public key, from the agent's peers.
    #[serde(skip)]
    names: Vec<(String, String)>,
}

/// Each node's WireGuard device as its agent reports it.
pub fn status(socks: &[(String, PathBuf)]) -> Vec<NodeWireGuard> {
    socks
        .iter()
        .map(|(node, sock)| match Client::new(sock).status() {
            Ok(st) => NodeWireGuard {
                node: node.clone(),
                error: st
                    .wireguard
                    .is_none()
                    .then(|| format!("node {node} runs the {} backend, not wireguard", st.backend)),
                names: st
                    .peers
                    .iter()
                    .map(|p| (p.wireguard_public_key.clone(), p.name.clone()))
                    .collect(),
                wireguard: st.wireguard,
            },
            Err(e) => NodeWireGuard {
                node: node.clone(),
                wireguard: None,
                error: Some(format!("{e:#}")),
                names: vec![],
            },
        })
        .collect()
}

pub fn render_status(nodes: &[NodeWireGuard]) -> String {
    let mut s = String::new();
    for n in nodes {
        let Some(w) = &n.wireguard else {
            s += &format!("{}: {}\n", n.node, n.error.as_deref().unwrap_or("?"));
            continue;
        };
        s +=
            &format!(
            "{}: {} port {}, public key {}\n  {} (pid {}, socket {}); the kernel {} WireGuard\n",
            n.node,
            w.device,
            w.port,
            w.public_key,
            w.implementation,
            w.pid,
            w.socket,
            if w.kernel_has_wireguard { "has" } else { "has no" }
        );
        if let Some(e) = &w.error {
            s += &format!("  device does not answer: {e}\n");
        }
        for p in &w.peers {
            let name = n
                .names
                .iter()
                .find(|(k, _)| *k == p.public_key)
                .map(|(_, n)| n.as_str())
                .unwrap_or("(not a current peer)");
            s += &format!(
                "  peer {name:<8} {}  endpoint {:<21} allowed {:<16} handshake {:<10} rx {} tx {}\n",
                p.public_key,
                p.endpoint,
                p.allowed_ips.join(","),
                crate::trace::age(p.last_handshake),
                p.rx_bytes,
                p.tx_bytes
            );
        }
    }
    s
}

/// One flow measured across a rotation.
#[derive(Clone, Debug, Serialize)]
pub struct FlowLoss {
    pub from: String,
    pub to: String,
    pub sent: u32,
    pub received: u32,
    pub lost: u32,
    /// The longest run of lost echoes, in ms of sending time.
    pub longest_gap_ms: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct RotationReport {
    #[serde(flatten)]
    pub rotated: Rotated,
    /// From the rotation's answer until every peer holds the new key (lab only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peers_updated_ms: Option<u64>,
    /// ICMP echo every 5 ms from a pod on each other node to a pod on the rotated node,
    /// from before the rotation until a second after every peer has the new key.
    pub traffic: Vec<FlowLoss>,
}

pub fn render_rotation(r: &RotationReport) -> String {
    let mut s = format!(
        "{}: new WireGuard key {} (was {}), published in {} ms\n",
        r.rotated.node, r.rotated.public_key, r.rotated.public_key_before, r.rotated.elapsed_ms
    );
    if let Some(ms) = r.peers_updated_ms {
        s += &format!("every peer holds the new key {ms} ms later\n");
    }
    if r.traffic.is_empty() {
        s += "traffic loss not measured (measured in a lab with pods on the rotated node and another)\n";
    }
    for f in &r.traffic {
        s += &format!(
            "{} → {}: {} echoes, {} lost, longest gap {} ms\n",
            f.from, f.to, f.sent, f.lost, f.longest_gap_ms
        );
    }
    s
}

/// Rotates the key of the agent at `sock` (no traffic measured).
pub fn rotate(sock: PathBuf) -> Result<RotationReport> {
    let rotated = Client::new(&sock)
        .rotate_wireguard_key()
        .with_context(|| format!("rotate the WireGuard key through {}", sock.display()))?;
    Ok(RotationReport {
        rotated,
        peers_updated_ms: None,
        traffic: vec![],
    })
}
