//! The eBPF policy datapath's flow tables (`flows` and its IPv6 twin `flows6` in
//! `bpf/policy.c`, pinned in the node's bpffs directory), seen from outside the agent:
//! podnet-cni forgets a removed pod's flows on DEL, podnetd those of pods removed on
//! other nodes. Raw bpf calls by pin path (no BTF load), the key layout checked against
//! the map before use.

use crate::bpf;
use std::net::IpAddr;
use std::path::Path;

/// The eBPF policy datapath's flow table, pinned by name in the node's bpffs directory.
pub const FLOWS_MAP: &str = "flows";
/// Its IPv6 twin, pinned beside it.
pub const FLOWS6_MAP: &str = "flows6";
const BPF_MAP_TYPE_LRU_HASH: u32 = 9;

/// Deletes every entry whose key has `ip` as source or destination from the pinned
/// flow table at `path` (`flows`), or for an IPv6 address from `flows6` beside it;
/// returns how many. A table that is not pinned (the datapath is not loaded) has
/// nothing to delete.
pub fn forget(path: &Path, ip: IpAddr) -> Result<usize, crate::Error> {
    match ip {
        IpAddr::V4(ip) => {
            let ip = u32::from_ne_bytes(ip.octets());
            forget_in::<podnet_bpf_abi::FlowKey>(path, |k| k.saddr == ip || k.daddr == ip)
        }
        IpAddr::V6(ip) => {
            let a = ip.octets();
            forget_in::<podnet_bpf_abi::Flow6Key>(&path.with_file_name(FLOWS6_MAP), |k| {
                k.saddr.a == a || k.daddr.a == a
            })
        }
    }
}

/// The flow-table keys of one family (`struct flow_key`, `struct flow6_key`).
trait FlowKey: Sized {
    fn parse(b: &[u8]) -> Option<Self>;
}

impl FlowKey for podnet_bpf_abi::FlowKey {
    fn parse(b: &[u8]) -> Option<Self> {
        Self::from_bytes(b)
    }
}

impl FlowKey for podnet_bpf_abi::Flow6Key {
    fn parse(b: &[u8]) -> Option<Self> {
        Self::from_bytes(b)
    }
}

fn forget_in<K: FlowKey>(path: &Path, matches: impl Fn(&K) -> bool) -> Result<usize, crate::Error> {
    let map = match bpf::obj_get(path) {
        Ok(m) => m,
        Err(e) if e.errno() == Some(libc::ENOENT) => return Ok(0),
        Err(e) => return Err(e),
    };
    let info = bpf::map_info(&map)?;
    let key_size = std::mem::size_of::<K>() as u32;
    if info.key_size != key_size || info.map_type != BPF_MAP_TYPE_LRU_HASH {
        return Err(crate::Error::Malformed {
            op: "read the flow table",
            obj: path.display().to_string(),
            why: format!(
                "it is a map of type {} with {}-byte keys, not the LRU hash of {key_size}-byte keys of bpf/policy.c; it was made by another podnet build",
                info.map_type, info.key_size
            ),
        });
    }
    let mut n = 0;
    for k in bpf::raw_keys(&map, &info)? {
        if K::parse(&k).is_some_and(|key| matches(&key)) {
            bpf::delete_raw(&map, &info, &k)?;
            n += 1;
        }
    }
    Ok(n)
}
