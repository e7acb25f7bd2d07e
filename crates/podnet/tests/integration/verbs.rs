//! Every verb in every supported spec version.

use crate::common::*;
use podnet_cni_spec::version::SUPPORTED;
use podnet_netlink::{addr, link, route};
use serde_json::json;

#[test]
fn version_lists_every_supported_version() {
    let node = Node::new("10.200.0.0/24");
    let o = node.call_with(&json!({"cniVersion": "1.1.0"}), "VERSION", "", "", "");
    assert!(o.ok(), "{}", o.stdout);
    let v = o.json();
    assert_eq!(v["cniVersion"], "1.1.0");
    let got: Vec<&str> = v["supportedVersions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap())
        .collect();
    assert_eq!(got, SUPPORTED);
}

#[test]
fn add_check_del_in_every_version() {
    let node = Node::new("10.200.1.0/24");
    for (i, ver) in SUPPORTED.iter().enumerate() {
        let pod = node.pod();
        let netns = pod.path().display().to_string();
        let cid = format!("verbs-{i}");
        let mut conf = node.conf.clone();
        conf["cniVersion"] = json!(ver);
        let o = node.call_with(&conf, "ADD", &cid, &netns, "eth0");
        assert!(o.ok(), "ADD {ver}: {}", o.stdout);
        let r = o.json();
        assert_eq!(r["cniVersion"], *ver);
        let ip = result_ip(&r);
        assert!(ip.to_string().starts_with("10.200.1."), "{ver}: {ip}");
        assert_eq!(r["ips"][0]["gateway"], "10.200.1.1");
        assert_eq!(r["ips"][0]["interface"], 2);
        assert_eq!(r["interfaces"][2]["name"], "eth0");
        assert_eq!(r["interfaces"][2]["sandbox"], netns);
        assert_eq!(
            r["ips"][0].get("version").is_some(),
            ver.starts_with("0."),
            "{ver}: {r}"
        );
        assert_eq!(
            r["interfaces"][2].get("mtu").is_some(),
            *ver == "1.1.0",
            "{ver}: {r}"
        );

        // The pod really has that address, a default route and a MAC from its IP.
        let mut ps = pod.ns.run(podnet_netlink::Socket::route).unwrap().unwrap();
        let eth = link::get_by_name(&mut ps, "eth0")
            .unwrap()
            .expect("eth0 in pod");
        assert!(eth.is_up());
        assert_eq!(
            eth.mac_string(),
            r["interfaces"][2]["mac"].as_str().unwrap()
        );
        assert!(addr::list(&mut ps, Some(eth.index))
            .unwrap()
            .iter()
            .any(|a| a.addr == ip && a.prefix == 24));
        assert!(route::list(&mut ps)
            .unwrap()
            .iter()
            .any(|rt| rt.is_default() && rt.gateway == Some("10.200.1.1".parse().unwrap())));

        let mut with_prev = conf.clone();
        with_prev["prevResult"] = r.clone();
        if *ver != "0.3.0" && *ver != "0.3.1" {
            let c = node.call_with(&with_prev, "CHECK", &cid, &netns, "eth0");
            assert!(c.ok(), "CHECK {ver}: {}", c.stdout);
        } else {
            let c = node.call_with(&with_prev, "CHECK", &cid, &netns, "eth0");
            assert_eq!(
                c.json()["code"],
                1,
                "CHECK must be refused for {ver}: {}",
                c.stdout
            );
        }
        let d = node.call_with(&with_prev, "DEL", &cid, &netns, "eth0");
        assert!(d.ok(), "DEL {ver}: {}", d.stdout);
        let d2 = node.call_with(&with_prev, "DEL", &cid, &netns, "eth0");
        assert!(d2.ok(), "second DEL {ver}: {}", d2.stdout);
        assert!(
            link::get_by_name(&mut ps, "eth0").unwrap().is_none(),
            "eth0 left in pod after DEL ({ver})"
        );
    }
    assert!(node.host_veths().is_empty(), "{:?}", node.host_veths());
    assert!(node.allocations().is_empty(), "{:?}", node.allocations());
}

/// The host veth as ADD leaves it: up on the bridge with hairpin mode and the owner
/// alias (set in one request), one queue (a veth made without saying so is cut down to
/// one while the kernel's link lock waits on RCU), and no IPv6 link-local address (a
/// bridge port needs none; its address detection would take the lock again). The pod
/// end has its IPv4 address only.
#[test]
fn the_host_veth_is_a_quiet_bridge_port() {
    let node = Node::new("10.200.9.0/24");
    let pod = node.pod();
    let netns = pod.path().display().to_string();
    let o = node.call_with(&node.conf, "ADD", "quiet-port", &netns, "eth0");
    assert!(o.ok(), "ADD: {}", o.stdout);
    let veth = o.json()["interfaces"][1]["name"]
        .as_str()
        .expect("host veth in the result")
        .to_string();
    let l = ip_show(&node.ns.name, "addr", &veth);
    assert!(
        l["flags"].as_array().unwrap().iter().any(|f| f == "UP"),
        "{l}"
    );
    assert_eq!(l["master"], podnet_conventions::DEFAULT_BRIDGE, "{l}");
    assert_eq!(l["linkinfo"]["info_slave_data"]["hairpin"], true, "{l}");
    assert!(
        l["ifalias"]
            .as_str()
            .is_some_and(|a| a.contains("quiet-port")),
        "owner alias: {l}"
    );
    assert_eq!(l["num_tx_queues"], 1, "{l}");
    assert_eq!(l["num_rx_queues"], 1, "{l}");
    // The kernel's setting, then no address once the carrier is seen (the link-local
    // address would have come with it).
    assert_eq!(
        ip_show(&node.ns.name, "link", &veth)["inet6_addr_gen_mode"],
        "none"
    );
    assert_eq!(
        families(&node.ns.name, &veth, |_| true),
        Vec::<String>::new()
    );
    // The pod end: its IPv4 address and nothing else (no IPv6 link-local address to
    // send address detection and listener reports the bridge floods to every pod).
    // The kernel's setting first (the address would come with the carrier, later).
    assert_eq!(
        ip_show(&pod.name, "link", "eth0")["inet6_addr_gen_mode"],
        "none"
    );
    assert_eq!(families(&pod.name, "eth0", |_| true), ["inet"]);
    // Asked for, the pod keeps its link-local address.
    let kept = node.pod();
    let mut conf = node.conf.clone();
    conf["ipv6LinkLocal"] = serde_json::json!(true);
    let knetns = kept.path().display().to_string();
    let o = node.call_with(&conf, "ADD", "link-local", &knetns, "eth0");
    assert!(o.ok(), "ADD with ipv6LinkLocal: {}", o.stdout);
    assert_eq!(
        ip_show(&kept.name, "link", "eth0")["inet6_addr_gen_mode"],
        "eui64"
    );
    assert_eq!(
        families(&kept.name, "eth0", |f| f.len() == 2),
        ["inet", "inet6"]
    );
    let d = node.call_with(&conf, "DEL", "link-local", &knetns, "eth0");
    assert!(d.ok(), "DEL: {}", d.stdout);
    let d = node.call_with(&node.conf, "DEL", "quiet-port", &netns, "eth0");
    assert!(d.ok(), "DEL: {}", d.stdout);
}

/// `ip -n NS -d -j OBJ show dev DEV`.
fn ip_show(ns: &str, obj: &str, dev: &str) -> serde_json::Value {
    let out = std::process::Command::new("ip")
        .args(["-n", ns, "-d", "-j", obj, "show", "dev", dev])
        .output()
        .expect("run ip");
    assert!(
        out.status.success(),
        "ip -n {ns} {obj} show dev {dev}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ip -j output");
    v[0].clone()
}

/// The address families on link `dev` of namespace `ns` (sorted), once the kernel has
/// seen its carrier (operstate UP) and `done` says they are final.
fn families(ns: &str, dev: &str, done: impl Fn(&[String]) -> bool) -> Vec<String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let p = ip_show(ns, "addr", dev);
        let mut families: Vec<String> = p["addr_info"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|a| a["family"].as_str().map(String::from))
            .collect();
        families.sort();
        if p["operstate"] == "UP" && done(&families) {
            return families;
        }
        assert!(std::time::Instant::now() < deadline, "{dev} in {ns}: {p}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn del_without_netns_or_link_still_releases_the_address() {
    let node = Node::new("10.200.2.0/24");
    let pod = node.pod();
    node.add("gone", &pod);
    let path = pod.path().display().to_string();
    drop(pod); // the runtime destroyed the namespace (and so both veth ends) first
    std::thread::sleep(std::time::Duration::from_millis(100));
    let o = node.call_with(&node.conf, "DEL", "gone", &path, "eth0");
    assert!(o.ok(), "{}", o.stdout);
    assert!(node.allocations().is_empty(), "{:?}", node.allocations());
    // Repeated, and without CNI_NETNS at all: still success.
    let o = node.call_with(&node.conf, "DEL", "gone", "", "eth0");
    assert!(o.ok(), "DEL without CNI_NETNS: {}", o.stdout);

    // A pod whose only DEL comes without CNI_NETNS (its namespace is long gone): the
    // address is released and the host veth is removed too.
    let pod = node.pod();
    node.add("no-ns", &pod);
    assert_eq!(node.allocations().len(), 1);
    let o = node.call_with(&node.conf, "DEL", "no-ns", "", "eth0");
    assert!(o.ok(), "DEL without CNI_NETNS: {}", o.stdout);
    assert!(node.allocations().is_empty(), "{:?}", node.allocations());
    assert!(node.host_veths().is_empty(), "{:?}", node.host_veths());
}

#[test]
fn status_and_gc_in_1_1_only() {
    let node = Node::new("10.200.3.0/24");
    let s = node.call_with(&node.conf, "STATUS", "", "", "");
    assert!(s.ok() && s.stdout.is_empty(), "{}", s.stdout);
    let mut old = node.conf.clone();
    old["cniVersion"] = json!("1.0.0");
    for verb in ["STATUS", "GC"] {
        let o = node.call_with(&old, verb, "", "", "");
        assert_eq!(o.json()["code"], 1, "{verb} at 1.0.0: {}", o.stdout);
    }
    // GC keeps what is listed and removes the rest, links included.
    let (a, b) = (node.pod(), node.pod());
    node.add("keep", &a);
    node.add("drop", &b);
    let mut gc = node.conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "keep", "ifname": "eth0"}]);
    let o = node.call_with(&gc, "GC", "", "", "");
    assert!(o.ok(), "{}", o.stdout);
    let left: Vec<String> = node.allocations().into_iter().map(|(_, c)| c).collect();
    assert_eq!(left, vec!["keep".to_string()]);
    assert_eq!(node.host_veths().len(), 1);
    // The older key is accepted too.
    let mut gc_old = node.conf.clone();
    gc_old["cni.dev/attachments"] = json!([]);
    assert!(node.call_with(&gc_old, "GC", "", "", "").ok());
    assert!(node.allocations().is_empty());
    assert!(node.host_veths().is_empty());
}

