//! The agent's loop: every interval, or as soon as the datastore changes, it renews
//! the lease, reads the peers, diffs the kernel state it owns against what they need
//! ([`crate::plan`]) and applies the difference; then the backend's device peers, the
//! underlay guard and the status. [`Reconciler`] owns what one round leaves for the
//! next.

use crate::backend::{Ctx, NodeInfo};
use crate::peers::{check_peer, check_peer6, Me};
use crate::plan::{self, Current, Peer, Via, RTPROT_PODNET};
use crate::{guard, vtep_mac, wireguard, Agent, Error, PeerStatus, Result, Status};
use podnet_netlink::socket::Request;
use podnet_netlink::{neigh, route};
use std::collections::BTreeMap;
use std::time::Instant;

/// The agent and what its rounds carry from one to the next.
pub struct Reconciler {
    a: Agent,
    n: NodeInfo,
    /// The backend's device, as the last round found or made it.
    dev: Option<u32>,
    /// The peers the last round programmed.
    known: Vec<Peer>,
    /// Without repair: what the last round left (the next plans from it, not the
    /// kernel).
    last: Option<Current>,
    /// Kernel changes made since the agent started.
    changes: u64,
    /// When the lease was last renewed.
    renewed: Instant,
    /// kube-proxy runs in IPVS mode on this node (its device `kube-ipvs0` exists).
    ipvs: bool,
}

/// Why podnet refuses kube-proxy's IPVS mode.
pub const IPVS_REFUSED: &str = "kube-proxy runs in IPVS mode on this node (device kube-ipvs0): podnet does not support it. Every ClusterIP is a local address of the node there, so Service traffic would be judged as traffic to the node, which NetworkPolicy always admits. Run kube-proxy with --proxy-mode=nftables (or iptables)";

impl Reconciler {
    pub fn new(a: Agent, n: NodeInfo, dev: Option<u32>) -> Reconciler {
        Reconciler {
            a,
            n,
            dev,
            known: vec![],
            last: None,
            changes: 0,
            renewed: Instant::now(),
            ipvs: false,
        }
    }

    /// Rounds until a fatal error.
    pub fn run(mut self) -> Result<()> {
        loop {
            if let Some(asked) = self.a.rotation.take() {
                let r = self.rotate_key();
                if r.is_ok() {
                    // Published: the lease is as new as the record.
                    self.renewed = Instant::now();
                }
                self.a.rotation.finish(
                    asked,
                    r.map_err(|e| wireguard::RotationFailed(e.to_string())),
                );
            }
            if self.renewed.elapsed() >= self.a.cfg.lease_ttl / 3 {
                self.renew()?;
            }
            let t = Instant::now();
            match self.sync() {
                Ok(()) => {
                    if let Some(m) = &self.a.metrics {
                        m.sync_duration.observe(t.elapsed().as_secs_f64());
                        m.peers.set(self.known.len() as i64);
                    }
                }
                Err(e) => {
                    if matches!(e, Error::Datastore(_)) {
                        self.a.datastore_error();
                    }
                    self.a.warn(&format!("sync failed, retrying: {e}"));
                }
            }
            if let Err(e) = self.a.ds.wait_change(self.a.cfg.interval) {
                self.a.datastore_error();
                // Without this pause a datastore that fails at once would spin the loop.
                self.a.warn(&format!("cannot watch the datastore: {e}"));
                std::thread::sleep(self.a.cfg.interval);
            }
        }
    }

    /// Renews the lease. A lease that moved is fatal: the lease expired and another
    /// node took the CIDR, while the bridge, the pods and the node file all still
    /// carry the old one; stop rather than serve two CIDRs.
    fn renew(&mut self) -> Result<()> {
        match self.a.register(self.n.underlay_ip, self.n.underlay_ip6) {
            Ok(r) => {
                if r.pod_cidr != self.n.record.pod_cidr {
                    return Err(Error::LeaseMoved {
                        from: self.n.record.pod_cidr,
                        to: r.pod_cidr,
                    });
                }
                self.n.record = r;
                self.renewed = Instant::now();
            }
            Err(e) => {
                self.a.datastore_error();
                self.a.warn(&format!("cannot renew the lease: {e}"))
            }
        }
        Ok(())
    }

