//! CHECK: is the pod's network still what ADD made? Reads only; reports every
//! difference it finds in one error (code 105), each naming the object.

use crate::errors;
use crate::settings::{host_veth_name, Ipam, Settings};
use crate::{antispoof, Invocation};
use podnet_cni_spec::result::IpConfig;
use podnet_cni_spec::{code, CniError, CniResult};
use podnet_ipam::Owner;
use podnet_netlink::link::LinkInfo;
use podnet_netlink::{addr, link, route, Socket};
use std::net::{IpAddr, Ipv4Addr};

pub fn run(inv: &Invocation) -> Result<(), CniError> {
    let s = Settings::resolve(&inv.conf, &inv.raw)?;
    let prev = inv.conf.prev_result.as_ref().ok_or_else(|| {
        CniError::new(
            code::INVALID_CONFIG,
            "CHECK needs prevResult",
            "the runtime must pass the result of ADD as prevResult",
        )
    })?;
    let prev = CniResult::decode(prev, "prevResult")?;
    let ifname = inv.env.ifname.as_str();
    let want = Expected::of(&prev, ifname)?;

    let pod_ns = crate::pod_netns(&inv.env.netns)?;
    let mut host = Socket::route().map_err(nl)?;
    let mut pod = Socket::route_in(&pod_ns).map_err(nl)?;
    let mut problems: Vec<String> = Vec::new();

    // Pod side.
    let pod_mac = check_pod(&mut pod, inv, &want, &mut problems)?;

    // Host side.
    let host_name = host_veth_name(&inv.env.container_id, ifname);
    let hveth = check_host(&mut host, &s, &host_name, &mut problems)?;
    if let (true, Some(h)) = (s.anti_spoofing, &hveth) {
        check_antispoof(&mut host, h, &host_name, pod_mac, want.ip, &mut problems)?;
    }
    check_ipam(
        inv,
        &s,
        (want.ip, want.want_ip6.map(|w| w.address.addr)),
        &mut problems,
    )?;

    if problems.is_empty() {
        Ok(())
    } else {
        Err(CniError::new(
            code::CHECK_MISMATCH,
            format!(
                "pod network of container {} differs from what ADD made",
                inv.env.container_id
            ),
            format!(
                "{}; DEL and ADD the pod again to repair it",
                problems.join("; ")
            ),
        ))
    }
}

/// A netlink failure while inspecting, with where to look by hand.
fn nl(e: podnet_netlink::Error) -> CniError {
    errors::netlink(
        e,
        "inspect the pod with `ip -n <netns> addr` and the node with `ip -d link show`",
    )
}

/// What ADD reported for the pod's interface, from prevResult.
struct Expected<'a> {
    prev: &'a CniResult,
    /// The index of the pod interface in prevResult's interfaces, if listed there.
    want_if: Option<usize>,
    /// The IPv4 address given to that interface.
    want_ip: &'a IpConfig,
    ip: Ipv4Addr,
    /// A dual-stack pod's IPv6 address, if prevResult gives the interface one.
    want_ip6: Option<&'a IpConfig>,
}

