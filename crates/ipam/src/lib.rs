//! Built-in IPAM: hands each pod attachment one address from the node's pod CIDR.
//!
//! # Storage and safety
//! One directory per network (`<dataDir>/<network>/`):
//! - `lock`: every operation holds an exclusive `flock` on it for its whole
//!   read-modify-write, so concurrent ADDs are serialized and can never hand out one
//!   address twice. The kernel drops the lock when a process dies, even by `kill -9`.
//! - `state.a` and `state.b`: two copies of the whole state, each a header line
//!   (`podnet-ipam 1 <generation> <length> <checksum>`) and a JSON body. A change is
//!   written over the *older* copy with a higher generation; a reader takes the newest
//!   copy whose checksum holds. A process killed in the middle of a write therefore
//!   leaves a torn older copy and an intact newer one: the state is always the one
//!   before or the one after the change, never a mix.
//!
//! This covers a process killed at any instant. A power loss is not covered: the
//! copies are not flushed to disk (an `fdatasync` per ADD would cost milliseconds), as
//! with the reference host-local plugin.
//!
//! Both files are written in place. Creating or renaming files costs 0.6–0.8 ms per
//! inode on this class of disk (ext4 allocates an inode, and replacing a file by
//! rename forces a data flush), which would double the time of an ADD.
//!
//! # Allocation
//! Addresses are handed out round-robin after the last one given, so a freed address
//! is not reused at once (a late packet for a dead pod will not reach a new one). The
//! network, gateway and broadcast addresses are never assigned. Allocation is
//! idempotent per attachment (container ID + interface): asking twice returns the
//! same address.
//!
//! A dual-stack network gives each attachment one address of each family: its IPv6
//! side ([`Pool6`], [`Store::allocate6`]) lives in the same state, under the same lock,
//! with its own cursor. Round-robin over a /64 means an IPv6 address is not handed out
//! again before 2^64 others have been.

