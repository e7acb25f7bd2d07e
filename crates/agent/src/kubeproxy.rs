//! What kube-proxy does on this node to a packet for a Service, read from the rules it
//! programmed: in nftables mode the table `ip kube-proxy` (the maps `service-ips` and
//! `service-nodeports` and the chains they lead to), in iptables mode the nat table's
//! `KUBE-SERVICES` and `KUBE-NODEPORTS` chains and the `KUBE-SVC`/`KUBE-EXT`/`KUBE-SEP`
//! chains below them. `podnet trace` shows this as the translation hop.
//!
//! # Kernel objects it owns
//! None: this module only reads kube-proxy's rules (`nft list table`, `iptables-save`).

use crate::Failure;
use podnet_api::{ServiceBackend, ServicePort, ServiceReport};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

/// The Service ports this node's kube-proxy translates that match `target` (a
/// ClusterIP, `namespace/name` or `name` in `default`), `port` (0: any) and `protocol`
/// ("": any).
pub fn report(target: &str, port: u16, protocol: &str) -> Result<ServiceReport, Failure> {
    let (proxy, cmd, all) = if let Some(text) = run("nft", &["list", "table", "ip", "kube-proxy"])?
    {
        ("nftables", "nft list table ip kube-proxy", parse_nft(&text))
    } else if let Some(text) =
        run("iptables-save", &["-t", "nat"])?.filter(|t| t.contains("KUBE-SERVICES"))
    {
        ("iptables", "iptables-save -t nat", parse_iptables(&text))
    } else if which("iptables-save").is_none() {
        // kube-proxy may run in iptables mode: podnetd cannot tell without the tool.
        return Ok(ServiceReport {
            proxy: "unreadable".into(),
            ports: vec![],
            cmd: "iptables-save -t nat (not in podnetd's image); nft list table ip kube-proxy (absent)".into(),
        });
    } else {
        return Ok(ServiceReport {
            proxy: "none".into(),
            ports: vec![],
            cmd: "nft list table ip kube-proxy; iptables-save -t nat".into(),
        });
    };
    Ok(ServiceReport {
        proxy: proxy.into(),
        ports: all
            .into_iter()
            .filter(|p| matches(p, target, port, protocol))
            .collect(),
        cmd: cmd.into(),
    })
}

/// Whether Service port `p` is the one asked for.
pub fn matches(p: &ServicePort, target: &str, port: u16, protocol: &str) -> bool {
    let by_target = match target.parse::<Ipv4Addr>() {
        Ok(ip) => p.ip == ip && !p.node_port,
        Err(_) => {
            let full = if target.contains('/') {
                target.to_string()
            } else {
                format!("default/{target}")
            };
            p.service.starts_with(&format!("{full}/"))
        }
    };
    by_target && (port == 0 || p.port == port) && (protocol.is_empty() || p.protocol == protocol)
}

/// Where `cmd` is on PATH, if it is.
fn which(cmd: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(cmd))
            .find(|f| f.is_file())
    })
}

/// Runs a listing command; `None` when it fails (no such table, no such command).
fn run(cmd: &str, args: &[&str]) -> Result<Option<String>, Failure> {
    match Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
    {
        Ok(o) if o.status.success() => Ok(Some(String::from_utf8_lossy(&o.stdout).into_owned())),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("run {cmd}: {e}").into()),
    }
}

