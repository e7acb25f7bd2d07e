//! `podnetd`: the per-node agent. Thin: parses arguments, runs `podnet_agent`.

use clap::{Parser, ValueEnum};
use podnet_agent::{Agent, BackendKind, Config};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Clone, Copy, ValueEnum)]
enum Backend {
    Vxlan,
    HostGw,
}

#[derive(Clone, Copy, ValueEnum)]
enum PolicyDatapath {
    /// nftables: one table, sets of peers and ports, one atomic transaction per change.
    Nftables,
    /// eBPF: programs on every pod's host veth, LPM tries pinned in bpffs.
    Ebpf,
    /// No NetworkPolicy at all (every pod open, as with Flannel).
    None,
}

#[derive(Parser)]
#[command(
    name = "podnetd",
    version,
    about = "podnet's per-node agent: leases the node's pod CIDR, builds the bridge and the overlay, keeps one route, neighbour and FDB entry per peer node",
    long_about = "podnetd runs once per node, as root, in the node's network namespace. It leases a pod CIDR \
                  from the datastore (the same one across restarts), creates the bridge and (VXLAN backend) the \
                  VXLAN device, turns on forwarding, and keeps per peer node one route, one neighbour and one FDB \
                  entry, removing them when the peer leaves. Objects changed by hand are restored (--no-repair \
                  turns that off). It enforces NetworkPolicy for the node's pods from the Namespaces, Pods and \
                  NetworkPolicies in the datastore: a pod is closed until its verdicts are programmed. Stopping \
                  podnetd withdraws nothing and opens nothing; pod traffic keeps flowing."
)]
struct Args {
    /// This node's name in the datastore.
    #[arg(long)]
    node: String,
    /// Where nodes lease CIDRs and find peers: file:/path/to/dir or etcd://ip:port[,ip:port].
    #[arg(long, default_value = "file:/var/lib/podnet/datastore")]
    datastore: String,
    /// The node's physical interface: VXLAN runs over it, host-gw routes through it.
    #[arg(long, default_value = "eth0")]
    underlay_dev: String,
    /// The range node pod CIDRs are cut from.
    #[arg(long, default_value = "10.244.0.0/16")]
    cluster_cidr: String,
    /// Prefix length of each node's pod CIDR.
    #[arg(long, default_value_t = 24)]
    node_prefix: u8,
    #[arg(long, value_enum, default_value = "vxlan")]
    backend: Backend,
    #[arg(long, default_value_t = 1)]
    vni: u32,
    /// VXLAN UDP port (8472 as Flannel; 4789 is the IANA port).
    #[arg(long, default_value_t = 8472)]
    vxlan_port: u16,
    #[arg(long, default_value = "podnet.vxlan")]
    vxlan_dev: String,
    #[arg(long, default_value = "podnet0")]
    bridge: String,
    /// Do not restore objects changed by hand (for investigating a broken node).
    #[arg(long)]
    no_repair: bool,
    /// Seconds a lease lives without renewal; renewed every third of it.
    #[arg(long, default_value_t = 120)]
    lease_ttl: u64,
    /// Where podnet-cni reads the node's pod CIDR, MTU and bridge.
    #[arg(long, default_value = "/run/podnet/node.json")]
    node_file: PathBuf,
    /// Which datapath enforces NetworkPolicy for this node's pods.
    #[arg(long, value_enum, default_value = "nftables")]
    policy_datapath: PolicyDatapath,
    /// Where the eBPF policy datapath pins its maps and programs (a directory on a
    /// bpffs; they outlive podnetd).
    #[arg(long, default_value = "/sys/fs/bpf/podnet")]
    bpf_dir: PathBuf,
    /// The local API socket.
    #[arg(long, default_value = "/run/podnet/podnetd.sock")]
    api_socket: PathBuf,
}

fn main() {
    let a = Args::parse();
    let cluster_cidr = match a.cluster_cidr.parse() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("podnetd: invalid --cluster-cidr {:?}: {e}", a.cluster_cidr);
            std::process::exit(2);
        }
    };
    let cfg = Config {
        node: a.node,
        datastore: a.datastore,
        underlay_dev: a.underlay_dev,
        cluster_cidr,
        node_prefix: a.node_prefix,
        backend: match a.backend {
            Backend::Vxlan => BackendKind::Vxlan,
            Backend::HostGw => BackendKind::HostGw,
        },
        vni: a.vni,
        port: a.vxlan_port,
        vxlan_dev: a.vxlan_dev,
        bridge: a.bridge,
        repair: !a.no_repair,
        lease_ttl: Duration::from_secs(a.lease_ttl.max(3)),
        node_file: a.node_file,
        api_socket: a.api_socket,
        interval: Duration::from_secs(1),
        policy_datapath: match a.policy_datapath {
            PolicyDatapath::Nftables => podnet_agent::policy::DatapathKind::Nftables,
            PolicyDatapath::Ebpf => podnet_agent::policy::DatapathKind::Ebpf,
            PolicyDatapath::None => podnet_agent::policy::DatapathKind::None,
        },
        bpf_dir: a.bpf_dir,
    };
    let node = cfg.node.clone();
    let result = Agent::new(cfg).and_then(|agent| agent.run());
    if let Err(e) = result {
        eprintln!("podnetd[{node}]: fatal: {e}");
        std::process::exit(1);
    }
}