use podnet_cni_spec::net::{Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot use IPAM directory {path}: {source}; check that it is writable by root")]
    Dir { path: PathBuf, source: io::Error },
    #[error("cannot lock IPAM state {path}: {source}")]
    Lock { path: PathBuf, source: io::Error },
    #[error("IPAM state {path} stayed locked by another process for {waited_ms} ms; try again later (a hung podnet-cni holds it: `fuser {path}` names it)")]
    Busy { path: PathBuf, waited_ms: u64 },
    #[error("cannot read IPAM state {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("IPAM state in {path} is damaged in both copies; move the directory aside, then run GC or re-add the pods")]
    Corrupt { path: PathBuf },
    #[error("cannot write IPAM state {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("no free address in {subnet}: all {in_use} usable addresses are assigned; delete unused pods, run GC to reclaim leaked addresses, or give the node a larger pod CIDR")]
    Exhausted { subnet: String, in_use: usize },
    #[error("invalid address pool {subnet}: {why}")]
    Pool { subnet: String, why: String },
    #[error("the requested address {ip} cannot be given: {why}")]
    Requested { ip: IpAddr, why: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Who holds an address: one attachment of one container.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Owner {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

impl Owner {
    pub fn new(container_id: impl Into<String>, ifname: impl Into<String>) -> Owner {
        Owner {
            container_id: container_id.into(),
            ifname: ifname.into(),
        }
    }
}

/// The range addresses come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pool {
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
}

impl Pool {
    /// Checks that the pool has at least one assignable address.
    pub fn new(subnet: Ipv4Net, gateway: Ipv4Addr) -> Result<Pool> {
        if subnet.prefix() > 30 {
            return Err(Error::Pool {
                subnet: subnet.to_string(),
                why: "a pod CIDR must be /30 or larger (network, gateway, pods, broadcast)".into(),
            });
        }
        if let Some(why) = subnet.pod_cidr_problem() {
            return Err(Error::Pool {
                subnet: subnet.to_string(),
                why,
            });
        }
        if !subnet.contains(gateway) || gateway == subnet.network() || gateway == subnet.broadcast()
        {
            return Err(Error::Pool {
                subnet: subnet.to_string(),
                why: format!("gateway {gateway} must be a host address inside it"),
            });
        }
        Ok(Pool { subnet, gateway })
    }

    /// True for the addresses a pod may get.
    pub fn assignable(&self, ip: Ipv4Addr) -> bool {
        self.subnet.contains(ip)
            && ip != self.subnet.network()
            && ip != self.subnet.broadcast()
            && ip != self.gateway
    }

    /// Number of addresses a pod may get.
    pub fn capacity(&self) -> usize {
        (self.subnet.size() - 3) as usize
    }
}

/// The IPv6 range a dual-stack pod's second address comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pool6 {
    pub subnet: Ipv6Net,
    pub gateway: Ipv6Addr,
}

impl Pool6 {
    /// Checks that the pool can be a node's IPv6 pod CIDR with that gateway.
    pub fn new(subnet: Ipv6Net, gateway: Ipv6Addr) -> Result<Pool6> {
        if let Some(why) = subnet.pod_cidr_problem() {
            return Err(Error::Pool {
                subnet: subnet.to_string(),
                why,
            });
        }
        if !subnet.contains(gateway) || gateway == subnet.network() {
            return Err(Error::Pool {
                subnet: subnet.to_string(),
                why: format!("gateway {gateway} must be a host address inside it"),
            });
        }
        Ok(Pool6 { subnet, gateway })
    }

    /// True for the addresses a pod may get: not the subnet-router anycast address
    /// (the network address), not the gateway.
    pub fn assignable(&self, ip: Ipv6Addr) -> bool {
        self.subnet.contains(ip) && ip != self.subnet.network() && ip != self.gateway
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    /// The last address handed out (round-robin cursor).
    #[serde(default)]
    last: Option<Ipv4Addr>,
    #[serde(default)]
    allocations: BTreeMap<Ipv4Addr, Owner>,
    /// A dual-stack network's IPv6 side: its cursor and allocations (absent from the
    /// file of an IPv4-only network).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last6: Option<Ipv6Addr>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    allocations6: BTreeMap<Ipv6Addr, Owner>,
}

/// The IPAM state of one network on this node.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
    lock_timeout: std::time::Duration,
}

/// How long an operation waits for another process's lock before giving up.
pub const DEFAULT_LOCK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The shortest and longest lock wait a configuration may ask for (`lockTimeoutMs`):
/// zero would fail every ADD that meets another, and a runtime gives up on a plugin
/// long before a minute.
pub const LOCK_TIMEOUT_BOUNDS: std::ops::RangeInclusive<std::time::Duration> =
    std::time::Duration::from_millis(1)..=std::time::Duration::from_secs(60);

impl Store {
    /// Opens (creating if needed) `<data_dir>/<network>`.
    pub fn open(data_dir: impl AsRef<Path>, network: &str) -> Result<Store> {
        let dir = data_dir.as_ref().join(sanitize(network));
        if !dir.is_dir() {
            fs::create_dir_all(&dir).map_err(|source| Error::Dir {
                path: dir.clone(),
                source,
            })?;
        }
        Ok(Store {
            dir,
            lock_timeout: DEFAULT_LOCK_TIMEOUT,
        })
    }

    /// Sets how long to wait for another process's lock (then: [`Error::Busy`]),
    /// held inside [`LOCK_TIMEOUT_BOUNDS`].
    pub fn with_lock_timeout(mut self, t: std::time::Duration) -> Store {
        self.lock_timeout = t.clamp(*LOCK_TIMEOUT_BOUNDS.start(), *LOCK_TIMEOUT_BOUNDS.end());
        self
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Runs `f` on the state under the lock; writes the state back if `f` says so.
    fn with_state<T>(&self, f: impl FnOnce(&mut State) -> Result<(T, bool)>) -> Result<T> {
        let lock_path = self.dir.join("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|source| Error::Lock {
                path: lock_path.clone(),
                source,
            })?;
        let start = std::time::Instant::now();
        let mut pause = std::time::Duration::from_micros(100);
        loop {
            // SAFETY: flock on an fd we own; released on close or process death.
            if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                break;
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EWOULDBLOCK) | Some(libc::EINTR) => {}
                _ => {
                    return Err(Error::Lock {
                        path: lock_path,
                        source: e,
                    })
                }
            }
            if start.elapsed() >= self.lock_timeout {
                return Err(Error::Busy {
                    path: lock_path,
                    waited_ms: start.elapsed().as_millis() as u64,
                });
            }
            std::thread::sleep(pause);
            // A holder keeps the lock about a millisecond: waiting much longer than that
            // between tries would cost concurrent ADDs more than the work itself.
            pause = (pause * 2).min(std::time::Duration::from_millis(1));
        }
        let mut copies = Copies::open(&self.dir)?;
        let mut state = copies.read()?;
        let (out, changed) = f(&mut state)?;
        if changed {
            copies.write(&state)?;
        }
        Ok(out)
    }

    /// Gives `owner` an address from `pool`; the same one again if it has one already.
    pub fn allocate(&self, pool: &Pool, owner: &Owner) -> Result<Ipv4Addr> {
        self.with_state(|st| pick(&mut st.last, &mut st.allocations, pool, owner))
    }

    /// Gives `owner` an IPv6 address from `pool` (a dual-stack pod's second address);
    /// the same one again if it has one already.
    pub fn allocate6(&self, pool: &Pool6, owner: &Owner) -> Result<Ipv6Addr> {
        self.with_state(|st| pick(&mut st.last6, &mut st.allocations6, pool, owner))
    }

    /// Gives `owner` exactly `ip` (the CNI `ips` capability). Refused when `ip` is not
    /// an assignable address of `pool`, is held by another owner, or `owner` already
    /// holds another address; asking again for the address it holds is no error.
    pub fn allocate_exact(&self, pool: &Pool, owner: &Owner, ip: Ipv4Addr) -> Result<Ipv4Addr> {
        self.with_state(|st| pick_exact(&mut st.allocations, pool, owner, ip))
    }

    /// [`Store::allocate_exact`] for a dual-stack pod's IPv6 address.
    pub fn allocate_exact6(&self, pool: &Pool6, owner: &Owner, ip: Ipv6Addr) -> Result<Ipv6Addr> {
        self.with_state(|st| pick_exact(&mut st.allocations6, pool, owner, ip))
    }

    /// Gives `owner` its address of every family the network has — from `pool`, and
    /// from `pool6` on a dual-stack network — in one change under one lock: both or
    /// neither (ten concurrent ADDs would otherwise take the lock twice each). `want`
    /// asks for exact addresses (the CNI `ips` capability); an IPv6 one on a network
    /// without `pool6` is not used.
    pub fn allocate_all(
        &self,
        pool: &Pool,
        pool6: Option<&Pool6>,
        owner: &Owner,
        want: (Option<Ipv4Addr>, Option<Ipv6Addr>),
    ) -> Result<Held> {
        self.with_state(|st| {
            let (v4, changed4) = match want.0 {
                Some(ip) => pick_exact(&mut st.allocations, pool, owner, ip)?,
                None => pick(&mut st.last, &mut st.allocations, pool, owner)?,
            };
            let (v6, changed6) = match (pool6, want.1) {
                (None, _) => (None, false),
                (Some(p6), Some(ip)) => {
                    let (a, c) = pick_exact(&mut st.allocations6, p6, owner, ip)?;
                    (Some(a), c)
                }
                (Some(p6), None) => {
                    let (a, c) = pick(&mut st.last6, &mut st.allocations6, p6, owner)?;
                    (Some(a), c)
                }
            };
            Ok((Held { v4: Some(v4), v6 }, changed4 || changed6))
        })
    }

    /// Frees whatever `owner` holds, of both families; returns what it held.
    pub fn release(&self, owner: &Owner) -> Result<Held> {
        self.with_state(|st| {
            let held = held_by(st, owner);
            if let Some(ip) = held.v4 {
                st.allocations.remove(&ip);
            }
            if let Some(ip) = held.v6 {
                st.allocations6.remove(&ip);
            }
            let changed = !held.is_empty();
            Ok((held, changed))
        })
    }

    /// The addresses `owner` holds.
    pub fn lookup(&self, owner: &Owner) -> Result<Held> {
        self.with_state(|st| Ok((held_by(st, owner), false)))
    }

    /// Every IPv4 allocation, in address order.
    pub fn list(&self) -> Result<Vec<(Ipv4Addr, Owner)>> {
        self.with_state(|st| {
            Ok((
                st.allocations
                    .iter()
                    .map(|(ip, o)| (*ip, o.clone()))
                    .collect(),
                false,
            ))
        })
    }

    /// Every allocation of both families, IPv4 first, each in address order.
    pub fn list_all(&self) -> Result<Vec<(IpAddr, Owner)>> {
        self.with_state(|st| Ok((all(st).collect(), false)))
    }

    /// Frees every allocation (of both families) whose owner `keep` rejects; returns
    /// what was freed.
    pub fn retain(&self, keep: impl Fn(&Owner) -> bool) -> Result<Vec<(IpAddr, Owner)>> {
        self.with_state(|st| {
            let gone: Vec<(IpAddr, Owner)> = all(st).filter(|(_, o)| !keep(o)).collect();
            for (ip, _) in &gone {
                match ip {
                    IpAddr::V4(a) => st.allocations.remove(a),
                    IpAddr::V6(a) => st.allocations6.remove(a),
                };
            }
            let changed = !gone.is_empty();
            Ok((gone, changed))
        })
    }
}