/// The chains of an `nft list table` listing: name → its rule lines; and the elements
/// of each map.
fn nft_blocks(text: &str) -> (BTreeMap<String, Vec<String>>, BTreeMap<String, Vec<String>>) {
    let (mut chains, mut maps) = (BTreeMap::new(), BTreeMap::new());
    let mut cur: Option<(bool, String, Vec<String>)> = None;
    let mut in_elements = false;
    for raw in text.lines() {
        let l = raw.trim();
        if let Some(name) = l.strip_prefix("chain ").and_then(|r| r.strip_suffix(" {")) {
            cur = Some((true, name.to_string(), vec![]));
            continue;
        }
        if let Some(name) = l.strip_prefix("map ").and_then(|r| r.strip_suffix(" {")) {
            cur = Some((false, name.to_string(), vec![]));
            continue;
        }
        let Some((is_chain, name, lines)) = cur.as_mut() else {
            continue;
        };
        if l == "}" && !in_elements {
            let (is_chain, name, lines) = cur.take().unwrap();
            if is_chain {
                chains.insert(name, lines);
            } else {
                maps.insert(name, lines);
            }
            continue;
        }
        if *is_chain {
            lines.push(l.to_string());
            continue;
        }
        let _ = name;
        // A map's elements: `elements = { a : b,` … `c : d }`, one or more a line.
        let mut body = l;
        if let Some(rest) = body.strip_prefix("elements = {") {
            in_elements = true;
            body = rest;
        }
        if !in_elements {
            continue;
        }
        if let Some(rest) = body.strip_suffix('}') {
            in_elements = false;
            body = rest;
        }
        lines.extend(
            body.split(',')
                .map(|e| e.trim().to_string())
                .filter(|e| !e.is_empty()),
        );
    }
    (chains, maps)
}

/// Where a chain sends a packet: the DNAT targets of its rules, following `goto` and
/// `jump` into kube-proxy's per-Service and per-endpoint chains.
fn nft_backends(
    chains: &BTreeMap<String, Vec<String>>,
    chain: &str,
    depth: u8,
) -> Vec<ServiceBackend> {
    let mut out = Vec::new();
    for l in chains.get(chain).map(Vec::as_slice).unwrap_or_default() {
        if let Some(i) = l.find("dnat ip to numgen") {
            // `… map { 0 : 10.244.0.2 . 53, 1 : 10.244.1.2 . 53 }`
            let m = &l[i..];
            if let (Some(a), Some(b)) = (m.find('{'), m.rfind('}')) {
                for e in m[a + 1..b].split(',') {
                    let v = e.split_once(':').map(|(_, v)| v).unwrap_or("");
                    let mut it = v.split(" . ").map(str::trim);
                    if let (Some(Ok(ip)), Some(Ok(port))) = (
                        it.next().map(str::parse::<Ipv4Addr>),
                        it.next().map(str::parse::<u16>),
                    ) {
                        out.push(ServiceBackend { ip, port });
                    }
                }
            }
        } else if let Some(i) = l.find("dnat to ") {
            let t = l[i + "dnat to ".len()..]
                .split_whitespace()
                .next()
                .unwrap_or("");
            if let Some((ip, port)) = t.split_once(':') {
                if let (Ok(ip), Ok(port)) = (ip.parse(), port.parse()) {
                    out.push(ServiceBackend { ip, port });
                }
            }
        } else if depth < 3 {
            for w in l.split(|c: char| c.is_whitespace() || c == ',' || c == '}') {
                if chains.contains_key(w)
                    && (w.starts_with("service-")
                        || w.starts_with("endpoint-")
                        || w.starts_with("external-"))
                    && w != chain
                    && (l.contains(&format!("goto {w}")) || l.contains(&format!("jump {w}")))
                {
                    out.extend(nft_backends(chains, w, depth + 1));
                }
            }
        }
    }
    out.sort_by_key(|b| (u32::from(b.ip), b.port));
    out.dedup();
    out
}

/// A protocol as nft prints it: by name, or by number where the system has no
/// /etc/protocols (podnet's image).
fn proto_name(p: &str) -> String {
    match p {
        "6" => "tcp".into(),
        "17" => "udp".into(),
        "132" => "sctp".into(),
        p => p.to_string(),
    }
}

