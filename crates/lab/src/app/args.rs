//! The `podnet` command's arguments: every subcommand, flag and its help (clap).

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
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub(crate) enum Output {
    Text,
    Json,
}

#[derive(Subcommand)]
pub(crate) enum Cmd {
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
    /// (key, endpoint, latest handshake). A dual-stack pod's IPv6 path is traced
    /// with --family ipv6 or by giving its IPv6 address.
    Trace {
        /// Source pod: a lab pod (p1a, or namespace/name) or an IP.
        src: String,
        /// Destination: a pod (a lab pod: p1a, or namespace/name; or an IP), or a
        /// Service (its ClusterIP, namespace/name, or name in default; SERVICE:PORT
        /// picks a port; [IPV6]:PORT for an IPv6 ClusterIP). A Service is traced
        /// through the translation the source node's kube-proxy rules make (its IPv6
        /// rules for a dual-stack Service's IPv6 side), to the first backend.
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
        /// The address family to follow: by default the family of the addresses given
        /// (IPv4 for pod names). `ipv6` follows the pods' IPv6 addresses (its routes,
        /// neighbour entries, forwarding, policy entries and fast-path map); `both`
        /// traces each family in turn (JSON: an array) and fails if either is broken.
        #[arg(long, value_enum)]
        family: Option<TraceFamily>,
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
pub(crate) enum L4 {
    #[value(name = "TCP", alias = "tcp")]
    Tcp,
    #[value(name = "UDP", alias = "udp")]
    Udp,
    #[value(name = "SCTP", alias = "sctp")]
    Sctp,
}

impl L4 {
    pub(crate) fn proto(self) -> podnet_policy::Proto {
        match self {
            L4::Tcp => podnet_policy::Proto::Tcp,
            L4::Udp => podnet_policy::Proto::Udp,
            L4::Sctp => podnet_policy::Proto::Sctp,
        }
    }
}

#[derive(Subcommand)]
pub(crate) enum PolicyCmd {
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
        /// Judge the flow between the pods' IPv6 addresses (dual-stack); implied when
        /// either end is given as an IPv6 address.
        #[arg(long)]
        ipv6: bool,
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
pub(crate) enum WireguardCmd {
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
pub(crate) enum LabCmd {
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
        /// Start the agents with --masquerade=false: pod traffic to the lab's outside
        /// host (192.168.1.254) keeps the pod's address and gets no answer.
        #[arg(long)]
        no_masquerade: bool,
        /// Which datapath enforces NetworkPolicy on every node [default: ebpf; nftables
        /// with --datapath bridge or --backend wireguard].
        #[arg(long, value_enum)]
        policy_datapath: Option<podnet_conventions::PolicyDatapath>,
        /// How pod packets cross each node [default: ebpf, the fast path: programs on
        /// the pods' host veths (and the VXLAN device) skip the bridge and the node's IP
        /// stack, with the eBPF policy datapath]. bridge: the node bridge and IP stack,
        /// the compatible choice (the default with --backend wireguard or
        /// --policy-datapath nftables|none).
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
        /// The pods' address families [default: ipv4]. dual: every pod also gets an
        /// IPv6 address (from fd00:10:244::/56, a /64 per node), carried between nodes
        /// over VXLAN or WireGuard without NAT; for now with --datapath bridge and
        /// --policy-datapath nftables or none.
        #[arg(long, value_enum)]
        ip_family: Option<podnet_conventions::IpFamily>,
        /// The family of the nodes' overlay tunnels [default: ipv4]. ipv6: each node's
        /// eth0 gets an IPv6 address on the fabric (fd00:192:168:1::/64) and VXLAN or
        /// WireGuard run between those (70 or 80 bytes of overhead); pods of either
        /// --ip-family cross it, on either datapath. Not with host-gw. With --kubelet
        /// each kubelet reports the node's IPv6 address too (--node-ip IPv4,IPv6).
        #[arg(long, value_enum)]
        underlay_family: Option<podnet_conventions::UnderlayFamily>,
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
        /// Probe the pods' IPv6 addresses (a dual-stack lab; TCP and UDP).
        #[arg(long)]
        ipv6: bool,
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
        /// The pod's IPv6 address (dual-stack): TCP and UDP served there too.
        #[arg(long)]
        ip6: Option<std::net::Ipv6Addr>,
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

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub(crate) enum TraceFamily {
    Ipv4,
    Ipv6,
    Both,
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum Proto {
    Tcp,
    Udp,
    Sctp,
    Icmp,
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum LabProxyMode {
    Nftables,
    Iptables,
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum VerdictFilter {
    Dropped,
    Allowed,
}

#[derive(Subcommand)]
pub(crate) enum PodCmd {
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
pub(crate) enum FaultCmd {
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
pub(crate) enum NodeCmd {
    /// Remove a node from the datastore and the lab.
    Del {
        #[arg(value_name = "NODE")]
        node: String,
    },
}

#[derive(Subcommand)]
pub(crate) enum BenchCmd {
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
        /// Pods of one family (`ipv4`) or dual-stack pods (`dual`: an IPv4 and an IPv6
        /// address each, from both plugins; duplicate address detection is off in the
        /// pod namespaces, or the reference would wait a second for it per pod).
        #[arg(long, value_enum, default_value = "ipv4")]
        ip_family: podnet_conventions::IpFamily,
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
}
