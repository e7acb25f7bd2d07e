//! Service traffic on every policy datapath: NetworkPolicy judges the backend a
//! Service address was translated to, not the Service address.
//!
//! kube-proxy is modelled in node1 by what it does to a packet: a DNAT to the backend in
//! prerouting, and a masquerade when a pod reaches itself (the rules kube-proxy's
//! nftables mode writes, reduced to one backend per Service). The real kube-proxy runs
//! in the real-node test and the upstream e2e suites (scripts/e2e.sh). The table lives
//! in node1's namespace, which `lab down` removes.

use crate::common::*;
use podnet_lab::traffic::probe;
use podnet_lab::{ECHO_PORT, OUTSIDE_ADDR};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};
use std::time::Duration;

const PODS: &str = "apiVersion: v1
kind: Namespace
metadata: {name: svc}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: svc, labels: {app: client}}
spec: {nodeName: node1, containers: [{name: c, image: x}]}
---
apiVersion: v1
kind: Pod
metadata: {name: near, namespace: svc, labels: {app: near}}
spec: {nodeName: node1, containers: [{name: c, image: x}]}
---
apiVersion: v1
kind: Pod
metadata: {name: far, namespace: svc, labels: {app: far}}
spec: {nodeName: node2, containers: [{name: c, image: x}]}
";

/// client may reach only the far pods, on the echo port.
const CLIENT_TO_FAR_ONLY: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: client-egress, namespace: svc}
spec:
  podSelector: {matchLabels: {app: client}}
  policyTypes: [Egress]
  egress:
  - to: [{podSelector: {matchLabels: {app: far}}}]
    ports: [{port: 7777, protocol: TCP}]
";

/// Nobody reaches near or client (their replies still pass).
const DENY_NEAR_AND_CLIENT: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-in, namespace: svc}
spec:
  podSelector: {matchExpressions: [{key: app, operator: In, values: [near, client]}]}
  policyTypes: [Ingress]
";

/// The Service addresses: to far (node2), to near (node1), to client itself, and to the
/// lab's outside host.
const TO_FAR: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 11);
const TO_NEAR: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 12);
const TO_SELF: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 13);
const TO_OUTSIDE: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 14);

fn proxy_rules(client: Ipv4Addr, near: Ipv4Addr, far: Ipv4Addr) -> String {
    format!(
        "table ip podnet_test_proxy {{
  chain services {{
    type nat hook prerouting priority dstnat; policy accept;
    ip daddr {TO_FAR} tcp dport 80 dnat to {far}:{ECHO_PORT}
    ip daddr {TO_NEAR} tcp dport 80 dnat to {near}:{ECHO_PORT}
    ip daddr {TO_SELF} tcp dport 80 dnat to {client}:{ECHO_PORT}
    ip daddr {TO_OUTSIDE} tcp dport 80 dnat to {OUTSIDE_ADDR}:{ECHO_PORT}
  }}
  chain hairpin {{
    type nat hook postrouting priority srcnat; policy accept;
    ip saddr {client} ip daddr {client} masquerade
  }}
}}
"
    )
}

/// What client's request to Service `vip` port 80 got back: the echo's `from=…`, or
/// `None` when no connection was made.
fn through(lab: &TestLab, vip: Ipv4Addr) -> Option<String> {
    probe::tcp_request(
        &lab.ns("svc.client"),
        SocketAddrV4::new(vip, 80),
        "svc",
        Duration::from_secs(2),
    )
    .ok()
}

fn from(ip: Ipv4Addr) -> Option<String> {
    Some(format!("from={ip} svc"))
}

