//! What one invocation works with: the network configuration, completed from the
//! node's agent (when one runs) and from defaults, and checked.

use podnet_cni_spec::net::{Ipv6Net, PodCidr};
use podnet_cni_spec::{code, CniError, Ipv4Net, NetConf};
use podnet_netlink::{link, route, Socket};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

pub use podnet_conventions::{DEFAULT_BRIDGE, DEFAULT_DATA_DIR, DEFAULT_NODE_FILE};

/// What the node's agent publishes for the plugin: the node file, a contract shared
/// with podnetd (which writes it).
pub use podnet_conventions::NodeFile as NodeInfo;
pub use podnet_conventions::PolicyPrograms;

/// The overlay guard every pod of this node carries (`bpf/from_pod.c`), from the node
/// file. No ports (no agent, or host-gw): nothing to guard.
trait OverlayGuardOf {
    fn overlay_guard(&self) -> Result<antispoof_guard::OverlayGuard, CniError>;
}

impl OverlayGuardOf for NodeInfo {
    fn overlay_guard(&self) -> Result<antispoof_guard::OverlayGuard, CniError> {
        let mut g = antispoof_guard::OverlayGuard::default();
        if self.overlay_ports.len() > g.ports.len() {
            return Err(invalid(
                format!(
                    "the node file names {} overlay ports",
                    self.overlay_ports.len()
                ),
                "podnetd writes at most two (VXLAN, WireGuard): restart podnetd on this node",
            ));
        }
        for (slot, p) in g.ports.iter_mut().zip(&self.overlay_ports) {
            *slot = *p;
        }
        let net = |what: &str, v: &Option<String>| -> Result<Option<Ipv4Net>, CniError> {
            v.as_deref()
                .map(|c| {
                    c.parse::<Ipv4Net>().map_err(|e| {
                        invalid(
                            format!("the node file's {what} {c:?} is not a CIDR"),
                            format!("{e}; podnetd rewrites it when it starts: restart podnetd on this node"),
                        )
                    })
                })
                .transpose()
        };
        g.cluster = net("clusterCIDR", &self.cluster_cidr)?.map(|c| (c.network(), c.prefix()));
        g.node_prefix = net("podCIDR", &self.pod_cidr)?.map_or(32, |c| c.prefix());
        for c in &self.cluster_cidrs {
            if c.contains(':') {
                let n: Ipv6Net = c.parse().map_err(|e| {
                    invalid(
                        format!("the node file's clusterCIDRs entry {c:?} is not a CIDR"),
                        format!(
                            "{e}; podnetd rewrites it when it starts: restart podnetd on this node"
                        ),
                    )
                })?;
                g.cluster6_prefix = n.prefix();
            }
        }
        Ok(g)
    }
}

use podnet_netlink::antispoof as antispoof_guard;

/// How addresses are assigned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ipam {
    /// podnet's own allocator over `subnet`; a dual-stack network's pods also get an
    /// address of `v6` (its IPv6 pod CIDR and gateway).
    Builtin {
        subnet: Ipv4Net,
        gateway: Ipv4Addr,
        v6: Option<(Ipv6Net, Ipv6Addr)>,
    },
    /// Another IPAM plugin (`host-local`, …) found in CNI_PATH.
    Delegate { plugin: String },
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub network: String,
    pub bridge: String,
    pub mtu: Option<u32>,
    pub data_dir: PathBuf,
    pub anti_spoofing: bool,
    pub ipam: Option<Ipam>,
    /// An explicit gateway from the config (used with delegated IPAM too).
    pub gateway: Option<Ipv4Addr>,
    /// How long to wait for another invocation's IPAM lock (`lockTimeoutMs`).
    pub lock_timeout: std::time::Duration,
    /// The runtime's `runtimeConfig` (capabilities such as `ips`).
    pub runtime_config: Option<serde_json::Value>,
    /// The node agent's eBPF policy programs, if it runs that datapath.
    pub policy_programs: Option<PolicyPrograms>,
    /// What anti-spoofing closes of the node's overlay ports.
    pub overlay_guard: antispoof_guard::OverlayGuard,
    /// A bpffs directory that holds the node's anti-spoofing program between pods
    /// (`bpfDir`, else the agent's node file).
    pub pin_dir: Option<PathBuf>,
    /// Whether the pod's interface gets the IPv6 link-local address the kernel would
    /// give it (`ipv6LinkLocal`, default false: see `add::configure_pod`).
    pub ipv6_link_local: bool,
}

fn invalid(msg: impl Into<String>, details: impl Into<String>) -> CniError {
    CniError::new(code::INVALID_CONFIG, msg, details)
}

