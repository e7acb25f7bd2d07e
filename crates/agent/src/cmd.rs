//! `podnetd`'s command line: its arguments and modes, and the daemon's start-up and
//! shutdown around [`crate::Agent`].

use crate::Failure;
use crate::{Agent, Backend, Config, Datapath, PolicyDatapath};
use clap::{Parser, ValueEnum};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    /// One line per event: time, level, message, node.
    Text,
    /// One JSON object per line (timestamp, level, fields.message, fields.node).
    Json,
}

#[derive(Parser)]
#[command(
    name = "podnetd",
    version,
    about = "podnet's per-node agent: leases the node's pod CIDR, builds the bridge and the overlay, keeps one route, neighbour and FDB entry per peer node",
    long_about = "podnetd runs once per node, as root, in the node's network namespace. It leases a pod CIDR \
                  from the datastore (the same one across restarts), creates the bridge and (VXLAN backend) the \
                  VXLAN device, turns on forwarding, and keeps per peer node one route, one neighbour and one FDB \
                  entry, removing them when the peer leaves. With --backend wireguard, pod traffic between nodes \
                  is encrypted by a WireGuard device (userspace, in a device process that outlives podnetd): \
                  one WireGuard peer and one route per peer node; only the node's public key is published. Objects changed by hand are restored (--no-repair \
                  turns that off). It enforces NetworkPolicy for the node's pods from the Namespaces, Pods and \
                  NetworkPolicies in the datastore: a pod is closed until its verdicts are programmed. Stopping \
                  podnetd withdraws nothing and opens nothing; pod traffic keeps flowing."
)]
struct Args {
    /// This node's name in the datastore (on Kubernetes: the Node's name; the
    /// DaemonSet passes it from the downward API).
    #[arg(long, env = "NODE_NAME")]
    node: String,
    /// Where nodes lease CIDRs and find peers: file:/path/to/dir,
    /// etcd://[user:password@]ip:port[,ip:port], etcds://ip:port?ca=FILE[&cert=FILE&key=FILE]
    /// (TLS), or kubernetes (the API server: pod CIDR from the Node's spec.podCIDR, peers
    /// from a watch on Nodes, policy objects from watches).
    #[arg(long, default_value = "file:/var/lib/podnet/datastore")]
    datastore: String,
    /// With --datastore kubernetes: the kubeconfig to use (default: the pod's service
    /// account, else $KUBECONFIG or ~/.kube/config).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Make each Kubernetes API call the agent makes once, print each with its
    /// outcome, and exit (1 if any was refused): checks the RBAC role before rollout.
    #[arg(long)]
    check_access: bool,
    /// Ask the agent running on --api-socket whether the node is ready (datapath
    /// programmed, datastore healthy) and exit 0 if so, 1 if not: the DaemonSet's
    /// readiness probe.
    #[arg(long)]
    check_ready: bool,
    /// Install podnet-cni (the one beside this binary) into this directory and exit:
    /// the DaemonSet's init container, with the host's /opt/cni/bin mounted here.
    #[arg(long, value_name = "DIR")]
    install_cni: Option<PathBuf>,
    /// With --install-cni: the CNI network configuration to install.
    #[arg(long, value_name = "FILE", requires = "install_cni")]
    install_conflist: Option<PathBuf>,
    /// With --install-cni: where the conflist goes (the host's /etc/cni/net.d).
    #[arg(long, value_name = "DIR", requires = "install_conflist")]
    install_conf_dir: Option<PathBuf>,
    /// The node's physical interface: VXLAN runs over it, host-gw routes through it.
    #[arg(long, default_value = "eth0")]
    underlay_dev: String,
    /// The range node pod CIDRs are cut from.
    #[arg(long, default_value = "10.244.0.0/16")]
    cluster_cidr: String,
    /// The cluster's Service range (kube-apiserver's --service-cluster-ip-range):
    /// a peer whose underlay address lies in it is left out.
    #[arg(long, default_value = "10.96.0.0/12")]
    service_cidr: String,
    /// Prefix length of each node's pod CIDR.
    #[arg(long, default_value_t = 24)]
    node_prefix: u8,
    /// How pod traffic crosses between nodes.
    #[arg(long, value_enum, default_value = "vxlan")]
    backend: Backend,
    /// WireGuard backend: the device.
    #[arg(long, default_value = podnet_conventions::WG_DEV)]
    wireguard_dev: String,
    /// WireGuard backend: the UDP port the device listens on (every node's may differ;
    /// each publishes its own).
    #[arg(long, default_value_t = podnet_conventions::WG_PORT)]
    wireguard_port: u16,
    /// WireGuard backend: the node's private key, made here (mode 0600) on first start;
    /// it never leaves the node. Remove it and restart podnetd, or use `podnet
    /// wireguard rotate`, for a new one.
    #[arg(long, default_value = "/var/lib/podnet/wireguard.key")]
    wireguard_key: PathBuf,
    /// WireGuard backend: the device process's configuration socket (root only; at
    /// this default path `wg show podnet.wg` from wireguard-tools reads it).
    #[arg(long, default_value = "/var/run/wireguard/podnet.wg.sock")]
    wireguard_socket: PathBuf,
    /// WireGuard backend: where the device process writes its pid.
    #[arg(long, default_value = "/run/podnet/wireguard.pid")]
    wireguard_pid_file: PathBuf,
    /// How pod packets cross the node.
    #[arg(long, value_enum, default_value = "bridge")]
    datapath: Datapath,
    /// Serve Prometheus metrics at http://ADDR/metrics. `node:PORT`: on the node's
    /// underlay address (the one on --underlay-dev, where Prometheus scrapes) and on
    /// 127.0.0.1 (`kubectl port-forward`, curl on the node), not on the node's other
    /// addresses; `ADDRESS:PORT`: that address only (`0.0.0.0:9465`: every address);
    /// `none`: not at all. Headers, times and connections are bounded (8 KiB, 5 s to
    /// send a request, 15 s a connection, 64 at once). In a lab every node has its own
    /// network namespace, so each can use the same port.
    #[arg(long, default_value = "node:9465", value_name = "ADDR")]
    metrics_addr: String,
    /// Run as the WireGuard device process (podnetd starts it; not for people).
    #[arg(long, hide = true)]
    wireguard_device_process: bool,
    #[arg(long, default_value_t = 1)]
    vni: u32,
    /// VXLAN UDP port (8472 as Flannel; 4789 is the IANA port).
    #[arg(long, default_value_t = podnet_conventions::VXLAN_PORT)]
    vxlan_port: u16,
    #[arg(long, default_value = podnet_conventions::VXLAN_DEV)]
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
    #[arg(long, default_value = podnet_conventions::DEFAULT_API_SOCKET)]
    api_socket: PathBuf,
    /// Log format on standard error; the level comes from RUST_LOG (default info;
    /// e.g. RUST_LOG=warn, or RUST_LOG=debug,kube=info).
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
}