fn services_are_judged_on_their_backends(args: &[&str]) {
    let lab = TestLab::up(&[&["--nodes", "2", "--pods-per-node", "0"], args].concat());
    lab.pipe_ok("apply", PODS);
    let st = lab.json(&["status", "--output", "json"]);
    let ip = |p: &str| lab_pod(&st, p).0;
    let (client, near, far) = (ip("svc.client"), ip("svc.near"), ip("svc.far"));
    let o = client.octets();
    let gateway = Ipv4Addr::new(o[0], o[1], o[2], 1);
    let (ok, _, err) = lab.sh_status(
        "node1",
        &[
            "sh",
            "-c",
            &format!("echo '{}' | nft -f -", proxy_rules(client, near, far)),
        ],
    );
    assert!(ok, "the stand-in for kube-proxy: {err}");

    // Open: every backend answers; pods see the client's own address, the hairpin is
    // masqueraded to the node (its gateway on the bridge), the outside host sees node1.
    assert_eq!(through(&lab, TO_FAR), from(client), "{args:?}");
    assert_eq!(through(&lab, TO_NEAR), from(client), "{args:?}");
    assert_eq!(through(&lab, TO_SELF), from(gateway), "{args:?}");
    assert_eq!(
        through(&lab, TO_OUTSIDE),
        from("192.168.1.10".parse().unwrap()),
        "{args:?}"
    );

    // client's egress admits far only: the Service to far passes (judged on far:7777,
    // not on the Service address), the others are refused.
    lab.pipe_ok("apply", CLIENT_TO_FAR_ONLY);
    assert_eq!(
        through(&lab, TO_FAR),
        from(client),
        "{args:?}: egress to far"
    );
    assert_eq!(through(&lab, TO_NEAR), None, "{args:?}: egress to near");
    assert_eq!(
        through(&lab, TO_OUTSIDE),
        None,
        "{args:?}: egress to outside"
    );
    lab.pipe_ok("delete", CLIENT_TO_FAR_ONLY);
    assert_eq!(through(&lab, TO_NEAR), from(client), "{args:?}: open again");

    // near and client admit nobody: near refuses the client through its Service;
    // client refuses itself although the hairpin arrives from the node's address;
    // the replies to client's own connections still reach it.
    lab.pipe_ok("apply", DENY_NEAR_AND_CLIENT);
    assert_eq!(through(&lab, TO_NEAR), None, "{args:?}: ingress of near");
    assert_eq!(
        through(&lab, TO_SELF),
        None,
        "{args:?}: hairpin into client"
    );
    assert_eq!(
        through(&lab, TO_FAR),
        from(client),
        "{args:?}: replies to client"
    );
    assert_eq!(
        through(&lab, TO_OUTSIDE),
        from("192.168.1.10".parse().unwrap()),
        "{args:?}: replies from outside"
    );
}

#[test]
fn services_on_the_nftables_datapath() {
    services_are_judged_on_their_backends(&["--policy-datapath", "nftables"]);
}

#[test]
fn services_on_the_ebpf_datapath() {
    services_are_judged_on_their_backends(&["--policy-datapath", "ebpf"]);
}

/// Service packets to another node leave by the underlay device (host-gw) or the
/// WireGuard device (no link-layer header): judged there.
#[test]
fn services_on_the_ebpf_datapath_over_host_gw() {
    services_are_judged_on_their_backends(&["--policy-datapath", "ebpf", "--backend", "host-gw"]);
}

#[test]
fn services_on_the_ebpf_datapath_over_wireguard() {
    services_are_judged_on_their_backends(&["--policy-datapath", "ebpf", "--backend", "wireguard"]);
}

#[test]
fn services_on_the_ebpf_fast_path() {
    services_are_judged_on_their_backends(&["--policy-datapath", "ebpf", "--datapath", "ebpf"]);
}

