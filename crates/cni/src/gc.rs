//! GC: remove what belongs to attachments the runtime no longer knows
//! (`cni.dev/valid-attachments`, or the older `cni.dev/attachments`).
//!
//! Two sources of truth are swept, so that a crash at any point of ADD or DEL is
//! recovered: the IPAM records of this network (each names its attachment), and the
//! anti-spoofing chains whose comment names this network (each is named after its
//! host veth). Objects of other networks are never touched.

use crate::add::remove_pod_objects;
use crate::errors;
use crate::settings::{host_veth_name, Ipam, Settings};
use crate::{antispoof, delegate, Invocation};
use podnet_cni_spec::{code, CniError};
use podnet_ipam::Store;
use podnet_netlink::nft::{self, FAMILY_NETDEV};
use podnet_netlink::Socket;
use std::collections::HashSet;

pub fn run(inv: &Invocation) -> Result<(), CniError> {
    let s = Settings::resolve(&inv.conf, &inv.raw, false)?;
    let keep = inv.conf.gc_keep().ok_or_else(|| {
        CniError::new(
            code::INVALID_CONFIG,
            "GC needs cni.dev/valid-attachments",
            "the runtime must list the attachments to keep; podnet will not guess",
        )
    })?;
    let keep_ids: HashSet<(&str, &str)> = keep
        .iter()
        .map(|a| (a.container_id.as_str(), a.ifname.as_str()))
        .collect();
    let keep_names: HashSet<String> = keep
        .iter()
        .map(|a| host_veth_name(&a.container_id, &a.ifname))
        .collect();
    let mut host =
        Socket::route().map_err(|e| errors::netlink(e, "podnet-cni must run as root"))?;

    // 1. IPAM records.
    match &s.ipam {
        Some(Ipam::Delegate { plugin }) => {
            if delegate::supports(&inv.env, plugin, "1.1.0") {
                delegate::exec(&inv.env, plugin, "GC", &inv.stdin)?;
            }
        }
        _ => {
            let store = Store::open(&s.data_dir, &s.network).map_err(errors::ipam)?;
            let freed = store
                .retain(|o| keep_ids.contains(&(o.container_id.as_str(), o.ifname.as_str())))
                .map_err(errors::ipam)?;
            for (_, o) in freed {
                remove_pod_objects(&mut host, &host_veth_name(&o.container_id, &o.ifname))
                    .map_err(|e| e.to_cni())?;
            }
        }
    }

    // 2. Chains of this network with no valid attachment.
    let mut nf = Socket::netfilter().map_err(|e| errors::nft(e, ""))?;
    let tag = format!("podnet net={} ", s.network);
    let chains = nft::list_chains(&mut nf, FAMILY_NETDEV, antispoof::TABLE)
        .map_err(|e| errors::nft(e, "list them with `nft list table netdev podnet`"))?;
    for c in chains {
        let ours = c.comment.as_deref().is_some_and(|t| t.starts_with(&tag));
        if ours && !keep_names.contains(&c.name) {
            remove_pod_objects(&mut host, &c.name).map_err(|e| e.to_cni())?;
        }
    }
    Ok(())
}