/// What one owner holds: at most one address of each family.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Held {
    pub v4: Option<Ipv4Addr>,
    pub v6: Option<Ipv6Addr>,
}

impl Held {
    pub fn is_empty(&self) -> bool {
        self.v4.is_none() && self.v6.is_none()
    }

    /// The addresses, IPv4 first.
    pub fn addrs(&self) -> Vec<IpAddr> {
        self.v4
            .map(IpAddr::V4)
            .into_iter()
            .chain(self.v6.map(IpAddr::V6))
            .collect()
    }
}

impl std::fmt::Display for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let a: Vec<String> = self.addrs().iter().map(|a| a.to_string()).collect();
        f.write_str(&a.join(" and "))
    }
}

fn held_by(st: &State, owner: &Owner) -> Held {
    Held {
        v4: st
            .allocations
            .iter()
            .find(|(_, o)| *o == owner)
            .map(|(ip, _)| *ip),
        v6: st
            .allocations6
            .iter()
            .find(|(_, o)| *o == owner)
            .map(|(ip, _)| *ip),
    }
}

fn all(st: &State) -> impl Iterator<Item = (IpAddr, Owner)> + '_ {
    st.allocations
        .iter()
        .map(|(ip, o)| (IpAddr::V4(*ip), o.clone()))
        .chain(
            st.allocations6
                .iter()
                .map(|(ip, o)| (IpAddr::V6(*ip), o.clone())),
        )
}

