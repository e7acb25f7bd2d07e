//! `podnet bench datapath`: what a packet costs on each path, in one run.
//!
//! Paths, each measured the same way (a single iperf3 TCP stream for throughput, and
//! one-byte TCP round trips over one connection for latency):
//! - `veth`: two namespaces joined by a plain veth pair — the ceiling;
//! - podnet's default, same node and cross node (VXLAN): a 2-node lab with no datapath
//!   flags, i.e. the eBPF fast path with the eBPF policy datapath;
//! - the compatible choice, bridge + nftables, same node and cross node, and same node
//!   again in a lab where one NetworkPolicy selects both pods and admits them (what a
//!   policy costs a packet that passes);
//! - `podnet same-node, bridge + eBPF policy`: with drop events only, and with
//!   allowed-flow events asked for;
//! - `podnet cross-node host-gw`: a 2-node lab with the host-gw backend (bridge);
//! - `podnet cross-node wireguard`: a 2-node lab with the WireGuard backend (userspace
//!   WireGuard over TUN on this kernel, so encryption and two user-kernel crossings per
//!   packet per node);
//! - `peer same-node` and `peer cross-node vxlan`: the reference `bridge` plugin with
//!   Flannel-style VXLAN wired by hand (the same route/neighbour/FDB entries Flannel
//!   writes, `flannel.1`, UDP 8472, MTU 1450).
//!
//! Each path's CPU cost is the machine's busy CPU time during its throughput run
//! (every process and the kernel: iperf3, softirqs, the WireGuard device process),
//! per second and per Gbit/s moved: CPU cores a Gbit/s costs on that path.
//!
//! Every path lives in namespaces this run creates; all of them are removed at the
//! end, also on failure.

use crate::exec::{self, Call};
use crate::scratch::{unique, ScratchDir, ScratchNs};
use crate::{Binaries, Lab, Options as LabOptions};
use anyhow::{bail, Context, Result};
use podnet_netlink::{netns, Netns};
use serde::Serialize;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub struct Options {
    pub seconds: u32,
    pub round_trips: u32,
    /// Times every path is measured; the median is reported.
    pub rounds: u32,
}

#[derive(Clone, Debug, Serialize)]
pub struct Path {
    pub name: String,
    pub gbit_per_s: f64,
    pub rtt_us: f64,
    /// Throughput as a fraction of the veth ceiling.
    pub throughput_vs_ceiling: f64,
    /// Round-trip time as a multiple of the veth ceiling's.
    pub rtt_vs_ceiling: f64,
    /// Busy CPU cores during the throughput run, per Gbit/s moved.
    pub cpu_cores_per_gbit_s: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub seconds: u32,
    pub round_trips: u32,
    pub rounds: u32,
    pub paths: Vec<Path>,
    /// podnet's default (the eBPF fast path) throughput / peer throughput, same node
    /// and cross node (VXLAN).
    pub podnet_vs_peer_same_node: f64,
    pub podnet_vs_peer_cross_node: f64,
    /// The same for the bridge with nftables (no policy).
    pub bridge_vs_peer_same_node: f64,
    pub bridge_vs_peer_cross_node: f64,
    /// Bridge + nftables same node: with a policy selecting both pods / without.
    pub bridge_policy_vs_bridge_same_node: f64,
    /// Bridge + nftables against the peer with conntrack on, as on a node running
    /// kube-proxy: same node, cross node.
    pub bridge_vs_conntrack_peer_same_node: f64,
    pub bridge_vs_conntrack_peer_cross_node: f64,
    /// WireGuard throughput / VXLAN throughput, both podnet cross-node on the bridge.
    pub wireguard_vs_vxlan: f64,
    /// Same-node throughput on the eBPF policy datapath with allowed-flow events asked
    /// for, against drop events only (the default).
    pub allowed_events_vs_drop_events: f64,
    /// The eBPF fast path: same-node throughput against the veth pair, its round trip
    /// as a multiple of the veth's, and cross-node (VXLAN) throughput against the
    /// Flannel-style peer.
    pub fast_same_node_vs_veth: f64,
    pub fast_same_node_rtt_vs_veth: f64,
    pub fast_cross_node_vs_peer: f64,
    /// Dual-stack pods over IPv6: the fast path against the bridge with nftables, same
    /// node and cross node; and the fast path's IPv6 against its IPv4, cross node.
    pub ipv6_fast_vs_bridge_same_node: f64,
    pub ipv6_fast_vs_bridge_cross_node: f64,
    pub ipv6_vs_ipv4_fast_cross_node: f64,
    /// VXLAN over an IPv6 underlay (`--underlay-family ipv6`, 70 bytes a packet)
    /// against over IPv4 (50), cross node, IPv4 pods: on the fast path and on the bridge
    /// with nftables.
    pub ipv6_underlay_vs_ipv4_fast_cross_node: f64,
    pub ipv6_underlay_vs_ipv4_bridge_cross_node: f64,
}

