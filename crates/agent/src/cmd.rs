//! `podnetd`'s command line: its arguments and modes, and the daemon's start-up and
//! shutdown around [`crate::Agent`].

use crate::Failure;
use crate::{Agent, Backend, Config, Datapath, PolicyDatapath};
use clap::{Parser, Subcommand, ValueEnum};
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
                  podnetd withdraws nothing and opens nothing; pod traffic keeps flowing.\n\n\
                  Without a subcommand it runs the agent; the subcommands are its other jobs on a node.",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    mode: Option<Mode>,
    #[command(flatten)]
    run: Args,
}

/// podnetd's jobs besides running the agent.
#[derive(Subcommand)]
enum Mode {
    /// Install podnet-cni (the one beside this binary) into a directory, and a CNI
    /// network configuration with it, atomically; then exit. The DaemonSet's init
    /// container, with the host's /opt/cni/bin and /etc/cni/net.d mounted.
    InstallCni {
        /// Where podnet-cni goes (the host's /opt/cni/bin).
        #[arg(long, value_name = "DIR")]
        bin_dir: PathBuf,
        /// The CNI network configuration to install.
        #[arg(long, value_name = "FILE", requires = "conf_dir")]
        conflist: Option<PathBuf>,
        /// Where the conflist goes (the host's /etc/cni/net.d).
        #[arg(long, value_name = "DIR", requires = "conflist")]
        conf_dir: Option<PathBuf>,
    },
    /// Ask the agent on --api-socket whether the node is ready (routes synced,
    /// NetworkPolicy verdicts programmed, datastore healthy): exit 0 if so, 1 if not.
    /// The DaemonSet's readiness probe.
    CheckReady {
        #[arg(long, default_value = podnet_conventions::DEFAULT_API_SOCKET)]
        api_socket: PathBuf,
    },
    /// Make each Kubernetes API call the agent makes once, print each with its
    /// outcome, and exit (1 if any was refused): checks the RBAC role before a rollout.
    CheckAccess {
        /// The Node whose agent is checked (the agent may change only its own Node).
        #[arg(long, env = "NODE_NAME")]
        node: String,
        /// The kubeconfig to use (default: the pod's service account, else
        /// $KUBECONFIG or ~/.kube/config).
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
    },
    /// (internal) The WireGuard device process, which podnetd starts in a session of
    /// its own so that it outlives podnetd.
    #[command(hide = true)]
    WireguardDevice {
        #[arg(long)]
        node: String,
        #[arg(long)]
        dev: String,
        #[arg(long)]
        socket: PathBuf,
        #[arg(long)]
        pid_file: PathBuf,
    },
}

