//! ADD: give a pod its network.
//!
//! Order matters and is the point of this module:
//! 1. address (built-in IPAM or the delegated plugin; on a dual-stack network one of
//!    each family);
//! 2. the node bridge, with the gateway address of each family (created if missing);
//! 3. the veth pair in one request, both ends down, the pod end created directly inside
//!    the pod's namespace as `CNI_IFNAME` with its final MAC and MTU, the host end as a
//!    port of the bridge — the bridge keeps a port whose link is down disabled, so it
//!    forwards nothing to or from it — then the host end's clsact qdisc;
//! 4. inside the pod: link up (without an IPv6 link-local address: `configure_pod`),
//!    addresses, routes (one pipelined netlink write); with the host end down nothing
//!    flows;
//! 5. the anti-spoofing entry and filter on the host end (and the eBPF policy filters);
//! 6. only then the host end comes up (with its owner alias and hairpin mode, one
//!    request).
//!
//! Every netlink request that changes something waits for the kernel's one link lock
//! (rtnl), which ten concurrent ADDs take turns on: hence as few requests as the
//! kernel allows (it cannot create the pod end up, nor set an alias at creation), and
//! none that makes the lock's holder wait for RCU (see `link::create_veth`'s queues and
//! the clsact qdisc made before the pod side, its filters after).
//!
//! A pod is never reachable before step 5 has succeeded. Any failure undoes every step taken so far,
//! in reverse, and says in the error what the rollback did.

