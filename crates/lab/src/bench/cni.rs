//! `podnet bench cni`: ADD and DEL latency of podnet-cni against the reference
//! `bridge` + `host-local` plugins, measured in the same run on the same node.
//!
//! Both plugins run inside one scratch "node" namespace, entered between fork and exec,
//! with pods in scratch namespaces: each invocation is timed from spawn to exit, as a
//! runtime sees it. Phases alternate plugins (warm-up, then podnet and reference
//! sequentially, then both with N-way concurrency) so drift on a noisy machine hits
//! both. The figure that matters is the ratio, not the absolute times.

use crate::exec::{self, Call};
use crate::scratch::{unique, ScratchBpffs, ScratchDir, ScratchNs};
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

#[derive(Clone, Debug)]
pub struct Options {
    pub pods: usize,
    pub concurrency: usize,
    pub podnet_cni: PathBuf,
    pub reference_dir: PathBuf,
    pub ip_family: IpFamily,
}

pub use podnet_conventions::IpFamily;

#[derive(Clone, Debug, Serialize)]
pub struct Stats {
    pub n: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub mean_ms: f64,
}

impl Stats {
    pub fn of(mut d: Vec<Duration>) -> Stats {
        d.sort();
        let ms = |x: Duration| x.as_secs_f64() * 1000.0;
        let n = d.len();
        let at = |q: f64| ms(d[(((n as f64) * q).ceil() as usize).clamp(1, n) - 1]);
        Stats {
            n,
            p50_ms: at(0.50),
            p99_ms: at(0.99),
            mean_ms: d.iter().map(|x| ms(*x)).sum::<f64>() / n as f64,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub mode: String,
    pub verb: String,
    pub podnet: Stats,
    pub reference: Stats,
    /// reference p50 / podnet p50: how many times faster podnet is.
    pub speedup_p50: f64,
    pub speedup_p99: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub pods: usize,
    pub concurrency: usize,
    pub ip_family: IpFamily,
    pub reference: String,
    pub rows: Vec<Row>,
    /// Where podnet-cni's invocations spend their time, step by step.
    pub breakdown: Vec<Step>,
}

/// One step of podnet-cni's invocations in one phase (from its timing marks; the step
/// named by a mark is the time since the mark before it).
#[derive(Clone, Debug, Serialize)]
pub struct Step {
    pub mode: String,
    pub verb: String,
    pub step: String,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// The step's mean over the slowest 1% of the phase's invocations.
    pub slowest_1pct_mean_ms: f64,
}

struct Plugin {
    path: PathBuf,
    config: Vec<u8>,
    ifname: &'static str,
    env: Vec<(&'static str, &'static str)>,
}

/// One invocation: spawn to exit, and its steps (podnet-cni's timing marks).
struct Timed {
    elapsed: Duration,
    steps: Vec<(String, Duration)>,
}

/// The steps of one podnet-cni invocation between its spawn and its exit, from its
/// timing marks: the span up to each mark is named by the mark; the rest is "exit".
fn steps_of(o: &exec::Outcome) -> Vec<(String, Duration)> {
    let mut at = o.spawned_ns;
    let mut steps = vec![];
    for (step, t) in o.stderr.lines().filter_map(podnet_cni::timing::parse_line) {
        let name = if step == "started" {
            "exec (spawn to main)"
        } else {
            step
        };
        steps.push((name.to_string(), Duration::from_nanos(t.saturating_sub(at))));
        at = t;
    }
    if !steps.is_empty() {
        steps.push((
            "result written, exit".into(),
            Duration::from_nanos(o.exited_ns.saturating_sub(at)),
        ));
    }
    steps
}

fn phase(
    p: &Plugin,
    node: &ScratchNs,
    pods: &[ScratchNs],
    workers: usize,
    verb: &str,
) -> Result<Vec<Timed>> {
    let next = AtomicUsize::new(0);
    let times = Mutex::new(Vec::with_capacity(pods.len()));
    let failure: Mutex<Option<String>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                // The worker thread enters the node namespace once, and its children
                // are born in it: the spawn needs no `pre_exec` then, so the standard
                // library uses posix_spawn (vfork-like, as a Go runtime such as
                // containerd spawns plugins) instead of forking this whole process per
                // invocation — a harness cost both plugins' times would carry.
                if let Err(e) = node.ns.enter() {
                    *failure.lock().unwrap() =
                        Some(format!("cannot enter the benchmark's node namespace: {e}"));
                    return;
                }
                worker(p, pods, verb, &next, &times, &failure)
            });
        }
    });
    if let Some(f) = failure.into_inner().unwrap() {
        bail!(f);
    }
    Ok(times.into_inner().unwrap())
}

