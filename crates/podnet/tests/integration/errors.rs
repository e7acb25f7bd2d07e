//! Every error code the README lists, from a real invocation.

use crate::common::*;
use podnet_lab::exec::{self, Call};
use podnet_netlink::link;
use serde_json::json;
use std::os::fd::AsRawFd;

fn code(o: &podnet_lab::exec::Outcome) -> u64 {
    assert!(!o.ok(), "expected a failure, got {}", o.stdout);
    let v = o.json();
    assert!(
        v["msg"].as_str().is_some_and(|m| !m.is_empty()),
        "no msg in {}",
        o.stdout
    );
    v["code"]
        .as_u64()
        .unwrap_or_else(|| panic!("no code in {}", o.stdout))
}

#[test]
fn spec_error_codes() {
    let node = Node::new("10.201.0.0/24");
    let pod = node.pod();
    let netns = pod.path().display().to_string();
    let plugin = plugin();

    // 1: a version podnet does not speak.
    let mut c = node.conf.clone();
    c["cniVersion"] = json!("0.2.0");
    assert_eq!(code(&node.call_with(&c, "ADD", "e1", &netns, "eth0")), 1);

    // 3: the namespace does not exist.
    assert_eq!(
        code(&node.call_with(
            &node.conf,
            "ADD",
            "e3",
            "/run/netns/podnet-no-such-ns",
            "eth0"
        )),
        3
    );

    // 4: a required variable is missing, or malformed.
    let run = |cmd: &str, cid: &str, ns: &str, ifname: &str, conf: &[u8]| {
        exec::run(
            &Call {
                plugin: &plugin,
                command: cmd,
                container_id: cid,
                netns: ns,
                ifname,
                cni_path: None,
                config: conf,
            },
            Some(&node.ns.ns),
        )
        .unwrap()
    };
    let conf = serde_json::to_vec(&node.conf).unwrap();
    assert_eq!(code(&run("ADD", "e4", "", "eth0", &conf)), 4);
    assert_eq!(code(&run("ADD", "-bad id", &netns, "eth0", &conf)), 4);
    assert_eq!(
        code(&run("ADD", "e4", &netns, "way-too-long-ifname", &conf)),
        4
    );
    assert_eq!(code(&run("FROB", "e4", &netns, "eth0", &conf)), 4);

    // 6: stdin is not a configuration.
    assert_eq!(code(&run("ADD", "e6", &netns, "eth0", b"{not json")), 6);
    assert_eq!(
        code(&run(
            "ADD",
            "e6",
            &netns,
            "eth0",
            br#"{"cniVersion":"1.1.0","name":"n","type":"podnet-cni","mtu":"big"}"#
        )),
        6
    );

    // 7: a configuration that makes no sense.
    for bad in [
        json!("10.0.0.0/31"),
        json!("10.0.0.7/24"),
        json!("not a cidr"),
    ] {
        let mut c = node.conf.clone();
        c["subnet"] = bad;
        assert_eq!(code(&node.call_with(&c, "ADD", "e7", &netns, "eth0")), 7);
    }
    let mut c = node.conf.clone();
    c.as_object_mut().unwrap().remove("name");
    assert_eq!(code(&node.call_with(&c, "ADD", "e7", &netns, "eth0")), 7);

    // 104: CNI_NETNS names a file that is not a network namespace.
    assert_eq!(
        code(&node.call_with(&node.conf, "ADD", "e104", "/proc/self/exe", "eth0")),
        104
    );

    // 106: the delegated IPAM plugin does not exist.
    let mut c = node.conf.clone();
    c["ipam"] = json!({"type": "podnet-no-such-ipam"});
    assert_eq!(
        code(&node.call_with(&c, "ADD", "e106", &netns, "eth0")),
        106
    );

    // 107: the interface name is taken inside the pod.
    ip(&[
        "-n", &pod.name, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0peer",
    ]);
    assert_eq!(
        code(&node.call_with(&node.conf, "ADD", "e107", &netns, "eth0")),
        107
    );

    // Nothing was left behind by any of these.
    assert!(node.host_veths().is_empty(), "{:?}", node.host_veths());
    assert!(node.allocations().is_empty(), "{:?}", node.allocations());
}

