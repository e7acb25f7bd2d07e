//! podnet-cni as the first plugin of a chain: the reference tuning, portmap and
//! bandwidth plugins receive its result as prevResult and work on what it made.

use crate::common::*;
use podnet_lab::exec::{self, Call};
use serde_json::{json, Value};
use std::path::Path;

fn run(node: &Node, plugin: &str, cmd: &str, conf: &Value, netns: &str) -> Value {
    let bytes = serde_json::to_vec(conf).unwrap();
    let path = Path::new("/usr/lib/cni").join(plugin);
    assert!(
        path.exists(),
        "{} missing: apt-get install containernetworking-plugins",
        path.display()
    );
    let o = exec::run(
        &Call {
            plugin: &path,
            command: cmd,
            container_id: "chain",
            netns,
            ifname: "eth0",
            cni_path: Some("/usr/lib/cni".into()),
            config: &bytes,
        },
        Some(&node.ns.ns),
    )
    .unwrap();
    assert!(o.ok(), "{plugin} {cmd} failed: {} {}", o.stdout, o.stderr);
    o.json()
}

fn output(args: &[&str]) -> String {
    let o = std::process::Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn tuning_portmap_and_bandwidth_follow_podnet() {
    let node = Node::new("10.206.0.0/24");
    let pod = node.pod();
    let netns = pod.path().display().to_string();
    let mut base = node.conf.clone();
    // The reference plugins on Debian 12 speak CNI up to 1.0.0.
    base["cniVersion"] = json!("1.0.0");
    let o = node.call_with(&base, "ADD", "chain", &netns, "eth0");
    assert!(o.ok(), "{}", o.stdout);
    let r0 = o.json();
    let host = r0["interfaces"][1]["name"].as_str().unwrap().to_string();

    let tuning = json!({"cniVersion": "1.0.0", "name": "testnet", "type": "tuning",
        "sysctl": {"net.ipv4.conf.eth0.accept_redirects": "0"}, "prevResult": r0});
    let r1 = run(&node, "tuning", "ADD", &tuning, &netns);
    let portmap = json!({"cniVersion": "1.0.0", "name": "testnet", "type": "portmap",
        "capabilities": {"portMappings": true},
        "runtimeConfig": {"portMappings": [{"hostPort": 18080, "containerPort": 80, "protocol": "tcp"}]},
        "prevResult": r1});
    let r2 = run(&node, "portmap", "ADD", &portmap, &netns);
    let bandwidth = json!({"cniVersion": "1.0.0", "name": "testnet", "type": "bandwidth",
        "ingressRate": 8_000_000, "ingressBurst": 100_000, "prevResult": r2});
    let r3 = run(&node, "bandwidth", "ADD", &bandwidth, &netns);
    assert_eq!(
        result_ip(&r3),
        result_ip(&r0),
        "the chain must carry podnet's address through"
    );

    let accept = output(&[
        "ip",
        "netns",
        "exec",
        &pod.name,
        "cat",
        "/proc/sys/net/ipv4/conf/eth0/accept_redirects",
    ]);
    assert_eq!(accept.trim(), "0", "tuning did not reach the pod's eth0");
    let nat = output(&[
        "ip",
        "netns",
        "exec",
        &node.ns.name,
        "iptables-save",
        "-t",
        "nat",
    ]);
    assert!(
        nat.contains("18080"),
        "portmap installed no DNAT rule:\n{nat}"
    );
    let qdisc = output(&[
        "ip",
        "netns",
        "exec",
        &node.ns.name,
        "tc",
        "qdisc",
        "show",
        "dev",
        &host,
    ]);
    assert!(
        qdisc.contains("tbf"),
        "bandwidth did not shape the host veth {host}:\n{qdisc}"
    );
    assert!(
        qdisc.contains("clsact"),
        "podnet's protection must survive the chain:\n{qdisc}"
    );

    let mut b = bandwidth.clone();
    b["prevResult"] = r3.clone();
    run(&node, "bandwidth", "DEL", &b, &netns);
    run(&node, "portmap", "DEL", &portmap, &netns);
    run(&node, "tuning", "DEL", &tuning, &netns);
    let mut d = base.clone();
    d["prevResult"] = r0;
    assert!(node.call_with(&d, "DEL", "chain", &netns, "eth0").ok());
    assert!(node.host_veths().is_empty());
}
