//! The WireGuard backend: pod packets between nodes encrypted by a WireGuard device
//! (userspace, in a device process that outlives podnetd: [`crate::wireguard`]). Only
//! the node's public key is published; the private key stays in its file (mode 0600).
//!
//! # Kernel objects it owns
//! The WireGuard device (default `podnet.wg`) and its device process; per peer, one
//! WireGuard peer (its key, endpoint and pod CIDR) and, through [`crate::plan`], one
//! route.

use super::{overlay_link, Ctx, NodeBackend, NodeInfo};
use crate::plan::{Peer, Via};
use crate::wireguard::{self as wg, Key, Paths};
use crate::{Backend, Config, Error, Result, WireGuardPeerStatus, WireGuardStatus};
use podnet_datastore::WireGuardPeer;
use podnet_netlink::link;

pub struct WireGuard {
    paths: Paths,
    /// The node's private key, loaded (or made) before the node registers.
    key: Option<Key>,
    /// Whether the kernel has WireGuard (podnet runs the userspace device either way).
    kernel_wg: bool,
    /// Over an IPv6 underlay (`--underlay-family ipv6`): peers' endpoints are their
    /// underlay IPv6 addresses.
    ipv6: bool,
}

impl WireGuard {
    pub fn new(cfg: &Config) -> WireGuard {
        WireGuard {
            paths: cfg.wireguard.clone(),
            key: None,
            kernel_wg: false,
            ipv6: cfg.underlay_family.is_ipv6(),
        }
    }

    fn uapi(&self) -> wg::Uapi {
        wg::Uapi {
            socket: self.paths.socket.clone(),
        }
    }

    fn fail(&self, why: String) -> Error {
        Error::WireGuard {
            dev: self.paths.dev.clone(),
            why,
        }
    }

    fn status(&self) -> WireGuardStatus {
        let p = &self.paths;
        WireGuardStatus {
            implementation: wg::IMPLEMENTATION.into(),
            kernel_has_wireguard: self.kernel_wg,
            device: p.dev.clone(),
            port: p.port,
            public_key: wg::to_base64(&wg::public_key(&self.key.unwrap_or_default())),
            pid: wg::device_pid(&p.pid_file).unwrap_or(0),
            socket: p.socket.display().to_string(),
            ..Default::default()
        }
    }

    /// Gives the device the peers of `peers` (and only them); the device as it is then.
    fn set_peers(
        &self,
        ctx: &mut Ctx,
        peers: &[Peer],
        mut have: wg::DeviceConfig,
        st: &mut WireGuardStatus,
    ) -> wg::DeviceConfig {
        let dev = &self.paths.dev;
        let want: Vec<wg::WantPeer> = peers
            .iter()
            .filter_map(|q| {
                let (k, port) = q.wireguard?;
                Some(wg::WantPeer {
                    name: q.name.clone(),
                    public_key: k,
                    endpoint: std::net::SocketAddr::new(q.endpoint, port),
                    cidr: q.cidr,
                    cidr6: q.cidr6,
                })
            })
            .collect();
        let changes = wg::peer_changes(&want, &have.peers);
        if changes.is_empty() {
            return have;
        }
        for c in &changes {
            ctx.log(&match c {
                wg::PeerChange::Remove(k) => format!(
                    "WireGuard device {dev}: removing departed peer {}",
                    wg::to_base64(k)
                ),
                wg::PeerChange::Set(w) => format!(
                    "WireGuard device {dev}: configuring peer {} ({})",
                    w.name,
                    wg::to_base64(&w.public_key)
                ),
            });
        }
        let body: String = changes.iter().map(wg::PeerChange::render).collect();
        let uapi = self.uapi();
        match uapi.set(&body).and_then(|_| uapi.get()) {
            Ok(h) => have = h,
            Err(e) => {
                ctx.warn(&format!("WireGuard device {dev}: {e}"));
                st.error = Some(e.to_string());
            }
        }
        have
    }
}

impl NodeBackend for WireGuard {
    fn kind(&self) -> Backend {
        Backend::Wireguard
    }

    fn overhead(&self) -> u32 {
        // An IPv6 outer header is 20 bytes longer than an IPv4 one.
        wg::WG_OVERHEAD + if self.ipv6 { 20 } else { 0 }
    }

    fn overlay_ports(&self) -> [u16; 2] {
        [0, self.paths.port]
    }

    fn prepare(&mut self, ctx: &mut Ctx) -> Result<()> {
        let path = self.paths.key_file.clone();
        let (k, made) = wg::load_or_create_key(&path)?;
        if made {
            ctx.log(&format!(
                "made the node's WireGuard key {} (mode 0600; only its public key is published)",
                path.display()
            ));
        }
        self.key = Some(k);
        self.kernel_wg = wg::kernel_has_wireguard(ctx.sock);
        ctx.log(&format!(
            "WireGuard: {}; {}",
            wg::IMPLEMENTATION,
            if self.kernel_wg {
                "this kernel has WireGuard too, which podnet does not use yet"
            } else {
                "this kernel has no WireGuard"
            }
        ));
        Ok(())
    }