fn init_logs(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false);
    match format {
        LogFormat::Text => b.init(),
        LogFormat::Json => b.json().init(),
    }
}

pub fn main() {
    let mut a = Args::parse();
    init_logs(a.log_format);
    if a.wireguard_device_process {
        if let Err(e) = crate::wireguard::run_device(
            &a.wireguard_dev,
            &a.wireguard_socket,
            &a.wireguard_pid_file,
        ) {
            tracing::error!(node = a.node, "WireGuard device {}: {e}", a.wireguard_dev);
            std::process::exit(1);
        }
        std::process::exit(0);
    }
    if let Some(k) = &a.kubeconfig {
        if a.datastore != "kubernetes" {
            eprintln!(
                "podnetd: --kubeconfig goes with --datastore kubernetes (given: --datastore {})",
                a.datastore
            );
            std::process::exit(2);
        }
        a.datastore = format!("kubernetes:{}", k.display());
    }
    if let Some(dir) = &a.install_cni {
        match install(
            dir,
            a.install_conflist.as_deref(),
            a.install_conf_dir.as_deref(),
        ) {
            Ok(done) => {
                for d in done {
                    println!("installed {d}");
                }
                std::process::exit(0);
            }
            Err(e) => {
                eprintln!("podnetd: install failed: {e}");
                std::process::exit(1);
            }
        }
    }
    if a.check_ready {
        match crate::api::ready(&a.api_socket) {
            Ok(()) => std::process::exit(0),
            Err(why) => {
                eprintln!("podnetd[{}]: not ready: {why}", a.node);
                std::process::exit(1);
            }
        }
    }
    if a.check_access {
        if !podnet_kube::is_kubernetes_url(&a.datastore) {
            eprintln!("podnetd: --check-access checks the Kubernetes API calls: give --datastore kubernetes");
            std::process::exit(2);
        }
        match podnet_kube::check_access(&a.datastore, &a.node) {
            Ok(calls) => {
                let mut refused = 0;
                for (call, r) in &calls {
                    match r {
                        Ok(()) => println!("ok       {call}"),
                        Err(e) => {
                            refused += 1;
                            println!("refused  {call}: {e}");
                        }
                    }
                }
                if refused > 0 {
                    eprintln!("podnetd: {refused} of {} API calls refused: grant them in the ClusterRole (deploy/rbac.yaml)", calls.len());
                    std::process::exit(1);
                }
                std::process::exit(0);
            }
            Err(e) => {
                eprintln!("podnetd: cannot check access: {e}");
                std::process::exit(1);
            }
        }
    }
    let cluster_cidr = match a.cluster_cidr.parse() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("podnetd: invalid --cluster-cidr {:?}: {e}", a.cluster_cidr);
            std::process::exit(2);
        }
    };
    let service_cidr = match a.service_cidr.parse() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("podnetd: invalid --service-cidr {:?}: {e}", a.service_cidr);
            std::process::exit(2);
        }
    };
    let cfg = Config {
        node: a.node,
        datastore: a.datastore,
        underlay_dev: a.underlay_dev,
        cluster_cidr,
        service_cidr,
        node_prefix: a.node_prefix,
        backend: a.backend,
        vni: a.vni,
        port: a.vxlan_port,
        vxlan_dev: a.vxlan_dev,
        bridge: a.bridge,
        repair: !a.no_repair,
        lease_ttl: Duration::from_secs(a.lease_ttl.max(3)),
        node_file: a.node_file,
        api_socket: a.api_socket,
        interval: Duration::from_secs(1),
        policy_datapath: a.policy_datapath,
        bpf_dir: a.bpf_dir,
        wireguard: crate::wireguard::Paths {
            dev: a.wireguard_dev,
            port: a.wireguard_port,
            key_file: a.wireguard_key,
            socket: a.wireguard_socket,
            pid_file: a.wireguard_pid_file,
        },
        metrics_addr: (a.metrics_addr != "none").then_some(a.metrics_addr),
        datapath: a.datapath,
    };
    if cfg.fast_path() && cfg.backend == Backend::Wireguard {
        eprintln!("podnetd: --datapath ebpf is not available with --backend wireguard (its device is not an Ethernet device; not tested): use --datapath bridge");
        std::process::exit(2);
    }
    let node = cfg.node.clone();
    if let Err(e) = stop_on_signals(&node) {
        tracing::error!(node, "fatal: cannot wait for SIGTERM and SIGINT: {e}");
        std::process::exit(1);
    }
    let result = Agent::new(cfg).and_then(|agent| agent.run());
    if let Err(e) = result {
        tracing::error!(node, "fatal: {e}");
        std::process::exit(1);
    }
}

