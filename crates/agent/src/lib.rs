//! podnetd, the per-node agent.
//!
//! # Where things are
//! - [`cmd`]: the command line; [`config`]: what it configures.
//! - [`node`]: the node's underlay, lease, bridge, forwarding and node file.
//! - [`backend`]: how the node reaches other nodes' pods (VXLAN, host-gw, WireGuard),
//!   each behind one trait; [`plan`]: the per-peer routes, neighbours and FDB entries
//!   (pure); [`peers`]: which peer records are programmed.
//! - [`reconcile`]: the loop that keeps all of it converged.
//! - [`policy`]: NetworkPolicy, its datapaths behind one trait (`policy::datapath`:
//!   nftables, eBPF, none) and the eBPF fast path; [`guard`]: the underlay guard.
//! - [`api`]: the local API's server (its types: `podnet-api`); [`observe`],
//!   [`metrics`], [`telemetry`]: events and metrics.
//!
//! # Kernel objects it owns
//! Per node: the bridge and forwarding ([`node`]); the backend's device
//! ([`backend`]); per peer, see [`plan`]. It publishes the node's pod CIDR, MTU and
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
//! - Enforces NetworkPolicy for the node's own pods ([`policy`]): compiled from the
//!   Namespaces, Pods and NetworkPolicies in the datastore, programmed before any pod
//!   can be made, changed incrementally as objects change — on a thread of its own
//!   with its own datastore handle, so that policy work never delays routes.
//! - Serves its status and the node's kernel state on a Unix socket ([`api`]).

pub mod api;
pub mod backend;
pub mod cmd;
pub mod config;
mod error;
pub mod guard;
pub mod kubeproxy;
pub mod masquerade;
pub mod metrics;
mod node;
pub mod observe;
pub mod peers;
pub mod plan;
pub mod policy;
pub mod reconcile;
pub mod retry;
pub mod telemetry;
pub mod wireguard;
mod workers;

/// The API's types live in `podnet-api`, the boundary every client builds against.
pub use podnet_api as proto;
/// The API's ICMP probe, run in the node's namespace for `{"get":"ping"}`.
pub use podnet_api::probe;
pub use podnet_api::{PeerStatus, Status, WireGuardPeerStatus, WireGuardStatus};
pub use podnet_conventions::{vtep_mac, Backend, Datapath, PolicyDatapath, VXLAN_OVERHEAD};

/// The eBPF and nftables policy datapaths' kernel objects, by their short names.
pub use policy::datapath::ebpf;
pub use policy::datapath::nftables::table as nft;

pub use backend::NodeInfo;
pub use config::Config;
pub use error::{BoxError, Error, Failure, Result};
pub use peers::{check_peer, underlay_problem, Me, WireGuardEndpoint};