/// The Service ports of a `nft list table ip kube-proxy` listing.
pub fn parse_nft(text: &str) -> Vec<ServicePort> {
    let (chains, maps) = nft_blocks(text);
    let mut out = Vec::new();
    let target = |e: &str| {
        e.split_once(": goto ")
            .or_else(|| e.split_once(": jump "))
            .map(|(k, c)| (k.trim().to_string(), c.trim().to_string()))
    };
    // The Service's name: what follows the chain's hash (`service-HASH-ns/name/proto/port`).
    let name = |c: &str| {
        c.split_once('-')
            .and_then(|(_, r)| r.split_once('-'))
            .map(|(_, n)| n.to_string())
            .unwrap_or_else(|| c.to_string())
    };
    for e in maps
        .get("service-ips")
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        let Some((k, chain)) = target(e) else {
            continue;
        };
        let f: Vec<&str> = k.split(" . ").map(str::trim).collect();
        let [ip, proto, port] = f[..] else { continue };
        let (Ok(ip), Ok(port)) = (ip.parse(), port.parse()) else {
            continue;
        };
        out.push(ServicePort {
            service: name(&chain),
            ip,
            port,
            protocol: proto_name(proto),
            node_port: false,
            backends: nft_backends(&chains, &chain, 0),
            rule: format!("chain {chain}"),
        });
    }
    for e in maps
        .get("service-nodeports")
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        let Some((k, chain)) = target(e) else {
            continue;
        };
        let Some((proto, port)) = k.split_once(" . ") else {
            continue;
        };
        let Ok(port) = port.trim().parse() else {
            continue;
        };
        out.push(ServicePort {
            service: name(&chain),
            ip: Ipv4Addr::UNSPECIFIED,
            port,
            protocol: proto_name(proto.trim()),
            node_port: true,
            backends: nft_backends(&chains, &chain, 0),
            rule: format!("chain {chain}"),
        });
    }
    out
}

/// The value of `--flag VALUE` (or `--flag "quoted value"`) in an iptables-save rule.
fn flag<'a>(rule: &'a str, f: &str) -> Option<&'a str> {
    let i = rule.find(&format!("{f} "))? + f.len() + 1;
    let rest = &rule[i..];
    if let Some(q) = rest.strip_prefix('"') {
        return q.split('"').next();
    }
    rest.split_whitespace().next()
}

