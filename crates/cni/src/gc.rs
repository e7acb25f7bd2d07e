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
use std::net::{IpAddr, Ipv4Addr};

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
    let mut gc = Gc {
        inv,
        s: &s,
        keep: &keep,
        failures: Vec::new(),
    };
    let mut host = Socket::route().map_err(nl)?;

    // 1. Host veths of this network whose attachment is gone (their filters go too),
    //    and the addresses their MACs name.
    let linked = gc.stale_links(&mut host)?;

    // 2. Address records.
    match &s.ipam {
        Some(Ipam::Delegate { plugin }) => gc.delegated_records(plugin, linked),
        _ => gc.builtin_records(),
    }

    // 3. Datapath entries of links that no longer exist (a crash between a link's
    //    deletion and its entry's). Each link is looked up when its entry is seen, so
    //    an ADD in flight keeps its entry.
    gc.datapath_entries(&mut host);

    gc.outcome()
}

/// A netlink failure while listing the node's links, with where to look by hand.
fn nl(e: podnet_netlink::Error) -> CniError {
    errors::netlink(e, "list links with `ip -d link show`")
}

/// One GC invocation: what it works with, and every failure so far (GC goes on after
/// a failure and reports them all at the end).
struct Gc<'a> {
    inv: &'a Invocation,
    s: &'a Settings,
    /// The attachments the runtime keeps, as (container id, ifname).
    keep: &'a HashSet<(&'a str, &'a str)>,
    failures: Vec<CniError>,
}

impl Gc<'_> {
    /// Deletes the host veths of this network whose attachment is not kept, and
    /// returns the addresses their MACs named.
    fn stale_links(&mut self, host: &mut Socket) -> Result<Vec<Ipv4Addr>, CniError> {
        let mut linked = Vec::new();
        for l in link::list(host).map_err(nl)? {
            let owner = l.alias.as_deref().and_then(antispoof::parse_owner_alias);
            let stale = owner.is_some_and(|(net, ifname, cid)| {
                net == self.s.network
                    && !self.keep.contains(&(cid, ifname))
                    && l.name == host_veth_name(cid, ifname)
            });
            if stale {
                match delete_link_detached(&l.name, &self.s.data_dir) {
                    Ok(ip) => linked.extend(ip),
                    Err(e) => self.failures.push(e),
                }
            }
        }
        Ok(linked)
    }

    /// The delegate frees what it holds for attachments not kept: only after the node
    /// forgot their connections (the addresses of the veths deleted before).
    fn delegated_records(&mut self, plugin: &str, linked: Vec<Ipv4Addr>) {
        let inv = self.inv;
        let mut forgotten = true;
        for ip in linked {
            if let Err(e) = forget_connections(ip.into(), &inv.raw) {
                self.failures.push(e);
                forgotten = false;
            }
        }
        if forgotten && delegate::supports(&inv.env, plugin, "1.1.0") {
            if let Err(e) = delegate::exec(&inv.env, plugin, "GC", &inv.stdin) {
                self.failures.push(e);
            }
        }
    }

    /// Frees the built-in IPAM records of attachments not kept, each once its link is
    /// gone and the node forgot its connections.
    fn builtin_records(&mut self) {
        let st = match self.s.store() {
            Ok(st) => st,
            Err(e) => {
                self.failures.push(e);
                return;
            }
        };
        let keep = self.keep;
        let kept = |o: &Owner| keep.contains(&(o.container_id.as_str(), o.ifname.as_str()));
        // Owners whose address must stay allocated: their link or their
        // connections are still there.
        let mut held: HashSet<Owner> = HashSet::new();
        let mut forgotten = HashSet::new();
        match st.list_all() {
            Ok(all) => {
                for (ip, o) in all.into_iter().filter(|(_, o)| !kept(o)) {
                    // A record whose link has no alias: a crash between creating
                    // the link and attaching it. The link, if any, carries the
                    // derived name.
                    match self.unlink_and_forget(ip, &o) {
                        Ok(()) => {
                            forgotten.insert(ip);
                        }
                        Err(e) => {
                            self.failures.push(e);
                            held.insert(o);
                        }
                    }
                }
            }
            Err(e) => self.failures.push(errors::ipam(e)),
        }
        match st.retain(|o| kept(o) || held.contains(o)) {
            // Records that appeared since the list (an ADD that failed and was
            // not undone in between): their connections go now.
            Ok(freed) => {
                for (ip, o) in freed.into_iter().filter(|(ip, _)| !forgotten.contains(ip)) {
                    if let Err(e) = self.unlink_and_forget(ip, &o) {
                        self.failures.push(e);
                    }
                }
            }
            Err(e) => self.failures.push(errors::ipam(e)),
        }
    }

    /// Deletes the link an owner's name derives to, if any, then forgets the
    /// connections of its address (either family).
    fn unlink_and_forget(&self, ip: IpAddr, o: &Owner) -> Result<(), CniError> {
        delete_link_detached(
            &host_veth_name(&o.container_id, &o.ifname),
            &self.s.data_dir,
        )?;
        forget_connections(ip, &self.inv.raw)
    }

    /// Removes the datapath entries whose link no longer exists.
    fn datapath_entries(&mut self, host: &mut Socket) {
        let swept = antispoof::sweep(&self.s.data_dir, |index| {
            !matches!(link::get_by_index(host, index), Ok(None))
        });
        if let Err(e) = swept {
            self.failures.push(CniError::new(
                code::ANTISPOOF,
                e.to_string(),
                "list the entries with `bpftool map dump name podnet_pods`",
            ));
        }
    }

    /// Ok when nothing failed; otherwise the first failure, with the others in its
    /// details.
    fn outcome(mut self) -> Result<(), CniError> {
        match self.failures.len() {
            0 => Ok(()),
            1 => Err(self.failures.remove(0)),
            n => {
                let first = self.failures.remove(0);
                let rest: Vec<String> = self.failures.iter().map(|e| e.to_string()).collect();
                Err(CniError::new(
                    first.code,
                    format!("GC finished with {n} failures; first: {}", first.msg),
                    format!("{}; then: {}", first.details, rest.join("; ")),
                ))
            }
        }
    }
}