/// kube-proxy's IPVS mode (its device kube-ipvs0 holds every ClusterIP as a local
/// address) is refused loudly: doctor names it as broken while the device exists.
#[test]
fn kube_proxy_in_ipvs_mode_is_named_by_doctor() {
    let lab = TestLab::up(&["--nodes", "1", "--pods-per-node", "0"]);
    let services = || lab.doctor_findings("services");
    assert!(services().is_empty(), "{:?}", services());
    lab.sh(
        "node1",
        &["ip", "link", "add", "kube-ipvs0", "type", "bridge"],
    );
    wait_until("doctor names IPVS mode", Duration::from_secs(10), || {
        services()
            .iter()
            .any(|f| f["status"] == "broken" && f["detail"].as_str().unwrap().contains("IPVS mode"))
    });
    lab.sh("node1", &["ip", "link", "del", "kube-ipvs0"]);
    wait_until("doctor is content again", Duration::from_secs(10), || {
        services().is_empty()
    });
}

/// The IPv6 Service addresses of a dual-stack cluster, as above.
const TO_FAR6: &str = "fd00:10:96::b";
const TO_NEAR6: &str = "fd00:10:96::c";
const TO_SELF6: &str = "fd00:10:96::d";
const TO_OUTSIDE6: &str = "fd00:10:96::e";

/// The IPv6 stand-in is laid out as kube-proxy's nftables mode lays out its `ip6
/// kube-proxy` table (a `service-ips` verdict map into one chain per Service port,
/// named `service-HASH-namespace/name/protocol/port`), so `podnet trace` and `policy
/// explain` read it as they read kube-proxy's.
fn proxy_rules6(client: Ipv6Addr, near: Ipv6Addr, far: Ipv6Addr) -> String {
    let outside = podnet_lab::OUTSIDE_ADDR6;
    let svc = |name: &str| format!("service-TESTHASH-svc/to-{name}/tcp/http");
    let (f, n, c, o) = (svc("far"), svc("near"), svc("self"), svc("outside"));
    format!(
        "table ip6 kube-proxy {{
  map service-ips {{
    type ipv6_addr . inet_proto . inet_service : verdict
    elements = {{ {TO_FAR6} . tcp . 80 : goto {f}, {TO_NEAR6} . tcp . 80 : goto {n},
                 {TO_SELF6} . tcp . 80 : goto {c}, {TO_OUTSIDE6} . tcp . 80 : goto {o} }}
  }}
  chain services {{
    type nat hook prerouting priority dstnat; policy accept;
    ip6 daddr . meta l4proto . th dport vmap @service-ips
  }}
  chain {f} {{
    meta l4proto tcp dnat to [{far}]:{ECHO_PORT}
  }}
  chain {n} {{
    meta l4proto tcp dnat to [{near}]:{ECHO_PORT}
  }}
  chain {c} {{
    meta l4proto tcp dnat to [{client}]:{ECHO_PORT}
  }}
  chain {o} {{
    meta l4proto tcp dnat to [{outside}]:{ECHO_PORT}
  }}
  chain hairpin {{
    type nat hook postrouting priority srcnat; policy accept;
    ip6 saddr {client} ip6 daddr {client} masquerade
  }}
}}
"
    )
}

/// `podnet trace --lab L SRC DST --port 80 [ARGS] --output json`: its exit status and
/// JSON (an error's text in place of JSON when it fails before tracing).
fn trace(lab: &TestLab, src: &str, dst: &str, args: &[&str]) -> (bool, serde_json::Value) {
    let o = podnet()
        .args(["trace", "--lab", &lab.name, src, dst, "--port", "80"])
        .args(args)
        .args(["--output", "json"])
        .output()
        .unwrap();
    let v = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&o.stderr).into()));
    (o.status.success(), v)
}

/// The translation hop of a trace to a Service.
fn translation(v: &serde_json::Value) -> serde_json::Value {
    v["hops"]
        .as_array()
        .and_then(|h| h.iter().find(|h| h["what"] == "service translation"))
        .unwrap_or_else(|| panic!("no translation hop: {v:#}"))
        .clone()
}

fn through6(lab: &TestLab, vip: &str) -> Option<String> {
    probe::tcp_request(
        &lab.ns("svc.client"),
        SocketAddrV6::new(vip.parse().unwrap(), 80, 0, 0),
        "svc",
        Duration::from_secs(2),
    )
    .ok()
}