/// Waits until the eBPF lab's agents have switched allowed events off again (they stay
/// on 5 s after the last ask).
fn wait_allowed_off(agents: &[podnet_api::Client]) -> Result<()> {
    let t = Instant::now();
    loop {
        let on = agents
            .iter()
            .any(|a| a.events(u64::MAX, 0, false).is_ok_and(|r| r.allowed));
        if !on {
            return Ok(());
        }
        if t.elapsed() > Duration::from_secs(30) {
            bail!("allowed events stayed on for 30 s");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Busy CPU time of the whole machine so far, in seconds (every CPU: user, nice,
/// system, irq, softirq, steal; not idle or iowait).
fn busy_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: u64 = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .enumerate()
        .filter(|(i, _)| matches!(i, 0 | 1 | 2 | 5 | 6 | 7))
        .filter_map(|(_, v)| v.parse::<u64>().ok())
        .sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    ticks as f64 / hz
}

pub(crate) fn setns_cmd(ns: &Netns, prog: &str) -> Command {
    let mut cmd = Command::new(prog);
    podnet_netlink::netns::in_netns(&mut cmd, ns.fd(), None, false);
    cmd
}

/// Throughput of one iperf3 TCP stream from `src` to `dst_ip` (in `dst`), Gbit/s.
pub(crate) fn iperf(
    name: &str,
    src: &Netns,
    dst: &Netns,
    dst_ip: impl Into<IpAddr>,
    seconds: u32,
) -> Result<f64> {
    let dst_ip: IpAddr = dst_ip.into();
    let mut server = setns_cmd(dst, "iperf3")
        .args(["-s", "-1", "-B", &dst_ip.to_string(), "-p", "5201"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("run iperf3 (apt-get install iperf3)")?;
    // Wait for the server's socket rather than a fixed time.
    let listening = Instant::now();
    let sockets = || {
        ["tcp", "tcp6"]
            .map(|f| {
                std::fs::read_to_string(format!("/proc/thread-self/net/{f}")).unwrap_or_default()
            })
            .concat()
    };
    while !dst
        .run(sockets)?
        .lines()
        .any(|l| l.contains(":1451 ") && l.split_whitespace().nth(3) == Some("0A"))
    {
        if listening.elapsed() > Duration::from_secs(5) {
            let _ = server.kill();
            bail!("{name}: iperf3 server did not listen within 5 s");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let out = setns_cmd(src, "iperf3")
        .args([
            "-c",
            &dst_ip.to_string(),
            "-p",
            "5201",
            "-t",
            &seconds.to_string(),
            "-J",
        ])
        .output()
        .context("run iperf3 client")?;
    let _ = server.kill();
    let _ = server.wait();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "{name}: iperf3 gave no JSON: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    let bps = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .with_context(|| format!("{name}: iperf3 failed: {}", v["error"]))?;
    Ok(bps / 1e9)
}

/// One measured path: `src` talks to `dst_ip`, which lives in `dst`.
fn measure(
    name: &str,
    src: &Netns,
    dst: &Netns,
    dst_ip: IpAddr,
    opts: &Options,
) -> Result<(f64, f64, f64)> {
    let (cpu0, t0) = (busy_cpu_seconds(), Instant::now());
    let gbit = iperf(name, src, dst, dst_ip, opts.seconds)?;
    let cores = (busy_cpu_seconds() - cpu0) / t0.elapsed().as_secs_f64();

    // Latency: one-byte round trips over one TCP connection.
    let listener = dst.run(|| TcpListener::bind(SocketAddr::new(dst_ip, 5202)))??;
    let echo = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut c, _) = listener.accept()?;
        c.set_nodelay(true)?;
        let mut b = [0u8; 1];
        while c.read_exact(&mut b).is_ok() {
            c.write_all(&b)?;
        }
        Ok(())
    });
    let n = opts.round_trips;
    let rtt = src.run(move || -> Result<f64> {
        let mut c =
            TcpStream::connect_timeout(&SocketAddr::new(dst_ip, 5202), Duration::from_secs(3))?;
        c.set_nodelay(true)?;
        let mut b = [7u8; 1];
        for _ in 0..n / 10 {
            c.write_all(&b)?;
            c.read_exact(&mut b)?;
        }
        let t = Instant::now();
        for _ in 0..n {
            c.write_all(&b)?;
            c.read_exact(&mut b)?;
        }
        Ok(t.elapsed().as_secs_f64() * 1e6 / n as f64)
    })??;
    let _ = echo.join();
    Ok((gbit, rtt, cores / gbit))
}

fn ip(args: &[&str]) -> Result<()> {
    let o = Command::new("ip").args(args).output().context("run ip")?;
    if !o.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
    Ok(())
}

fn ns_ip(ns: &str, args: &[&str]) -> Result<()> {
    let mut a = vec!["-n", ns];
    a.extend_from_slice(args);
    ip(&a)
}

/// The peer: two nodes on a fabric, pods from the reference bridge plugin, VXLAN wired
/// by hand as Flannel does. Returns the namespaces to measure in.
struct Peer {
    _fabric: ScratchNs,
    _nodes: Vec<ScratchNs>,
    pods: Vec<(ScratchNs, Ipv4Addr)>,
    _dir: ScratchDir,
}

/// The underlay address of the peer's node `i`.
fn peer_underlay(i: usize) -> String {
    format!("192.168.1.{}", 10 + i)
}

/// The MACs of the peer's nodes' flannel.1 devices.
const PEER_MACS: [&str; 2] = ["0a:59:00:00:00:0a", "0a:59:00:00:00:0b"];

/// What kube-proxy brings to every node, for the peer measured "as on a Kubernetes
/// node": connection tracking of forwarded (and, through br_netfilter, bridged)
/// traffic — one table whose rule reads the conntrack state, as kube-proxy's do.
const KUBE_PROXY_LIKE: &str = "table ip bench_conntrack {
  chain forward { type filter hook forward priority filter; policy accept; ct state invalid drop; }
}
";

fn build_peer(conntrack: bool) -> Result<Peer> {
    let dir = ScratchDir::new("podnet-peer")?;
    let fabric = ScratchNs::new(unique("pnbp-fab"))?;
    ns_ip(&fabric.name, &["link", "add", "fabric0", "type", "bridge"])?;
    ns_ip(&fabric.name, &["link", "set", "fabric0", "up"])?;
    let mut nodes = Vec::new();
    let mut pods = Vec::new();
    let bridge = std::path::PathBuf::from("/usr/lib/cni/bridge");
    if !bridge.is_file() {
        bail!("the reference bridge plugin is missing at {}: apt-get install containernetworking-plugins", bridge.display());
    }
    for (i, mac) in PEER_MACS.iter().enumerate() {
        let node = ScratchNs::new(unique("pnbp-node"))?;
        cable_peer_node(&fabric, &node, i, mac)?;
        add_peer_pods(&node, i, &bridge, &dir, &mut pods)?;
        if conntrack {
            let argv: Vec<String> = ["ip", "netns", "exec", &node.name, "nft", "-f", "-"]
                .map(String::from)
                .into();
            crate::faults::run_cmd(&argv, Some(KUBE_PROXY_LIKE))
                .context("the peer's conntrack table")?;
            let p = "/proc/sys/net/bridge/bridge-nf-call-iptables";
            node.ns
                .run(|| std::fs::write(p, "1"))
                .map_err(anyhow::Error::msg)?
                .with_context(|| format!("turn on {p} in the peer's node"))?;
        }
        nodes.push(node);
    }
    wire_flannel_peers(&nodes)?;
    Ok(Peer {
        _fabric: fabric,
        _nodes: nodes,
        pods,
        _dir: dir,
    })
}

/// Cables the peer's node `i` to the fabric and gives it its flannel.1 VXLAN device
/// with `mac`, and IP forwarding.
fn cable_peer_node(fabric: &ScratchNs, node: &ScratchNs, i: usize, mac: &str) -> Result<()> {
    let port = format!("n{i}");
    ns_ip(
        &node.name,
        &[
            "link",
            "add",
            "eth0",
            "type",
            "veth",
            "peer",
            "name",
            &port,
            "netns",
            &fabric.name,
        ],
    )?;
    ns_ip(
        &fabric.name,
        &["link", "set", &port, "master", "fabric0", "up"],
    )?;
    ns_ip(
        &node.name,
        &[
            "addr",
            "add",
            &format!("{}/24", peer_underlay(i)),
            "dev",
            "eth0",
        ],
    )?;
    ns_ip(&node.name, &["link", "set", "eth0", "up"])?;
    ns_ip(
        &node.name,
        &[
            "link",
            "add",
            "flannel.1",
            "address",
            mac,
            "mtu",
            "1450",
            "type",
            "vxlan",
            "id",
            "1",
            "local",
            &peer_underlay(i),
            "dev",
            "eth0",
            "dstport",
            "8472",
            "nolearning",
        ],
    )?;
    ns_ip(
        &node.name,
        &[
            "addr",
            "add",
            &format!("10.97.{i}.0/32"),
            "dev",
            "flannel.1",
        ],
    )?;
    ns_ip(&node.name, &["link", "set", "flannel.1", "up"])?;
    node.ns
        .run(|| std::fs::write("/proc/sys/net/ipv4/ip_forward", "1"))??;
    Ok(())
}

/// Adds two pods to the peer's node `i` with the reference bridge plugin, onto `pods`.
fn add_peer_pods(
    node: &ScratchNs,
    i: usize,
    bridge: &std::path::Path,
    dir: &ScratchDir,
    pods: &mut Vec<(ScratchNs, Ipv4Addr)>,
) -> Result<()> {
    let conf = serde_json::to_vec(&serde_json::json!({
        "cniVersion": "1.0.0", "name": "peer", "type": "bridge", "bridge": "cni0", "isGateway": true, "isDefaultGateway": true, "mtu": 1450,
        "ipam": {"type": "host-local", "subnet": format!("10.97.{i}.0/24"), "dataDir": dir.path().join(format!("ipam{i}"))},
    }))?;
    for j in 0..2 {
        let pod = ScratchNs::new(unique("pnbp-pod"))?;
        let path = pod.path().display().to_string();
        let o = exec::run(
            &Call {
                plugin: bridge,
                command: "ADD",
                container_id: &format!("peer{i}{j}"),
                netns: &path,
                ifname: "eth0",
                cni_path: Some("/usr/lib/cni".into()),
                config: &conf,
            },
            Some(&node.ns),
        )?;
        if !o.ok() {
            bail!("reference bridge plugin ADD failed: {}", o.stdout.trim());
        }
        let addr: Ipv4Addr = o.json()["ips"][0]["address"]
            .as_str()
            .and_then(|a| a.split('/').next())
            .and_then(|a| a.parse().ok())
            .context("bridge plugin result")?;
        pods.push((pod, addr));
    }
    Ok(())
}

/// Writes, on each of the peer's nodes, exactly what Flannel writes for the other:
/// the route, the neighbour and the FDB entry.
fn wire_flannel_peers(nodes: &[ScratchNs]) -> Result<()> {
    let macs = PEER_MACS;
    for (i, node) in nodes.iter().enumerate() {
        let p = 1 - i;
        let n = &node.name;
        ns_ip(
            n,
            &[
                "route",
                "add",
                &format!("10.97.{p}.0/24"),
                "via",
                &format!("10.97.{p}.0"),
                "dev",
                "flannel.1",
                "onlink",
            ],
        )?;
        ns_ip(
            n,
            &[
                "neigh",
                "add",
                &format!("10.97.{p}.0"),
                "lladdr",
                macs[p],
                "dev",
                "flannel.1",
                "nud",
                "permanent",
            ],
        )?;
        let o = Command::new("bridge")
            .args([
                "-n",
                n,
                "fdb",
                "add",
                macs[p],
                "dev",
                "flannel.1",
                "dst",
                &peer_underlay(p),
                "self",
                "permanent",
            ])
            .output()?;
        if !o.status.success() {
            bail!("bridge fdb add: {}", String::from_utf8_lossy(&o.stderr));
        }
    }
    Ok(())
}

/// Takes a bench lab down when dropped.
pub(crate) struct LabGuard(pub(crate) String);

impl Drop for LabGuard {
    fn drop(&mut self) {
        if let Ok(l) = Lab::open(&self.0) {
            let _ = l.down();
        }
    }
}

/// A 2-node lab: `backend`, and the datapaths given (`None`: podnet's default); its
/// pods by their IPv4 addresses.
fn lab_pods(
    name: &str,
    backend: &str,
    datapath: Option<&str>,
    policy_datapath: Option<&str>,
    bins: &Binaries,
) -> Result<(LabGuard, Vec<(Netns, IpAddr)>)> {
    lab_pods_with(
        name,
        backend,
        policy_datapath,
        datapath,
        (false, false),
        bins,
    )
}

/// The same over an IPv6 underlay (VXLAN between the nodes' IPv6 addresses); its pods
/// by their IPv4 addresses.
fn lab_pods_u6(
    name: &str,
    datapath: Option<&str>,
    policy_datapath: Option<&str>,
    bins: &Binaries,
) -> Result<(LabGuard, Vec<(Netns, IpAddr)>)> {
    lab_pods_with(
        name,
        "vxlan",
        policy_datapath,
        datapath,
        (false, true),
        bins,
    )
}

/// The same, dual-stack over VXLAN: its pods by their IPv6 addresses.
fn lab_pods6(
    name: &str,
    datapath: Option<&str>,
    policy_datapath: Option<&str>,
    bins: &Binaries,
) -> Result<(LabGuard, Vec<(Netns, IpAddr)>)> {
    lab_pods_with(
        name,
        "vxlan",
        policy_datapath,
        datapath,
        (true, false),
        bins,
    )
}

/// A NetworkPolicy that selects every pod of the namespace and admits every pod: each
/// packet meets the policy's sets, and everything still passes.
const SELECT_ALL_ADMIT_ALL: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: bench-select-all, namespace: default}
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
  ingress: [{from: [{podSelector: {}}]}]
  egress: [{to: [{podSelector: {}}]}]
";

fn lab_pods_with(
    name: &str,
    backend: &str,
    policy_datapath: Option<&str>,
    datapath: Option<&str>,
    (dual, underlay6): (bool, bool),
    bins: &Binaries,
) -> Result<(LabGuard, Vec<(Netns, IpAddr)>)> {
    let guard = LabGuard(name.to_string());
    let lab = Lab::open(name)?;
    let st = lab.up(
        &LabOptions {
            nodes: 2,
            pods_per_node: 2,
            backend: Some(backend.parse()?),
            datastore: None,
            repair: None,
            policy_datapath: policy_datapath.map(str::parse).transpose()?,
            kubernetes: None,
            real_nodes: None,
            proxy_mode: None,
            masquerade: None,
            ip_family: dual.then_some(podnet_conventions::IpFamily::Dual),
            datapath: datapath.map(str::parse).transpose()?,
            underlay_family: underlay6.then_some(podnet_conventions::UnderlayFamily::Ipv6),
        },
        bins,
        &mut |_| {},
    )?;
    let mut out = Vec::new();
    for p in &st.pods {
        let ip = match (dual, p.ip6) {
            (false, _) => p.ip.into(),
            (true, Some(ip6)) => ip6.into(),
            (true, None) => bail!("{name}: pod {} has no IPv6 address", p.name),
        };
        out.push((Netns::open(netns::named_path(&p.netns))?, ip));
    }
    drop(lab);
    Ok((guard, out))
}

/// A peer pod as a measured end: its namespace and address.
fn v4((ns, ip): &(ScratchNs, Ipv4Addr)) -> (&Netns, IpAddr) {
    (&ns.ns, IpAddr::from(*ip))
}

/// Two namespaces joined by a plain veth pair, 10.98.0.1 and 10.98.0.2: the ceiling.
fn veth_pair() -> Result<(ScratchNs, ScratchNs)> {
    let (a, b) = (
        ScratchNs::new(unique("pnbv-a"))?,
        ScratchNs::new(unique("pnbv-b"))?,
    );
    ns_ip(
        &a.name,
        &[
            "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", &b.name,
        ],
    )?;
    ns_ip(&a.name, &["addr", "add", "10.98.0.1/24", "dev", "eth0"])?;
    ns_ip(&b.name, &["addr", "add", "10.98.0.2/24", "dev", "eth0"])?;
    ns_ip(&a.name, &["link", "set", "eth0", "up"])?;
    ns_ip(&b.name, &["link", "set", "eth0", "up"])?;
    Ok((a, b))
}

const DEFAULT_SAME: &str = "podnet same-node, default (eBPF fast path)";
const DEFAULT_CROSS: &str = "podnet cross-node vxlan, default (eBPF fast path)";
const PEER_SAME: &str = "peer same-node (bridge plugin)";
const PEER_CROSS: &str = "peer cross-node vxlan (Flannel-style)";
const PEER_CT_SAME: &str = "peer same-node, with conntrack (as kube-proxy)";
const PEER_CT_CROSS: &str = "peer cross-node vxlan, with conntrack (as kube-proxy)";
const BRIDGE_SAME: &str = "podnet same-node, bridge + nftables";
const BRIDGE_POLICY_SAME: &str = "podnet same-node, bridge + nftables, policy selects both";
const BRIDGE_CROSS: &str = "podnet cross-node vxlan, bridge + nftables";
const WIREGUARD: &str = "podnet cross-node wireguard (userspace)";
const DEFAULT_SAME6: &str = "podnet same-node IPv6, default (eBPF fast path)";
const DEFAULT_CROSS6: &str = "podnet cross-node vxlan IPv6, default (eBPF fast path)";
const BRIDGE_SAME6: &str = "podnet same-node IPv6, bridge + nftables";
const BRIDGE_CROSS6: &str = "podnet cross-node vxlan IPv6, bridge + nftables";
const DEFAULT_CROSS_U6: &str =
    "podnet cross-node vxlan over an IPv6 underlay, default (eBPF fast path)";
const BRIDGE_CROSS_U6: &str = "podnet cross-node vxlan, IPv6 underlay, bridge + nftables";

/// One path to measure: its name, the source and destination namespaces and the
/// destination's address.
type MeasuredPath<'a> = (&'a str, &'a Netns, &'a Netns, IpAddr);

/// Each path's throughput, round-trip and CPU samples, one per round.
type Samples = Vec<(Vec<f64>, Vec<f64>, Vec<f64>)>;

pub fn run(opts: &Options, bins: &Binaries, say: &mut dyn FnMut(&str)) -> Result<Report> {
    // Build every path first, then measure them round-robin, `rounds` times (every
    // other round in reverse order), and keep each path's median: drift on a noisy
    // machine then hits every path alike.
    say("building: veth pair, podnet labs (default, bridge + nftables with and without a policy, host-gw, wireguard, eBPF policy; dual-stack default and bridge + nftables; over an IPv6 underlay default and bridge + nftables), the peer");
    let (a, b) = veth_pair()?;
    let tag = format!("pnb{}", std::process::id() % 100000);
    // podnet's default: the eBPF fast path with the eBPF policy datapath.
    let (_gf, fp) = lab_pods(&format!("{tag}f"), "vxlan", None, None, bins)?;
    // The compatible choice: the bridge with nftables.
    let br = (Some("bridge"), Some("nftables"));
    let (_gv, vx) = lab_pods(&format!("{tag}v"), "vxlan", br.0, br.1, bins)?;
    // The same, with a policy that selects both pods and admits them.
    let pol_name = format!("{tag}p");
    let (_gp, pol) = lab_pods(&pol_name, "vxlan", br.0, br.1, bins)?;
    {
        let l = Lab::open(&pol_name)?;
        let objs = crate::apply::parse_manifests(SELECT_ALL_ADMIT_ALL)?;
        l.apply(&objs, true, bins, &mut |_| {})?;
    }
    let (_gh, hg) = lab_pods(&format!("{tag}h"), "host-gw", br.0, br.1, bins)?;
    let (_gw, wg) = lab_pods(&format!("{tag}w"), "wireguard", None, None, bins)?;
    // The eBPF policy datapath on the bridge, measured with only drop events (always
    // on; passing packets never make one) and with allowed-flow events asked for.
    let eb_name = format!("{tag}e");
    let (_ge, eb) = lab_pods(&eb_name, "vxlan", Some("bridge"), Some("ebpf"), bins)?;
    let eb_agents: Vec<podnet_api::Client> = {
        let l = Lab::open(&eb_name)?;
        let st = l.load()?.context("the eBPF lab's state")?;
        st.nodes.iter().map(|n| l.agent(&n.name)).collect()
    };
    // Dual-stack pods, measured over IPv6: the default and the bridge with nftables.
    let (_gf6, fp6) = lab_pods6(&format!("{tag}6"), None, None, bins)?;
    let (_gv6, vx6) = lab_pods6(&format!("{tag}b6"), br.0, br.1, bins)?;
    // VXLAN over an IPv6 underlay, IPv4 pods: the default and the bridge with nftables.
    let (_gfu, fpu) = lab_pods_u6(&format!("{tag}u"), None, None, bins)?;
    let (_gvu, vxu) = lab_pods_u6(&format!("{tag}bu"), br.0, br.1, bins)?;
    let peer = build_peer(false)?;
    let p = &peer.pods;
    let (p0, p1, p2) = (v4(&p[0]), v4(&p[1]), v4(&p[2]));
    let peer_ct = build_peer(true)?;
    let pc = &peer_ct.pods;
    let (c0, c1, c2) = (v4(&pc[0]), v4(&pc[1]), v4(&pc[2]));
    let paths: Vec<MeasuredPath> = vec![
        (
            "veth (ceiling)",
            &a.ns,
            &b.ns,
            Ipv4Addr::new(10, 98, 0, 2).into(),
        ),
        (DEFAULT_SAME, &fp[0].0, &fp[1].0, fp[1].1),
        (PEER_SAME, p0.0, p1.0, p1.1),
        (DEFAULT_CROSS, &fp[0].0, &fp[2].0, fp[2].1),
        (PEER_CROSS, p0.0, p2.0, p2.1),
        (PEER_CT_SAME, c0.0, c1.0, c1.1),
        (PEER_CT_CROSS, c0.0, c2.0, c2.1),
        (BRIDGE_SAME, &vx[0].0, &vx[1].0, vx[1].1),
        (BRIDGE_POLICY_SAME, &pol[0].0, &pol[1].0, pol[1].1),
        (BRIDGE_CROSS, &vx[0].0, &vx[2].0, vx[2].1),
        (
            "podnet cross-node host-gw, bridge + nftables",
            &hg[0].0,
            &hg[2].0,
            hg[2].1,
        ),
        (WIREGUARD, &wg[0].0, &wg[2].0, wg[2].1),
        (
            "podnet same-node, bridge + eBPF policy, drop events",
            &eb[0].0,
            &eb[1].0,
            eb[1].1,
        ),
        (
            "podnet same-node, bridge + eBPF policy, drop+allowed events",
            &eb[0].0,
            &eb[1].0,
            eb[1].1,
        ),
        (DEFAULT_SAME6, &fp6[0].0, &fp6[1].0, fp6[1].1),
        (DEFAULT_CROSS6, &fp6[0].0, &fp6[2].0, fp6[2].1),
        (BRIDGE_SAME6, &vx6[0].0, &vx6[1].0, vx6[1].1),
        (BRIDGE_CROSS6, &vx6[0].0, &vx6[2].0, vx6[2].1),
        (DEFAULT_CROSS_U6, &fpu[0].0, &fpu[2].0, fpu[2].1),
        (BRIDGE_CROSS_U6, &vxu[0].0, &vxu[2].0, vxu[2].1),
    ];
    let mut samples = measure_rounds(&paths, &eb_agents, opts, say)?;
    Ok(report(&paths, &mut samples, opts))
}

/// Measures every path `rounds` times, every other round in reverse order.
fn measure_rounds(
    paths: &[MeasuredPath],
    eb_agents: &[podnet_api::Client],
    opts: &Options,
    say: &mut dyn FnMut(&str),
) -> Result<Samples> {
    let mut samples: Samples = paths.iter().map(|_| (vec![], vec![], vec![])).collect();
    for round in 1..=opts.rounds {
        say(&format!("round {round}/{}", opts.rounds));
        // Every other round runs the paths in reverse, so no path always follows
        // the same one.
        let order: Vec<usize> = if round % 2 == 1 {
            (0..paths.len()).collect()
        } else {
            (0..paths.len()).rev().collect()
        };
        for i in order {
            let (name, src, dst, ip) = &paths[i];
            // Allowed events on for that path only: they stay on 5 s after the last
            // ask, so the other eBPF path waits them out (asking with `allowed: false`
            // does not switch them off).
            let allowed = name.ends_with("drop+allowed events");
            if name.contains("eBPF policy") {
                if allowed {
                    for a in eb_agents {
                        a.events(u64::MAX, 0, true)?;
                    }
                } else {
                    wait_allowed_off(eb_agents)?;
                }
            }
            let (g, r, c) = measure(name, src, dst, *ip, opts)?;
            samples[i].0.push(g);
            samples[i].1.push(r);
            samples[i].2.push(c);
        }
    }
    Ok(samples)
}

/// The report: each path's medians, against the ceiling (the first path), and the
/// ratios between paths.
fn report(paths: &[MeasuredPath], samples: &mut Samples, opts: &Options) -> Report {
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|x, y| x.total_cmp(y));
        v[v.len() / 2]
    };
    let raw: Vec<(String, f64, f64, f64)> = paths
        .iter()
        .zip(samples.iter_mut())
        .map(|((n, ..), (g, r, c))| (n.to_string(), median(g), median(r), median(c)))
        .collect();
    let (cg, cr) = (raw[0].1, raw[0].2);
    let paths: Vec<Path> = raw
        .iter()
        .map(|(n, g, r, c)| Path {
            name: n.clone(),
            gbit_per_s: *g,
            rtt_us: *r,
            throughput_vs_ceiling: g / cg,
            rtt_vs_ceiling: r / cr,
            cpu_cores_per_gbit_s: *c,
        })
        .collect();
    let events_cost = {
        let g = |n: &str| {
            paths
                .iter()
                .find(|p| p.name.ends_with(n))
                .map(|p| p.gbit_per_s)
                .unwrap_or(f64::NAN)
        };
        g("drop+allowed events") / g("eBPF policy, drop events")
    };
    let rtt = |n: &str| {
        paths
            .iter()
            .find(|p| p.name.starts_with(n))
            .map(|p| p.rtt_us)
            .unwrap_or(f64::NAN)
    };
    let by = |n: &str| {
        paths
            .iter()
            .find(|p| p.name.starts_with(n))
            .map(|p| p.gbit_per_s)
            .unwrap_or(f64::NAN)
    };
    Report {
        seconds: opts.seconds,
        round_trips: opts.round_trips,
        rounds: opts.rounds,
        podnet_vs_peer_same_node: by(DEFAULT_SAME) / by(PEER_SAME),
        podnet_vs_peer_cross_node: by(DEFAULT_CROSS) / by(PEER_CROSS),
        bridge_vs_peer_same_node: by(BRIDGE_SAME) / by(PEER_SAME),
        bridge_vs_peer_cross_node: by(BRIDGE_CROSS) / by(PEER_CROSS),
        bridge_policy_vs_bridge_same_node: by(BRIDGE_POLICY_SAME) / by(BRIDGE_SAME),
        bridge_vs_conntrack_peer_same_node: by(BRIDGE_SAME) / by(PEER_CT_SAME),
        bridge_vs_conntrack_peer_cross_node: by(BRIDGE_CROSS) / by(PEER_CT_CROSS),
        wireguard_vs_vxlan: by(WIREGUARD) / by(BRIDGE_CROSS),
        allowed_events_vs_drop_events: events_cost,
        fast_same_node_vs_veth: by(DEFAULT_SAME) / by("veth"),
        fast_same_node_rtt_vs_veth: rtt(DEFAULT_SAME) / rtt("veth"),
        fast_cross_node_vs_peer: by(DEFAULT_CROSS) / by(PEER_CROSS),
        ipv6_fast_vs_bridge_same_node: by(DEFAULT_SAME6) / by(BRIDGE_SAME6),
        ipv6_fast_vs_bridge_cross_node: by(DEFAULT_CROSS6) / by(BRIDGE_CROSS6),
        ipv6_vs_ipv4_fast_cross_node: by(DEFAULT_CROSS6) / by(DEFAULT_CROSS),
        ipv6_underlay_vs_ipv4_fast_cross_node: by(DEFAULT_CROSS_U6) / by(DEFAULT_CROSS),
        ipv6_underlay_vs_ipv4_bridge_cross_node: by(BRIDGE_CROSS_U6) / by(BRIDGE_CROSS),
        paths,
    }
}

