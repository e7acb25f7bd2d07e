//! The host-gw backend: plain routes to each peer's underlay address, for nodes on
//! one L2 network. Nothing is encapsulated, so nothing is added to packets and there
//! is no device of its own; the underlay guard binds pod sources to their node's MAC
//! instead ([`crate::guard`]).

use super::{Ctx, NodeBackend, NodeInfo};
use crate::plan::Via;
use crate::{Backend, Result};

pub struct HostGw;

impl NodeBackend for HostGw {
    fn kind(&self) -> Backend {
        Backend::HostGw
    }

    fn overhead(&self) -> u32 {
        0
    }

    fn remove(&self, _ctx: &mut Ctx) -> Result<()> {
        Ok(())
    }

    fn ensure_device(&mut self, _ctx: &mut Ctx, _n: &NodeInfo) -> Result<Option<u32>> {
        Ok(None)
    }

    fn via(&self, _dev: Option<u32>, underlay_index: u32) -> Via {
        Via::HostGw {
            dev: underlay_index,
        }
    }

    fn plain_pod_sources(&self) -> bool {
        true
    }
}