/// One worker of a phase: takes the next pod until none is left or one failed.
fn worker(
    p: &Plugin,
    pods: &[ScratchNs],
    verb: &str,
    next: &AtomicUsize,
    times: &Mutex<Vec<Timed>>,
    failure: &Mutex<Option<String>>,
) {
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= pods.len() || failure.lock().unwrap().is_some() {
            return;
        }
        let netns = pods[i].path().display().to_string();
        let cid = format!("bench-{i}");
        let call = Call {
            plugin: &p.path,
            command: verb,
            container_id: &cid,
            netns: &netns,
            ifname: p.ifname,
            cni_path: None,
            config: &p.config,
        };
        match exec::run_with_env(&call, None, &p.env) {
            Ok(o) if o.ok() => times.lock().unwrap().push(Timed {
                elapsed: o.elapsed,
                steps: steps_of(&o),
            }),
            Ok(o) => {
                *failure.lock().unwrap() = Some(format!(
                    "{} {verb} of pod {i} failed (exit {}): {}{}",
                    p.path.display(),
                    o.code,
                    o.stdout.trim(),
                    o.stderr.trim()
                ))
            }
            Err(e) => {
                *failure.lock().unwrap() = Some(format!("cannot run {}: {e}", p.path.display()))
            }
        }
    }
}

fn check_binary(p: &Path, what: &str) -> Result<()> {
    if !p.is_file() {
        bail!(
            "{what} not found at {}; install Debian's containernetworking-plugins (apt-get install containernetworking-plugins) or pass --reference-dir",
            p.display()
        );
    }
    Ok(())
}

