//! The agent's local API: a Unix socket (default `/run/podnet/podnetd.sock`) that
//! answers one JSON request per line with one JSON line. The requests and replies are
//! the types of [`crate::proto`] (versioned; the one [`crate::proto::Client`] speaks
//! them); this module serves them.
//!
//! - `status`: the agent's view — node, lease, backend, peers, last sync.
//! - `state`: the node's own kernel state as data — its links, the routes, neighbour
//!   and FDB entries podnet manages, forwarding — read when asked, so a caller
//!   (`podnet trace`, `podnet doctor`, the lab) sees what the kernel has, not what the
//!   agent believes.
//! - `pod`: one pod on this node: its host veth, and inside its own namespace its link,
//!   addresses, routes and neighbours.
//! - `ping`: an ICMP echo with DF set, sent from this node (see [`crate::probe`]).
//! - `policy`, `policy-stats`, `policy-revision`, `policy-versions`, `verdict`: the
//!   NetworkPolicy datapath — what it reflects, its drop counters, one flow's verdict.

use crate::policy::{PolicyDatapath, PolicyState};
use crate::proto::{
    parse_request, Client, Conntrack, FdbState, HostVeth, LinkState, NeighState, NodeState,
    PingReply, PodInside, PodLink, PodReport, PolicyRevision, PolicyStats, PolicyVersions, Request,
    RouteState, VxlanState,
};
use crate::Failure;
use crate::{Result, Status};
use podnet_netlink::{link, neigh, route, Socket};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 64;
/// Longest request line, in bytes.
pub const MAX_REQUEST: usize = 64 * 1024;

/// What every connection reads: the agent's and the policy's status, the rotation
/// channel, the event log, and the names of the node's devices.
struct Shared {
    status: Arc<Mutex<Status>>,
    policy: Arc<Mutex<PolicyState>>,
    rotation: Arc<crate::wireguard::Rotation>,
    events: Arc<crate::observe::EventLog>,
    vxlan_dev: String,
    bridge: String,
}

/// Starts serving on `path` in a background thread (in the agent's namespace).
pub fn serve(
    path: &Path,
    status: Arc<Mutex<Status>>,
    policy: Arc<Mutex<PolicyState>>,
    rotation: Arc<crate::wireguard::Rotation>,
    events: Arc<crate::observe::EventLog>,
    vxlan_dev: String,
    bridge: String,
) -> Result<()> {
    let fail = |source| crate::Error::File {
        what: "serve the API on",
        path: path.display().to_string(),
        source,
    };
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).map_err(fail)?;
    }
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path).map_err(fail)?;
    // Root only: the socket tells about every pod and can make the node send probes.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(fail)?;
    let shared = Arc::new(Shared {
        status,
        policy,
        rotation,
        events,
        vxlan_dev,
        bridge,
    });
    let open = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    std::thread::spawn(move || {
        // One thread per connection, each with a read timeout: an idle or slow client
        // never holds up the others. At most MAX_CONNECTIONS at once; a request line
        // longer than MAX_REQUEST is refused.
        for conn in listener.incoming().flatten() {
            use std::sync::atomic::Ordering::SeqCst;
            if open.fetch_add(1, SeqCst) >= MAX_CONNECTIONS {
                open.fetch_sub(1, SeqCst);
                let mut w = &conn;
                let _ = writeln!(
                    w,
                    "{}",
                    json!({"error": format!("the agent serves {MAX_CONNECTIONS} connections at once; try again")})
                );
                continue;
            }
            let (shared, open) = (shared.clone(), open.clone());
            std::thread::spawn(move || connection(conn, &shared, open));
        }
    });
    Ok(())
}

