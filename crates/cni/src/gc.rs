//! GC: remove what belongs to attachments the runtime no longer knows
//! (`cni.dev/valid-attachments`, or the older `cni.dev/attachments`).
//!
//! Three things are swept, so that a crash at any point of ADD or DEL is recovered:
//! the host veths whose alias names this network (podnet records the owner there),
//! the IPAM records of this network (each names its attachment), and datapath entries
//! whose link no longer exists. Links and records of other networks are never touched.
//! GC goes on after a failure and reports every failure at the end.

use crate::del::delete_link_detached;
use crate::errors;
use crate::settings::{host_veth_name, Ipam, Settings};
use crate::{antispoof, delegate, Invocation};
use podnet_cni_spec::{code, CniError};
use podnet_netlink::{link, Socket};
use std::collections::HashSet;

pub fn run(inv: &Invocation) -> Result<(), CniError> {
    let s = Settings::for_cleanup(&inv.conf, &inv.raw);
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
    let mut failures: Vec<CniError> = Vec::new();
    let nl = |e| errors::netlink(e, "list links with `ip -d link show`");
    let mut host = Socket::route().map_err(nl)?;

    // 1. Host veths of this network whose attachment is gone (their filters go too).
    for l in link::list(&mut host).map_err(nl)? {
        let owner = l.alias.as_deref().and_then(antispoof::parse_owner_alias);
        let stale = owner.is_some_and(|(net, ifname, cid)| {
            net == s.network
                && !keep.contains(&(cid, ifname))
                && l.name == host_veth_name(cid, ifname)
        });
        if stale {
            if let Err(e) = delete_link_detached(&l.name, &s.data_dir) {
                failures.push(e);
            }
        }
    }

    // 2. Address records.
    match &s.ipam {
        Some(Ipam::Delegate { plugin }) => {
            if delegate::supports(&inv.env, plugin, "1.1.0") {
                if let Err(e) = delegate::exec(&inv.env, plugin, "GC", &inv.stdin) {
                    failures.push(e);
                }
            }
        }
        _ => match s.store().and_then(|st| {
            st.retain(|o| keep.contains(&(o.container_id.as_str(), o.ifname.as_str())))
                .map_err(errors::ipam)
        }) {
            // A record whose link has no alias: a crash between creating the link and
            // attaching it. The link, if any, carries the derived name.
            Ok(freed) => {
                for (_, o) in freed {
                    if let Err(e) = delete_link_detached(
                        &host_veth_name(&o.container_id, &o.ifname),
                        &s.data_dir,
                    ) {
                        failures.push(e);
                    }
                }
            }
            Err(e) => failures.push(e),
        },
    }

    // 3. Datapath entries of links that no longer exist (a crash between a link's
    //    deletion and its entry's). Each link is looked up when its entry is seen, so
    //    an ADD in flight keeps its entry.
    let swept = antispoof::sweep(&s.data_dir, |index| {
        !matches!(link::get_by_index(&mut host, index), Ok(None))
    });
    if let Err(e) = swept {
        failures.push(CniError::new(
            code::ANTISPOOF,
            e.to_string(),
            "list the entries with `bpftool map dump name podnet_pods`",
        ));
    }

    match failures.len() {
        0 => Ok(()),
        1 => Err(failures.remove(0)),
        n => {
            let first = failures.remove(0);
            let rest: Vec<String> = failures.iter().map(|e| e.to_string()).collect();
            Err(CniError::new(
                first.code,
                format!("GC finished with {n} failures; first: {}", first.msg),
                format!("{}; then: {}", first.details, rest.join("; ")),
            ))
        }
    }
}