/// The Service ports of an `iptables-save -t nat` listing (kube-proxy's iptables mode).
pub fn parse_iptables(text: &str) -> Vec<ServicePort> {
    let mut rules: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for l in text.lines() {
        if let Some(r) = l.strip_prefix("-A ") {
            if let Some((chain, _)) = r.split_once(' ') {
                rules.entry(chain).or_default().push(r);
            }
        }
    }
    fn backends(rules: &BTreeMap<&str, Vec<&str>>, chain: &str, depth: u8) -> Vec<ServiceBackend> {
        let mut out = Vec::new();
        for r in rules.get(chain).map(Vec::as_slice).unwrap_or_default() {
            if let Some(to) = flag(r, "--to-destination") {
                if let Some((ip, port)) = to.split_once(':') {
                    if let (Ok(ip), Ok(port)) = (ip.parse(), port.parse()) {
                        out.push(ServiceBackend { ip, port });
                    }
                }
            } else if let Some(j) = flag(r, "-j") {
                if depth < 3
                    && (j.starts_with("KUBE-SVC-")
                        || j.starts_with("KUBE-SEP-")
                        || j.starts_with("KUBE-EXT-"))
                {
                    out.extend(backends(rules, j, depth + 1));
                }
            }
        }
        out.sort_by_key(|b| (u32::from(b.ip), b.port));
        out.dedup();
        out
    }
    let mut out = Vec::new();
    for (chain, node_port) in [("KUBE-SERVICES", false), ("KUBE-NODEPORTS", true)] {
        for r in rules.get(chain).map(Vec::as_slice).unwrap_or_default() {
            let (Some(j), Some(proto), Some(port)) =
                (flag(r, "-j"), flag(r, "-p"), flag(r, "--dport"))
            else {
                continue;
            };
            if !(j.starts_with("KUBE-SVC-") || j.starts_with("KUBE-EXT-")) {
                continue;
            }
            let ip = if node_port {
                Some(Ipv4Addr::UNSPECIFIED)
            } else {
                flag(r, "-d").and_then(|d| d.trim_end_matches("/32").parse().ok())
            };
            let (Some(ip), Ok(port)) = (ip, port.parse()) else {
                continue;
            };
            // `ns/name:port-name cluster IP` → `ns/name/proto/port-name`
            let comment = flag(r, "--comment").unwrap_or("");
            let id = comment.split_whitespace().next().unwrap_or("");
            let (svc, pname) = id.split_once(':').unwrap_or((id, ""));
            out.push(ServicePort {
                service: format!("{svc}/{proto}/{pname}"),
                ip,
                port,
                protocol: proto.to_string(),
                node_port,
                backends: backends(&rules, j, 0),
                rule: format!("chain {j}"),
            });
        }
    }
    // kube-proxy writes a NodePort twice (any address, and localhost): once is enough.
    out.dedup_by(|a, b| a.node_port && b.node_port && a.port == b.port && a.protocol == b.protocol);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The one port of kube-dns's UDP 53 at 10.96.0.10 among `ports`.
    fn the_dns_port(ports: &[ServicePort]) -> &ServicePort {
        let dns: Vec<&ServicePort> = ports
            .iter()
            .filter(|p| matches(p, "10.96.0.10", 53, "udp"))
            .collect();
        assert_eq!(dns.len(), 1, "{ports:?}");
        assert_eq!(dns[0].service, "kube-system/kube-dns/udp/dns");
        dns[0]
    }

    /// `nft list table ip kube-proxy` as recorded on a real-node lab (kube-proxy
    /// v1.37.2, nftables mode) while the upstream Netpol suite ran.
    const NFT: &str = include_str!("../tests/data/kube-proxy-nft.txt");

    #[test]
    fn reads_kube_proxy_nftables_rules() {
        let ports = parse_nft(NFT);
        let dns = the_dns_port(&ports);
        assert_eq!(
            dns.backends,
            [
                ServiceBackend {
                    ip: "10.244.0.2".parse().unwrap(),
                    port: 53
                },
                ServiceBackend {
                    ip: "10.244.1.2".parse().unwrap(),
                    port: 53
                },
            ]
        );
        assert_eq!(
            dns.rule,
            "chain service-FY5PMXPG-kube-system/kube-dns/udp/dns"
        );
        // By name, every port; a single endpoint.
        let api: Vec<&ServicePort> = ports
            .iter()
            .filter(|p| matches(p, "kubernetes", 0, ""))
            .collect();
        assert_eq!(api.len(), 1);
        assert_eq!(
            api[0].backends,
            [ServiceBackend {
                ip: "192.168.1.2".parse().unwrap(),
                port: 6443
            }]
        );
        assert_eq!(
            ports
                .iter()
                .filter(|p| matches(p, "kube-system/kube-dns", 0, ""))
                .count(),
            3
        );
        assert!(
            ports.iter().all(|p| !matches(p, "kube-dns", 0, "")),
            "kube-dns is not in default"
        );
        // Where nft has no /etc/protocols (podnet's image) it prints numbers.
        let numeric = NFT
            .replace(" . tcp . ", " . 6 . ")
            .replace(" . udp . ", " . 17 . ");
        assert_eq!(parse_nft(&numeric), ports);
    }

    /// `iptables-save -t nat` as recorded on a real-node lab (kube-proxy v1.37.2,
    /// iptables mode) with the Services of `real_services.rs`.
    const IPT: &str = include_str!("../tests/data/kube-proxy-iptables.txt");

    #[test]
    fn reads_kube_proxy_iptables_rules() {
        let ports = parse_iptables(IPT);
        let ips: Vec<String> = the_dns_port(&ports)
            .backends
            .iter()
            .map(|b| format!("{}:{}", b.ip, b.port))
            .collect();
        assert_eq!(ips, ["10.244.0.2:53", "10.244.1.2:53"]);
        let server: Vec<&ServicePort> = ports
            .iter()
            .filter(|p| matches(p, "server", 80, "tcp"))
            .collect();
        assert_eq!(server.len(), 1, "{ports:?}");
        assert_eq!(server[0].ip, "10.96.136.64".parse::<Ipv4Addr>().unwrap());
        assert_eq!(
            server[0].backends,
            [ServiceBackend {
                ip: "10.244.1.3".parse().unwrap(),
                port: 8080
            }]
        );
        // The NodePorts, once each (kube-proxy writes a second rule for localhost).
        let np: Vec<&ServicePort> = ports
            .iter()
            .filter(|p| p.node_port && p.port == 30080)
            .collect();
        assert_eq!(np.len(), 1, "{ports:?}");
        assert_eq!(np[0].service, "default/server-np/tcp/");
        assert_eq!(np[0].backends.len(), 1, "{np:?}");
    }
}