use crate::errors;
use crate::settings::{host_mac, host_veth_name, pod_mac, Ipam, Settings};
use crate::timing::mark;
use crate::{antispoof, delegate, Invocation};
use podnet_cni_spec::result::{Interface, IpConfig, Route};
use podnet_cni_spec::{code, CniError, CniResult, Ipv4Net};
use podnet_ipam::{Owner, Pool, Pool6, Store};
use podnet_netlink::link::{self, LinkChange, Target, VethSpec};
use podnet_netlink::socket::Request;
use podnet_netlink::{addr, fmt_mac, route, Netns, Socket};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Route protocol number podnet marks its routes with (`ip route` shows `proto 0x50`
/// as a number; /etc/iproute2/rt_protos can name it).
pub use podnet_conventions::RTPROT_PODNET;

/// Steps to undo, most recent last.
enum Undo {
    ReleaseAddress(Store, Owner),
    DelegateDel(String),
    DeleteLink(String),
    /// The node's map, and the key this ADD wrote in it.
    ForgetEntry(std::os::fd::OwnedFd, u32),
}

pub fn run(inv: &Invocation) -> Result<CniResult, CniError> {
    let s = Settings::resolve(&inv.conf, &inv.raw)?;
    // Not first in a chain: what the plugins before made is passed on, ours after it.
    // Read (and refused if malformed) before anything is opened or made.
    let prev = match &inv.conf.prev_result {
        Some(p) => Some(CniResult::decode(p, "prevResult")?),
        None => None,
    };
    let pod_ns = crate::pod_netns(&inv.env.netns)?;
    let mut host =
        Socket::route().map_err(|e| errors::netlink(e, "podnet-cni must run as root"))?;
    let mut undo = Vec::new();
    match add(inv, &s, &pod_ns, &mut host, &mut undo) {
        Ok(r) => Ok(match prev {
            Some(p) => merge(p, r),
            None => r,
        }),
        Err(e) => {
            let notes = rollback(inv, &mut host, undo);
            Err(errors::with_notes(e, &notes))
        }
    }
}

/// `prev` followed by `ours`, interface indexes of our IPs shifted past prev's.
fn merge(mut prev: CniResult, ours: CniResult) -> CniResult {
    let shift = prev.interfaces.len();
    prev.interfaces.extend(ours.interfaces);
    prev.ips.extend(ours.ips.into_iter().map(|mut ip| {
        ip.interface = ip.interface.map(|i| i + shift);
        ip
    }));
    prev.routes.extend(ours.routes);
    prev.dns = prev.dns.or(ours.dns);
    prev
}

/// The addresses the runtime asks for through the `ips` capability
/// (`runtimeConfig.ips`: `["10.244.0.7"]` or `["10.244.0.7/24", "fd00::7/64"]`), if
/// any. A podnet pod has one address of each family, so at most one entry of each may
/// be given (an IPv6 one is only used on a dual-stack network).
fn requested_ip(s: &Settings) -> Result<(Option<Ipv4Addr>, Option<Ipv6Addr>), CniError> {
    let Some(ips) = s.runtime_config.as_ref().and_then(|r| r.get("ips")) else {
        return Ok((None, None));
    };
    let bad = |why: String| {
        CniError::new(
            podnet_cni_spec::error::code::INVALID_CONFIG,
            format!("invalid runtimeConfig.ips {ips}"),
            why,
        )
    };
    let list = ips
        .as_array()
        .ok_or_else(|| bad("it must be a list of addresses, e.g. [\"10.244.0.7/24\"]".into()))?;
    let (mut v4, mut v6) = (Vec::new(), Vec::new());
    for e in list {
        let text = e
            .as_str()
            .ok_or_else(|| bad(format!("{e} is not a string")))?;
        let parsed = if text.contains('/') {
            text.parse::<podnet_cni_spec::net::IpNet>()
                .map(|n| n.addr)
                .map_err(|e| e.to_string())
        } else {
            text.parse::<std::net::IpAddr>()
                .map_err(|_| format!("{text:?} is not an IP address"))
        };
        match parsed {
            Ok(std::net::IpAddr::V4(a)) => v4.push(a),
            Ok(std::net::IpAddr::V6(a)) => v6.push(a),
            Err(why) => return Err(bad(why)),
        }
    }
    if v4.len() > 1 || v6.len() > 1 {
        return Err(bad(
            "a podnet pod has one address of each family: ask for at most one IPv4 and one IPv6 address".into(),
        ));
    }
    Ok((v4.first().copied(), v6.first().copied()))
}

/// The netmask of an IPv4 prefix length (0 to 32).
fn prefix_mask(prefix: u8) -> u32 {
    u32::MAX
        .checked_shl(32 - u32::from(prefix.min(32)))
        .unwrap_or(0)
}

/// The pod's address as IPAM gave it.
struct Assigned {
    ip: Ipv4Addr,
    prefix: u8,
    gateway: Ipv4Addr,
    /// A dual-stack pod's IPv6 address.
    v6: Option<Assigned6>,
    routes: Vec<Route>,
    dns: Option<serde_json::Value>,
}

/// A dual-stack pod's IPv6 address, its prefix length and gateway.
#[derive(Clone, Copy)]
struct Assigned6 {
    ip: Ipv6Addr,
    prefix: u8,
    gateway: Ipv6Addr,
}

fn assign(inv: &Invocation, s: &Settings, undo: &mut Vec<Undo>) -> Result<Assigned, CniError> {
    match s.ipam.as_ref().expect("resolve always sets ipam") {
        Ipam::Builtin {
            subnet,
            gateway,
            v6,
        } => {
            let pool = Pool::new(*subnet, *gateway).map_err(errors::ipam)?;
            let pool6 = v6
                .map(|(net, gw)| Pool6::new(net, gw))
                .transpose()
                .map_err(errors::ipam)?;
            let store = s.store()?;
            let owner = Owner::new(&inv.env.container_id, &inv.env.ifname);
            // Both families in one change: both or neither.
            let held = store
                .allocate_all(&pool, pool6.as_ref(), &owner, requested_ip(s)?)
                .map_err(errors::ipam)?;
            undo.push(Undo::ReleaseAddress(store, owner));
            let v6 = pool6.zip(held.v6).map(|(p6, ip)| Assigned6 {
                ip,
                prefix: p6.subnet.prefix(),
                gateway: p6.gateway,
            });
            Ok(Assigned {
                ip: held.v4.expect("allocate_all gives an IPv4 address"),
                prefix: subnet.prefix(),
                gateway: *gateway,
                v6,
                routes: vec![],
                dns: None,
            })
        }
        Ipam::Delegate { plugin } => {
            let out = delegate::exec(&inv.env, plugin, "ADD", &inv.stdin)?;
            undo.push(Undo::DelegateDel(plugin.clone()));
            let res = CniResult::decode(
                &out.unwrap_or_default(),
                &format!("the result of IPAM plugin {plugin}"),
            )?;
            let ipc = res
                .ips
                .iter()
                .find(|i| i.address.addr.is_ipv4())
                .ok_or_else(|| {
                    CniError::new(
                        code::INVALID_CONFIG,
                        format!("IPAM plugin {plugin} returned no IPv4 address"),
                        "podnet pods are IPv4; configure an IPv4 range in the ipam section",
                    )
                })?;
            let IpAddr::V4(ip) = ipc.address.addr else {
                unreachable!()
            };
            // The same rules as for our own subnet: the prefix becomes a connected
            // route on the node's bridge (a /0 would take over the node's routing),
            // and no pod may sit in loopback, link-local or multicast space.
            let net = Ipv4Net::new(
                Ipv4Addr::from(u32::from(ip) & prefix_mask(ipc.address.prefix)),
                ipc.address.prefix,
            );
            if let Some(why) = net.and_then(|n| n.pod_cidr_problem()) {
                return Err(CniError::new(
                    code::INVALID_CONFIG,
                    format!(
                        "IPAM plugin {plugin} returned {}, which no pod can have: {why}",
                        ipc.address
                    ),
                    "configure the ipam range with the node's pod CIDR, a private range of /8 to /30",
                ));
            }
            let gateway = match (ipc.gateway, s.gateway) {
                (Some(IpAddr::V4(g)), _) => g,
                (_, Some(g)) => g,
                _ => {
                    return Err(CniError::new(
                        code::INVALID_CONFIG,
                        format!("no gateway for {ip}: IPAM plugin {plugin} returned none"),
                        "set \"gateway\" in the ipam range or in the podnet config",
                    ))
                }
            };
            Ok(Assigned {
                ip,
                prefix: ipc.address.prefix,
                gateway,
                // A delegated plugin's IPv6 address is not used (yet): its pods are
                // IPv4 pods.
                v6: None,
                routes: res
                    .routes
                    .into_iter()
                    .filter(|r| r.dst.addr.is_ipv4())
                    .collect(),
                dns: res.dns,
            })
        }
    }
}

/// Makes sure the node bridge exists, is up and holds the gateway address.
pub fn ensure_bridge(
    host: &mut Socket,
    name: &str,
    gateway: Ipv4Addr,
    prefix: u8,
    mtu: u32,
) -> Result<link::LinkInfo, CniError> {
    link::ensure_bridge(host, name, pod_mac(gateway), mtu, gateway, prefix).map_err(|e| match e {
        podnet_netlink::Error::WrongKind { .. } => CniError::new(
            code::INVALID_CONFIG,
            e.to_string(),
            "set \"bridge\" to another name or remove that link",
        ),
        e => errors::netlink(e, "check the node's links with `ip -d link show`"),
    })
}

/// A dual-stack network's IPv6 gateway on the node bridge (read first: adding takes
/// the kernel's link lock even when the address is there).
fn ensure_gateway6(host: &mut Socket, br: &link::LinkInfo, v6: &Assigned6) -> Result<(), CniError> {
    let nl = |e| {
        errors::netlink(e, "check the bridge with `ip -6 addr show dev <bridge>`; IPv6 must be enabled on the node (net.ipv6.conf.<bridge>.disable_ipv6=0)")
    };
    let has = addr::list6(host, Some(br.index))
        .map_err(nl)?
        .iter()
        .any(|(_, a, p)| *a == v6.gateway && *p == v6.prefix);
    if !has {
        for r in host.ack_all(vec![addr::add6_request(br.index, v6.gateway, v6.prefix)]) {
            match r {
                Err(e) if !e.is_exists() => return Err(nl(e)),
                _ => {}
            }
        }
    }
    Ok(())
}

fn add(
    inv: &Invocation,
    s: &Settings,
    pod_ns: &Netns,
    host: &mut Socket,
    undo: &mut Vec<Undo>,
) -> Result<CniResult, CniError> {
    let ifname = inv.env.ifname.as_str();
    let host_name = host_veth_name(&inv.env.container_id, ifname);
    // What can be refused without touching anything comes first: the owner alias, and
    // the node's datapath (a node without eBPF refuses every ADD, and should do so
    // before an address is taken and a veth made only to be undone).
    let alias = owner_alias_of(inv, s)?;
    let shapes = crate::bandwidth::shapes(s)?;
    let dp = node_datapath(s)?;
    mark("anti-spoofing program ready");
    let policy = policy_programs(s)?;
    mark("checked");
    let a = assign(inv, s, undo)?;
    mark("address assigned");
    let mtu = s.pod_mtu(host);
    let br = ensure_bridge(host, &s.bridge, a.gateway, a.prefix, mtu)?;
    if let Some(v6) = &a.v6 {
        ensure_gateway6(host, &br, v6)?;
    }
    mark("bridge ready");

    // 3. the veth pair, both ends down: the pod end is created directly inside the
    //    pod as CNI_IFNAME with its final MAC and MTU, the host end as a port of the
    //    bridge (a port that is down forwards nothing: the bridge keeps it disabled).
    let (pmac, hmac) = (pod_mac(a.ip), host_mac(a.ip));
    let spec = VethSpec {
        name: &host_name,
        mac: Some(hmac),
        mtu,
        peer_name: ifname,
        peer_mac: Some(pmac),
        peer_netns_fd: Some(pod_ns.fd()),
        master: Some(br.index),
        up: false,
    };
    let hveth = create_veth_pair(inv, s, host, &spec, undo)?;
    mark("veth pair created");
    // The filters' qdisc now, the filters only after the pod side: the kernel makes
    // the first filter on a new clsact wait for an RCU grace period since the qdisc
    // was made (while holding the link lock every other ADD waits for); by then one
    // has passed. In the same write: no IPv6 link-local address on the host end (a
    // bridge port needs none, and its duplicate address detection would take the link
    // lock again from a kernel worker for every pod).
    let ipv6 = ipv6_on_node();
    let mut reqs = vec![];
    if ipv6 {
        reqs.push(link::change_request(
            Target::Index(hveth.index),
            &LinkChange {
                no_ipv6_link_local: true,
                ..Default::default()
            },
        ));
    }
    if dp.is_some() || policy.is_some() {
        reqs.push(podnet_netlink::tc::clsact_request(hveth.index));
    }
    for r in host.ack_all(reqs) {
        r.map_err(|e| {
            errors::netlink(
                e,
                "check the node with `ip -d link show`; the anti-spoofing filters need the clsact qdisc (CONFIG_NET_SCH_INGRESS)",
            )
        })?;
    }
    mark("host end prepared");

    // 4. inside the pod: its end up, address, routes. Nothing flows yet: the host end
    //    is down.
    let link_local = s.ipv6_link_local || !ipv6;
    let routes = configure_pod(inv, pod_ns, &hveth, &a, shapes.egress, link_local)?;
    mark("pod side configured");

    // 5. protection, while the host end is still down.
    protect(
        host,
        &hveth,
        dp.as_ref(),
        policy.as_deref(),
        pmac,
        (a.ip, a.v6.map(|v| (v.ip, v.prefix))),
        &s.overlay_guard,
        undo,
    )?;

    // The pod's receiving limit, on the host veth's sending side (before it is up).
    if let Some(shape) = shapes.ingress {
        for r in host.ack_all(vec![podnet_netlink::tc::tbf_root_request(
            hveth.index,
            shape,
        )]) {
            r.map_err(|e| {
                errors::netlink(e, "the bandwidth capability needs the tbf qdisc (sch_tbf)")
            })?;
        }
        mark("ingress bandwidth limited");
    }

    // 6. only now: up, with the owner recorded in the alias.
    bring_up(host, &hveth, alias)?;
    mark("up on the bridge");

    Ok(result(
        inv,
        s,
        &br,
        &host_name,
        (hmac, pmac),
        mtu,
        &a,
        routes,
    ))
}

/// The owner alias the host veth will carry, refused when it does not fit.
fn owner_alias_of(inv: &Invocation, s: &Settings) -> Result<String, CniError> {
    antispoof::owner_alias(&s.network, &inv.env.container_id, &inv.env.ifname, &inv.env.netns)
        .ok_or_else(|| {
            CniError::new(
                code::INVALID_CONFIG,
                format!(
                    "network name {:?} and container id {:?} are too long to record on the host veth (255 bytes in all)",
                    s.network, inv.env.container_id
                ),
                "use a shorter network name",
            )
        })
}

/// The node's anti-spoofing datapath when anti-spoofing is on; a node without eBPF
/// refuses the ADD here.
fn node_datapath(s: &Settings) -> Result<Option<antispoof::Datapath>, CniError> {
    let refused = |e: podnet_netlink::Error| {
        CniError::new(
            code::ANTISPOOF,
            e.to_string(),
            "the kernel needs eBPF (CONFIG_BPF_SYSCALL) and tc clsact with the bpf classifier (CONFIG_NET_SCH_INGRESS, CONFIG_NET_CLS_BPF)",
        )
    };
    if !s.anti_spoofing {
        return Ok(None);
    }
    let dp = antispoof::datapath(&s.data_dir).map_err(refused)?;
    if let Some(dir) = &s.pin_dir {
        antispoof::hold(dir, &dp).map_err(|e| {
            CniError::new(
                code::ANTISPOOF,
                format!("cannot pin the node's anti-spoofing program in {}: {e}", dir.display()),
                "the directory must be on a mounted bpffs (mount -t bpf bpf DIR): podnetd names its --bpf-dir in the node file only when it is one; with bpfDir in the config, mount one there or leave the key out",
            )
        })?;
    }
    Ok(Some(dp))
}

/// The node's eBPF policy programs, when its agent runs that datapath: a pod goes
/// up on the bridge only with both attached (closed until the agent programs it).
fn policy_programs(s: &Settings) -> Result<Option<Vec<std::os::fd::OwnedFd>>, CniError> {
    Ok(match &s.policy_programs {
        Some(p) => Some(
            [&p.from_pod, &p.to_pod]
                .map(|path| {
                    podnet_netlink::bpf::obj_get(path).map_err(|e| {
                        CniError::new(
                            code::ANTISPOOF,
                            format!("cannot open podnetd's eBPF policy program: {e}"),
                            "podnetd pins it when it starts with --policy-datapath ebpf: check that podnetd runs on this node (and its log)",
                        )
                    })
                })
                .into_iter()
                .collect::<Result<Vec<_>, _>>()?,
        ),
        None => None,
    })
}

/// Step 6: the host veth (already a port of the bridge, down) up, with the owner
/// recorded in its alias and hairpin mode on, in one request.
fn bring_up(host: &mut Socket, hveth: &link::LinkInfo, alias: String) -> Result<(), CniError> {
    link::change(
        host,
        Target::Index(hveth.index),
        &LinkChange {
            up: Some(true),
            alias: Some(alias),
            // A pod reaching itself through its own Service comes back by its own port.
            hairpin: Some(true),
            ..Default::default()
        },
    )
    .map_err(|e| {
        errors::netlink(
            e,
            "check the node with `ip link` and the pod with `ip -n <netns> link`",
        )
    })
}

fn rollback(inv: &Invocation, host: &mut Socket, undo: Vec<Undo>) -> Vec<String> {
    let mut notes = Vec::new();
    for step in undo.into_iter().rev() {
        match step {
            Undo::ForgetEntry(map, index) => {
                if let Err(e) = podnet_netlink::bpf::delete(&map, index) {
                    notes.push(format!(
                        "could not remove the datapath entry of link {index}: {e}"
                    ));
                }
            }
            Undo::DeleteLink(name) => notes.push(match link::delete_by_name(host, &name) {
                Ok(_) => format!("deleted veth {name}"),
                Err(e) => format!("could not delete veth {name}: {e}"),
            }),
            Undo::ReleaseAddress(store, owner) => notes.push(match store.release(&owner) {
                Ok(held) if held.is_empty() => "no address to release".into(),
                Ok(held) => format!("released {held}"),
                Err(e) => format!("could not release the address: {e}"),
            }),
            Undo::DelegateDel(plugin) => {
                notes.push(match delegate::exec(&inv.env, &plugin, "DEL", &inv.stdin) {
                    Ok(_) => format!("released the address through {plugin}"),
                    Err(e) => format!("could not release the address through {plugin}: {e}"),
                })
            }
        }
    }
    notes
}

/// Step 3: the veth pair, both ends down, the pod end made directly inside the pod.
/// A leftover of this same attachment (an ADD killed midway) is replaced; another
/// attachment's link never is.
fn create_veth_pair(
    inv: &Invocation,
    s: &Settings,
    host: &mut Socket,
    spec: &VethSpec,
    undo: &mut Vec<Undo>,
) -> Result<podnet_netlink::link::LinkInfo, CniError> {
    let ifname = inv.env.ifname.as_str();
    let host_name = spec.name;
    let nl = |e| {
        errors::netlink(
            e,
            "check the node with `ip link` and the pod with `ip -n <netns> link`",
        )
    };
    let echoed = match link::create_veth(host, spec) {
        Ok(echoed) => echoed,
        Err(e) if e.is_exists() => {
            let taken = || {
                CniError::new(
                    code::INTERFACE_EXISTS,
                    format!(
                        "interface {ifname} already exists in network namespace {}",
                        inv.env.netns
                    ),
                    "another plugin made it; remove it, or use another CNI_IFNAME",
                )
            };
            // The host end carries a name derived from this attachment: if it exists,
            // it is the leftover of an ADD of this same attachment that was killed
            // midway (the runtime never calls ADD twice without DEL). Deleting it
            // removes its pod end too.
            let Some(old) = link::get_by_name(host, host_name).map_err(nl)? else {
                return Err(taken());
            };
            // Its alias, once set, names its attachment: never delete another pod's link.
            if let Some(a) = old.alias.as_deref() {
                if antispoof::parse_owner_alias(a)
                    != Some((s.network.as_str(), ifname, inv.env.container_id.as_str()))
                {
                    return Err(CniError::new(
                        code::INTERFACE_EXISTS,
                        format!("link {host_name} exists and belongs to another attachment ({a})"),
                        "two attachments hash to the same host veth name; delete that pod first, or report this",
                    ));
                }
            }
            link::delete_by_name(host, host_name).map_err(nl)?;
            match link::create_veth(host, spec) {
                Err(e) if e.is_exists() => return Err(taken()),
                other => other.map_err(nl)?,
            }
        }
        Err(e) => return Err(nl(e)),
    };
    undo.push(Undo::DeleteLink(host_name.to_string()));
    // The kernel's echo names both indexes; older kernels need a lookup.
    match echoed {
        Some(l) => Some(l),
        None => link::get_by_name(host, host_name).map_err(nl)?,
    }
    .ok_or_else(|| {
        CniError::new(
            code::NETLINK,
            format!("veth {host_name} vanished right after it was created"),
            "retry the ADD; if it persists, something on this node deletes podnet's links",
        )
    })
}

/// Step 5: the pod's protection on its host veth, while it is still down: the
/// anti-spoofing entry and filter, then the node's policy programs' filters.
#[allow(clippy::too_many_arguments)]
fn protect(
    host: &mut Socket,
    hveth: &podnet_netlink::link::LinkInfo,
    dp: Option<&antispoof::Datapath>,
    policy: Option<&[std::os::fd::OwnedFd]>,
    pmac: [u8; 6],
    (ip, ip6): (Ipv4Addr, Option<(Ipv6Addr, u8)>),
    guard: &antispoof::OverlayGuard,
    undo: &mut Vec<Undo>,
) -> Result<(), CniError> {
    let refused = |e: podnet_netlink::Error| {
        CniError::new(
            code::ANTISPOOF,
            e.to_string(),
            "the kernel needs eBPF (CONFIG_BPF_SYSCALL) and tc clsact with the bpf classifier (CONFIG_NET_SCH_INGRESS, CONFIG_NET_CLS_BPF)",
        )
    };
    if let Some(dp) = dp {
        let map = dp.map.try_clone().map_err(|e| {
            refused(podnet_netlink::Error::io(
                "duplicate",
                "the BPF map's fd",
                e,
            ))
        })?;
        undo.push(Undo::ForgetEntry(map, hveth.index));
        antispoof::set_pod(dp, hveth.index, pmac, ip, ip6, guard).map_err(refused)?;
        let r = antispoof::filter_request(hveth.index, &dp.prog);
        host.ack(r.msg, r.op, r.obj).map_err(refused)?;
        mark("anti-spoofing installed");
    }
    if let Some(progs) = policy {
        let reqs = vec![
            // After anti-spoofing on ingress (prio 1), so the source is the pod's own.
            podnet_netlink::tc::bpf_ingress_request(hveth.index, 2, &progs[0], "podnet_policy_out"),
            podnet_netlink::tc::bpf_egress_request(hveth.index, 1, &progs[1], "podnet_policy_in"),
        ];
        for r in host.ack_all(reqs) {
            r.map_err(refused)?;
        }
        mark("policy programs attached");
    }
    Ok(())
}

/// Whether this kernel has IPv6 (it refuses IPv6 link settings without it): whether it
/// makes an IPv6 socket. (Not a look at /proc/sys/net/ipv6: on a node with hundreds of
/// pods that path lookup cost more than the netlink requests around it.)
fn ipv6_on_node() -> bool {
    // SAFETY: socket() with constant arguments; the descriptor is closed by OwnedFd.
    let fd = unsafe { libc::socket(libc::AF_INET6, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return false;
    }
    // SAFETY: fd was just returned by socket() and is owned by nobody else.
    drop(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) });
    true
}

