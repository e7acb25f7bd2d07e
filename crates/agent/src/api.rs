//! The agent's local API: a Unix socket (default `/run/podnet/podnetd.sock`) that
//! answers one JSON request per line with one JSON line.
//!
//! - `{"get":"status"}`: the agent's view — node, lease, backend, peers, last sync.
//! - `{"get":"state"}`: the node's own kernel state as data — its links, the routes,
//!   neighbour and FDB entries podnet manages, forwarding — read when asked, so a
//!   caller (`podnet trace`, `podnet doctor`, the lab) sees what the kernel has, not
//!   what the agent believes.
//! - `{"get":"pod","ip":…}`: one pod on this node: its host veth, and inside its own
//!   namespace its link, addresses, routes and neighbours.
//! - `{"get":"ping","ip":…,"size":N}`: an ICMP echo with DF set, sent from this node
//!   (see [`crate::probe`]).
//! - `{"get":"policy"}`: the NetworkPolicy datapath — the revision of the objects it
//!   reflects, each local pod's verdicts per direction; `{"get":"policy-stats"}` adds
//!   the packets refused per pod and direction, read from the kernel's counters;
//!   `{"get":"policy-revision"}` only the revision (what waiting for a change polls);
//!   `{"get":"policy-versions","keys":["Pod ns/name",…]}` the version (Kubernetes
//!   `resourceVersion`) of each named object the programmed verdicts reflect.
//! - `{"get":"verdict","ip":…,"peer":…,"direction":"ingress"|"egress","protocol":"TCP","port":N}`:
//!   what the programmed tables of local pod `ip` say of traffic with `peer`.

use crate::policy::PolicyStatus;
use crate::{Result, Status};
use podnet_netlink::{link, neigh, route, Socket};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::net::Ipv4Addr;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 64;
/// Longest request line, in bytes.
pub const MAX_REQUEST: usize = 64 * 1024;

/// Starts serving on `path` in a background thread (in the agent's namespace).
pub fn serve(
    path: &Path,
    status: Arc<Mutex<Status>>,
    policy: Arc<Mutex<PolicyStatus>>,
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
            let (status, policy, vxlan_dev, bridge, open) = (
                status.clone(),
                policy.clone(),
                vxlan_dev.clone(),
                bridge.clone(),
                open.clone(),
            );
            std::thread::spawn(move || {
                let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                let mut line = String::new();
                let read = BufReader::new(std::io::Read::take(&conn, MAX_REQUEST as u64 + 1))
                    .read_line(&mut line);
                let reply = match read {
                    Err(_) => None,
                    Ok(_) if line.len() > MAX_REQUEST => {
                        Some(json!({"error": format!("request longer than {MAX_REQUEST} bytes")}))
                    }
                    Ok(_) => {
                        let req: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
                        Some(answer(&req, &status, &policy, &vxlan_dev, &bridge))
                    }
                };
                if let Some(r) = reply {
                    let mut w = &conn;
                    let _ = writeln!(w, "{r}");
                }
                // Closing with unread input would reset the connection before the client
                // reads the answer: drain what is left of an oversized request (bounded).
                let _ = conn.shutdown(std::net::Shutdown::Write);
                let _ = std::io::copy(
                    &mut std::io::Read::take(&conn, 1 << 20),
                    &mut std::io::sink(),
                );
                open.fetch_sub(1, SeqCst);
            });
        }
    });
    Ok(())
}

