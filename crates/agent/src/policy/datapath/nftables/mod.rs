//! The nftables datapath as an [`Enforcer`]: one table, `inet podnet` ([`table`]),
//! written whole at the first round and changed by its set elements after; bridged
//! traffic through netfilter (`bridge-nf-call-iptables`); the backstop on every pod
//! veth's egress (see [`table`] and `nft_backstop` in bpf/underlay.c).
//!
//! # Kernel objects it owns
//! The table `inet podnet`; the switches `net.bridge.bridge-nf-call-iptables` and
//! `-ip6tables` (turned on); the backstop filter on each pod veth's egress.

pub mod table;

use super::{DeniedCounts, Enforcer, Repaired, Setup, Tables};
use crate::policy::filters::{attach, bridge_nf_off, Filters, VethCheck};
use crate::Failure;
use podnet_cni_spec::Ipv4Net;
use podnet_conventions::{Ipv6Net, PolicyDatapath};
use podnet_netlink::Socket;
use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::OwnedFd;

pub struct Nftables {
    cidr: Ipv4Net,
    /// The node's IPv6 pod CIDR on a dual-stack node.
    cidr6: Option<Ipv6Net>,
    bridge: String,
    backstop: Option<OwnedFd>,
    /// Whether the table holds what was last programmed; if not, the next round
    /// rewrites it whole.
    synced: bool,
}

impl Nftables {
    pub fn new(s: Setup) -> Nftables {
        Nftables {
            cidr: s.cidr,
            cidr6: s.cidr6,
            bridge: s.bridge,
            backstop: s.backstop,
            synced: false,
        }
    }

    /// The script that takes the table from `old` to `new`, and the elements it
    /// changes: the whole table when it is not known to be in sync, else only the
    /// elements of the pods whose tables changed.
    fn script(&self, old: &Tables, new: &Tables) -> (String, usize) {
        if !self.synced {
            let elems = table::elements(new);
            return (
                table::render_full(self.cidr, self.cidr6, &self.bridge, &elems),
                elems.len(),
            );
        }
        let (mut was, mut is) = (BTreeMap::new(), BTreeMap::new());
        for (k, t) in new.iter().filter(|(k, t)| old.get(*k) != Some(t)) {
            is.insert(k.clone(), t.clone());
            if let Some(o) = old.get(k) {
                was.insert(k.clone(), o.clone());
            }
        }
        for (k, o) in old.iter().filter(|(k, _)| !new.contains_key(*k)) {
            was.insert(k.clone(), o.clone());
        }
        let (was, is) = (table::elements(&was), table::elements(&is));
        (
            table::render_update(&was, &is),
            was.symmetric_difference(&is).count(),
        )
    }
}

impl Enforcer for Nftables {
    fn kind(&self) -> PolicyDatapath {
        PolicyDatapath::Nftables
    }

    /// Bridged traffic through netfilter, and the table in place — closed for every
    /// pod address — unless one survives from an earlier run (it stays as it is until
    /// the first round replaces it).
    fn prepare(&mut self, log: &dyn Fn(&str)) -> Result<(), Failure> {
        self.synced = false;
        for fam in ["iptables", "ip6tables"] {
            let p = format!("/proc/sys/net/bridge/bridge-nf-call-{fam}");
            let on = std::fs::read_to_string(&p).map(|v| v.trim() == "1");
            match on {
                Ok(true) => {}
                Ok(false) => std::fs::write(&p, "1").map_err(|e| {
                    format!("cannot turn on {p} ({e}): same-node pod traffic would bypass policy")
                })?,
                Err(e) => {
                    return Err(format!(
                        "cannot read {p} ({e}): NetworkPolicy on bridged (same-node) traffic needs the br_netfilter module: run `modprobe br_netfilter` on the host, or start podnetd with --policy-datapath none"
                    ).into())
                }
            }
        }
        if !table::exists() {
            table::run(&table::render_full(
                self.cidr,
                self.cidr6,
                &self.bridge,
                &BTreeSet::new(),
            ))?;
            log("policy: created nftables table inet podnet; every pod is closed until its policy is programmed");
        }
        Ok(())
    }

