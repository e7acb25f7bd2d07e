//! Services, NetworkPolicy on Service traffic, hostPort, bandwidth and masquerade on
//! real nodes (containerd, kubelet, kube-proxy in nftables mode, CoreDNS; podnet from
//! deploy/), on each datapath combination.

use crate::common::*;
use std::time::Duration;

const NODES_AND_PODS: &[&str] = &[
    "--kubernetes",
    "--kubelet",
    "--nodes",
    "2",
    "--pods-per-node",
    "0",
];

/// A client and a friend on node1, a server (with a ClusterIP, a NodePort with
/// Cluster and one with Local traffic policy) on node2, a pod with a hostPort and
/// bandwidth limits on node1.
const OBJECTS: &str = "apiVersion: v1
kind: Pod
metadata: {name: client, labels: {app: client}}
spec:
  nodeName: node1
  containers: [{name: c, image: registry.k8s.io/e2e-test-images/agnhost:2.66.1, args: [netexec, --http-port=8080]}]
---
apiVersion: v1
kind: Pod
metadata: {name: friend, labels: {app: friend}}
spec:
  nodeName: node1
  containers: [{name: c, image: registry.k8s.io/e2e-test-images/agnhost:2.66.1, args: [netexec, --http-port=8080]}]
---
apiVersion: v1
kind: Pod
metadata: {name: server, labels: {app: server}}
spec:
  nodeName: node2
  containers: [{name: c, image: registry.k8s.io/e2e-test-images/agnhost:2.66.1, args: [netexec, --http-port=8080]}]
---
apiVersion: v1
kind: Pod
metadata:
  name: ported
  labels: {app: ported}
  annotations: {kubernetes.io/ingress-bandwidth: 10M, kubernetes.io/egress-bandwidth: 10M}
spec:
  nodeName: node1
  containers:
  - name: c
    image: registry.k8s.io/e2e-test-images/agnhost:2.66.1
    args: [netexec, --http-port=8080]
    ports: [{containerPort: 8080, hostPort: 18081}]
---
apiVersion: v1
kind: Service
metadata: {name: server}
spec:
  selector: {app: server}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: server-np}
spec:
  type: NodePort
  selector: {app: server}
  ports: [{port: 80, targetPort: 8080, nodePort: 30080}]
---
apiVersion: v1
kind: Service
metadata: {name: server-local}
spec:
  type: NodePort
  externalTrafficPolicy: Local
  selector: {app: server}
  ports: [{port: 80, targetPort: 8080, nodePort: 30081}]
";

/// client may send DNS to the kube-dns pods and nothing else.
const CLIENT_DNS_ONLY: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: client-dns-only}
spec:
  podSelector: {matchLabels: {app: client}}
  policyTypes: [Egress]
  egress:
  - to:
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: kube-system}}
      podSelector: {matchLabels: {k8s-app: kube-dns}}
    ports: [{port: 53, protocol: UDP}, {port: 53, protocol: TCP}]
";

const CLIENT_NOTHING: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: client-dns-only}
spec:
  podSelector: {matchLabels: {app: client}}
  policyTypes: [Egress]
";

/// server admits friend, and the lab's outside host.
const SERVER_FRIEND_ONLY: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: server-friend-only}
spec:
  podSelector: {matchLabels: {app: server}}
  policyTypes: [Ingress]
  ingress:
  - from:
    - podSelector: {matchLabels: {app: friend}}
    - ipBlock: {cidr: 192.168.1.254/32}
";

/// A shell command in a pod: success and trimmed stdout.
fn exec(lab: &TestLab, pod: &str, cmd: &str) -> (bool, String) {
    let (ok, out, _) = lab.kubectl_try(&["exec", pod, "--", "sh", "-c", cmd], None);
    (ok, out.trim().to_string())
}

fn get(lab: &TestLab, pod: &str, url: &str) -> Option<String> {
    match exec(lab, pod, &format!("curl -s -m 3 {url}")) {
        (true, out) => Some(out),
        _ => None,
    }
}

/// curl from the lab's outside host (192.168.1.254 in the fabric).
fn from_outside(lab: &TestLab, url: &str) -> Option<String> {
    let (ok, out, _) = lab.sh_status(
        "fabric",
        &["curl", "-s", "-m", "3", "--interface", "192.168.1.254", url],
    );
    ok.then(|| out.trim().to_string())
}

