//! Upgrades of the eBPF datapath's maps: this build's maps are made in a staging
//! directory, compared with those pinned under their names, and either dropped (same
//! definitions: the pinned ones are reused) or renamed over them as a new generation
//! (module doc of [`super::maps`], "Upgrades").

use super::maps::{
    err, EbpfDatapath, AFTER_TRANSLATION, AFTER_TRANSLATION_L3, BPF_FS_MAGIC, FILTER_FAST_IN,
    FILTER_FAST_UNDERLAY, FILTER_IN, FILTER_OUT, FILTER_SVC_OUT, FILTER_SVC_OUT_L3, FROM_OVERLAY,
    FROM_POD, FROM_UNDERLAY, OBJECT, TO_POD,
};
use crate::Failure;
use aya::{Ebpf, EbpfLoader};
use std::collections::BTreeMap;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::Path;

/// Where a new generation of maps is made before it takes the pinned names (bpffs
/// refuses names with a dot).
pub(super) const STAGING: &str = "next_generation";

/// A map's definition as the kernel holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct MapDef {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    flags: u32,
}

impl std::fmt::Display for MapDef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "type {}, {}-byte keys, {}-byte values, {} entries, flags {:#x}",
            self.map_type, self.key_size, self.value_size, self.max_entries, self.flags
        )
    }
}

/// `BPF_OBJ_GET_INFO_BY_FD`: fills `info` (a `struct bpf_map_info` or `bpf_prog_info`
/// as far as it goes; the kernel wants whatever it does not know to be zero).
pub(super) fn obj_info(fd: BorrowedFd<'_>, info: &mut [u8]) -> std::io::Result<()> {
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    let mut attr = [0u8; 16];
    attr[0..4].copy_from_slice(&(fd.as_raw_fd() as u32).to_ne_bytes());
    attr[4..8].copy_from_slice(&(info.len() as u32).to_ne_bytes());
    attr[8..16].copy_from_slice(&(info.as_mut_ptr() as u64).to_ne_bytes());
    // SAFETY: attr names `info`, a buffer we own, with its length.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            attr.as_mut_ptr(),
            attr.len(),
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

pub(super) fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(b[at..at + 4].try_into().unwrap())
}

/// The definition of the map pinned at `path`: `None` if nothing is pinned there, an
/// error if it cannot be read or is not a map.
pub(super) fn pinned_def(path: &Path) -> Result<Option<MapDef>, Failure> {
    if std::fs::symlink_metadata(path).is_err() {
        return Ok(None);
    }
    let fd = podnet_netlink::bpf::obj_get(path).map_err(Failure::from)?;
    // A program and a map answer BPF_OBJ_GET_INFO_BY_FD alike: tell them by the fd.
    let kind = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .map_err(|e| err(&format!("inspect {}", path.display()), e))?;
    if kind.to_string_lossy() != "anon_inode:bpf-map" {
        return Err(format!("not a map ({})", kind.to_string_lossy()).into());
    }
    // type, id, key_size, value_size, max_entries, map_flags, name[16], …
    let mut info = [0u8; 48];
    obj_info(fd.as_fd(), &mut info).map_err(|e| err(&format!("inspect {}", path.display()), e))?;
    Ok(Some(MapDef {
        map_type: u32_at(&info, 0),
        key_size: u32_at(&info, 8),
        value_size: u32_at(&info, 12),
        max_entries: u32_at(&info, 16),
        flags: u32_at(&info, 20),
    }))
}

/// The layout version: FNV-1a of every pinned map's name and definition.
pub(super) fn layout_version(defs: &BTreeMap<String, MapDef>) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for (name, d) in defs {
        let fields = [d.map_type, d.key_size, d.value_size, d.max_entries, d.flags];
        for b in name
            .bytes()
            .chain([0])
            .chain(fields.iter().flat_map(|f| f.to_le_bytes()))
        {
            h ^= u32::from(b);
            h = h.wrapping_mul(0x0100_0193);
        }
    }
    format!("{h:08x}")
}

/// What makes two loaded programs the same: the same id, or the same instructions (tag)
/// on the same maps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct ProgIdent {
    id: u32,
    tag: [u8; 8],
    maps: Vec<u32>,
}

