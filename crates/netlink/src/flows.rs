//! The eBPF policy datapath's flow table (`flows` in `bpf/policy.c`, pinned in the
//! node's bpffs directory), seen from outside the agent: podnet-cni forgets a removed
//! pod's flows on DEL, podnetd those of pods removed on other nodes. Raw bpf calls by
//! pin path (no BTF load), the key layout checked against the map before use.

use crate::bpf;
use std::net::Ipv4Addr;
use std::path::Path;

/// The eBPF policy datapath's flow table, pinned by name in the node's bpffs directory.
pub const FLOWS_MAP: &str = "flows";
/// `struct flow_key` of `bpf/abi.h`: saddr, daddr (network order), ports, proto, side.
const FLOW_KEY_SIZE: u32 = std::mem::size_of::<podnet_bpf_abi::FlowKey>() as u32;
const BPF_MAP_TYPE_LRU_HASH: u32 = 9;

/// Deletes every entry of the pinned flow table at `path` whose key has `ip` as source
/// or destination; returns how many. A table that is not pinned (the datapath is not
/// loaded) has nothing to delete.
pub fn forget(path: &Path, ip: Ipv4Addr) -> Result<usize, crate::Error> {
    let map = match bpf::obj_get(path) {
        Ok(m) => m,
        Err(e) if e.errno() == Some(libc::ENOENT) => return Ok(0),
        Err(e) => return Err(e),
    };
    let info = bpf::map_info(&map)?;
    if info.key_size != FLOW_KEY_SIZE || info.map_type != BPF_MAP_TYPE_LRU_HASH {
        return Err(crate::Error::Malformed {
            op: "read the flow table",
            obj: path.display().to_string(),
            why: format!(
                "it is a map of type {} with {}-byte keys, not the LRU hash of {FLOW_KEY_SIZE}-byte keys of bpf/policy.c; it was made by another podnet build",
                info.map_type, info.key_size
            ),
        });
    }
    let ip = u32::from_ne_bytes(ip.octets());
    let mut n = 0;
    for k in bpf::raw_keys(&map, &info)? {
        let Some(key) = podnet_bpf_abi::FlowKey::from_bytes(&k) else {
            continue;
        };
        if key.saddr == ip || key.daddr == ip {
            bpf::delete_raw(&map, &info, &k)?;
            n += 1;
        }
    }
    Ok(n)
}
