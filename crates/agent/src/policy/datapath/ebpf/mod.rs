//! The eBPF datapath as an [`Enforcer`]: programs on every pod's host veth, maps
//! pinned in bpffs ([`maps`], [`tables`], [`pinned`]; upgrades in [`generations`]).
//!
//! # Kernel objects it owns
//! See [`maps`]: the pinned maps and programs in `--bpf-dir`, the two policy filters
//! on every pod veth (attached by podnet-cni, put back by the agent), and with the
//! fast path the filters of [`crate::policy::fastpath`].

mod generations;
pub mod maps;
pub mod pinned;
pub mod tables;

pub use generations::on_bpffs;
pub use maps::*;
pub use pinned::{budget_stats, counters, holds, set_event_config};
pub use tables::{desired, port_prefixes, Desired};

use super::{remove_backstop, DeniedCounts, Enforcer, Repaired, Setup, Tables};
use crate::policy::filters::{attach, pod_veths, Filters, VethCheck};
use crate::Failure;
use podnet_conventions::{PolicyDatapath, PolicyPrograms};
use podnet_netlink::Socket;
use std::path::PathBuf;

pub struct Ebpf {
    dir: Option<PathBuf>,
    /// Loaded by [`Enforcer::prepare`].
    dp: Option<Box<EbpfDatapath>>,
}

impl Ebpf {
    pub fn new(s: Setup) -> Ebpf {
        Ebpf {
            dir: s.bpf_dir,
            dp: None,
        }
    }
}

impl Enforcer for Ebpf {
    fn kind(&self) -> PolicyDatapath {
        PolicyDatapath::Ebpf
    }

    fn prepare(&mut self, log: &dyn Fn(&str)) -> Result<(), Failure> {
        let dir = self
            .dir
            .clone()
            .ok_or("no --bpf-dir to pin the eBPF datapath in")?;
        let dp = EbpfDatapath::open(&dir)?;
        log(&format!("policy: eBPF map layout {}", dp.layout()));
        self.dp = Some(Box::new(dp));
        self.pods_changed(log)?;
        if super::nftables::table::exists() {
            // Every pod carries the programs now: the table would only filter twice.
            super::nftables::table::delete()?;
            log("policy datapath ebpf: removed the nftables table inet podnet");
        }
        log(&format!(
            "policy: eBPF datapath loaded, maps pinned in {}; every pod is closed until its policy is programmed",
            dir.display()
        ));
        Ok(())
    }

    fn pod_programs(&self) -> Option<PolicyPrograms> {
        let e = self.dp.as_ref()?;
        Some(PolicyPrograms {
            from_pod: e.program_path(FROM_POD),
            to_pod: e.program_path(TO_POD),
        })
    }

    fn bpf_dir(&self) -> Option<PathBuf> {
        self.dp.as_ref().and(self.dir.clone())
    }

    fn program(&mut self, _old: &Tables, new: &Tables) -> Result<usize, Failure> {
        match self.dp.as_deref_mut() {
            Some(e) => e.program(&desired(new)),
            None => Err("the eBPF datapath is not loaded".into()),
        }
    }

