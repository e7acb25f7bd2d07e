//! What enforces NetworkPolicy on a node: one module per datapath, each behind
//! [`Enforcer`] — [`nftables`] (one table, sets of peers and ports), [`ebpf`]
//! (programs on every pod's host veth, LPM tries pinned in bpffs) and [`none`] (every
//! pod open, the Flannel model). Each is given the same compiled tables and passes the
//! same conformance suite.
//!
//! The agent's round ([`super::Policy::sync`]) asks its datapath to check what it
//! keeps in the kernel, to program the tables that changed, and to repair each pod
//! veth's filters; the API asks the datapath a status names what the kernel holds
//! ([`reader`]). Adding a datapath: a module implementing [`Enforcer`], its name in
//! `podnet_conventions::PolicyDatapath`, and its constructor in [`open`].

pub mod ebpf;
pub mod nftables;
pub mod none;

use super::filters::{Filters, VethCheck};
use crate::Failure;
use podnet_api::PolicyStatus;
use podnet_cni_spec::Ipv4Net;
use podnet_conventions::{PolicyDatapath, PolicyPrograms};
use podnet_netlink::link::LinkInfo;
use podnet_netlink::Socket;
use podnet_policy::compile::PodTables;
use podnet_policy::Direction;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;
use std::path::PathBuf;

/// The compiled tables of the node's pods, by `namespace/name`.
pub type Tables = BTreeMap<String, PodTables>;

/// Packets refused per (pod address — either family —, direction).
pub type DeniedCounts = BTreeMap<(std::net::IpAddr, Direction), u64>;

/// Reports one repair: `(object, what was repaired)` (logged and counted).
pub type Repaired<'a> = &'a dyn Fn(&str, &str);

/// What a datapath is made from.
pub struct Setup {
    pub kind: PolicyDatapath,
    /// The node's pod CIDR (every address in it is closed until programmed).
    pub cidr: Ipv4Net,
    /// Its IPv6 pod CIDR on a dual-stack node (the same, for the pods' IPv6
    /// addresses).
    pub cidr6: Option<podnet_conventions::Ipv6Net>,
    pub bridge: String,
    /// Where the eBPF datapath pins its maps and programs (`None`: not loaded, for a
    /// reader of a status).
    pub bpf_dir: Option<PathBuf>,
    /// The nftables backstop program (loaded with the underlay guard), attached to
    /// every pod veth's egress on the nftables datapath.
    pub backstop: Option<OwnedFd>,
}

/// One NetworkPolicy datapath.
pub trait Enforcer: Send {
    fn kind(&self) -> PolicyDatapath;

    /// Whether it enforces anything (the `none` datapath does not).
    fn enforces(&self) -> bool {
        true
    }

    /// Before any pod can be made: every address of the node's pod CIDR closed until
    /// its verdicts are programmed.
    fn prepare(&mut self, log: &dyn Fn(&str)) -> Result<(), Failure>;

    /// What podnet-cni attaches to every new pod (the node file's `policyPrograms`).
    fn pod_programs(&self) -> Option<PolicyPrograms> {
        None
    }

    /// Where its maps are pinned, once loaded.
    fn bpf_dir(&self) -> Option<PathBuf> {
        None
    }

    /// Every round: the node-wide objects it keeps, as last programmed (`tables`);
    /// what is missing is reported and makes the next [`Enforcer::program`] write
    /// everything.
    fn verify(&mut self, _tables: &Tables, _repaired: Repaired, _log: &dyn Fn(&str)) {}

    /// Whether the kernel holds what was last programmed (else a round programs even
    /// when the objects did not change).
    fn in_sync(&self) -> bool {
        true
    }

    /// Programs `new` where `old` was programmed; the number of elements changed.
    fn program(&mut self, old: &Tables, new: &Tables) -> Result<usize, Failure>;

    /// The node's pods changed (not every policy change): refresh what depends on them.
    fn pods_changed(&mut self, _log: &dyn Fn(&str)) -> Result<(), Failure> {
        Ok(())
    }

    /// One pod veth's filters of this datapath: put back those `before` had and `now`
    /// lacks, remove what it must not carry; `have` is updated to what it holds then.
    fn repair_veth(
        &self,
        sock: &mut Socket,
        v: &VethCheck,
        have: &mut Filters,
        repaired: Repaired,
        log: &dyn Fn(&str),
    ) -> Result<(), Failure>;

    /// Forgets the tracked flows of address `ip` (a pod gone); how many.
    fn forget(&self, _ip: std::net::IpAddr) -> Result<usize, Failure> {
        Ok(0)
    }

    /// The loaded eBPF datapath, which the fast path shares.
    fn ebpf(&mut self) -> Option<&mut ebpf::EbpfDatapath> {
        None
    }

    /// Whether the kernel holds `ip` (either of a pod's addresses) as a programmed pod.
    fn holds(&self, ip: std::net::IpAddr) -> bool;

    /// Packets refused per pod and direction, and to or from closed addresses.
    fn counters(&self) -> Result<(DeniedCounts, u64), Failure>;

    /// What is missing node-wide that opens pods, read from the kernel.
    fn node_problems(&self, _tables: &Tables) -> Vec<String> {
        vec![]
    }

    /// What is missing from one pod veth's filters of this datapath: `(opens the
    /// pod, what)`.
    fn veth_problems(&self, _f: &Filters, _name: &str) -> Vec<(bool, String)> {
        vec![]
    }
}

/// The datapath `setup` names.
pub fn open(setup: Setup) -> Box<dyn Enforcer> {
    match setup.kind {
        PolicyDatapath::Nftables => Box::new(nftables::Nftables::new(setup)),
        PolicyDatapath::Ebpf => Box::new(ebpf::Ebpf::new(setup)),
        PolicyDatapath::None => Box::new(none::NoPolicy),
    }
}

/// The datapath a status names, to read what the kernel holds (nothing is loaded or
/// changed).
pub fn reader(st: &PolicyStatus) -> Box<dyn Enforcer> {
    open(Setup {
        kind: st.datapath,
        cidr: Ipv4Net::new(Ipv4Addr::UNSPECIFIED, 0).expect("0.0.0.0/0 is a network"),
        cidr6: st.pod_cidr6,
        bridge: String::new(),
        bpf_dir: st.bpf_dir.clone(),
        backstop: None,
    })
}

/// Removes the nftables backstop from a pod veth (datapaths other than nftables).
pub(crate) fn remove_backstop(
    sock: &mut Socket,
    l: &LinkInfo,
    now: Filters,
    have: &mut Filters,
    log: &dyn Fn(&str),
) {
    if !now.backstop {
        return;
    }
    for r in sock.ack_all(vec![podnet_netlink::tc::del_egress_request(
        l.index,
        crate::guard::BACKSTOP_PRIO,
    )]) {
        if let Err(e) = r {
            log(&format!(
                "policy: cannot remove the nftables backstop from {}: {e}",
                l.name
            ));
        }
    }
    have.backstop = false;
}
