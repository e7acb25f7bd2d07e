//! Anti-spoofing: the kernel objects that stop one pod from stealing another's traffic.
//!
//! # What exists
//! Per node (per network namespace holding pod veths): the program `podnet_from_pod`
//! (`bpf/from_pod.c`), its hash map `podnet_pods`, keyed by host veth ifindex, and its
//! ring buffer of drop events `podnet_spoofev`. They are loaded by the first ADD with
//! aya (maps made from the object's BTF declarations, sized by the plugin), and found again by later ones through a small record,
//! `<dataDir>/datapath-ns<netns inode>` (program id, map id, and a tag of the program
//! build: after an upgrade new pods get the new program, old ones keep theirs). With
//! a bpffs directory to hold them (podnetd's `--bpf-dir`, published in its node file,
//! or the config's `bpfDir`) the program and the map are pinned there,
//! `<dir>/antispoof-ns<netns inode>/{prog,map}`, so they outlive the node's last pod:
//! loading costs 40–70 ms (aya parses the kernel's BTF and probes its features), which
//! an ADD on a node that has had pods before should not pay again. The newest load
//! replaces the pins; the old program lives on while old pods' filters use it.
//! Without such a directory the kernel frees them with the node's last pod.
//!
//! Per pod, on the **ingress of its host-side veth** — every frame the pod sends,
//! before the bridge sees it (before MAC learning, before ARP reaches the node or
//! another pod):
//! - a map entry: the pod's MAC and IP, and one drop counter per reason in
//!   `bpf/drop_reasons.h`, written before the veth comes up on the bridge;
//! - a `clsact` qdisc and one tc filter, `bpf` in direct-action mode, running the
//!   program. A veth whose entry is missing drops everything (fail closed).
//!
//! `tc filter show dev <host veth> ingress` shows the filter; `podnet` reads the
//! counters through the filter's program id.
//!
//! # Why this shape
//! The filter dies with the veth, so a pod can leave no stale rule behind; DEL only
//! removes the map entry. Loading and verifying the program costs ~0.8 ms, so it is
//! loaded once per node rather than per pod. (An nftables chain per pod was tried
//! first: removing one makes every later close of an nftables socket wait for an RCU
//! grace period while holding the nftables commit lock, which serialized concurrent
//! DELs at ~10 ms each. This kernel has no flower or gact for plain tc rules.)

use aya::programs::SchedClassifier;
use aya::EbpfLoader;
use podnet_netlink::socket::Request;
use podnet_netlink::{bpf, tc, Error, Netns, Result, Socket};
use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

pub use podnet_netlink::antispoof::{
    installed_prog, pod_state, read_state, state_bytes, state_size, OverlayGuard, PodState,
    DROP_REASONS, PROG_NAME,
};

/// The compiled datapath program (see build.rs).
static OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/from_pod.o"));

/// The map's name (its symbol in `bpf/from_pod.c`, and so its name in the kernel).
const MAP_NAME: &str = "podnet_pods";
/// The ring buffer of drop events.
const EVENTS_NAME: &str = "podnet_spoofev";
/// Pods one node's map can hold.
const MAX_PODS: u32 = 16384;

/// The node's loaded program and its map.
pub struct Datapath {
    pub prog: OwnedFd,
    pub map: OwnedFd,
}

fn record_path(data_dir: &Path) -> Result<PathBuf> {
    Ok(data_dir.join(format!("datapath-ns{}", Netns::current()?.inode())))
}

/// Identifies the program this build carries (FNV-1a of the object, computed by the
/// build script), so that a node running an older program loads this one for its new
/// pods after an upgrade.
fn object_tag() -> &'static str {
    include_str!(concat!(env!("OUT_DIR"), "/from_pod.tag"))
}