/// The agent's flags (podnetd without a subcommand).
#[derive(clap::Args)]
struct Args {
    /// This node's name in the datastore (on Kubernetes: the Node's name; the
    /// DaemonSet passes it from the downward API).
    #[arg(long, env = "NODE_NAME")]
    node: Option<String>,
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
    /// The node's physical interface: VXLAN runs over it, host-gw routes through it.
    #[arg(long, default_value = "eth0")]
    underlay_dev: String,
    /// The range node pod CIDRs are cut from; a dual-stack cluster lists an IPv6 range
    /// after the IPv4 one (`10.244.0.0/16,fd00:10:244::/56`, as kube-controller-manager's
    /// --cluster-cidr). Every backend and datapath carries both families; host-gw
    /// needs a global IPv6 address on each node's --underlay-dev (its IPv6 next hop).
    #[arg(long, default_value = "10.244.0.0/16")]
    cluster_cidr: String,
    /// The cluster's Service range (kube-apiserver's --service-cluster-ip-range): a
    /// peer whose underlay address lies in it is left out, and with the eBPF policy
    /// datapath packets to it are judged after kube-proxy's translation. A dual-stack
    /// cluster lists its IPv6 range after the IPv4 one (`10.96.0.0/12,fd00:10:96::/112`).
    #[arg(long, default_value = "10.96.0.0/12")]
    service_cidr: String,
    /// Prefix length of each node's pod CIDR.
    #[arg(long, default_value_t = 24)]
    node_prefix: u8,
    /// Dual-stack: prefix length of each node's IPv6 pod CIDR.
    #[arg(long, default_value_t = 64)]
    node_prefix6: u8,
    /// How pod traffic crosses between nodes.
    #[arg(long, value_enum, default_value = "vxlan")]
    backend: Backend,
    /// Which of the underlay's families the overlay tunnel (VXLAN, WireGuard) runs
    /// over: ipv6 takes the first global IPv6 address of --underlay-dev as the tunnel's
    /// end (every node of the cluster runs the same; pods of either family cross it).
    #[arg(long, value_enum, default_value = "ipv4")]
    underlay_family: podnet_conventions::UnderlayFamily,
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
    /// How pod packets cross the node [default: ebpf, the fast path; bridge with
    /// --backend wireguard or --policy-datapath nftables|none].
    #[arg(long, value_enum)]
    datapath: Option<Datapath>,
    /// Masquerade pod traffic that leaves the cluster: a packet from a pod to an
    /// address outside the cluster CIDR, link-local and --non-masquerade-cidr leaves
    /// with the node's address (table ip podnet_nat), so replies come back without the
    /// network routing pod CIDRs. Pod → pod is never NATed. `--masquerade=false` for
    /// an underlay that routes pod CIDRs itself.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "true|false")]
    masquerade: bool,
    /// Masquerade pods' IPv6 traffic that leaves the cluster (table ip6 podnet_nat), on a
    /// dual-stack cluster. Default: as --masquerade when the cluster's IPv6 range is a
    /// unique local one (fc00::/7, routed nowhere outside), off when it is global (the
    /// network routes it to the cluster, so pods keep their own addresses).
    #[arg(long = "masquerade-ipv6", action = clap::ArgAction::Set, value_name = "true|false")]
    masquerade_ipv6: Option<bool>,
    /// Destinations pods reach with their own address, not masqueraded (ip-masq-agent's
    /// nonMasqueradeCIDRs), IPv4 or IPv6: repeat the flag or separate with commas.
    #[arg(
        long = "non-masquerade-cidr",
        value_delimiter = ',',
        value_name = "CIDR"
    )]
    non_masquerade_cidr: Vec<String>,
    /// Serve Prometheus metrics at http://ADDR/metrics. `node:PORT`: on the node's
    /// underlay address (the one on --underlay-dev, where Prometheus scrapes) and on
    /// 127.0.0.1 (`kubectl port-forward`, curl on the node), not on the node's other
    /// addresses; `ADDRESS:PORT`: that address only (`0.0.0.0:9465`: every address);
    /// `none`: not at all. Headers, times and connections are bounded (8 KiB, 5 s to
    /// send a request, 15 s a connection, 64 at once). In a lab every node has its own
    /// network namespace, so each can use the same port.
    #[arg(long, default_value = "node:9465", value_name = "ADDR")]
    metrics_addr: String,
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
    /// Which datapath enforces NetworkPolicy for this node's pods [default: ebpf;
    /// nftables with --datapath bridge or --backend wireguard].
    #[arg(long, value_enum)]
    policy_datapath: Option<PolicyDatapath>,
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
    let cli = Cli::parse();
    init_logs(cli.run.log_format);
    match cli.mode {
        None => run_agent(cli.run),
        Some(Mode::InstallCni {
            bin_dir,
            conflist,
            conf_dir,
        }) => match install(&bin_dir, conflist.as_deref(), conf_dir.as_deref()) {
            Ok(done) => done.iter().for_each(|d| println!("installed {d}")),
            Err(e) => fail(1, &format!("install failed: {e}")),
        },
        Some(Mode::CheckReady { api_socket }) => {
            if let Err(why) = crate::api::ready(&api_socket) {
                fail(1, &format!("not ready: {why}"));
            }
        }
        Some(Mode::CheckAccess { node, kubeconfig }) => check_access(&node, kubeconfig),
        Some(Mode::WireguardDevice {
            node,
            dev,
            socket,
            pid_file,
        }) => {
            if let Err(e) = crate::wireguard::run_device(&dev, &socket, &pid_file) {
                tracing::error!(node, "WireGuard device {dev}: {e}");
                std::process::exit(1);
            }
        }
    }
}

/// Says why on standard error and exits with `code`.
fn fail(code: i32, why: &str) -> ! {
    eprintln!("podnetd: {why}");
    std::process::exit(code)
}

/// Makes each of the agent's Kubernetes API calls once and prints its outcome; exits
/// 1 if any was refused.
fn check_access(node: &str, kubeconfig: Option<PathBuf>) {
    let url = match kubeconfig {
        Some(k) => format!("kubernetes:{}", k.display()),
        None => "kubernetes".to_string(),
    };
    let calls = match podnet_kube::check_access(&url, node) {
        Ok(calls) => calls,
        Err(e) => fail(1, &format!("cannot check access: {e}")),
    };
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
        fail(1, &format!("{refused} of {} API calls refused: grant them in the ClusterRole (deploy/rbac.yaml)", calls.len()));
    }
}