/// An address range of one family, as the allocator walks it.
trait Range<A> {
    /// Addresses in the range, reserved ones included.
    fn len(&self) -> u128;
    fn nth(&self, n: u128) -> Option<A>;
    fn offset_of(&self, ip: A) -> Option<u128>;
    fn assignable(&self, ip: A) -> bool;
    fn contains(&self, ip: A) -> bool;
    /// The range, for errors.
    fn subnet(&self) -> String;
}

impl Range<Ipv4Addr> for Pool {
    fn len(&self) -> u128 {
        self.subnet.size().into()
    }
    fn nth(&self, n: u128) -> Option<Ipv4Addr> {
        self.subnet.nth(u64::try_from(n).ok()?)
    }
    fn offset_of(&self, ip: Ipv4Addr) -> Option<u128> {
        self.subnet.offset_of(ip).map(u128::from)
    }
    fn assignable(&self, ip: Ipv4Addr) -> bool {
        Pool::assignable(self, ip)
    }
    fn contains(&self, ip: Ipv4Addr) -> bool {
        self.subnet.contains(ip)
    }
    fn subnet(&self) -> String {
        self.subnet.to_string()
    }
}

impl Range<Ipv6Addr> for Pool6 {
    fn len(&self) -> u128 {
        self.subnet.size()
    }
    fn nth(&self, n: u128) -> Option<Ipv6Addr> {
        self.subnet.nth(n)
    }
    fn offset_of(&self, ip: Ipv6Addr) -> Option<u128> {
        self.subnet.offset_of(ip)
    }
    fn assignable(&self, ip: Ipv6Addr) -> bool {
        Pool6::assignable(self, ip)
    }
    fn contains(&self, ip: Ipv6Addr) -> bool {
        self.subnet.contains(ip)
    }
    fn subnet(&self) -> String {
        self.subnet.to_string()
    }
}

/// The round-robin pick: the first free assignable address after the last one given.
/// Among any `k + 3` consecutive addresses at most `k` are allocated and at most three
/// reserved, so the walk is bounded by the allocations, not by the range (an IPv6 /64
/// has 2^64 addresses).
fn pick<A: Copy + Ord + Into<IpAddr>>(
    last: &mut Option<A>,
    allocations: &mut BTreeMap<A, Owner>,
    pool: &impl Range<A>,
    owner: &Owner,
) -> Result<(A, bool)> {
    if let Some((ip, _)) = allocations.iter().find(|(_, o)| *o == owner) {
        return Ok((*ip, false));
    }
    let n = pool.len();
    let start = last
        .and_then(|l| pool.offset_of(l))
        .map(|o| o.wrapping_add(1))
        .unwrap_or(1);
    let walk = n.min(allocations.len() as u128 + 4);
    for i in 0..walk {
        let ip = pool
            .nth(start.wrapping_add(i) % n)
            .expect("offset inside subnet");
        if pool.assignable(ip) && !allocations.contains_key(&ip) {
            allocations.insert(ip, owner.clone());
            *last = Some(ip);
            return Ok((ip, true));
        }
    }
    Err(Error::Exhausted {
        subnet: pool.subnet(),
        in_use: allocations
            .keys()
            .filter(|ip| pool.assignable(**ip))
            .count(),
    })
}

fn pick_exact<A: Copy + Ord + std::fmt::Display + Into<IpAddr>>(
    allocations: &mut BTreeMap<A, Owner>,
    pool: &impl Range<A>,
    owner: &Owner,
    ip: A,
) -> Result<(A, bool)> {
    let refuse = |why: String| Err(Error::Requested { ip: ip.into(), why });
    if let Some((held, _)) = allocations.iter().find(|(_, o)| *o == owner) {
        if *held == ip {
            return Ok((ip, false));
        }
        return refuse(format!(
            "container {} ({}) already holds {held}; delete it first",
            owner.container_id, owner.ifname
        ));
    }
    if !pool.contains(ip) {
        return refuse(format!("it is outside this node's pod CIDR {}; ask for an address in it, or schedule the pod on the node that owns {ip}", pool.subnet()));
    }
    if !pool.assignable(ip) {
        return refuse(format!(
            "it is the network, broadcast or gateway address of {}",
            pool.subnet()
        ));
    }
    if let Some(o) = allocations.get(&ip) {
        return refuse(format!(
            "it is taken by container {} ({}); pick another address, or delete that pod first",
            o.container_id, o.ifname
        ));
    }
    allocations.insert(ip, owner.clone());
    Ok((ip, true))
}

