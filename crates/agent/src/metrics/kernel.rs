//! What the metrics read from the kernel at each scrape (this module owns no kernel
//! object): the anti-spoofing program's per-pod, per-reason counters, the policy
//! datapath's refused packets and verdicts, lost events; and the process metrics.

use super::*;

/// Counters the kernel keeps, read at each scrape.
pub(super) struct Kernel {
    pub(super) policy: Arc<Mutex<PolicyState>>,
    pub(super) events: Arc<EventLog>,
}

impl std::fmt::Debug for Kernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Kernel")
    }
}

/// One counter family whose samples carry three labels, from a map of their values.
pub(super) fn counters(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    labels: [&str; 3],
    values: &BTreeMap<(String, String, String), u64>,
) -> Result<(), std::fmt::Error> {
    let mut m =
        encoder.encode_descriptor(name, help, None, ConstCounter::new(0u64).metric_type())?;
    for ((a, b, c), n) in values {
        let l: Labels = vec![
            (labels[0].into(), a.clone()),
            (labels[1].into(), b.clone()),
            (labels[2].into(), c.clone()),
        ];
        ConstCounter::new(*n).encode(m.encode_family(&l)?)?;
    }
    Ok(())
}

/// `(reason, pod, namespace)` or `(policy, direction, verdict)` → count.
type Tally = BTreeMap<(String, String, String), u64>;

impl Kernel {
    /// The drops (anti-spoofing's per pod and reason, the policy datapath's refused
    /// packets) and the policy verdicts (denied packets per isolating policy, allowed
    /// flows seen while allowed events were on), read now.
    fn tallies(&self, st: &crate::policy::PolicyStatus) -> (Tally, Tally) {
        let pods = crate::observe::Pods::from_status(st);
        // reason, pod, namespace → packets
        let mut drops: BTreeMap<(String, String, String), u64> = BTreeMap::new();
        for (ip, reasons) in antispoof_counters() {
            let (pod, ns) = pods.names(ip);
            for (reason, n) in reasons {
                *drops.entry((reason, pod.clone(), ns.clone())).or_default() += n;
            }
        }
        // policy, direction, verdict → count
        let mut verdicts: BTreeMap<(String, String, String), u64> = BTreeMap::new();
        if let Ok((denied, closed)) = crate::policy::denied(st) {
            for d in denied {
                let (pod, ns) = crate::observe::split_pod_key(&d.pod);
                let dir = d.direction.as_str().to_string();
                *drops.entry((format!("policy-{dir}"), pod, ns)).or_default() += d.packets;
                for p in &d.policies {
                    *verdicts
                        .entry((p.clone(), dir.clone(), "denied".into()))
                        .or_default() += d.packets;
                }
            }
            if closed > 0 {
                *drops
                    .entry(("not-programmed".into(), String::new(), String::new()))
                    .or_default() += closed;
            }
        }
        for ((policies, dir), n) in self.events.allowed.lock().unwrap().iter() {
            let names: Vec<&str> = if policies.is_empty() {
                vec![""]
            } else {
                policies.split(',').collect()
            };
            for p in names {
                *verdicts
                    .entry((p.to_string(), dir.clone(), "allowed".into()))
                    .or_default() += n;
            }
        }
        (drops, verdicts)
    }
}

impl Collector for Kernel {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let st = self.policy.lock().unwrap().clone();
        let (drops, verdicts) = self.tallies(&st);
        counters(
            &mut encoder,
            "drops",
            "Packets and frames dropped, by reason (anti-spoofing reasons, policy-ingress, policy-egress, not-programmed), pod and namespace",
            ["reason", "pod", "namespace"],
            &drops,
        )?;
        counters(
            &mut encoder,
            "policy_verdicts",
            "NetworkPolicy verdicts by policy and direction: packets denied to pods the policy isolates, and new flows allowed (counted while allowed events are on)",
            ["policy", "direction", "verdict"],
            &verdicts,
        )?;
        // Local pods the agent left closed because their tables are too large.
        let refused = ConstGauge::new(st.refused.len() as i64);
        let m = encoder.encode_descriptor(
            "policy_pods_refused",
            "Local pods left closed because their policies compile to more entries than one pod may have (podnet policy stats says which and why)",
            None,
            refused.metric_type(),
        )?;
        refused.encode(m)?;
        let lost = ConstCounter::new(self.events.lost.load(std::sync::atomic::Ordering::Relaxed));
        let m = encoder.encode_descriptor(
            "events_lost",
            "Drop and flow events the agent could not read (NFLOG overrun)",
            None,
            lost.metric_type(),
        )?;
        lost.encode(m)?;
        // The eBPF budgets: what they held back, anti-spoofing's (every node) and the
        // eBPF policy datapath's (bpf/policy.c).
        let mut stats: Vec<(&str, u64)> = antispoof_events_lost();
        if let Some(p) = st
            .bpf_dir
            .as_ref()
            .and_then(|d| crate::ebpf::budget_stats(d).ok())
        {
            stats.extend(p);
        }
        {
            let fam = prometheus_client::metrics::family::Family::<
                Vec<(String, String)>,
                prometheus_client::metrics::counter::Counter,
            >::default();
            for (what, n) in stats {
                fam.get_or_create(&vec![("what".into(), what.into())])
                    .inc_by(n);
            }
            let m = encoder.encode_descriptor(
                "datapath_budget",
                "What the eBPF budgets held back: events-limited and antispoof-events-limited (drop events over a pod's 50/s), events-ring-full and antispoof-events-ring-full (events the ring had no room for), flows-unrecorded (new flows over their sender's 20 000/s, judged packet by packet instead)",
                None,
                fam.metric_type(),
            )?;
            fam.encode(m)?;
        }
        Ok(())
    }
}