/// The agent's configuration from its flags, or the flag that is wrong.
fn config(mut a: Args) -> Result<Config, Failure> {
    if let Some(k) = &a.kubeconfig {
        if a.datastore != "kubernetes" {
            return Err(Failure::Refused(format!(
                "--kubeconfig goes with --datastore kubernetes (given: --datastore {})",
                a.datastore
            )));
        }
        a.datastore = format!("kubernetes:{}", k.display());
    }
    let cidr = |flag: &str, v: &str| {
        v.parse().map_err(|e: podnet_cni_spec::net::CidrError| {
            Failure::op(format!("invalid --{flag} {v:?}"), e.0)
        })
    };
    podnet_conventions::underlay_family_fits(a.underlay_family, a.backend)?;
    let (datapath, policy_datapath, why) =
        podnet_conventions::choose_datapaths(a.datapath, a.policy_datapath, a.backend)?;
    if let Some(why) = why {
        tracing::info!("{why}");
    }
    let (cluster4, cluster6) = match a.cluster_cidr.split_once(',') {
        None => (a.cluster_cidr.as_str(), None),
        Some((v4, v6)) => (v4, Some(v6)),
    };
    let cluster_cidr6 = match cluster6 {
        None => None,
        Some(v6) => {
            let range: podnet_cni_spec::net::Ipv6Net = v6.trim().parse().map_err(
                |e: podnet_cni_spec::net::CidrError| {
                    Failure::op(
                        format!("invalid IPv6 range {v6:?} in --cluster-cidr"),
                        format!("{}; a dual-stack --cluster-cidr is IPv4,IPv6 (10.244.0.0/16,fd00:10:244::/56)", e.0),
                    )
                },
            )?;
            Some((range, a.node_prefix6))
        }
    };
    let (service4, service6) = match a.service_cidr.split_once(',') {
        None => (a.service_cidr.as_str(), None),
        Some((v4, v6)) => (v4, Some(v6)),
    };
    let service_cidr6 = match service6 {
        None => None,
        Some(v6) => Some(v6.trim().parse().map_err(|e: podnet_cni_spec::net::CidrError| {
            Failure::op(
                format!("invalid IPv6 range {v6:?} in --service-cidr"),
                format!("{}; a dual-stack --service-cidr is IPv4,IPv6 (10.96.0.0/12,fd00:10:96::/112), as kube-apiserver's --service-cluster-ip-range", e.0),
            )
        })?),
    };
    let cfg = Config {
        cluster_cidr: cidr("cluster-cidr", cluster4)?,
        cluster_cidr6,
        service_cidr: cidr("service-cidr", service4)?,
        service_cidr6,
        node: a.node.ok_or(
            "give this node's name with --node (or NODE_NAME): the agent registers under it",
        )?,
        datastore: a.datastore,
        underlay_dev: a.underlay_dev,
        node_prefix: a.node_prefix,
        backend: a.backend,
        underlay_family: a.underlay_family,
        vni: a.vni,
        port: a.vxlan_port,
        vxlan_dev: a.vxlan_dev,
        bridge: a.bridge,
        repair: !a.no_repair,
        lease_ttl: Duration::from_secs(a.lease_ttl.max(3)),
        node_file: a.node_file,
        api_socket: a.api_socket,
        interval: Duration::from_secs(1),
        policy_datapath,
        bpf_dir: a.bpf_dir,
        wireguard: crate::wireguard::Paths {
            dev: a.wireguard_dev,
            port: a.wireguard_port,
            key_file: a.wireguard_key,
            socket: a.wireguard_socket,
            pid_file: a.wireguard_pid_file,
        },
        metrics_addr: (a.metrics_addr != "none").then_some(a.metrics_addr),
        datapath,
        masquerade: a.masquerade,
        masquerade6: match (a.masquerade_ipv6, &cluster_cidr6) {
            (_, None) => false,
            (Some(on), Some(_)) => on,
            (None, Some((c, _))) => a.masquerade && crate::masquerade::default_ipv6(c),
        },
        non_masquerade: a
            .non_masquerade_cidr
            .iter()
            .map(|c| {
                podnet_policy::net::parse_cidr(c)
                    .map_err(|e| Failure::op(format!("invalid --non-masquerade-cidr {c:?}"), e))
            })
            .collect::<Result<_, _>>()?,
    };
    Ok(cfg)
}