const MAGIC: &str = "podnet-ipam 1";

/// The two state copies, open for the duration of one locked operation.
struct Copies {
    files: [(PathBuf, File); 2],
    /// Generation of each copy; `None` if empty or damaged.
    gens: [Option<u64>; 2],
}

impl Copies {
    fn open(dir: &Path) -> Result<Copies> {
        let open = |name: &str| -> Result<(PathBuf, File)> {
            let p = dir.join(name);
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&p)
                .map_err(|source| Error::Read {
                    path: p.clone(),
                    source,
                })?;
            Ok((p, f))
        };
        Ok(Copies {
            files: [open("state.a")?, open("state.b")?],
            gens: [None, None],
        })
    }

    /// The newest intact copy; an empty state if there is none yet.
    fn read(&mut self) -> Result<State> {
        let mut best: Option<(u64, State)> = None;
        let mut damaged = false;
        for i in 0..2 {
            let (path, f) = &mut self.files[i];
            let mut buf = Vec::new();
            f.seek(SeekFrom::Start(0))
                .and_then(|_| f.read_to_end(&mut buf))
                .map_err(|source| Error::Read {
                    path: path.clone(),
                    source,
                })?;
            // An empty copy has never been written: it stands for the empty state,
            // generation 0 — the state before the very first change.
            let decoded = if buf.is_empty() {
                Some((0, State::default()))
            } else {
                decode(&buf)
            };
            match decoded {
                Some((gen, st)) => {
                    self.gens[i] = Some(gen);
                    if best.as_ref().is_none_or(|(g, _)| gen > *g) {
                        best = Some((gen, st));
                    }
                }
                None => damaged = true,
            }
        }
        match best {
            Some((_, st)) => Ok(st),
            None if damaged => Err(Error::Corrupt {
                path: self.files[0]
                    .0
                    .parent()
                    .unwrap_or(Path::new("."))
                    .to_path_buf(),
            }),
            None => Ok(State::default()),
        }
    }

    /// Writes `st` over the older (or damaged) copy with the next generation.
    fn write(&mut self, st: &State) -> Result<()> {
        let next = self.gens.iter().flatten().max().map_or(1, |g| g + 1);
        let target = match self.gens {
            [None, _] => 0,
            [_, None] => 1,
            [Some(a), Some(b)] => usize::from(a > b),
        };
        let body = serde_json::to_vec(st).expect("state serializes");
        let mut out = format!("{MAGIC} {next} {} {:016x}\n", body.len(), fnv1a(&body)).into_bytes();
        out.extend_from_slice(&body);
        let (path, f) = &self.files[target];
        f.write_all_at(&out, 0).map_err(|source| Error::Write {
            path: path.clone(),
            source,
        })?;
        self.gens[target] = Some(next);
        Ok(())
    }
}

fn decode(buf: &[u8]) -> Option<(u64, State)> {
    let nl = buf.iter().position(|&b| b == b'\n')?;
    let head = std::str::from_utf8(&buf[..nl]).ok()?;
    let rest = head.strip_prefix(MAGIC)?.trim();
    let mut parts = rest.split(' ');
    let gen: u64 = parts.next()?.parse().ok()?;
    let len: usize = parts.next()?.parse().ok()?;
    let sum = u64::from_str_radix(parts.next()?, 16).ok()?;
    let body = buf.get(nl + 1..nl + 1 + len)?;
    if fnv1a(body) != sum {
        return None;
    }
    Some((gen, serde_json::from_slice(body).ok()?))
}

