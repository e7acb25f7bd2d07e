//! Observability in a lab: a forged ARP reply and a policy-denied connection each show
//! up in `podnet observe` within a second, with the right reason, policy and pod
//! names, and in the matching counters of every node's `/metrics` (read with a
//! Prometheus text parser); allowed flows are reported while asked for. Both policy
//! datapaths.

use crate::common::{podnet, TestLab};
use podnet_lab::traffic::probe;
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// `podnet observe` running, its JSON lines arriving on a channel with their time.
struct Observer {
    child: Child,
    rx: mpsc::Receiver<(Instant, Value)>,
}

impl Observer {
    /// Runs `lab probe ARGS` (its exit code one of `codes`) until an event `wanted`
    /// arrives, for up to 15 s; that event.
    fn probe_until(
        &self,
        lab: &TestLab,
        args: &[&str],
        codes: &[i32],
        what: &str,
        wanted: impl Fn(&Value) -> bool,
    ) -> Value {
        let t = Instant::now();
        loop {
            let p = lab.run(args);
            assert!(
                p.status.code().is_some_and(|c| codes.contains(&c)),
                "{args:?}: {}",
                String::from_utf8_lossy(&p.stderr)
            );
            if let Ok((_, v)) = self.rx.recv_timeout(Duration::from_millis(500)) {
                if wanted(&v) {
                    return v;
                }
            }
            assert!(t.elapsed() < Duration::from_secs(15), "{what}: not seen");
        }
    }

    fn start(lab: &TestLab, extra: &[&str]) -> Observer {
        let mut child = podnet()
            .args([
                "observe", "--lab", &lab.name, "--output", "json", "--since", "10m",
            ])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("run podnet observe");
        let out = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| {
                    panic!("observe printed a line that is not JSON: {e}: {line}")
                });
                if tx.send((Instant::now(), v)).is_err() {
                    return;
                }
            }
        });
        Observer { child, rx }
    }

    /// The first event `ok` accepts, which must arrive within a second of `t0`.
    fn within_a_second(&self, what: &str, t0: Instant, ok: impl Fn(&Value) -> bool) -> Value {
        let (at, e) = self.wait(what, Duration::from_secs(5), ok);
        assert!(
            at - t0 < Duration::from_secs(1),
            "{what}: {:?} after it happened",
            at - t0
        );
        e
    }

    /// The first event `ok` accepts, and when it arrived; panics after `limit`.
    fn wait(&self, what: &str, limit: Duration, ok: impl Fn(&Value) -> bool) -> (Instant, Value) {
        let t = Instant::now();
        loop {
            let left = limit
                .checked_sub(t.elapsed())
                .unwrap_or_else(|| panic!("no event {what} within {limit:?}"));
            match self.rx.recv_timeout(left) {
                Ok((at, v)) if ok(&v) => return (at, v),
                Ok(_) => {}
                Err(_) => panic!("no event {what} within {limit:?}"),
            }
        }
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A node's `/metrics`, fetched inside its namespace, parsed.
fn metrics(lab: &TestLab, node: &str) -> prometheus_parse::Scrape {
    let text = lab.metrics_text(node);
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP answer");
    assert!(
        head.starts_with("HTTP/1.") && head.contains(" 200 "),
        "{head}"
    );
    prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string())))
        .unwrap_or_else(|e| panic!("{node}'s /metrics does not parse: {e}\n{body}"))
}

fn value(s: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    s.samples
        .iter()
        .find(|x| x.metric == name && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| match x.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => f64::NAN,
        })
        .unwrap_or(0.0)
}

use crate::common::lab_pod as pod;

const DENY: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-p2a, namespace: default}
spec:
  podSelector: {}
  policyTypes: [Ingress]
";

