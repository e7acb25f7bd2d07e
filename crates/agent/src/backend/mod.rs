//! How a node reaches the pods of other nodes: one module per backend, each behind
//! [`NodeBackend`]. The agent asks its backend for the device pod traffic to peers
//! leaves by (made or repaired every round), the shape of the per-peer routes
//! ([`Via`], which [`crate::plan`] turns into routes, neighbours and FDB entries),
//! what it adds to each packet, and what the node's record publishes for it.
//!
//! # Kernel objects the backends own
//! - [`vxlan`]: the VXLAN device (default `podnet.vxlan`).
//! - [`host_gw`]: nothing of its own: routes leave by the underlay link.
//! - [`wireguard`]: the WireGuard device and its device process (see
//!   [`crate::wireguard`]), its peers.
//!
//! A node that switches backend removes what the others left ([`remove_others`]).
//! Adding a backend: a module implementing [`NodeBackend`], its name in
//! `podnet_conventions::Backend`, and its constructor in [`for_config`].

pub mod host_gw;
pub mod vxlan;
pub mod wireguard;

use crate::plan::{Peer, Via};
use crate::{Backend, Config, Result, WireGuardStatus};
use podnet_cni_spec::Ipv4Net;
use podnet_datastore::{NodeRecord, WireGuardPeer};
use podnet_netlink::link::{self, LinkChange, Target};
use podnet_netlink::socket::Request;
use podnet_netlink::{addr, Socket};
use std::net::Ipv4Addr;

/// The node's facts after set-up: its underlay link and address, the pod MTU and
/// its leased record.
pub struct NodeInfo {
    pub underlay_index: u32,
    pub underlay_ip: Ipv4Addr,
    /// A dual-stack node's global IPv6 address on the underlay link.
    pub underlay_ip6: Option<std::net::Ipv6Addr>,
    pub mtu: u32,
    pub record: NodeRecord,
}

impl NodeInfo {
    /// Where this node's overlay tunnel ends: its underlay IPv6 address with
    /// `--underlay-family ipv6` (start-up refuses a node without one), else IPv4.
    pub fn tunnel_ip(&self) -> std::net::IpAddr {
        match (self.record.underlay_family.is_ipv6(), self.underlay_ip6) {
            (true, Some(a)) => a.into(),
            _ => self.underlay_ip.into(),
        }
    }
}

/// What a backend works with: the node's configuration and its netlink socket.
pub struct Ctx<'a> {
    pub cfg: &'a Config,
    pub sock: &'a mut Socket,
}

impl Ctx<'_> {
    pub fn log(&self, msg: &str) {
        tracing::info!(node = %self.cfg.node, "{msg}");
    }

    pub fn warn(&self, msg: &str) {
        tracing::warn!(node = %self.cfg.node, "{msg}");
    }
}

/// One way of reaching the pods of other nodes.
pub trait NodeBackend: Send {
    /// Its name (`--backend`, the status, the node's record).
    fn kind(&self) -> Backend;

    /// What it adds to each pod packet: the pod MTU is the underlay's minus this.
    fn overhead(&self) -> u32;

    /// The node's overlay UDP ports `[VXLAN, WireGuard]` (0: none), which pods may send
    /// to only towards other pods and the underlay only from peers.
    fn overlay_ports(&self) -> [u16; 2] {
        [0, 0]
    }

    /// Before the node registers (keys and the like).
    fn prepare(&mut self, _ctx: &mut Ctx) -> Result<()> {
        Ok(())
    }

    /// What the node's record publishes for this backend.
    fn registration(&self) -> Option<WireGuardPeer> {
        None
    }

    /// Removes what this backend leaves on the node, when another backend runs.
    fn remove(&self, ctx: &mut Ctx) -> Result<()>;

    /// Makes or repairs the backend's device; its index (`None`: traffic to peers
    /// leaves by the underlay link).
    fn ensure_device(&mut self, ctx: &mut Ctx, n: &NodeInfo) -> Result<Option<u32>>;

    /// The shape of the per-peer routes through device `dev` (as
    /// [`NodeBackend::ensure_device`] returned it).
    fn via(&self, dev: Option<u32>, underlay_index: u32) -> Via;

    /// The device's name, for the status and for log lines (`None`: no device).
    fn device_name(&self) -> Option<&str> {
        None
    }

    /// After the routes: gives the device its peers (when `apply`) and reports it.
    fn sync_peers(
        &mut self,
        _ctx: &mut Ctx,
        _peers: &[Peer],
        _apply: bool,
    ) -> Option<WireGuardStatus> {
        None
    }

    /// This node's public key, which no peer may publish (WireGuard).
    fn public_key(&self) -> Option<crate::wireguard::Key> {
        None
    }

    /// A new key for the device (WireGuard): `(public key before, after)`. The caller
    /// publishes it.
    fn rotate_key(&mut self, ctx: &mut Ctx) -> Result<(String, String)> {
        Err(crate::Error::NoKey {
            node: ctx.cfg.node.clone(),
            backend: self.kind(),
        })
    }

    /// Whether pod packets cross the underlay unencapsulated, so that the underlay
    /// guard binds their sources to their node's MAC (host-gw).
    fn plain_pod_sources(&self) -> bool {
        false
    }

    /// The overlay device the eBPF fast path takes other nodes' packets from, and
    /// writes the encapsulation of (VXLAN).
    fn fast_path_overlay(&self) -> Option<String> {
        None
    }
}

/// The backend `cfg` names.
pub fn for_config(cfg: &Config) -> Box<dyn NodeBackend> {
    backend(cfg, cfg.backend)
}

fn backend(cfg: &Config, kind: Backend) -> Box<dyn NodeBackend> {
    match kind {
        Backend::Vxlan => Box::new(vxlan::Vxlan::new(cfg)),
        Backend::HostGw => Box::new(host_gw::HostGw),
        Backend::Wireguard => Box::new(wireguard::WireGuard::new(cfg)),
    }
}

/// Removes what every backend other than the configured one left behind.
pub fn remove_others(ctx: &mut Ctx) -> Result<()> {
    for kind in Backend::ALL.iter().filter(|k| **k != ctx.cfg.backend) {
        backend(ctx.cfg, *kind).remove(ctx)?;
    }
    Ok(())
}

/// An overlay device's link (VXLAN, WireGuard): the pod CIDR's network address as
/// a /32 (node-originated traffic to remote pods leaves from it), up, at `mtu`.
pub fn overlay_link(sock: &mut Socket, l: &link::LinkInfo, cidr: Ipv4Net, mtu: u32) -> Result<u32> {
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
    for r in sock.ack_all(reqs) {
        match r {
            Err(e) if !e.is_exists() => return Err(e.into()),
            _ => {}
        }
    }
    Ok(l.index)
}
