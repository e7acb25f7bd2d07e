//! podnetd's Prometheus metrics, served on `--metrics-addr` (default `0.0.0.0:9465`)
//! at `/metrics` in the text exposition format (prometheus-client).
//!
//! Kept by the agent as things happen: `podnet_peers`, `podnet_sync_duration_seconds`,
//! `podnet_repairs_total{object}`, `podnet_datastore_errors_total`,
//! `podnet_cni_operations_total{verb,result}` and `podnet_cni_duration_seconds{verb}`
//! (podnet-cni sends one datagram per ADD/DEL/CHECK to the agent's socket
//! [`cni_socket`] and never waits for it).
//!
//! Read from the kernel at each scrape (this module owns no kernel object; it reads the
//! datapaths' own counters): `podnet_drops_total{reason,pod,namespace}` — the
//! anti-spoofing program's per-pod, per-reason counters (reasons from
//! `bpf/drop_reasons.h`) and the policy datapath's refused packets (reason
//! `policy-ingress`, `policy-egress`, or `not-programmed`) — and
//! `podnet_policy_verdicts_total{policy,direction,verdict}`: refused packets of each
//! isolated pod counted for every policy isolating it, and admitted new flows seen
//! while allowed events were on; `podnet_events_lost_total`. Process metrics
//! (`process_*`) from `/proc/self`.
//!
//! Labels are bounded: pods of this node, policies, reasons, verbs — never a
//! connection.

use crate::observe::EventLog;
use crate::policy::PolicyStatus;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

type Labels = Vec<(String, String)>;

/// The agent's own metrics (cheap handles: clone and update from any thread).
#[derive(Clone)]
pub struct Metrics {
    pub peers: Gauge,
    pub sync_duration: Histogram,
    pub repairs: Family<Labels, Counter>,
    pub datastore_errors: Counter,
    pub cni_operations: Family<Labels, Counter>,
    pub cni_duration: Family<Labels, Histogram>,
    registry: Arc<Registry>,
}

impl Metrics {
    /// Every metric, registered; the kernel-backed ones read `policy` and `events`.
    pub fn new(policy: Arc<Mutex<PolicyStatus>>, events: Arc<EventLog>) -> Metrics {
        let mut root = Registry::default();
        root.register_collector(Box::new(Process));
        let r = root.sub_registry_with_prefix("podnet");
        let peers = Gauge::default();
        r.register("peers", "Peer nodes this node routes to", peers.clone());
        let sync_duration = Histogram::new(exponential_buckets(0.0005, 2.0, 14));
        r.register_with_unit(
            "sync_duration",
            "Time of one sync round: read the datastore and the kernel, apply the difference",
            Unit::Seconds,
            sync_duration.clone(),
        );
        let repairs = Family::<Labels, Counter>::default();
        r.register(
            "repairs",
            "Kernel objects restored after they were changed or removed by hand, by object",
            repairs.clone(),
        );
        let datastore_errors = Counter::default();
        r.register(
            "datastore_errors",
            "Datastore reads, watches and lease renewals that failed",
            datastore_errors.clone(),
        );
        let cni_operations = Family::<Labels, Counter>::default();
        r.register(
            "cni_operations",
            "podnet-cni invocations on this node, by verb and result (ok or error)",
            cni_operations.clone(),
        );
        let cni_duration = Family::<Labels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 14))
        });
        r.register_with_unit(
            "cni_duration",
            "podnet-cni's time from start to answer, by verb",
            Unit::Seconds,
            cni_duration.clone(),
        );
        r.register_collector(Box::new(Kernel { policy, events }));
        // Every known label value from the start, at zero: a rate over a series that
        // appears only with its first event misses that event, and dashboards and
        // alerts see the families before anything happens.
        for object in ["route", "neigh", "fdb"] {
            let _ = repairs.get_or_create(&vec![("object".into(), object.into())]);
        }
        for verb in ["ADD", "DEL", "CHECK"] {
            for result in ["ok", "error"] {
                let _ = cni_operations.get_or_create(&vec![
                    ("verb".into(), verb.into()),
                    ("result".into(), result.into()),
                ]);
            }
            let _ = cni_duration.get_or_create(&vec![("verb".into(), verb.into())]);
        }
        Metrics {
            peers,
            sync_duration,
            repairs,
            datastore_errors,
            cni_operations,
            cni_duration,
            registry: Arc::new(root),
        }
    }

    /// The exposition text.
    pub fn encode(&self) -> String {
        let mut s = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut s, &self.registry);
        s
    }

    pub fn repaired(&self, object: &str) {
        self.repairs
            .get_or_create(&vec![("object".into(), object.into())])
            .inc();
    }

    /// One podnet-cni report: `{"verb":"ADD","result":"ok","seconds":0.002}`.
    pub fn cni_report(&self, line: &[u8]) {
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(line) else {
            return;
        };
        let (Some(verb), Some(result)) = (v["verb"].as_str(), v["result"].as_str()) else {
            return;
        };
        // Bounded labels: only the verbs and results podnet-cni has.
        if !["ADD", "DEL", "CHECK", "STATUS", "GC"].contains(&verb)
            || !["ok", "error"].contains(&result)
        {
            return;
        }
        self.cni_operations
            .get_or_create(&vec![
                ("verb".into(), verb.into()),
                ("result".into(), result.into()),
            ])
            .inc();
        if let Some(s) = v["seconds"].as_f64().filter(|s| s.is_finite() && *s >= 0.0) {
            self.cni_duration
                .get_or_create(&vec![("verb".into(), verb.into())])
                .observe(s);
        }
    }
}