/// On SIGTERM (a rollout, `podnet lab down`) or SIGINT, exits 0 at once, as after
/// `kill -9`: nothing is withdrawn. Routes, neighbours, FDB entries, the bridge, the
/// overlay device, nftables tables and pinned eBPF programs stay, and so does the
/// WireGuard device process (a session of its own: the signal is not sent to it), so
/// pods keep their network and their verdicts; the next podnetd adopts all of it.
fn stop_on_signals(node: &str) -> std::io::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])?;
    let node = node.to_string();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Some(sig) = signals.forever().next() {
                let name = if sig == SIGTERM { "SIGTERM" } else { "SIGINT" };
                tracing::info!(
                    node,
                    "podnetd: {name}: stopping; the datapath stays as it is (pods keep their network and verdicts)"
                );
                // The log goes to standard error unbuffered; nothing else to flush.
                std::process::exit(0);
            }
        })?;
    Ok(())
}

/// Copies `src` to `dst` atomically (a temporary file beside it, then a rename), so a
/// runtime never runs a half-written plugin or reads a half-written conflist.
fn install_file(
    src: &std::path::Path,
    dst: &std::path::Path,
    mode: u32,
) -> Result<String, Failure> {
    use std::os::unix::fs::PermissionsExt;
    let tmp = dst.with_extension("podnet-tmp");
    std::fs::copy(src, &tmp)
        .and_then(|_| std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)))
        .and_then(|_| std::fs::rename(&tmp, dst))
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            format!("copy {} to {}: {e}", src.display(), dst.display())
        })?;
    Ok(dst.display().to_string())
}

fn install(
    bin_dir: &std::path::Path,
    conflist: Option<&std::path::Path>,
    conf_dir: Option<&std::path::Path>,
) -> Result<Vec<String>, Failure> {
    let me = std::env::current_exe().map_err(|e| format!("find this executable: {e}"))?;
    let plugin = me.with_file_name("podnet-cni");
    if !plugin.is_file() {
        return Err(format!("{} not found beside podnetd", plugin.display()).into());
    }
    let mut done = vec![install_file(&plugin, &bin_dir.join("podnet-cni"), 0o755)?];
    if let (Some(c), Some(d)) = (conflist, conf_dir) {
        let text = std::fs::read_to_string(c).map_err(|e| format!("read {}: {e}", c.display()))?;
        serde_json::from_str::<serde_json::Value>(&text)
            .map_err(|e| format!("{} is not a CNI conflist (JSON): {e}", c.display()))?;
        let name = c.file_name().ok_or("the conflist path names no file")?;
        done.push(install_file(c, &d.join(name), 0o644)?);
    }
    Ok(done)
}
