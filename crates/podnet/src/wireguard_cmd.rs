//! `podnet wireguard status|rotate`: the WireGuard backend per node (device, key,
//! peers and their latest handshakes), and re-keying a node while traffic flows, with
//! what the traffic lost measured (in a lab) and reported.

use anyhow::{bail, Context, Result};
use podnet_api::Client;
use podnet_api::Rotated;
use podnet_api::WireGuardStatus;
use serde::Serialize;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

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

/// Rotates `node`'s key in lab `lab` while a pod on each other node pings a pod on
/// `node`; returns what the traffic lost.
pub fn rotate_in_lab(lab: &crate::lab::Lab, node: &str) -> Result<RotationReport> {
    let st = lab.load()?.context("the lab is not up")?;
    if !st.nodes.iter().any(|n| n.name == node) {
        bail!("no node {node} in lab {}", lab.name);
    }
    let target = st.pods.iter().find(|p| p.node == node).cloned();
    let sources: Vec<_> = st
        .nodes
        .iter()
        .filter(|n| n.name != node)
        .filter_map(|n| st.pods.iter().find(|p| p.node == n.name).cloned())
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let mut flows = Vec::new();
    if let Some(t) = &target {
        for src in &sources {
            let (stop, dst, ns, from, to) =
                (stop.clone(), t.ip, src.netns.clone(), src.key(), t.key());
            flows.push(std::thread::spawn(move || -> Result<FlowLoss> {
                let ns = podnet_netlink::Netns::open(podnet_netlink::netns::named_path(&ns))?;
                let s = ns.run(move || {
                    podnet_api::probe::ping_stream(
                        dst,
                        Duration::from_millis(5),
                        Duration::from_millis(300),
                        &mut || stop.load(Ordering::SeqCst),
                    )
                })??;
                Ok(FlowLoss {
                    from,
                    to,
                    sent: s.sent,
                    received: s.received,
                    lost: s.sent - s.received,
                    longest_gap_ms: s.longest_gap_ms,
                })
            }));
        }
    }
    let result = (|| -> Result<(Rotated, u64)> {
        // Traffic flows before the key changes: what is lost is the rotation's.
        let t = Instant::now();
        while !flows.is_empty() && t.elapsed() < Duration::from_millis(300) {
            std::thread::sleep(Duration::from_millis(10));
        }
        let rotated = lab
            .agent(node)
            .rotate_wireguard_key()
            .with_context(|| format!("rotate the WireGuard key of {node}"))?;
        let t = Instant::now();
        loop {
            let lagging: Vec<&str> = st
                .nodes
                .iter()
                .filter(|n| n.name != node)
                .filter(|n| {
                    !lab.agent(&n.name).status().is_ok_and(|s| {
                        s.wireguard.is_some_and(|w| {
                            w.peers.iter().any(|p| p.public_key == rotated.public_key)
                        })
                    })
                })
                .map(|n| n.name.as_str())
                .collect();
            if lagging.is_empty() {
                break;
            }
            if t.elapsed() > Duration::from_secs(15) {
                bail!(
                    "{} still do not hold {node}'s new key after 15 s; see their logs in {}",
                    lagging.join(", "),
                    lab.dir.display()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok((rotated, t.elapsed().as_millis() as u64))
    })();
    // A second of traffic after every peer has the key: a flow that does not
    // recover shows as loss up to the end.
    let t = Instant::now();
    while result.is_ok() && !flows.is_empty() && t.elapsed() < Duration::from_secs(1) {
        std::thread::sleep(Duration::from_millis(10));
    }
    stop.store(true, Ordering::SeqCst);
    let mut traffic = Vec::new();
    for f in flows {
        traffic.push(
            f.join()
                .map_err(|_| anyhow::anyhow!("a traffic thread panicked"))??,
        );
    }
    let (rotated, ms) = result?;
    Ok(RotationReport {
        rotated,
        peers_updated_ms: Some(ms),
        traffic,
    })
}