/// The node's datapath recorded under `data_dir`, if its program is still loaded and
/// is this build's.
pub fn find(data_dir: &Path) -> Result<Option<Datapath>> {
    let Ok(text) = std::fs::read_to_string(record_path(data_dir)?) else {
        return Ok(None);
    };
    let mut w = text.split_whitespace();
    let (Some(Ok(p)), Some(Ok(m)), Some(tag)) = (
        w.next().map(str::parse::<u32>),
        w.next().map(str::parse::<u32>),
        w.next(),
    ) else {
        return Ok(None);
    };
    if tag != object_tag() {
        return Ok(None);
    }
    // Ids are only reused after the id space wraps; the names, the program using
    // exactly this map, and the map's entry size confirm they are ours and belong
    // together.
    let (Ok(prog), Ok(map)) = (bpf::prog_by_id(p), bpf::map_by_id(m)) else {
        return Ok(None);
    };
    let (pi, mi) = (bpf::prog_info(&prog)?, bpf::map_info(&map)?);
    if pi.name != PROG_NAME
        || mi.name != MAP_NAME
        || !pi.map_ids.contains(&m)
        || mi.value_size as usize != state_size()
    {
        return Ok(None);
    }
    Ok(Some(Datapath { prog, map }))
}

/// Loads the program with aya: its two maps are made from the object's BTF
/// declarations, sized here, and held by the program alone (no pins).
fn load() -> Result<(OwnedFd, OwnedFd)> {
    // The kernel refused: say what it needs (a verifier rejection carries the
    // verifier's log among the error's sources).
    let refused = |op: &'static str, e: &dyn std::error::Error| {
        Error::Malformed {
        op,
        obj: PROG_NAME.into(),
        why: format!("{}; is this kernel built with BPF and tc clsact (CONFIG_BPF_SYSCALL, CONFIG_NET_CLS_ACT)?", VerboseError(e)),
    }
    };
    // The embedded object lacks what this code expects: a build mistake (the unit test
    // `object_declares_the_program_and_its_two_maps` guards against it).
    let built_wrong = |what: &str| {
        Error::Malformed {
        op: "find in the embedded bpf/from_pod.o",
        obj: what.into(),
        why: "podnet-cni was built from a bpf/from_pod.c that does not declare it; build podnet-cni again from one source tree".into(),
    }
    };
    let mut obj = EbpfLoader::new()
        .map_max_entries(MAP_NAME, MAX_PODS)
        .map_max_entries(EVENTS_NAME, podnet_netlink::antispoof::EVENTS_BYTES)
        .load(OBJECT)
        .map_err(|e| refused("load the maps of", &e))?;
    let prog: &mut SchedClassifier = obj
        .program_mut(PROG_NAME)
        .and_then(|p| p.try_into().ok())
        .ok_or_else(|| built_wrong("the tc program podnet_from_pod"))?;
    prog.load().map_err(|e| refused("load", &e))?;
    let dup = |fd: std::os::fd::BorrowedFd<'_>, what: &str| {
        fd.try_clone_to_owned()
            .map_err(|e| Error::io("duplicate the fd of", what.to_string(), e))
    };
    let prog_fd = dup(
        prog.fd().map_err(|e| refused("load", &e))?.as_fd(),
        PROG_NAME,
    )?;
    let map_fd = match obj.map(MAP_NAME) {
        Some(aya::maps::Map::HashMap(m)) => dup(m.fd().as_fd(), MAP_NAME)?,
        _ => return Err(built_wrong("the hash map podnet_pods")),
    };
    // Dropping the loader closes its own fds; the kernel objects live on through the
    // duplicates (and, once attached, through the filters).
    Ok((prog_fd, map_fd))
}

/// Shows an error with its sources (aya puts the verifier's log in one of them).
struct VerboseError<'a>(&'a dyn std::error::Error);

impl std::fmt::Display for VerboseError<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut src = self.0.source();
        while let Some(e) = src {
            write!(f, ": {e}")?;
            src = e.source();
        }
        Ok(())
    }
}