fn from6(ip: Ipv6Addr) -> Option<String> {
    Some(format!("from={ip} svc"))
}

/// The same over IPv6 on a dual-stack lab (podnetd `--service-cidr` of both families):
/// an egress-isolated client reaches through an IPv6 Service exactly the backends its
/// policy admits, judged on the backend's address and port, not the Service's; the
/// hairpin (masqueraded to the node's IPv6 gateway) is judged as the client itself;
/// replies find their way back through the node's reverse translation (the fast path
/// hands them to the stack).
fn ipv6_services_are_judged_on_their_backends(args: &[&str]) {
    let lab = TestLab::up(
        &[
            &[
                "--nodes",
                "2",
                "--pods-per-node",
                "0",
                "--ip-family",
                "dual",
            ],
            args,
        ]
        .concat(),
    );
    lab.pipe_ok("apply", PODS);
    let st = lab.json(&["status", "--output", "json"]);
    let ip6 = |p: &str| lab_ip6(&st, p);
    let (client, near, far) = (ip6("svc.client"), ip6("svc.near"), ip6("svc.far"));
    let gateway = podnet_cni_spec::net::Ipv6Net::truncating(client, 64)
        .nth(1)
        .unwrap();
    let (ok, _, err) = lab.sh_status(
        "node1",
        &[
            "sh",
            "-c",
            &format!("echo '{}' | nft -f -", proxy_rules6(client, near, far)),
        ],
    );
    assert!(ok, "the stand-in for kube-proxy: {err}");
    let node1 = from6(podnet_lab::underlay_ip6(1));
    // The pods' echo servers listen on their IPv6 addresses once those are usable.
    for (pod, ip) in [("svc.far", far), ("svc.near", near), ("svc.client", client)] {
        wait_until(
            &format!("{pod}'s echo answers on [{ip}]"),
            Duration::from_secs(10),
            || {
                probe::tcp_request(
                    &lab.ns(pod),
                    SocketAddrV6::new(ip, ECHO_PORT, 0, 0),
                    "up",
                    Duration::from_secs(1),
                )
                .is_ok()
            },
        );
    }

    // Open: every backend answers (each first answer waited for: the node learns
    // its pods' IPv6 neighbours on the first packets).
    for (vip, want) in [
        (TO_FAR6, from6(client)),
        (TO_NEAR6, from6(client)),
        (TO_SELF6, from6(gateway)),
        (TO_OUTSIDE6, node1.clone()),
    ] {
        wait_until(
            &format!("{args:?}: client gets {want:?} through {vip}"),
            Duration::from_secs(10),
            || through6(&lab, vip) == want,
        );
    }

    // trace follows the IPv6 Service through the kube-proxy rules on client's node to
    // its backend on the other node, over IPv6 (the Service by its IPv6 ClusterIP, or
    // by name with --family ipv6).
    for (dst, extra) in [
        (TO_FAR6, &[][..]),
        ("svc/to-far", &["--family", "ipv6"][..]),
    ] {
        let (ok, v) = trace(&lab, "svc/client", dst, extra);
        assert!(ok && v["verdict"] == "reachable", "{args:?} {dst}: {v:#}");
        assert_eq!(v["family"], "ipv6", "{v:#}");
        let hop = translation(&v);
        assert!(
            hop["detail"]
                .as_str()
                .unwrap()
                .contains(&format!("traced to [{far}]:{ECHO_PORT}"))
                && hop["kernel"] == "chain service-TESTHASH-svc/to-far/tcp/http"
                && hop["cmd"]
                    .as_str()
                    .unwrap()
                    .starts_with("nft list table ip6 kube-proxy"),
            "{args:?}: {hop:#}"
        );
        assert!(
            v["dst"].as_str().unwrap().contains(&far.to_string()),
            "{v:#}"
        );
    }
    // A Service without an IPv6 side is broken at the translation, saying so.
    let (ok, v) = trace(&lab, "svc/client", "svc/v4-only", &["--family", "ipv6"]);
    assert!(
        !ok && v["broken_hop"]["what"] == "service translation"
            && v["broken_hop"]["detail"]
                .as_str()
                .unwrap()
                .contains("has no IPv6 side of Service svc/v4-only port 80"),
        "{v:#}"
    );
    // An IPv4 ClusterIP is not traced over IPv6.
    let (ok, v) = trace(&lab, "svc/client", "10.96.0.11", &["--family", "ipv6"]);
    assert!(
        !ok && v
            .as_str()
            .is_some_and(|e| e.contains("mixes an IPv4 and an IPv6")),
        "{v:#}"
    );

    lab.pipe_ok("apply", CLIENT_TO_FAR_ONLY);
    assert_eq!(
        through6(&lab, TO_FAR6),
        from6(client),
        "{args:?}: egress to far"
    );
    assert_eq!(through6(&lab, TO_NEAR6), None, "{args:?}: egress to near");
    assert_eq!(
        through6(&lab, TO_OUTSIDE6),
        None,
        "{args:?}: egress to outside"
    );
    // trace and policy explain judge the translated flow: client's egress refuses
    // near's address and port, and admits far's.
    let (ok, v) = trace(&lab, "svc/client", TO_NEAR6, &[]);
    assert!(
        !ok && v["broken_hop"]["what"] == "policy",
        "{args:?}: {v:#}"
    );
    assert!(translation(&v)["detail"]
        .as_str()
        .unwrap()
        .contains(&format!("traced to [{near}]:{ECHO_PORT}")));
    for (vip, want) in [(TO_NEAR6, "denied"), (TO_FAR6, "allowed")] {
        let o = podnet()
            .args(["policy", "explain", "--lab", &lab.name, "svc/client", vip])
            .args(["--port", "80", "--output", "json"])
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
            panic!("explain {vip}: {e}: {}", String::from_utf8_lossy(&o.stderr))
        });
        assert_eq!(v["verdict"], want, "{args:?} {vip}: {v:#}");
        assert!(
            v["backends"][0]["to"]
                .as_str()
                .is_some_and(|t| t.contains(':')),
            "judged on an IPv6 backend: {v:#}"
        );
    }
    lab.pipe_ok("delete", CLIENT_TO_FAR_ONLY);
    assert_eq!(
        through6(&lab, TO_NEAR6),
        from6(client),
        "{args:?}: open again"
    );

    lab.pipe_ok("apply", DENY_NEAR_AND_CLIENT);
    assert_eq!(through6(&lab, TO_NEAR6), None, "{args:?}: ingress of near");
    assert_eq!(
        through6(&lab, TO_SELF6),
        None,
        "{args:?}: hairpin into client"
    );
    assert_eq!(
        through6(&lab, TO_FAR6),
        from6(client),
        "{args:?}: replies to client"
    );
    assert_eq!(
        through6(&lab, TO_OUTSIDE6),
        node1,
        "{args:?}: replies from outside"
    );
}

#[test]
fn ipv6_services_on_the_nftables_datapath() {
    ipv6_services_are_judged_on_their_backends(&["--policy-datapath", "nftables"]);
}

#[test]
fn ipv6_services_on_the_ebpf_datapath() {
    ipv6_services_are_judged_on_their_backends(&["--policy-datapath", "ebpf"]);
}

#[test]
fn ipv6_services_on_the_ebpf_fast_path() {
    ipv6_services_are_judged_on_their_backends(&[
        "--policy-datapath",
        "ebpf",
        "--datapath",
        "ebpf",
    ]);
}

#[test]
fn ipv6_services_on_the_ebpf_datapath_over_host_gw() {
    ipv6_services_are_judged_on_their_backends(&[
        "--policy-datapath",
        "ebpf",
        "--backend",
        "host-gw",
    ]);
}