/// One connection: a request line in, its reply out.
fn connection(
    conn: std::os::unix::net::UnixStream,
    shared: &Shared,
    open: Arc<std::sync::atomic::AtomicUsize>,
) {
    // The slot is given back however this thread ends (a panic included).
    struct Slot(Arc<std::sync::atomic::AtomicUsize>);
    impl Drop for Slot {
        fn drop(&mut self) {
            self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        }
    }
    let _slot = Slot(open);
    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    let mut line = String::new();
    let read =
        BufReader::new(std::io::Read::take(&conn, MAX_REQUEST as u64 + 1)).read_line(&mut line);
    let reply = match read {
        Err(_) => None,
        Ok(_) if line.len() > MAX_REQUEST => {
            Some(json!({"error": format!("request longer than {MAX_REQUEST} bytes")}))
        }
        Ok(_) => Some(reply(&line, shared)),
    };
    if let Some(r) = reply {
        let mut w = &conn;
        let _ = writeln!(w, "{r}");
    }
    // Closing with unread input would reset the connection before the client reads
    // the answer: drain what is left of an oversized request (bounded).
    let _ = conn.shutdown(std::net::Shutdown::Write);
    let _ = std::io::copy(
        &mut std::io::Read::take(&conn, 1 << 20),
        &mut std::io::sink(),
    );
}

/// The reply to one request line.
fn reply(line: &str, s: &Shared) -> Value {
    match parse_request(line) {
        Ok(Request::RotateWireguardKey) => {
            // The agent's loop rotates; it looks at least once a second.
            match s.rotation.request(Duration::from_secs(4)) {
                Ok(r) => serde_json::to_value(r).unwrap_or(Value::Null),
                Err(e) => json!({ "error": e.to_string() }),
            }
        }
        Ok(Request::Events {
            after,
            wait_ms,
            allowed,
        }) => {
            if allowed {
                s.events.want_allowed();
            }
            let wait = Duration::from_millis(u64::from(wait_ms.min(4000)));
            let (evs, next) = s.events.after(after, wait);
            serde_json::to_value(crate::proto::EventsReply {
                events: evs,
                next,
                lost: s.events.lost.load(std::sync::atomic::Ordering::Relaxed),
                allowed: s.events.allowed_wanted(),
            })
            .unwrap_or(Value::Null)
        }
        Ok(req) => answer(&req, &s.status, &s.policy, &s.vxlan_dev, &s.bridge),
        Err(e) => json!({ "error": e }),
    }
}

fn answer(
    req: &Request,
    status: &Mutex<Status>,
    policy: &Mutex<PolicyState>,
    vxlan_dev: &str,
    bridge: &str,
) -> Value {
    let reply = |r: std::result::Result<Value, Failure>| {
        r.unwrap_or_else(|e| json!({ "error": e.to_string() }))
    };
    fn to<T: serde::Serialize>(v: &T) -> Value {
        serde_json::to_value(v).unwrap_or(Value::Null)
    }
    match req {
        Request::Status => to(&status_now(status)),
        Request::Policy => to(&*policy.lock().unwrap()),
        Request::PolicyRevision => {
            let st = policy.lock().unwrap();
            to(&PolicyRevision {
                datapath: st.datapath,
                revision: st.revision,
                error: st.error.clone(),
            })
        }
        Request::PolicyVersions { keys } => {
            let st = policy.lock().unwrap();
            to(&PolicyVersions {
                datapath: st.datapath,
                revision: st.revision,
                error: st.error.clone(),
                versions: keys
                    .iter()
                    .map(|k| (k.clone(), st.versions.get(k).cloned()))
                    .collect(),
            })
        }
        Request::PolicyStats => {
            let st = policy.lock().unwrap().clone();
            let (denied, closed_packets, denied_error) = match crate::policy::denied(&st) {
                Ok((d, c)) => (d, c, None),
                Err(e) => (vec![], 0, Some(e.to_string())),
            };
            let enforcement = crate::policy::enforcement_problems(&st);
            to(&PolicyStats {
                status: st.status,
                denied,
                closed_packets,
                denied_error,
                enforcement,
            })
        }
        Request::Verdict {
            ip,
            peer,
            direction,
            protocol,
            port,
        } => {
            // TCP, UDP, SCTP; anything else (ICMP) is judged as a portless protocol.
            let p = podnet_policy::Proto::parse(protocol).unwrap_or(podnet_policy::Proto::Other(1));
            let st = policy.lock().unwrap().clone();
            to(&crate::policy::verdict(
                &st, *ip, *peer, *direction, p, *port,
            ))
        }
        Request::State => reply(
            state(vxlan_dev, bridge)
                .map(|s| to(&s))
                .map_err(Failure::from),
        ),
        Request::Pod { ip } => reply(pod(*ip).map(|p| to(&p))),
        Request::Ping { ip, size } => {
            let size = (*size).min(65_507);
            to(&PingReply {
                ip: *ip,
                size,
                result: crate::probe::ping(*ip, usize::from(size), Duration::from_millis(700)),
            })
        }
        Request::Service {
            target,
            port,
            protocol,
            ipv6,
        } => reply(crate::kubeproxy::report(target, *port, protocol, *ipv6).map(|r| to(&r))),
        // Served by the connection's thread, which waits.
        Request::RotateWireguardKey | Request::Events { .. } => {
            json!({"error": "served by the connection's thread"})
        }
    }
}

