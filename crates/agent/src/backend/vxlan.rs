//! The VXLAN backend: pod packets between nodes in VXLAN (UDP 8472), in clear.
//!
//! # Kernel objects it owns
//! The VXLAN device (default `podnet.vxlan`: VNI 1, UDP 8472, `nolearning`, local =
//! underlay IP — the IPv6 one with `--underlay-family ipv6`, which makes it an IPv6
//! device whose FDB entries name peers' IPv6 addresses, 70 bytes of overhead, not
//! 50 — MAC `0a:59:<underlay IP>` — derived, so it survives reboots and
//! re-creation, unlike the random MAC behind Flannel's stale-FDB bugs — address
//! `<pod CIDR network>/32`). Per peer, through [`crate::plan`]: a route via the peer's
//! VTEP address, a permanent neighbour entry and an FDB entry.

use super::{overlay_link, Ctx, NodeBackend, NodeInfo};
use crate::plan::Via;
use crate::{vtep_mac, Backend, Config, Result, VXLAN_OVERHEAD};
use podnet_netlink::link::{self, VxlanSpec};

pub struct Vxlan {
    dev: String,
    vni: u32,
    port: u16,
    /// Over an IPv6 underlay: 20 bytes more per packet.
    ipv6: bool,
}

impl Vxlan {
    pub fn new(cfg: &Config) -> Vxlan {
        Vxlan {
            dev: cfg.vxlan_dev.clone(),
            vni: cfg.vni,
            port: cfg.port,
            ipv6: cfg.underlay_family.is_ipv6(),
        }
    }

    /// Whether device `l` is the one this node needs.
    fn fits(&self, l: &link::LinkInfo, n: &NodeInfo) -> bool {
        l.mac == vtep_mac(n.underlay_ip)
            && l.vxlan.as_ref().is_some_and(|v| {
                v.vni == self.vni
                    && v.port == self.port
                    && v.local == Some(n.tunnel_ip())
                    && v.zero_csum6_rx == n.tunnel_ip().is_ipv6()
                    && v.dev == Some(n.underlay_index)
                    && !v.learning
            })
    }
}

impl NodeBackend for Vxlan {
    fn kind(&self) -> Backend {
        Backend::Vxlan
    }

    fn overhead(&self) -> u32 {
        match self.ipv6 {
            false => VXLAN_OVERHEAD,
            true => VXLAN_OVERHEAD + 20,
        }
    }

    fn overlay_ports(&self) -> [u16; 2] {
        [self.port, 0]
    }

    fn remove(&self, ctx: &mut Ctx) -> Result<()> {
        let existing = link::get_by_name(ctx.sock, &self.dev)?;
        if existing.is_some_and(|l| l.kind.as_deref() == Some("vxlan")) {
            ctx.log(&format!(
                "{} backend: removing VXLAN device {}",
                ctx.cfg.backend.as_str(),
                self.dev
            ));
            link::delete_by_name(ctx.sock, &self.dev)?;
        }
        Ok(())
    }

    fn ensure_device(&mut self, ctx: &mut Ctx, n: &NodeInfo) -> Result<Option<u32>> {
        let name = self.dev.clone();
        let existing = link::get_by_name(ctx.sock, &name)?;
        let l = match existing {
            Some(l) if self.fits(&l, n) => l,
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
                    ctx.log(&format!(
                        "VXLAN device {name} does not match the configuration: recreating it"
                    ));
                    link::delete_by_name(ctx.sock, &name)?;
                } else {
                    ctx.log(&format!(
                        "creating VXLAN device {name} (VNI {}, UDP {}, local {})",
                        self.vni,
                        self.port,
                        n.tunnel_ip()
                    ));
                }
                link::create_vxlan(
                    ctx.sock,
                    &VxlanSpec {
                        name: &name,
                        vni: self.vni,
                        local: n.tunnel_ip(),
                        dev: n.underlay_index,
                        port: self.port,
                        mtu: n.mtu,
                        mac: vtep_mac(n.underlay_ip),
                        learning: false,
                    },
                )?;
                link::get_by_name(ctx.sock, &name)?.ok_or_else(|| {
                    podnet_netlink::Error::NotFound {
                        op: "look up",
                        obj: name.clone(),
                        ext: None,
                    }
                })?
            }
        };
        overlay_link(ctx.sock, &l, n.record.pod_cidr, n.mtu).map(Some)
    }

    fn via(&self, dev: Option<u32>, underlay_index: u32) -> Via {
        match dev {
            Some(dev) => Via::Vxlan { dev },
            None => Via::HostGw {
                dev: underlay_index,
            },
        }
    }

    fn device_name(&self) -> Option<&str> {
        Some(&self.dev)
    }

    fn fast_path_overlay(&self) -> Option<String> {
        Some(self.dev.clone())
    }
}