    /// A new key (WireGuard): given to the device, then published; peers take it
    /// from the datastore. Packets between this node and a peer are lost from the
    /// device switching until that peer has the new key and one handshake has
    /// completed.
    fn rotate_key(&mut self) -> Result<wireguard::Rotated> {
        let t = Instant::now();
        let mut ctx = Ctx {
            cfg: &self.a.cfg,
            sock: &mut self.a.sock,
        };
        let (before, after) = self.a.backend.rotate_key(&mut ctx)?;
        self.a
            .register(self.n.underlay_ip, self.n.underlay_ip6)
            .map_err(|e| Error::KeyNotPublished(Box::new(e)))?;
        self.a
            .log(&format!("rotated the WireGuard key: {before} → {after}"));
        Ok(wireguard::Rotated {
            node: self.a.cfg.node.clone(),
            public_key_before: before,
            public_key: after,
            elapsed_ms: t.elapsed().as_millis() as u64,
        })
    }

    /// The peers the datastore holds that pass [`check_peer`], sorted; the others are
    /// logged once each, as are the records the datastore could not read.
    fn peers(&mut self) -> Result<Vec<Peer>> {
        let mut peers: Vec<Peer> = Vec::new();
        let mut ignored = BTreeMap::new();
        let mut records = self.a.ds.nodes()?;
        records.retain(|r| r.name != self.a.cfg.node);
        let me = Me {
            record: &self.n.record,
            cluster: self.a.cfg.cluster_cidr,
            cluster6: self.a.cfg.cluster_cidr6.map(|(c, _)| c),
            service: self.a.cfg.service_cidr,
            backend: self.a.cfg.backend,
            wg_public_key: self.a.backend.public_key(),
        };
        for r in records {
            match check_peer(&r, &me, &peers)
                .and_then(|(m, w)| Ok((m, w, check_peer6(&r, &me, &peers)?)))
            {
                Ok((vtep_mac, wireguard, p6)) => peers.push(Peer {
                    endpoint: match (self.n.record.underlay_family.is_ipv6(), p6.underlay) {
                        (true, Some(u)) => u.into(),
                        _ => r.underlay_ip.into(),
                    },
                    vtep_mac,
                    wireguard,
                    name: r.name,
                    cidr: r.pod_cidr,
                    cidr6: p6.cidr,
                    underlay: r.underlay_ip,
                    underlay6: p6.underlay,
                }),
                Err(why) => {
                    ignored.insert(r.name, why.to_string());
                }
            }
        }
        let problems = self.a.ds.problems();
        for p in problems.iter().filter(|p| !self.a.problems.contains(p)) {
            self.a.warn(&format!("datastore problem: {p}"));
        }
        self.a.problems = problems;
        for (name, why) in &ignored {
            if self.a.ignored.get(name) != Some(why) {
                self.a.warn(&format!(
                    "ignoring peer {name}: {why}; fix its record in the datastore"
                ));
            }
        }
        self.a.ignored = ignored;
        peers.sort();
        for p in peers.iter().filter(|p| !self.known.contains(p)) {
            self.a.log(&format!(
                "peer {} at {} serves {}",
                p.name, p.endpoint, p.cidr
            ));
        }
        for p in self
            .known
            .iter()
            .filter(|p| !peers.iter().any(|q| q.name == p.name))
        {
            self.a.log(&format!(
                "peer {} is gone: removing its route and entries",
                p.name
            ));
        }
        Ok(peers)
    }

