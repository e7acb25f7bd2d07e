//! The tc filters podnet keeps on every pod's host veth — anti-spoofing (podnet-cni's)
//! and the datapath's — read from the kernel, and put back when one drifted away: a
//! filter seen once and gone later is drift (the pod was open, or could forge its
//! source, in between); one never seen is podnet-cni's to attach (the pod is still
//! being made).

use super::datapath::{ebpf, Enforcer};
use super::{repaired, Policy};
use crate::Failure;

/// The tc filters podnet keeps on one pod's host veth.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Filters {
    /// Anti-spoofing on ingress (`podnet_from_pod`), with its program id.
    pub antispoof: Option<u32>,
    /// The eBPF policy datapath's two filters.
    pub policy_out: bool,
    pub policy_in: bool,
    /// The nftables datapath's backstop on egress ([`crate::guard::BACKSTOP_FILTER`]).
    pub backstop: bool,
}

pub fn filters_of(sock: &mut podnet_netlink::Socket, index: u32) -> Result<Filters, Failure> {
    let ing = podnet_netlink::tc::list_ingress(sock, index).map_err(Failure::from)?;
    let eg = podnet_netlink::tc::list_egress(sock, index).map_err(Failure::from)?;
    Ok(Filters {
        antispoof: ing
            .iter()
            .find(|f| f.name.as_deref() == Some(podnet_netlink::antispoof::PROG_NAME))
            .and_then(|f| f.prog_id),
        policy_out: ing
            .iter()
            .any(|f| f.name.as_deref() == Some(ebpf::FILTER_OUT)),
        policy_in: eg
            .iter()
            .any(|f| f.name.as_deref() == Some(ebpf::FILTER_IN)),
        backstop: eg
            .iter()
            .any(|f| f.name.as_deref() == Some(crate::guard::BACKSTOP_FILTER)),
    })
}

/// What is missing from the filters of the pod behind host veth `index`, read from the
/// kernel: `(opens its policy, what)` — a datapath's missing filter may open it, a
/// missing anti-spoofing filter lets it forge its source. Empty: all there.
pub fn pod_filter_problems(
    sock: &mut podnet_netlink::Socket,
    index: u32,
    name: &str,
    dp: &dyn Enforcer,
) -> Vec<(bool, String)> {
    let f = match filters_of(sock, index) {
        Ok(f) => f,
        Err(e) => return vec![(false, format!("cannot read the filters of {name}: {e}"))],
    };
    let mut v = vec![];
    if f.antispoof.is_none() {
        v.push((
            false,
            format!(
                "{name} has no anti-spoofing filter ({}): the pod can forge its source",
                podnet_netlink::antispoof::PROG_NAME
            ),
        ));
    }
    v.extend(dp.veth_problems(&f, name));
    v
}

/// The `bridge-nf-call-*` switch that is off, if one is.
pub fn bridge_nf_off() -> Option<String> {
    ["iptables", "ip6tables"].into_iter().find_map(|fam| {
        let p = format!("/proc/sys/net/bridge/bridge-nf-call-{fam}");
        std::fs::read_to_string(&p)
            .is_ok_and(|v| v.trim() == "0")
            .then_some(p)
    })
}

/// The host veths of the node's pods (podnet-cni marks them with its owner alias).
pub fn pod_veths(
    sock: &mut podnet_netlink::Socket,
) -> Result<Vec<podnet_netlink::link::LinkInfo>, Failure> {
    Ok(podnet_netlink::link::list(sock)
        .map_err(Failure::from)?
        .into_iter()
        .filter(|l| {
            l.alias
                .as_deref()
                .and_then(podnet_conventions::parse_owner_alias)
                .is_some()
        })
        .collect())
}

/// One pod veth's filters: as last seen, and as now.
pub struct VethCheck<'a> {
    pub link: &'a podnet_netlink::link::LinkInfo,
    pub before: Filters,
    pub now: Filters,
}

/// Sends filter requests; the failures other than "already there", as text.
pub fn attach(
    sock: &mut podnet_netlink::Socket,
    reqs: Vec<podnet_netlink::socket::Request>,
) -> Vec<String> {
    sock.ack_all(reqs)
        .into_iter()
        .filter_map(|r| r.err().filter(|e| !e.is_exists()))
        .map(|e| e.to_string())
        .collect()
}

impl Policy {
    /// Every pod veth's filters: anti-spoofing, and those of the datapath (the eBPF
    /// policy filters, the nftables backstop). One seen before and gone now is attached again (the pod was
    /// open, or could forge its source, in between); the repair is logged and counted.
    pub(super) fn verify_filters(&mut self, log: &dyn Fn(&str)) -> Result<(), Failure> {
        let mut sock = podnet_netlink::Socket::route().map_err(Failure::from)?;
        let veths = pod_veths(&mut sock)?;
        self.seen_filters
            .retain(|i, _| veths.iter().any(|l| l.index == *i));
        for l in &veths {
            let now = filters_of(&mut sock, l.index)?;
            let before = self.seen_filters.get(&l.index).copied().unwrap_or_default();
            let mut have = now;
            if let (None, Some(prog)) = (now.antispoof, before.antispoof) {
                // The same program again: its map still holds the pod's entry.
                let fd = podnet_netlink::bpf::prog_by_id(prog).map_err(Failure::from)?;
                let failed = attach(
                    &mut sock,
                    vec![
                        podnet_netlink::tc::clsact_request(l.index),
                        podnet_netlink::tc::bpf_ingress_request(
                            l.index,
                            1,
                            &fd,
                            podnet_netlink::antispoof::PROG_NAME,
                        ),
                    ],
                );
                if failed.is_empty() {
                    have.antispoof = Some(prog);
                    repaired(
                        &self.on_repair,
                        log,
                        "antispoof-filter",
                        &format!(
                            "{} had lost its anti-spoofing filter: attached it again",
                            l.name
                        ),
                    );
                } else {
                    log(&format!("policy: {} has lost its anti-spoofing filter and it could not be attached again: {}", l.name, failed.join("; ")));
                }
            }
            let (on_repair, log2) = (&self.on_repair, log);
            let repaired = |object: &str, what: &str| repaired(on_repair, log2, object, what);
            let check = VethCheck {
                link: l,
                before,
                now,
            };
            self.dp
                .repair_veth(&mut sock, &check, &mut have, &repaired, log)?;
            self.seen_filters.insert(l.index, have);
        }
        Ok(())
    }
}
