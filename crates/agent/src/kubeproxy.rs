//! What kube-proxy does on this node to a packet for a Service, read from the rules it
//! programmed: in nftables mode the table `ip kube-proxy` (the maps `service-ips` and
//! `service-nodeports` and the chains they lead to), in iptables mode the nat table's
//! `KUBE-SERVICES` and `KUBE-NODEPORTS` chains and the `KUBE-SVC`/`KUBE-EXT`/`KUBE-SEP`
//! chains below them. A dual-stack node's IPv6 Services are in a table of their own
//! (`ip6 kube-proxy`, or `ip6tables-save`), read when the IPv6 side is asked for.
//! `podnet trace` shows this as the translation hop.
//!
//! # Kernel objects it owns
//! None: this module only reads kube-proxy's rules (`nft list table`, `iptables-save`).

use crate::Failure;
use podnet_api::{ServiceBackend, ServicePort, ServiceReport};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::{Command, Stdio};

/// The Service ports this node's kube-proxy translates that match `target` (a
/// ClusterIP, `namespace/name` or `name` in `default`), `port` (0: any) and `protocol`
/// ("": any), from its IPv6 rules when `ipv6` (or `target` is an IPv6 address).
pub fn report(
    target: &str,
    port: u16,
    protocol: &str,
    ipv6: bool,
) -> Result<ServiceReport, Failure> {
    let ipv6 = ipv6 || target.parse::<Ipv6Addr>().is_ok();
    let (family, save) = if ipv6 {
        ("ip6", "ip6tables-save")
    } else {
        ("ip", "iptables-save")
    };
    let nft_cmd = format!("nft list table {family} kube-proxy");
    let ipt_cmd = format!("{save} -t nat");
    let (proxy, cmd, all) = if let Some(text) =
        run("nft", &["list", "table", family, "kube-proxy"])?
    {
        ("nftables", nft_cmd, parse_nft(&text, ipv6))
    } else if let Some(text) = run(save, &["-t", "nat"])?.filter(|t| t.contains("KUBE-SERVICES")) {
        ("iptables", ipt_cmd, parse_iptables(&text, ipv6))
    } else if which(save).is_none() {
        // kube-proxy may run in iptables mode: podnetd cannot tell without the tool.
        return Ok(ServiceReport {
            proxy: "unreadable".into(),
            ports: vec![],
            cmd: format!("{ipt_cmd} (not in podnetd's image); {nft_cmd} (absent)"),
        });
    } else {
        return Ok(ServiceReport {
            proxy: "none".into(),
            ports: vec![],
            cmd: format!("{nft_cmd}; {ipt_cmd}"),
        });
    };
    Ok(ServiceReport {
        proxy: proxy.into(),
        ports: all
            .into_iter()
            .filter(|p| matches(p, target, port, protocol))
            .collect(),
        cmd,
    })
}

/// The address a NodePort matches: any of the family's.
fn any(ipv6: bool) -> IpAddr {
    if ipv6 {
        Ipv6Addr::UNSPECIFIED.into()
    } else {
        Ipv4Addr::UNSPECIFIED.into()
    }
}

/// A backend as kube-proxy writes it: `10.244.1.3:8080`, `[fd00:10:244:1::3]:8080`.
fn backend(t: &str) -> Option<ServiceBackend> {
    t.parse::<SocketAddr>().ok().map(|a| ServiceBackend {
        ip: a.ip(),
        port: a.port(),
    })
}