    /// One round.
    fn sync(&mut self) -> Result<()> {
        if self.a.cfg.repair {
            self.dev = self.a.ensure_node(&self.n)?;
        }
        let via = self.a.backend.via(self.dev, self.n.underlay_index);
        let peers = self.peers()?;
        let want = plan::desired(via, &peers);
        let cur = match (self.a.cfg.repair, self.last.as_ref()) {
            (false, Some(prev)) => prev.clone(),
            _ => current(&mut self.a.sock, via)?,
        };
        let ops = plan::plan(&want, &cur);
        let failed = self.program(&ops, via, peers == self.known);
        self.changes += (ops.len() - failed.len()) as u64;
        let apply_peers = self.a.cfg.repair || peers != self.known;
        let mut ctx = Ctx {
            cfg: &self.a.cfg,
            sock: &mut self.a.sock,
        };
        let wg = self.a.backend.sync_peers(&mut ctx, &peers, apply_peers);
        let guard = self.sync_guard(&peers);
        let ipvs = podnet_netlink::link::get_by_name(&mut self.a.sock, "kube-ipvs0")
            .is_ok_and(|l| l.is_some());
        if ipvs && !self.ipvs {
            self.a.warn(IPVS_REFUSED);
        }
        self.ipvs = ipvs;
        let underlays: Vec<std::net::IpAddr> = peers
            .iter()
            .flat_map(|p| std::iter::once(p.underlay.into()).chain(p.underlay6.map(Into::into)))
            .collect();
        self.a.sync_masquerade(&underlays);
        self.known = peers;
        // Without repair the next plan works from what this round left: the failed
        // operations are tried again, and only they.
        self.last = Some(plan::after(&want, &cur, &failed));
        let st = self.status(via, wg, guard);
        *self.a.status.lock().unwrap() = st;
        Ok(())
    }

    /// Logs and applies `ops` (`drift`: the peers did not change, so any operation
    /// repairs something changed by hand); returns those that did not take.
    fn program(&mut self, ops: &[plan::Op], via: Via, same_peers: bool) -> Vec<plan::Op> {
        let drift = same_peers && !ops.is_empty();
        // Log lines name devices (`dev podnet.vxlan`, not `dev #7`); the agent knows
        // the only two it routes through.
        let dev_name = self.a.backend.device_name().unwrap_or_default().to_string();
        let under_name = self.a.cfg.underlay_dev.clone();
        let underlay_index = self.n.underlay_index;
        let name = |d: u32| match via {
            Via::Vxlan { dev } | Via::WireGuard { dev } if dev == d => dev_name.clone(),
            _ if d == underlay_index => under_name.clone(),
            _ => format!("#{d}"),
        };
        for op in ops {
            self.a.log(&format!(
                "{}{}",
                if drift { "repairing drift: " } else { "" },
                op.render(&name)
            ));
            if let (true, Some(m)) = (drift, &self.a.metrics) {
                m.repaired(op.object());
            }
        }
        apply(&mut self.a, ops, &name)
    }

    /// The agent's status after a round.
    fn status(
        &self,
        via: Via,
        wireguard: Option<crate::WireGuardStatus>,
        underlay_guard: Option<guard::GuardStatus>,
    ) -> Status {
        let (a, n) = (&self.a, &self.n);
        Status {
            node: a.cfg.node.clone(),
            backend: a.cfg.backend,
            pod_cidr: n.record.pod_cidr.to_string(),
            pod_cidr6: n
                .record
                .pod_cidr6
                .map(|c| c.to_string())
                .unwrap_or_default(),
            underlay_dev: a.cfg.underlay_dev.clone(),
            underlay_ip: n.underlay_ip.to_string(),
            underlay_ip6: n.underlay_ip6.map(|u| u.to_string()).unwrap_or_default(),
            tunnel_ip: n.tunnel_ip().to_string(),
            vtep_mac: podnet_netlink::fmt_mac(&vtep_mac(n.underlay_ip)),
            bridge: a.cfg.bridge.clone(),
            vxlan_dev: if matches!(via, Via::Vxlan { .. }) {
                a.cfg.vxlan_dev.clone()
            } else {
                String::new()
            },
            vxlan_port: a.cfg.port,
            datapath: a.cfg.datapath,
            overlay_overhead: match via {
                Via::HostGw { .. } => 0,
                _ => a.backend.overhead(),
            },
            mtu: n.mtu,
            repair: a.cfg.repair,
            datastore: a.ds.describe(),
            peers: self.known.iter().map(peer_status).collect(),
            last_sync: podnet_datastore::now(),
            changes: self.changes,
            pid: std::process::id(),
            datastore_problems: a.problems.clone(),
            wireguard,
            underlay_guard,
            masquerade: Some(crate::masquerade::status_both(
                (a.cfg.masquerade, a.masq[0].as_ref()),
                a.cfg
                    .cluster_cidr6
                    .map(|_| (a.cfg.masquerade6, a.masq[1].as_ref())),
            )),
            service_problems: if self.ipvs {
                vec![IPVS_REFUSED.to_string()]
            } else {
                vec![]
            },
        }
    }