#[test]
fn try_again_later_when_ipam_stays_locked() {
    let node = Node::new("10.201.1.0/24");
    let pod = node.pod();
    let store = podnet_ipam::Store::open(node.dir.path(), "testnet").unwrap();
    let lock = std::fs::File::create(store.dir().join("lock")).unwrap();
    // SAFETY: flock on an fd we own; released when `lock` is dropped.
    assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
    let mut c = node.conf.clone();
    c["lockTimeoutMs"] = json!(200);
    let o = node.call_with(&c, "ADD", "busy", &pod.path().display().to_string(), "eth0");
    assert_eq!(code(&o), 11, "{}", o.stdout);
    drop(lock);
    node.add("busy", &pod);
    node.del("busy", &pod);
}

#[test]
fn rollback_when_add_fails_midway() {
    let node = Node::new("10.201.2.0/24");
    let pod = node.pod();
    let netns = pod.path().display().to_string();

    // Fails at the bridge, after the address was taken: the address comes back.
    ip(&[
        "-n",
        &node.ns.name,
        "link",
        "add",
        "podnet0",
        "type",
        "veth",
        "peer",
        "name",
        "notabridge",
    ]);
    let o = node.call_with(&node.conf, "ADD", "rb1", &netns, "eth0");
    assert_eq!(code(&o), 7, "{}", o.stdout);
    assert!(
        o.json()["details"].as_str().unwrap().contains("released"),
        "{}",
        o.stdout
    );
    assert!(node.allocations().is_empty());
    ip(&["-n", &node.ns.name, "link", "del", "podnet0"]);

    // Fails inside the pod, after the veth, its protection and the bridge: a route the
    // delegated IPAM hands out cannot be installed. Everything is undone.
    let hl = node.dir.path().join("host-local");
    let mut c = node.conf.clone();
    c["cniVersion"] = json!("1.0.0"); // Debian's host-local speaks up to 1.0.0
    c["ipam"] = json!({
        "type": "host-local", "dataDir": hl,
        "ranges": [[{"subnet": "10.201.2.0/24", "gateway": "10.201.2.1"}]],
        "routes": [{"dst": "10.99.0.0/16", "gw": "192.0.2.1"}],
    });
    let o = node.call_with(&c, "ADD", "rb2", &netns, "eth0");
    assert_eq!(code(&o), 100, "{}", o.stdout);
    let details = o.json()["details"].as_str().unwrap().to_string();
    assert!(details.contains("deleted veth"), "{details}");
    assert!(details.contains("host-local"), "{details}");
    assert!(node.host_veths().is_empty(), "{:?}", node.host_veths());
    let mut ps = pod.ns.run(podnet_netlink::Socket::route).unwrap().unwrap();
    assert!(
        link::get_by_name(&mut ps, "eth0").unwrap().is_none(),
        "eth0 left in the pod"
    );
    let held: Vec<_> = std::fs::read_dir(hl.join("testnet"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        held.iter().all(|n| !n.to_string_lossy().starts_with("10.")),
        "host-local still holds {held:?}"
    );
}

#[test]
fn unreadable_node_file_and_damaged_ipam_state() {
    let node = Node::new("10.201.3.0/24");
    let pod = node.pod();
    let netns = pod.path().display().to_string();

    // 5: the agent's node file exists but is not what podnetd writes.
    let bad = node.dir.path().join("node.json");
    std::fs::write(&bad, b"{half a json").unwrap();
    let mut c = node.conf.clone();
    c.as_object_mut().unwrap().remove("subnet");
    c["nodeFile"] = json!(bad);
    assert_eq!(code(&node.call_with(&c, "ADD", "e5", &netns, "eth0")), 5);

    // 103: both copies of the IPAM state are damaged.
    let store = podnet_ipam::Store::open(node.dir.path(), "testnet").unwrap();
    std::fs::write(store.dir().join("state.a"), b"garbage").unwrap();
    std::fs::write(store.dir().join("state.b"), b"garbage").unwrap();
    let o = node.call_with(&node.conf, "ADD", "e103", &netns, "eth0");
    assert_eq!(code(&o), 103);
    assert!(
        o.json()["msg"]
            .as_str()
            .unwrap()
            .contains("move the directory aside"),
        "{}",
        o.stdout
    );
    assert!(node.host_veths().is_empty());
}

// ---- Input edges (issue 18): each refused with a spec error, nothing left behind. ----

/// The node is as it was: no podnet veth, no allocation, no `eth0` and no pod address
/// in the node's own namespace.
fn assert_untouched(node: &Node) {
    assert!(node.host_veths().is_empty(), "{:?}", node.host_veths());
    assert!(node.allocations().is_empty(), "{:?}", node.allocations());
    let mut s = node.sock();
    assert!(
        link::get_by_name(&mut s, "eth0").unwrap().is_none(),
        "a pod interface landed in the node's namespace"
    );
}

/// A prevResult as podnet's ADD writes it, for `ifname` in `netns`.
fn prev_result(netns: &str, ip: &str) -> serde_json::Value {
    json!({
        "cniVersion": "1.1.0",
        "interfaces": [
            {"name": "podnet0"}, {"name": "pn000000000000"},
            {"name": "eth0", "sandbox": netns},
        ],
        "ips": [{"address": ip, "gateway": "10.201.4.1", "interface": 2}],
        "routes": [{"dst": "0.0.0.0/0"}],
    })
}

#[test]
fn netns_that_is_the_plugins_own_or_no_network_namespace() {
    let node = Node::new("10.201.4.0/24");
    // The plugin runs in the node's namespace: /proc/self/ns/net and the node's
    // named namespace are both its own. A pod's eth0, address and default route must
    // never land there.
    let own_named = node.ns.path().display().to_string();
    for own in ["/proc/self/ns/net", "/proc/thread-self/ns/net", &own_named] {
        let o = node.call_with(&node.conf, "ADD", "own", own, "eth0");
        assert_eq!(code(&o), 104, "{own}: {}", o.stdout);
        assert!(
            o.json()["msg"]
                .as_str()
                .unwrap()
                .contains("own network namespace"),
            "{}",
            o.stdout
        );
        let mut c = node.conf.clone();
        c["prevResult"] = prev_result(own, "10.201.4.2/24");
        let o = node.call_with(&c, "CHECK", "own", own, "eth0");
        assert_eq!(code(&o), 104, "CHECK {own}: {}", o.stdout);
    }
    // Not a network namespace at all: a directory, another kind of namespace, a
    // regular file (also in spec_error_codes); missing is 3.
    let dir = node.dir.path().display().to_string();
    for not_net in [
        dir.as_str(),
        "/proc/self/ns/mnt",
        "/proc/self/ns/uts",
        "/etc/hostname",
    ] {
        let o = node.call_with(&node.conf, "ADD", "notnet", not_net, "eth0");
        assert_eq!(code(&o), 104, "{not_net}: {}", o.stdout);
        assert!(
            o.json()["details"].as_str().unwrap().contains("CNI_NETNS"),
            "{}",
            o.stdout
        );
    }
    assert_untouched(&node);
}

#[test]
fn stdin_over_one_mib_is_refused() {
    let node = Node::new("10.201.5.0/24");
    let pod = node.pod();
    let netns = pod.path().display().to_string();
    // A valid configuration, only too large: 1 MiB of padding in an unknown key.
    let mut c = node.conf.clone();
    c["padding"] = json!("x".repeat(1 << 20));
    let o = node.call_with(&c, "ADD", "big", &netns, "eth0");
    assert_eq!(code(&o), 6, "{}", o.stdout);
    let msg = o.json()["msg"].as_str().unwrap().to_string();
    assert!(msg.contains("1048576 bytes"), "{msg}");
    assert_untouched(&node);
    // Just under the limit is fine.
    c["padding"] = json!("x".repeat((1 << 20) - 1024));
    let o = node.call_with(&c, "ADD", "big", &netns, "eth0");
    assert!(o.ok(), "{}", o.stdout);
    let o = node.call_with(&c, "DEL", "big", &netns, "eth0");
    assert!(o.ok(), "{}", o.stdout);
    assert_untouched(&node);
}

#[test]
fn subnets_no_node_can_have_and_requests_for_reserved_addresses() {
    let node = Node::new("10.201.6.0/24");
    let pod = node.pod();
    let netns = pod.path().display().to_string();
    for bad in [
        "0.0.0.0/0",
        "10.0.0.0/7",
        "0.0.0.0/24",
        "127.0.0.0/24",
        "169.254.0.0/16",
        "169.0.0.0/8",
        "224.0.0.0/24",
        "239.1.0.0/16",
        "240.0.0.0/24",
        "255.255.255.252/30",
    ] {
        let mut c = node.conf.clone();
        c["subnet"] = json!(bad);
        let o = node.call_with(&c, "ADD", "sn", &netns, "eth0");
        assert_eq!(code(&o), 7, "{bad}: {}", o.stdout);
        assert!(
            o.json()["msg"].as_str().unwrap().contains(bad),
            "{bad}: {}",
            o.stdout
        );
    }
    // The same from the agent's node file.
    let nf = node.dir.path().join("node.json");
    std::fs::write(&nf, br#"{"podCIDR":"127.0.0.0/24"}"#).unwrap();
    let mut c = node.conf.clone();
    c.as_object_mut().unwrap().remove("subnet");
    c["nodeFile"] = json!(nf);
    let o = node.call_with(&c, "ADD", "sn", &netns, "eth0");
    assert_eq!(code(&o), 7, "{}", o.stdout);
    assert!(o.stdout.contains("node.json"), "{}", o.stdout);
    // The ips capability: the network, gateway and broadcast addresses are refused.
    for want in [
        "10.201.6.0/24",
        "10.201.6.1/24",
        "10.201.6.255/24",
        "127.0.0.1/8",
    ] {
        let mut c = node.conf.clone();
        c["runtimeConfig"] = json!({"ips": [want]});
        let o = node.call_with(&c, "ADD", "req", &netns, "eth0");
        assert_eq!(code(&o), 7, "{want}: {}", o.stdout);
    }
    assert_untouched(&node);
}

#[test]
fn lock_timeout_outside_its_bounds_is_refused() {
    let node = Node::new("10.201.7.0/24");
    let pod = node.pod();
    let netns = pod.path().display().to_string();
    for bad in [
        json!(0),
        json!(-5),
        json!(60_001),
        json!(u64::MAX),
        json!(2.5),
        json!("5000"),
    ] {
        let mut c = node.conf.clone();
        c["lockTimeoutMs"] = bad.clone();
        let o = node.call_with(&c, "ADD", "lt", &netns, "eth0");
        assert_eq!(code(&o), 7, "{bad}: {}", o.stdout);
        assert!(o.stdout.contains("lockTimeoutMs"), "{}", o.stdout);
    }
    assert_untouched(&node);
    // DEL stays possible with such a config (bounded, not refused).
    let mut c = node.conf.clone();
    c["lockTimeoutMs"] = json!(u64::MAX);
    let o = node.call_with(&c, "DEL", "lt", &netns, "eth0");
    assert!(o.ok(), "{}", o.stdout);
}

#[test]
fn prev_result_indexes_out_of_range() {
    let node = Node::new("10.201.8.0/24");
    let pod = node.pod();
    let netns = pod.path().display().to_string();
    let r = node.add("pr", &pod);
    for (what, bad) in [
        ("past the interfaces", json!(3)),
        ("negative", json!(-1)),
        ("huge", json!(u64::MAX)),
        ("huge float", json!(1e300)),
        ("not a number", json!("2")),
    ] {
        let mut prev = r.clone();
        prev["ips"][0]["interface"] = bad;
        let mut c = node.conf.clone();
        c["prevResult"] = prev;
        let o = node.call_with(&c, "CHECK", "pr", &netns, "eth0");
        assert_eq!(code(&o), 6, "CHECK {what}: {}", o.stdout);
        assert!(o.stdout.contains("interface"), "{}", o.stdout);
        // Chained ADD (another attachment): refused before anything is made.
        let o = node.call_with(&c, "ADD", "pr2", &netns, "eth1");
        assert_eq!(code(&o), 6, "ADD {what}: {}", o.stdout);
        // DEL does not read indexes: it removes the pod whatever prevResult says.
        let o = node.call_with(&c, "DEL", "pr2", &netns, "eth1");
        assert!(o.ok(), "DEL {what}: {}", o.stdout);
    }
    // prevResult with no interfaces but an index: the index points nowhere.
    let mut c = node.conf.clone();
    c["prevResult"] =
        json!({"cniVersion":"1.1.0","ips":[{"address":"10.201.8.9/24","interface":0}]});
    let o = node.call_with(&c, "ADD", "pr3", &netns, "eth2");
    assert_eq!(code(&o), 6, "{}", o.stdout);
    assert_eq!(node.host_veths().len(), 1, "{:?}", node.host_veths());
    assert_eq!(node.allocations().len(), 1, "{:?}", node.allocations());
    node.del("pr", &pod);
    assert_untouched(&node);
}