impl Settings {
    /// Completes and checks the configuration for ADD, CHECK and STATUS (DEL and GC use
    /// [`Settings::for_cleanup`]).
    pub fn resolve(conf: &NetConf, raw: &serde_json::Value) -> Result<Settings, CniError> {
        let node_file = raw
            .get("nodeFile")
            .and_then(|v| v.as_str())
            .unwrap_or(DEFAULT_NODE_FILE);
        let node = node_info(node_file)?;
        let overlay_guard = node.overlay_guard()?;
        check_datapath(raw, node.datapath)?;
        let bridge = bridge_name(conf, node.bridge.clone())?;
        let mtu = pod_mtu(conf, node.mtu)?;
        let gateway = gateway(conf)?;
        let ipam = ipam(conf, raw, &node, node_file, gateway)?;
        Ok(Settings {
            network: conf.name.clone(),
            bridge,
            mtu,
            data_dir: conf
                .data_dir
                .clone()
                .unwrap_or_else(|| DEFAULT_DATA_DIR.into())
                .into(),
            anti_spoofing: conf.anti_spoofing.unwrap_or(true),
            ipam,
            gateway,
            lock_timeout: lock_timeout(raw)?,
            runtime_config: conf.runtime_config.clone(),
            policy_programs: node.policy_programs.clone(),
            overlay_guard,
            pin_dir: pin_dir(raw.get("bpfDir"), node.bpf_dir)?,
            ipv6_link_local: ipv6_link_local(raw)?,
        })
    }

    /// What DEL and GC need, read leniently: a pod must be removable even when the
    /// configuration or the agent's node file has since gone bad.
    pub fn for_cleanup(conf: &NetConf, raw: &serde_json::Value) -> Settings {
        Settings {
            network: conf.name.clone(),
            bridge: conf.bridge.clone().unwrap_or_else(|| DEFAULT_BRIDGE.into()),
            mtu: None,
            data_dir: conf
                .data_dir
                .clone()
                .unwrap_or_else(|| DEFAULT_DATA_DIR.into())
                .into(),
            anti_spoofing: conf.anti_spoofing.unwrap_or(true),
            ipam: conf.ipam_type().map(|t| Ipam::Delegate {
                plugin: t.to_string(),
            }),
            gateway: None,
            // Bounded, never refused: a pod must stay removable.
            lock_timeout: raw
                .get("lockTimeoutMs")
                .and_then(|v| v.as_u64())
                .map(std::time::Duration::from_millis)
                .unwrap_or(podnet_ipam::DEFAULT_LOCK_TIMEOUT)
                .clamp(
                    *podnet_ipam::LOCK_TIMEOUT_BOUNDS.start(),
                    *podnet_ipam::LOCK_TIMEOUT_BOUNDS.end(),
                ),
            runtime_config: conf.runtime_config.clone(),
            policy_programs: None,
            overlay_guard: Default::default(),
            pin_dir: None,
            ipv6_link_local: false,
        }
    }

    /// The built-in IPAM state of this network on this node.
    pub fn store(&self) -> Result<podnet_ipam::Store, CniError> {
        podnet_ipam::Store::open(&self.data_dir, &self.network)
            .map(|s| s.with_lock_timeout(self.lock_timeout))
            .map_err(crate::errors::ipam)
    }

    /// The pod MTU: configured, from the agent, or the MTU of the interface that holds
    /// the node's default route (1500 if there is none).
    pub fn pod_mtu(&self, host: &mut Socket) -> u32 {
        if let Some(m) = self.mtu {
            return m;
        }
        let oif = route::list(host)
            .ok()
            .and_then(|rs| rs.into_iter().find(|r| r.is_default()).and_then(|r| r.oif));
        oif.and_then(|i| link::get_by_index(host, i).ok().flatten())
            .map(|l| l.mtu)
            .unwrap_or(1500)
    }
}

/// Where to pin the anti-spoofing program: the config's `bpfDir`, else the node file's;
/// either must be an absolute path (whether it is on a bpffs, pinning says).
fn pin_dir(
    conf: Option<&serde_json::Value>,
    node: Option<PathBuf>,
) -> Result<Option<PathBuf>, CniError> {
    let d = match conf {
        None | Some(serde_json::Value::Null) => node,
        Some(serde_json::Value::String(d)) if d.starts_with('/') => return Ok(Some(d.into())),
        Some(v) => return Err(invalid(
            format!("bpfDir {v} is not an absolute path"),
            "give the directory of a mounted bpffs (e.g. /sys/fs/bpf/podnet), or leave bpfDir out",
        )),
    };
    match d {
        Some(p) if !p.is_absolute() => Err(invalid(
            format!("the node file's bpfDir {} is not an absolute path", p.display()),
            "podnetd writes its --bpf-dir there: restart podnetd on this node with an absolute --bpf-dir",
        )),
        d => Ok(d),
    }
}

