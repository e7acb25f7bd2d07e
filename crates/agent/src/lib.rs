//! podnetd, the per-node agent.
//!
//! # Kernel objects it owns
//! Per node: the bridge (default `podnet0`, gateway = first address of the node's pod
//! CIDR, MAC `0a:58:<gateway>`, MTU = pod MTU); with the VXLAN backend the device
//! `podnet.vxlan` (VNI 1, UDP 8472, `nolearning`, local = underlay IP, MAC
//! `0a:59:<underlay IP>` — derived, so it survives reboots and re-creation, unlike the
//! random MAC behind Flannel's stale-FDB bugs — address `<pod CIDR network>/32`);
//! IPv4 forwarding on. With the WireGuard backend, instead of the VXLAN device, the
//! WireGuard device and its device process ([`wireguard`]). Per peer: see [`plan`]. It publishes the node's pod CIDR, MTU and
//! bridge for podnet-cni in the node file.
//!
//! # Behaviour
//! - Leases its pod CIDR from the datastore (the same one across restarts) and renews
//!   the lease every third of its TTL.
//! - Every second, or as soon as the datastore changes, reads the kernel state it
//!   owns, diffs it against what the peers need ([`plan::plan`]) and applies the
//!   difference. Objects deleted or changed by hand are restored and logged (drift
//!   repair), unless `repair` is off: then only peers arriving and leaving change the
//!   kernel.
//! - On start it adopts what exists (nothing is recreated that already matches), so
//!   `kill -9` and restarts never interrupt pod traffic or duplicate entries.
//! - Stopping the agent withdraws nothing: only removing the node from the datastore,
//!   or its lease expiring, makes peers remove their routes to it.
//! - Enforces NetworkPolicy for the node's own pods ([`policy`], [`nft`]): compiled
//!   from the Namespaces, Pods and NetworkPolicies in the datastore, programmed before
//!   any pod can be made, changed incrementally as objects change — on a thread of its
//!   own with its own datastore handle, so that policy work never delays routes.
//! - Serves its status and the node's kernel state on a Unix socket ([`api`]).

pub mod api;
pub mod cmd;
pub mod ebpf;
pub mod guard;
pub mod metrics;
pub mod nft;
pub mod observe;
pub mod plan;
/// The API's ICMP probe, run in the node's namespace for `{"get":"ping"}`.
pub use podnet_api::probe;
pub mod policy;
pub mod wireguard;

use plan::{Current, Peer, Via, RTPROT_PODNET};
use podnet_cni_spec::Ipv4Net;
use podnet_datastore::{Datastore, NodeRecord, Registration};
use podnet_netlink::link::{self, LinkChange, Target, VxlanSpec};
use podnet_netlink::socket::Request;
use podnet_netlink::{addr, neigh, parse_mac, route, Socket};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The API's types live in `podnet-api`, the boundary every client builds against.
pub use podnet_api as proto;
pub use podnet_api::{PeerStatus, Status, WireGuardPeerStatus, WireGuardStatus};
pub use podnet_conventions::{vtep_mac, Backend, Datapath, PolicyDatapath, VXLAN_OVERHEAD};

#[derive(Clone, Debug)]
pub struct Config {
    pub node: String,
    pub datastore: String,
    pub underlay_dev: String,
    pub cluster_cidr: Ipv4Net,
    /// The cluster's Service range (kube-apiserver's `--service-cluster-ip-range`):
    /// no peer's underlay address may lie in it ([`check_peer`]).
    pub service_cidr: Ipv4Net,
    pub node_prefix: u8,
    pub backend: Backend,
    pub vni: u32,
    pub port: u16,
    pub vxlan_dev: String,
    pub bridge: String,
    pub repair: bool,
    pub lease_ttl: Duration,
    pub node_file: PathBuf,
    pub api_socket: PathBuf,
    /// How often to re-check the kernel when nothing else wakes the agent.
    pub interval: Duration,
    /// Which datapath enforces NetworkPolicy.
    pub policy_datapath: PolicyDatapath,
    /// The bpffs directory of the eBPF policy datapath's pinned maps and programs.
    pub bpf_dir: PathBuf,
    /// The WireGuard backend's device, port, key file, socket and pid file.
    pub wireguard: wireguard::Paths,
    /// Where to serve Prometheus metrics: `node:PORT` (the node's underlay address
    /// and 127.0.0.1) or `ADDRESS:PORT` ([`metrics::listen_addrs`]); `None`: not at all.
    pub metrics_addr: Option<String>,
    /// How pod packets move: through the bridge, or the eBPF fast path (pod traffic
    /// skips the bridge and the node's IP stack, [`policy::FastPath`]; needs the eBPF
    /// policy datapath).
    pub datapath: Datapath,
}

