//! Drop and flow events: what the datapaths refused (and, while someone watches,
//! what they admitted), enriched with pod, namespace and policy names, kept in a
//! bounded buffer that `podnet observe` reads through the agent's API.
//!
//! # Where events come from
//! - Anti-spoofing (`bpf/from_pod.c`): every dropped frame, in the ring buffer the
//!   program writes (one per loaded program, made by podnet-cni; found through the
//!   tc filter on each pod's host veth).
//! - The eBPF policy datapath (`bpf/policy.c`): every refused packet, and every newly
//!   admitted flow while a watcher asks for allowed events, in the pinned ring buffer
//!   `policy_events`; the pinned array `config` says whether to send admitted
//!   flows.
//! - The nftables policy datapath: every refused packet through NFLOG group
//!   [`crate::nft::LOG_GROUP`] (the table's drop rules log first), and admitted new
//!   flows while a watcher asks (the chain `allowed_log`, filled only then).
//!
//! The agent owns no kernel object here: it reads what the datapaths write. A ring
//! buffer that fills up loses events, never verdicts; NFLOG overruns the same way.
//! Lost events are counted for NFLOG (overruns and read errors) only: the eBPF
//! programs do not yet count a failed `bpf_ringbuf_output`, so a full ring buffer
//! loses events without a trace in `podnet_events_lost_total`.

pub mod nflog;

use crate::policy::PolicyState;
use crate::Failure;
pub use podnet_api::Event;
use podnet_netlink::antispoof::{self, SpoofEvent};

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// Events kept for `podnet observe` to show recent history.
pub const CAPACITY: usize = 4096;
/// How long allowed events stay on after a watcher last asked for them.
pub const ALLOWED_FOR: Duration = Duration::from_secs(5);

#[derive(Default)]
struct Log {
    next: u64,
    buf: VecDeque<Event>,
}

/// The node's recent events, and who is waiting for new ones.
#[derive(Default)]
pub struct EventLog {
    log: Mutex<Log>,
    cv: Condvar,
    allowed_until: Mutex<Option<Instant>>,
    /// Events the datapaths could not deliver (full ring buffer, NFLOG overrun).
    pub lost: AtomicU64,
    /// Allowed verdicts seen, by (policy, direction): the metrics' allowed count.
    pub allowed: Mutex<BTreeMap<(String, String), u64>>,
}

impl EventLog {
    pub fn push(&self, mut e: Event) {
        if e.verdict == "allowed" {
            *self
                .allowed
                .lock()
                .unwrap()
                .entry((e.policy.clone(), e.direction.clone()))
                .or_default() += 1;
        }
        let mut l = self.log.lock().unwrap();
        l.next += 1;
        e.seq = l.next;
        if l.buf.len() == CAPACITY {
            l.buf.pop_front();
        }
        l.buf.push_back(e);
        self.cv.notify_all();
    }

    /// The events after `after` (all kept ones for 0), waiting up to `wait` for the
    /// first; and the sequence number to ask after next time.
    pub fn after(&self, after: u64, wait: Duration) -> (Vec<Event>, u64) {
        let deadline = Instant::now() + wait;
        let mut l = self.log.lock().unwrap();
        loop {
            let out: Vec<Event> = l.buf.iter().filter(|e| e.seq > after).cloned().collect();
            let left = deadline.saturating_duration_since(Instant::now());
            if !out.is_empty() || left.is_zero() {
                let next = out.last().map(|e| e.seq).unwrap_or(after);
                return (out, next);
            }
            l = self.cv.wait_timeout(l, left).unwrap().0;
        }
    }

    /// A watcher wants allowed events: on for the next [`ALLOWED_FOR`].
    pub fn want_allowed(&self) {
        *self.allowed_until.lock().unwrap() = Some(Instant::now() + ALLOWED_FOR);
    }

    pub fn allowed_wanted(&self) -> bool {
        self.allowed_until
            .lock()
            .unwrap()
            .is_some_and(|t| Instant::now() < t)
    }
}

