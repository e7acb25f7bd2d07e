//! The node itself: its underlay link, its registration (lease) in the datastore, and
//! the node-level objects every backend shares — the bridge, IPv4 forwarding and the
//! node file podnet-cni reads.
//!
//! # Kernel objects it owns
//! The bridge (default `podnet0`, gateway = first address of the node's pod CIDR, MAC
//! `0a:58:<gateway>`, MTU = pod MTU) and `net.ipv4.ip_forward = 1`; on a dual-stack
//! node also the bridge's IPv6 gateway (the first address of its IPv6 pod CIDR, as
//! podnet-cni gives it) and `net.ipv6.conf.all.forwarding = 1`; the backend's device
//! through [`crate::backend`].

use crate::backend::{self, Ctx, NodeInfo};
use crate::{vtep_mac, Agent, Error, Result};
use podnet_datastore::{NodeRecord, Registration};
use podnet_netlink::{addr, link};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

impl Agent {
    /// The underlay link: its index, IPv4 address, (on a dual-stack node) its first
    /// global IPv6 address, and MTU. host-gw routes pods' IPv6 to the peers' underlay
    /// IPv6 addresses, so a dual-stack host-gw node without one is refused.
    pub(crate) fn underlay(&mut self) -> Result<(u32, Ipv4Addr, Option<Ipv6Addr>, u32)> {
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
        let ip6 = match (self.cfg.cluster_cidr6, self.cfg.underlay_family.is_ipv6()) {
            (None, false) => None,
            _ => addr::list6(&mut self.sock, Some(l.index))?
                .into_iter()
                .map(|(_, a, _)| a)
                .find(|a| podnet_conventions::net::is_global_unicast6(*a)),
        };
        if ip6.is_none() && self.cfg.underlay_family.is_ipv6() {
            return Err(Error::Underlay {
                dev,
                why: "it has no global IPv6 address, and --underlay-family ipv6 ends the overlay tunnel there: give the link one (ip -6 addr add ADDR/PREFIX dev DEV), or run --underlay-family ipv4".into(),
            });
        }
        if ip6.is_none()
            && self.cfg.cluster_cidr6.is_some()
            && self.cfg.backend == crate::Backend::HostGw
        {
            return Err(Error::Underlay {
                dev,
                why: "it has no global IPv6 address: a dual-stack cluster on host-gw routes each node's IPv6 pods to its underlay IPv6 address; give the link one (ip -6 addr add ADDR/PREFIX dev DEV), or run --backend vxlan".into(),
            });
        }
        Ok((l.index, ip, ip6, l.mtu))
    }

    /// Registers (or renews) the node's lease; its record.
    pub(crate) fn register(&mut self, ip: Ipv4Addr, ip6: Option<Ipv6Addr>) -> Result<NodeRecord> {
        Ok(self.ds.register(&Registration {
            name: self.cfg.node.clone(),
            underlay_ip: ip,
            underlay_ip6: ip6,
            underlay_family: self.cfg.underlay_family,
            vtep_mac: podnet_netlink::fmt_mac(&vtep_mac(ip)),
            backend: self.cfg.backend.to_string(),
            wireguard: self.backend.registration(),
            cluster_cidr: self.cfg.cluster_cidr,
            node_prefix: self.cfg.node_prefix,
            cluster_cidr6: self.cfg.cluster_cidr6,
            ttl: self.cfg.lease_ttl,
        })?)
    }

    /// [`Agent::register`], waiting while the datastore cannot serve the node yet (API
    /// server down, no pod CIDR allocated to the Node yet); a refusal is returned.
    pub(crate) fn register_waiting(
        &mut self,
        ip: Ipv4Addr,
        ip6: Option<Ipv6Addr>,
    ) -> Result<NodeRecord> {
        let node = self.cfg.node.clone();
        crate::retry::with_backoff(
            || self.register(ip, ip6),
            |e| matches!(e, Error::Datastore(d) if d.is_transient()),
            |e, wait| {
                tracing::warn!(
                    node = %node,
                    "cannot register yet: {e}; retrying in {:.1} s",
                    wait.as_secs_f64()
                )
            },
            Duration::from_secs(5),
        )
    }

