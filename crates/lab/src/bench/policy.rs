//! `podnet bench policy`: what NetworkPolicy costs, both datapaths and the classic
//! baseline side by side in one run.
//!
//! - **Per packet.** One node, a client and a server pod; the server is selected by a
//!   policy of N ingress rules (N = 0, 100, 1 000, 10 000), each an ipBlock /32 with
//!   a port, plus the rule that admits the client — last, the worst case for a linear
//!   chain. Measured: one iperf3 TCP stream (throughput) and TCP connections opened
//!   and closed per second (new-connection rate), median of the rounds. Paths:
//!   podnet's nftables datapath, podnet's eBPF datapath, and the baseline built by
//!   hand in the same run — an iptables chain with one rule per allowed peer and port
//!   (established connections accepted first), as kube-router and early Calico did,
//!   on a lab node without podnet's policy.
//! - **Programming latency.** 100 local pods and 1 000 policies on one node; then one
//!   policy changed at a time: from the datastore write to the agent reporting that
//!   its datapath holds the change. p50 and p99 per datapath.
//! - **Compile.** The pure compiler on 10 000 policies over 5 000 pods: all pods, and
//!   one node's 100.
//! - **Agent memory** (VmRSS of podnetd) with the 10 000-rule policy programmed.
//!
//! Everything runs in lab namespaces this run creates and takes down, also on failure.

pub mod spray;

use crate::bench::datapath::{iperf, LabGuard};
use crate::{Binaries, Lab, Options as LabOptions};
use anyhow::{bail, Context, Result};
use podnet_netlink::{netns, Netns};
use podnet_policy::{Cluster, Object};
use serde::Serialize;
use serde_json::json;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub struct Options {
    pub rules: Vec<usize>,
    pub seconds: u32,
    pub rounds: u32,
    /// Policy changes timed for the programming latency.
    pub changes: usize,
    /// Only these parts (`per-packet`, `latency`, `compile`); empty: all.
    pub only: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Cell {
    pub datapath: String,
    pub rules: usize,
    pub gbit_per_s: f64,
    pub connections_per_s: f64,
    /// Against the same datapath with 0 rules.
    pub throughput_vs_0: f64,
    pub connections_vs_0: f64,
    /// podnetd's resident memory after the largest rule count (podnet datapaths).
    pub agent_rss_mib: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Latency {
    pub datapath: String,
    pub pods: usize,
    pub policies: usize,
    pub changes: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Medians of the agent's own account of each change (its status): reading the
    /// objects, compiling, and the whole round (the rest is programming the datapath).
    pub agent_read_ms: f64,
    pub agent_compile_ms: f64,
    pub agent_round_ms: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Compile {
    pub policies: usize,
    pub pods: usize,
    pub all_pods_ms: f64,
    pub one_node_ms: f64,
    pub one_node_pods: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub seconds: u32,
    pub rounds: u32,
    pub per_packet: Vec<Cell>,
    pub latency: Vec<Latency>,
    pub compile: Option<Compile>,
}

fn obj(v: serde_json::Value) -> Object {
    Object::from_json(v).expect("bench objects are valid")
}

fn pod(ns: &str, name: &str, labels: serde_json::Value, node: &str, ports: &[u16]) -> Object {
    let ports: Vec<_> = ports.iter().map(|p| json!({"containerPort": p})).collect();
    obj(
        json!({"apiVersion":"v1","kind":"Pod","metadata":{"name":name,"namespace":ns,"labels":labels},
        "spec":{"nodeName":node,"containers":[{"ports":ports}]}}),
    )
}

/// The server's policy: `n` ipBlock rules, then the one admitting the client.
fn server_policy(n: usize) -> Object {
    let mut rules: Vec<serde_json::Value> = (0..n)
        .map(|i| {
            json!({"from":[{"ipBlock":{"cidr":format!("172.{}.{}.{}/32", 16 + i / 65536, (i / 256) % 256, i % 256)}}],
                   "ports":[{"port": 10000 + (i % 50000) as i32}]})
        })
        .collect();
    rules.push(json!({"from":[{"podSelector":{"matchLabels":{"role":"client"}}}],"ports":[{"port":5201},{"port":5203}]}));
    obj(
        json!({"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy","metadata":{"name":"bench","namespace":"bench"},
        "spec":{"podSelector":{"matchLabels":{"role":"server"}},"ingress":rules}}),
    )
}

/// The baseline: one iptables rule per allowed peer and port, in a chain on the
/// node's FORWARD path, established connections first.
fn iptables_chain(node: &Netns, server: Ipv4Addr, client: Ipv4Addr, n: usize) -> Result<()> {
    let mut s = String::from("*filter\n:PODNET-BENCH - [0:0]\n-F FORWARD\n");
    s += &format!("-A FORWARD -d {server}/32 -j PODNET-BENCH\n");
    s += "-A PODNET-BENCH -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT\n";
    for i in 0..n {
        s += &format!(
            "-A PODNET-BENCH -s 172.{}.{}.{}/32 -p tcp --dport {} -j ACCEPT\n",
            16 + i / 65536,
            (i / 256) % 256,
            i % 256,
            10000 + i % 50000
        );
    }
    for port in [5201, 5203] {
        s += &format!("-A PODNET-BENCH -s {client}/32 -p tcp --dport {port} -j ACCEPT\n");
    }
    s += "-A PODNET-BENCH -j DROP\nCOMMIT\n";
    let mut child = crate::bench::datapath::setns_cmd(node, "iptables-restore")
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("run iptables-restore (apt-get install iptables)")?;
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), s.as_bytes())?;
    let o = child.wait_with_output()?;
    if !o.status.success() {
        bail!("iptables-restore: {}", String::from_utf8_lossy(&o.stderr));
    }
    Ok(())
}

/// Closes with a reset (SO_LINGER 0): no TIME_WAIT is left behind.
fn abortive_close(c: TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a socket we own, with a valid linger struct.
    unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&c),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as u32,
        )
    };
}