pub fn run(opts: &Options, progress: &mut dyn FnMut(&str)) -> Result<Report> {
    check_binary(&opts.podnet_cni, "podnet-cni")?;
    let bridge = opts.reference_dir.join("bridge");
    check_binary(&bridge, "the reference bridge plugin")?;
    check_binary(
        &opts.reference_dir.join("host-local"),
        "the reference host-local plugin",
    )?;
    if opts.pods == 0 || opts.pods > 60000 || opts.concurrency == 0 {
        bail!("--pods must be 1..60000 and --concurrency at least 1");
    }
    let dir = ScratchDir::new("podnet-bench")?;
    // A bpffs of the benchmark's own, as podnetd's node file names one on a node:
    // podnet-cni pins the anti-spoofing program there, so it outlives a phase's last
    // pod as it outlives a node's (the load, 40–70 ms, is paid once, in the warm-up).
    let bpf = ScratchBpffs::mount(&dir.path().join("bpf"))?;
    let node =
        ScratchNs::new(unique("pnb-node")).context("create the benchmark's node namespace")?;
    progress(&format!("creating {} pod namespaces", opts.pods));
    let pods: Vec<ScratchNs> = (0..opts.pods)
        .map(|_| ScratchNs::new(unique("pnb-pod")))
        .collect::<Result<_>>()?;
    let dual = opts.ip_family == IpFamily::Dual;
    if dual {
        // Both plugins' IPv6 addresses usable at once: podnet-cni adds them without
        // duplicate address detection; the reference waits for it to end, a second
        // per pod, unless the namespace turns it off (which an operator would).
        for p in &pods {
            p.ns.run(|| std::fs::write("/proc/sys/net/ipv6/conf/default/accept_dad", "0"))?
                .with_context(|| format!("turn duplicate address detection off in {}", p.name))?;
        }
    }
    let mut podnet_conf = serde_json::json!({
        "cniVersion": "1.1.0", "name": "bench", "type": "podnet-cni",
        "subnet": "10.250.0.0/16", "mtu": 1500,
        "dataDir": dir.path().join("podnet"),
        "bpfDir": bpf.path(),
    });
    let mut ref_ipam = serde_json::json!(
        {"type": "host-local", "subnet": "10.251.0.0/16", "dataDir": dir.path().join("ref")}
    );
    if dual {
        let c = podnet_conf.as_object_mut().expect("an object");
        c.remove("subnet");
        c.insert(
            "subnets".into(),
            serde_json::json!(["10.250.0.0/16", "fd00:250::/64"]),
        );
        let r = ref_ipam.as_object_mut().expect("an object");
        r.remove("subnet");
        r.insert(
            "ranges".into(),
            serde_json::json!([[{"subnet": "10.251.0.0/16"}], [{"subnet": "fd00:251::/64"}]]),
        );
    }
    let podnet = Plugin {
        path: opts.podnet_cni.clone(),
        config: serde_json::to_vec(&podnet_conf)?,
        ifname: "eth0",
        // Its timing marks: a line on stderr per step, for the breakdown.
        env: vec![("PODNET_CNI_TIMING", "1")],
    };
    let reference = Plugin {
        path: bridge,
        config: serde_json::to_vec(&serde_json::json!({
            "cniVersion": "1.0.0", "name": "benchref", "type": "bridge",
            "bridge": "refbr0", "isGateway": true,
            "ipam": ref_ipam,
        }))?,
        ifname: "eth0",
        env: vec![],
    };
    // Warm-up: page cache, first bridge creation, nftables table.
    let warm = &pods[..pods.len().min(5)];
    for p in [&podnet, &reference] {
        phase(p, &node, warm, 1, "ADD")?;
        phase(p, &node, warm, 1, "DEL")?;
    }
    let mut rows = Vec::new();
    let mut breakdown = Vec::new();
    for (mode, workers) in [("sequential", 1), ("concurrent", opts.concurrency)] {
        let label = if workers == 1 {
            mode.to_string()
        } else {
            format!("{mode} ×{workers}")
        };
        let mut got: Vec<(Vec<Timed>, Vec<Timed>)> = Vec::new();
        for (name, p) in [("podnet-cni", &podnet), ("reference", &reference)] {
            progress(&format!("{label}: {name} ADD ×{}", pods.len()));
            let add = phase(p, &node, &pods, workers, "ADD")?;
            progress(&format!("{label}: {name} DEL ×{}", pods.len()));
            let del = phase(p, &node, &pods, workers, "DEL")?;
            got.push((add, del));
        }
        let (ref_add, ref_del) = got.pop().unwrap();
        let (pn_add, pn_del) = got.pop().unwrap();
        for (verb, pn, rf) in [("ADD", pn_add, ref_add), ("DEL", pn_del, ref_del)] {
            breakdown.extend(breakdown_of(&label, verb, &pn));
            let total = |v: Vec<Timed>| v.into_iter().map(|t| t.elapsed).collect();
            let (pn, rf) = (Stats::of(total(pn)), Stats::of(total(rf)));
            rows.push(Row {
                mode: label.clone(),
                verb: verb.into(),
                speedup_p50: rf.p50_ms / pn.p50_ms,
                speedup_p99: rf.p99_ms / pn.p99_ms,
                podnet: pn,
                reference: rf,
            });
        }
    }
    Ok(Report {
        pods: opts.pods,
        concurrency: opts.concurrency,
        ip_family: opts.ip_family,
        reference: format!(
            "{} + host-local",
            opts.reference_dir.join("bridge").display()
        ),
        rows,
        breakdown,
    })
}