/// The agent's node file; no file means no agent on this node (the config must then
/// carry the subnet).
fn node_info(node_file: &str) -> Result<NodeInfo, CniError> {
    let unreadable = |e: String| {
        CniError::new(
            code::IO,
            format!("cannot read the agent's node file {node_file}"),
            format!("{e}; podnetd rewrites it when it starts: restart podnetd on this node"),
        )
    };
    Ok(match read_node_file(node_file) {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| unreadable(e.to_string()))?,
        // No file: no agent on this node; the config must carry the subnet.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => NodeInfo::default(),
        Err(e) => return Err(unreadable(e.to_string())),
    })
}

/// The configuration may say which datapath it expects; the node decides, and a
/// disagreement is an error rather than a pod on a path nobody chose.
fn check_datapath(
    raw: &serde_json::Value,
    node_datapath: Option<podnet_conventions::Datapath>,
) -> Result<(), CniError> {
    if let Some(want) = raw.get("datapath") {
        let want = want.as_str().unwrap_or("");
        if !["bridge", "ebpf"].contains(&want) {
            return Err(invalid(
                format!("invalid datapath {want:?}"),
                "\"datapath\" is \"bridge\" or \"ebpf\" (the node's podnetd --datapath)",
            ));
        }
        let node_dp = node_datapath.unwrap_or_default().as_str();
        if want != node_dp {
            return Err(invalid(
                format!("the network configuration asks for the {want} datapath, but this node's podnetd runs the {node_dp} datapath"),
                "make them agree: set \"datapath\" in the configuration, or start podnetd with --datapath",
            ));
        }
    }
    Ok(())
}

/// The node bridge's name: configured, from the agent, or the default; checked.
fn bridge_name(conf: &NetConf, node_bridge: Option<String>) -> Result<String, CniError> {
    let bridge = conf
        .bridge
        .clone()
        .or(node_bridge)
        .unwrap_or_else(|| DEFAULT_BRIDGE.into());
    if bridge.is_empty()
        || bridge.len() > 15
        || bridge.contains('/')
        || bridge.contains(char::is_whitespace)
    {
        return Err(invalid(
            format!("invalid bridge name {bridge:?}"),
            "a bridge name is 1 to 15 characters without '/' or spaces",
        ));
    }
    Ok(bridge)
}

/// The pod MTU, configured or from the agent, if either gives one; checked.
fn pod_mtu(conf: &NetConf, node_mtu: Option<u32>) -> Result<Option<u32>, CniError> {
    let mtu = conf.mtu.or(node_mtu);
    if let Some(m) = mtu {
        if !(576..=65535).contains(&m) {
            return Err(invalid(
                format!("invalid mtu {m}"),
                "the pod MTU must be between 576 and 65535; for VXLAN use the underlay MTU minus 50",
            ));
        }
    }
    Ok(mtu)
}

/// The explicit gateway of the config, if any.
fn gateway(conf: &NetConf) -> Result<Option<Ipv4Addr>, CniError> {
    Ok(match &conf.gateway {
        Some(g) => Some(g.parse::<Ipv4Addr>().map_err(|_| {
            invalid(
                format!("invalid gateway {g:?}"),
                "write the gateway as an IPv4 address, e.g. \"10.244.0.1\"",
            )
        })?),
        None => None,
    })
}