/// Step 4: inside the pod: the interface up without an IPv6 link-local address, its
/// address, its routes (a default route via the gateway unless IPAM gave routes).
/// Returns the routes.
///
/// No link-local address: podnet pods are IPv4 pods, and both policy datapaths drop
/// every IPv6 packet between pods but neighbour discovery, so the address would only
/// send duplicate address detection and multicast listener reports that the bridge
/// floods to every pod of the node (each flood a copy per port, each then dropped) and
/// that take the kernel's link lock from a worker for every new pod. `ipv6LinkLocal:
/// true` in the config keeps it (with `--policy-datapath none`, pods' link-local IPv6
/// then works between them, and anti-spoofing still binds it to the pod's MAC).
fn configure_pod(
    inv: &Invocation,
    pod_ns: &Netns,
    hveth: &podnet_netlink::link::LinkInfo,
    a: &Assigned,
    egress: Option<podnet_netlink::tc::Shape>,
    // Whether to leave the kernel's IPv6 link-local address alone (asked for, or a
    // kernel without IPv6, which refuses the setting).
    link_local: bool,
) -> Result<Vec<Route>, CniError> {
    let ifname = inv.env.ifname.as_str();
    let nl = |e| {
        errors::netlink(
            e,
            "check the node with `ip link` and the pod with `ip -n <netns> link`",
        )
    };
    let mut pod = Socket::route_in(pod_ns).map_err(nl)?;
    let eth_index = match hveth.peer_index {
        Some(i) => Some(i),
        None => link::get_by_name(&mut pod, ifname)
            .map_err(nl)?
            .map(|l| l.index),
    }
    .ok_or_else(|| {
        CniError::new(
            code::NETLINK,
            format!(
                "{ifname} is missing in {} right after it was created",
                inv.env.netns
            ),
            "something in the pod removed it; retry the ADD",
        )
    })?;
    let mut routes = a.routes.clone();
    if routes.is_empty() {
        routes.push(Route {
            dst: "0.0.0.0/0".parse().unwrap(),
            gw: Some(IpAddr::V4(a.gateway)),
        });
    }
    if let Some(v6) = &a.v6 {
        routes.push(Route {
            dst: "::/0".parse().unwrap(),
            gw: Some(IpAddr::V6(v6.gateway)),
        });
    }
    // The pod's sending limit on its own interface, before it is up: the pod cannot
    // change it without CAP_NET_ADMIN, and it holds on every datapath (the fast path
    // takes packets on the host side, after it).
    let mut reqs: Vec<Request> = egress
        .map(|s| podnet_netlink::tc::tbf_root_request(eth_index, s))
        .into_iter()
        .collect();
    reqs.extend([
        link::change_request(
            Target::Index(eth_index),
            &LinkChange {
                up: Some(true),
                no_ipv6_link_local: !link_local,
                ..Default::default()
            },
        ),
        addr::add_request(eth_index, a.ip, a.prefix),
    ]);
    if let Some(v6) = &a.v6 {
        // Usable at once (no duplicate address detection: IPAM gave it to this pod
        // alone); the prefix route comes with it.
        reqs.push(addr::add6_request(eth_index, v6.ip, v6.prefix));
    }
    for r in &routes {
        let dst = match (r.dst.addr, &a.v6) {
            (IpAddr::V4(d), _) => d,
            (IpAddr::V6(d), Some(v6)) => {
                let gw = match r.gw {
                    Some(IpAddr::V6(g)) => g,
                    _ => v6.gateway,
                };
                reqs.push(route::add6_request(
                    d,
                    r.dst.prefix,
                    Some(gw),
                    eth_index,
                    RTPROT_PODNET,
                    false,
                ));
                continue;
            }
            (IpAddr::V6(_), None) => continue,
        };
        let gw = match r.gw {
            Some(IpAddr::V4(g)) => Some(g),
            _ => Some(a.gateway),
        };
        reqs.push(route::add_request(&route::RouteSpec {
            dst,
            prefix: r.dst.prefix,
            gateway: gw,
            oif: Some(eth_index),
            onlink: false,
            protocol: RTPROT_PODNET,
        }));
    }
    for r in pod.ack_all(reqs) {
        r.map_err(nl)?;
    }
    Ok(routes)
}