pub fn render(r: &Report) -> String {
    let mut s = format!(
        "Datapath, one TCP stream for {} s (iperf3) and {} one-byte round trips per path, median of {} rounds (higher throughput, lower RTT is better)\n\n",
        r.seconds, r.round_trips, r.rounds
    );
    s.push_str(&format!(
        "{:<60} {:>10} {:>10} {:>10} {:>10} {:>14}\n",
        "path", "Gbit/s", "vs veth", "RTT µs", "vs veth", "CPU per Gbit/s"
    ));
    for p in &r.paths {
        s.push_str(&format!(
            "{:<60} {:>10.2} {:>9.0}% {:>10.1} {:>9.2}× {:>9.2} cores\n",
            p.name,
            p.gbit_per_s,
            p.throughput_vs_ceiling * 100.0,
            p.rtt_us,
            p.rtt_vs_ceiling,
            p.cpu_cores_per_gbit_s
        ));
    }
    s.push_str(&format!(
        "\npodnet default (eBPF fast path) / peer throughput: same node {:.0}%, cross node (VXLAN) {:.0}%\n",
        r.podnet_vs_peer_same_node * 100.0,
        r.podnet_vs_peer_cross_node * 100.0
    ));
    s.push_str(&format!(
        "podnet bridge + nftables / peer throughput: same node {:.0}%, cross node (VXLAN) {:.0}%; / the peer with conntrack (as kube-proxy): {:.0}%, {:.0}%; a policy selecting both pods: {:.0}% of without\n",
        r.bridge_vs_peer_same_node * 100.0,
        r.bridge_vs_peer_cross_node * 100.0,
        r.bridge_vs_conntrack_peer_same_node * 100.0,
        r.bridge_vs_conntrack_peer_cross_node * 100.0,
        r.bridge_policy_vs_bridge_same_node * 100.0
    ));
    s.push_str(&format!(
        "podnet cross node, WireGuard / VXLAN throughput: {:.0}% (encrypted, userspace WireGuard)\n",
        r.wireguard_vs_vxlan * 100.0
    ));
    s.push_str(&format!(
        "eBPF fast path: same node {:.0}% of the veth pair's throughput at {:.2}× its round trip; cross node (VXLAN) {:.2}× the Flannel-style peer\n",
        r.fast_same_node_vs_veth * 100.0,
        r.fast_same_node_rtt_vs_veth,
        r.fast_cross_node_vs_peer
    ));
    s.push_str(&format!(
        "IPv6 (dual-stack pods), eBPF fast path / bridge + nftables: same node {:.2}×, cross node (VXLAN) {:.2}×; fast path cross node IPv6 / IPv4: {:.0}%\n",
        r.ipv6_fast_vs_bridge_same_node,
        r.ipv6_fast_vs_bridge_cross_node,
        r.ipv6_vs_ipv4_fast_cross_node * 100.0
    ));
    s.push_str(&format!(
        "VXLAN over an IPv6 underlay / over IPv4, cross node: eBPF fast path {:.0}%, bridge + nftables {:.0}%\n",
        r.ipv6_underlay_vs_ipv4_fast_cross_node * 100.0,
        r.ipv6_underlay_vs_ipv4_bridge_cross_node * 100.0
    ));
    s.push_str(&format!(
        "eBPF policy, allowed-flow events on / drop events only: {:.0}% (drop events cost passing packets nothing)\n",
        r.allowed_events_vs_drop_events * 100.0
    ));
    s
}