impl<'a> Expected<'a> {
    /// Finds the interface and its IPv4 address in prevResult; no IPv4 address is an
    /// error.
    fn of(prev: &'a CniResult, ifname: &str) -> Result<Expected<'a>, CniError> {
        let want_if = prev
            .interfaces
            .iter()
            .position(|i| i.name == ifname && i.sandbox.is_some());
        let want_ip = prev
            .ips
            .iter()
            .find(|i| i.address.addr.is_ipv4() && (want_if.is_none() || i.interface == want_if))
            .ok_or_else(|| {
                CniError::new(
                    code::INVALID_CONFIG,
                    format!("prevResult has no IPv4 address for {ifname}"),
                    "pass the result of ADD unchanged",
                )
            })?;
        let IpAddr::V4(ip) = want_ip.address.addr else {
            unreachable!()
        };
        let want_ip6 = prev
            .ips
            .iter()
            .find(|i| i.address.addr.is_ipv6() && (want_if.is_none() || i.interface == want_if));
        Ok(Expected {
            prev,
            want_if,
            want_ip,
            ip,
            want_ip6,
        })
    }
}

/// Checks the pod's interface: present, up, its MAC, address and routes. Returns its
/// MAC when it is there.
fn check_pod(
    pod: &mut Socket,
    inv: &Invocation,
    want: &Expected,
    problems: &mut Vec<String>,
) -> Result<Option<[u8; 6]>, CniError> {
    let ifname = inv.env.ifname.as_str();
    let Some(l) = link::get_by_name(pod, ifname).map_err(nl)? else {
        problems.push(format!("{ifname} is missing in {}", inv.env.netns));
        return Ok(None);
    };
    let pod_mac = <[u8; 6]>::try_from(l.mac.as_slice()).ok();
    if !l.is_up() {
        problems.push(format!(
            "{ifname} is down in the pod (ip -n <netns> link set {ifname} up)"
        ));
    }
    if let Some(mac) = want
        .want_if
        .map(|i| &want.prev.interfaces[i].mac)
        .filter(|m| !m.is_empty())
    {
        if &l.mac_string() != mac {
            problems.push(format!(
                "{ifname} has MAC {} instead of {mac}",
                l.mac_string()
            ));
        }
    }
    let addrs = addr::list(pod, Some(l.index)).map_err(nl)?;
    if !addrs
        .iter()
        .any(|a| a.addr == want.ip && a.prefix == want.want_ip.address.prefix)
    {
        problems.push(format!("{ifname} lacks address {}", want.want_ip.address));
    }
    if let Some(w6) = want.want_ip6 {
        let has = addr::list6(pod, Some(l.index))
            .map_err(nl)?
            .iter()
            .any(|(_, a, p)| IpAddr::V6(*a) == w6.address.addr && *p == w6.address.prefix);
        if !has {
            problems.push(format!("{ifname} lacks address {}", w6.address));
        }
    }
    check_routes(pod, want, problems)?;
    Ok(pod_mac)
}

/// Checks that every IPv4 route of prevResult is in the pod.
fn check_routes(
    pod: &mut Socket,
    want: &Expected,
    problems: &mut Vec<String>,
) -> Result<(), CniError> {
    let routes = route::list(pod).map_err(nl)?;
    for r in &want.prev.routes {
        let IpAddr::V4(dst) = r.dst.addr else {
            continue;
        };
        let gw = match r.gw.or(want.want_ip.gateway) {
            Some(IpAddr::V4(g)) => Some(g),
            _ => None,
        };
        let found = routes
            .iter()
            .any(|k| k.dst == dst && k.prefix == r.dst.prefix && (gw.is_none() || k.gateway == gw));
        if !found {
            problems.push(format!(
                "route {}{} is missing in the pod",
                r.dst,
                gw.map(|g| format!(" via {g}")).unwrap_or_default()
            ));
        }
    }
    Ok(())
}

/// Checks the host veth: present, up, on the bridge with hairpin mode. Returns the
/// host veth when it is there.
fn check_host(
    host: &mut Socket,
    s: &Settings,
    host_name: &str,
    problems: &mut Vec<String>,
) -> Result<Option<LinkInfo>, CniError> {
    let br = link::get_by_name(host, &s.bridge).map_err(nl)?;
    let hveth = link::get_by_name(host, host_name).map_err(nl)?;
    match (&hveth, &br) {
        (None, _) => problems.push(format!("host veth {host_name} is missing")),
        (Some(_), None) => problems.push(format!("bridge {} is missing", s.bridge)),
        (Some(h), Some(b)) => {
            if !h.is_up() {
                problems.push(format!("host veth {host_name} is down"));
            }
            if h.master != Some(b.index) {
                problems.push(format!(
                    "host veth {host_name} is not attached to bridge {}",
                    s.bridge
                ));
            } else if h.hairpin == Some(false) {
                problems.push(format!(
                    "host veth {host_name} has hairpin mode off: the pod cannot reach itself through its own Services (`bridge link set dev {host_name} hairpin on`)"
                ));
            }
        }
    }
    Ok(hveth)
}

/// Checks the anti-spoofing entry of the host veth. Present is not enough: the entry
/// must hold this pod's MAC and address, or the filter guards someone else's.
fn check_antispoof(
    host: &mut Socket,
    h: &LinkInfo,
    host_name: &str,
    pod_mac: Option<[u8; 6]>,
    ip: Ipv4Addr,
    problems: &mut Vec<String>,
) -> Result<(), CniError> {
    match antispoof::pod_state(host, h.index).map_err(nl)? {
        None => problems.push(format!(
            "anti-spoofing filters on {host_name} are missing or incomplete (tc -s filter show dev {host_name} ingress)"
        )),
        Some(st) => {
            let want_mac = pod_mac.unwrap_or_else(|| podnet_conventions::pod_mac(ip));
            if st.mac != want_mac || st.ip != ip {
                problems.push(format!(
                    "the anti-spoofing entry of {host_name} allows {} {}, not this pod's {} {ip}: DEL and ADD the pod",
                    podnet_netlink::fmt_mac(&st.mac),
                    st.ip,
                    podnet_netlink::fmt_mac(&want_mac),
                ));
            }
        }
    }
    Ok(())
}

/// Checks the address record: through the delegated plugin's CHECK, or in the
/// built-in store.
fn check_ipam(
    inv: &Invocation,
    s: &Settings,
    (ip, ip6): (Ipv4Addr, Option<IpAddr>),
    problems: &mut Vec<String>,
) -> Result<(), CniError> {
    if let Some(Ipam::Delegate { plugin }) = &s.ipam {
        if let Err(e) = crate::delegate::exec(&inv.env, plugin, "CHECK", &inv.stdin) {
            problems.push(format!("IPAM plugin {plugin}: {}", e));
        }
    }
    if let Some(Ipam::Builtin { .. }) = s.ipam {
        let store = s.store()?;
        let held = store
            .lookup(&Owner::new(&inv.env.container_id, &inv.env.ifname))
            .map_err(errors::ipam)?;
        let got = [held.v4.map(IpAddr::V4), held.v6.map(IpAddr::V6)];
        for (want, got) in [(Some(IpAddr::V4(ip)), got[0]), (ip6, got[1])] {
            match (want, got) {
                (Some(w), Some(g)) if w != g => {
                    problems.push(format!("IPAM records {g} for this pod, not {w}"))
                }
                (Some(w), None) => problems.push(format!("IPAM has no record of {w} for this pod")),
                _ => {}
            }
        }
    }
    Ok(())
}