/// Pins the program and the map under `dir` (a bpffs directory) unless this very
/// program is pinned there already (one `BPF_OBJ_GET` per ADD); a pin of an older
/// program is replaced. The pins hold them between pods (module doc).
pub fn hold(dir: &Path, dp: &Datapath) -> Result<()> {
    let d = dir.join(format!("antispoof-ns{}", Netns::current()?.inode()));
    let prog_pin = d.join("prog");
    let want = bpf::prog_id(&dp.prog)?;
    if bpf::obj_get(&prog_pin).is_ok_and(|p| bpf::prog_id(&p).is_ok_and(|id| id == want)) {
        return Ok(());
    }
    std::fs::create_dir_all(&d).map_err(|e| Error::io("create", d.display().to_string(), e))?;
    // Each pin made beside its final name and renamed over it: a reader sees the old
    // pin or the new one, and two ADDs pinning at once both succeed.
    for (fd, name) in [(&dp.map, "map"), (&dp.prog, "prog")] {
        // (No dots: bpffs refuses them in names.)
        let tmp = d.join(format!("{name}-tmp{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        bpf::obj_pin(fd, &tmp)?;
        std::fs::rename(&tmp, d.join(name))
            .map_err(|e| Error::io("rename the pin", tmp.display().to_string(), e))?;
    }
    Ok(())
}

/// The node's datapath: found through its record, or loaded and recorded.
pub fn datapath(data_dir: &Path) -> Result<Datapath> {
    if let Some(dp) = find(data_dir)? {
        return Ok(dp);
    }
    if OBJECT.is_empty() {
        return Err(Error::Malformed {
            op: "load BPF program",
            obj: PROG_NAME.into(),
            why: "podnet-cni was built with PODNET_SKIP_BPF=1, so it has no anti-spoofing program; install clang and build it again without PODNET_SKIP_BPF".into(),
        });
    }
    // One loader per node at a time. Loading costs tens of milliseconds (aya reads the
    // kernel's BTF first), so ADDs that arrive together on a node with no program yet
    // wait for the first one and then find its program, instead of each loading one.
    let path = record_path(data_dir)?;
    let lock_path = path.with_extension("lock");
    std::fs::create_dir_all(data_dir)
        .map_err(|e| Error::io("create", data_dir.display().to_string(), e))?;
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| Error::io("open the lock", lock_path.display().to_string(), e))?;
    // SAFETY: flock on an fd we own; released when `lock` closes or the process dies.
    if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) } != 0 {
        return Err(Error::io(
            "lock",
            lock_path.display().to_string(),
            std::io::Error::last_os_error(),
        ));
    }
    if let Some(dp) = find(data_dir)? {
        return Ok(dp);
    }
    let (prog, map) = load()?;
    let ids = format!(
        "{} {} {}\n",
        bpf::prog_id(&prog)?,
        bpf::map_id(&map)?,
        object_tag()
    );
    // Written whole and renamed into place, so a reader never pairs one program with
    // another's map.
    let write = || -> std::io::Result<()> {
        std::fs::create_dir_all(data_dir)?;
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, ids.as_bytes())?;
        std::fs::rename(&tmp, &path)
    };
    write().map_err(|e| Error::io("record the datapath in", path.display().to_string(), e))?;
    Ok(Datapath { prog, map })
}

/// Writes the pod's entry: to be done before its veth can carry traffic.
pub fn set_pod(
    dp: &Datapath,
    host_ifindex: u32,
    mac: [u8; 6],
    ip: Ipv4Addr,
    ip6: Option<(std::net::Ipv6Addr, u8)>,
    guard: &OverlayGuard,
) -> Result<()> {
    bpf::update(&dp.map, host_ifindex, &state_bytes(mac, ip, ip6, guard))
}

/// Removes the entry of the pod whose host veth was `host_ifindex` with MAC `host_mac`
/// (host and pod MACs share their last four bytes), unless the index already belongs
/// to another pod.
pub fn forget_pod(data_dir: &Path, host_ifindex: u32, host_mac: &[u8]) -> Result<()> {
    let Some(dp) = find(data_dir)? else {
        return Ok(());
    };
    if let Some(v) = bpf::lookup(&dp.map, host_ifindex)? {
        if host_mac.len() == 6 && v[2..6] == host_mac[2..6] {
            bpf::delete(&dp.map, host_ifindex)?;
        }
    }
    Ok(())
}

/// Removes the entries whose index `live` rejects (GC). `live` must look the link up
/// at the time of the call, so an ADD in flight keeps its entry.
pub fn sweep(data_dir: &Path, mut live: impl FnMut(u32) -> bool) -> Result<usize> {
    let Some(dp) = find(data_dir)? else {
        return Ok(0);
    };
    let mut n = 0;
    for k in bpf::keys(&dp.map)? {
        if !live(k) {
            bpf::delete(&dp.map, k)?;
            n += 1;
        }
    }
    Ok(n)
}

/// The filter that puts `prog` on the ingress of host veth `ifindex` (its clsact
/// qdisc must exist).
pub fn filter_request(ifindex: u32, prog: &OwnedFd) -> Request {
    tc::bpf_ingress_request(ifindex, 1, prog, PROG_NAME)
}