/// The node's kernel state, as `ip`/`bridge` would show it, as data.
pub fn state(vxlan_dev: &str, bridge: &str) -> podnet_netlink::Result<NodeState> {
    let mut s = Socket::route()?;
    let links = link::list(&mut s)?;
    let name_of = |i: u32| {
        links
            .iter()
            .find(|l| l.index == i)
            .map(|l| l.name.clone())
            .unwrap_or_else(|| format!("#{i}"))
    };
    let vx = links.iter().find(|l| l.name == vxlan_dev).map(|l| l.index);
    let routes = route::list(&mut s)?
        .into_iter()
        .map(|r| RouteState {
            dst: route_dst(r.dst, r.prefix),
            gateway: r.gateway.map(IpAddr::V4),
            dev: r.oif.map(name_of),
            onlink: r.onlink,
            protocol: r.protocol,
        })
        .collect();
    let neigh = neigh::list(&mut s)?
        .into_iter()
        .map(|n| NeighState {
            ip: IpAddr::V4(n.ip),
            mac: n.mac.map(|m| podnet_netlink::fmt_mac(&m)),
            dev: name_of(n.index),
            state: n.state_name().to_string(),
        })
        .collect();
    // IPv6: podnet's routes and those on the bridge (the node's own pods' range);
    // neighbours on the VXLAN device (peers' next hops) and on the bridge (pods).
    let br = links.iter().find(|l| l.name == bridge).map(|l| l.index);
    let routes6 = route::list6(&mut s)?
        .into_iter()
        .filter(|r| {
            r.protocol == podnet_conventions::RTPROT_PODNET || (r.oif.is_some() && r.oif == br)
        })
        .map(|r| RouteState {
            dst: format!("{}/{}", r.dst, r.prefix),
            gateway: r.gateway.map(IpAddr::V6),
            dev: r.oif.map(name_of),
            onlink: r.onlink,
            protocol: r.protocol,
        })
        .collect();
    let neigh6 = neigh::list6(&mut s)?
        .into_iter()
        .filter(|n| Some(n.index) == vx || Some(n.index) == br)
        .map(|n| NeighState {
            ip: IpAddr::V6(n.ip),
            mac: n.mac.map(|m| podnet_netlink::fmt_mac(&m)),
            dev: name_of(n.index),
            state: n.state_name().to_string(),
        })
        .collect();
    let fdb = neigh::fdb_list(&mut s)?
        .into_iter()
        .filter(|f| Some(f.index) == vx)
        .map(|f| FdbState {
            mac: podnet_netlink::fmt_mac(&f.mac),
            dst: f.dst,
            dev: name_of(f.index),
        })
        .collect();
    let link_states = links
        .iter()
        .map(|l| LinkState {
            name: l.name.clone(),
            index: l.index,
            kind: l.kind.clone(),
            up: l.is_up(),
            mtu: l.mtu,
            mac: l.mac_string(),
            master: l.master.map(name_of),
            vxlan: l.vxlan.as_ref().map(|v| VxlanState {
                vni: v.vni,
                port: v.port,
                local: v.local,
                learning: v.learning,
            }),
        })
        .collect();
    let forwarding = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")
        .map(|v| v.trim() == "1")
        .unwrap_or(false);
    let num = |p: &str| {
        std::fs::read_to_string(p)
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    let mut rp_filter = std::collections::BTreeMap::new();
    for dev in ["all", "default", vxlan_dev, bridge] {
        if let Some(v) = num(&format!("/proc/sys/net/ipv4/conf/{dev}/rp_filter")) {
            rp_filter.insert(dev.to_string(), v);
        }
    }
    Ok(NodeState {
        bridge: bridge.into(),
        vxlan_dev: vxlan_dev.into(),
        links: link_states,
        routes,
        neigh,
        routes6,
        neigh6,
        fdb,
        forwarding,
        forwarding6: std::fs::read_to_string("/proc/sys/net/ipv6/conf/all/forwarding")
            .ok()
            .map(|v| v.trim() == "1"),
        conntrack: Conntrack {
            count: num("/proc/sys/net/netfilter/nf_conntrack_count"),
            max: num("/proc/sys/net/netfilter/nf_conntrack_max"),
        },
        rp_filter,
    })
}

/// `default`, or `a.b.c.d/n`.
fn route_dst(dst: Ipv4Addr, prefix: u8) -> String {
    if prefix == 0 {
        "default".to_string()
    } else {
        format!("{dst}/{prefix}")
    }
}

/// Whether the agent on `path` has programmed its node: a sync completed, the policy
/// datapath holds verdicts (or enforces none), the datastore reports no problem.
pub fn ready(path: &Path) -> Result<(), Failure> {
    let c = Client::new(path);
    let st = c.status().map_err(Failure::from)?;
    if st.last_sync == 0 {
        return Err("the node's routes are not programmed yet".into());
    }
    if !st.datastore_problems.is_empty() {
        return Err(format!("datastore: {}", st.datastore_problems.join("; ")).into());
    }
    let pol = c.policy_revision().map_err(Failure::from)?;
    if pol.datapath != PolicyDatapath::None && pol.revision == 0 {
        return Err(format!(
            "the NetworkPolicy datapath holds no verdicts yet{}",
            pol.error.map(|e| format!(": {e}")).unwrap_or_default()
        )
        .into());
    }
    Ok(())
}

/// The pod with address `addr` on this node (either of a dual-stack pod's), as its own
/// namespace and its host veth show it. The host veth is found by its MAC (podnet
/// derives it from the pod's IPv4 address) or, for an IPv6 address, by the
/// anti-spoofing entry that holds it; the pod's namespace from the veth's alias.
pub fn pod(addr: IpAddr) -> std::result::Result<PodReport, Failure> {
    let mut s = Socket::route().map_err(Failure::from)?;
    let links = link::list(&mut s).map_err(Failure::from)?;
    // A pod's IPv6 address leads to its host veth through its anti-spoofing entry
    // (which holds both of a dual-stack pod's addresses); its IPv4 one through the
    // host veth's MAC, which podnet makes from it.
    let mut spoof = |index: u32| {
        podnet_netlink::antispoof::pod_state(&mut s, index)
            .ok()
            .flatten()
    };
    let (ip, h) = match addr {
        IpAddr::V4(ip) => {
            let mac = podnet_conventions::host_mac(ip);
            (ip, links.iter().find(|l| l.mac == mac))
        }
        IpAddr::V6(ip6) => {
            let found = links
                .iter()
                .filter(|l| {
                    l.alias
                        .as_deref()
                        .and_then(podnet_conventions::parse_owner_alias)
                        .is_some()
                })
                .find_map(|l| {
                    spoof(l.index)
                        .filter(|st| st.ip6 == Some(ip6))
                        .map(|st| (st.ip, l))
                });
            match found {
                Some((ip, l)) => (ip, Some(l)),
                None => (Ipv4Addr::UNSPECIFIED, None),
            }
        }
    };
    let ip6 = match addr {
        IpAddr::V6(a) => Some(a),
        IpAddr::V4(_) => h.and_then(|h| spoof(h.index)).and_then(|st| st.ip6),
    };
    let Some(h) = h else {
        return Ok(PodReport {
            ip,
            ip6,
            found: false,
            host_veth: None,
            netns: None,
            ifname: None,
            pod: None,
        });
    };
    let master = h
        .master
        .and_then(|m| links.iter().find(|l| l.index == m))
        .map(|l| l.name.clone());
    let alias = h.alias.clone().unwrap_or_default();
    let ifname = podnet_conventions::parse_owner_alias(&alias)
        .map_or("eth0", |(_, ifname, _)| ifname)
        .to_string();
    let netns = podnet_conventions::alias_netns(&alias).map(String::from);
    let host = HostVeth {
        name: h.name.clone(),
        up: h.is_up(),
        operstate: h.operstate,
        mtu: h.mtu,
        master,
        mac: h.mac_string(),
    };
    let inside = match &netns {
        Some(path) => match podnet_netlink::Netns::open(path) {
            Ok(ns) => ns
                .run(|| inside_pod(&ifname))
                .map_err(Failure::from)?
                .map_err(Failure::from)?,
            Err(e) => PodInside {
                error: Some(format!("cannot open the pod's namespace {path}: {e}")),
                ..Default::default()
            },
        },
        None => PodInside {
            error: Some("the host veth's alias records no namespace".into()),
            ..Default::default()
        },
    };
    Ok(PodReport {
        ip,
        ip6,
        found: true,
        host_veth: Some(host),
        netns,
        ifname: Some(ifname),
        pod: Some(inside),
    })
}

/// Inside the pod's namespace (the caller has entered it): its interface, addresses,
/// routes and neighbours.
fn inside_pod(ifname: &str) -> podnet_netlink::Result<PodInside> {
    let mut p = Socket::route()?;
    let l = link::get_by_name(&mut p, ifname)?;
    let addrs: Vec<String> = match &l {
        Some(l) => podnet_netlink::addr::list(&mut p, Some(l.index))?
            .iter()
            .map(|a| format!("{}/{}", a.addr, a.prefix))
            .chain(
                podnet_netlink::addr::list6(&mut p, Some(l.index))?
                    .iter()
                    .map(|(_, a, len)| format!("{a}/{len}")),
            )
            .collect(),
        None => vec![],
    };
    let routes = route::list(&mut p)?
        .into_iter()
        .map(|r| RouteState {
            dst: route_dst(r.dst, r.prefix),
            gateway: r.gateway.map(IpAddr::V4),
            ..Default::default()
        })
        .collect();
    let neigh = neigh::list(&mut p)?
        .into_iter()
        .map(|n| NeighState {
            ip: IpAddr::V4(n.ip),
            mac: n.mac.map(|m| podnet_netlink::fmt_mac(&m)),
            dev: String::new(),
            state: n.state_name().to_string(),
        })
        .collect();
    // IPv6: global routes (not the link-local range every interface has) and
    // neighbours other than link-local and multicast ones.
    let routes6 = route::list6(&mut p)?
        .into_iter()
        .filter(|r| !(r.prefix == 64 && r.dst.segments()[0] == 0xfe80))
        .map(|r| RouteState {
            dst: if r.prefix == 0 {
                "default".into()
            } else {
                format!("{}/{}", r.dst, r.prefix)
            },
            gateway: r.gateway.map(IpAddr::V6),
            ..Default::default()
        })
        .collect();
    let neigh6 = neigh::list6(&mut p)?
        .into_iter()
        .map(|n| NeighState {
            ip: IpAddr::V6(n.ip),
            mac: n.mac.map(|m| podnet_netlink::fmt_mac(&m)),
            dev: String::new(),
            state: n.state_name().to_string(),
        })
        .collect();
    Ok(PodInside {
        error: None,
        link: l.as_ref().map(|l| PodLink {
            name: l.name.clone(),
            up: l.is_up(),
            mtu: l.mtu,
            mac: l.mac_string(),
        }),
        addrs,
        routes,
        neigh,
        routes6,
        neigh6,
    })
}

/// The last round's status, with what the kernel holds now where a drift would make it
/// lie: the underlay guard's filter and the masquerade table.
fn status_now(status: &Mutex<Status>) -> Status {
    let mut st = status.lock().unwrap().clone();
    if let Some(g) = st.underlay_guard.as_mut() {
        g.attached = crate::guard::attached_now(&g.device, g.program_id);
    }
    if let Some(m) = st.masquerade.as_mut() {
        // Each family's table as the kernel holds it now (IPv6's inside IPv4's).
        let now = |m: &podnet_api::MasqueradeStatus| {
            let want = crate::masquerade::Masquerade::from_status(m);
            crate::masquerade::status_now(true, want.as_ref())
        };
        let six = m.ipv6.take().map(|s6| match s6.on {
            true => Box::new(now(&s6)),
            false => s6,
        });
        if m.on {
            *m = now(m);
        }
        m.ipv6 = six;
    }
    st
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One raw line to the agent, one raw line back (what a foreign client sends).
    fn raw(path: &Path, line: &str) -> Value {
        let c = std::os::unix::net::UnixStream::connect(path).unwrap();
        let mut w = &c;
        writeln!(w, "{line}").unwrap();
        let mut answer = String::new();
        BufReader::new(&c).read_line(&mut answer).unwrap();
        serde_json::from_str(&answer).unwrap()
    }

    #[test]
    fn the_socket_is_root_only_and_refuses_oversized_requests() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("podnet-api-{}", std::process::id()));
        let path = dir.join(podnet_conventions::API_SOCKET_NAME);
        serve(
            &path,
            Arc::new(Mutex::new(Status::default())),
            Arc::new(Mutex::new(crate::policy::PolicyState {
                status: crate::policy::PolicyStatus {
                    error: Some("the last change failed".into()),
                    ..Default::default()
                },
                ..Default::default()
            })),
            Default::default(),
            Default::default(),
            "podnet.vxlan".into(),
            "podnet0".into(),
        )
        .unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let big = json!({"get": "status", "pad": "x".repeat(MAX_REQUEST)});
        let v = raw(&path, &big.to_string());
        assert!(
            v["error"].as_str().unwrap().contains("request longer than"),
            "{v}"
        );
        // A normal request still works after it, typed both ways.
        let c = Client::new(&path);
        // A reply with an `error` field of its own is a reply, not a refusal.
        let rev = c.policy_revision().unwrap();
        assert_eq!(rev.revision, 0);
        assert_eq!(rev.error.as_deref(), Some("the last change failed"));
        assert_eq!(c.status().unwrap().pid, 0);
        // A version the agent does not speak, and an unknown request, are refused.
        let v = raw(&path, r#"{"v":9,"get":"status"}"#);
        assert!(v["error"].as_str().unwrap().contains("version 1"), "{v}");
        let e = c
            .call::<Value>(&Request::Pod {
                ip: "10.244.0.99".parse().unwrap(),
            })
            .map(|v| v["found"].clone());
        // No such pod on this machine: answered, not refused.
        assert_eq!(e.unwrap(), json!(false));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
