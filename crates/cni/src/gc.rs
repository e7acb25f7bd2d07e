//! GC: remove what belongs to attachments the runtime no longer knows
//! (`cni.dev/valid-attachments`, or the older `cni.dev/attachments`).
//!
//! Two sources of truth are swept, so that a crash at any point of ADD or DEL is
//! recovered: the IPAM records of this network (each names its attachment), and the
//! host veths whose alias names this network (podnet records the owner there). Links
//! and records of other networks are never touched.

use crate::del::delete_link_detached;
use crate::errors;
use crate::settings::{host_veth_name, Ipam, Settings};
use crate::{antispoof, delegate, Invocation};
use podnet_cni_spec::{code, CniError};
use podnet_netlink::{link, Socket};
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
    let keep: HashSet<(&str, &str)> = keep
        .iter()
        .map(|a| (a.container_id.as_str(), a.ifname.as_str()))
        .collect();

    // 1. Host veths of this network whose attachment is gone (their filters go too).
    let mut host =
        Socket::route().map_err(|e| errors::netlink(e, "podnet-cni must run as root"))?;
    let links =
        link::list(&mut host).map_err(|e| errors::netlink(e, "list links with `ip link`"))?;
    let mut live = HashSet::new();
    for l in &links {
        let owner = l.alias.as_deref().and_then(antispoof::parse_owner_alias);
        let stale = owner.is_some_and(|(net, ifname, cid)| {
            net == s.network
                && !keep.contains(&(cid, ifname))
                && l.name == host_veth_name(cid, ifname)
        });
        if stale {
            delete_link_detached(&l.name, &s.data_dir)?;
        } else {
            live.insert(l.index);
        }
    }

    // 2. Address records.
    match &s.ipam {
        Some(Ipam::Delegate { plugin }) => {
            if delegate::supports(&inv.env, plugin, "1.1.0") {
                delegate::exec(&inv.env, plugin, "GC", &inv.stdin)?;
            }
        }
        _ => {
            let store = s.store()?;
            let freed = store
                .retain(|o| keep.contains(&(o.container_id.as_str(), o.ifname.as_str())))
                .map_err(errors::ipam)?;
            // A record without an aliased link: a crash between link creation and
            // alias; its link, if any, carries the derived name.
            for (_, o) in freed {
                delete_link_detached(&host_veth_name(&o.container_id, &o.ifname), &s.data_dir)?;
            }
        }
    }

    // 3. Datapath entries of links that no longer exist (a crash between a link's
    //    deletion and its entry's).
    antispoof::sweep(&s.data_dir, |i| live.contains(&i)).map_err(|e| {
        CniError::new(
            code::ANTISPOOF,
            e.to_string(),
            "list the entries with `bpftool map dump name podnet_pods`",
        )
    })?;
    Ok(())
}