/// What ADD reports: the bridge, the host veth and the pod interface, the address,
/// the routes, the DNS settings.
#[allow(clippy::too_many_arguments)]
fn result(
    inv: &Invocation,
    s: &Settings,
    br: &podnet_netlink::link::LinkInfo,
    host_name: &str,
    (hmac, pmac): ([u8; 6], [u8; 6]),
    mtu: u32,
    a: &Assigned,
    routes: Vec<Route>,
) -> CniResult {
    let ifname = inv.env.ifname.as_str();
    let gw = IpAddr::V4(a.gateway);
    CniResult {
        interfaces: vec![
            Interface {
                name: s.bridge.clone(),
                mac: br.mac_string(),
                mtu: None,
                sandbox: None,
            },
            Interface {
                name: host_name.to_string(),
                mac: fmt_mac(&hmac),
                mtu: Some(mtu),
                sandbox: None,
            },
            Interface {
                name: ifname.to_string(),
                mac: fmt_mac(&pmac),
                mtu: Some(mtu),
                sandbox: Some(inv.env.netns.clone()),
            },
        ],
        ips: std::iter::once(IpConfig {
            address: podnet_cni_spec::net::IpNet::new(IpAddr::V4(a.ip), a.prefix),
            gateway: Some(gw),
            interface: Some(2),
        })
        .chain(a.v6.map(|v| IpConfig {
            address: podnet_cni_spec::net::IpNet::new(IpAddr::V6(v.ip), v.prefix),
            gateway: Some(IpAddr::V6(v.gateway)),
            interface: Some(2),
        }))
        .collect(),
        routes: routes
            .into_iter()
            .map(|r| Route {
                gw: r.gw.or(Some(match (r.dst.addr, &a.v6) {
                    (IpAddr::V6(_), Some(v)) => IpAddr::V6(v.gateway),
                    _ => gw,
                })),
                dst: r.dst,
            })
            .collect(),
        dns: inv
            .conf
            .dns
            .clone()
            .filter(|d| d != &serde_json::json!({}))
            .or(a.dns.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    use crate::settings::with_runtime_config as settings;

    #[test]
    fn requested_ips_must_parse_whole() {
        let ok = |ips: serde_json::Value| requested_ip(&settings(json!({ "ips": ips })));
        assert_eq!(
            ok(json!(["10.9.0.7/24"])).unwrap(),
            (Some("10.9.0.7".parse().unwrap()), None)
        );
        assert_eq!(
            ok(json!(["10.9.0.7", "fd00::7/64"])).unwrap(),
            (
                Some("10.9.0.7".parse().unwrap()),
                Some("fd00::7".parse().unwrap())
            )
        );
        assert_eq!(ok(json!([])).unwrap(), (None, None));
        for bad in [
            json!(["10.9.0.7/99"]),
            json!(["10.9.0.7/"]),
            json!(["10.9.0.7/-1"]),
            json!(["10.9.0.7/24/8"]),
            json!(["10.9.0.7", "10.9.0.8"]),
            json!(["fd00::7", "fd00::8"]),
            json!([7]),
            json!("10.9.0.7"),
            json!([null]),
        ] {
            let e = ok(bad.clone()).unwrap_err();
            assert_eq!(e.code, code::INVALID_CONFIG, "{bad}");
        }
    }

    #[test]
    fn masks() {
        assert_eq!(prefix_mask(0), 0);
        assert_eq!(prefix_mask(8), 0xff00_0000);
        assert_eq!(prefix_mask(32), u32::MAX);
        assert_eq!(prefix_mask(200), u32::MAX);
    }

    /// A chained ADD's result: prev's interfaces first, our indexes shifted past them
    /// and still pointing at our interfaces.
    #[test]
    fn merged_indexes_stay_in_range() {
        let prev = CniResult::decode(
            &json!({"interfaces":[{"name":"a"},{"name":"b"}],
                    "ips":[{"address":"10.1.0.2/24","interface":1}]}),
            "prevResult",
        )
        .unwrap();
        let ours = CniResult {
            interfaces: vec![Interface::default(); 3],
            ips: vec![IpConfig {
                address: "10.9.0.5/24".parse().unwrap(),
                gateway: None,
                interface: Some(2),
            }],
            ..Default::default()
        };
        let m = merge(prev, ours);
        assert_eq!(m.interfaces.len(), 5);
        assert_eq!(
            m.ips.iter().map(|i| i.interface).collect::<Vec<_>>(),
            [Some(1), Some(4)]
        );
        let again = CniResult::decode(&m.encode(podnet_cni_spec::Version::V1_1_0), "merged");
        assert!(again.is_ok(), "{again:?}");
    }
}