/// `podnet trace --lab L SRC DST --output json`.
fn trace(lab: &TestLab, src: &str, dst: &str) -> serde_json::Value {
    let o = podnet()
        .args(["trace", "--lab", &lab.name, src, dst, "--output", "json"])
        .output()
        .unwrap();
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "trace {src} {dst}: {e}: {}",
            String::from_utf8_lossy(&o.stderr)
        )
    })
}

fn field(lab: &TestLab, args: &[&str]) -> String {
    lab.kubectl(args, None).trim().to_string()
}

fn services_on_real_nodes(extra: &[&str]) {
    let lab = TestLab::up(&[NODES_AND_PODS, extra].concat());
    lab.kubectl(&["apply", "-f", "-"], Some(OBJECTS));
    lab.kubectl(
        &[
            "wait",
            "--for=condition=Ready",
            "pod",
            "--all",
            "--timeout=120s",
        ],
        None,
    );
    let ip = |p: &str| field(&lab, &["get", "pod", p, "-o", "jsonpath={.status.podIP}"]);
    let (client, friend) = (ip("client"), ip("friend"));
    let node_ip = |n: &str| {
        field(
            &lab,
            &[
                "get",
                "node",
                n,
                "-o",
                "jsonpath={.status.addresses[?(@.type==\"InternalIP\")].address}",
            ],
        )
    };
    let (node1, node2) = (node_ip("node1"), node_ip("node2"));
    let svc = "http://server.default.svc.cluster.local/clientip";

    // Open: the ClusterIP by name (CoreDNS), the server sees the client's own address.
    wait_until(
        "client reaches server's Service",
        Duration::from_secs(60),
        || get(&lab, "client", svc).is_some_and(|s| s.starts_with(&format!("{client}:"))),
    );
    // Masquerade to the outside host; none between pods (just above).
    let (ok, out) = exec(&lab, "client", "echo out | nc -w 3 192.168.1.254 7777");
    assert!(ok && out == format!("from={node1} out"), "{ok} {out}");
    // A NodePort from outside; with Local policy the server sees the outside host.
    wait_until("the NodePorts answer", Duration::from_secs(30), || {
        from_outside(&lab, &format!("http://{node2}:30081/clientip"))
            .is_some_and(|s| s.starts_with("192.168.1.254:"))
    });
    assert!(
        from_outside(&lab, &format!("http://{node1}:30080/hostname")).as_deref() == Some("server")
    );
    // hostPort on node1's address; bandwidth limits on ported's host veth.
    assert_eq!(
        from_outside(&lab, &format!("http://{node1}:18081/hostname")).as_deref(),
        Some("ported")
    );
    // (10M in the annotations: 10 Mbit/s; what the pod receives is limited on its
    // host veth, what it sends on its own eth0.)
    let qdiscs = lab.sh("node1", &["tc", "qdisc", "show"]);
    assert!(
        qdiscs
            .lines()
            .any(|l| l.contains("tbf") && l.contains("rate 10Mbit")),
        "no ingress bandwidth limit on node1: {qdiscs}"
    );
    let (ok, inside) = exec(&lab, "ported", "tc qdisc show dev eth0");
    assert!(
        ok && inside.contains("tbf") && inside.contains("rate 10Mbit"),
        "{inside}"
    );
    // A pod reaching itself through its Service.
    assert_eq!(
        get(
            &lab,
            "server",
            "http://server.default.svc.cluster.local/hostname"
        )
        .as_deref(),
        Some("server"),
        "hairpin"
    );

    // trace to the Service: the translation read from node1's kube-proxy rules, then
    // the path to server on its own port.
    let server = ip("server");
    let v = trace(&lab, &client, "server:80");
    assert_eq!(v["verdict"], "reachable", "{v:#}");
    let hop = v["hops"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["what"] == "service translation")
        .unwrap_or_else(|| panic!("no translation hop: {v:#}"))
        .clone();
    assert!(
        hop["detail"]
            .as_str()
            .unwrap()
            .contains(&format!("{server}:8080"))
            && hop["kernel"]
                .as_str()
                .unwrap()
                .contains("default/server/tcp/"),
        "{hop:#}"
    );

    // client may only ask kube-dns: names resolve through the kube-dns ClusterIP,
    // judged on the CoreDNS pods; the server's ClusterIP is refused.
    lab.kubectl(&["apply", "-f", "-"], Some(CLIENT_DNS_ONLY));
    wait_until("client's egress closes", Duration::from_secs(20), || {
        get(
            &lab,
            "client",
            "http://server.default.svc.cluster.local/hostname",
        )
        .is_none()
    });
    let (ok, dns) = exec(
        &lab,
        "client",
        "getent hosts server.default.svc.cluster.local",
    );
    assert!(ok && !dns.is_empty(), "DNS through kube-dns refused: {dns}");
    // trace judges the translated flow: client's egress refuses server:8080.
    let v = trace(&lab, &client, "default/server");
    assert_eq!(v["broken_hop"]["what"], "policy", "{v:#}");
    let v = trace(&lab, &client, "kube-system/kube-dns:53");
    assert!(
        v["hops"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["what"] == "service translation"),
        "{v:#}"
    );
    // Nothing at all: DNS is refused too.
    lab.kubectl(&["apply", "-f", "-"], Some(CLIENT_NOTHING));
    // 60 s: with four real-node labs on two cores (the whole suite) the change once
    // took over 20 s to reach the node (alone: a second or two).
    wait_until("client's DNS closes", Duration::from_secs(60), || {
        !exec(
            &lab,
            "client",
            "getent hosts kubernetes.default.svc.cluster.local",
        )
        .0
    });
    lab.kubectl(&["delete", "networkpolicy", "client-dns-only"], None);
    wait_until("client's egress opens", Duration::from_secs(20), || {
        get(
            &lab,
            "client",
            "http://server.default.svc.cluster.local/hostname",
        )
        .is_some()
    });

    // server admits friend and the outside host only.
    lab.kubectl(&["apply", "-f", "-"], Some(SERVER_FRIEND_ONLY));
    wait_until("server's ingress closes", Duration::from_secs(20), || {
        get(
            &lab,
            "client",
            "http://server.default.svc.cluster.local/hostname",
        )
        .is_none()
    });
    assert_eq!(
        get(
            &lab,
            "friend",
            "http://server.default.svc.cluster.local/clientip"
        )
        .and_then(|s| s.split_once(':').map(|(a, _)| a.to_string())),
        Some(friend.clone()),
        "friend through the ClusterIP"
    );
    // policy explain judges the translated flow: on server's port 8080, per backend.
    // (The Service by its address: `default/server` names the pod.)
    let cluster_ip = field(
        &lab,
        &[
            "get",
            "service",
            "server",
            "-o",
            "jsonpath={.spec.clusterIP}",
        ],
    );
    let explain = |from: &str| -> serde_json::Value {
        let o = podnet()
            .args(["policy", "explain", "--lab", &lab.name, from, &cluster_ip])
            .args(["--port", "80", "--output", "json"])
            .output()
            .unwrap();
        serde_json::from_slice(&o.stdout)
            .unwrap_or_else(|e| panic!("explain: {e}: {}", String::from_utf8_lossy(&o.stderr)))
    };
    let (c, f) = (explain(&client), explain(&friend));
    assert_eq!(
        (c["verdict"].as_str(), f["verdict"].as_str()),
        (Some("denied"), Some("allowed")),
        "{c:#} {f:#}"
    );
    assert_eq!(c["backends"][0]["port"], 8080, "{c:#}");
    assert!(
        c["service"]
            .as_str()
            .unwrap()
            .starts_with("default/server/tcp/"),
        "{c:#}"
    );
    // Through a NodePort of the other node the client arrives masqueraded: refused.
    assert_eq!(
        get(&lab, "client", &format!("http://{node2}:30080/hostname")),
        None
    );
    // From outside: with Local policy the outside host's own address, admitted; with
    // Cluster policy through node1 the address of node1, refused.
    assert!(
        from_outside(&lab, &format!("http://{node2}:30081/hostname")).as_deref() == Some("server")
    );
    assert_eq!(
        from_outside(&lab, &format!("http://{node1}:30080/hostname")),
        None
    );
    // The server reaching itself through its Service meets its own policy.
    assert_eq!(
        get(
            &lab,
            "server",
            "http://server.default.svc.cluster.local/hostname"
        ),
        None,
        "hairpin"
    );
}

#[test]
fn real_nodes_services_bridge_nftables() {
    services_on_real_nodes(&[]);
}

#[test]
fn real_nodes_services_bridge_ebpf() {
    services_on_real_nodes(&["--policy-datapath", "ebpf"]);
}

#[test]
fn real_nodes_services_ebpf_fast_path() {
    services_on_real_nodes(&["--policy-datapath", "ebpf", "--datapath", "ebpf"]);
}