/// Drop counters of the pod behind host veth `ifindex`.
pub fn counters(sock: &mut Socket, ifindex: u32) -> Result<Vec<(String, u64)>> {
    pod_state(sock, ifindex)?
        .map(|s| s.drops)
        .ok_or_else(|| Error::NotFound {
            op: "read drop counters of",
            obj: format!("link {ifindex}"),
            ext: Some("no podnet filter or datapath entry for it".into()),
        })
}

/// True if the protection is complete on host veth `ifindex`: filter and entry.
pub fn is_installed(sock: &mut Socket, ifindex: u32) -> Result<bool> {
    Ok(pod_state(sock, ifindex)?.is_some())
}

pub use podnet_conventions::{alias_netns, owner_alias, parse_owner_alias};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_build_tag_is_the_objects_hash() {
        let h = OBJECT.iter().fold(0xcbf29ce484222325u64, |h, b| {
            (h ^ *b as u64).wrapping_mul(0x100000001b3)
        });
        assert_eq!(object_tag(), format!("{h:016x}"));
    }

    #[test]
    fn state_layout_matches_the_c_struct() {
        let guard = OverlayGuard {
            ports: [8472, 51820],
            cluster: Some((Ipv4Addr::new(10, 244, 0, 0), 16)),
            node_prefix: 24,
            cluster6_prefix: 0,
        };
        let v = state_bytes([1, 2, 3, 4, 5, 6], Ipv4Addr::new(10, 0, 0, 5), None, &guard);
        assert_eq!(v.len(), 56 + 8 * DROP_REASONS.len());
        assert_eq!(&v[..6], &[1, 2, 3, 4, 5, 6]);
        assert_eq!(&v[8..12], &[10, 0, 0, 5]);
        // Host order, as the program compares them with be32().
        assert_eq!(&v[12..14], &8472u16.to_ne_bytes());
        assert_eq!(&v[14..16], &51820u16.to_ne_bytes());
        assert_eq!(&v[16..20], &0x0af4_0000u32.to_ne_bytes());
        assert_eq!(&v[20..24], &0xffff_0000u32.to_ne_bytes());
        assert_eq!(&v[24..28], &0xffff_ff00u32.to_ne_bytes());
        // Without a cluster CIDR the mask is 0: the ports are closed everywhere.
        let none = state_bytes(
            [0; 6],
            Ipv4Addr::new(10, 0, 0, 5),
            None,
            &OverlayGuard::default(),
        );
        assert_eq!(&none[20..24], &[0; 4]);
    }

    #[test]
    fn alias_roundtrip() {
        let a = owner_alias("net1", "abc", "eth0", "/run/netns/p").unwrap();
        assert_eq!(parse_owner_alias(&a), Some(("net1", "eth0", "abc")));
        assert_eq!(alias_netns(&a), Some("/run/netns/p"));
        let long = owner_alias("net1", "abc", "eth0", &"x".repeat(300)).unwrap();
        assert_eq!(parse_owner_alias(&long), Some(("net1", "eth0", "abc")));
        // The owner is never cut short: a too long one is refused.
        assert_eq!(
            owner_alias(&"n".repeat(200), &"c".repeat(60), "eth0", "/p"),
            None
        );
        let edge = owner_alias("n", &"c".repeat(255 - 30), "eth0", "/p");
        assert!(edge.is_some_and(|a| a.len() <= 255));
        assert_eq!(alias_netns(&long), None);
        assert_eq!(parse_owner_alias("something else"), None);
    }

    #[test]
    fn object_declares_the_program_and_its_maps() {
        let obj = aya_obj::Object::parse(OBJECT).expect("from_pod.o parses");
        assert!(
            obj.programs.contains_key(PROG_NAME),
            "{:?}",
            obj.programs.keys()
        );
        let mut maps: Vec<_> = obj.maps.keys().map(String::as_str).collect();
        maps.sort();
        assert_eq!(
            maps,
            [MAP_NAME, EVENTS_NAME, "podnet_spooflost", "podnet_spoofrl"]
        );
        // The entry the plugin writes is the one the program reads.
        assert_eq!(obj.maps[MAP_NAME].value_size() as usize, state_size());
        assert_eq!(obj.maps[MAP_NAME].key_size(), 4);
    }
}