/// Each step's p50 and p99 over the phase's invocations, and its mean over the slowest
/// 1% of them (by spawn-to-exit time): where the tail waits.
fn breakdown_of(mode: &str, verb: &str, calls: &[Timed]) -> Vec<Step> {
    let mut order: Vec<String> = vec![];
    for c in calls {
        for (name, _) in &c.steps {
            if !order.contains(name) {
                order.push(name.clone());
            }
        }
    }
    let mut totals: Vec<Duration> = calls.iter().map(|c| c.elapsed).collect();
    totals.sort();
    let slow_from = totals[(totals.len() * 99 / 100).min(totals.len() - 1)];
    let slow: Vec<&Timed> = calls.iter().filter(|c| c.elapsed >= slow_from).collect();
    let of = |c: &Timed, name: &str| {
        c.steps
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, d)| *d)
            .sum::<Duration>()
    };
    order
        .iter()
        .map(|name| {
            let all = Stats::of(calls.iter().map(|c| of(c, name)).collect());
            let slow_ms = slow
                .iter()
                .map(|c| of(c, name).as_secs_f64() * 1000.0)
                .sum::<f64>()
                / slow.len() as f64;
            Step {
                mode: mode.to_string(),
                verb: verb.to_string(),
                step: name.clone(),
                p50_ms: all.p50_ms,
                p99_ms: all.p99_ms,
                slowest_1pct_mean_ms: slow_ms,
            }
        })
        .collect()
}

/// The report as a table for people.
pub fn render(r: &Report) -> String {
    let mut s = format!(
        "CNI latency over {} {}pods, plugin run inside a node namespace, spawn to exit (lower is better)\n\
         reference: {}\n\n",
        r.pods,
        if r.ip_family == IpFamily::Dual {
            "dual-stack "
        } else {
            ""
        },
        r.reference
    );
    s.push_str(&format!(
        "{:<16} {:<4} {:>10} {:>10} {:>12} {:>12} {:>10} {:>10}\n",
        "mode", "verb", "podnet p50", "p99", "ref p50", "ref p99", "×p50", "×p99"
    ));
    for row in &r.rows {
        s.push_str(&format!(
            "{:<16} {:<4} {:>7.2} ms {:>7.2} ms {:>9.2} ms {:>9.2} ms {:>9.1}× {:>9.1}×\n",
            row.mode,
            row.verb,
            row.podnet.p50_ms,
            row.podnet.p99_ms,
            row.reference.p50_ms,
            row.reference.p99_ms,
            row.speedup_p50,
            row.speedup_p99
        ));
    }
    s.push_str("\n× = reference time / podnet time: how many times faster podnet-cni is.\n");
    s.push_str(
        "\nwhere podnet-cni's time goes (each step ends at the mark it is named by; slowest 1% = mean over the slowest 1% of that phase's calls):\n",
    );
    s.push_str(&format!(
        "{:<16} {:<4} {:<30} {:>9} {:>9} {:>12}\n",
        "mode", "verb", "step", "p50", "p99", "slowest 1%"
    ));
    for b in &r.breakdown {
        s.push_str(&format!(
            "{:<16} {:<4} {:<30} {:>6.2} ms {:>6.2} ms {:>9.2} ms\n",
            b.mode, b.verb, b.step, b.p50_ms, b.p99_ms, b.slowest_1pct_mean_ms
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let d: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let s = Stats::of(d);
        assert_eq!(s.n, 100);
        assert!((s.p50_ms - 50.0).abs() < 1e-9);
        assert!((s.p99_ms - 99.0).abs() < 1e-9);
        assert!((s.mean_ms - 50.5).abs() < 1e-9);
        let one = Stats::of(vec![Duration::from_millis(3)]);
        assert!((one.p99_ms - 3.0).abs() < 1e-9);
    }
}
