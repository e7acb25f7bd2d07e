//! GC: remove what belongs to attachments the runtime no longer knows
//! (`cni.dev/valid-attachments`, or the older `cni.dev/attachments`).
//!
//! Three things are swept, so that a crash at any point of ADD or DEL is recovered:
//! the host veths whose alias names this network (podnet records the owner there),
//! the IPAM records of this network (each names its attachment), and datapath entries
//! whose link no longer exists. Links and records of other networks are never touched.
//! GC goes on after a failure and reports every failure at the end.
//!
//! As in DEL, an address is freed only after its link is gone and the node has
//! forgotten its connections ([`forget_connections`]); an address whose connections
//! could not be forgotten stays allocated (and is reported), so that no new pod
//! inherits them.

use crate::del::{delete_link_detached, forget_connections};
use crate::errors;
use crate::settings::{host_veth_name, Ipam, Settings};
use crate::{antispoof, delegate, Invocation};
use podnet_cni_spec::{code, CniError};
use podnet_ipam::Owner;
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

    // 1. Host veths of this network whose attachment is gone (their filters go too),
    //    and the addresses their MACs name.
    let mut linked = Vec::new();
    for l in link::list(&mut host).map_err(nl)? {
        let owner = l.alias.as_deref().and_then(antispoof::parse_owner_alias);
        let stale = owner.is_some_and(|(net, ifname, cid)| {
            net == s.network
                && !keep.contains(&(cid, ifname))
                && l.name == host_veth_name(cid, ifname)
        });
        if stale {
            match delete_link_detached(&l.name, &s.data_dir) {
                Ok(ip) => linked.extend(ip),
                Err(e) => failures.push(e),
            }
        }
    }

    // 2. Address records.
    match &s.ipam {
        Some(Ipam::Delegate { plugin }) => {
            // The delegate frees what it holds for attachments not kept: only after
            // the node forgot their connections (the addresses of the veths above).
            let mut forgotten = true;
            for ip in linked {
                if let Err(e) = forget_connections(ip, &inv.raw) {
                    failures.push(e);
                    forgotten = false;
                }
            }
            if forgotten && delegate::supports(&inv.env, plugin, "1.1.0") {
                if let Err(e) = delegate::exec(&inv.env, plugin, "GC", &inv.stdin) {
                    failures.push(e);
                }
            }
        }
        _ => match s.store() {
            Ok(st) => {
                let kept = |o: &Owner| keep.contains(&(o.container_id.as_str(), o.ifname.as_str()));
                // Owners whose address must stay allocated: their link or their
                // connections are still there.
                let mut held: HashSet<Owner> = HashSet::new();
                let mut forgotten = HashSet::new();
                match st.list() {
                    Ok(all) => {
                        for (ip, o) in all.into_iter().filter(|(_, o)| !kept(o)) {
                            // A record whose link has no alias: a crash between creating
                            // the link and attaching it. The link, if any, carries the
                            // derived name.
                            let gone = delete_link_detached(
                                &host_veth_name(&o.container_id, &o.ifname),
                                &s.data_dir,
                            )
                            .and_then(|_| forget_connections(ip, &inv.raw));
                            match gone {
                                Ok(()) => {
                                    forgotten.insert(ip);
                                }
                                Err(e) => {
                                    failures.push(e);
                                    held.insert(o);
                                }
                            }
                        }
                    }
                    Err(e) => failures.push(errors::ipam(e)),
                }
                match st.retain(|o| kept(o) || held.contains(o)) {
                    // Records that appeared since the list (an ADD that failed and was
                    // not undone in between): their connections go now.
                    Ok(freed) => {
                        for (ip, o) in freed.into_iter().filter(|(ip, _)| !forgotten.contains(ip)) {
                            if let Err(e) = delete_link_detached(
                                &host_veth_name(&o.container_id, &o.ifname),
                                &s.data_dir,
                            )
                            .and_then(|_| forget_connections(ip, &inv.raw))
                            {
                                failures.push(e);
                            }
                        }
                    }
                    Err(e) => failures.push(errors::ipam(e)),
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