/// Runs the agent until a fatal error (exit 1) or SIGTERM/SIGINT (exit 0).
fn run_agent(a: Args) {
    let cfg = config(a).unwrap_or_else(|why| fail(2, &why.to_string()));
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

/// The plugin types a conflist chains besides podnet-cni, in order.
fn chained(list: &serde_json::Value) -> Vec<String> {
    list["plugins"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .filter_map(|p| p["type"].as_str())
                // A plain file name only: a type is looked up in the plugin directory.
                .filter(|t| {
                    *t != "podnet-cni"
                        && !t.is_empty()
                        && !t.starts_with('.')
                        && t.chars()
                            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                })
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

fn install(
    bin_dir: &std::path::Path,
    conflist: Option<&std::path::Path>,
    conf_dir: Option<&std::path::Path>,
) -> Result<Vec<String>, Failure> {
    let me = std::env::current_exe().map_err(|e| format!("find this executable: {e}"))?;
    install_from(&me, bin_dir, conflist, conf_dir)
}

/// [`install`] from the image whose podnetd is `me`.
fn install_from(
    me: &std::path::Path,
    bin_dir: &std::path::Path,
    conflist: Option<&std::path::Path>,
    conf_dir: Option<&std::path::Path>,
) -> Result<Vec<String>, Failure> {
    let plugin = me.with_file_name("podnet-cni");
    if !plugin.is_file() {
        return Err(format!("{} not found beside podnetd", plugin.display()).into());
    }
    let mut done = vec![install_file(&plugin, &bin_dir.join("podnet-cni"), 0o755)?];
    if let (Some(c), Some(d)) = (conflist, conf_dir) {
        let text = std::fs::read_to_string(c).map_err(|e| format!("read {}: {e}", c.display()))?;
        let list = serde_json::from_str::<serde_json::Value>(&text)
            .map_err(|e| format!("{} is not a CNI conflist (JSON): {e}", c.display()))?;
        // The plugins the list chains after podnet-cni (portmap, bandwidth) come from
        // the image, beside podnetd, before the list that names them: a runtime never
        // reads a list whose plugins are missing.
        for t in chained(&list) {
            let src = me.with_file_name(&t);
            let dst = bin_dir.join(&t);
            if src.is_file() {
                done.push(install_file(&src, &dst, 0o755)?);
            } else if !dst.is_file() {
                return Err(format!(
                    "{} chains the CNI plugin {t}, which is neither in this image ({}) nor in {}: build the image with it (deploy/Containerfile) or take it out of the conflist",
                    c.display(),
                    src.display(),
                    bin_dir.display()
                )
                .into());
            }
        }
        let name = c.file_name().ok_or("the conflist path names no file")?;
        done.push(install_file(c, &d.join(name), 0o644)?);
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_cni_takes_chained_plugins_from_the_image_before_the_list() {
        let root = std::env::temp_dir().join(format!("podnet-install-{}", std::process::id()));
        let (image, bin, conf) = (root.join("image"), root.join("bin"), root.join("conf"));
        for d in [&image, &bin, &conf] {
            std::fs::create_dir_all(d).unwrap();
        }
        for f in ["podnetd", "podnet-cni", "portmap"] {
            std::fs::write(image.join(f), f).unwrap();
        }
        let list = |types: &[&str]| {
            let p = root.join("10-podnet.conflist");
            let plugins: Vec<serde_json::Value> = types
                .iter()
                .map(|t| serde_json::json!({"type": t}))
                .collect();
            std::fs::write(&p, serde_json::json!({"plugins": plugins}).to_string()).unwrap();
            p
        };
        let me = image.join("podnetd");
        // portmap comes from the image, the list last.
        let l = list(&["podnet-cni", "portmap"]);
        let done = install_from(&me, &bin, Some(&l), Some(&conf)).unwrap();
        assert!(
            done[1].ends_with("/bin/portmap") && done[2].ends_with("10-podnet.conflist"),
            "{done:?}"
        );
        assert_eq!(
            std::fs::read_to_string(bin.join("portmap")).unwrap(),
            "portmap"
        );
        // A plugin neither in the image nor on the node: refused, the list not written.
        std::fs::remove_file(conf.join("10-podnet.conflist")).unwrap();
        let l = list(&["podnet-cni", "bandwidth"]);
        let e = install_from(&me, &bin, Some(&l), Some(&conf))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("bandwidth") && e.contains("deploy/Containerfile"),
            "{e}"
        );
        assert!(!conf.join("10-podnet.conflist").exists());
        // A type that is not a plain file name is never looked up outside the plugin
        // directory (it is left to the runtime, which refuses it).
        let l = list(&["podnet-cni", "../../podnetd"]);
        install_from(&me, &bin, Some(&l), Some(&conf)).unwrap();
        assert!(!root.join("podnetd").exists());
        std::fs::remove_dir_all(&root).unwrap();
    }
}