/// The anti-spoofing events lost on this node, over every anti-spoofing program its
/// pod veths run (one per node, more after an upgrade).
pub(super) fn antispoof_events_lost() -> Vec<(&'static str, u64)> {
    let mut limited = 0;
    let mut full = 0;
    if let Ok(mut sock) = podnet_netlink::Socket::route() {
        let mut progs = std::collections::BTreeSet::new();
        for l in podnet_netlink::link::list(&mut sock).unwrap_or_default() {
            if let Ok(Some(p)) = podnet_netlink::antispoof::installed_prog(&mut sock, l.index) {
                progs.insert(p);
            }
        }
        for p in progs {
            if let Ok(Some([a, b])) = podnet_netlink::antispoof::events_lost(p) {
                limited += a;
                full += b;
            }
        }
    }
    vec![
        ("antispoof-events-limited", limited),
        ("antispoof-events-ring-full", full),
    ]
}

/// Every pod's anti-spoofing counters on this node: pod address → (reason, count),
/// through each host veth's filter.
pub(super) fn antispoof_counters() -> Vec<(std::net::Ipv4Addr, Vec<(String, u64)>)> {
    let Ok(mut sock) = podnet_netlink::Socket::route() else {
        return vec![];
    };
    let Ok(links) = podnet_netlink::link::list(&mut sock) else {
        return vec![];
    };
    links
        .iter()
        .filter(|l| {
            l.alias
                .as_deref()
                .is_some_and(|a| podnet_conventions::parse_owner_alias(a).is_some())
        })
        .filter_map(|l| {
            podnet_netlink::antispoof::pod_state(&mut sock, l.index)
                .ok()
                .flatten()
        })
        .map(|s| (s.ip, s.drops))
        .collect()
}

/// `process_*`, as the Prometheus client libraries export them, from `/proc/self`.
#[derive(Debug)]
pub(super) struct Process;

impl Collector for Process {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        // After the command name: state is field 3; utime 14, stime 15, num_threads 20,
        // starttime 22, vsize 23, rss 24 (fields counted from 1).
        let rest: Vec<&str> = stat
            .rsplit_once(") ")
            .map(|(_, r)| r.split_whitespace().collect())
            .unwrap_or_default();
        let field =
            |n: usize| -> f64 { rest.get(n - 3).and_then(|v| v.parse().ok()).unwrap_or(0.0) };
        // SAFETY: sysconf has no preconditions.
        let (hz, page) = unsafe {
            (
                libc::sysconf(libc::_SC_CLK_TCK).max(1) as f64,
                libc::sysconf(libc::_SC_PAGESIZE).max(1) as f64,
            )
        };
        let boot: f64 = std::fs::read_to_string("/proc/stat")
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("btime ").and_then(|v| v.trim().parse().ok()))
            .unwrap_or(0.0);
        let fds = std::fs::read_dir("/proc/self/fd")
            .map(|d| d.count())
            .unwrap_or(0) as i64;
        let max_fds = {
            let mut l: libc::rlimit = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: getrlimit into a struct we own.
            unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) };
            l.rlim_cur as i64
        };
        let cpu = ConstCounter::new((field(14) + field(15)) / hz);
        let m = encoder.encode_descriptor(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds",
            None,
            cpu.metric_type(),
        )?;
        cpu.encode(m)?;
        for (name, help, v) in [
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                (field(24) * page) as i64,
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes",
                field(23) as i64,
            ),
            ("process_open_fds", "Number of open file descriptors", fds),
            (
                "process_max_fds",
                "Maximum number of open file descriptors",
                max_fds,
            ),
            ("process_threads", "Number of OS threads", field(20) as i64),
            (
                "process_start_time_seconds",
                "Start time of the process since the Unix epoch in seconds",
                (boot + field(22) / hz) as i64,
            ),
        ] {
            let g = ConstGauge::new(v);
            let m = encoder.encode_descriptor(name, help, None, g.metric_type())?;
            g.encode(m)?;
        }
        Ok(())
    }
}
