//! The `podnet` command: its arguments, and which crate runs each command (the lab's
//! here, the agents' questions in `podnet_cli`). Parses, calls, prints.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "podnet",
    version,
    about = "Kubernetes pod networking you can see through",
    long_about = "podnet gives every pod its own IP on a per-node bridge, stops pods from spoofing \
                  each other's MAC, ARP and IP addresses, and shows what it built.\n\n\
                  Commands that change the kernel must run as root. Every command takes --output json."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Output {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Cmd {
    /// Put two pods on a scratch node through the real podnet-cni, show them talking
    /// without NAT and a forged ARP reply being dropped; then remove everything.
    Demo {
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// The path from one pod to another, hop by hop, from the real kernel state of each
    /// node (through its agent), with probes of the overlay's port (VXLAN or WireGuard)
    /// and the path MTU; names the first broken hop, the command that shows it and the
    /// fix. On the WireGuard path: each node's device and its peer for the other node
    /// (key, endpoint, latest handshake).
    Trace {
        /// Source pod: a lab pod (p1a, or namespace/name) or an IP.
        src: String,
        /// Destination pod: a lab pod (p1a, or namespace/name) or an IP.
        dst: String,
        /// Trace inside this lab (default: the local node's agent).
        #[arg(long)]
        lab: Option<String>,
        /// The local agent's socket, without --lab.
        #[arg(long, default_value = podnet_conventions::DEFAULT_API_SOCKET)]
        agent: PathBuf,
        /// Destination port: the policy hops judge the flow on it.
        #[arg(long)]
        port: Option<u16>,
        #[arg(
            long,
            alias = "proto",
            value_enum,
            default_value = "tcp",
            ignore_case = true
        )]
        protocol: Proto,
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Node-wide checks through each node's agent: every peer's route, neighbour and
    /// FDB entry (or WireGuard peer, both ways), nothing stale, overlay port and path MTU
    /// probed, forwarding, bridge and overlay device up, conntrack usage, rp_filter.
    /// Exits 1 when anything is broken.
    Doctor {
        /// Only this node.
        #[arg(long)]
        node: Option<String>,
        /// Check this lab's nodes (default: the local node's agent).
        #[arg(long)]
        lab: Option<String>,
        /// The local agent's socket, without --lab.
        #[arg(long, default_value = podnet_conventions::DEFAULT_API_SOCKET)]
        agent: PathBuf,
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// NetworkPolicy: why a flow is allowed or denied, and what the datapath refused.
    Policy {
        #[command(subcommand)]
        cmd: PolicyCmd,
    },
    /// Drop and flow events of every node, live: anti-spoofing drops (reason, the pod,
    /// its MAC), NetworkPolicy refusals (policy, direction), and with `--verdict
    /// allowed` newly admitted flows. Each agent keeps its last 4096 events: `--since`
    /// shows the recent ones first.
    Observe {
        /// This lab's nodes (default: the local node's agent).
        #[arg(long)]
        lab: Option<String>,
        /// Only this node.
        #[arg(long)]
        node: Option<String>,
        /// Only events about this pod (`namespace/name`).
        #[arg(long)]
        pod: Option<String>,
        #[arg(long, value_enum)]
        verdict: Option<VerdictFilter>,
        /// First the kept events this recent (500ms, 30s, 5m, 2h).
        #[arg(long)]
        since: Option<String>,
        /// Stop after this many events.
        #[arg(long)]
        count: Option<usize>,
        /// Stop after this long (500ms, 30s, 5m).
        #[arg(long = "for", value_name = "DURATION")]
        for_: Option<String>,
        /// The local agent's socket, without --lab.
        #[arg(long, default_value = podnet_conventions::DEFAULT_API_SOCKET)]
        agent: PathBuf,
        /// json: one JSON object per line.
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// The WireGuard backend: each node's device, key and peers with their latest
    /// handshakes; re-keying a node.
    Wireguard {
        #[command(subcommand)]
        cmd: WireguardCmd,
    },
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        what: BenchCmd,
    },
    /// A real multi-node cluster in network namespaces on this machine: a fabric, nodes
    /// each running podnetd, pods made through podnet-cni. Nothing touches the
    /// machine's own namespace; `lab down` removes it all.
    Lab {
        /// The lab to act on; several labs can coexist.
        #[arg(long, global = true, default_value = "lab")]
        name: String,
        #[command(subcommand)]
        cmd: LabCmd,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum L4 {
    #[value(name = "TCP", alias = "tcp")]
    Tcp,
    #[value(name = "UDP", alias = "udp")]
    Udp,
    #[value(name = "SCTP", alias = "sctp")]
    Sctp,
}

impl L4 {
    fn proto(self) -> podnet_policy::Proto {
        match self {
            L4::Tcp => podnet_policy::Proto::Tcp,
            L4::Udp => podnet_policy::Proto::Udp,
            L4::Sctp => podnet_policy::Proto::Sctp,
        }
    }
}

#[derive(Subcommand)]
enum PolicyCmd {
    /// Whether a flow is allowed, and why: the policies that isolate the source
    /// (egress) and the destination (ingress), and the rule that admits the flow, or
    /// that none does. The same verdict the datapath enforces.
    Explain {
        /// Source: a pod as namespace/name, or an address.
        from: String,
        /// Destination: a pod as namespace/name, or an address.
        to: String,
        /// Destination port.
        #[arg(long)]
        port: u16,
        #[arg(long, value_enum, default_value = "TCP")]
        protocol: L4,
        /// Read the objects of this lab (default: the datastore given by --datastore).
        #[arg(long)]
        lab: Option<String>,
        /// The datastore the agents read, without --lab: file:DIR, etcd://HOST:PORT,
        /// etcds://HOST:PORT?ca=FILE, or kubernetes[:KUBECONFIG] (the API server).
        #[arg(long, default_value = "file:/var/lib/podnet/datastore")]
        datastore: String,
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Packets the policy datapath refused, per node, pod and direction, with the
    /// policies that isolate the pod.
    Stats {
        /// Ask this lab's agents (default: the local agent).
        #[arg(long)]
        lab: Option<String>,
        /// The local agent's socket, without --lab.
        #[arg(long, default_value = podnet_conventions::DEFAULT_API_SOCKET)]
        agent: PathBuf,
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
}

#[derive(Subcommand)]
enum WireguardCmd {
    /// Each node's WireGuard device: implementation, public key, port, and per peer its
    /// key, endpoint, allowed IPs, latest handshake and bytes.
    Status {
        /// Ask this lab's agents (default: the local agent).
        #[arg(long)]
        lab: Option<String>,
        /// The local agent's socket, without --lab.
        #[arg(long, default_value = podnet_conventions::DEFAULT_API_SOCKET)]
        agent: PathBuf,
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Give a node a new WireGuard key while traffic flows: the agent writes it to its
    /// key file, gives it to the device and publishes the public key; peers take it
    /// from the datastore. In a lab, a pod on every other node pings a pod on the node
    /// meanwhile and what they lost is reported.
    Rotate {
        /// Rotate this lab node's key (with --lab).
        #[arg(long, requires = "lab")]
        node: Option<String>,
        #[arg(long)]
        lab: Option<String>,
        /// The local agent's socket, without --lab.
        #[arg(long, default_value = podnet_conventions::DEFAULT_API_SOCKET)]
        agent: PathBuf,
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
}

#[derive(Subcommand)]
enum LabCmd {
    /// Build the lab, or bring an existing one back to this shape (restarts dead
    /// agents, adds missing pods, duplicates nothing). A built lab keeps its backend,
    /// datastore and repair setting: leave those flags out to repair it.
    Up {
        #[arg(long, default_value_t = 2)]
        nodes: usize,
        #[arg(long, default_value_t = 2)]
        pods_per_node: usize,
        /// How nodes reach each other's pods [default: vxlan].
        #[arg(long, value_enum)]
        backend: Option<podnet_conventions::Backend>,
        /// Datastore for the agents: a URL (file:DIR, etcd://IP:PORT), or `etcd` to run
        /// an etcd inside the lab's fabric (default: a file datastore inside the lab).
        #[arg(long)]
        datastore: Option<String>,
        /// Start the agents with --no-repair (hand-made breakage stays broken).
        #[arg(long)]
        no_repair: bool,
        /// Which datapath enforces NetworkPolicy on every node [default: nftables].
        #[arg(long, value_enum)]
        policy_datapath: Option<podnet_conventions::PolicyDatapath>,
        /// How pod packets cross each node [default: bridge]. ebpf: programs on the
        /// pods' host veths (and the VXLAN device) skip the bridge and the node's IP
        /// stack; needs --policy-datapath ebpf.
        #[arg(long, value_enum)]
        datapath: Option<podnet_conventions::Datapath>,
        /// Run a real Kubernetes control plane in the lab (etcd, kube-apiserver with
        /// TLS, kube-controller-manager allocating pod CIDRs), the agents on its API
        /// with deploy/'s RBAC, and the lab as every node's kubelet. Needs the
        /// binaries of scripts/kubernetes.sh.
        #[arg(long)]
        kubernetes: bool,
        /// With --kubernetes: real nodes. Every node runs containerd, a real kubelet
        /// and kube-proxy (inside its namespaces, with a mount namespace and cgroup
        /// root of its own); the control plane adds kube-scheduler and every default
        /// controller; podnet is installed from deploy/ (an image of these binaries,
        /// the DaemonSet takes --backend/--policy-datapath/--datapath), CoreDNS runs
        /// as kube-dns. Pods of --pods-per-node are agnhost netexec pods. Needs the
        /// binaries and images of scripts/real-nodes.sh, podman and runc.
        #[arg(long, requires = "kubernetes")]
        kubelet: bool,
        /// kube-proxy's mode on real nodes [default: nftables].
        #[arg(long, value_enum, requires = "kubelet")]
        proxy_mode: Option<LabProxyMode>,
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Print the path of a Kubernetes lab's admin kubeconfig.
    Kubeconfig,
    /// Run kubectl against a Kubernetes lab: `podnet lab kubectl -- get nodes -o wide`.
    Kubectl {
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// (internal) The lab's kubelet: makes the pods the API binds to lab nodes.
    #[command(hide = true)]
    Kubelet,
    /// Apply Kubernetes manifests: Namespaces, Pods and NetworkPolicies (multi-document
    /// YAML). A file is checked whole: one invalid object and nothing is applied.
    /// Existing objects are updated in place (a live pod's labels change without
    /// re-creating it). Returns once every node enforces the result.
    Apply {
        /// The manifests, or - for standard input.
        #[arg(short = 'f', long = "filename")]
        file: String,
        /// Return once the objects are written and the pods made, without waiting for
        /// the agents to enforce them (e.g. while an agent is down).
        #[arg(long)]
        no_wait: bool,
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Delete the objects of a manifest file (pods through podnet-cni; a namespace
    /// takes its pods and policies with it).
    Delete {
        #[arg(short = 'f', long = "filename")]
        file: String,
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Send real packets from one pod to another (a TCP connection, a UDP datagram
    /// echoed, an SCTP INIT answered): exit 0 when connected, 1 when not. With
    /// --matrix, every pod to every pod at once.
    Probe {
        /// Source pod, as namespace/name (or a pod of namespace default by name).
        #[arg(required_unless_present = "matrix")]
        from: Option<String>,
        /// Destination pod.
        #[arg(required_unless_present = "matrix")]
        to: Option<String>,
        /// Destination port (the pod must declare it to serve it).
        #[arg(long)]
        port: u16,
        #[arg(long, value_enum, default_value = "TCP")]
        protocol: L4,
        /// Probe every pod to every pod: {"pods":[…],"connected":[[…],…]}, row = source.
        #[arg(long, conflicts_with_all = ["from", "to"])]
        matrix: bool,
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Remove every namespace, process and file of the lab.
    Down,
    /// Nodes, agents and pods.
    Status {
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Every pod to every other pod over TCP, and whether the receiver saw the
    /// sender's own pod IP (no NAT); pairs NetworkPolicy denies must not connect.
    /// Exits 1 on any pair that does not do what policy says, or on NAT.
    Check {
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Run a command inside a pod: `podnet lab exec p1a -- ip route`.
    Exec {
        pod: String,
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
    /// Add or delete pods.
    Pod {
        #[command(subcommand)]
        cmd: PodCmd,
    },
    /// Delete a node (its peers drop their routes to it).
    Node {
        #[command(subcommand)]
        cmd: NodeCmd,
    },
    /// Break the lab on purpose (for learning, and for tests), or undo it.
    Fault {
        #[command(subcommand)]
        cmd: FaultCmd,
    },
    /// (internal) The pods' server: the echo port and every declared port.
    #[command(hide = true)]
    ServeEcho {
        #[arg(long)]
        ip: std::net::Ipv4Addr,
        #[arg(long, default_value_t = crate::ECHO_PORT)]
        port: u16,
        #[arg(long, default_value = "")]
        tcp: String,
        #[arg(long, default_value = "")]
        udp: String,
        #[arg(long, default_value = "")]
        sctp: String,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Proto {
    Tcp,
    Udp,
    Sctp,
    Icmp,
}

#[derive(Clone, Copy, ValueEnum)]
enum LabProxyMode {
    Nftables,
    Iptables,
}

#[derive(Clone, Copy, ValueEnum)]
enum VerdictFilter {
    Dropped,
    Allowed,
}

#[derive(Subcommand)]
enum PodCmd {
    /// Create a pod on a node through podnet-cni.
    Add {
        #[arg(value_name = "POD")]
        pod: String,
        #[arg(long)]
        node: String,
    },
    /// Delete a pod through podnet-cni.
    Del {
        #[arg(value_name = "POD")]
        pod: String,
    },
}

#[derive(Subcommand)]
enum FaultCmd {
    /// Inject a fault. KIND: vxlan-port-blocked, underlay-mtu, missing-route,
    /// misrouted, missing-fdb, missing-neigh, veth-down, pod-no-default-route, pod-mtu,
    /// pod-wrong-gateway, forwarding-off, vxlan-down. Start the lab with --no-repair, or
    /// the agents heal some of them.
    Inject {
        kind: String,
        /// The node to break (default node1).
        #[arg(long)]
        node: Option<String>,
        /// The pod to break (default the node's first pod).
        #[arg(long)]
        pod: Option<String>,
    },
    /// Undo every injected fault.
    Clear,
}

#[derive(Subcommand)]
enum NodeCmd {
    /// Remove a node from the datastore and the lab.
    Del {
        #[arg(value_name = "NODE")]
        node: String,
    },
}

#[derive(Subcommand)]
enum BenchCmd {
    /// Throughput and round-trip time of every path: a plain veth pair (the ceiling),
    /// podnet same-node, cross-node VXLAN and host-gw, and the peer — the reference
    /// bridge plugin with Flannel-style VXLAN wired by hand — in one run.
    Datapath {
        /// Seconds of iperf3 per path and round.
        #[arg(long, default_value_t = 2)]
        seconds: u32,
        /// One-byte TCP round trips per path.
        #[arg(long, default_value_t = 5000)]
        round_trips: u32,
        /// Measure every path this many times (round-robin) and report the median.
        #[arg(long, default_value_t = 5)]
        rounds: u32,
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// What NetworkPolicy costs: throughput and new-connection rate into a pod
    /// selected by 0…10 000 rules on podnet's nftables and eBPF datapaths and on an
    /// iptables chain with one rule per peer (the classic baseline), programming
    /// latency with 1 000 policies and 100 pods, compile time, agent memory.
    Policy {
        /// Rule counts to measure, comma-separated.
        #[arg(long, default_value = "0,100,1000,10000", value_delimiter = ',')]
        rules: Vec<usize>,
        /// Seconds of iperf3 per measurement.
        #[arg(long, default_value_t = 2)]
        seconds: u32,
        /// Measurements per cell; the median is reported.
        #[arg(long, default_value_t = 3)]
        rounds: u32,
        /// Policy changes timed for the programming latency.
        #[arg(long, default_value_t = 100)]
        changes: usize,
        /// Only these parts: per-packet, latency, compile (comma-separated).
        #[arg(long, value_delimiter = ',', value_parser = ["per-packet", "latency", "compile"])]
        only: Vec<String>,
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// What a spraying pod costs the other pods, on both policy datapaths: a victim
    /// pod's new-connection rate and round trip while quiet, while another pod sprays
    /// new flows, and while it sprays denied packets and forged ARP (event pressure);
    /// the sprayer's rate, the flow-table or conntrack entries it holds, and the
    /// growth of podnetd's budget counters.
    Spray {
        /// Seconds per case: the first half opens connections, the rest times round trips.
        #[arg(long, default_value_t = 5)]
        seconds: u32,
        /// Measurements per case, interleaved; the median is reported.
        #[arg(long, default_value_t = 3)]
        rounds: u32,
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// ADD and DEL latency (p50, p99) of podnet-cni against the reference bridge +
    /// host-local plugins, sequential and concurrent, in the same run.
    Cni {
        /// Pods per phase.
        #[arg(long, default_value_t = 200)]
        pods: usize,
        /// Parallel invocations in the concurrent phase.
        #[arg(long, default_value_t = 10)]
        concurrency: usize,
        /// Directory holding the reference `bridge` and `host-local` plugins.
        #[arg(long, default_value = "/usr/lib/cni")]
        reference_dir: PathBuf,
        /// podnet-cni binary (default: next to this executable).
        #[arg(long)]
        podnet_cni: Option<PathBuf>,
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
}

fn podnet_cni(explicit: Option<PathBuf>) -> Result<PathBuf> {
    explicit
        .or_else(|| crate::sibling_binary("podnet-cni"))
        .context("podnet-cni not found next to the podnet executable; build the workspace (cargo build --release) or pass --podnet-cni")
}

fn require_root() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        anyhow::bail!("this command creates network namespaces and must run as root (try sudo)");
    }
    Ok(())
}

pub fn main() {
    let cli = Cli::parse();
    // Results go to standard output and errors to standard error, as text or JSON;
    // logs (RUST_LOG, default warn) are for what runs in the background: the lab's
    // kubelet logs every pod it makes (info).
    let daemon = matches!(
        cli.cmd,
        Cmd::Lab {
            cmd: LabCmd::Kubelet,
            ..
        }
    );
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(if daemon { "info" } else { "warn" })
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false)
        .init();
    if let Err(e) = run(cli) {
        eprintln!("podnet: error: {e:#}");
        std::process::exit(1);
    }
}

/// Every result the tool prints goes out here: one JSON document with `--output json`,
/// else the text `render` makes of it.
fn emit<T: serde::Serialize + ?Sized>(
    output: Output,
    v: &T,
    render: impl FnOnce(&T) -> String,
) -> Result<()> {
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(v)?),
        Output::Text => print!("{}", render(v)),
    }
    Ok(())
}

fn print_status(lab: &crate::Lab, output: Output) -> Result<()> {
    let st = lab.status()?;
    if output == Output::Json {
        return emit(output, &st, |_| String::new());
    }
    println!(
        "lab {}: fabric {} (bridge {})",
        st.name, st.fabric.netns, st.fabric.bridge
    );
    println!(
        "{:<8} {:<14} {:<16} {:<18} {:>8} {:>6}",
        "NODE", "UNDERLAY", "POD CIDR", "VTEP MAC", "AGENT", "PEERS"
    );
    for n in &st.nodes {
        // On real nodes podnetd is the DaemonSet's pod: no pid of the lab's.
        let agent = match (n.agent_pid, n.pod_cidr.is_some()) {
            (Some(p), _) => p.to_string(),
            (None, true) => "pod".into(),
            (None, false) => "DOWN".into(),
        };
        println!(
            "{:<8} {:<14} {:<16} {:<18} {:>8} {:>6}",
            n.name,
            n.underlay_ip,
            n.pod_cidr.as_deref().unwrap_or("?"),
            n.vtep_mac.as_deref().unwrap_or("-"),
            agent,
            n.peers
        );
    }
    println!(
        "{:<6} {:<8} {:<14} {:<18} {:<16}",
        "POD", "NODE", "IP", "MAC", "HOST VETH"
    );
    for p in &st.pods {
        println!(
            "{:<6} {:<8} {:<14} {:<18} {:<16}",
            p.name, p.node, p.ip, p.mac, p.host_veth
        );
    }
    Ok(())
}

/// The agents `trace` and `doctor` ask: a lab's nodes, or the local node's agent.
fn agents(lab: Option<String>, agent: PathBuf) -> Result<Box<dyn podnet_cli::trace::Agents>> {
    Ok(match lab {
        Some(name) => Box::new(crate::agents::LabAgents::new(&open_lab(&name)?)?),
        None => Box::new(podnet_cli::trace::LocalAgent(agent)),
    })
}

/// A lab that exists; `lab up` is the only way to make one.
fn open_lab(name: &str) -> Result<crate::Lab> {
    if !crate::Lab::exists(name) {
        anyhow::bail!(
            "no lab {name} on this machine; start one with `podnet lab up --name {name}`"
        );
    }
    crate::Lab::open(name)
}

fn run_lab(name: &str, cmd: LabCmd) -> Result<()> {
    use crate::{Binaries, Lab};
    if let LabCmd::ServeEcho {
        ip,
        port,
        tcp,
        udp,
        sctp,
    } = cmd
    {
        use crate::traffic::reach::{parse_ports, serve};
        return serve(
            ip,
            port,
            &parse_ports(&tcp)?,
            &parse_ports(&udp)?,
            &parse_ports(&sctp)?,
        );
    }
    require_root()?;
    if let LabCmd::Kubelet = cmd {
        return crate::kubernetes::run_kubelet(name);
    }
    let lab = if matches!(cmd, LabCmd::Up { .. }) {
        Lab::open(name)?
    } else {
        open_lab(name)?
    };
    match cmd {
        LabCmd::Up {
            nodes,
            pods_per_node,
            backend,
            datastore,
            no_repair,
            policy_datapath,
            kubernetes,
            kubelet,
            proxy_mode,
            datapath,
            output,
        } => {
            if nodes == 0 || nodes > 200 {
                anyhow::bail!("--nodes must be between 1 and 200");
            }
            if pods_per_node > 26 {
                anyhow::bail!("--pods-per-node must be at most 26 (pods are named p<node><letter>); add more with `podnet lab pod add`");
            }
            let opts = crate::Options {
                nodes,
                pods_per_node,
                backend,
                datastore,
                repair: no_repair.then_some(false),
                policy_datapath,
                kubernetes: kubernetes.then_some(true),
                real_nodes: kubelet.then_some(true),
                proxy_mode: proxy_mode.map(|m| match m {
                    LabProxyMode::Nftables => "nftables".into(),
                    LabProxyMode::Iptables => "iptables".into(),
                }),
                datapath,
            };
            let quiet = output == Output::Json;
            let st = lab.up(&opts, &Binaries::find()?, &mut |l| {
                if !quiet {
                    eprintln!("… {l}");
                }
            })?;
            if st.kubernetes && !st.real_nodes {
                // The lab's kubelet makes the pods; it needs the lab's lock.
                drop(lab);
                let ids: Vec<String> = (1..=nodes)
                    .flat_map(|i| (0..pods_per_node).map(move |j| crate::pod_name(i, j)))
                    .collect();
                crate::kubernetes::wait_pods(name, &ids, &[], std::time::Duration::from_secs(60))?;
                let lab = open_lab(name)?;
                print_status(&lab, output)?;
                return Ok(());
            }
            print_status(&lab, output)?;
        }
        LabCmd::Kubeconfig => {
            let st = lab.load()?.unwrap_or_default();
            if !st.kubernetes {
                anyhow::bail!(
                    "lab {name} runs no Kubernetes; build one with `podnet lab up --kubernetes`"
                );
            }
            println!("{}", lab.kubeconfig().display());
        }
        LabCmd::Kubectl { args } => {
            let st = lab.load()?.unwrap_or_default();
            if !st.kubernetes {
                anyhow::bail!(
                    "lab {name} runs no Kubernetes; build one with `podnet lab up --kubernetes`"
                );
            }
            let (mut cmd, _fabric) = lab.kubectl_command()?;
            drop(lab);
            let status = cmd.args(&args).status().context("run kubectl")?;
            std::process::exit(status.code().unwrap_or(1));
        }
        LabCmd::Kubelet => unreachable!("handled above"),
        LabCmd::Down => {
            let n = lab.down()?;
            println!("lab {name} removed ({n} namespaces)");
        }
        LabCmd::Status { output } => print_status(&lab, output)?,
        LabCmd::Check { output } => {
            let c = lab.check()?;
            let pods = lab.load()?.map(|s| s.pods).unwrap_or_default();
            emit(output, &c, |c| crate::render_check(c, &pods))?;
            if c.unexpected > 0 || !c.nat_free {
                std::process::exit(1);
            }
        }
        LabCmd::Exec { pod, cmd } => {
            let code = crate::exec_in(&lab, &pod, &cmd)?;
            std::process::exit(code);
        }
        LabCmd::Pod {
            cmd: PodCmd::Add { pod, node },
        } if lab.load()?.is_some_and(|s| s.kubernetes) => {
            lab.create_pods(&[(pod.clone(), node)])?;
            drop(lab);
            crate::kubernetes::wait_pods(
                name,
                std::slice::from_ref(&pod),
                &[],
                std::time::Duration::from_secs(60),
            )?;
            println!("pod {pod} created");
        }
        LabCmd::Pod {
            cmd: PodCmd::Del { pod },
        } if lab.load()?.is_some_and(|s| s.kubernetes) => {
            let st = lab.load()?.unwrap_or_default();
            let p = st
                .find_pod(&pod)
                .with_context(|| format!("no pod {pod} in lab {name}"))?;
            let (ns, pname, id) = (
                p.namespace.clone(),
                p.pod_name().to_string(),
                p.name.clone(),
            );
            lab.kubectl(&["delete", "pod", "-n", &ns, &pname, "--wait=false"], None)?;
            drop(lab);
            crate::kubernetes::wait_pods(name, &[], &[id], std::time::Duration::from_secs(60))?;
            println!("pod {pod} deleted");
        }
        LabCmd::Pod {
            cmd: PodCmd::Add { pod, node },
        } => {
            let mut st = lab.load()?.unwrap_or_default();
            lab.ensure_pod(&mut st, &pod, &node, &Binaries::find()?, &mut |l| {
                println!("{l}")
            })?;
            lab.save(&st)?;
        }
        LabCmd::Pod {
            cmd: PodCmd::Del { pod },
        } => {
            let mut st = lab.load()?.unwrap_or_default();
            lab.del_pod(&mut st, &pod, &Binaries::find()?)?;
            lab.save(&st)?;
            println!("pod {pod} deleted");
        }
        LabCmd::Node {
            cmd: NodeCmd::Del { node },
        } => {
            let mut st = lab.load()?.unwrap_or_default();
            lab.del_node(&mut st, &node)?;
            lab.save(&st)?;
            println!("node {node} removed from lab {name} and from the datastore");
        }
        LabCmd::Fault {
            cmd: FaultCmd::Inject { kind, node, pod },
        } => {
            let st = lab.load()?.unwrap_or_default();
            let done = lab.inject(&st, &kind, node.as_deref(), pod.as_deref())?;
            println!("fault {kind}: {done}");
        }
        LabCmd::Fault {
            cmd: FaultCmd::Clear,
        } => {
            let n = lab.clear_faults()?;
            println!("{n} fault steps undone");
        }
        LabCmd::Apply {
            file,
            no_wait,
            output,
        } => {
            let text = crate::apply::read_source(&file)?;
            if lab.load()?.is_some_and(|s| s.kubernetes) {
                drop(lab);
                let changes = crate::kubernetes::apply(name, &text, !no_wait)?;
                print_changes(&changes, output)?;
                return Ok(());
            }
            let objs = crate::apply::parse_manifests(&text)?;
            let quiet = output == Output::Json;
            let changes = lab.apply(&objs, !no_wait, &Binaries::find()?, &mut |l| {
                if !quiet {
                    eprintln!("… {l}");
                }
            })?;
            print_changes(&changes, output)?;
        }
        LabCmd::Delete { file, output } => {
            let text = crate::apply::read_source(&file)?;
            if lab.load()?.is_some_and(|s| s.kubernetes) {
                drop(lab);
                let changes = crate::kubernetes::delete(name, &text)?;
                print_changes(&changes, output)?;
                return Ok(());
            }
            let objs = crate::apply::parse_manifests(&text)?;
            let changes = lab.delete(&objs, &Binaries::find()?)?;
            print_changes(&changes, output)?;
        }
        LabCmd::Probe {
            from,
            to,
            port,
            protocol,
            matrix,
            output,
        } => {
            if matrix {
                let m = lab.matrix(port, protocol.proto())?;
                emit(output, &m, crate::traffic::reach::render_matrix)?;
            } else {
                let (from, to) = (from.unwrap_or_default(), to.unwrap_or_default());
                let r = lab.probe(&from, &to, port, protocol.proto())?;
                emit(output, &r, |r| {
                    format!(
                        "{} → {} {} port {}: {}\n",
                        r.from,
                        r.to,
                        r.protocol.name(),
                        r.port,
                        if r.connected {
                            "connected"
                        } else {
                            "NOT connected"
                        }
                    )
                })?;
                if !r.connected {
                    std::process::exit(1);
                }
            }
        }
        LabCmd::ServeEcho { .. } => unreachable!("handled above"),
    }
    Ok(())
}

fn print_changes(changes: &[crate::apply::Change], output: Output) -> Result<()> {
    emit(output, changes, |changes| {
        changes
            .iter()
            .map(|c| match &c.detail {
                Some(d) => format!("{} {} ({d})\n", c.object, c.action),
                None => format!("{} {}\n", c.object, c.action),
            })
            .collect()
    })
}

fn run_policy(cmd: PolicyCmd) -> Result<()> {
    match cmd {
        PolicyCmd::Explain {
            from,
            to,
            port,
            protocol,
            lab,
            datastore,
            output,
        } => {
            let objs = match lab {
                Some(name) => crate::agents::lab_objects(&open_lab(&name)?)?,
                None => crate::agents::datastore_objects(&datastore)?,
            };
            let v = podnet_cli::policy::explain(&objs, &from, &to, port, protocol.proto())?;
            emit(output, &v, podnet_cli::policy::render_verdict)?;
        }
        PolicyCmd::Stats { lab, agent, output } => {
            let socks = agent_sockets(lab, agent)?;
            let refs: Vec<(String, &std::path::Path)> = socks
                .iter()
                .map(|(n, p)| (n.clone(), p.as_path()))
                .collect();
            let s = podnet_cli::policy::stats(&refs)?;
            emit(output, &s, |s| podnet_cli::policy::render_stats(s))?;
        }
    }
    Ok(())
}

/// Each lab node's agent socket, by node; or the local agent's, as `local`.
fn agent_sockets(lab: Option<String>, agent: PathBuf) -> Result<Vec<(String, PathBuf)>> {
    Ok(match lab {
        Some(name) => {
            let l = open_lab(&name)?;
            let st = l.load()?.unwrap_or_default();
            st.nodes
                .iter()
                .map(|n| (n.name.clone(), l.api_socket(&n.name)))
                .collect()
        }
        None => vec![("local".into(), agent)],
    })
}

fn run_wireguard(cmd: WireguardCmd) -> Result<()> {
    match cmd {
        WireguardCmd::Status { lab, agent, output } => {
            let socks = agent_sockets(lab, agent)?;
            let s = podnet_cli::wireguard::status(&socks);
            emit(output, &s, |s| podnet_cli::wireguard::render_status(s))?;
            if s.iter().any(|n| n.wireguard.is_none()) {
                std::process::exit(1);
            }
        }
        WireguardCmd::Rotate {
            node,
            lab,
            agent,
            output,
        } => {
            let r = match lab {
                Some(name) => {
                    let node = node.context("--lab needs --node: the node to re-key")?;
                    crate::agents::rotate_in_lab(&open_lab(&name)?, &node)?
                }
                None => podnet_cli::wireguard::rotate(agent)?,
            };
            emit(output, &r, podnet_cli::wireguard::render_rotation)?;
        }
    }
    Ok(())
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Observe {
            lab,
            node,
            pod,
            verdict,
            since,
            count,
            for_,
            agent,
            output,
        } => {
            let mut socks = agent_sockets(lab, agent)?;
            if let Some(n) = &node {
                if !socks.iter().any(|(s, _)| s == n) {
                    anyhow::bail!(
                        "no node {n} to observe; nodes: {}",
                        socks
                            .iter()
                            .map(|(s, _)| s.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
                }
                socks.retain(|(s, _)| s == n);
            }
            let filter = podnet_cli::observe::Filter {
                pod,
                verdict: verdict.map(|v| match v {
                    VerdictFilter::Dropped => "dropped".into(),
                    VerdictFilter::Allowed => "allowed".into(),
                }),
                since: since
                    .as_deref()
                    .map(podnet_cli::observe::parse_duration)
                    .transpose()?,
            };
            let stop = podnet_cli::observe::Stop {
                count,
                after: for_
                    .as_deref()
                    .map(podnet_cli::observe::parse_duration)
                    .transpose()?,
            };
            use std::io::Write;
            podnet_cli::observe::follow(&socks, &filter, stop, &mut |e| {
                let mut o = std::io::stdout().lock();
                match output {
                    Output::Json => writeln!(o, "{}", serde_json::to_string(e)?)?,
                    Output::Text => writeln!(o, "{}", podnet_cli::observe::render(e))?,
                }
                o.flush()?;
                Ok(())
            })?;
        }
        Cmd::Wireguard { cmd } => run_wireguard(cmd)?,
        Cmd::Policy { cmd } => run_policy(cmd)?,
        Cmd::Lab { name, cmd } => run_lab(&name, cmd)?,
        Cmd::Doctor {
            node,
            lab,
            agent,
            output,
        } => {
            let r = podnet_cli::doctor::doctor(&*agents(lab, agent)?, node.as_deref())?;
            emit(output, &r, podnet_cli::doctor::render)?;
            if r.broken > 0 {
                std::process::exit(1);
            }
        }
        Cmd::Trace {
            src,
            dst,
            lab,
            agent,
            port,
            protocol,
            output,
        } => {
            let flow = podnet_cli::trace::Flow {
                proto: match protocol {
                    Proto::Tcp => podnet_policy::Proto::Tcp,
                    Proto::Udp => podnet_policy::Proto::Udp,
                    Proto::Sctp => podnet_policy::Proto::Sctp,
                    Proto::Icmp => podnet_policy::Proto::Other(1),
                },
                port,
            };
            let t = podnet_cli::trace::trace(&*agents(lab, agent)?, &src, &dst, &flow)?;
            emit(output, &t, podnet_cli::trace::render)?;
            if t.broken_hop.is_some() {
                std::process::exit(1);
            }
        }
        Cmd::Demo { output } => {
            require_root()?;
            let plugin = podnet_cni(None)?;
            let quiet = output == Output::Json;
            let report = crate::demo::run(&plugin, &mut |l| {
                if !quiet {
                    println!("{l}");
                }
            })?;
            emit(output, &report, |_| String::new())?;
            if !report.no_nat || report.forged_arp_dropped == 0 {
                anyhow::bail!("the demo did not show what it should: see the lines above");
            }
        }
        Cmd::Bench {
            what:
                BenchCmd::Datapath {
                    seconds,
                    round_trips,
                    rounds,
                    output,
                },
        } => {
            require_root()?;
            let quiet = output == Output::Json;
            let report = crate::bench::datapath::run(
                &crate::bench::datapath::Options {
                    seconds: seconds.max(1),
                    round_trips: round_trips.max(10),
                    rounds: rounds.max(1),
                },
                &crate::Binaries::find()?,
                &mut |l| {
                    if !quiet {
                        eprintln!("… {l}");
                    }
                },
            )?;
            emit(output, &report, crate::bench::datapath::render)?;
        }
        Cmd::Bench {
            what:
                BenchCmd::Policy {
                    mut rules,
                    seconds,
                    rounds,
                    changes,
                    only,
                    output,
                },
        } => {
            require_root()?;
            if !rules.contains(&0) {
                rules.insert(0, 0);
            }
            rules.sort();
            rules.dedup();
            let quiet = output == Output::Json;
            let report = crate::bench::policy::run(
                &crate::bench::policy::Options {
                    rules,
                    seconds: seconds.max(1),
                    rounds: rounds.max(1),
                    changes: changes.max(1),
                    only,
                },
                &crate::Binaries::find()?,
                &mut |l| {
                    if !quiet {
                        eprintln!("… {l}");
                    }
                },
            )?;
            emit(output, &report, crate::bench::policy::render)?;
        }
        Cmd::Bench {
            what:
                BenchCmd::Spray {
                    seconds,
                    rounds,
                    output,
                },
        } => {
            require_root()?;
            let quiet = output == Output::Json;
            let report = crate::bench::policy::spray::run(
                &crate::bench::policy::spray::Options {
                    seconds: seconds.max(2),
                    rounds: rounds.max(1),
                },
                &crate::Binaries::find()?,
                &mut |l| {
                    if !quiet {
                        eprintln!("… {l}");
                    }
                },
            )?;
            emit(output, &report, crate::bench::policy::spray::render)?;
        }
        Cmd::Bench {
            what:
                BenchCmd::Cni {
                    pods,
                    concurrency,
                    reference_dir,
                    podnet_cni: p,
                    output,
                },
        } => {
            require_root()?;
            let opts = crate::bench::cni::Options {
                pods,
                concurrency,
                podnet_cni: podnet_cni(p)?,
                reference_dir,
            };
            let quiet = output == Output::Json;
            let report = crate::bench::cni::run(&opts, &mut |l| {
                if !quiet {
                    eprintln!("… {l}");
                }
            })?;
            emit(output, &report, crate::bench::cni::render)?;
        }
    }
    Ok(())
}