/// Whether Service port `p` is the one asked for.
pub fn matches(p: &ServicePort, target: &str, port: u16, protocol: &str) -> bool {
    let by_target = match target.parse::<IpAddr>() {
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
        if let Some(i) = l.find(" to numgen ").filter(|_| l.contains("dnat ")) {
            // `… dnat ip to numgen random mod 2 map { 0 : 10.244.0.2 . 53, 1 : 10.244.1.2 . 53 }`
            // (`dnat ip6 to …` with `fd00:10:244:1::2 . 53`)
            let m = &l[i..];
            if let (Some(a), Some(b)) = (m.find('{'), m.rfind('}')) {
                for e in m[a + 1..b].split(',') {
                    let v = e.split_once(" : ").map(|(_, v)| v).unwrap_or("");
                    let mut it = v.split(" . ").map(str::trim);
                    if let (Some(Ok(ip)), Some(Ok(port))) = (
                        it.next().map(str::parse::<IpAddr>),
                        it.next().map(str::parse::<u16>),
                    ) {
                        out.push(ServiceBackend { ip, port });
                    }
                }
            }
        } else if let Some(i) = l.find("dnat to ") {
            // `dnat to 10.244.1.3:8080`, `dnat to [fd00:10:244:1::3]:8080`
            let t = l[i + "dnat to ".len()..]
                .split_whitespace()
                .next()
                .unwrap_or("");
            out.extend(backend(t));
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
    out.sort_by_key(|b| (b.ip, b.port));
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

/// The Service ports of a `nft list table ip kube-proxy` listing (`ip6 kube-proxy`
/// when `ipv6`).
pub fn parse_nft(text: &str, ipv6: bool) -> Vec<ServicePort> {
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
            ip: any(ipv6),
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

/// The Service ports of an `iptables-save -t nat` listing (kube-proxy's iptables mode;
/// `ip6tables-save` when `ipv6`).
pub fn parse_iptables(text: &str, ipv6: bool) -> Vec<ServicePort> {
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
                out.extend(backend(to));
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
        out.sort_by_key(|b| (b.ip, b.port));
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
                Some(any(ipv6))
            } else {
                flag(r, "-d").and_then(|d| {
                    d.split_once('/')
                        .map_or(d, |(a, _)| a)
                        .parse::<IpAddr>()
                        .ok()
                })
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

    /// Backends from `ip:port` (`[ip]:port`).
    fn eps(all: &[&str]) -> Vec<ServiceBackend> {
        all.iter().map(|a| backend(a).unwrap()).collect()
    }

    /// The one port among `ports` that matches, and its name.
    fn the_port<'a>(
        ports: &'a [ServicePort],
        (target, port, protocol): (&str, u16, &str),
        service: &str,
    ) -> &'a ServicePort {
        let one: Vec<&ServicePort> = ports
            .iter()
            .filter(|p| matches(p, target, port, protocol))
            .collect();
        assert_eq!(one.len(), 1, "{ports:?}");
        assert_eq!(one[0].service, service);
        one[0]
    }

    /// The one port of kube-dns's UDP 53 at 10.96.0.10 among `ports`.
    fn the_dns_port(ports: &[ServicePort]) -> &ServicePort {
        the_port(
            ports,
            ("10.96.0.10", 53, "udp"),
            "kube-system/kube-dns/udp/dns",
        )
    }

    /// `nft list table ip kube-proxy` as recorded on a real-node lab (kube-proxy
    /// v1.37.2, nftables mode) while the upstream Netpol suite ran.
    const NFT: &str = include_str!("../tests/data/kube-proxy-nft.txt");

    #[test]
    fn reads_kube_proxy_nftables_rules() {
        let ports = parse_nft(NFT, false);
        let dns = the_dns_port(&ports);
        assert_eq!(dns.backends, eps(&["10.244.0.2:53", "10.244.1.2:53"]));
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
        assert_eq!(api[0].backends, eps(&["192.168.1.2:6443"]));
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
        assert_eq!(parse_nft(&numeric, false), ports);
    }

    /// `iptables-save -t nat` as recorded on a real-node lab (kube-proxy v1.37.2,
    /// iptables mode) with the Services of `real_services.rs`.
    const IPT: &str = include_str!("../tests/data/kube-proxy-iptables.txt");

    #[test]
    fn reads_kube_proxy_iptables_rules() {
        let ports = parse_iptables(IPT, false);
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
        assert_eq!(server[0].ip, "10.96.136.64".parse::<IpAddr>().unwrap());
        assert_eq!(server[0].backends, eps(&["10.244.1.3:8080"]));
        // The NodePorts, once each (kube-proxy writes a second rule for localhost).
        let np: Vec<&ServicePort> = ports
            .iter()
            .filter(|p| p.node_port && p.port == 30080)
            .collect();
        assert_eq!(np.len(), 1, "{ports:?}");
        assert_eq!(np[0].service, "default/server-np/tcp/");
        assert_eq!(np[0].backends.len(), 1, "{np:?}");
    }

    /// `nft list table ip6 kube-proxy` as recorded on a dual-stack real-node lab
    /// (kube-proxy v1.37.2, nftables mode) with a dual-stack Service `rec6/web` (two
    /// IPv6 endpoints, TCP 80 and UDP 53) and an IPv6 NodePort Service `rec6/one` (one).
    const NFT6: &str = include_str!("../tests/data/kube-proxy-nft6.txt");

    #[test]
    fn reads_kube_proxy_ipv6_nftables_rules() {
        let ports = parse_nft(NFT6, true);
        let web = the_port(&ports, ("fd00:10:96::326c", 80, "tcp"), "rec6/web/tcp/http");
        let b: Vec<String> = web
            .backends
            .iter()
            .map(|b| SocketAddr::new(b.ip, b.port).to_string())
            .collect();
        assert_eq!(b, ["[fd00:10:244:1::99]:8080", "[fd00:10:244:2::98]:8080"]);
        // By name: both ports; a single endpoint (`dnat to [addr]:port`); the NodePort
        // matches any IPv6 address.
        assert_eq!(
            ports
                .iter()
                .filter(|p| matches(p, "rec6/web", 0, ""))
                .count(),
            2
        );
        let one: Vec<&ServicePort> = ports
            .iter()
            .filter(|p| p.service == "rec6/one/tcp/http")
            .collect();
        assert_eq!(one.len(), 2, "{ports:?}");
        for p in one {
            assert_eq!(p.backends, eps(&["[fd00:10:244:3::97]:8081"]));
            assert_eq!(
                p.ip,
                if p.node_port {
                    "::".parse::<IpAddr>().unwrap()
                } else {
                    "fd00:10:96::3343".parse().unwrap()
                }
            );
        }
    }

    /// kube-proxy's iptables mode writes IPv6 rules as its IPv4 ones (the lines of the
    /// IPv4 recording above with IPv6 addresses; the IPv6 endpoint in brackets).
    #[test]
    fn reads_kube_proxy_ipv6_iptables_rules() {
        let text = r#"*nat
-A KUBE-SERVICES -d fd00:10:96::326c/128 -p tcp -m comment --comment "rec6/web:http cluster IP" -m tcp --dport 80 -j KUBE-SVC-GWKM3VZSAAAAAAAA
-A KUBE-NODEPORTS -p tcp -m comment --comment "rec6/web:http" -m tcp --dport 30925 -j KUBE-EXT-GWKM3VZSAAAAAAAA
-A KUBE-EXT-GWKM3VZSAAAAAAAA -j KUBE-SVC-GWKM3VZSAAAAAAAA
-A KUBE-SVC-GWKM3VZSAAAAAAAA ! -s fd00:10:244::/56 -d fd00:10:96::326c/128 -p tcp -m comment --comment "rec6/web:http cluster IP" -m tcp --dport 80 -j KUBE-MARK-MASQ
-A KUBE-SVC-GWKM3VZSAAAAAAAA -m comment --comment "rec6/web:http -> [fd00:10:244:2::98]:8080" -m statistic --mode random --probability 0.50000000000 -j KUBE-SEP-BBBBBBBBBBBBBBBB
-A KUBE-SVC-GWKM3VZSAAAAAAAA -m comment --comment "rec6/web:http -> [fd00:10:244:1::99]:8080" -j KUBE-SEP-CCCCCCCCCCCCCCCC
-A KUBE-SEP-BBBBBBBBBBBBBBBB -s fd00:10:244:2::98/128 -m comment --comment "rec6/web:http" -j KUBE-MARK-MASQ
-A KUBE-SEP-BBBBBBBBBBBBBBBB -p tcp -m comment --comment "rec6/web:http" -m tcp -j DNAT --to-destination [fd00:10:244:2::98]:8080
-A KUBE-SEP-CCCCCCCCCCCCCCCC -p tcp -m comment --comment "rec6/web:http" -m tcp -j DNAT --to-destination [fd00:10:244:1::99]:8080
COMMIT
"#;
        let ports = parse_iptables(text, true);
        assert_eq!(ports.len(), 2, "{ports:?}");
        let web = the_port(&ports, ("fd00:10:96::326c", 80, "tcp"), "rec6/web/tcp/http");
        assert_eq!(
            web.backends,
            eps(&["[fd00:10:244:1::99]:8080", "[fd00:10:244:2::98]:8080"])
        );
        let np = ports.iter().find(|p| p.node_port).unwrap();
        assert_eq!((np.ip, np.port), ("::".parse().unwrap(), 30925));
        assert_eq!(np.backends, web.backends);
    }
}
