//! The eBPF datapath's pinned maps read (and its switches set) from outside the loaded
//! object: what the API, the metrics and the event reader see is the kernel's view,
//! not the agent's belief.

use super::maps::{err, raw, unraw};
use crate::Failure;
use aya::maps::HashMap;
use podnet_bpf_abi::{
    Drop6Key, DropKey, CONFIG_EVENTS_ALLOWED, DIR_CLOSED, DIR_EGRESS, DIR_INGRESS, POD_PROGRAMMED,
};
use podnet_policy::Direction;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv6Addr};
use std::path::Path;

/// A map pinned in `dir`, read from the kernel (what the API reports: the kernel's
/// view, not the agent's belief).
fn pinned(dir: &Path, name: &str) -> Result<aya::maps::Map, Failure> {
    let path = dir.join(name);
    let data = aya::maps::MapData::from_pin(&path)
        .map_err(|e| err(&format!("open {}", path.display()), e))?;
    aya::maps::Map::from_map_data(data).map_err(|e| err(name, e))
}

/// What the datapath's budgets held back (`budget_stats` in bpf/policy.c), read from
/// the kernel: `(what, count)`.
pub fn budget_stats(dir: &Path) -> Result<Vec<(&'static str, u64)>, Failure> {
    let a: aya::maps::Array<_, u64> = aya::maps::Array::try_from(pinned(dir, "budget_stats")?)
        .map_err(|e| err("budget_stats", e))?;
    [
        ("events-limited", podnet_bpf_abi::BUDGET_EVENTS_LIMITED),
        ("events-ring-full", podnet_bpf_abi::BUDGET_EVENTS_RING_FULL),
        ("flows-unrecorded", podnet_bpf_abi::BUDGET_FLOWS_UNRECORDED),
    ]
    .into_iter()
    .map(|(what, slot)| {
        a.get(&slot, 0)
            .map(|n| (what, n))
            .map_err(|e| err("read budget_stats", e))
    })
    .collect()
}

/// Whether the kernel holds `ip` as a programmed pod (an IPv6 address in
/// `pod_policy6`).
pub fn holds(dir: &Path, ip: std::net::IpAddr) -> bool {
    let flags = match ip {
        std::net::IpAddr::V4(ip) => pinned(dir, "pod_policy")
            .ok()
            .and_then(|m| HashMap::<_, u32, u32>::try_from(m).ok())
            .and_then(|m| m.get(&raw(ip), 0).ok()),
        std::net::IpAddr::V6(ip) => pinned(dir, "pod_policy6")
            .ok()
            .and_then(|m| HashMap::<_, podnet_bpf_abi::In6, u32>::try_from(m).ok())
            .and_then(|m| m.get(&super::tables::in6(ip), 0).ok()),
    };
    flags.is_some_and(|f| f & POD_PROGRAMMED != 0)
}

/// Sets switch `slot` of the pinned `config` array; true if it changed.
pub(super) fn switch(dir: &Path, slot: u32, on: bool) -> Result<bool, Failure> {
    let mut a: aya::maps::Array<_, u32> =
        aya::maps::Array::try_from(pinned(dir, "config")?).map_err(|e| err("config", e))?;
    if a.get(&slot, 0).map_err(|e| err("read config", e))? == u32::from(on) {
        return Ok(false);
    }
    a.set(slot, u32::from(on), 0)
        .map_err(|e| err("write config", e))?;
    Ok(true)
}

/// Whether the programs report admitted flows too, not only refused packets.
pub fn set_event_config(dir: &Path, allowed: bool) -> Result<(), Failure> {
    switch(dir, CONFIG_EVENTS_ALLOWED, allowed).map(|_| ())
}

/// Packets refused per (pod address, direction), both families, and to or from closed
/// addresses.
pub fn counters(dir: &Path) -> Result<(crate::policy::datapath::DeniedCounts, u64), Failure> {
    let mut per_pod = BTreeMap::new();
    let mut closed = 0;
    let mut count = |pod: IpAddr, d: u32, v: u64| match d {
        DIR_INGRESS => {
            per_pod.insert((pod, Direction::Ingress), v);
        }
        DIR_EGRESS => {
            per_pod.insert((pod, Direction::Egress), v);
        }
        DIR_CLOSED => closed += v,
        _ => {}
    };
    let m: HashMap<_, DropKey, u64> =
        HashMap::try_from(pinned(dir, "policy_drops")?).map_err(|e| err("policy_drops", e))?;
    for kv in m.iter() {
        let (k, v) = kv.map_err(|e| err("read policy_drops", e))?;
        count(unraw(k.pod).into(), k.dir, v);
    }
    let m: HashMap<_, Drop6Key, u64> =
        HashMap::try_from(pinned(dir, "policy_drops6")?).map_err(|e| err("policy_drops6", e))?;
    for kv in m.iter() {
        let (k, v) = kv.map_err(|e| err("read policy_drops6", e))?;
        count(Ipv6Addr::from(k.pod.a).into(), k.dir, v);
    }
    Ok((per_pod, closed))
}