/// TCP connections opened and closed per second from `src` to `dst:port`.
fn conn_rate(src: &Netns, dst: &Netns, ip: Ipv4Addr, seconds: u32) -> Result<f64> {
    let l = dst.run(|| TcpListener::bind(SocketAddrV4::new(ip, 5203)))??;
    // A deep accept queue: std listens with 128, and when the accept thread loses
    // the CPU for a moment (two cores, the client and softirqs busy) the queue
    // overflows, the SYN is dropped and the client waits a second to retransmit it.
    // SAFETY: listen() again on our listening socket only changes its backlog.
    unsafe { libc::listen(std::os::fd::AsRawFd::as_raw_fd(&l), 4096) };
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| -> Result<f64> {
        // A blocking accept loop, so the listen queue never overflows on our side.
        // Both sides close with a reset: an orderly close by either would leave a
        // TIME_WAIT socket for 60 s, and once this loop has gone through the
        // ephemeral ports (two seconds at 15 000 connections a second) a SYN that
        // meets one waits a second for its retransmission — later cells then measured
        // ~1 000 connections a second whatever their rules.
        s.spawn(|| {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok((c, _)) = l.accept() {
                    abortive_close(c);
                }
            }
        });
        let r = src.run(|| -> Result<f64> {
            let t = Instant::now();
            let mut n = 0u64;
            let limit = Duration::from_secs(u64::from(seconds));
            while t.elapsed() < limit {
                match TcpStream::connect_timeout(
                    &SocketAddrV4::new(ip, 5203).into(),
                    Duration::from_secs(3),
                ) {
                    Ok(c) => abortive_close(c),
                    // The server's reset overtook the connect's return: the
                    // connection was made (a refused or dropped one never gets here).
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
                    Err(e) => {
                        return Err(anyhow::Error::new(e)
                            .context(format!("connect to {ip}:5203 (the policy should admit it)")))
                    }
                }
                n += 1;
            }
            Ok(n as f64 / t.elapsed().as_secs_f64())
        });
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        // Wake the accept loop so that it sees the stop: shutting a listening socket
        // down fails a blocked accept (a connection made to wake it would hang the
        // loop whenever the datapath loses that connection's reply).
        // SAFETY: shutdown on our own listening socket.
        unsafe { libc::shutdown(std::os::fd::AsRawFd::as_raw_fd(&l), libc::SHUT_RDWR) };
        r?
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn rss_mib(lab: &Lab, node: &str) -> Option<f64> {
    let pid = lab.live_pid(node, "podnetd")?;
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = s
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

fn bench_lab(name: &str, datapath: &str, bins: &Binaries) -> Result<(LabGuard, Lab)> {
    let guard = LabGuard(name.to_string());
    let lab = Lab::open(name)?;
    lab.up(
        &LabOptions {
            nodes: 1,
            pods_per_node: 0,
            backend: None,
            datastore: None,
            repair: None,
            policy_datapath: Some(datapath.parse()?),
            kubernetes: None,
            real_nodes: None,
            proxy_mode: None,
            masquerade: None,
            ip_family: None,
            datapath: None,
            underlay_family: None,
        },
        bins,
        &mut |_| {},
    )?;
    Ok((guard, lab))
}

fn pod_ns(lab: &Lab, key: &str) -> Result<(Netns, Ipv4Addr)> {
    let st = lab.load()?.context("lab state")?;
    let p = st.find_pod(key).with_context(|| format!("no pod {key}"))?;
    Ok((Netns::open(netns::named_path(&p.netns))?, p.ip))
}

/// Each rule count's throughput and connection-rate samples, one per round.
type PerPacketSamples = std::collections::BTreeMap<usize, (Vec<f64>, Vec<f64>)>;

/// Per-packet cost of one datapath (`iptables` is the baseline) at every rule count.
fn per_packet(
    datapath: &str,
    tag: &str,
    opts: &Options,
    bins: &Binaries,
    say: &mut dyn FnMut(&str),
) -> Result<Vec<Cell>> {
    let lab_dp = if datapath == "iptables" {
        "none"
    } else {
        datapath
    };
    let (_g, lab) = bench_lab(&format!("{tag}{}", &datapath[..2]), lab_dp, bins)?;
    let ns = obj(json!({"apiVersion":"v1","kind":"Namespace","metadata":{"name":"bench"}}));
    lab.apply(
        &[
            ns,
            pod("bench", "client", json!({"role":"client"}), "node1", &[]),
            // No declared ports: the pod's own server must not take iperf3's.
            pod("bench", "server", json!({"role":"server"}), "node1", &[]),
        ],
        true,
        bins,
        &mut |_| {},
    )?;
    let (client, cip) = pod_ns(&lab, "bench/client")?;
    let (server, sip) = pod_ns(&lab, "bench/server")?;
    let node = Netns::open(netns::named_path(&lab.node_ns("node1")))?;
    // Warm-up, not reported: the first connections of fresh namespaces are slower
    // (neighbour resolution, conntrack and flow tables growing).
    iperf(datapath, &client, &server, sip, 1)?;
    conn_rate(&client, &server, sip, 1)?;
    // Rounds outside, rule counts inside (every other round in reverse order), so that
    // the machine's drift during a run spreads over every count alike; each cell is
    // the median of its rounds.
    let mut samples: PerPacketSamples = Default::default();
    for round in 0..opts.rounds {
        let mut order = opts.rules.clone();
        if round % 2 == 1 {
            order.reverse();
        }
        for &n in &order {
            say(&format!(
                "{datapath}: {n} rules (round {}/{})",
                round + 1,
                opts.rounds
            ));
            set_rules(datapath, &lab, &node, sip, cip, n, bins)?;
            let e = samples.entry(n).or_default();
            e.0.push(iperf(datapath, &client, &server, sip, opts.seconds)?);
            e.1.push(conn_rate(&client, &server, sip, opts.seconds.min(2))?);
        }
    }
    per_packet_cells(datapath, opts, &lab, samples)
}

/// Puts `n` rules in front of the server: an iptables chain for the baseline, else a
/// policy of `n` rules (none at all for 0), waited for.
fn set_rules(
    datapath: &str,
    lab: &Lab,
    node: &Netns,
    sip: Ipv4Addr,
    cip: Ipv4Addr,
    n: usize,
    bins: &Binaries,
) -> Result<()> {
    match datapath {
        "iptables" => iptables_chain(node, sip, cip, n)?,
        _ if n == 0 => {
            let st = lab.load()?.context("lab state")?;
            lab.delete_objects(
                &st,
                &[("NetworkPolicy".into(), "bench".into(), "bench".into())],
            )?;
            lab.wait_policy(&st, None)?;
        }
        _ => {
            lab.apply(&[server_policy(n)], true, bins, &mut |_| {})?;
        }
    }
    Ok(())
}

/// Each rule count's cell: medians over the rounds, against 0 rules, and the agent's
/// memory at the largest count.
fn per_packet_cells(
    datapath: &str,
    opts: &Options,
    lab: &Lab,
    samples: PerPacketSamples,
) -> Result<Vec<Cell>> {
    let measured: Vec<(usize, f64, f64)> = samples
        .into_iter()
        .map(|(n, (g, c))| (n, median(g), median(c)))
        .collect();
    let base = measured
        .iter()
        .find(|m| m.0 == 0)
        .map(|m| (m.1, m.2))
        .context("0 rules measured")?;
    let rss = (datapath != "iptables")
        .then(|| rss_mib(lab, "node1"))
        .flatten();
    let mut out: Vec<Cell> = Vec::new();
    for &n in &opts.rules {
        let m = measured
            .iter()
            .find(|m| m.0 == n)
            .context("every count measured")?;
        let (gbit, conns) = (m.1, m.2);
        out.push(Cell {
            datapath: if datapath == "iptables" {
                "iptables chain (baseline)".into()
            } else {
                format!("podnet {datapath}")
            },
            rules: n,
            gbit_per_s: gbit,
            connections_per_s: conns,
            throughput_vs_0: gbit / base.0,
            connections_vs_0: conns / base.1,
            agent_rss_mib: if n == *opts.rules.iter().max().unwrap_or(&0) {
                rss
            } else {
                None
            },
        });
    }
    Ok(out)
}

/// Programming latency with `pods` local pods and `policies` policies.
fn latency(
    datapath: &str,
    tag: &str,
    opts: &Options,
    bins: &Binaries,
    say: &mut dyn FnMut(&str),
) -> Result<Latency> {
    let (pods, policies) = (100, 1000);
    let (_g, lab) = bench_lab(&format!("{tag}l{}", &datapath[..2]), datapath, bins)?;
    say(&format!("{datapath}: {pods} pods and {policies} policies"));
    let mut objs = vec![obj(
        json!({"apiVersion":"v1","kind":"Namespace","metadata":{"name":"lat"}}),
    )];
    for i in 0..pods {
        objs.push(pod(
            "lat",
            &format!("p{i}"),
            json!({"app": format!("a{}", i % 10)}),
            "node1",
            &[],
        ));
    }
    let policy = |i: usize, port: i32| {
        obj(
            json!({"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy","metadata":{"name":format!("np{i}"),"namespace":"lat"},
            "spec":{"podSelector":{"matchLabels":{"app":format!("a{}", i % 10)}},
                    "ingress":[{"from":[{"podSelector":{"matchLabels":{"app":format!("a{}", (i + 1) % 10)}}}],"ports":[{"port":port}]}]}}),
        )
    };
    for i in 0..policies {
        objs.push(policy(i, 1000 + i as i32));
    }
    lab.apply(&objs, true, bins, &mut |_| {})?;
    let st = lab.load()?.context("lab state")?;
    let agent = lab.agent("node1");
    let mut ms = Vec::new();
    let mut phases = Vec::new();
    for c in 0..opts.changes {
        let changed = policy(c * 37 % policies, 30000 + c as i32);
        let t = Instant::now();
        let rev = lab.put_objects(&st, &[changed])?;
        loop {
            if agent.policy_revision()?.revision >= rev {
                break;
            }
            if t.elapsed() > Duration::from_secs(10) {
                bail!("{datapath}: change {c} not programmed within 10 s");
            }
            std::thread::sleep(Duration::from_micros(500));
        }
        ms.push(t.elapsed().as_secs_f64() * 1000.0);
        let st = agent.policy()?;
        phases.push((
            st.last_change_read_ms,
            st.last_change_compile_ms,
            st.last_change_ms,
        ));
    }
    let median = |f: fn(&(f64, f64, f64)) -> f64| {
        let mut v: Vec<f64> = phases.iter().map(f).collect();
        v.sort_by(|a, b| a.total_cmp(b));
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    };
    ms.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| ms[((ms.len() as f64 * p).ceil() as usize).clamp(1, ms.len()) - 1];
    Ok(Latency {
        datapath: format!("podnet {datapath}"),
        pods,
        policies,
        changes: ms.len(),
        p50_ms: pct(0.5),
        p99_ms: pct(0.99),
        max_ms: *ms.last().unwrap(),
        agent_read_ms: median(|p| p.0),
        agent_compile_ms: median(|p| p.1),
        agent_round_ms: median(|p| p.2),
    })
}

/// The compiler alone: 10 000 policies over 5 000 pods in 50 namespaces.
pub fn compile_bench() -> Compile {
    let (npods, npolicies) = (5000, 10000);
    let mut objs = Vec::new();
    for n in 0..50 {
        objs.push(obj(json!({"apiVersion":"v1","kind":"Namespace","metadata":{"name":format!("ns{n}"),"labels":{"team":format!("t{}", n % 5)}}})));
    }
    for i in 0..npods {
        let node = format!("node{}", i % 50);
        let mut p = pod(
            &format!("ns{}", i % 50),
            &format!("p{i}"),
            json!({"app": format!("a{}", i % 20), "tier": format!("t{}", i % 3)}),
            &node,
            &[8080],
        );
        if let Object::Pod(p) = &mut p {
            p.status = Some(podnet_policy::objects::PodStatus {
                pod_ip: Some(Ipv4Addr::from(0x0af4_0000u32 + i as u32 + 2).to_string()),
                pod_ips: vec![],
            });
        }
        objs.push(p);
    }
    for i in 0..npolicies {
        objs.push(obj(json!({"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy",
            "metadata":{"name":format!("np{i}"),"namespace":format!("ns{}", i % 50)},
            "spec":{"podSelector":{"matchLabels":{"app":format!("a{}", i % 20)}},
                    "ingress":[{"from":[{"namespaceSelector":{"matchLabels":{"team":format!("t{}", i % 5)}},
                                         "podSelector":{"matchLabels":{"tier":format!("t{}", i % 3)}}},
                                        {"ipBlock":{"cidr":format!("192.168.{}.0/24", i % 256),"except":[format!("192.168.{}.7/32", i % 256)]}}],
                                "ports":[{"port":8080},{"port":9000,"endPort":9100}]}]}})));
    }
    let c = Cluster::from_objects(&objs);
    let t = Instant::now();
    let all = podnet_policy::compile(&c, |_| true);
    let all_ms = t.elapsed().as_secs_f64() * 1000.0;
    let t = Instant::now();
    let one = podnet_policy::compile(&c, |p| p.node.as_deref() == Some("node0"));
    let one_ms = t.elapsed().as_secs_f64() * 1000.0;
    assert_eq!(all.len(), npods);
    Compile {
        policies: npolicies,
        pods: npods,
        all_pods_ms: all_ms,
        one_node_ms: one_ms,
        one_node_pods: one.len(),
    }
}

pub fn run(opts: &Options, bins: &Binaries, say: &mut dyn FnMut(&str)) -> Result<Report> {
    let tag = format!("pb{}", std::process::id() % 100000);
    let want = |part: &str| opts.only.is_empty() || opts.only.iter().any(|o| o == part);
    let mut per = Vec::new();
    if want("per-packet") {
        for dp in ["nftables", "ebpf", "iptables"] {
            per.extend(per_packet(dp, &tag, opts, bins, say)?);
        }
    }
    let mut lat = Vec::new();
    if want("latency") {
        for dp in ["nftables", "ebpf"] {
            lat.push(latency(dp, &tag, opts, bins, say)?);
        }
    }
    let compile = if want("compile") {
        say("compiling 10 000 policies over 5 000 pods");
        Some(compile_bench())
    } else {
        None
    };
    Ok(Report {
        seconds: opts.seconds,
        rounds: opts.rounds,
        per_packet: per,
        latency: lat,
        compile,
    })
}

pub fn render(r: &Report) -> String {
    let mut s = format!(
        "Per packet: one node, client → server pod selected by N ingress rules (ipBlock /32 + port each; the client's rule last). Median of {} rounds; iperf3 {} s, connections opened and closed for {} s, rounds interleaved over the rule counts.\n\n",
        r.rounds,
        r.seconds,
        r.seconds.min(2)
    );
    s += &format!(
        "{:<28} {:>7} {:>9} {:>7} {:>10} {:>7} {:>9}\n",
        "datapath", "rules", "Gbit/s", "vs 0", "conn/s", "vs 0", "RSS MiB"
    );
    for c in &r.per_packet {
        s += &format!(
            "{:<28} {:>7} {:>9.2} {:>6.0}% {:>10.0} {:>6.0}% {:>9}\n",
            c.datapath,
            c.rules,
            c.gbit_per_s,
            c.throughput_vs_0 * 100.0,
            c.connections_per_s,
            c.connections_vs_0 * 100.0,
            c.agent_rss_mib
                .map(|m| format!("{m:.1}"))
                .unwrap_or_else(|| "-".into())
        );
    }
    s += "\nProgramming latency, datastore write → datapath holds it, one policy changed at a time:\n\n";
    for l in &r.latency {
        s += &format!(
            "{:<20} {} pods, {} policies, {} changes: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms\n{:<20} the agent's round (median): {:.1} ms = read objects {:.1} + compile {:.1} + program the datapath {:.1}\n",
            l.datapath, l.pods, l.policies, l.changes, l.p50_ms, l.p99_ms, l.max_ms,
            "", l.agent_round_ms, l.agent_read_ms, l.agent_compile_ms,
            l.agent_round_ms - l.agent_read_ms - l.agent_compile_ms
        );
    }
    if let Some(c) = &r.compile {
        s += &format!(
            "\nCompile: {} policies over {} pods: all pods {:.0} ms; one node's {} pods {:.0} ms\n",
            c.policies, c.pods, c.all_pods_ms, c.one_node_pods, c.one_node_ms
        );
    }
    s
}