impl ProgIdent {
    pub(super) fn of(fd: BorrowedFd<'_>) -> std::io::Result<ProgIdent> {
        // bpf_prog_info: type, id, tag[8] at 8, …, nr_map_ids at 52, map_ids at 56.
        let mut info = [0u8; 232];
        obj_info(fd, &mut info)?;
        let mut maps = vec![0u32; u32_at(&info, 52) as usize];
        if !maps.is_empty() {
            let mut again = [0u8; 232];
            again[52..56].copy_from_slice(&(maps.len() as u32).to_ne_bytes());
            again[56..64].copy_from_slice(&(maps.as_mut_ptr() as u64).to_ne_bytes());
            obj_info(fd, &mut again)?;
        }
        maps.sort_unstable();
        Ok(ProgIdent {
            id: u32_at(&info, 4),
            tag: info[8..16].try_into().unwrap(),
            maps,
        })
    }

    pub(super) fn same(&self, other: &ProgIdent) -> bool {
        self.id == other.id || (self.tag == other.tag && self.maps == other.maps)
    }
}

/// The tc filters this datapath's programs run as: (program, filter name, on egress).
pub(super) const FILTERS: [(&str, &str, bool); 6] = [
    (FROM_POD, FILTER_OUT, false),
    (TO_POD, FILTER_IN, true),
    (FROM_OVERLAY, FILTER_FAST_IN, false),
    (FROM_UNDERLAY, FILTER_FAST_UNDERLAY, false),
    (AFTER_TRANSLATION, FILTER_SVC_OUT, true),
    (AFTER_TRANSLATION_L3, FILTER_SVC_OUT_L3, true),
];

/// Whether `dir` is on a bpffs.
pub fn on_bpffs(dir: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs into a zeroed struct we own.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    (unsafe { libc::statfs(c.as_ptr(), &mut st) } == 0) && st.f_type as i64 == BPF_FS_MAGIC
}

impl EbpfDatapath {
    /// The maps, loaded: those pinned in `dir` if they have this build's definitions,
    /// else a new generation of them all, pinned under their names (module doc,
    /// "Upgrades"). Returns the loaded object (programs not loaded yet) and the
    /// layout version.
    pub(super) fn maps(dir: &Path) -> Result<(Ebpf, String), Failure> {
        let stage = dir.join(STAGING);
        // Left by a start that stopped half-way: pins only, and whatever still uses
        // those maps holds them itself.
        let _ = std::fs::remove_dir_all(&stage);
        std::fs::create_dir_all(&stage)
            .map_err(|e| err(&format!("create {}", stage.display()), e))?;
        let fresh = EbpfLoader::new()
            .default_map_pin_directory(&stage)
            .load(OBJECT)
            .map_err(|e| err("load bpf/policy.c", e))?;
        let mut defs = BTreeMap::new();
        let entries =
            std::fs::read_dir(&stage).map_err(|e| err(&format!("read {}", stage.display()), e))?;
        for entry in entries {
            let entry = entry.map_err(|e| err(&format!("read {}", stage.display()), e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let def = pinned_def(&entry.path())?
                .ok_or_else(|| format!("{} vanished", entry.path().display()))?;
            defs.insert(name, def);
        }
        let layout = layout_version(&defs);
        let mut reused = 0;
        let differ: Vec<String> = defs
            .iter()
            .filter_map(|(name, want)| match pinned_def(&dir.join(name)) {
                Ok(None) => None,
                Ok(Some(have)) if have == *want => {
                    reused += 1;
                    None
                }
                Ok(Some(have)) => Some(format!("{name} is {have}, this build's is {want}")),
                Err(e) => Some(format!("{name}: {e}")),
            })
            .collect();
        if differ.is_empty() {
            drop(fresh);
            let _ = std::fs::remove_dir_all(&stage);
            let bpf = EbpfLoader::new()
                .default_map_pin_directory(dir)
                .load(OBJECT)
                .map_err(|e| err("load bpf/policy.c", e))?;
            tracing::info!(
                "policy: eBPF map layout {layout}: {reused} of {} maps pinned in {} reused (same definitions as this build's), the others made",
                defs.len(),
                dir.display()
            );
            return Ok((bpf, layout));
        }
        tracing::warn!(
            "policy: eBPF map layout mismatch in {}: {}; a new generation of every map (layout {layout}) replaces the pinned ones; running pods keep their programs and the old maps until the first round has programmed their verdicts, then their filters are replaced",
            dir.display(),
            differ.join("; ")
        );
        for name in defs.keys() {
            std::fs::rename(stage.join(name), dir.join(name)).map_err(|e| {
                err(
                    &format!("pin the new map {name} at {}", dir.join(name).display()),
                    e,
                )
            })?;
        }
        let _ = std::fs::remove_dir_all(&stage);
        Ok((fresh, layout))
    }
}