fn answer(
    req: &Value,
    status: &Mutex<Status>,
    policy: &Mutex<PolicyStatus>,
    vxlan_dev: &str,
    bridge: &str,
) -> Value {
    let ip = |k: &str| {
        req.get(k)
            .and_then(Value::as_str)
            .and_then(|v| v.parse::<Ipv4Addr>().ok())
    };
    match req.get("get").and_then(Value::as_str) {
        Some("status") => serde_json::to_value(&*status.lock().unwrap()).unwrap_or(Value::Null),
        Some("policy") => serde_json::to_value(&*policy.lock().unwrap()).unwrap_or(Value::Null),
        Some("policy-revision") => {
            let st = policy.lock().unwrap();
            json!({"datapath": st.datapath, "revision": st.revision, "error": st.error})
        }
        Some("policy-versions") => {
            // Which version of each named object the programmed verdicts reflect
            // (null: none, or the object is absent).
            let st = policy.lock().unwrap();
            let keys = req.get("keys").and_then(Value::as_array);
            let versions: serde_json::Map<String, Value> = keys
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .map(|k| (k.to_string(), json!(st.versions.get(k))))
                .collect();
            json!({"datapath": st.datapath, "revision": st.revision, "error": st.error, "versions": versions})
        }
        Some("policy-stats") => {
            let st = policy.lock().unwrap().clone();
            let mut v = serde_json::to_value(&st).unwrap_or(Value::Null);
            match crate::policy::denied(&st) {
                Ok((denied, closed)) => {
                    v["denied"] = json!(denied);
                    v["closed_packets"] = json!(closed);
                }
                Err(e) => v["denied_error"] = json!(e),
            }
            v
        }
        Some("verdict") => {
            let dir = match req.get("direction").and_then(Value::as_str) {
                Some("ingress") => Some(podnet_policy::Direction::Ingress),
                Some("egress") => Some(podnet_policy::Direction::Egress),
                _ => None,
            };
            let proto = req
                .get("protocol")
                .and_then(Value::as_str)
                .map(|p| podnet_policy::Proto::parse(p).unwrap_or(podnet_policy::Proto::Other(1)));
            let port = req.get("port").and_then(Value::as_u64).unwrap_or(0) as u16;
            match (ip("ip"), ip("peer"), dir, proto) {
                (Some(a), Some(peer), Some(d), Some(p)) => {
                    let st = policy.lock().unwrap().clone();
                    serde_json::to_value(crate::policy::verdict(&st, a, peer, d, p, port))
                        .unwrap_or(Value::Null)
                }
                _ => {
                    json!({"error": "give {\"get\":\"verdict\",\"ip\":pod,\"peer\":address,\"direction\":\"ingress\"|\"egress\",\"protocol\":\"TCP\",\"port\":80}"})
                }
            }
        }
        Some("state") => {
            state(vxlan_dev, bridge).unwrap_or_else(|e| json!({"error": e.to_string()}))
        }
        Some("pod") => match ip("ip") {
            Some(a) => pod(a).unwrap_or_else(|e| json!({"error": e})),
            None => {
                json!({"error": "give the pod's address: {\"get\":\"pod\",\"ip\":\"10.244.0.5\"}"})
            }
        },
        Some("ping") => match ip("ip") {
            Some(a) => {
                let size = req
                    .get("size")
                    .and_then(Value::as_u64)
                    .unwrap_or(56)
                    .min(65_507) as usize;
                json!({"ip": a.to_string(), "size": size, "result": crate::probe::ping(a, size, Duration::from_millis(700))})
            }
            None => {
                json!({"error": "give the address to ping: {\"get\":\"ping\",\"ip\":\"…\",\"size\":1422}"})
            }
        },
        _ => {
            json!({"error": "unknown request; send {\"get\":\"status\"}, {\"get\":\"state\"}, {\"get\":\"pod\",\"ip\":…}, {\"get\":\"ping\",\"ip\":…,\"size\":N}, {\"get\":\"policy\"}, {\"get\":\"policy-stats\"} or {\"get\":\"verdict\",…}"})
        }
    }
}