    fn registration(&self) -> Option<WireGuardPeer> {
        self.key.map(|k| WireGuardPeer {
            public_key: wg::to_base64(&wg::public_key(&k)),
            port: self.paths.port,
        })
    }

    fn remove(&self, ctx: &mut Ctx) -> Result<()> {
        if wg::device_pid(&self.paths.pid_file).is_some() {
            ctx.log(&format!(
                "{} backend: stopping the WireGuard device {}",
                ctx.cfg.backend.as_str(),
                self.paths.dev
            ));
            wg::stop_device(&self.paths);
        }
        Ok(())
    }

    /// The device process running, holding the node's key and port; the link up at
    /// the pod MTU with the pod CIDR's first address.
    fn ensure_device(&mut self, ctx: &mut Ctx, n: &NodeInfo) -> Result<Option<u32>> {
        let p = self.paths.clone();
        let key = self
            .key
            .expect("the key is loaded before the node is set up");
        let node = ctx.cfg.node.clone();
        wg::ensure_device(&p, &node, &|m| tracing::info!(node = %node, "{m}"))?;
        let uapi = self.uapi();
        let have = uapi.get().map_err(|e| self.fail(e.to_string()))?;
        if have.private_key != Some(key) || have.listen_port != p.port {
            if have.private_key.is_some() {
                ctx.log(&format!(
                    "WireGuard device {}: setting the node's key and port {}",
                    p.dev, p.port
                ));
            }
            uapi.set(&format!(
                "private_key={}\nlisten_port={}\n",
                wg::hex(&key),
                p.port
            ))
            .map_err(|e| self.fail(e.to_string()))?;
        }
        let l = link::get_by_name(ctx.sock, &p.dev)?.ok_or_else(|| {
            self.fail(format!(
                "its device process answers on {} but there is no link {} in this namespace",
                p.socket.display(),
                p.dev
            ))
        })?;
        overlay_link(ctx.sock, &l, n.record.pod_cidr, n.mtu).map(Some)
    }

    fn via(&self, dev: Option<u32>, underlay_index: u32) -> Via {
        match dev {
            Some(dev) => Via::WireGuard { dev },
            None => Via::HostGw {
                dev: underlay_index,
            },
        }
    }

    fn device_name(&self) -> Option<&str> {
        Some(&self.paths.dev)
    }

    fn sync_peers(
        &mut self,
        ctx: &mut Ctx,
        peers: &[Peer],
        apply: bool,
    ) -> Option<WireGuardStatus> {
        let mut st = self.status();
        let mut have = match self.uapi().get() {
            Ok(h) => h,
            Err(e) => {
                st.error = Some(e.to_string());
                return Some(st);
            }
        };
        if apply {
            have = self.set_peers(ctx, peers, have, &mut st);
        }
        st.device_public_key = have
            .private_key
            .map(|k| wg::to_base64(&wg::public_key(&k)))
            .unwrap_or_default();
        st.peers = have
            .peers
            .iter()
            .map(|q| WireGuardPeerStatus {
                public_key: wg::to_base64(&q.public_key),
                endpoint: q.endpoint.map(|e| e.to_string()).unwrap_or_default(),
                allowed_ips: q
                    .allowed_ips
                    .iter()
                    .map(|n| n.to_string())
                    .chain(q.allowed_ips6.iter().map(|n| n.to_string()))
                    .collect(),
                last_handshake: q.last_handshake,
                rx_bytes: q.rx_bytes,
                tx_bytes: q.tx_bytes,
            })
            .collect();
        Some(st)
    }

    fn public_key(&self) -> Option<Key> {
        self.key.map(|k| wg::public_key(&k))
    }

    /// A new key, written to the key file and given to the device.
    fn rotate_key(&mut self, _ctx: &mut Ctx) -> Result<(String, String)> {
        let before = wg::to_base64(&wg::public_key(&self.key.unwrap_or_default()));
        let k = wg::generate_key()?;
        wg::write_key(&self.paths.key_file, &k)?;
        self.key = Some(k);
        self.uapi()
            .set(&format!("private_key={}\n", wg::hex(&k)))
            .map_err(|e| {
                self.fail(format!(
                    "the new key is in {} but the device refused it: {e}; restart podnetd",
                    self.paths.key_file.display()
                ))
            })?;
        Ok((before, wg::to_base64(&wg::public_key(&k))))
    }
}
