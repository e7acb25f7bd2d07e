//! The `none` datapath: no NetworkPolicy at all, every pod open (the Flannel model).
//! It removes what the others leave: the nftables table, the backstop on pod veths.

use super::{remove_backstop, DeniedCounts, Enforcer, Repaired, Tables};
use crate::policy::filters::{Filters, VethCheck};
use crate::Failure;
use podnet_conventions::PolicyDatapath;
use podnet_netlink::Socket;

pub struct NoPolicy;

impl Enforcer for NoPolicy {
    fn kind(&self) -> PolicyDatapath {
        PolicyDatapath::None
    }

    fn enforces(&self) -> bool {
        false
    }

    fn prepare(&mut self, log: &dyn Fn(&str)) -> Result<(), Failure> {
        if super::nftables::table::exists() {
            super::nftables::table::delete()?;
            log("policy datapath none: removed the nftables table inet podnet");
        }
        Ok(())
    }

    fn program(&mut self, _old: &Tables, _new: &Tables) -> Result<usize, Failure> {
        Ok(0)
    }

    fn repair_veth(
        &self,
        sock: &mut Socket,
        v: &VethCheck,
        have: &mut Filters,
        _repaired: Repaired,
        log: &dyn Fn(&str),
    ) -> Result<(), Failure> {
        let (l, now) = (v.link, v.now);
        remove_backstop(sock, l, now, have, log);
        Ok(())
    }

    fn holds(&self, _ip: std::net::IpAddr) -> bool {
        false
    }

    fn counters(&self) -> Result<(DeniedCounts, u64), Failure> {
        Ok((DeniedCounts::new(), 0))
    }
}