/// How addresses are assigned: the delegated plugin the config names, or the built-in
/// allocator over the configured subnets or the agent's pod CIDRs. In order: the
/// config's `subnets` (one CIDR per family: dual-stack), its `subnet`, the node file's
/// `podCIDRs`, its `podCIDR`.
fn ipam(
    conf: &NetConf,
    raw: &serde_json::Value,
    node: &NodeInfo,
    node_file: &str,
    gateway: Option<Ipv4Addr>,
) -> Result<Option<Ipam>, CniError> {
    if let Some(t) = conf.ipam_type() {
        return Ok(Some(Ipam::Delegate {
            plugin: t.to_string(),
        }));
    }
    let config_fix =
        "write the node's pod CIDRs, e.g. \"subnets\": [\"10.244.0.0/24\", \"fd00:10:244::/64\"]";
    let node_fix = "podnetd publishes the Node's spec.podCIDRs: fix the cluster's pod CIDRs (kube-controller-manager --cluster-cidr) and restart podnetd";
    // Where the subnets come from, for the errors: the operator fixes one, the
    // cluster's pod CIDRs the other.
    let (list, from, fix): (Vec<String>, String, &str) = match raw.get("subnets") {
        Some(serde_json::Value::Null) | None => match (conf.subnet.clone(), node) {
            (Some(s), _) => (
                vec![s],
                "\"subnet\" in the network configuration".into(),
                "write the node's pod CIDR, e.g. \"10.244.0.0/24\"",
            ),
            (None, n) if !n.pod_cidrs.is_empty() => (
                n.pod_cidrs.clone(),
                format!("podCIDRs in the agent's node file {node_file}"),
                node_fix,
            ),
            (None, n) => match n.pod_cidr.clone() {
                Some(s) => (
                    vec![s],
                    format!("podCIDR in the agent's node file {node_file}"),
                    node_fix,
                ),
                None => {
                    return Err(invalid(
                        "no subnet for this node",
                        format!(
                            "the config has no \"subnet\" and no podnet agent has written {node_file}; \
                             add \"subnet\": \"10.244.0.0/24\" (the node's pod CIDR) or start podnetd on this node"
                        ),
                    ))
                }
            },
        },
        Some(v) => {
            if conf.subnet.is_some() {
                return Err(invalid(
                    "the config has both \"subnet\" and \"subnets\"",
                    "keep one: \"subnets\" lists the node's pod CIDRs, one per family",
                ));
            }
            let list = v
                .as_array()
                .and_then(|a| {
                    a.iter()
                        .map(|e| e.as_str().map(String::from))
                        .collect::<Option<Vec<_>>>()
                })
                .ok_or_else(|| {
                    let shown: String = v.to_string().chars().take(80).collect();
                    invalid(format!("invalid subnets {shown}"), format!("\"subnets\" is a list of CIDR strings; {config_fix}"))
                })?;
            (list, "\"subnets\" in the network configuration".into(), config_fix)
        }
    };
    let (mut v4, mut v6) = (None, None);
    for s in &list {
        let cidr: PodCidr = s.parse().map_err(|e| {
            invalid(
                format!("invalid subnet {s:?} ({from})"),
                format!("{e}; {fix}"),
            )
        })?;
        let twice = |family: &str| {
            invalid(
                format!("{from} lists two {family} subnets"),
                format!("a pod gets one address of each family: list one IPv4 and at most one IPv6 CIDR; {fix}"),
            )
        };
        match cidr {
            PodCidr::V4(n) if v4.is_none() => v4 = Some(n),
            PodCidr::V6(n) if v6.is_none() => v6 = Some(n),
            PodCidr::V4(_) => return Err(twice("IPv4")),
            PodCidr::V6(_) => return Err(twice("IPv6")),
        }
    }
    let Some(v4) = v4 else {
        return Err(invalid(
            format!("{from} has no IPv4 subnet"),
            format!("podnet pods are IPv4 or dual-stack (IPv6-only pods are not supported yet): list an IPv4 CIDR too; {fix}"),
        ));
    };
    // An agent that publishes no IPv6 pod CIDR neither routes IPv6 between nodes nor
    // judges it by policy (its datapath drops pods' IPv6): pods there would get an
    // IPv6 address that goes nowhere. Refused rather than half made.
    if v6.is_some() && node.pod_cidr.is_some() && node.pod_cidrs.is_empty() {
        return Err(invalid(
            format!("{from} gives pods IPv6, but podnetd on this node ({node_file}) publishes no IPv6 pod CIDR"),
            "this node's podnetd runs without an IPv6 range, so it would neither route nor judge the pods' IPv6: list only the IPv4 subnet, or start podnetd with a dual-stack --cluster-cidr (10.244.0.0/16,fd00:10:244::/56) and let the node file's podCIDRs give the subnets",
        ));
    }
    let v6 = v6
        .map(|n| {
            if let Some(why) = n.pod_cidr_problem() {
                return Err(invalid(
                    format!("subnet {n} ({from}) cannot be a node's IPv6 pod CIDR: {why}"),
                    format!("{fix}: a unique local (fd00::/8) or global range, /32 to /126"),
                ));
            }
            Ok((n, n.nth(1).expect("/126 or larger")))
        })
        .transpose()?;
    let Ipam::Builtin {
        subnet, gateway, ..
    } = builtin_ipam(&v4.to_string(), &from, fix, gateway)?
    else {
        unreachable!("builtin_ipam makes the built-in IPAM")
    };
    Ok(Some(Ipam::Builtin {
        subnet,
        gateway,
        v6,
    }))
}