/// The socket podnet-cni reports to: beside the node file (podnet-cni knows that path
/// from its configuration).
pub fn cni_socket(node_file: &Path) -> PathBuf {
    podnet_conventions::cni_report_socket(node_file)
}

/// Counters the kernel keeps, read at each scrape.
struct Kernel {
    policy: Arc<Mutex<PolicyStatus>>,
    events: Arc<EventLog>,
}

impl std::fmt::Debug for Kernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Kernel")
    }
}

/// One counter family whose samples carry three labels, from a map of their values.
fn counters(
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

impl Collector for Kernel {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let st = self.policy.lock().unwrap().clone();
        let pods = crate::observe::Pods::from_status(&st);
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
        if let Ok((denied, closed)) = crate::policy::denied(&st) {
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
        let lost = ConstCounter::new(self.events.lost.load(std::sync::atomic::Ordering::Relaxed));
        let m = encoder.encode_descriptor(
            "events_lost",
            "Drop and flow events the agent could not read (NFLOG overrun)",
            None,
            lost.metric_type(),
        )?;
        lost.encode(m)?;
        Ok(())
    }
}

/// Every pod's anti-spoofing counters on this node: pod address → (reason, count),
/// through each host veth's filter.
fn antispoof_counters() -> Vec<(std::net::Ipv4Addr, Vec<(String, u64)>)> {
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
struct Process;

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

/// Serves `metrics` on `addr` (`host:port`) at `/metrics`, in its own thread.
pub fn serve(addr: &str, metrics: Metrics) -> Result<(), String> {
    let server = tiny_http::Server::http(addr).map_err(|e| {
        format!("cannot serve metrics on {addr}: {e}; choose another --metrics-addr, or none")
    })?;
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for req in server.incoming_requests() {
                let ok = req.url() == "/metrics" || req.url().starts_with("/metrics?");
                let resp = if ok {
                    tiny_http::Response::from_string(metrics.encode()).with_header(
                        "Content-Type: application/openmetrics-text; version=1.0.0; charset=utf-8"
                            .parse::<tiny_http::Header>()
                            .expect("a valid header"),
                    )
                } else {
                    tiny_http::Response::from_string("podnetd serves /metrics only\n")
                        .with_status_code(404)
                };
                let _ = req.respond(resp);
            }
        })
        .map_err(|e| format!("cannot start the metrics thread: {e}"))?;
    Ok(())
}
