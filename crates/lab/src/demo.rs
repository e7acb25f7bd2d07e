//! `podnet demo`: one node, two pods, created through the real `podnet-cni` exactly as
//! a container runtime would; shows them talking with their own addresses (no NAT),
//! then shows a forged ARP reply from one pod being dropped. Everything it makes is
//! removed at the end, also on failure.

use crate::exec::{self, Call};
use crate::scratch::{unique, ScratchDir, ScratchNs};
use crate::traffic::probe::{self, EchoServer};
use anyhow::{bail, Context, Result};
use podnet_netlink::{neigh, parse_mac, Socket};
use serde::Serialize;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;
use std::time::Duration;

#[derive(Debug, Serialize)]
pub struct Pod {
    pub name: String,
    pub netns: String,
    pub ip: Ipv4Addr,
    pub mac: String,
    pub host_veth: String,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub node_netns: String,
    pub pods: Vec<Pod>,
    /// What pod-b's echo server answered to pod-a.
    pub reply: String,
    pub no_nat: bool,
    /// The node's ARP entry for pod-b after pod-a's forged ARP reply.
    pub node_arp_for_b: String,
    pub forged_arp_dropped: u64,
}

fn add(plugin: &Path, node: &ScratchNs, pod: &ScratchNs, name: &str, conf: &[u8]) -> Result<Pod> {
    let netns = pod.path().display().to_string();
    let o = exec::run(
        &Call {
            plugin,
            command: "ADD",
            container_id: name,
            netns: &netns,
            ifname: "eth0",
            cni_path: None,
            config: conf,
        },
        Some(&node.ns),
    )?;
    if !o.ok() {
        bail!("podnet-cni ADD {name} failed: {}", o.stdout.trim());
    }
    let a = exec::Attached::from_result(&o.json())?;
    Ok(Pod {
        name: name.into(),
        netns,
        ip: a.ip,
        mac: a.mac,
        host_veth: a.host_veth,
    })
}

pub fn run(plugin: &Path, say: &mut dyn FnMut(&str)) -> Result<Report> {
    let dir = ScratchDir::new("podnet-demo")?;
    let node = ScratchNs::new(unique("pndemo-node"))?;
    let ns_a = ScratchNs::new(unique("pndemo-a"))?;
    let ns_b = ScratchNs::new(unique("pndemo-b"))?;
    let conf = serde_json::to_vec(&serde_json::json!({
        "cniVersion": "1.1.0", "name": "demo", "type": "podnet-cni",
        "subnet": "10.244.0.0/24", "dataDir": dir.path(),
    }))?;
    say(&format!(
        "node namespace {}: bridge podnet0, gateway 10.244.0.1/24",
        node.name
    ));
    let a = add(plugin, &node, &ns_a, "pod-a", &conf)?;
    let b = add(plugin, &node, &ns_b, "pod-b", &conf)?;
    for p in [&a, &b] {
        say(&format!(
            "  {:<6} eth0 {:<12} mac {}  host veth {} on podnet0",
            p.name, p.ip, p.mac, p.host_veth
        ));
    }
    let _srv = EchoServer::start(&ns_b.ns, b.ip, 8080)?;
    // The node talks to pod-b first, so the node's ARP cache holds pod-b's real MAC.
    probe::tcp_request(
        &node.ns,
        SocketAddrV4::new(b.ip, 8080),
        "node",
        Duration::from_secs(3),
    )
    .context("the node could not reach pod-b")?;
    let reply = probe::tcp_request(
        &ns_a.ns,
        SocketAddrV4::new(b.ip, 8080),
        "hello",
        Duration::from_secs(3),
    )
    .context("pod-a could not reach pod-b")?;
    let no_nat = reply.starts_with(&format!("from={} ", a.ip));
    say(&format!(
        "pod-a → pod-b:8080  answer {reply:?}  ({})",
        if no_nat {
            "source address preserved, no NAT"
        } else {
            "SOURCE WAS REWRITTEN"
        }
    ));

    let (entry, dropped) = forge_arp(&node, &ns_a, &a, &b, say)?;
    delete_pods(plugin, &node, &conf, [(&a, &ns_a), (&b, &ns_b)])?;
    say("pods deleted; namespaces removed");
    Ok(Report {
        node_netns: node.name.clone(),
        pods: vec![a, b],
        reply,
        no_nat,
        node_arp_for_b: entry,
        forged_arp_dropped: dropped,
    })
}

/// The lesson's attack: pod-a claims pod-b's IP with a forged ARP reply to the node.
/// Returns the node's ARP entry for pod-b afterwards and the packets dropped at
/// pod-a's veth for it.
fn forge_arp(
    node: &ScratchNs,
    ns_a: &ScratchNs,
    a: &Pod,
    b: &Pod,
    say: &mut dyn FnMut(&str),
) -> Result<(String, u64)> {
    let mut node_sock = node.ns.run(Socket::route)??;
    let a_mac = parse_mac(&a.mac).context("pod-a MAC")?;
    let gw_mac = [0x0a, 0x58, 10, 244, 0, 1];
    let frame = probe::arp_frame(
        gw_mac,
        a_mac,
        2,
        a_mac,
        b.ip,
        gw_mac,
        Ipv4Addr::new(10, 244, 0, 1),
    );
    probe::send_frame(&ns_a.ns, "eth0", &frame)?;
    std::thread::sleep(Duration::from_millis(50));
    let entry = neigh::list(&mut node_sock)?
        .into_iter()
        .find(|n| n.ip == b.ip)
        .map(|n| {
            format!(
                "{} lladdr {} {}",
                n.ip,
                n.mac
                    .map(|m| podnet_netlink::fmt_mac(&m))
                    .unwrap_or_default(),
                n.state_name()
            )
        })
        .unwrap_or_else(|| format!("{} (no entry)", b.ip));
    let a_veth = podnet_netlink::link::get_by_name(&mut node_sock, &a.host_veth)?
        .with_context(|| format!("host veth {} is missing", a.host_veth))?;
    let dropped = podnet_cni::antispoof::counters(&mut node_sock, a_veth.index)?
        .into_iter()
        .find(|(r, _)| r == "arp-spa")
        .map(|(_, n)| n)
        .unwrap_or(0);
    say(&format!(
        "pod-a sends a forged ARP reply \"{} is-at {}\"",
        b.ip, a.mac
    ));
    say(&format!("  node's ARP entry for pod-b: {entry}"));
    say(&format!(
        "  dropped at pod-a's veth (reason arp-spa): {dropped} packet(s)"
    ));
    Ok((entry, dropped))
}

/// Deletes both pods through podnet-cni DEL, as a container runtime would.
fn delete_pods(
    plugin: &Path,
    node: &ScratchNs,
    conf: &[u8],
    pods: [(&Pod, &ScratchNs); 2],
) -> Result<()> {
    for (p, ns) in pods {
        let netns = ns.path().display().to_string();
        let o = exec::run(
            &Call {
                plugin,
                command: "DEL",
                container_id: &p.name,
                netns: &netns,
                ifname: "eth0",
                cni_path: None,
                config: conf,
            },
            Some(&node.ns),
        )?;
        if !o.ok() {
            bail!("podnet-cni DEL {} failed: {}", p.name, o.stdout.trim());
        }
    }
    Ok(())
}