    /// The table, its chains and isolation sets, and bridge-nf-call-iptables as last
    /// programmed; anything missing makes this round rewrite the whole table (one
    /// transaction) and turn the switch back on.
    fn verify(&mut self, tables: &Tables, repaired: Repaired, log: &dyn Fn(&str)) {
        if !self.synced {
            return;
        }
        if let Err(why) = table::check_intact(&table::elements(tables), self.cidr6) {
            repaired(
                "nftables-table",
                &format!(
                    "{why}: every pod of this node was open; rewriting table inet {}",
                    table::TABLE
                ),
            );
            self.synced = false;
        }
        if let Some(p) = bridge_nf_off() {
            match std::fs::write(&p, "1") {
                Ok(()) => repaired("bridge-nf-call", &format!("{p} was 0 (same-node pod traffic skipped nftables): set to 1")),
                Err(e) => log(&format!("policy: {p} is 0 and cannot be set ({e}): same-node pod traffic skips NetworkPolicy")),
            }
        }
    }

    fn in_sync(&self) -> bool {
        self.synced
    }

    fn program(&mut self, old: &Tables, new: &Tables) -> Result<usize, Failure> {
        let (script, changed) = self.script(old, new);
        if script.is_empty() {
            return Ok(changed);
        }
        let r = table::run(&script).map(|()| changed);
        self.synced = r.is_ok();
        r
    }

    /// The backstop on every pod (new ones too: podnet-cni does not attach it).
    fn repair_veth(
        &self,
        sock: &mut Socket,
        v: &VethCheck,
        have: &mut Filters,
        repaired: Repaired,
        log: &dyn Fn(&str),
    ) -> Result<(), Failure> {
        let (l, before, now) = (v.link, v.before, v.now);
        let Some(fd) = self.backstop.as_ref().filter(|_| !now.backstop) else {
            return Ok(());
        };
        let failed = attach(
            sock,
            vec![
                podnet_netlink::tc::clsact_request(l.index),
                podnet_netlink::tc::bpf_egress_request(
                    l.index,
                    crate::guard::BACKSTOP_PRIO,
                    fd,
                    crate::guard::BACKSTOP_FILTER,
                ),
            ],
        );
        if !failed.is_empty() {
            log(&format!(
                "policy: cannot attach the nftables backstop to {}: {}",
                l.name,
                failed.join("; ")
            ));
            return Ok(());
        }
        have.backstop = true;
        if before.backstop {
            repaired(
                "nftables-backstop",
                &format!(
                    "{} had lost its nftables backstop: attached it again",
                    l.name
                ),
            );
        }
        Ok(())
    }

    fn holds(&self, ip: std::net::IpAddr) -> bool {
        let set = if ip.is_ipv6() {
            "programmed6"
        } else {
            "programmed"
        };
        table::holds(set, &ip.to_string())
    }

    fn counters(&self) -> Result<(DeniedCounts, u64), Failure> {
        table::counters()
    }

    /// The table, its chains and isolation sets (against the tables last programmed),
    /// and `bridge-nf-call-iptables`.
    fn node_problems(&self, tables: &Tables) -> Vec<String> {
        let mut v = vec![];
        if let Err(e) = table::check_intact(&table::elements(tables), self.cidr6) {
            v.push(e.to_string());
        }
        if let Some(p) = bridge_nf_off() {
            v.push(format!(
                "{p} is 0: bridged (same-node) pod traffic skips nftables"
            ));
        }
        v
    }

    fn veth_problems(&self, f: &Filters, name: &str) -> Vec<(bool, String)> {
        if f.backstop {
            return vec![];
        }
        vec![(false, format!("{name} has no nftables backstop ({}): a flushed ruleset would open the pod until the agent puts it back", crate::guard::BACKSTOP_FILTER))]
    }
}