    /// The underlay guard's round: its peers, its filter verified (and put back,
    /// logged and counted when it drifted). Failures are logged; the guard keeps what
    /// it has.
    fn sync_guard(&mut self, peers: &[Peer]) -> Option<guard::GuardStatus> {
        let (a, n) = (&mut self.a, &self.n);
        let g = a.guard.as_mut()?;
        let dev = a.cfg.underlay_dev.clone();
        // Unencapsulated pod packets (host-gw): each peer's pod CIDR bound to its
        // underlay MAC, as the neighbour table knows it (unknown until resolved).
        let mut sources = guard::Sources::default();
        if a.backend.plain_pod_sources() {
            let neigh = neigh::list(&mut a.sock).unwrap_or_default();
            // NUD_FAILED (0x20) entries hold no MAC worth binding to.
            let v4 = |p: &Peer| {
                neigh
                    .iter()
                    .find(|e| {
                        e.index == n.underlay_index && e.ip == p.underlay && e.state & 0x20 == 0
                    })
                    .and_then(|e| e.mac)
            };
            // The IPv6 table only when a dual-stack peer's IPv4 entry names no MAC.
            let neigh6 = match n.record.pod_cidr6 {
                Some(_)
                    if peers
                        .iter()
                        .any(|p| p.underlay6.is_some() && v4(p).is_none()) =>
                {
                    neigh::list6(&mut a.sock).unwrap_or_default()
                }
                _ => vec![],
            };
            let mac_of = |p: &Peer| {
                let v6 = || {
                    neigh6
                        .iter()
                        .find(|e| {
                            e.index == n.underlay_index
                                && Some(e.ip) == p.underlay6
                                && e.state & 0x20 == 0
                        })
                        .and_then(|e| e.mac)
                };
                // One link, one MAC: either family's entry names it.
                v4(p).or_else(v6)
            };
            sources.own = Some(n.record.pod_cidr);
            sources.peers = peers.iter().map(|p| (p.cidr, mac_of(p))).collect();
            sources.own6 = n.record.pod_cidr6;
            sources.peers6 = peers
                .iter()
                .filter_map(|p| Some((p.cidr6?, mac_of(p))))
                .collect();
        }
        match g.sync(&mut a.sock, n.underlay_index, &dev, peers, &sources) {
            Ok(Some(why)) => {
                tracing::warn!(node = %a.cfg.node, "repairing drift: {why}: attached it again");
                if let Some(m) = &a.metrics {
                    m.repaired("underlay-guard");
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(node = %a.cfg.node, "{e}; retrying"),
        }
        let g = a.guard.as_ref()?;
        Some(g.status(&mut a.sock, n.underlay_index, &dev))
    }
}

fn peer_status(p: &Peer) -> PeerStatus {
    PeerStatus {
        name: p.name.clone(),
        pod_cidr: p.cidr.to_string(),
        pod_cidr6: p.cidr6.map(|c| c.to_string()).unwrap_or_default(),
        underlay_ip: p.underlay.to_string(),
        underlay_ip6: p.underlay6.map(|u| u.to_string()).unwrap_or_default(),
        tunnel_ip: p.endpoint.to_string(),
        vtep_mac: podnet_netlink::fmt_mac(&p.vtep_mac),
        wireguard_public_key: p
            .wireguard
            .map(|w| wireguard::to_base64(&w.0))
            .unwrap_or_default(),
        wireguard_port: p.wireguard.map(|w| w.1).unwrap_or(0),
    }
}

/// What exists now, of what the plan manages.
fn current(sock: &mut podnet_netlink::Socket, via: Via) -> Result<Current> {
    let routes = route::list(sock)?
        .into_iter()
        .filter(|r| r.protocol == RTPROT_PODNET)
        .collect();
    let (neighs, fdb) = match via {
        Via::Vxlan { dev } => (
            neigh::list(sock)?
                .into_iter()
                .filter(|n| n.index == dev && n.state & podnet_conventions::NUD_PERMANENT != 0)
                .collect(),
            neigh::fdb_list(sock)?
                .into_iter()
                .filter(|f| f.index == dev && f.dst.is_some())
                .collect(),
        ),
        Via::HostGw { .. } | Via::WireGuard { .. } => (vec![], vec![]),
    };
    // A dual-stack node's IPv6 routes and neighbours (read on every node: an agent
    // restarted IPv4-only removes what it made before).
    let routes6 = route::list6(sock)?
        .into_iter()
        .filter(|r| r.protocol == RTPROT_PODNET)
        .filter_map(|r| {
            Some(plan::Route6 {
                dst: podnet_cni_spec::net::Ipv6Net::new(r.dst, r.prefix)?,
                via: r.gateway,
                dev: r.oif,
                onlink: r.onlink,
            })
        })
        .collect();
    let neighs6 = match via {
        Via::Vxlan { dev } => neigh::list6(sock)?
            .into_iter()
            .filter(|n| n.index == dev && n.state & podnet_conventions::NUD_PERMANENT != 0)
            .map(|n| plan::Neigh6 {
                ip: n.ip,
                mac: n.mac,
                dev,
            })
            .collect(),
        _ => vec![],
    };
    Ok(Current {
        routes,
        neighs,
        fdb,
        routes6,
        neighs6,
    })
}

/// The netlink request that carries out `op`.
fn request(op: &plan::Op) -> Request {
    match op {
        plan::Op::AddRoute {
            dst,
            via,
            dev,
            onlink,
        } => {
            // A plain add: a route with this prefix that podnet did not make is never
            // overwritten (the add fails and is logged instead).
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
        plan::Op::AddRoute6 {
            dst,
            via,
            dev,
            onlink,
        } => route::add6_request(
            dst.network(),
            dst.prefix(),
            *via,
            *dev,
            RTPROT_PODNET,
            *onlink,
        ),
        plan::Op::DelRoute6 {
            dst,
            via,
            dev,
            onlink,
        } => route::del6_request(&route::Route6Info {
            dst: dst.network(),
            prefix: dst.prefix(),
            gateway: *via,
            oif: *dev,
            protocol: RTPROT_PODNET,
            onlink: *onlink,
        }),
        plan::Op::AddNeigh6 { ip, mac, dev } => neigh::add6_request(*dev, *ip, *mac),
        plan::Op::DelNeigh6 { ip, dev } => neigh::del6_request(*dev, *ip),
    }
}

/// Sends `ops` in one batch; returns those that did not take. A delete that finds
/// nothing has nothing left to do and counts as taken.
fn apply(a: &mut Agent, ops: &[plan::Op], name: &dyn Fn(u32) -> String) -> Vec<plan::Op> {
    let reqs: Vec<Request> = ops.iter().map(request).collect();
    let mut failed = Vec::new();
    for (op, r) in ops.iter().zip(a.sock.ack_all(reqs)) {
        match r {
            Ok(()) => {}
            Err(e) if e.is_not_found() && op.is_delete() => {}
            Err(e) => {
                a.warn(&format!("failed: {}: {e}", op.render(name)));
                failed.push(op.clone());
            }
        }
    }
    failed
}
