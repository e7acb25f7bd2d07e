//! Doctor's checks on recorded node states.

use super::*;
use crate::trace::LocalAgent;

/// node1 of a two-node VXLAN lab, as its agent answers `status` (recorded; the
/// peer list trimmed to what these checks read).
const STATUS: &str = r#"{"node":"node1","backend":"vxlan","pod_cidr":"10.244.0.0/24",
    "underlay_dev":"eth0","underlay_ip":"192.168.1.10","vtep_mac":"0a:59:c0:a8:01:0a",
    "bridge":"podnet0","vxlan_dev":"podnet.vxlan","vxlan_port":8472,"overlay_overhead":50,
    "datapath":"bridge","mtu":1450,"repair":true,"datastore":"file:/run/podnet/lab/lab/datastore",
    "peers":[],"last_sync":1796000000,"changes":12,"pid":4242,"datastore_problems":[]}"#;

/// Its `state` answer (recorded; routes, neighbours and FDB left out).
const STATE: &str = r#"{"bridge":"podnet0","vxlan_dev":"podnet.vxlan","links":[
    {"name":"eth0","index":2,"kind":"veth","up":true,"mtu":1500,"mac":"ee:10:c0:a8:01:0a","master":null,"vxlan":null},
    {"name":"podnet0","index":3,"kind":"bridge","up":true,"mtu":1450,"mac":"0a:58:0a:f4:00:01","master":null,"vxlan":null},
    {"name":"podnet.vxlan","index":4,"kind":"vxlan","up":true,"mtu":1450,"mac":"0a:59:c0:a8:01:0a","master":null,
     "vxlan":{"vni":1,"port":8472,"local":"192.168.1.10","learning":false}}],
    "routes":[],"neigh":[],"fdb":[],"forwarding":true,"conntrack":{"count":39,"max":262144},
    "rp_filter":{"all":0}}"#;

/// The findings of the device checks on a node whose answers are edited by `edit`.
fn devices_of(edit: impl FnOnce(&mut Status, &mut NodeState)) -> Vec<Finding> {
    findings_of(devices, edit)
}

/// The findings of `check` on a node whose answers are edited by `edit`.
fn findings_of(
    check: fn(&mut Out, &NodeView),
    edit: impl FnOnce(&mut Status, &mut NodeState),
) -> Vec<Finding> {
    let mut st: Status = serde_json::from_str(STATUS).expect("a recorded status");
    let mut state: NodeState = serde_json::from_str(STATE).expect("a recorded state");
    edit(&mut st, &mut state);
    let (agent, agents) = (
        Client::new("/nonexistent"),
        LocalAgent("/nonexistent".into()),
    );
    let others = Default::default();
    let view = NodeView {
        node: "node1",
        agent: &agent,
        agents: &agents,
        st: &st,
        state: &state,
        others: &others,
    };
    let mut f = Vec::new();
    check(
        &mut Out {
            node: "node1",
            f: &mut f,
        },
        &view,
    );
    f
}

fn broken(f: &[Finding]) -> Vec<(String, String)> {
    f.iter()
        .filter(|x| x.status != "ok")
        .map(|x| (x.check.clone(), x.detail.clone()))
        .collect()
}

#[test]
fn a_healthy_node_has_every_device_check_ok() {
    let f = devices_of(|_, _| {});
    assert_eq!(broken(&f), vec![]);
    let checks: Vec<&str> = f.iter().map(|x| x.check.as_str()).collect();
    for c in ["datastore", "bridge", "vxlan", "underlay", "forwarding"] {
        assert!(checks.contains(&c), "{c} not checked: {checks:?}");
    }
}

#[test]
fn each_broken_device_is_named_as_itself() {
    let f = devices_of(|_, s| s.links[2].up = false);
    assert_eq!(
        broken(&f),
        vec![(
            "vxlan".to_string(),
            "VXLAN device podnet.vxlan on node1 is down".to_string()
        )]
    );
    // Up, but not as its agent made it: the port differs from the nodes'.
    let f = devices_of(|_, s| s.links[2].vxlan.as_mut().unwrap().port = 4789);
    let b = broken(&f);
    assert_eq!(b.len(), 1, "{b:?}");
    assert!(
        b[0].1.contains("uses UDP port 4789; the nodes use 8472"),
        "{b:?}"
    );
    // The bridge missing, forwarding off, the datastore refusing: three findings.
    let f = devices_of(|st, s| {
        s.links.remove(1);
        s.forwarding = false;
        st.datastore_problems = vec!["watch on Nodes refused: 403".into()];
    });
    let b: Vec<String> = broken(&f).into_iter().map(|(c, _)| c).collect();
    assert_eq!(b, ["datastore", "bridge", "forwarding"]);
}

#[test]
fn masquerade_is_named_off_drifted_or_in_place() {
    let m = |edit: fn(&mut podnet_api::MasqueradeStatus)| {
        findings_of(masquerade, |st, _| {
            let mut m = podnet_api::MasqueradeStatus {
                on: true,
                cluster: "10.244.0.0/16".into(),
                keep: vec!["10.244.0.0/16".into(), "169.254.0.0/16".into()],
                problem: None,
                packets: 7,
                ipv6: None,
            };
            edit(&mut m);
            st.masquerade = Some(m);
        })
    };
    let ok = m(|_| {});
    assert_eq!(
        (ok[0].check.as_str(), ok[0].status.as_str()),
        ("masquerade", "ok")
    );
    assert!(
        ok[0]
            .detail
            .contains("outside 10.244.0.0/16, 169.254.0.0/16: 7 packets"),
        "{ok:?}"
    );
    let gone = m(|m| m.problem = Some("table ip podnet_nat is gone".into()));
    assert_eq!(gone[0].status, "broken");
    assert!(
        gone[0].detail.starts_with("table ip podnet_nat is gone"),
        "{gone:?}"
    );
    // A dual-stack node: IPv6's table is its own finding, broken on its own.
    let six = m(|m| {
        m.ipv6 = Some(Box::new(podnet_api::MasqueradeStatus {
            on: true,
            cluster: "fd00:10:244::/56".into(),
            keep: vec!["fd00:10:244::/56".into(), "fe80::/10".into()],
            problem: Some("table ip6 podnet_nat is gone".into()),
            ..Default::default()
        }))
    });
    let c: Vec<(&str, &str)> = six
        .iter()
        .map(|f| (f.check.as_str(), f.status.as_str()))
        .collect();
    assert_eq!(c, [("masquerade", "ok"), ("masquerade6", "broken")]);
    assert!(six[1].detail.contains("ip6 podnet_nat"), "{six:?}");
    let off = m(|m| m.on = false);
    assert!(
        off[0].status == "ok" && off[0].detail.starts_with("off"),
        "{off:?}"
    );
    // kube-proxy in IPVS mode: named as broken.
    let ipvs = findings_of(masquerade, |st, _| {
        st.service_problems = vec!["kube-proxy runs in IPVS mode".into()]
    });
    assert_eq!(
        (ipvs[0].check.as_str(), ipvs[0].status.as_str()),
        ("services", "broken")
    );
}
