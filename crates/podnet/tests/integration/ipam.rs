//! Addresses under pressure: many concurrent ADDs, exhaustion then GC, kill -9.

use crate::common::*;
use serde_json::json;
use std::collections::HashSet;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

#[test]
fn forty_eight_concurrent_adds_get_distinct_addresses() {
    let node = Node::new("10.202.0.0/24");
    let pods: Vec<_> = (0..48).map(|_| node.pod()).collect();
    let results: Vec<serde_json::Value> = std::thread::scope(|s| {
        let hs: Vec<_> = pods
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let node = &node;
                s.spawn(move || node.add(&format!("conc-{i}"), p))
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ips: HashSet<_> = results.iter().map(result_ip).collect();
    assert_eq!(ips.len(), 48, "an address was handed out twice");
    let macs: HashSet<_> = results
        .iter()
        .map(|r| r["interfaces"][2]["mac"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(macs.len(), 48);
    assert_eq!(node.allocations().len(), 48);
    assert_eq!(node.host_veths().len(), 48);
    std::thread::scope(|s| {
        for (i, p) in pods.iter().enumerate() {
            let node = &node;
            s.spawn(move || node.del(&format!("conc-{i}"), p));
        }
    });
    assert!(node.allocations().is_empty());
    assert!(node.host_veths().is_empty());
}

#[test]
fn exhaustion_is_explained_and_gc_reclaims() {
    // A /29: network .0, gateway .1, broadcast .7 — five pods at most.
    let node = Node::new("10.202.1.0/29");
    let pods: Vec<_> = (0..6).map(|_| node.pod()).collect();
    for (i, p) in pods.iter().take(5).enumerate() {
        let ip = result_ip(&node.add(&format!("ex-{i}"), p));
        assert!(
            ![0u8, 1, 7].contains(&ip.octets()[3]),
            "assigned a reserved address {ip}"
        );
    }
    let o = node.call("ADD", "ex-5", &pods[5]);
    let e = o.json();
    assert_eq!(e["code"], 102, "{}", o.stdout);
    assert!(
        e["msg"].as_str().unwrap().contains("10.202.1.0/29"),
        "{}",
        o.stdout
    );
    let s = node.call_with(&node.conf, "STATUS", "", "", "");
    assert_eq!(
        s.json()["code"],
        50,
        "STATUS must say the node cannot serve ADD: {}",
        s.stdout
    );

    // The runtime lost track of three pods (leaks); GC with the two it knows.
    let mut gc = node.conf.clone();
    gc["cni.dev/valid-attachments"] = json!([
        {"containerID": "ex-0", "ifname": "eth0"}, {"containerID": "ex-1", "ifname": "eth0"}
    ]);
    let o = node.call_with(&gc, "GC", "", "", "");
    assert!(o.ok(), "{}", o.stdout);
    assert_eq!(node.allocations().len(), 2);
    assert_eq!(node.host_veths().len(), 2);
    assert!(node.call_with(&node.conf, "STATUS", "", "", "").ok());
    node.add("ex-5", &pods[5]);
}

/// Starts an ADD and kills it with SIGKILL after `delay`; true if it was still running
/// (the kill landed mid-ADD).
fn add_killed(
    node: &Node,
    cid: &str,
    pod: &podnet_lab::scratch::ScratchNs,
    delay: Duration,
) -> bool {
    let plugin = plugin();
    let fd = node.ns.ns.fd();
    let mut cmd = Command::new(&plugin);
    cmd.env("CNI_COMMAND", "ADD")
        .env("CNI_CONTAINERID", cid)
        .env("CNI_NETNS", pod.path())
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/usr/lib/cni")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: setns between fork and exec.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&serde_json::to_vec(&node.conf).unwrap())
        .unwrap();
    std::thread::sleep(delay);
    let running = matches!(child.try_wait(), Ok(None));
    let _ = child.kill();
    let _ = child.wait();
    running
}

#[test]
fn kill_9_during_add_leaves_nothing_that_del_and_gc_cannot_clean() {
    let node = Node::new("10.202.2.0/24");
    // How long one ADD takes here and now (a loaded machine is slower): the kill
    // points are spread over it, from a tenth of it to a little past its end.
    let full = {
        let p = node.pod();
        let t = std::time::Instant::now();
        node.add("k9-measure", &p);
        let d = t.elapsed();
        node.del("k9-measure", &p);
        d
    };
    // A kill counts as landing mid-work when the plugin was still running and had
    // already left a trace of its work — an address held, or the host veth made —
    // which it would have finished (or rolled back) had it lived. Kill until three
    // such kills landed (or give up after 80 tries).
    let mut pods = Vec::new();
    let mut half_done = 0;
    // The measured ADD may have been a slow one (the node's first loads the datapath
    // program; a busy moment stretches any): kills that keep landing after the end
    // shrink the scale, kills that land before any trace grow it.
    let mut scale = full;
    while half_done < 3 && pods.len() < 80 {
        let i = pods.len();
        let p = node.pod();
        let cid = format!("k9-{i}");
        let delay = scale.mul_f64(0.1 + (i % 11) as f64 * 0.1);
        let running = add_killed(&node, &cid, &p, delay);
        let allocated = node.allocations().iter().any(|(_, c)| *c == cid);
        let veth = node
            .host_veths()
            .contains(&podnet_conventions::host_veth_name(&cid, "eth0"));
        half_done += usize::from(running && (allocated || veth));
        if !running {
            scale = scale.mul_f64(0.8);
        } else if !(allocated || veth) {
            scale = scale.mul_f64(1.1);
        }
        pods.push(p);
    }
    assert!(
        half_done >= 3,
        "only {half_done} of {} kills landed with an ADD (of {full:?}) half done: the test proves nothing",
        pods.len()
    );
    // The state is readable whatever the kill hit, and holds only these attachments,
    // each at most once.
    let held = node.allocations();
    let mut owners: Vec<&str> = held.iter().map(|(_, c)| c.as_str()).collect();
    assert!(owners.iter().all(|c| c.starts_with("k9-")), "{held:?}");
    owners.sort();
    owners.dedup();
    assert_eq!(
        owners.len(),
        held.len(),
        "an attachment holds two addresses: {held:?}"
    );
    // A retried ADD of a killed attachment works (the runtime may retry).
    let r = node.add("k9-0", &pods[0]);
    assert!(result_ip(&r).to_string().starts_with("10.202.2."));
    // DEL of every attachment succeeds and leaves nothing.
    for (i, p) in pods.iter().enumerate() {
        node.del(&format!("k9-{i}"), p);
    }
    assert!(node.allocations().is_empty(), "{:?}", node.allocations());
    assert!(node.host_veths().is_empty(), "{:?}", node.host_veths());
    // And a fresh ADD still works.
    node.add("k9-after", &pods[0]);
    let mut gc = node.conf.clone();
    gc["cni.dev/valid-attachments"] = json!([]);
    assert!(node.call_with(&gc, "GC", "", "", "").ok());
    assert!(node.allocations().is_empty());
    assert!(node.host_veths().is_empty());
}