use backend::NodeBackend;
use podnet_datastore::Datastore;
use podnet_netlink::Socket;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The agent logs through `tracing` (podnetd sets the format and `RUST_LOG` the
/// level); every line carries the node as a field.
fn log(node: &str, msg: &str) {
    tracing::info!(node, "{msg}");
}

/// Something failed or was refused: the agent goes on, an operator may act.
fn warn(node: &str, msg: &str) {
    tracing::warn!(node, "{msg}");
}

pub struct Agent {
    cfg: Config,
    ds: Arc<dyn Datastore>,
    sock: Socket,
    /// How the node reaches its peers ([`backend`]).
    backend: Box<dyn NodeBackend>,
    status: Arc<Mutex<Status>>,
    /// Peers left out, with why: logged once when they are first left out.
    ignored: BTreeMap<String, String>,
    /// The datastore's problems last logged.
    problems: Vec<String>,
    /// Key rotations asked for through the API.
    rotation: Arc<wireguard::Rotation>,
    /// Drop and flow events ([`observe`]) and the metrics ([`metrics`]).
    events: Arc<observe::EventLog>,
    metrics: Option<metrics::Metrics>,
    /// The underlay guard ([`guard`]): with the VXLAN and WireGuard backends.
    guard: Option<guard::Guard>,
    /// The masquerade table as last written and verified ([`masquerade`]); whether a
    /// leftover one was looked for (with `--masquerade=false`).
    masq: [Option<masquerade::Masquerade>; 2],
    masq_cleared: [bool; 2],
    /// `bridge-nf-call-iptables` was on (or turned on) once: off again is drift.
    bridge_nf_on: bool,
}

/// Opens the datastore a URL names ([`podnet_kube::open_datastore`]: `file:…`,
/// `etcd://…`, or `kubernetes[:kubeconfig]`), waiting (with backoff, saying why)
/// while it cannot be reached yet — etcd with a password authenticates as it
/// connects; a refusal or a bad URL is returned at once. Log lines name `node`.
pub fn open_datastore_waiting(url: &str, node: &str) -> Result<Arc<dyn Datastore>> {
    let lnode = node.to_string();
    let log: podnet_kube::Log = Arc::new(move |m: &str| warn(&lnode, m));
    retry::with_backoff(
        || podnet_kube::open_datastore(url, log.clone()).map_err(Error::from),
        |e| matches!(e, Error::Datastore(d) if d.is_transient()),
        |e, wait| {
            warn(
                node,
                &format!(
                    "cannot open the datastore yet: {e}; retrying in {:.1} s",
                    wait.as_secs_f64()
                ),
            )
        },
        Duration::from_secs(5),
    )
}

impl Agent {
    pub fn new(cfg: Config) -> Result<Agent> {
        let ds = open_datastore_waiting(&cfg.datastore, &cfg.node)?;
        let sock = Socket::route()?;
        Ok(Agent {
            backend: backend::for_config(&cfg),
            cfg,
            ds,
            sock,
            status: Arc::new(Mutex::new(Status::default())),
            ignored: Default::default(),
            problems: Vec::new(),
            rotation: Default::default(),
            events: Default::default(),
            metrics: None,
            guard: None,
            masq: [None, None],
            masq_cleared: [false, false],
            bridge_nf_on: false,
        })
    }

    fn log(&self, msg: &str) {
        log(&self.cfg.node, msg)
    }

    fn warn(&self, msg: &str) {
        warn(&self.cfg.node, msg)
    }

    /// Sets the node up and keeps it converged; returns only on a fatal error.
    pub fn run(mut self) -> Result<()> {
        let (n, dev) = self.start()?;
        reconcile::Reconciler::new(self, n, dev).run()
    }

    /// The node set up, its policy programmed and its API served: what the loop
    /// starts from.
    fn start(&mut self) -> Result<(NodeInfo, Option<u32>)> {
        let (underlay_index, underlay_ip, underlay_ip6, underlay_mtu) = self.underlay()?;
        let mut ctx = backend::Ctx {
            cfg: &self.cfg,
            sock: &mut self.sock,
        };
        self.backend.prepare(&mut ctx)?;
        let record = self.register_waiting(underlay_ip, underlay_ip6)?;
        let mtu = underlay_mtu - self.backend.overhead();
        let n = NodeInfo {
            underlay_index,
            underlay_ip,
            underlay_ip6,
            mtu,
            record,
        };
        self.log(&format!(
            "node {} leased {} (underlay {} on {}, backend {}, pod MTU {mtu}, datastore {}, repair {})",
            self.cfg.node, n.record.pod_cidr, n.tunnel_ip(), self.cfg.underlay_dev, self.cfg.backend.as_str(), self.ds.describe(), if self.cfg.repair { "on" } else { "off" }
        ));
        // The underlay guard: the overlay ports take encapsulated traffic from peers
        // only, and pod sources come off the wire only as the backend allows. Loaded
        // now, attached by the first round, once the peers are known.
        let [vxlan, wireguard] = self.backend.overlay_ports();
        self.guard = Some(
            guard::Guard::load(
                vxlan,
                wireguard,
                (
                    self.cfg.cluster_cidr,
                    self.cfg.cluster_cidr6.map(|(c, _)| c),
                ),
                self.backend.plain_pod_sources(),
                self.cfg.underlay_family.is_ipv6(),
            )
            .map_err(Error::Guard)?,
        );
        let dev = self.ensure_node(&n)?;
        // Policy first: the node file lets podnet-cni make pods, and none may be open
        // before its verdicts are programmed.
        let pol = self.start_policy(&n)?;
        api::serve(
            &self.cfg.api_socket,
            self.status.clone(),
            pol,
            self.rotation.clone(),
            self.events.clone(),
            self.cfg.vxlan_dev.clone(),
            self.cfg.bridge.clone(),
        )?;
        Ok((n, dev))
    }
}