/// `TCP`, `UDP`, … for an IPv4 protocol number.
pub fn protocol_name(p: u8) -> String {
    match p {
        1 => "ICMP".into(),
        6 => "TCP".into(),
        17 => "UDP".into(),
        132 => "SCTP".into(),
        n => n.to_string(),
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn time_of(ms: u64) -> String {
    let s = podnet_conventions::rfc3339(ms / 1000);
    format!("{}.{:03}Z", s.trim_end_matches('Z'), ms % 1000)
}

/// What the events need to know of the node's pods: by address, the pod
/// (`namespace/name`) and the policies isolating it each way.
#[derive(Clone, Debug, Default)]
pub struct Pods {
    /// Each pod under each of its addresses (IPv4, and IPv6 on a dual-stack node).
    by_ip: HashMap<IpAddr, PodInfo>,
}

#[derive(Clone, Debug, Default)]
struct PodInfo {
    key: String,
    ingress: (String, Vec<String>),
    egress: (String, Vec<String>),
}

/// `ns/name` → `(name, ns)`; a key without a namespace is a name.
pub(crate) fn split_pod_key(key: &str) -> (String, String) {
    match key.split_once('/') {
        Some((ns, name)) => (name.to_string(), ns.to_string()),
        None => (key.to_string(), String::new()),
    }
}

impl Pods {
    pub fn from_status(st: &crate::policy::PolicyStatus) -> Pods {
        let mut by_ip = HashMap::new();
        for p in &st.pods {
            let info = PodInfo {
                key: p.pod.clone(),
                ingress: (p.ingress.state.clone(), p.ingress.policies.clone()),
                egress: (p.egress.state.clone(), p.egress.policies.clone()),
            };
            for a in std::iter::once(&p.ip).chain(&p.ip6) {
                if let Ok(ip) = a.parse() {
                    by_ip.insert(ip, info.clone());
                }
            }
        }
        Pods { by_ip }
    }

    /// `namespace/name` of the node's pod at `ip`.
    pub fn key(&self, ip: impl Into<IpAddr>) -> Option<String> {
        self.by_ip.get(&ip.into()).map(|p| p.key.clone())
    }

    /// `(pod, namespace)` of the local pod at `ip`; empty for any other address.
    pub(crate) fn names(&self, ip: impl Into<IpAddr>) -> (String, String) {
        self.by_ip
            .get(&ip.into())
            .map(|p| split_pod_key(&p.key))
            .unwrap_or_default()
    }

    fn policies(&self, ip: IpAddr, dir: &str) -> (String, String) {
        let Some(p) = self.by_ip.get(&ip) else {
            return (String::new(), String::new());
        };
        let (state, pols) = if dir == "ingress" {
            &p.ingress
        } else {
            &p.egress
        };
        (state.clone(), pols.join(","))
    }
}

/// An anti-spoofing drop as an event; `pod_ip` is the pod behind the host veth.
pub fn spoof_event(node: &str, e: &SpoofEvent, pod_ip: Option<Ipv4Addr>, pods: &Pods) -> Event {
    let ms = now_ms();
    let (pod, namespace) = pod_ip.map(|ip| pods.names(ip)).unwrap_or_default();
    let protocol = match e.ethertype {
        0x0806 => "ARP".to_string(),
        0x86dd => match e.proto {
            58 => "ICMPv6".to_string(),
            p @ (6 | 17 | 132) => format!("{} over IPv6", protocol_name(p)),
            _ => "IPv6".to_string(),
        },
        0x0800 => protocol_name(e.proto),
        t => format!("ethertype 0x{t:04x}"),
    };
    Event {
        seq: 0,
        time: time_of(ms),
        unix_ms: ms,
        node: node.into(),
        verdict: "dropped".into(),
        reason: antispoof::reason_id(e.reason).into(),
        policy: String::new(),
        direction: String::new(),
        protocol,
        src: e.saddr.to_string(),
        dst: e.daddr.to_string(),
        src_port: e.sport,
        port: e.dport,
        pod,
        namespace,
        src_mac: podnet_netlink::fmt_mac(&e.src_mac),
    }
}

/// One policy verdict as the datapaths report it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// The node's pod and the other end.
    pub pod: IpAddr,
    pub peer: IpAddr,
    /// `ingress`, `egress`, or `closed` (the pod not programmed yet).
    pub direction: &'static str,
    pub allowed: bool,
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
}

pub fn policy_event(node: &str, v: &Verdict, pods: &Pods) -> Event {
    let ms = now_ms();
    let (pod, namespace) = pods.names(v.pod);
    let dir = if v.direction == "closed" {
        String::new()
    } else {
        v.direction.to_string()
    };
    let (state, policy) = if dir.is_empty() {
        (String::new(), String::new())
    } else {
        pods.policies(v.pod, &dir)
    };
    let reason = match (v.allowed, v.direction, state.as_str()) {
        (_, "closed", _) => "not-programmed",
        (true, _, "isolated") => "policy",
        (true, _, _) => "not-isolated",
        (false, _, _) => "policy",
    };
    // Ingress: the peer sent to the pod; egress and closed: the pod's own packet,
    // unless the pod is the destination.
    let (src, dst) = if v.direction == "ingress" {
        (v.peer, v.pod)
    } else {
        (v.pod, v.peer)
    };
    Event {
        seq: 0,
        time: time_of(ms),
        unix_ms: ms,
        node: node.into(),
        verdict: if v.allowed { "allowed" } else { "dropped" }.into(),
        reason: reason.into(),
        policy,
        direction: dir,
        protocol: protocol_name(v.proto),
        src: src.to_string(),
        dst: dst.to_string(),
        src_port: v.sport,
        port: v.dport,
        pod,
        namespace,
        src_mac: String::new(),
    }
}

/// A record of the ring buffer: a `struct policy_event6` (bpf/abi.h) if it has that
/// size, else a `struct policy_event`.
pub fn parse_policy_event(b: &[u8]) -> Option<Verdict> {
    use podnet_bpf_abi::{PolicyEvent, PolicyEvent6, DIR_EGRESS, DIR_INGRESS, VERDICT_ADMITTED};
    let (pod, peer, e): (IpAddr, IpAddr, PolicyEvent) =
        if b.len() == std::mem::size_of::<PolicyEvent6>() {
            let e = PolicyEvent6::from_bytes(b)?;
            let rest = PolicyEvent {
                sport: e.sport,
                dport: e.dport,
                proto: e.proto,
                dir: e.dir,
                verdict: e.verdict,
                ..PolicyEvent::default()
            };
            (
                Ipv6Addr::from(e.pod.a).into(),
                Ipv6Addr::from(e.peer.a).into(),
                rest,
            )
        } else {
            let e = PolicyEvent::from_bytes(b)?;
            let ip = |a: u32| Ipv4Addr::from(a.to_ne_bytes());
            (ip(e.pod).into(), ip(e.peer).into(), e)
        };
    Some(Verdict {
        pod,
        peer,
        sport: e.sport,
        dport: e.dport,
        proto: e.proto,
        direction: match u32::from(e.dir) {
            DIR_INGRESS => "ingress",
            DIR_EGRESS => "egress",
            _ => "closed",
        },
        allowed: e.verdict == VERDICT_ADMITTED,
    })
}

/// Where the reader finds the node's datapaths.
pub struct Sources {
    pub node: String,
    pub log: Arc<EventLog>,
    pub policy: Arc<Mutex<PolicyState>>,
    /// The eBPF policy datapath's bpffs directory, when the node runs it.
    pub bpf_dir: Option<PathBuf>,
    /// Whether the node runs the nftables policy datapath.
    pub nftables: bool,
}

type Ring = aya::maps::RingBuf<aya::maps::MapData>;

/// The anti-spoofing ring buffer with kernel id `id`.
fn open_ring(id: u32) -> Result<Ring, Failure> {
    let data = aya::maps::MapData::from_id(id)
        .map_err(|e| Failure::op(format!("open ring buffer {id}"), e))?;
    ring(data)
}

/// Takes every event waiting in the anti-spoofing ring buffer with kernel id `id`
/// (what podnetd's reader would have taken: for tools and tests on a node without it).
pub fn drain_spoof_events(id: u32) -> Result<Vec<SpoofEvent>, Failure> {
    let mut r = open_ring(id)?;
    let mut out = vec![];
    while let Some(item) = r.next() {
        out.extend(SpoofEvent::parse(&item));
    }
    Ok(out)
}

fn ring(data: aya::maps::MapData) -> Result<Ring, Failure> {
    let map =
        aya::maps::Map::from_map_data(data).map_err(|e| Failure::op("read the ring buffer", e))?;
    aya::maps::RingBuf::try_from(map).map_err(|e| Failure::op("read the ring buffer", e))
}

/// Reads every event source of the node until the process ends (its own thread).
pub fn run(src: Sources) {
    let sock = match podnet_netlink::Socket::route() {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(
                node = src.node,
                "events: cannot read links, no anti-spoofing events: {e}"
            );
            return;
        }
    };
    let mut r = Reader {
        src,
        sock,
        spoof_rings: BTreeMap::new(),
        veth_ips: HashMap::new(),
        policy_ring: None,
        nflog: None,
        allowed_on: None,
        nft_renewed: Instant::now(),
        complained: std::collections::BTreeSet::new(),
        pods: Pods::default(),
        pods_rev: None,
    };
    let mut scanned = Instant::now() - Duration::from_secs(10);
    loop {
        r.refresh_pods();
        if scanned.elapsed() >= Duration::from_secs(1) {
            scanned = Instant::now();
            r.scan();
        }
        r.switch_allowed();
        r.drain();
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The event reader's state between its rounds.
struct Reader {
    src: Sources,
    sock: podnet_netlink::Socket,
    /// Anti-spoofing rings by map id; the pod address behind each host veth.
    spoof_rings: BTreeMap<u32, Ring>,
    veth_ips: HashMap<u32, Ipv4Addr>,
    policy_ring: Option<Ring>,
    nflog: Option<nflog::NfLog>,
    allowed_on: Option<bool>,
    nft_renewed: Instant,
    /// What was already logged as missing (said once).
    complained: std::collections::BTreeSet<String>,
    /// The node's pods, rebuilt only when the policy status changes.
    pods: Pods,
    pods_rev: Option<(u64, usize)>,
}

impl Reader {
    /// Logs `what` the first time only.
    fn once(&mut self, what: String) {
        if self.complained.insert(what.clone()) {
            tracing::warn!(node = self.src.node, "events: {what}");
        }
    }

    fn refresh_pods(&mut self) {
        let st = self.src.policy.lock().unwrap();
        if self.pods_rev != Some((st.revision, st.pods.len())) {
            self.pods = Pods::from_status(&st);
            self.pods_rev = Some((st.revision, st.pods.len()));
        }
    }

    /// Every pod's host veth: its filter's program, that program's ring; the policy
    /// datapath's ring buffer or NFLOG group, until they open.
    fn scan(&mut self) {
        match podnet_netlink::link::list(&mut self.sock) {
            Ok(links) => self.scan_veths(&links),
            Err(e) => self.once(format!("cannot list links: {e}")),
        }
        if let (None, Some(dir)) = (&self.policy_ring, &self.src.bpf_dir) {
            let dir = dir.clone();
            match aya::maps::MapData::from_pin(dir.join("policy_events"))
                .map_err(|e| Failure::op("open the pinned policy_events", e))
                .and_then(ring)
            {
                Ok(r) => self.policy_ring = Some(r),
                Err(e) => self.once(format!("no policy events from {}: {e}", dir.display())),
            }
        }
        if self.src.nftables && self.nflog.is_none() {
            match nflog::NfLog::open() {
                Ok(n) => self.nflog = Some(n),
                Err(e) => self.once(format!("no policy events from nftables (NFLOG): {e}")),
            }
        }
    }

    /// Only host veths not seen yet: a veth's pod and program do not change; ones
    /// that are gone are forgotten.
    fn scan_veths(&mut self, links: &[podnet_netlink::link::LinkInfo]) {
        self.veth_ips
            .retain(|i, _| links.iter().any(|l| l.index == *i));
        let fresh: Vec<u32> = links
            .iter()
            .filter(|l| {
                !self.veth_ips.contains_key(&l.index)
                    && l.alias
                        .as_deref()
                        .is_some_and(|a| podnet_conventions::parse_owner_alias(a).is_some())
            })
            .map(|l| l.index)
            .collect();
        let mut failed = vec![];
        for index in fresh {
            let Ok(Some(prog)) = antispoof::installed_prog(&mut self.sock, index) else {
                continue;
            };
            if let Ok(Some(st)) = antispoof::read_state(prog, index) {
                self.veth_ips.insert(index, st.ip);
            }
            if let Ok(Some(id)) = antispoof::events_map(prog) {
                if let std::collections::btree_map::Entry::Vacant(v) = self.spoof_rings.entry(id) {
                    match open_ring(id) {
                        Ok(r) => {
                            v.insert(r);
                        }
                        Err(e) => failed.push(e.to_string()),
                    }
                }
            }
        }
        for f in failed {
            self.once(f);
        }
    }

    /// Admitted flows only while someone watches. nftables: repeated every two
    /// seconds while on, since a table rewritten whole comes back without it.
    fn switch_allowed(&mut self) {
        let want = self.src.log.allowed_wanted();
        let renew =
            want && self.src.nftables && self.nft_renewed.elapsed() >= Duration::from_secs(2);
        if self.allowed_on == Some(want) && !renew {
            return;
        }
        let r = if let Some(dir) = &self.src.bpf_dir {
            crate::ebpf::set_event_config(dir, want)
        } else if self.src.nftables {
            self.nft_renewed = Instant::now();
            crate::nft::set_allowed_log(want)
        } else {
            Ok(())
        };
        match r {
            Ok(()) => self.allowed_on = Some(want),
            Err(e) => self.once(format!("cannot switch allowed events: {e}")),
        }
    }

    /// Everything the rings and the NFLOG group hold now, into the event log.
    fn drain(&mut self) {
        let (src, pods) = (&self.src, &self.pods);
        for r in self.spoof_rings.values_mut() {
            while let Some(item) = r.next() {
                if let Some(e) = SpoofEvent::parse(&item) {
                    let ip = self.veth_ips.get(&e.ifindex).copied();
                    src.log.push(spoof_event(&src.node, &e, ip, pods));
                }
            }
        }
        if let Some(r) = self.policy_ring.as_mut() {
            while let Some(item) = r.next() {
                if let Some(v) = parse_policy_event(&item) {
                    src.log.push(policy_event(&src.node, &v, pods));
                }
            }
        }
        if let Some(n) = self.nflog.as_mut() {
            match n.read(Duration::from_millis(0)) {
                Ok(vs) => {
                    // An admitted flow is logged once per node it crosses: keep the
                    // ends that are this node's pods.
                    for v in vs
                        .iter()
                        .filter(|v| !v.allowed || pods.key(v.pod).is_some())
                    {
                        src.log.push(policy_event(&src.node, v, pods));
                    }
                }
                Err(lost) => {
                    src.log.lost.fetch_add(lost, Ordering::Relaxed);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(v: &str) -> Event {
        Event {
            seq: 0,
            time: String::new(),
            unix_ms: 0,
            node: "n".into(),
            verdict: v.into(),
            reason: "policy".into(),
            policy: "p".into(),
            direction: "ingress".into(),
            protocol: "TCP".into(),
            src: String::new(),
            dst: String::new(),
            src_port: 0,
            port: 80,
            pod: String::new(),
            namespace: String::new(),
            src_mac: String::new(),
        }
    }

    #[test]
    fn the_log_is_bounded_ordered_and_waits() {
        let log = EventLog::default();
        for _ in 0..CAPACITY + 10 {
            log.push(ev("dropped"));
        }
        let (all, next) = log.after(0, Duration::ZERO);
        assert_eq!(all.len(), CAPACITY);
        assert_eq!(all[0].seq, 11);
        assert_eq!(next, (CAPACITY + 10) as u64);
        let (none, same) = log.after(next, Duration::from_millis(20));
        assert!(none.is_empty());
        assert_eq!(same, next);
        log.push(ev("allowed"));
        let (one, _) = log.after(next, Duration::ZERO);
        assert_eq!(one.len(), 1);
        assert_eq!(
            log.allowed.lock().unwrap()[&("p".into(), "ingress".into())],
            1
        );
        assert!(!log.allowed_wanted());
        log.want_allowed();
        assert!(log.allowed_wanted());
    }

    #[test]
    fn policy_events_parse_and_name_the_pod() {
        let mut b = [0u8; 16];
        b[0..4].copy_from_slice(&[10, 244, 0, 5]);
        b[4..8].copy_from_slice(&[10, 244, 1, 7]);
        b[8..10].copy_from_slice(&40000u16.to_ne_bytes());
        b[10..12].copy_from_slice(&80u16.to_ne_bytes());
        b[12] = 6;
        b[13] = 0;
        b[14] = 0;
        let v = parse_policy_event(&b).unwrap();
        assert_eq!(v.direction, "ingress");
        assert!(!v.allowed);
        let mut st = crate::policy::PolicyStatus::default();
        let dir = |state: &str, policies: &[&str]| crate::policy::DirStatus {
            state: state.into(),
            policies: policies.iter().map(|p| p.to_string()).collect(),
            entries: 0,
        };
        st.pods.push(crate::policy::PodPolicyStatus {
            pod: "x/a".into(),
            ip: "10.244.0.5".into(),
            ip6: None,
            ingress: dir("isolated", &["deny", "web"]),
            egress: dir("open", &[]),
        });
        let e = policy_event("node1", &v, &Pods::from_status(&st));
        assert_eq!((e.pod.as_str(), e.namespace.as_str()), ("a", "x"));
        assert_eq!(e.policy, "deny,web");
        assert_eq!(
            (e.src.as_str(), e.dst.as_str()),
            ("10.244.1.7", "10.244.0.5")
        );
        assert_eq!((e.protocol.as_str(), e.port), ("TCP", 80));
        assert_eq!(e.verdict, "dropped");
        assert!(e.time.ends_with('Z') && e.time.contains('.'));
    }

    /// A 40-byte record is `struct policy_event6`: IPv6 pod and peer, the rest as the
    /// IPv4 record's.
    #[test]
    fn ipv6_policy_events_are_told_apart_by_size() {
        let pod: Ipv6Addr = "fd00:10:244::5".parse().unwrap();
        let peer: Ipv6Addr = "fd00:10:244:1::7".parse().unwrap();
        let e = podnet_bpf_abi::PolicyEvent6 {
            pod: podnet_bpf_abi::In6 { a: pod.octets() },
            peer: podnet_bpf_abi::In6 { a: peer.octets() },
            sport: 40000,
            dport: 80,
            proto: 6,
            dir: podnet_bpf_abi::DIR_EGRESS as u8,
            verdict: podnet_bpf_abi::VERDICT_ADMITTED,
            pad: 0,
        };
        let v = parse_policy_event(e.as_bytes()).unwrap();
        assert_eq!((v.pod, v.peer), (IpAddr::from(pod), IpAddr::from(peer)));
        assert_eq!((v.sport, v.dport, v.proto), (40000, 80, 6));
        assert_eq!((v.direction, v.allowed), ("egress", true));
    }
}