    /// Node-level objects: bridge, the backend's device (what another backend left
    /// goes first), forwarding. The device's index, if the backend has one.
    pub(crate) fn ensure_node(&mut self, n: &NodeInfo) -> Result<Option<u32>> {
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
        let mut ctx = Ctx {
            cfg: &self.cfg,
            sock: &mut self.sock,
        };
        backend::remove_others(&mut ctx)?;
        let dev = self.backend.ensure_device(&mut ctx, n)?;
        let mut forwarding = vec![("/proc/sys/net/ipv4/ip_forward", "IPv4")];
        if let Some(c6) = n.record.pod_cidr6 {
            let gw6 = c6.nth(1).expect("an IPv6 node CIDR has a first address");
            let br = link::get_by_name(&mut self.sock, &self.cfg.bridge)?.ok_or_else(|| {
                Error::Underlay {
                    dev: self.cfg.bridge.clone(),
                    why: "the bridge vanished right after it was made".into(),
                }
            })?;
            let has = addr::list6(&mut self.sock, Some(br.index))?
                .iter()
                .any(|(_, a, p)| *a == gw6 && *p == c6.prefix());
            if !has {
                for r in self
                    .sock
                    .ack_all(vec![addr::add6_request(br.index, gw6, c6.prefix())])
                {
                    match r {
                        Err(e) if !e.is_exists() => return Err(e.into()),
                        _ => {}
                    }
                }
            }
            forwarding.push(("/proc/sys/net/ipv6/conf/all/forwarding", "IPv6"));
        }
        for (fwd, family) in forwarding {
            if std::fs::read_to_string(fwd)
                .map(|v| v.trim() != "1")
                .unwrap_or(true)
            {
                std::fs::write(fwd, "1").map_err(|source| Error::File {
                    what: "enable forwarding in",
                    path: fwd.into(),
                    source,
                })?;
                self.log(&format!("{family} forwarding turned on"));
            }
        }
        self.bridged_netfilter();
        Ok(dev)
    }

    /// Bridged IPv4 through netfilter (`net.bridge.bridge-nf-call-iptables`), on every
    /// datapath: kube-proxy translates a pod's packet to a Service in prerouting, and
    /// when the backend is a pod of the same node the reply crosses only the bridge —
    /// without this switch it would skip conntrack's reverse translation and reach the
    /// client from the backend's address. The nftables policy datapath needs it too,
    /// and refuses to start without it; here its absence is a warning.
    /// Once on, finding it off again is drift: repaired, logged and counted.
    fn bridged_netfilter(&mut self) {
        let p = "/proc/sys/net/bridge/bridge-nf-call-iptables";
        match std::fs::read_to_string(p).map(|v| v.trim() == "1") {
            Ok(true) => self.bridge_nf_on = true,
            Ok(false) => match std::fs::write(p, "1") {
                Ok(()) if self.bridge_nf_on => {
                    self.warn(&format!("repairing drift: {p} was 0 (same-node Service replies and the nftables datapath skip netfilter): set to 1"));
                    if let Some(m) = &self.metrics {
                        m.repaired("bridge-nf-call");
                    }
                }
                Ok(()) => {
                    self.bridge_nf_on = true;
                    self.log(&format!("{p} turned on: same-node Service replies pass conntrack"))
                }
                Err(e) => self.warn(&format!("cannot turn on {p} ({e}): a pod reaching a Service whose backend is on the same node gets replies from the wrong address")),
            },
            Err(e) => self.warn(&format!("cannot read {p} ({e}): Services with a backend on the same node need the br_netfilter module: run `modprobe br_netfilter` on the host")),
        }
    }

    /// The node file podnet-cni reads: written whole, then renamed into place.
    pub(crate) fn write_node_file(
        &self,
        n: &NodeInfo,
        policy_programs: Option<podnet_conventions::PolicyPrograms>,
    ) -> Result<()> {
        let body = podnet_conventions::NodeFile {
            node: self.cfg.node.clone(),
            pod_cidr: Some(n.record.pod_cidr.to_string()),
            // A dual-stack node's both pod CIDRs: podnet-cni gives pods one address
            // of each.
            pod_cidrs: n
                .record
                .pod_cidr6
                .map(|c6| vec![n.record.pod_cidr.to_string(), c6.to_string()])
                .unwrap_or_default(),
            cluster_cidr: Some(self.cfg.cluster_cidr.to_string()),
            cluster_cidrs: self
                .cfg
                .cluster_cidr6
                .map(|(c6, _)| vec![self.cfg.cluster_cidr.to_string(), c6.to_string()])
                .unwrap_or_default(),
            overlay_ports: self
                .backend
                .overlay_ports()
                .into_iter()
                .filter(|p| *p != 0)
                .collect(),
            mtu: Some(n.mtu),
            bridge: Some(self.cfg.bridge.clone()),
            datapath: Some(self.cfg.datapath),
            policy_programs,
            bpf_dir: crate::policy::on_bpffs(&self.cfg.bpf_dir).then(|| self.cfg.bpf_dir.clone()),
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
}