/// The built-in allocator over subnet `s` (named by `from` in errors, which say `fix`):
/// a usable pod CIDR, with a gateway that is one of its host addresses.
fn builtin_ipam(
    s: &str,
    from: &str,
    fix: &str,
    gateway: Option<Ipv4Addr>,
) -> Result<Ipam, CniError> {
    let subnet: Ipv4Net = s.parse().map_err(|e| {
        invalid(
            format!("invalid subnet {s:?} ({from})"),
            format!("{e}; {fix}"),
        )
    })?;
    if subnet.prefix() > 30 {
        return Err(invalid(
            format!("subnet {subnet} ({from}) is too small"),
            "a pod CIDR needs room for the gateway and at least one pod: use /30 or larger (a /24 is usual)",
        ));
    }
    if let Some(why) = subnet.pod_cidr_problem() {
        return Err(invalid(
            format!("subnet {subnet} ({from}) cannot be a node's pod CIDR: {why}"),
            format!("{fix}: a private range (10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16 or 100.64.0.0/10), /8 to /30"),
        ));
    }
    let gw = gateway.unwrap_or_else(|| subnet.nth(1).expect("/30 or larger"));
    if !subnet.contains(gw) || gw == subnet.network() || gw == subnet.broadcast() {
        return Err(invalid(
            format!("gateway {gw} is not a host address of subnet {subnet}"),
            "leave \"gateway\" out to use the subnet's first address",
        ));
    }
    Ok(Ipam::Builtin {
        subnet,
        gateway: gw,
        v6: None,
    })
}

/// `lockTimeoutMs`, or the IPAM default: a whole number of milliseconds inside
/// [`podnet_ipam::LOCK_TIMEOUT_BOUNDS`], anything else refused (code 7).
fn lock_timeout(raw: &serde_json::Value) -> Result<std::time::Duration, CniError> {
    let bounds = podnet_ipam::LOCK_TIMEOUT_BOUNDS;
    match raw.get("lockTimeoutMs") {
        None | Some(serde_json::Value::Null) => Ok(podnet_ipam::DEFAULT_LOCK_TIMEOUT),
        Some(v) => v
            .as_u64()
            .map(std::time::Duration::from_millis)
            .filter(|d| bounds.contains(d))
            .ok_or_else(|| {
                let shown: String = v.to_string().chars().take(40).collect();
                invalid(
                    format!("invalid lockTimeoutMs {shown}"),
                    format!(
                        "lockTimeoutMs is a whole number of milliseconds from {} to {} (default {}): how long an ADD waits for another invocation's IPAM lock before answering 11, try again later",
                        bounds.start().as_millis(),
                        bounds.end().as_millis(),
                        podnet_ipam::DEFAULT_LOCK_TIMEOUT.as_millis()
                    ),
                )
            }),
    }
}

/// `ipv6LinkLocal`: true or false (default false).
fn ipv6_link_local(raw: &serde_json::Value) -> Result<bool, CniError> {
    match raw.get("ipv6LinkLocal") {
        None | Some(serde_json::Value::Null) => Ok(false),
        Some(serde_json::Value::Bool(b)) => Ok(*b),
        Some(v) => {
            let shown: String = v.to_string().chars().take(40).collect();
            Err(invalid(
                format!("invalid ipv6LinkLocal {shown}"),
                "ipv6LinkLocal is true or false (default false): whether pods keep the IPv6 link-local address the kernel would give their interface",
            ))
        }
    }
}

/// The most bytes read from the agent's node file (podnetd writes well under 1 KiB).
const MAX_NODE_FILE: u64 = 1 << 20;

/// Reads the agent's node file: a regular file of at most [`MAX_NODE_FILE`] bytes.
/// Opened without blocking, so a FIFO or device named by `nodeFile` is an error
/// rather than a plugin that hangs or reads forever.
fn read_node_file(path: &str) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    if !f.metadata()?.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    let mut b = Vec::new();
    f.take(MAX_NODE_FILE + 1).read_to_end(&mut b)?;
    if b.len() as u64 > MAX_NODE_FILE {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than {MAX_NODE_FILE} bytes"),
        ));
    }
    Ok(b)
}

pub use podnet_conventions::{host_mac, host_veth_name, pod_mac};