    /// The node's own addresses into `node_addrs`, and the programs onto every pod's
    /// host veth that lacks them (pods made before this datapath was chosen).
    fn pods_changed(&mut self, log: &dyn Fn(&str)) -> Result<(), Failure> {
        let Some(e) = self.dp.as_deref_mut() else {
            return Ok(());
        };
        let mut sock = podnet_netlink::Socket::route().map_err(Failure::from)?;
        let mut addrs: Vec<std::net::IpAddr> = podnet_netlink::addr::list(&mut sock, None)
            .map_err(Failure::from)?
            .iter()
            .map(|a| a.addr.into())
            .collect();
        addrs.extend(
            podnet_netlink::addr::list6(&mut sock, None)
                .map_err(Failure::from)?
                .into_iter()
                .map(|(_, a, _)| std::net::IpAddr::from(a)),
        );
        e.set_node_addrs(&addrs)?;
        let (out_prog, in_prog) = (e.program_fd(FROM_POD)?, e.program_fd(TO_POD)?);
        for l in pod_veths(&mut sock)? {
            let has = podnet_netlink::tc::list_ingress(&mut sock, l.index)
                .map_err(Failure::from)?
                .iter()
                .any(|f| f.name.as_deref() == Some(FILTER_OUT));
            if has {
                continue;
            }
            let reqs = vec![
                podnet_netlink::tc::clsact_request(l.index),
                podnet_netlink::tc::bpf_ingress_request(l.index, 2, &out_prog, FILTER_OUT),
                podnet_netlink::tc::bpf_egress_request(l.index, 1, &in_prog, FILTER_IN),
            ];
            for r in sock.ack_all(reqs) {
                if let Err(e) = r {
                    if !e.is_exists() {
                        return Err(format!("attach the policy programs to {}: {e}", l.name).into());
                    }
                }
            }
            log(&format!(
                "policy: attached the eBPF policy programs to {}",
                l.name
            ));
        }
        Ok(())
    }

    /// The two policy filters put back where they went; the nftables backstop off.
    fn repair_veth(
        &self,
        sock: &mut Socket,
        v: &VethCheck,
        have: &mut Filters,
        repaired: Repaired,
        log: &dyn Fn(&str),
    ) -> Result<(), Failure> {
        let (l, before, now) = (v.link, v.before, v.now);
        remove_backstop(sock, l, now, have, log);
        let Some(e) = self.dp.as_deref() else {
            return Ok(());
        };
        // The fds must stay open until the requests are sent.
        let (out_fd, in_fd) = (e.program_fd(FROM_POD)?, e.program_fd(TO_POD)?);
        let mut reqs = vec![podnet_netlink::tc::clsact_request(l.index)];
        if before.policy_out && !now.policy_out {
            reqs.push(podnet_netlink::tc::bpf_ingress_request(
                l.index, 2, &out_fd, FILTER_OUT,
            ));
        }
        if before.policy_in && !now.policy_in {
            reqs.push(podnet_netlink::tc::bpf_egress_request(
                l.index, 1, &in_fd, FILTER_IN,
            ));
        }
        if reqs.len() == 1 {
            return Ok(());
        }
        let failed = attach(sock, reqs);
        if failed.is_empty() {
            have.policy_out |= before.policy_out;
            have.policy_in |= before.policy_in;
            repaired(
                "policy-filter",
                &format!(
                    "{} had lost an eBPF policy filter: attached it again",
                    l.name
                ),
            );
        } else {
            log(&format!(
                "policy: {} has lost an eBPF policy filter and it could not be attached again: {}",
                l.name,
                failed.join("; ")
            ));
        }
        Ok(())
    }

    fn forget(&self, ip: std::net::IpAddr) -> Result<usize, Failure> {
        let Some(dir) = &self.dir else {
            return Ok(0);
        };
        podnet_netlink::flows::forget(&dir.join(podnet_netlink::flows::FLOWS_MAP), ip)
            .map_err(Failure::from)
    }

    fn ebpf(&mut self) -> Option<&mut EbpfDatapath> {
        self.dp.as_deref_mut()
    }

    fn holds(&self, ip: std::net::IpAddr) -> bool {
        self.dir.as_deref().is_some_and(|d| holds(d, ip))
    }

    fn counters(&self) -> Result<(DeniedCounts, u64), Failure> {
        match &self.dir {
            Some(d) => counters(d),
            None => Ok((DeniedCounts::new(), 0)),
        }
    }

    fn veth_problems(&self, f: &Filters, name: &str) -> Vec<(bool, String)> {
        let mut v = vec![];
        if !f.policy_out {
            v.push((
                true,
                format!(
                    "{name} has no egress policy filter ({FILTER_OUT}): nothing judges what the pod sends"
                ),
            ));
        }
        if !f.policy_in {
            v.push((true, format!("{name} has no ingress policy filter ({FILTER_IN}): nothing judges what the pod receives")));
        }
        v
    }
}