/// The node's kernel state, as `ip`/`bridge` would show it, as data.
pub fn state(vxlan_dev: &str, bridge: &str) -> podnet_netlink::Result<Value> {
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
    let routes: Vec<Value> = route::list(&mut s)?
        .into_iter()
        .map(|r| {
            json!({
                "dst": if r.prefix == 0 { "default".to_string() } else { format!("{}/{}", r.dst, r.prefix) },
                "gateway": r.gateway.map(|g| g.to_string()),
                "dev": r.oif.map(name_of),
                "onlink": r.onlink,
                "protocol": r.protocol,
            })
        })
        .collect();
    let neighs: Vec<Value> = neigh::list(&mut s)?
        .into_iter()
        .map(|n| json!({"ip": n.ip.to_string(), "mac": n.mac.map(|m| podnet_netlink::fmt_mac(&m)), "dev": name_of(n.index), "state": n.state_name()}))
        .collect();
    let fdb: Vec<Value> = neigh::fdb_list(&mut s)?
        .into_iter()
        .filter(|f| Some(f.index) == vx)
        .map(|f| json!({"mac": podnet_netlink::fmt_mac(&f.mac), "dst": f.dst.map(|d| d.to_string()), "dev": name_of(f.index)}))
        .collect();
    let link_json: Vec<Value> = links
        .iter()
        .map(|l| {
            json!({
                "name": l.name, "index": l.index, "kind": l.kind, "up": l.is_up(), "mtu": l.mtu,
                "mac": l.mac_string(), "master": l.master.map(name_of),
                "vxlan": l.vxlan.as_ref().map(|v| json!({"vni": v.vni, "port": v.port, "local": v.local.map(|a| a.to_string()), "learning": v.learning})),
            })
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
    let mut rp = serde_json::Map::new();
    for dev in ["all", "default", vxlan_dev, bridge] {
        if let Some(v) = num(&format!("/proc/sys/net/ipv4/conf/{dev}/rp_filter")) {
            rp.insert(dev.to_string(), json!(v));
        }
    }
    Ok(json!({
        "bridge": bridge, "vxlan_dev": vxlan_dev,
        "links": link_json, "routes": routes, "neigh": neighs, "fdb": fdb, "forwarding": forwarding,
        "conntrack": {"count": num("/proc/sys/net/netfilter/nf_conntrack_count"), "max": num("/proc/sys/net/netfilter/nf_conntrack_max")},
        "rp_filter": rp,
    }))
}

/// Asks the agent behind `path` one question; `get` is `status` or `state`.
/// Whether the agent on `path` has programmed its node: a sync completed, the policy
/// datapath holds verdicts (or enforces none), the datastore reports no problem.
pub fn ready(path: &Path) -> Result<(), String> {
    let st =
        ask(path, "status").map_err(|e| format!("no agent answers on {}: {e}", path.display()))?;
    if st["last_sync"].as_u64().unwrap_or(0) == 0 {
        return Err("the node's routes are not programmed yet".into());
    }
    if let Some(p) = st["datastore_problems"]
        .as_array()
        .filter(|p| !p.is_empty())
    {
        return Err(format!(
            "datastore: {}",
            p.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join("; ")
        ));
    }
    let pol = ask(path, "policy-revision").map_err(|e| e.to_string())?;
    if pol["datapath"] != "none" && pol["revision"].as_u64().unwrap_or(0) == 0 {
        return Err(format!(
            "the NetworkPolicy datapath holds no verdicts yet{}",
            pol["error"]
                .as_str()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        ));
    }
    Ok(())
}

pub fn ask(path: &Path, get: &str) -> std::io::Result<Value> {
    request(path, &json!({"get": get}))
}

/// Sends the agent behind `path` one request.
pub fn request(path: &Path, req: &Value) -> std::io::Result<Value> {
    let c = std::os::unix::net::UnixStream::connect(path)?;
    c.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
    let mut w = &c;
    writeln!(w, "{req}")?;
    let mut line = String::new();
    BufReader::new(&c).read_line(&mut line)?;
    serde_json::from_str(&line).map_err(std::io::Error::other)
}

/// The pod with address `ip` on this node, as its own namespace and its host veth show
/// it. The host veth is found by its MAC (podnet derives it from the pod's IP), the
/// pod's namespace from the veth's alias.
pub fn pod(ip: Ipv4Addr) -> Result<Value, String> {
    let mut s = Socket::route().map_err(|e| e.to_string())?;
    let mac = podnet_conventions::host_mac(ip);
    let links = link::list(&mut s).map_err(|e| e.to_string())?;
    let Some(h) = links.iter().find(|l| l.mac == mac) else {
        return Ok(json!({"ip": ip.to_string(), "found": false}));
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
    let host = json!({"name": h.name, "up": h.is_up(), "operstate": h.operstate, "mtu": h.mtu, "master": master, "mac": h.mac_string()});
    let inside = match &netns {
        Some(path) => match podnet_netlink::Netns::open(path) {
            Ok(ns) => ns
                .run(|| -> podnet_netlink::Result<Value> {
                    let mut p = Socket::route()?;
                    let l = link::get_by_name(&mut p, &ifname)?;
                    let addrs: Vec<String> = match &l {
                        Some(l) => podnet_netlink::addr::list(&mut p, Some(l.index))?.iter().map(|a| format!("{}/{}", a.addr, a.prefix)).collect(),
                        None => vec![],
                    };
                    let routes: Vec<Value> = route::list(&mut p)?
                        .into_iter()
                        .map(|r| json!({"dst": if r.prefix == 0 { "default".to_string() } else { format!("{}/{}", r.dst, r.prefix) }, "gateway": r.gateway.map(|g| g.to_string())}))
                        .collect();
                    let neighs: Vec<Value> = neigh::list(&mut p)?
                        .into_iter()
                        .map(|n| json!({"ip": n.ip.to_string(), "mac": n.mac.map(|m| podnet_netlink::fmt_mac(&m)), "state": n.state_name()}))
                        .collect();
                    Ok(json!({
                        "link": l.as_ref().map(|l| json!({"name": l.name, "up": l.is_up(), "mtu": l.mtu, "mac": l.mac_string()})),
                        "addrs": addrs, "routes": routes, "neigh": neighs,
                    }))
                })
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?,
            Err(e) => json!({"error": format!("cannot open the pod's namespace {path}: {e}")}),
        },
        None => json!({"error": "the host veth's alias records no namespace"}),
    };
    Ok(
        json!({"ip": ip.to_string(), "found": true, "host_veth": host, "netns": netns, "ifname": ifname, "pod": inside}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_socket_is_root_only_and_refuses_oversized_requests() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("podnet-api-{}", std::process::id()));
        let path = dir.join("podnetd.sock");
        serve(
            &path,
            Arc::new(Mutex::new(Status::default())),
            Arc::new(Mutex::new(PolicyStatus::default())),
            "podnet.vxlan".into(),
            "podnet0".into(),
        )
        .unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let big = json!({"get": "status", "pad": "x".repeat(MAX_REQUEST)});
        let v = request(&path, &big).unwrap();
        assert!(
            v["error"].as_str().unwrap().contains("request longer than"),
            "{v}"
        );
        // A normal request still works after it.
        let v = request(&path, &json!({"get": "policy-revision"})).unwrap();
        assert_eq!(v["revision"], 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