/// FNV-1a, 64 bit: enough to tell a torn write from a whole one.
fn fnv1a(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &x| {
        (h ^ x as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Network names become directory names: keep them to a safe alphabet.
fn sanitize(network: &str) -> String {
    let s: String = network
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() || s == "." || s == ".." {
        "_".into()
    } else {
        s
    }
}

#[cfg(test)]
mod exact_tests {
    use super::*;

    #[test]
    fn a_requested_address_is_given_once_and_only_inside_the_pool() {
        let d = std::env::temp_dir().join(format!("podnet-ipam-exact-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let st = Store::open(&d, "n").unwrap();
        let p = Pool::new("10.9.0.0/24".parse().unwrap(), "10.9.0.1".parse().unwrap()).unwrap();
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        let a = Owner::new("a", "eth0");
        assert_eq!(
            st.allocate_exact(&p, &a, ip("10.9.0.7")).unwrap(),
            ip("10.9.0.7")
        );
        assert_eq!(
            st.allocate_exact(&p, &a, ip("10.9.0.7")).unwrap(),
            ip("10.9.0.7")
        );
        let e = st
            .allocate_exact(&p, &Owner::new("b", "eth0"), ip("10.9.0.7"))
            .unwrap_err();
        assert!(e.to_string().contains("taken by container a"), "{e}");
        let e = st
            .allocate_exact(&p, &Owner::new("b", "eth0"), ip("10.9.1.7"))
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("outside this node's pod CIDR 10.9.0.0/24"),
            "{e}"
        );
        let e = st
            .allocate_exact(&p, &Owner::new("b", "eth0"), ip("10.9.0.1"))
            .unwrap_err();
        assert!(e.to_string().contains("gateway"), "{e}");
        for reserved in ["10.9.0.0", "10.9.0.255"] {
            let e = st
                .allocate_exact(&p, &Owner::new("b", "eth0"), ip(reserved))
                .unwrap_err();
            assert!(e.to_string().contains("network, broadcast"), "{e}");
        }
        // The dynamic allocator never hands out a requested address.
        for i in 0..5 {
            assert_ne!(
                st.allocate(&p, &Owner::new(format!("d{i}"), "eth0"))
                    .unwrap(),
                ip("10.9.0.7")
            );
        }
        std::fs::remove_dir_all(&d).unwrap();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("podnet-ipam-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    fn pool(cidr: &str) -> Pool {
        let s: Ipv4Net = cidr.parse().unwrap();
        Pool::new(s, s.nth(1).unwrap()).unwrap()
    }

    #[test]
    fn never_assigns_network_gateway_broadcast_and_exhausts() {
        let d = tmpdir("exhaust");
        let st = Store::open(&d, "net").unwrap();
        let p = pool("10.9.0.0/29"); // .0 net, .1 gw, .7 bcast → .2-.6 usable
        assert_eq!(p.capacity(), 5);
        let mut got = HashSet::new();
        for i in 0..5 {
            let ip = st
                .allocate(&p, &Owner::new(format!("c{i}"), "eth0"))
                .unwrap();
            assert!(p.assignable(ip), "{ip}");
            assert!(got.insert(ip));
        }
        let e = st.allocate(&p, &Owner::new("c9", "eth0")).unwrap_err();
        assert!(matches!(e, Error::Exhausted { in_use: 5, .. }), "{e}");
        assert!(e.to_string().contains("GC"), "{e}");
        fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn idempotent_release_and_round_robin() {
        let d = tmpdir("rr");
        let st = Store::open(&d, "net").unwrap();
        let p = pool("10.9.0.0/24");
        let a = Owner::new("a", "eth0");
        let ip1 = st.allocate(&p, &a).unwrap();
        assert_eq!(st.allocate(&p, &a).unwrap(), ip1);
        assert_eq!(st.lookup(&a).unwrap().v4, Some(ip1));
        assert_eq!(st.release(&a).unwrap().v4, Some(ip1));
        assert!(st.release(&a).unwrap().is_empty());
        let ip2 = st.allocate(&p, &Owner::new("b", "eth0")).unwrap();
        assert_ne!(ip1, ip2, "a freed address is not reused at once");
        fs::remove_dir_all(d).unwrap();
    }

    fn pool6(cidr: &str) -> Pool6 {
        let s: Ipv6Net = cidr.parse().unwrap();
        Pool6::new(s, s.nth(1).unwrap()).unwrap()
    }

    /// A dual-stack attachment holds one address of each family, under one owner:
    /// idempotent per family, released and collected together, and the IPv6 walk
    /// stays short over a /64 (2^64 addresses) and skips what is taken.
    #[test]
    fn dual_stack_owners_hold_one_address_of_each_family() {
        let d = tmpdir("dual");
        let st = Store::open(&d, "net").unwrap();
        let (p4, p6) = (pool("10.9.0.0/24"), pool6("fd00:9::/64"));
        let a = Owner::new("a", "eth0");
        let v4 = st.allocate(&p4, &a).unwrap();
        let v6 = st.allocate6(&p6, &a).unwrap();
        assert_eq!(v6, "fd00:9::2".parse::<Ipv6Addr>().unwrap());
        assert_eq!(st.allocate6(&p6, &a).unwrap(), v6, "idempotent");
        assert_eq!(
            st.lookup(&a).unwrap(),
            Held {
                v4: Some(v4),
                v6: Some(v6)
            }
        );
        // Requested: another owner cannot take a's address, nor the gateway or the
        // subnet-router anycast address, nor one outside the range.
        let b = Owner::new("b", "eth0");
        for (want, why) in [
            ("fd00:9::2", "taken by container a"),
            ("fd00:9::1", "gateway"),
            ("fd00:9::", "network"),
            ("fd00:8::7", "outside this node's pod CIDR fd00:9::/64"),
        ] {
            let e = st
                .allocate_exact6(&p6, &b, want.parse().unwrap())
                .unwrap_err();
            assert!(e.to_string().contains(why), "{want}: {e}");
        }
        let want: Ipv6Addr = "fd00:9::3".parse().unwrap();
        assert_eq!(st.allocate_exact6(&p6, &b, want).unwrap(), want);
        // The cursor moves past both: the next pod gets ::4.
        let c = st.allocate6(&p6, &Owner::new("c", "eth0")).unwrap();
        assert_eq!(c, "fd00:9::4".parse::<Ipv6Addr>().unwrap());
        assert_eq!(st.list_all().unwrap().len(), 4);
        let gone = st.retain(|o| o.container_id != "c").unwrap();
        assert_eq!(gone, vec![(IpAddr::V6(c), Owner::new("c", "eth0"))]);
        let r = st.release(&a).unwrap();
        assert_eq!(r.addrs(), vec![IpAddr::V4(v4), IpAddr::V6(v6)]);
        assert_eq!(r.to_string(), format!("{v4} and {v6}"));
        assert!(st.lookup(&a).unwrap().is_empty());
        // An IPv4-only state file carries no IPv6 keys.
        let st2 = Store::open(&d, "v4only").unwrap();
        st2.allocate(&p4, &a).unwrap();
        let text = fs::read_to_string(st2.dir().join("state.a")).unwrap();
        assert!(
            !text.contains("allocations6") && !text.contains("last6"),
            "{text}"
        );
        fs::remove_dir_all(d).unwrap();
    }

    /// One change for both families: when the IPv6 side cannot be given, the IPv4
    /// address is not taken either.
    #[test]
    fn both_families_are_given_together_or_not_at_all() {
        let d = tmpdir("dual-all");
        let st = Store::open(&d, "net").unwrap();
        let (p4, p6) = (pool("10.9.0.0/24"), pool6("fd00:9::/126"));
        let a = Owner::new("a", "eth0");
        let got = st.allocate_all(&p4, Some(&p6), &a, (None, None)).unwrap();
        assert_eq!(got.v6, Some("fd00:9::2".parse().unwrap()));
        assert_eq!(
            st.allocate_all(&p4, Some(&p6), &a, (None, None)).unwrap(),
            got
        );
        let b = Owner::new("b", "eth0");
        let e = st
            .allocate_all(
                &p4,
                Some(&p6),
                &b,
                (None, Some("fd00:9::2".parse().unwrap())),
            )
            .unwrap_err();
        assert!(e.to_string().contains("taken by container a"), "{e}");
        assert!(
            st.lookup(&b).unwrap().is_empty(),
            "b got half an allocation"
        );
        // Without an IPv6 pool an IPv6 request is not used.
        let c = Owner::new("c", "eth0");
        let only4 = st
            .allocate_all(&p4, None, &c, (None, Some("fd00:9::3".parse().unwrap())))
            .unwrap();
        assert!(only4.v4.is_some() && only4.v6.is_none());
        fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn a_small_ipv6_pool_exhausts() {
        let d = tmpdir("dual-exhaust");
        let st = Store::open(&d, "net").unwrap();
        let p = pool6("fd00:9::/126"); // ::0 anycast, ::1 gateway: ::2 and ::3
        for i in 0..2 {
            st.allocate6(&p, &Owner::new(format!("c{i}"), "eth0"))
                .unwrap();
        }
        let e = st.allocate6(&p, &Owner::new("c9", "eth0")).unwrap_err();
        assert!(matches!(e, Error::Exhausted { in_use: 2, .. }), "{e}");
        assert!(Pool6::new("fd00:9::/64".parse().unwrap(), "fd00:9::".parse().unwrap()).is_err());
        assert!(Pool6::new("fe80::/64".parse().unwrap(), "fe80::1".parse().unwrap()).is_err());
        fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn retain_frees_the_rest() {
        let d = tmpdir("gc");
        let st = Store::open(&d, "net").unwrap();
        let p = pool("10.9.0.0/24");
        for c in ["a", "b", "c"] {
            st.allocate(&p, &Owner::new(c, "eth0")).unwrap();
        }
        let gone = st.retain(|o| o.container_id == "b").unwrap();
        assert_eq!(gone.len(), 2);
        assert!(gone.iter().all(|(ip, _)| ip.is_ipv4()));
        let left = st.list().unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].1.container_id, "b");
        fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn concurrent_allocations_are_unique() {
        let d = tmpdir("conc");
        let p = pool("10.9.0.0/24");
        let ips: Vec<Ipv4Addr> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..48)
                .map(|i| {
                    let d = &d;
                    s.spawn(move || {
                        Store::open(d, "net")
                            .unwrap()
                            .allocate(&p, &Owner::new(format!("c{i}"), "eth0"))
                            .unwrap()
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let set: HashSet<_> = ips.iter().collect();
        assert_eq!(set.len(), 48);
        fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn a_torn_write_falls_back_to_the_other_copy() {
        let d = tmpdir("torn");
        let st = Store::open(&d, "net").unwrap();
        let p = pool("10.9.0.0/24");
        let a = st.allocate(&p, &Owner::new("a", "eth0")).unwrap(); // gen 1 -> state.a
        let b = st.allocate(&p, &Owner::new("b", "eth0")).unwrap(); // gen 2 -> state.b
                                                                    // Tear the newest copy (state.b) as a kill -9 midway through its write would.
        let path = st.dir().join("state.b");
        let mut bytes = fs::read(&path).unwrap();
        let n = bytes.len();
        bytes[n - 3] ^= 0xff;
        fs::write(&path, &bytes).unwrap();
        let list = st.list().unwrap();
        assert_eq!(
            list,
            vec![(a, Owner::new("a", "eth0"))],
            "falls back to generation 1"
        );
        // The next change overwrites the damaged copy and moves on.
        let c = st.allocate(&p, &Owner::new("c", "eth0")).unwrap();
        assert_eq!(st.list().unwrap().len(), 2);
        assert_ne!(c, a);
        let _ = b;
        // Both copies damaged: a clear error naming the directory.
        fs::write(st.dir().join("state.a"), b"garbage").unwrap();
        fs::write(st.dir().join("state.b"), b"garbage").unwrap();
        let e = st.list().unwrap_err();
        assert!(matches!(e, Error::Corrupt { .. }), "{e}");
        assert!(e.to_string().contains(&st.dir().display().to_string()));
        fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn a_torn_first_write_falls_back_to_the_empty_state() {
        let d = tmpdir("torn-first");
        let st = Store::open(&d, "net").unwrap();
        fs::write(st.dir().join("state.a"), b"podnet-ipam 1 1 999 00").unwrap();
        fs::write(st.dir().join("state.b"), b"").unwrap();
        assert!(st.list().unwrap().is_empty());
        let p = pool("10.9.0.0/24");
        st.allocate(&p, &Owner::new("a", "eth0")).unwrap();
        assert_eq!(st.list().unwrap().len(), 1);
        fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn a_held_lock_times_out_as_busy() {
        let d = tmpdir("busy");
        let st = Store::open(&d, "net")
            .unwrap()
            .with_lock_timeout(std::time::Duration::from_millis(50));
        let held = File::create(st.dir().join("lock")).unwrap();
        // SAFETY: flock on an fd we own.
        assert_eq!(unsafe { libc::flock(held.as_raw_fd(), libc::LOCK_EX) }, 0);
        let e = st.list().unwrap_err();
        assert!(matches!(e, Error::Busy { .. }), "{e}");
        drop(held);
        assert!(st.list().unwrap().is_empty());
        fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn pool_validation() {
        let s: Ipv4Net = "10.9.0.0/24".parse().unwrap();
        assert!(Pool::new(s, "10.9.0.0".parse().unwrap()).is_err());
        assert!(Pool::new(s, "10.9.1.1".parse().unwrap()).is_err());
        let tiny: Ipv4Net = "10.9.0.0/31".parse().unwrap();
        assert!(Pool::new(tiny, "10.9.0.1".parse().unwrap()).is_err());
        assert_eq!(sanitize("../x y"), ".._x_y");
    }

    /// A pool over everything, loopback, link-local, multicast or the broadcast
    /// range: an error, not 2^32 addresses to scan or pods on 127.0.0.2.
    #[test]
    fn pools_no_node_can_have() {
        for (cidr, gw) in [
            ("0.0.0.0/0", "0.0.0.1"),
            ("8.0.0.0/7", "8.0.0.1"),
            ("127.0.0.0/24", "127.0.0.1"),
            ("169.254.0.0/16", "169.254.0.1"),
            ("224.0.0.0/24", "224.0.0.1"),
            ("255.255.255.0/24", "255.255.255.1"),
        ] {
            let e = Pool::new(cidr.parse().unwrap(), gw.parse().unwrap()).unwrap_err();
            assert!(matches!(e, Error::Pool { .. }), "{cidr}: {e}");
        }
    }

    /// Whatever a caller passes, the wait stays between 1 ms and 60 s.
    #[test]
    fn lock_timeout_is_bounded() {
        let d = tmpdir("bounds");
        let st = Store::open(&d, "net").unwrap();
        let t = |d: std::time::Duration| st.clone().with_lock_timeout(d).lock_timeout;
        assert_eq!(
            t(std::time::Duration::ZERO),
            std::time::Duration::from_millis(1)
        );
        assert_eq!(
            t(std::time::Duration::MAX),
            std::time::Duration::from_secs(60)
        );
        assert_eq!(t(DEFAULT_LOCK_TIMEOUT), DEFAULT_LOCK_TIMEOUT);
        fs::remove_dir_all(d).unwrap();
    }
}