/// Settings of a minimal conf (subnet 10.9.0.0/24, no agent) with this
/// `runtimeConfig`, for the verbs' unit tests.
#[cfg(test)]
pub(crate) fn with_runtime_config(runtime_config: serde_json::Value) -> Settings {
    let mut v = serde_json::json!({"cniVersion":"1.1.0","name":"n","type":"podnet-cni",
        "subnet":"10.9.0.0/24","nodeFile":"/nonexistent/podnet-node.json"});
    v["runtimeConfig"] = runtime_config;
    let c = podnet_cni_spec::NetConf::parse(v.to_string().as_bytes()).unwrap();
    Settings::resolve(&c, &v).unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(j: &str) -> (NetConf, serde_json::Value) {
        let mut v: serde_json::Value = serde_json::from_str(j).unwrap();
        v["nodeFile"] = "/nonexistent/podnet-node.json".into();
        (NetConf::parse(j.as_bytes()).unwrap(), v)
    }

    #[test]
    fn defaults() {
        let (c, v) = conf(
            r#"{"cniVersion":"1.1.0","name":"n","type":"podnet-cni","subnet":"10.244.3.0/24"}"#,
        );
        let s = Settings::resolve(&c, &v).unwrap();
        assert_eq!(s.bridge, "podnet0");
        assert!(s.anti_spoofing);
        assert_eq!(
            s.ipam,
            Some(Ipam::Builtin {
                subnet: "10.244.3.0/24".parse().unwrap(),
                gateway: "10.244.3.1".parse().unwrap(),
                v6: None,
            })
        );
    }

    /// Dual-stack: `subnets` (or the node file's `podCIDRs`) lists one CIDR per
    /// family; each side gets its first address as gateway. Lists podnet cannot serve
    /// are refused with code 7, naming the list and the fix.
    #[test]
    fn dual_stack_subnets_come_from_the_config_or_the_node_file() {
        let want = Some(Ipam::Builtin {
            subnet: "10.244.3.0/24".parse().unwrap(),
            gateway: "10.244.3.1".parse().unwrap(),
            v6: Some((
                "fd00:10:244:3::/64".parse().unwrap(),
                "fd00:10:244:3::1".parse().unwrap(),
            )),
        });
        let (c, v) =
            conf(r#"{"name":"n","type":"t","subnets":["fd00:10:244:3::/64","10.244.3.0/24"]}"#);
        assert_eq!(Settings::resolve(&c, &v).unwrap().ipam, want);
        let nf = Scratch::new("dual");
        std::fs::write(
            &nf.0,
            r#"{"podCIDR":"10.244.9.0/24","podCIDRs":["10.244.3.0/24","fd00:10:244:3::/64"]}"#,
        )
        .unwrap();
        let (c, mut v) = conf(r#"{"name":"n","type":"t"}"#);
        v["nodeFile"] = nf.0.display().to_string().into();
        assert_eq!(Settings::resolve(&c, &v).unwrap().ipam, want);
        for (subnets, needle) in [
            (r#"["fd00::/64"]"#, "no IPv4 subnet"),
            (r#""10.0.0.0/24""#, "list of CIDR strings"),
            (r#"["10.0.0.0/24", 7]"#, "list of CIDR strings"),
            (r#"["10.0.0.0/24","10.1.0.0/24"]"#, "two IPv4 subnets"),
            (
                r#"["10.0.0.0/24","fd00::/64","fd01::/64"]"#,
                "two IPv6 subnets",
            ),
            (r#"["10.0.0.0/24","fe80::/64"]"#, "link-local"),
            (r#"["10.0.0.0/24","fd00::/127"]"#, "no room"),
            (r#"["10.0.0.0/24","fd00::5/64"]"#, "fd00::/64"),
            (r#"["10.0.0.0/24","fd00::/16"]"#, "wider"),
        ] {
            let (c, v) = conf(&format!(r#"{{"name":"n","type":"t","subnets":{subnets}}}"#));
            let e = Settings::resolve(&c, &v).unwrap_err();
            assert_eq!(e.code, 7, "{subnets}");
            assert!(e.to_string().contains(needle), "{subnets}: {e}");
        }
        let (c, v) =
            conf(r#"{"name":"n","type":"t","subnet":"10.0.0.0/24","subnets":["10.0.0.0/24"]}"#);
        let e = Settings::resolve(&c, &v).unwrap_err();
        assert!(e.to_string().contains("both"), "{e}");
        // A node whose podnetd publishes only an IPv4 pod CIDR: no IPv6 from the config.
        let nf4 = Scratch::new("dual-agent");
        std::fs::write(&nf4.0, r#"{"podCIDR":"10.244.9.0/24"}"#).unwrap();
        let (c, mut v) = conf(r#"{"name":"n","type":"t","subnets":["10.244.9.0/24","fd00::/64"]}"#);
        v["nodeFile"] = nf4.0.display().to_string().into();
        let e = Settings::resolve(&c, &v).unwrap_err();
        assert_eq!(e.code, 7);
        assert!(e.to_string().contains("publishes no IPv6 pod CIDR"), "{e}");
        // An IPv6 "subnet" alone: IPv6-only pods are refused, not half made.
        let (c, v) = conf(r#"{"name":"n","type":"t","subnet":"fd00::/64"}"#);
        let e = Settings::resolve(&c, &v).unwrap_err();
        assert!(e.to_string().contains("IPv6-only"), "{e}");
    }

    #[test]
    fn invalid_configs_say_why() {
        for (j, needle) in [
            (
                r#"{"name":"n","type":"t","subnet":"10.0.0.0/31"}"#,
                "too small",
            ),
            (
                r#"{"name":"n","type":"t","subnet":"10.0.0.5/24"}"#,
                "10.0.0.0/24",
            ),
            (
                r#"{"name":"n","type":"t","subnet":"10.0.0.0/24","gateway":"10.0.1.1"}"#,
                "not a host address",
            ),
            (
                r#"{"name":"n","type":"t","subnet":"10.0.0.0/24","mtu":100}"#,
                "mtu",
            ),
            (
                r#"{"name":"n","type":"t","subnet":"10.0.0.0/24","bridge":"a-very-long-bridge"}"#,
                "bridge",
            ),
            (r#"{"name":"n","type":"t"}"#, "no subnet"),
            // No agent here, so the node runs the bridge datapath.
            (
                r#"{"name":"n","type":"t","subnet":"10.0.0.0/24","datapath":"ebpf"}"#,
                "this node's podnetd runs the bridge datapath",
            ),
            (
                r#"{"name":"n","type":"t","subnet":"10.0.0.0/24","datapath":"fast"}"#,
                "invalid datapath",
            ),
        ] {
            let (c, v) = conf(j);
            let e = Settings::resolve(&c, &v).unwrap_err();
            assert_eq!(e.code, 7, "{j}");
            assert!(e.to_string().contains(needle), "{j}: {e}");
        }
        let (c, v) = conf(r#"{"name":"n","type":"t"}"#);
        assert!(Settings::for_cleanup(&c, &v).ipam.is_none());
    }

    /// A scratch file under the temp dir, removed on drop.
    struct Scratch(std::path::PathBuf);
    impl Scratch {
        fn new(tag: &str) -> Scratch {
            Scratch(
                std::env::temp_dir().join(format!("podnet-settings-{tag}-{}", std::process::id())),
            )
        }
    }
    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
            let _ = std::fs::remove_dir(&self.0);
        }
    }

    #[test]
    fn subnets_no_node_can_have_are_refused_from_config_and_node_file() {
        for bad in [
            "0.0.0.0/0",
            "10.0.0.0/7",
            "0.0.0.0/24",
            "127.0.0.0/24",
            "169.254.0.0/16",
            "169.0.0.0/8",
            "224.0.0.0/24",
            "240.0.0.0/24",
            "255.255.255.252/30",
        ] {
            let (c, v) = conf(&format!(r#"{{"name":"n","type":"t","subnet":"{bad}"}}"#));
            let e = Settings::resolve(&c, &v).unwrap_err();
            assert_eq!(e.code, 7, "{bad}");
            assert!(
                e.msg.contains(bad) && e.msg.contains("network configuration"),
                "{bad}: {e}"
            );
            // The same from the agent's node file: the message names the file.
            let nf = Scratch::new("nf");
            std::fs::write(&nf.0, format!(r#"{{"podCIDR":"{bad}"}}"#)).unwrap();
            let (c, mut v) = conf(r#"{"name":"n","type":"t"}"#);
            v["nodeFile"] = nf.0.display().to_string().into();
            let e = Settings::resolve(&c, &v).unwrap_err();
            assert_eq!(e.code, 7, "{bad}");
            assert!(e.msg.contains(&nf.0.display().to_string()), "{e}");
        }
        let (c, v) = conf(r#"{"name":"n","type":"t","subnet":"10.0.0.0/8"}"#);
        assert!(Settings::resolve(&c, &v).is_ok());
    }

    #[test]
    fn ipv6_link_local_is_off_unless_asked_and_must_be_a_boolean() {
        let base = r#""name":"n","type":"t","subnet":"10.0.0.0/24""#;
        for (extra, want) in [
            ("", false),
            (r#","ipv6LinkLocal":true"#, true),
            (r#","ipv6LinkLocal":false"#, false),
        ] {
            let (c, v) = conf(&format!("{{{base}{extra}}}"));
            assert_eq!(
                Settings::resolve(&c, &v).unwrap().ipv6_link_local,
                want,
                "{extra}"
            );
        }
        for bad in ["1", "\"yes\"", "[]"] {
            let (c, v) = conf(&format!("{{{base},\"ipv6LinkLocal\":{bad}}}"));
            let e = Settings::resolve(&c, &v).unwrap_err();
            assert_eq!(e.code, 7, "{bad}");
            assert!(e.msg.contains("ipv6LinkLocal"), "{bad}: {e}");
        }
    }

    #[test]
    fn lock_timeout_is_bounded() {
        for bad in [
            "0",
            "-5",
            "60001",
            "18446744073709551615",
            "2.5",
            "\"5000\"",
            "[]",
            "1e300",
        ] {
            let (c, v) = conf(&format!(
                r#"{{"name":"n","type":"t","subnet":"10.0.0.0/24","lockTimeoutMs":{bad}}}"#
            ));
            let e = Settings::resolve(&c, &v).unwrap_err();
            assert_eq!(e.code, 7, "{bad}");
            assert!(e.msg.contains("lockTimeoutMs"), "{bad}: {e}");
            assert!(e.details.contains("from 1 to 60000"), "{bad}: {e}");
            // DEL and GC still run, with a bounded wait.
            let t = Settings::for_cleanup(&c, &v).lock_timeout;
            assert!(
                podnet_ipam::LOCK_TIMEOUT_BOUNDS.contains(&t),
                "{bad}: {t:?}"
            );
        }
        for (ok, ms) in [("1", 1), ("60000", 60_000), ("null", 5000)] {
            let (c, v) = conf(&format!(
                r#"{{"name":"n","type":"t","subnet":"10.0.0.0/24","lockTimeoutMs":{ok}}}"#
            ));
            let t = Settings::resolve(&c, &v).unwrap().lock_timeout;
            assert_eq!(t, std::time::Duration::from_millis(ms));
        }
    }

    /// The node file is read bounded and never blocks: too large, a directory or a
    /// FIFO is code 5.
    #[test]
    fn node_file_is_read_bounded() {
        let big = Scratch::new("big");
        let mut body = vec![b' '; (1 << 20) + 1];
        body.extend_from_slice(br#"{"podCIDR":"10.9.0.0/24"}"#);
        std::fs::write(&big.0, body).unwrap();
        let fifo = Scratch::new("fifo");
        let p = std::ffi::CString::new(fifo.0.display().to_string()).unwrap();
        // SAFETY: mkfifo on a path we own.
        assert_eq!(unsafe { libc::mkfifo(p.as_ptr(), 0o600) }, 0);
        for path in [&big.0, &fifo.0, &std::env::temp_dir()] {
            let (c, mut v) = conf(r#"{"name":"n","type":"t"}"#);
            v["nodeFile"] = path.display().to_string().into();
            let e = Settings::resolve(&c, &v).unwrap_err();
            assert_eq!(e.code, 5, "{}: {e}", path.display());
        }
    }

    /// `bpfDir` from the config wins over the node file's; neither may be relative.
    #[test]
    fn the_pin_directory_is_absolute_from_either_source() {
        let node = Some(PathBuf::from("/sys/fs/bpf/podnet"));
        let conf = serde_json::json!("/run/podnet/bpf");
        assert_eq!(
            pin_dir(Some(&conf), node.clone()).unwrap(),
            Some("/run/podnet/bpf".into())
        );
        assert_eq!(pin_dir(None, node.clone()).unwrap(), node);
        assert_eq!(pin_dir(Some(&serde_json::Value::Null), None).unwrap(), None);
        for bad in [serde_json::json!("sys/fs/bpf"), serde_json::json!(7)] {
            assert_eq!(
                pin_dir(Some(&bad), node.clone()).unwrap_err().code,
                7,
                "{bad}"
            );
        }
        let e = pin_dir(None, Some("bpf".into())).unwrap_err();
        assert!(e.to_string().contains("node file"), "{e}");
    }

    #[test]
    fn names_are_stable_and_short() {
        let a = host_veth_name("abc", "eth0");
        assert_eq!(a, host_veth_name("abc", "eth0"));
        assert_ne!(a, host_veth_name("abc", "eth1"));
        assert_eq!(a.len(), 14);
        assert!(a.starts_with("pn"));
        assert_eq!(
            pod_mac("10.244.0.5".parse().unwrap()),
            [0x0a, 0x58, 10, 244, 0, 5]
        );
    }
}