fn drops_and_denials_are_observed(datapath: &str) {
    let lab = TestLab::up(&[
        "--nodes",
        "2",
        "--pods-per-node",
        "1",
        "--policy-datapath",
        datapath,
    ]);
    let st = lab.json(&["status", "--output", "json"]);
    let ((ip1, mac1), (ip2, _)) = (pod(&st, "p1a"), pod(&st, "p2a"));
    let obs = Observer::start(&lab, &[]);
    // p1a claims p2a's address in an ARP reply: anti-spoofing drops it.
    let forge = || {
        let f = probe::arp_frame([0xff; 6], mac1, 2, mac1, ip2, [0; 6], ip2);
        probe::send_frame(&lab.ns("p1a"), "eth0", &f).unwrap();
    };
    let arp = |v: &Value| v["reason"] == "arp-spa" && v["verdict"] == "dropped";
    forge();
    // The first one shows the observer is following; the second is timed.
    obs.wait("arp-spa (warm-up)", Duration::from_secs(10), arp);
    let t0 = Instant::now();
    forge();
    let e = obs.within_a_second("arp-spa", t0, arp);
    assert_eq!(e["pod"], "p1a", "{e}");
    assert_eq!(e["namespace"], "default", "{e}");
    assert_eq!(e["node"], "node1", "{e}");
    assert_eq!(e["protocol"], "ARP", "{e}");
    assert_eq!(e["src"], ip2.to_string(), "the claimed address: {e}");
    assert_eq!(e["src_mac"], podnet_netlink::fmt_mac(&mac1), "{e}");

    // A connection NetworkPolicy refuses.
    let mut apply = podnet()
        .args(["lab", "--name", &lab.name, "apply", "-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    apply
        .stdin
        .take()
        .unwrap()
        .write_all(DENY.as_bytes())
        .unwrap();
    assert!(apply.wait().unwrap().success());
    let t0 = Instant::now();
    let p = lab.run(&["probe", "default/p1a", "default/p2a", "--port", "7777"]);
    assert_eq!(p.status.code(), Some(1), "the probe must be refused");
    let e = obs.within_a_second("policy denial", t0, |v| {
        v["reason"] == "policy" && v["verdict"] == "dropped"
    });
    assert_eq!(e["node"], "node2", "{e}");
    assert_eq!(e["pod"], "p2a", "{e}");
    assert_eq!(e["direction"], "ingress", "{e}");
    assert_eq!(e["policy"], "default/deny-p2a", "{e}");
    assert_eq!(e["protocol"], "TCP", "{e}");
    assert_eq!(e["port"], 7777, "{e}");
    assert_eq!(
        (e["src"].as_str(), e["dst"].as_str()),
        (
            Some(ip1.to_string().as_str()),
            Some(ip2.to_string().as_str())
        )
    );

    // The counters, through a Prometheus parser.
    let m1 = metrics(&lab, "node1");
    let arp_drops = value(
        &m1,
        "podnet_drops_total",
        &[
            ("reason", "arp-spa"),
            ("pod", "p1a"),
            ("namespace", "default"),
        ],
    );
    assert!(arp_drops >= 2.0, "arp-spa drops of p1a: {arp_drops}");
    assert_eq!(
        value(
            &m1,
            "podnet_cni_operations_total",
            &[("verb", "ADD"), ("result", "ok")]
        ),
        1.0
    );
    assert_eq!(value(&m1, "podnet_peers", &[]), 1.0);
    assert!(value(&m1, "process_resident_memory_bytes", &[]) > 0.0);
    let m2 = metrics(&lab, "node2");
    assert!(
        value(
            &m2,
            "podnet_drops_total",
            &[("reason", "policy-ingress"), ("pod", "p2a")]
        ) >= 1.0,
        "{:?}",
        m2.samples
            .iter()
            .filter(|s| s.metric == "podnet_drops_total")
            .collect::<Vec<_>>()
    );
    assert!(
        value(
            &m2,
            "podnet_policy_verdicts_total",
            &[
                ("policy", "default/deny-p2a"),
                ("direction", "ingress"),
                ("verdict", "denied")
            ]
        ) >= 1.0
    );
    // Every metric the Grafana dashboard in deploy/ queries is one podnetd serves.
    let dash: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../deploy/grafana/podnet-dashboard.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let mut queried = 0;
    for panel in dash["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().unwrap() {
            let expr = t["expr"].as_str().unwrap();
            for (i, _) in expr.match_indices('p') {
                let rest = &expr[i..];
                if !(rest.starts_with("podnet_") || rest.starts_with("process_"))
                    || expr[..i].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
                {
                    continue;
                }
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                let family = name.trim_end_matches("_bucket").trim_end_matches("_total");
                assert!(
                    m2.docs.contains_key(family) || m2.samples.iter().any(|s| s.metric == name),
                    "the dashboard queries {name}, which podnetd does not serve"
                );
                queried += 1;
            }
        }
    }
    assert!(
        queried >= 10,
        "{queried} metric references in the dashboard"
    );

    // Bounded: one series per pod and reason, not per connection. More refused
    // connections, on other ports, add packets to the series, never series.
    let drop_series = |m: &prometheus_parse::Scrape| {
        m.samples
            .iter()
            .filter(|s| s.metric == "podnet_drops_total")
            .map(|s| {
                let mut l: Vec<_> = s.labels.iter().collect();
                l.sort();
                format!("{l:?}")
            })
            .collect::<std::collections::BTreeSet<_>>()
    };
    let denied = |m: &prometheus_parse::Scrape| {
        value(
            m,
            "podnet_drops_total",
            &[("reason", "policy-ingress"), ("pod", "p2a")],
        )
    };
    for port in [7001, 7002, 7003] {
        let p = lab.run(&[
            "probe",
            "default/p1a",
            "default/p2a",
            "--port",
            &port.to_string(),
        ]);
        assert_eq!(p.status.code(), Some(1), "the probe must be refused");
    }
    let m3 = metrics(&lab, "node2");
    assert!(
        denied(&m3) >= denied(&m2) + 3.0,
        "the refused packets are counted"
    );
    assert_eq!(drop_series(&m3), drop_series(&m2));
}

#[test]
fn drops_and_denials_are_observed_with_nftables() {
    drops_and_denials_are_observed("nftables");
}

#[test]
fn drops_and_denials_are_observed_with_ebpf() {
    drops_and_denials_are_observed("ebpf");
}

#[test]
fn allowed_flows_are_reported_while_asked_for_with_ebpf() {
    allowed_flows_are_reported_while_asked_for("ebpf");
}

#[test]
fn allowed_flows_are_reported_while_asked_for_with_nftables() {
    allowed_flows_are_reported_while_asked_for("nftables");
}

fn allowed_flows_are_reported_while_asked_for(datapath: &str) {
    let lab = TestLab::up(&[
        "--nodes",
        "2",
        "--pods-per-node",
        "1",
        "--policy-datapath",
        datapath,
    ]);
    let obs = Observer::start(&lab, &["--verdict", "allowed"]);
    // Asked from the observer's first request on: probe until p2a's node reports the
    // admitted connection.
    let e = obs.probe_until(
        &lab,
        &["probe", "default/p1a", "default/p2a", "--port", "7777"],
        &[0],
        "an allowed flow reported by node2",
        |v| v["node"] == "node2",
    );
    assert_eq!(e["direction"], "ingress", "{e}");
    assert_eq!(e["pod"], "p2a", "{e}");
    assert_eq!(e["verdict"], "allowed", "{e}");
    assert_eq!(e["reason"], "not-isolated", "{e}");
    assert_eq!(e["protocol"], "TCP", "{e}");
    let m = metrics(&lab, "node2");
    assert!(
        value(
            &m,
            "podnet_policy_verdicts_total",
            &[("verdict", "allowed"), ("direction", "ingress")]
        ) >= 1.0
    );
}

/// On a dual-stack node, a connection refused over IPv6 is observed like one over
/// IPv4: the refusing pod, its policy, and the IPv6 addresses and port of the packet;
/// `policy stats` counts it for that pod. `datapath`: the policy datapath.
fn an_ipv6_denial_is_observed(datapath: &str) {
    let lab = TestLab::up(&[
        "--nodes",
        "2",
        "--pods-per-node",
        "1",
        "--ip-family",
        "dual",
        "--datapath",
        "bridge",
        "--policy-datapath",
        datapath,
    ]);
    let st = lab.json(&["status", "--output", "json"]);
    let ip6 = |name: &str| crate::common::lab_ip6(&st, name).to_string();
    let (a, b) = (ip6("p1a"), ip6("p2a"));
    let obs = Observer::start(&lab, &[]);
    lab.pipe_ok("apply", DENY);
    // Refused once the policy is in force (the probe is retried until then).
    let e = obs.probe_until(
        &lab,
        &[
            "probe",
            "default/p1a",
            "default/p2a",
            "--port",
            "7777",
            "--ipv6",
        ],
        &[0, 1],
        "an IPv6 denial observed",
        |v| v["reason"] == "policy" && v["verdict"] == "dropped" && v["src"] == a.as_str(),
    );
    assert_eq!(e["node"], "node2", "{e}");
    assert_eq!(e["pod"], "p2a", "{e}");
    assert_eq!(e["direction"], "ingress", "{e}");
    assert_eq!(e["policy"], "default/deny-p2a", "{e}");
    assert_eq!(e["protocol"], "TCP", "{e}");
    assert_eq!(e["port"], 7777, "{e}");
    assert_eq!(e["dst"], b.as_str(), "{e}");
    // Only IPv6 was refused to p2a: its count is the IPv6 set's.
    let o = podnet()
        .args(["policy", "stats", "--lab", &lab.name, "--output", "json"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stats: Value = serde_json::from_slice(&o.stdout).unwrap();
    let p2a = stats
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|n| n["denied"].as_array().cloned().unwrap_or_default())
        .find(|d| d["pod"] == "default/p2a" && d["direction"] == "ingress")
        .unwrap_or_else(|| panic!("p2a's ingress not in the stats: {stats:#}"));
    assert!(p2a["packets"].as_u64().unwrap() >= 1, "{p2a}");
}

#[test]
fn an_ipv6_denial_is_observed_with_nftables() {
    an_ipv6_denial_is_observed("nftables");
}

/// The eBPF datapath's IPv6 record in the ring buffer (`struct policy_event6`) and its
/// IPv6 drop counters.
#[test]
fn an_ipv6_denial_is_observed_with_ebpf() {
    an_ipv6_denial_is_observed("ebpf");
}