#[test]
fn check_reports_what_changed() {
    let node = Node::new("10.200.4.0/24");
    let pod = node.pod();
    let r = node.add("drift", &pod);
    let mut conf = node.conf.clone();
    conf["prevResult"] = r.clone();
    let netns = pod.path().display().to_string();
    assert!(node.call_with(&conf, "CHECK", "drift", &netns, "eth0").ok());
    // The anti-spoofing entry present but guarding another address: CHECK says so.
    let host = r["interfaces"][1]["name"].as_str().unwrap().to_string();
    let pod_ip = result_ip(&r);
    let o = pod_ip.octets();
    let other = std::net::Ipv4Addr::new(o[0], o[1], o[2], o[3].wrapping_add(1));
    let dir = node.dir.path().to_path_buf();
    let h = host.clone();
    node.ns
        .ns
        .run(move || {
            let mut s = podnet_netlink::Socket::route().unwrap();
            let l = link::get_by_name(&mut s, &h).unwrap().unwrap();
            let dp = podnet_cni::antispoof::datapath(&dir).unwrap();
            podnet_cni::antispoof::set_pod(
                &dp,
                l.index,
                podnet_conventions::pod_mac(pod_ip),
                other,
                None,
                &Default::default(),
            )
            .unwrap();
        })
        .unwrap();
    let c = node.call_with(&conf, "CHECK", "drift", &netns, "eth0");
    assert_eq!(c.json()["code"], 105, "{}", c.stdout);
    let details = c.json()["details"].as_str().unwrap().to_string();
    assert!(
        details.contains("anti-spoofing entry") && details.contains(&other.to_string()),
        "{details}"
    );
    ip(&["-n", &pod.name, "addr", "flush", "dev", "eth0"]);
    ip(&[
        "netns",
        "exec",
        &node.ns.name,
        "tc",
        "qdisc",
        "del",
        "dev",
        &host,
        "clsact",
    ]);
    let c = node.call_with(&conf, "CHECK", "drift", &netns, "eth0");
    let e = c.json();
    assert_eq!(e["code"], 105, "{}", c.stdout);
    let details = e["details"].as_str().unwrap();
    assert!(details.contains("lacks address"), "{details}");
    assert!(details.contains("anti-spoofing"), "{details}");
    node.del("drift", &pod);
}

#[test]
fn anti_spoofing_can_be_turned_off() {
    let node = Node::new("10.200.5.0/24");
    let pod = node.pod();
    let mut conf = node.conf.clone();
    conf["antiSpoofing"] = json!(false);
    let netns = pod.path().display().to_string();
    let o = node.call_with(&conf, "ADD", "open", &netns, "eth0");
    assert!(o.ok(), "{}", o.stdout);
    let host = o.json()["interfaces"][1]["name"]
        .as_str()
        .unwrap()
        .to_string();
    let mut s = node.sock();
    let l = link::get_by_name(&mut s, &host).unwrap().unwrap();
    assert!(!podnet_cni::antispoof::is_installed(&mut s, l.index).unwrap());
    assert!(node.call_with(&conf, "DEL", "open", &netns, "eth0").ok());
}