impl Config {
    /// Whether the eBPF fast path is on (`--datapath ebpf`).
    pub fn fast_path(&self) -> bool {
        self.datapath == Datapath::Ebpf
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Kernel(#[from] podnet_netlink::Error),
    #[error(transparent)]
    Datastore(#[from] podnet_datastore::Error),
    #[error("underlay link {dev}: {why}; name the node's physical interface with --underlay-dev")]
    Underlay { dev: String, why: String },
    #[error("this node's lease moved from {from} to {to} (it expired and another node took {from}); the node's pods still use {from}: drain the node, delete its pods, and restart podnetd")]
    LeaseMoved { from: Ipv4Net, to: Ipv4Net },
    #[error("NetworkPolicy datapath {datapath}: {why}")]
    Policy { datapath: &'static str, why: String },
    #[error("WireGuard device {dev}: {why}")]
    WireGuard { dev: String, why: String },
    #[error("{0}")]
    Guard(String),
    #[error("{what} {path}: {source}")]
    File {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The agent logs through `tracing` (podnetd sets the format and `RUST_LOG` the
/// level); every line carries the node.
fn log(node: &str, msg: &str) {
    tracing::info!(node, "{msg}");
}

/// Something failed or was refused: the agent goes on, an operator may act.
fn warn(node: &str, msg: &str) {
    tracing::warn!(node, "{msg}");
}

/// The node's facts after setup.
struct NodeInfo {
    underlay_index: u32,
    underlay_ip: Ipv4Addr,
    mtu: u32,
    record: NodeRecord,
}

pub struct Agent {
    cfg: Config,
    ds: Arc<dyn Datastore>,
    sock: Socket,
    status: Arc<Mutex<Status>>,
    /// Peers left out, with why: logged once when they are first left out.
    ignored: std::collections::BTreeMap<String, String>,
    /// The datastore's problems last logged.
    problems: Vec<String>,
    /// With the WireGuard backend: the node's private key.
    wg_key: Option<wireguard::Key>,
    /// Key rotations asked for through the API.
    rotation: Arc<wireguard::Rotation>,
    /// Whether the kernel has WireGuard (checked once, with the WireGuard backend).
    kernel_wg: bool,
    /// Drop and flow events ([`observe`]) and the metrics ([`metrics`]).
    events: Arc<observe::EventLog>,
    metrics: Option<metrics::Metrics>,
    /// The underlay guard ([`guard`]): with the VXLAN and WireGuard backends.
    guard: Option<guard::Guard>,
}

/// Opens the datastore a URL names: `file:…`, `etcd://…`, or `kubernetes[:kubeconfig]`
/// (the API server; see [`podnet_kube`]). Log lines name `node`.
pub fn open_datastore(url: &str, node: &str) -> Result<Arc<dyn Datastore>> {
    if podnet_kube::is_kubernetes_url(url) {
        let node = node.to_string();
        let log: podnet_kube::Log = Arc::new(move |m: &str| warn(&node, m));
        return Ok(Arc::new(podnet_kube::KubeStore::open(url, log)?));
    }
    Ok(podnet_datastore::open(url)?.into())
}

/// [`open_datastore`], waiting (with backoff, saying why) while the datastore cannot
/// be reached yet — etcd with a password authenticates as it connects; a refusal or a
/// bad URL is returned at once.
pub fn open_datastore_waiting(url: &str, node: &str) -> Result<Arc<dyn Datastore>> {
    let mut backoff = Duration::from_millis(200);
    loop {
        match open_datastore(url, node) {
            Err(Error::Datastore(e)) if e.is_transient() => {
                warn(
                    node,
                    &format!(
                        "cannot open the datastore yet: {e}; retrying in {:.1} s",
                        backoff.as_secs_f64()
                    ),
                );
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            r => return r,
        }
    }
}

impl Agent {
    pub fn new(cfg: Config) -> Result<Agent> {
        let ds = open_datastore_waiting(&cfg.datastore, &cfg.node)?;
        let sock = Socket::route()?;
        Ok(Agent {
            cfg,
            ds,
            sock,
            status: Arc::new(Mutex::new(Status::default())),
            ignored: Default::default(),
            problems: Vec::new(),
            wg_key: None,
            rotation: Default::default(),
            kernel_wg: false,
            events: Default::default(),
            metrics: None,
            guard: None,
        })
    }

    fn log(&self, msg: &str) {
        log(&self.cfg.node, msg)
    }

    fn warn(&self, msg: &str) {
        warn(&self.cfg.node, msg)
    }

    fn underlay(&mut self) -> Result<(u32, Ipv4Addr, u32)> {
        let dev = self.cfg.underlay_dev.clone();
        let l = link::get_by_name(&mut self.sock, &dev)?.ok_or_else(|| Error::Underlay {
            dev: dev.clone(),
            why: "no such link".into(),
        })?;
        let ip = addr::list(&mut self.sock, Some(l.index))?
            .first()
            .map(|a| a.addr)
            .ok_or_else(|| Error::Underlay {
                dev: dev.clone(),
                why: "it has no IPv4 address".into(),
            })?;
        Ok((l.index, ip, l.mtu))
    }

    fn register(&mut self, ip: Ipv4Addr) -> Result<NodeRecord> {
        Ok(self.ds.register(&Registration {
            name: self.cfg.node.clone(),
            underlay_ip: ip,
            vtep_mac: podnet_netlink::fmt_mac(&vtep_mac(ip)),
            backend: self.cfg.backend.to_string(),
            wireguard: self.wg_key.map(|k| podnet_datastore::WireGuardPeer {
                public_key: wireguard::to_base64(&wireguard::public_key(&k)),
                port: self.cfg.wireguard.port,
            }),
            cluster_cidr: self.cfg.cluster_cidr,
            node_prefix: self.cfg.node_prefix,
            ttl: self.cfg.lease_ttl,
        })?)
    }

    /// Node-level objects: bridge, VXLAN device, forwarding, the node file.
    fn ensure_node(&mut self, n: &NodeInfo) -> Result<Option<u32>> {
        let cidr = n.record.pod_cidr;
        let gw = cidr.nth(1).expect("a node CIDR has a first address");
        link::ensure_bridge(
            &mut self.sock,
            &self.cfg.bridge,
            // The same MAC podnet-cni gives the bridge: whichever makes it first wins.
            podnet_conventions::pod_mac(gw),
            n.mtu,
            gw,
            cidr.prefix(),
        )?;
        // What another backend left behind goes first.
        if self.cfg.backend != Backend::Vxlan {
            let existing = link::get_by_name(&mut self.sock, &self.cfg.vxlan_dev)?;
            if existing.is_some_and(|l| l.kind.as_deref() == Some("vxlan")) {
                self.log(&format!(
                    "{} backend: removing VXLAN device {}",
                    self.cfg.backend.as_str(),
                    self.cfg.vxlan_dev
                ));
                link::delete_by_name(&mut self.sock, &self.cfg.vxlan_dev)?;
            }
        }
        if self.cfg.backend != Backend::Wireguard
            && wireguard::device_pid(&self.cfg.wireguard.pid_file).is_some()
        {
            self.log(&format!(
                "{} backend: stopping the WireGuard device {}",
                self.cfg.backend.as_str(),
                self.cfg.wireguard.dev
            ));
            wireguard::stop_device(&self.cfg.wireguard);
        }
        let vx = match self.cfg.backend {
            Backend::Vxlan => Some(self.ensure_vxlan(n)?),
            Backend::Wireguard => Some(self.ensure_wireguard(n)?),
            Backend::HostGw => None,
        };
        let fwd = "/proc/sys/net/ipv4/ip_forward";
        if std::fs::read_to_string(fwd)
            .map(|v| v.trim() != "1")
            .unwrap_or(true)
        {
            std::fs::write(fwd, "1").map_err(|source| Error::File {
                what: "enable forwarding in",
                path: fwd.into(),
                source,
            })?;
            self.log("IPv4 forwarding turned on");
        }
        Ok(vx)
    }

    fn ensure_vxlan(&mut self, n: &NodeInfo) -> Result<u32> {
        let name = self.cfg.vxlan_dev.clone();
        let mac = vtep_mac(n.underlay_ip);
        let want_mtu = n.mtu;
        let existing = link::get_by_name(&mut self.sock, &name)?;
        let fits = existing.as_ref().is_some_and(|l| {
            l.mac == mac
                && l.vxlan.as_ref().is_some_and(|v| {
                    v.vni == self.cfg.vni
                        && v.port == self.cfg.port
                        && v.local == Some(n.underlay_ip)
                        && v.dev == Some(n.underlay_index)
                        && !v.learning
                })
        });
        let l = match existing {
            Some(l) if fits => l,
            other => {
                if let Some(l) = &other {
                    if l.kind.as_deref() != Some("vxlan") {
                        return Err(podnet_netlink::Error::WrongKind {
                            name: name.clone(),
                            kind: l.kind.clone().unwrap_or_else(|| "plain link".into()),
                            want: "vxlan device (choose another --vxlan-dev)",
                        }
                        .into());
                    }
                    self.log(&format!(
                        "VXLAN device {name} does not match the configuration: recreating it"
                    ));
                    link::delete_by_name(&mut self.sock, &name)?;
                } else {
                    self.log(&format!(
                        "creating VXLAN device {name} (VNI {}, UDP {}, local {})",
                        self.cfg.vni, self.cfg.port, n.underlay_ip
                    ));
                }
                link::create_vxlan(
                    &mut self.sock,
                    &VxlanSpec {
                        name: &name,
                        vni: self.cfg.vni,
                        local: n.underlay_ip,
                        dev: n.underlay_index,
                        port: self.cfg.port,
                        mtu: want_mtu,
                        mac,
                        learning: false,
                    },
                )?;
                link::get_by_name(&mut self.sock, &name)?.ok_or_else(|| {
                    podnet_netlink::Error::NotFound {
                        op: "look up",
                        obj: name.clone(),
                        ext: None,
                    }
                })?
            }
        };
        self.overlay_link(&l, n.record.pod_cidr, want_mtu)
    }

    /// An overlay device's link (VXLAN, WireGuard): the pod CIDR's network address as
    /// a /32 (node-originated traffic to remote pods leaves from it), up, at `mtu`.
    fn overlay_link(&mut self, l: &link::LinkInfo, cidr: Ipv4Net, mtu: u32) -> Result<u32> {
        let mut reqs: Vec<Request> = vec![addr::add_request(l.index, cidr.network(), 32)];
        if !l.is_up() || l.mtu != mtu {
            reqs.push(link::change_request(
                Target::Index(l.index),
                &LinkChange {
                    up: Some(true),
                    mtu: Some(mtu),
                    ..Default::default()
                },
            ));
        }
        for r in self.sock.ack_all(reqs) {
            match r {
                Err(e) if !e.is_exists() => return Err(e.into()),
                _ => {}
            }
        }
        Ok(l.index)
    }

    /// The WireGuard device: its process running, holding the node's key and port; the
    /// link up at the pod MTU with the pod CIDR's first address.
    fn ensure_wireguard(&mut self, n: &NodeInfo) -> Result<u32> {
        let p = self.cfg.wireguard.clone();
        let key = self
            .wg_key
            .expect("the key is loaded before the node is set up");
        let node = self.cfg.node.clone();
        wireguard::ensure_device(&p, &node, &|m| log(&node, m))?;
        let uapi = wireguard::Uapi {
            socket: p.socket.clone(),
        };
        let fail = |why: String| Error::WireGuard {
            dev: p.dev.clone(),
            why,
        };
        let have = uapi.get().map_err(fail)?;
        if have.private_key != Some(key) || have.listen_port != p.port {
            if have.private_key.is_some() {
                self.log(&format!(
                    "WireGuard device {}: setting the node's key and port {}",
                    p.dev, p.port
                ));
            }
            uapi.set(&format!(
                "private_key={}\nlisten_port={}\n",
                wireguard::hex(&key),
                p.port
            ))
            .map_err(fail)?;
        }
        let l = link::get_by_name(&mut self.sock, &p.dev)?.ok_or_else(|| {
            fail(format!(
                "its device process answers on {} but there is no link {} in this namespace",
                p.socket.display(),
                p.dev
            ))
        })?;
        self.overlay_link(&l, n.record.pod_cidr, n.mtu)
    }

    /// Makes the device's peers those of `peers`; returns the device as it is then.
    fn sync_wireguard(&mut self, peers: &[Peer], apply: bool) -> WireGuardStatus {
        let p = &self.cfg.wireguard;
        let uapi = wireguard::Uapi {
            socket: p.socket.clone(),
        };
        let key = self.wg_key.unwrap_or_default();
        let mut st = WireGuardStatus {
            implementation: wireguard::IMPLEMENTATION.into(),
            kernel_has_wireguard: self.kernel_wg,
            device: p.dev.clone(),
            port: p.port,
            public_key: wireguard::to_base64(&wireguard::public_key(&key)),
            pid: wireguard::device_pid(&p.pid_file).unwrap_or(0),
            socket: p.socket.display().to_string(),
            ..Default::default()
        };
        let mut have = match uapi.get() {
            Ok(h) => h,
            Err(e) => {
                st.error = Some(e);
                return st;
            }
        };
        if apply {
            let want: Vec<wireguard::WantPeer> = peers
                .iter()
                .filter_map(|q| {
                    let (k, port) = q.wireguard?;
                    Some(wireguard::WantPeer {
                        name: q.name.clone(),
                        public_key: k,
                        endpoint: std::net::SocketAddrV4::new(q.underlay, port),
                        cidr: q.cidr,
                    })
                })
                .collect();
            let changes = wireguard::peer_changes(&want, &have.peers);
            if !changes.is_empty() {
                for c in &changes {
                    self.log(&match c {
                        wireguard::PeerChange::Remove(k) => format!(
                            "WireGuard device {}: removing departed peer {}",
                            p.dev,
                            wireguard::to_base64(k)
                        ),
                        wireguard::PeerChange::Set(w) => format!(
                            "WireGuard device {}: configuring peer {} ({})",
                            p.dev,
                            w.name,
                            wireguard::to_base64(&w.public_key)
                        ),
                    });
                }
                let body: String = changes.iter().map(wireguard::PeerChange::render).collect();
                match uapi.set(&body).and_then(|_| uapi.get()) {
                    Ok(h) => have = h,
                    Err(e) => {
                        self.warn(&format!("WireGuard device {}: {e}", p.dev));
                        st.error = Some(e);
                    }
                }
            }
        }
        st.device_public_key = have
            .private_key
            .map(|k| wireguard::to_base64(&wireguard::public_key(&k)))
            .unwrap_or_default();
        st.peers = have
            .peers
            .iter()
            .map(|q| WireGuardPeerStatus {
                public_key: wireguard::to_base64(&q.public_key),
                endpoint: q.endpoint.map(|e| e.to_string()).unwrap_or_default(),
                allowed_ips: q.allowed_ips.iter().map(|n| n.to_string()).collect(),
                last_handshake: q.last_handshake,
                rx_bytes: q.rx_bytes,
                tx_bytes: q.tx_bytes,
            })
            .collect();
        st
    }

    /// The node's overlay UDP ports `[VXLAN, WireGuard]` (0: none), which pods may
    /// send to only towards other pods and the underlay only from peers.
    fn overlay_ports(&self) -> [u16; 2] {
        match self.cfg.backend {
            Backend::Vxlan => [self.cfg.port, 0],
            Backend::Wireguard => [0, self.cfg.wireguard.port],
            Backend::HostGw => [0, 0],
        }
    }

    fn write_node_file(
        &self,
        n: &NodeInfo,
        policy_programs: Option<podnet_conventions::PolicyPrograms>,
    ) -> Result<()> {
        let body = podnet_conventions::NodeFile {
            node: self.cfg.node.clone(),
            pod_cidr: Some(n.record.pod_cidr.to_string()),
            cluster_cidr: Some(self.cfg.cluster_cidr.to_string()),
            overlay_ports: self
                .overlay_ports()
                .into_iter()
                .filter(|p| *p != 0)
                .collect(),
            mtu: Some(n.mtu),
            bridge: Some(self.cfg.bridge.clone()),
            datapath: Some(self.cfg.datapath),
            policy_programs,
        };
        let p = &self.cfg.node_file;
        let fail = |source| Error::File {
            what: "write the node file",
            path: p.display().to_string(),
            source,
        };
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).map_err(fail)?;
        }
        let tmp = p.with_extension("tmp");
        std::fs::write(
            &tmp,
            serde_json::to_vec(&body).expect("the node file serializes"),
        )
        .map_err(fail)?;
        std::fs::rename(&tmp, p).map_err(fail)
    }

    /// What exists now, of what the plan manages.
    fn current(&mut self, backend: Via) -> Result<Current> {
        let routes = route::list(&mut self.sock)?
            .into_iter()
            .filter(|r| r.protocol == RTPROT_PODNET)
            .collect();
        let (neighs, fdb) = match backend {
            Via::Vxlan { dev } => (
                neigh::list(&mut self.sock)?
                    .into_iter()
                    .filter(|n| n.index == dev && n.state & podnet_conventions::NUD_PERMANENT != 0)
                    .collect(),
                neigh::fdb_list(&mut self.sock)?
                    .into_iter()
                    .filter(|f| f.index == dev && f.dst.is_some())
                    .collect(),
            ),
            Via::HostGw { .. } | Via::WireGuard { .. } => (vec![], vec![]),
        };
        Ok(Current {
            routes,
            neighs,
            fdb,
        })
    }

    /// Sends `ops` in one batch; returns those that did not take. A delete that
    /// finds nothing has nothing left to do and counts as taken.
    fn apply(&mut self, ops: &[plan::Op], name: &dyn Fn(u32) -> String) -> Vec<plan::Op> {
        let reqs: Vec<Request> = ops
            .iter()
            .map(|op| match op {
                plan::Op::AddRoute {
                    dst,
                    via,
                    dev,
                    onlink,
                } => {
                    // A plain add: a route with this prefix that podnet did not make
                    // is never overwritten (the add fails and is logged instead).
                    route::add_request(&route::RouteSpec {
                        dst: dst.network(),
                        prefix: dst.prefix(),
                        gateway: Some(*via),
                        oif: Some(*dev),
                        onlink: *onlink,
                        protocol: RTPROT_PODNET,
                    })
                }
                plan::Op::DelRoute {
                    dst,
                    via,
                    dev,
                    scope,
                } => route::del_request(&route::RouteInfo {
                    dst: dst.network(),
                    prefix: dst.prefix(),
                    gateway: *via,
                    oif: *dev,
                    table: 254,
                    protocol: RTPROT_PODNET,
                    scope: *scope,
                    kind: 1,
                    onlink: false,
                    prefsrc: None,
                }),
                plan::Op::AddNeigh { ip, mac, dev } => neigh::add_request(*dev, *ip, *mac),
                plan::Op::DelNeigh { ip, dev } => neigh::del_request(*dev, *ip),
                plan::Op::AddFdb { mac, dst, dev } => neigh::fdb_add_request(*dev, *mac, *dst),
                plan::Op::DelFdb { mac, dst, dev } => neigh::fdb_del_request(*dev, *mac, *dst),
            })
            .collect();
        let mut failed = Vec::new();
        for (op, r) in ops.iter().zip(self.sock.ack_all(reqs)) {
            match r {
                Ok(()) => {}
                Err(e) if e.is_not_found() && op.is_delete() => {}
                Err(e) => {
                    self.warn(&format!("failed: {}: {e}", op.render(name)));
                    failed.push(op.clone());
                }
            }
        }
        failed
    }

    /// Sets the node up and keeps it converged; returns only on a fatal error.
    pub fn run(mut self) -> Result<()> {
        let (underlay_index, underlay_ip, underlay_mtu) = self.underlay()?;
        if self.cfg.backend == Backend::Wireguard {
            let path = self.cfg.wireguard.key_file.clone();
            let (k, made) = wireguard::load_or_create_key(&path)?;
            if made {
                self.log(&format!(
                    "made the node's WireGuard key {} (mode 0600; only its public key is published)",
                    path.display()
                ));
            }
            self.wg_key = Some(k);
            self.kernel_wg = wireguard::kernel_has_wireguard(&mut self.sock);
            self.log(&format!(
                "WireGuard: {}; {}",
                wireguard::IMPLEMENTATION,
                if self.kernel_wg {
                    "this kernel has WireGuard too, which podnet does not use yet"
                } else {
                    "this kernel has no WireGuard"
                }
            ));
        }
        // A datastore that cannot serve the node yet (API server down, no pod CIDR
        // allocated to the Node yet) is waited for; a refusal is fatal.
        let mut backoff = Duration::from_millis(200);
        let record = loop {
            match self.register(underlay_ip) {
                Err(Error::Datastore(e)) if e.is_transient() => {
                    self.warn(&format!(
                        "cannot register yet: {e}; retrying in {:.1} s",
                        backoff.as_secs_f64()
                    ));
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                r => break r?,
            }
        };
        let mtu = match self.cfg.backend {
            Backend::Vxlan => underlay_mtu - VXLAN_OVERHEAD,
            Backend::HostGw => underlay_mtu,
            Backend::Wireguard => underlay_mtu - wireguard::WG_OVERHEAD,
        };
        let mut n = NodeInfo {
            underlay_index,
            underlay_ip,
            mtu,
            record,
        };
        self.log(&format!(
            "node {} leased {} (underlay {} on {}, backend {}, pod MTU {mtu}, datastore {}, repair {})",
            self.cfg.node, n.record.pod_cidr, underlay_ip, self.cfg.underlay_dev, self.cfg.backend.as_str(), self.ds.describe(), if self.cfg.repair { "on" } else { "off" }
        ));
        // The underlay guard: the overlay ports take encapsulated traffic from peers
        // only, and pod sources come off the wire only as the backend allows. Loaded
        // now, attached by the first round, once the peers are known.
        let [vxlan, wireguard] = self.overlay_ports();
        self.guard = Some(
            guard::Guard::load(
                vxlan,
                wireguard,
                self.cfg.cluster_cidr,
                self.cfg.backend == Backend::HostGw,
            )
            .map_err(Error::Guard)?,
        );
        let mut vx = self.ensure_node(&n)?;
        // Policy first: the node file lets podnet-cni make pods, and none may be open
        // before its verdicts are programmed.
        // Policy reads the datastore through a handle of its own: it waits for changes
        // on its own thread, so a long compile never delays a peer's routes.
        let pds = open_datastore_waiting(&self.cfg.datastore, &self.cfg.node)?;
        let mut pol = policy::Policy::new(
            self.cfg.policy_datapath,
            Box::new(policy::DatastoreSource::new(pds.clone())),
            &self.cfg.node,
            n.record.pod_cidr,
            &self.cfg.bridge,
            self.cfg.bpf_dir.clone(),
        );
        let node = self.cfg.node.clone();
        let pnode = node.clone();
        let plog = move |m: &str| log(&node, m);
        if self.cfg.policy_datapath == PolicyDatapath::Nftables {
            pol.backstop = Some(
                self.guard
                    .as_ref()
                    .expect("the guard is loaded before the policy")
                    .backstop_fd()
                    .map_err(Error::Guard)?,
            );
        }
        if self.cfg.fast_path() {
            if self.cfg.policy_datapath != PolicyDatapath::Ebpf {
                return Err(Error::Policy {
                    datapath: self.cfg.policy_datapath.as_str(),
                    why: "the eBPF fast path (--datapath ebpf) skips the bridge and the node's netfilter, where this datapath works: run --policy-datapath ebpf with it".into(),
                });
            }
            pol.set_fast(policy::FastPath {
                overlay_dev: (self.cfg.backend == Backend::Vxlan)
                    .then(|| self.cfg.vxlan_dev.clone()),
            });
        }
        pol.prepare(&plog).map_err(|why| Error::Policy {
            datapath: self.cfg.policy_datapath.as_str(),
            why,
        })?;
        self.write_node_file(&n, pol.node_file_extra())?;
        self.observe(&pol, n.underlay_ip)?;
        if let Some(m) = self.metrics.clone() {
            pol.on_repair = Some(Box::new(move |object: &str| m.repaired(object)));
        }
        api::serve(
            &self.cfg.api_socket,
            self.status.clone(),
            pol.status.clone(),
            self.rotation.clone(),
            self.events.clone(),
            self.cfg.vxlan_dev.clone(),
            self.cfg.bridge.clone(),
        )?;
        let interval = self.cfg.interval;
        // The policy thread wakes on a datastore change, every interval, and at once
        // when nftables changes in this namespace (a firewall reload): what it then
        // finds missing it puts back (see `Policy::sync`).
        let (wake, woken) = std::sync::mpsc::channel::<()>();
        let dwake = wake.clone();
        let dnode = self.cfg.node.clone();
        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name.into())
                .spawn(f)
                .map_err(|source| Error::File {
                    what: "start a thread for",
                    path: format!("{} ({name})", self.cfg.node),
                    source,
                })
        };
        spawn(
            "policy-watch",
            Box::new(move || loop {
                if let Err(e) = pds.wait_change(interval) {
                    warn(&dnode, &format!("policy: cannot watch the datastore: {e}"));
                    std::thread::sleep(interval);
                }
                if dwake.send(()).is_err() {
                    return;
                }
            }),
        )?;
        if self.cfg.policy_datapath == PolicyDatapath::Nftables {
            let nnode = self.cfg.node.clone();
            spawn(
                "nft-watch",
                Box::new(move || {
                    if let Err(e) = nft::watch(|| wake.send(()).is_ok()) {
                        warn(&nnode, &format!("policy: cannot follow nftables changes ({e}); drift is found at the next round instead"));
                    }
                }),
            )?;
        }
        spawn(
            "policy",
            Box::new(move || loop {
                if let Err(e) = pol.sync(&plog) {
                    warn(&pnode, &format!("policy: {e}; retrying"));
                }
                if woken.recv().is_err() {
                    return;
                }
                while woken.try_recv().is_ok() {}
            }),
        )?;

        let mut renewed = Instant::now();
        let mut known: Vec<Peer> = vec![];
        let mut last_desired: Option<Current> = None;
        let mut changes = 0u64;
        loop {
            if let Some(asked) = self.rotation.take() {
                let r = self.rotate_key(&n);
                if r.is_ok() {
                    // Published: the lease is as new as the record.
                    renewed = Instant::now();
                }
                self.rotation.finish(asked, r);
            }
            if renewed.elapsed() >= self.cfg.lease_ttl / 3 {
                match self.register(n.underlay_ip) {
                    Ok(r) => {
                        if r.pod_cidr != n.record.pod_cidr {
                            // The lease expired and another node took the CIDR: the
                            // bridge, the pods and the node file all still carry the old
                            // one. Stop rather than serve two CIDRs.
                            return Err(Error::LeaseMoved {
                                from: n.record.pod_cidr,
                                to: r.pod_cidr,
                            });
                        }
                        n.record = r;
                        renewed = Instant::now();
                    }
                    Err(e) => {
                        self.datastore_error();
                        self.warn(&format!("cannot renew the lease: {e}"))
                    }
                }
            }
            let t = Instant::now();
            match self.sync(&n, &mut vx, &mut known, &mut last_desired, &mut changes) {
                Ok(()) => {
                    if let Some(m) = &self.metrics {
                        m.sync_duration.observe(t.elapsed().as_secs_f64());
                        m.peers.set(known.len() as i64);
                    }
                }
                Err(e) => {
                    if matches!(e, Error::Datastore(_)) {
                        self.datastore_error();
                    }
                    self.warn(&format!("sync failed, retrying: {e}"));
                }
            }
            if let Err(e) = self.ds.wait_change(self.cfg.interval) {
                self.datastore_error();
                // Without this pause a datastore that fails at once would spin the loop.
                self.warn(&format!("cannot watch the datastore: {e}"));
                std::thread::sleep(self.cfg.interval);
            }
        }
    }

    fn datastore_error(&self) {
        if let Some(m) = &self.metrics {
            m.datastore_errors.inc();
        }
    }

    /// Events and metrics: the event reader, the metrics endpoint, podnet-cni's report
    /// socket. Metrics that cannot be served stop the agent (an operator asked for
    /// them); events that cannot be read are logged and the rest goes on.
    /// `underlay_ip` is the node's address, where `--metrics-addr node:PORT` serves.
    fn observe(&mut self, pol: &policy::Policy, underlay_ip: Ipv4Addr) -> Result<()> {
        let src = observe::Sources {
            node: self.cfg.node.clone(),
            log: self.events.clone(),
            policy: pol.status.clone(),
            bpf_dir: (self.cfg.policy_datapath == PolicyDatapath::Ebpf)
                .then(|| self.cfg.bpf_dir.clone()),
            nftables: self.cfg.policy_datapath == PolicyDatapath::Nftables,
        };
        std::thread::Builder::new()
            .name("events".into())
            .spawn(move || observe::run(src))
            .map_err(|source| Error::File {
                what: "start the event thread for",
                path: self.cfg.node.clone(),
                source,
            })?;
        let Some(spec) = self.cfg.metrics_addr.clone() else {
            return Ok(());
        };
        let m = metrics::Metrics::new(pol.status.clone(), self.events.clone());
        let served = metrics::listen_addrs(&spec, underlay_ip)
            .and_then(|addrs| metrics::serve(&addrs, m.clone(), metrics::Limits::default()))
            .map_err(|why| Error::File {
                what: "serve metrics",
                path: spec.clone(),
                source: std::io::Error::other(why),
            })?;
        let addr = served
            .iter()
            .map(|a| format!("http://{a}/metrics"))
            .collect::<Vec<_>>()
            .join(" and ");
        let path = metrics::cni_socket(&self.cfg.node_file);
        let _ = std::fs::remove_file(&path);
        if let Some(d) = path.parent() {
            let _ = std::fs::create_dir_all(d);
        }
        let sock = std::os::unix::net::UnixDatagram::bind(&path).map_err(|source| Error::File {
            what: "read podnet-cni's reports on",
            path: path.display().to_string(),
            source,
        })?;
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
        let cm = m.clone();
        std::thread::Builder::new()
            .name("cni-reports".into())
            .spawn(move || {
                let mut buf = [0u8; 512];
                while let Ok(n) = sock.recv(&mut buf) {
                    cm.cni_report(&buf[..n]);
                }
            })
            .map_err(|source| Error::File {
                what: "start the CNI report thread for",
                path: path.display().to_string(),
                source,
            })?;
        self.log(&format!(
            "metrics on {addr}; podnet-cni reports on {}",
            path.display()
        ));
        self.metrics = Some(m);
        Ok(())
    }

    /// A new WireGuard key: written to the key file, given to the device, then
    /// published; peers take it from the datastore. Packets between this node and a
    /// peer are lost from the device switching until that peer has the new key and
    /// one handshake has completed.
    fn rotate_key(&mut self, n: &NodeInfo) -> std::result::Result<wireguard::Rotated, String> {
        if self.cfg.backend != Backend::Wireguard {
            return Err(format!(
                "node {} runs the {} backend: only the wireguard backend has a key",
                self.cfg.node,
                self.cfg.backend.as_str()
            ));
        }
        let t = Instant::now();
        let before = wireguard::to_base64(&wireguard::public_key(&self.wg_key.unwrap_or_default()));
        let k = wireguard::generate_key().map_err(|e| e.to_string())?;
        let p = self.cfg.wireguard.clone();
        wireguard::write_key(&p.key_file, &k).map_err(|e| e.to_string())?;
        self.wg_key = Some(k);
        wireguard::Uapi {
            socket: p.socket.clone(),
        }
        .set(&format!("private_key={}\n", wireguard::hex(&k)))
        .map_err(|e| {
            format!(
                "the new key is in {} but the device refused it: {e}; restart podnetd",
                p.key_file.display()
            )
        })?;
        let after = wireguard::to_base64(&wireguard::public_key(&k));
        self.register(n.underlay_ip).map_err(|e| {
            format!("the device holds the new key but it could not be published: {e}; podnetd publishes it at its next lease renewal")
        })?;
        self.log(&format!("rotated the WireGuard key: {before} → {after}"));
        Ok(wireguard::Rotated {
            node: self.cfg.node.clone(),
            public_key_before: before,
            public_key: after,
            elapsed_ms: t.elapsed().as_millis() as u64,
        })
    }

    fn sync(
        &mut self,
        n: &NodeInfo,
        vx: &mut Option<u32>,
        known: &mut Vec<Peer>,
        last: &mut Option<Current>,
        changes: &mut u64,
    ) -> Result<()> {
        if self.cfg.repair {
            *vx = self.ensure_node(n)?;
        }
        let backend = match (self.cfg.backend, *vx) {
            (Backend::Vxlan, Some(dev)) => Via::Vxlan { dev },
            (Backend::Wireguard, Some(dev)) => Via::WireGuard { dev },
            _ => Via::HostGw {
                dev: n.underlay_index,
            },
        };
        let mut peers: Vec<Peer> = Vec::new();
        let mut ignored = std::collections::BTreeMap::new();
        let mut records = self.ds.nodes()?;
        records.retain(|r| r.name != self.cfg.node);
        let me = Me {
            record: &n.record,
            cluster: self.cfg.cluster_cidr,
            service: self.cfg.service_cidr,
            backend: self.cfg.backend,
            wg_public_key: self.wg_key.map(|k| wireguard::public_key(&k)),
        };
        for r in records {
            match check_peer(&r, &me, &peers) {
                Ok((vtep_mac, wireguard)) => peers.push(Peer {
                    vtep_mac,
                    wireguard,
                    name: r.name,
                    cidr: r.pod_cidr,
                    underlay: r.underlay_ip,
                }),
                Err(why) => {
                    ignored.insert(r.name, why);
                }
            }
        }
        // Records the datastore could not read at all are left out by it; say so once.
        let problems = self.ds.problems();
        for p in problems.iter().filter(|p| !self.problems.contains(p)) {
            self.warn(&format!("datastore problem: {p}"));
        }
        self.problems = problems;
        for (name, why) in &ignored {
            if self.ignored.get(name) != Some(why) {
                self.warn(&format!(
                    "ignoring peer {name}: {why}; fix its record in the datastore"
                ));
            }
        }
        self.ignored = ignored;
        peers.sort();
        for p in peers.iter().filter(|p| !known.contains(p)) {
            self.log(&format!(
                "peer {} at {} serves {}",
                p.name, p.underlay, p.cidr
            ));
        }
        for p in known
            .iter()
            .filter(|p| !peers.iter().any(|q| q.name == p.name))
        {
            self.log(&format!(
                "peer {} is gone: removing its route and entries",
                p.name
            ));
        }
        let want = plan::desired(backend, &peers);
        let cur = match (self.cfg.repair, last.as_ref()) {
            (false, Some(prev)) => prev.clone(),
            _ => self.current(backend)?,
        };
        let ops = plan::plan(&want, &cur);
        let drift = peers == *known && !ops.is_empty();
        // Log lines name devices (`dev podnet.vxlan`, not `dev #7`); the agent knows
        // the only two it routes through.
        let (vx_name, under_name) = (self.cfg.vxlan_dev.clone(), self.cfg.underlay_dev.clone());
        let wg_name = self.cfg.wireguard.dev.clone();
        let name = |d: u32| match backend {
            Via::Vxlan { dev } if dev == d => vx_name.clone(),
            Via::WireGuard { dev } if dev == d => wg_name.clone(),
            _ if d == n.underlay_index => under_name.clone(),
            _ => format!("#{d}"),
        };
        for op in &ops {
            self.log(&format!(
                "{}{}",
                if drift { "repairing drift: " } else { "" },
                op.render(&name)
            ));
            if let (true, Some(m)) = (drift, &self.metrics) {
                m.repaired(op.object());
            }
        }
        let failed = self.apply(&ops, &name);
        *changes += (ops.len() - failed.len()) as u64;
        let wg = matches!(backend, Via::WireGuard { .. })
            .then(|| self.sync_wireguard(&peers, self.cfg.repair || peers != *known));
        let guard = self.sync_guard(n, &peers);
        *known = peers;
        // Without repair the next plan works from what this round left: the failed
        // operations are tried again, and only they.
        *last = Some(plan::after(&want, &cur, &failed));
        let mut st = self.status.lock().unwrap();
        *st = Status {
            node: self.cfg.node.clone(),
            backend: self.cfg.backend,
            pod_cidr: n.record.pod_cidr.to_string(),
            underlay_dev: self.cfg.underlay_dev.clone(),
            underlay_ip: n.underlay_ip.to_string(),
            vtep_mac: podnet_netlink::fmt_mac(&vtep_mac(n.underlay_ip)),
            bridge: self.cfg.bridge.clone(),
            vxlan_dev: if matches!(backend, Via::Vxlan { .. }) {
                self.cfg.vxlan_dev.clone()
            } else {
                String::new()
            },
            vxlan_port: self.cfg.port,
            datapath: self.cfg.datapath,
            overlay_overhead: match backend {
                Via::Vxlan { .. } => VXLAN_OVERHEAD,
                Via::WireGuard { .. } => wireguard::WG_OVERHEAD,
                Via::HostGw { .. } => 0,
            },
            mtu: n.mtu,
            repair: self.cfg.repair,
            datastore: self.ds.describe(),
            peers: known
                .iter()
                .map(|p| PeerStatus {
                    name: p.name.clone(),
                    pod_cidr: p.cidr.to_string(),
                    underlay_ip: p.underlay.to_string(),
                    vtep_mac: podnet_netlink::fmt_mac(&p.vtep_mac),
                    wireguard_public_key: p
                        .wireguard
                        .map(|w| wireguard::to_base64(&w.0))
                        .unwrap_or_default(),
                    wireguard_port: p.wireguard.map(|w| w.1).unwrap_or(0),
                })
                .collect(),
            last_sync: podnet_datastore::now(),
            changes: *changes,
            pid: std::process::id(),
            datastore_problems: self.problems.clone(),
            wireguard: wg,
            underlay_guard: guard,
        };
        Ok(())
    }

    /// The underlay guard's round: its peers, its filter verified (and put back,
    /// logged and counted when it drifted). Failures are logged; the guard keeps what
    /// it has.
    fn sync_guard(&mut self, n: &NodeInfo, peers: &[Peer]) -> Option<guard::GuardStatus> {
        let g = self.guard.as_mut()?;
        let list: Vec<(Ipv4Addr, Ipv4Net)> = peers.iter().map(|p| (p.underlay, p.cidr)).collect();
        let dev = self.cfg.underlay_dev.clone();
        // host-gw: each peer's pod CIDR bound to its underlay MAC, as the neighbour
        // table knows it (unknown until resolved).
        let mut sources = guard::Sources::default();
        if self.cfg.backend == Backend::HostGw {
            let neigh = podnet_netlink::neigh::list(&mut self.sock).unwrap_or_default();
            sources.own = Some(n.record.pod_cidr);
            sources.peers = peers
                .iter()
                .map(|p| {
                    let mac = neigh
                        .iter()
                        .find(|e| {
                            e.index == n.underlay_index && e.ip == p.underlay && e.state & 0x20 == 0
                        })
                        .and_then(|e| e.mac);
                    (p.cidr, mac)
                })
                .collect();
        }
        match g.sync(&mut self.sock, n.underlay_index, &dev, &list, &sources) {
            Ok(Some(why)) => {
                self.warn(&format!("repairing drift: {why}: attached it again"));
                if let Some(m) = &self.metrics {
                    m.repaired("underlay-guard");
                }
            }
            Ok(None) => {}
            Err(e) => self.warn(&format!("{e}; retrying")),
        }
        let g = self.guard.as_ref()?;
        Some(g.status(&mut self.sock, n.underlay_index, &dev))
    }
}

/// A peer's WireGuard public key and port.
pub type WireGuardEndpoint = (wireguard::Key, u16);

/// This node, as [`check_peer`] compares a peer's record with it.
pub struct Me<'a> {
    pub record: &'a NodeRecord,
    pub cluster: Ipv4Net,
    /// The Service range: virtual addresses, never a node's.
    pub service: Ipv4Net,
    pub backend: Backend,
    /// With the WireGuard backend: this node's public key.
    pub wg_public_key: Option<wireguard::Key>,
}

/// Checks a peer's record before anything is programmed from it; returns its VTEP
/// MAC (zero with host-gw and WireGuard) and, with WireGuard, its public key and
/// port — or why it is left out, and what to fix. A record is refused when its pod
/// CIDR is outside the cluster CIDR or overlaps ours or an accepted peer's (the first
/// by name keeps it), when its underlay address cannot be a node's
/// ([`underlay_problem`]) or is an accepted peer's, (VXLAN) when its VTEP MAC is not the one derived from its
/// underlay address ([`vtep_mac`]: every agent publishes exactly that, so another one
/// is forged or corrupt), or (WireGuard) when it publishes no key, a malformed one,
/// ours, or an accepted peer's (a copied record must not take over another node's
/// tunnel).
pub fn check_peer(
    r: &NodeRecord,
    me: &Me,
    accepted: &[Peer],
) -> std::result::Result<([u8; 6], Option<WireGuardEndpoint>), String> {
    let overlaps = |a: Ipv4Net, b: Ipv4Net| a.contains(b.network()) || b.contains(a.network());
    let (cluster, mine) = (me.cluster, me.record);
    let cidr = r.pod_cidr;
    if !cluster.contains(cidr.network()) || cidr.prefix() < cluster.prefix() {
        return Err(format!(
            "its pod CIDR {cidr} is outside the cluster CIDR {cluster}"
        ));
    }
    if overlaps(cidr, mine.pod_cidr) {
        return Err(format!(
            "its pod CIDR {cidr} overlaps ours ({})",
            mine.pod_cidr
        ));
    }
    if let Some(p) = accepted.iter().find(|p| overlaps(cidr, p.cidr)) {
        return Err(format!(
            "its pod CIDR {cidr} overlaps {}'s ({})",
            p.name, p.cidr
        ));
    }
    if let Some(why) = underlay_problem(r.underlay_ip, me) {
        return Err(why);
    }
    let u = r.underlay_ip;
    if let Some(p) = accepted.iter().find(|p| p.underlay == u) {
        return Err(format!(
            "its underlay address {u} is also {}'s: two nodes cannot share one; the peer's podnetd must publish its own underlay interface's address (--underlay-dev); if it does, the record is forged",
            p.name
        ));
    }
    let wg = match me.backend {
        Backend::Wireguard => {
            let w = r.wireguard.as_ref().ok_or(format!(
                "it publishes no WireGuard key (its backend is {:?}; every node of a cluster runs the same backend)",
                r.backend
            ))?;
            let k = wireguard::parse_public_key(&w.public_key).map_err(|why| {
                format!(
                    "its WireGuard public key {:?} is malformed: {why}",
                    w.public_key
                )
            })?;
            if Some(k) == me.wg_public_key {
                return Err(format!("its WireGuard public key {} is ours", w.public_key));
            }
            if let Some(p) = accepted
                .iter()
                .find(|p| p.wireguard.map(|x| x.0) == Some(k))
            {
                return Err(format!(
                    "its WireGuard public key {} is also {}'s",
                    w.public_key, p.name
                ));
            }
            if w.port == 0 {
                return Err("its WireGuard port is 0".into());
            }
            Some((k, w.port))
        }
        _ => None,
    };
    match (parse_mac(&r.vtep_mac), me.backend) {
        (Some(m), Backend::Vxlan) if m != vtep_mac(u) => Err(format!(
            "its VTEP MAC {} is not {}, the one its underlay address {u} gives (0a:59 + the address; every podnetd publishes exactly that): the record is forged or corrupt; restart that node's podnetd to publish it again",
            r.vtep_mac,
            podnet_netlink::fmt_mac(&vtep_mac(u))
        )),
        (Some(m), _) => Ok((m, wg)),
        (None, Backend::Vxlan) => Err(format!("its VTEP MAC {:?} cannot be read", r.vtep_mac)),
        (None, _) => Ok(([0; 6], wg)),
    }
}

/// Why `u` cannot be a peer's underlay address, if it cannot: what peers send the
/// peer's pod traffic to must be a unicast address of a host on the underlay, and not
/// this node. An address inside the cluster CIDR (a pod's, or one a node routes to
/// its pods) or the Service range (a virtual address) would send another node's pod
/// traffic somewhere the record's author chose; loopback and link-local ones are
/// this node's own.
pub fn underlay_problem(u: Ipv4Addr, me: &Me) -> Option<String> {
    let fix = "the peer's podnetd must publish its underlay interface's address (--underlay-dev); if it does, the record is forged";
    let what = if u.is_unspecified() || u.is_multicast() || u.is_broadcast() {
        "not a unicast address".to_string()
    } else if u.is_loopback() {
        "a loopback address (127.0.0.0/8)".to_string()
    } else if u.is_link_local() {
        "link-local (169.254.0.0/16)".to_string()
    } else if me.cluster.contains(u) {
        format!("inside the cluster CIDR {} (pod addresses)", me.cluster)
    } else if me.service.contains(u) {
        format!(
            "inside the service CIDR {} (virtual addresses; podnetd --service-cidr)",
            me.service
        )
    } else if u == me.record.underlay_ip {
        return Some(format!(
            "its underlay address {u} is ours: two nodes cannot share one; {fix}"
        ));
    } else {
        return None;
    };
    Some(format!("its underlay address {u} is {what}; {fix}"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn bad_peer_records_are_refused_with_why() {
        use super::*;
        let rec = |name: &str, cidr: &str, ip: [u8; 4], mac: &str| NodeRecord {
            name: name.into(),
            pod_cidr: cidr.parse().unwrap(),
            underlay_ip: Ipv4Addr::from(ip),
            vtep_mac: mac.into(),
            backend: "vxlan".into(),
            wireguard: None,
            renewed: 0,
            ttl_secs: 60,
        };
        let mine = rec("a", "10.244.0.0/24", [192, 168, 1, 10], "0a:59:c0:a8:01:0a");
        let cluster: Ipv4Net = "10.244.0.0/16".parse().unwrap();
        let me = Me {
            record: &mine,
            cluster,
            service: "10.96.0.0/12".parse().unwrap(),
            backend: Backend::Vxlan,
            wg_public_key: None,
        };
        let good = rec("b", "10.244.1.0/24", [192, 168, 1, 11], "0a:59:c0:a8:01:0b");
        let (mac, _) = check_peer(&good, &me, &[]).unwrap();
        assert_eq!(mac, [0x0a, 0x59, 192, 168, 1, 11]);
        let accepted = vec![Peer {
            name: "b".into(),
            cidr: good.pod_cidr,
            underlay: good.underlay_ip,
            vtep_mac: mac,
            wireguard: Some(([2; 32], 51820)),
        }];
        let cases = [
            (
                rec("c", "10.99.0.0/24", [192, 168, 1, 12], "0a:59:c0:a8:01:0c"),
                "outside the cluster CIDR",
            ),
            (
                rec(
                    "c",
                    "10.244.0.128/25",
                    [192, 168, 1, 12],
                    "0a:59:c0:a8:01:0c",
                ),
                "overlaps ours",
            ),
            (
                rec("c", "10.244.1.0/24", [192, 168, 1, 12], "0a:59:c0:a8:01:0c"),
                "overlaps b's",
            ),
            (
                rec("c", "10.244.2.0/24", [0, 0, 0, 0], "0a:59:c0:a8:01:0c"),
                "not a unicast",
            ),
            (
                rec("c", "10.244.2.0/24", [224, 0, 0, 1], "0a:59:c0:a8:01:0c"),
                "not a unicast",
            ),
            (
                rec("c", "10.244.2.0/24", [192, 168, 1, 10], "0a:59:c0:a8:01:0c"),
                "is ours",
            ),
            (
                rec("c", "10.244.2.0/24", [192, 168, 1, 12], "zz"),
                "cannot be read",
            ),
            // Where a forged record would send another node's pod traffic.
            (
                rec(
                    "c",
                    "10.244.2.0/24",
                    [255, 255, 255, 255],
                    "0a:59:ff:ff:ff:ff",
                ),
                "not a unicast",
            ),
            (
                rec("c", "10.244.2.0/24", [127, 0, 0, 1], "0a:59:7f:00:00:01"),
                "is a loopback address",
            ),
            (
                rec("c", "10.244.2.0/24", [169, 254, 1, 1], "0a:59:a9:fe:01:01"),
                "is link-local",
            ),
            (
                rec("c", "10.244.2.0/24", [10, 244, 5, 5], "0a:59:0a:f4:05:05"),
                "is inside the cluster CIDR 10.244.0.0/16",
            ),
            (
                rec("c", "10.244.2.0/24", [10, 244, 1, 1], "0a:59:0a:f4:01:01"),
                "is inside the cluster CIDR",
            ),
            (
                rec("c", "10.244.2.0/24", [10, 100, 0, 1], "0a:59:0a:64:00:01"),
                "is inside the service CIDR 10.96.0.0/12",
            ),
            (
                rec("c", "10.244.2.0/24", [192, 168, 1, 11], "0a:59:c0:a8:01:0b"),
                "is also b's",
            ),
            // A readable MAC that is not the one the address gives: b's, say.
            (
                rec("c", "10.244.2.0/24", [192, 168, 1, 12], "0a:59:c0:a8:01:0b"),
                "is not 0a:59:c0:a8:01:0c",
            ),
            (
                rec("c", "10.244.2.0/24", [192, 168, 1, 12], "02:00:00:00:00:01"),
                "forged or corrupt",
            ),
        ];
        for (r, why) in cases {
            let e = check_peer(&r, &me, &accepted).unwrap_err();
            assert!(e.contains(why), "{e} (want {why})");
            // Every refusal says what to do about it.
            assert!(
                e.contains("cannot be read") || e.contains("pod CIDR") || e.contains("podnetd"),
                "{e}: says nothing to fix"
            );
        }
        // Just outside both ranges is a node's address like any other.
        for ip in [[10, 243, 255, 255], [10, 112, 0, 1], [169, 253, 0, 1]] {
            let mac = podnet_netlink::fmt_mac(&vtep_mac(Ipv4Addr::from(ip)));
            let r = rec("c", "10.244.2.0/24", ip, &mac);
            assert!(check_peer(&r, &me, &accepted).is_ok(), "{ip:?}");
        }
        // host-gw needs no MAC; the address is checked all the same.
        let r = rec("c", "10.244.2.0/24", [192, 168, 1, 12], "");
        let hostgw = Me {
            backend: Backend::HostGw,
            ..me
        };
        assert!(check_peer(&r, &hostgw, &accepted).is_ok());
        let r = rec("c", "10.244.2.0/24", [10, 96, 0, 10], "");
        let e = check_peer(&r, &hostgw, &accepted).unwrap_err();
        assert!(e.contains("service CIDR"), "{e}");
        // WireGuard: a readable key that is neither ours nor another peer's.
        let wg = Me {
            backend: Backend::Wireguard,
            wg_public_key: Some([1; 32]),
            ..hostgw
        };
        let with_key = |key: &str, port: u16| {
            let mut r = rec("c", "10.244.2.0/24", [192, 168, 1, 12], "");
            r.wireguard = Some(podnet_datastore::WireGuardPeer {
                public_key: key.into(),
                port,
            });
            r
        };
        let b64 = |b: u8| wireguard::to_base64(&[b; 32]);
        let (_, k) = check_peer(&with_key(&b64(3), 51820), &wg, &accepted).unwrap();
        assert_eq!(k, Some(([3; 32], 51820)));
        for (r, why) in [
            (
                rec("c", "10.244.2.0/24", [192, 168, 1, 12], ""),
                "publishes no WireGuard key",
            ),
            (with_key("not-a-key", 51820), "is malformed"),
            (
                with_key(&wireguard::to_base64(&[0; 32]), 51820),
                "is malformed",
            ),
            (with_key(&b64(1), 51820), "is ours"),
            (with_key(&b64(2), 51820), "is also b's"),
            (with_key(&b64(3), 0), "port is 0"),
        ] {
            let e = check_peer(&r, &wg, &accepted).unwrap_err();
            assert!(e.contains(why), "{e} (want {why})");
        }
    }
}
