//! What the lab gives the command-line tool: its nodes' agents and pod names (for
//! trace, doctor and observe), its policy objects, and a WireGuard rotation measured
//! with traffic between its pods.

use crate::Lab;
use anyhow::{bail, Context, Result};
use podnet_api::Rotated;
use podnet_cli::trace::Agents;
use podnet_cli::wireguard::{FlowLoss, RotationReport};
use podnet_policy::Object;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The agents of a lab: every node's socket, pod names from the lab's state.
pub struct LabAgents {
    pub nodes: Vec<(String, PathBuf)>,
    pub pods: Vec<(String, Ipv4Addr)>,
}

impl LabAgents {
    pub fn new(lab: &Lab) -> Result<LabAgents> {
        let st = lab
            .load()?
            .with_context(|| format!("no lab {}", lab.name))?;
        Ok(LabAgents {
            nodes: st
                .nodes
                .iter()
                .map(|n| (n.name.clone(), lab.api_socket(&n.name)))
                .collect(),
            // Pods by the lab's name (p1a) and as namespace/name (default/p1a).
            pods: st
                .pods
                .iter()
                .flat_map(|p| [(p.name.clone(), p.ip), (p.key(), p.ip)])
                .collect(),
        })
    }
}

impl Agents for LabAgents {
    fn nodes(&self) -> Vec<(String, PathBuf)> {
        self.nodes.clone()
    }
    fn pod_ip(&self, name: &str) -> Option<Ipv4Addr> {
        self.pods.iter().find(|(n, _)| n == name).map(|(_, ip)| *ip)
    }
    fn pod_name(&self, ip: Ipv4Addr) -> Option<String> {
        // The lab's own name (p1a) comes first in the list.
        self.pods
            .iter()
            .find(|(_, a)| *a == ip)
            .map(|(n, _)| n.clone())
    }
}

/// The objects a lab's agents read.
pub fn lab_objects(lab: &Lab) -> Result<Vec<Object>> {
    let st = lab
        .load()?
        .with_context(|| format!("no lab {}", lab.name))?;
    lab.objects(&st)
}

/// The objects in a datastore (outside a lab).
pub fn datastore_objects(url: &str) -> Result<Vec<Object>> {
    let log: podnet_kube::Log = Arc::new(|m: &str| tracing::warn!("datastore: {m}"));
    let ds = podnet_kube::open_datastore(url, log)?;
    let (_, stored) = ds.objects()?;
    stored
        .into_iter()
        .map(|s| {
            let what = format!("{} {}/{}", s.kind, s.namespace, s.name);
            Object::from_json(std::sync::Arc::unwrap_or_clone(s.value))
                .map_err(|e| anyhow::anyhow!("datastore object {what}: {e}"))
        })
        .collect()
}

/// Rotates `node`'s key in lab `lab` while a pod on each other node pings a pod on
/// `node`; returns what the traffic lost.
pub fn rotate_in_lab(lab: &Lab, node: &str) -> Result<RotationReport> {
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
