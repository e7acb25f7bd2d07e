//! eBPF objects already loaded: finding programs and maps by id or pin, reading and
//! writing map entries with u32 keys (listing and deleting those of any key size), and
//! running a program on a test packet (`BPF_PROG_TEST_RUN`).
//!
//! Loading is not done here: podnet's programs are loaded with aya (podnet-cni for the
//! anti-spoofing program, podnetd for the policy). These few calls are what the tools
//! need afterwards, where they hold only an id or a path (`podnet` reading counters,
//! podnet-cni writing a pod's entry), without the loader's object model.

use crate::error::{Error, Result};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

const BPF_MAP_LOOKUP_ELEM: u32 = 1;
const BPF_MAP_UPDATE_ELEM: u32 = 2;
const BPF_MAP_DELETE_ELEM: u32 = 3;
const BPF_MAP_GET_NEXT_KEY: u32 = 4;
const BPF_OBJ_PIN: u32 = 6;
const BPF_OBJ_GET: u32 = 7;
const BPF_PROG_TEST_RUN: u32 = 10;
const BPF_PROG_GET_FD_BY_ID: u32 = 13;
const BPF_MAP_GET_FD_BY_ID: u32 = 14;
const BPF_OBJ_GET_INFO_BY_FD: u32 = 15;
const BPF_MAP_LOOKUP_BATCH: u32 = 24;

/// `union bpf_attr`, as raw bytes (144 bytes in current kernels).
struct Attr([u8; 144]);

impl Attr {
    fn new() -> Attr {
        Attr([0; 144])
    }
    fn u32(&mut self, off: usize, v: u32) -> &mut Attr {
        self.0[off..off + 4].copy_from_slice(&v.to_ne_bytes());
        self
    }
    fn u64(&mut self, off: usize, v: u64) -> &mut Attr {
        self.0[off..off + 8].copy_from_slice(&v.to_ne_bytes());
        self
    }
    fn get_u32(&self, off: usize) -> u32 {
        u32::from_ne_bytes(self.0[off..off + 4].try_into().unwrap())
    }
}

fn sys_bpf(cmd: u32, attr: &mut Attr) -> io::Result<i64> {
    // SAFETY: attr is a valid, fully initialised buffer of the size we pass.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.0.as_mut_ptr(), attr.0.len()) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn fd_of(r: i64) -> OwnedFd {
    // SAFETY: a successful bpf() call that returns an fd hands us its ownership.
    unsafe { OwnedFd::from_raw_fd(r as RawFd) }
}

/// `BPF_MAP_TYPE_RINGBUF`.
pub const MAP_TYPE_RINGBUF: u32 = 27;

/// Removes `key`; absent is success.
pub fn delete(map: &OwnedFd, key: u32) -> Result<()> {
    let mut a = Attr::new();
    a.u32(0, map.as_raw_fd() as u32)
        .u64(8, &key as *const u32 as u64);
    match sys_bpf(BPF_MAP_DELETE_ELEM, &mut a) {
        Ok(_) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        Err(e) => Err(Error::io("delete from BPF map", format!("key {key}"), e)),
    }
}

/// Every key of a map with u32 keys.
pub fn keys(map: &OwnedFd) -> Result<Vec<u32>> {
    let mut out = Vec::new();
    let mut cur: Option<u32> = None;
    loop {
        let mut next = 0u32;
        let mut a = Attr::new();
        a.u32(0, map.as_raw_fd() as u32)
            .u64(8, cur.as_ref().map_or(0, |k| k as *const u32 as u64))
            .u64(16, &mut next as *mut u32 as u64);
        match sys_bpf(BPF_MAP_GET_NEXT_KEY, &mut a) {
            Ok(_) => {
                out.push(next);
                cur = Some(next);
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(out),
            Err(e) => return Err(Error::io("list BPF map keys", "", e)),
        }
    }
}

/// Every key of a map, whatever its key size (`map.key_size` bytes each): a few
/// `BPF_MAP_LOOKUP_BATCH` calls of 4096 entries (Linux 5.6+, hash maps), else one
/// `BPF_MAP_GET_NEXT_KEY` per key. Entries added or removed meanwhile may or may not
/// be seen.
pub fn raw_keys(map: &OwnedFd, info: &MapInfo) -> Result<Vec<Vec<u8>>> {
    // Per-CPU maps have per-CPU values, which the batch would have to size.
    const PERCPU: [u32; 3] = [5, 6, 10];
    if !PERCPU.contains(&info.map_type) {
        match keys_batched(map, info) {
            Ok(keys) => return Ok(keys),
            // EINVAL/ENOTSUPP (524): no batch operations here. ENOSPC: a bucket larger
            // than the batch. Either way, key by key.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOSPC | 524)) => {}
            Err(e) => return Err(Error::io("list BPF map keys", info.name.clone(), e)),
        }
    }
    let ks = info.key_size as usize;
    let mut out: Vec<Vec<u8>> = Vec::new();
    loop {
        let mut next = vec![0u8; ks];
        let mut a = Attr::new();
        a.u32(0, map.as_raw_fd() as u32)
            .u64(8, out.last().map_or(0, |k| k.as_ptr() as u64))
            .u64(16, next.as_mut_ptr() as u64);
        match sys_bpf(BPF_MAP_GET_NEXT_KEY, &mut a) {
            Ok(_) => out.push(next),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(out),
            Err(e) => return Err(Error::io("list BPF map keys", info.name.clone(), e)),
        }
    }
}

fn keys_batched(map: &OwnedFd, info: &MapInfo) -> io::Result<Vec<Vec<u8>>> {
    const BATCH: usize = 4096;
    let (ks, vs) = (info.key_size as usize, info.value_size as usize);
    let mut keys = vec![0u8; ks * BATCH];
    let mut values = vec![0u8; vs * BATCH];
    // The position token: a bucket number for hash maps, a key for others.
    let (mut token_in, mut token_out) = (vec![0u8; ks.max(8)], vec![0u8; ks.max(8)]);
    let mut out = Vec::new();
    let mut first = true;
    loop {
        let mut a = Attr::new();
        a.u64(0, if first { 0 } else { token_in.as_ptr() as u64 })
            .u64(8, token_out.as_mut_ptr() as u64)
            .u64(16, keys.as_mut_ptr() as u64)
            .u64(24, values.as_mut_ptr() as u64)
            .u32(32, BATCH as u32)
            .u32(36, map.as_raw_fd() as u32);
        let r = sys_bpf(BPF_MAP_LOOKUP_BATCH, &mut a);
        let n = (a.get_u32(32) as usize).min(BATCH);
        let done = match r {
            Ok(_) => false,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => true,
            Err(e) => return Err(e),
        };
        out.extend(keys[..n * ks].chunks(ks).map(<[u8]>::to_vec));
        if done {
            return Ok(out);
        }
        std::mem::swap(&mut token_in, &mut token_out);
        first = false;
    }
}

/// Removes the entry with key `key` (exactly the map's key size); absent is success.
pub fn delete_raw(map: &OwnedFd, info: &MapInfo, key: &[u8]) -> Result<()> {
    if key.len() != info.key_size as usize {
        return Err(Error::Malformed {
            op: "delete from BPF map",
            obj: info.name.clone(),
            why: format!(
                "a {}-byte key for a map of {}-byte keys",
                key.len(),
                info.key_size
            ),
        });
    }
    let mut a = Attr::new();
    a.u32(0, map.as_raw_fd() as u32).u64(8, key.as_ptr() as u64);
    match sys_bpf(BPF_MAP_DELETE_ELEM, &mut a) {
        Ok(_) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        Err(e) => Err(Error::io("delete from BPF map", info.name.clone(), e)),
    }
}

/// A name field of `struct bpf_prog_info`/`bpf_map_info` (16 bytes, NUL-padded).
fn info_name(info: &[u8], off: usize) -> String {
    let b = &info[off..off + 16];
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// What the kernel says of a map (`bpftool map show` shows the same).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapInfo {
    /// `BPF_MAP_TYPE_*` (1 hash, 27 ring buffer, …).
    pub map_type: u32,
    pub name: String,
    pub key_size: u32,
    pub value_size: u32,
}

/// What the kernel says of a loaded program.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProgInfo {
    pub name: String,
    /// The ids of the maps it uses.
    pub map_ids: Vec<u32>,
}

/// One `BPF_OBJ_GET_INFO_BY_FD` on a map.
pub fn map_info(map: &OwnedFd) -> Result<MapInfo> {
    let info = obj_info(map, &mut [])?;
    let u = |o: usize| u32::from_ne_bytes(info[o..o + 4].try_into().unwrap());
    Ok(MapInfo {
        map_type: u(0),
        name: info_name(&info, 24),
        key_size: u(8),
        value_size: u(12),
    })
}

/// One `BPF_OBJ_GET_INFO_BY_FD` on a program: its name and the maps it uses.
pub fn prog_info(prog: &OwnedFd) -> Result<ProgInfo> {
    let mut ids = [0u32; 16];
    let info = obj_info(prog, &mut ids)?;
    let n = u32::from_ne_bytes(info[52..56].try_into().unwrap()) as usize;
    Ok(ProgInfo {
        name: info_name(&info, 64),
        map_ids: ids[..n.min(ids.len())].to_vec(),
    })
}

/// The kernel copies the map's own key and value sizes: a buffer of any other size
/// would be overrun, so every access checks them first.
fn check_sizes(map: &OwnedFd, value_len: Option<usize>) -> Result<usize> {
    let m = map_info(map)?;
    let vs = m.value_size as usize;
    if m.key_size != 4 || value_len.is_some_and(|l| l != vs) {
        return Err(Error::Malformed {
            op: "access BPF map",
            obj: m.name,
            why: format!(
                "it has {}-byte keys and {vs}-byte values, not 4-byte keys{}; it was made by another podnet build",
                m.key_size,
                value_len.map(|l| format!(" and {l}-byte values")).unwrap_or_default()
            ),
        });
    }
    Ok(vs)
}

/// Writes `value` at `key` (a u32); `value` must be exactly the map's value size.
pub fn update(map: &OwnedFd, key: u32, value: &[u8]) -> Result<()> {
    check_sizes(map, Some(value.len()))?;
    let mut a = Attr::new();
    a.u32(0, map.as_raw_fd() as u32)
        .u64(8, &key as *const u32 as u64)
        .u64(16, value.as_ptr() as u64)
        .u64(24, 0);
    sys_bpf(BPF_MAP_UPDATE_ELEM, &mut a)
        .map(|_| ())
        .map_err(|e| Error::io("update BPF map", format!("key {key}"), e))
}

/// Reads the value at `key` (a u32), as long as the map says values are;
/// `None` if the key is absent.
pub fn lookup(map: &OwnedFd, key: u32) -> Result<Option<Vec<u8>>> {
    let mut v = vec![0u8; check_sizes(map, None)?];
    let mut a = Attr::new();
    a.u32(0, map.as_raw_fd() as u32)
        .u64(8, &key as *const u32 as u64)
        .u64(16, v.as_mut_ptr() as u64);
    match sys_bpf(BPF_MAP_LOOKUP_ELEM, &mut a) {
        Ok(_) => Ok(Some(v)),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(Error::io("read BPF map", format!("key {key}"), e)),
    }
}

/// BPF_OBJ_GET_INFO_BY_FD for a program or map: the raw info struct (its first
/// fields are `type`, `id` for both). For a program, `map_ids` receives its map ids.
fn obj_info(fd: &OwnedFd, map_ids: &mut [u32]) -> Result<[u8; 232]> {
    let mut info = [0u8; 232];
    if !map_ids.is_empty() {
        info[52..56].copy_from_slice(&(map_ids.len() as u32).to_ne_bytes());
        info[56..64].copy_from_slice(&(map_ids.as_mut_ptr() as u64).to_ne_bytes());
    }
    let mut a = Attr::new();
    a.u32(0, fd.as_raw_fd() as u32)
        .u32(4, info.len() as u32)
        .u64(8, info.as_mut_ptr() as u64);
    sys_bpf(BPF_OBJ_GET_INFO_BY_FD, &mut a)
        .map_err(|e| Error::io("inspect BPF object", format!("fd {}", fd.as_raw_fd()), e))?;
    Ok(info)
}

fn info_id(fd: &OwnedFd) -> Result<u32> {
    Ok(u32::from_ne_bytes(
        obj_info(fd, &mut [])?[4..8].try_into().unwrap(),
    ))
}

/// The kernel id of a loaded program.
pub fn prog_id(prog: &OwnedFd) -> Result<u32> {
    info_id(prog)
}

/// The kernel id of a map.
pub fn map_id(map: &OwnedFd) -> Result<u32> {
    info_id(map)
}

/// Opens the program with kernel id `id`.
pub fn prog_by_id(id: u32) -> Result<OwnedFd> {
    let mut a = Attr::new();
    a.u32(0, id);
    sys_bpf(BPF_PROG_GET_FD_BY_ID, &mut a)
        .map(fd_of)
        .map_err(|e| Error::io("open BPF program", format!("id {id}"), e))
}

/// Opens the map with kernel id `id`.
pub fn map_by_id(id: u32) -> Result<OwnedFd> {
    let mut a = Attr::new();
    a.u32(0, id);
    sys_bpf(BPF_MAP_GET_FD_BY_ID, &mut a)
        .map(fd_of)
        .map_err(|e| Error::io("open BPF map", format!("id {id}"), e))
}

/// `path` as the C string a bpffs call takes (a NUL inside is refused, for `op`).
fn c_path(op: &'static str, path: &std::path::Path) -> Result<std::ffi::CString> {
    std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| {
        Error::io(
            op,
            path.display().to_string(),
            io::Error::from(io::ErrorKind::InvalidInput),
        )
    })
}

/// Opens a program or map pinned at `path` in a bpffs (`BPF_OBJ_GET`): how podnet-cni
/// finds the policy programs podnetd pinned, without a loader of its own.
pub fn obj_get(path: &std::path::Path) -> Result<OwnedFd> {
    let c = c_path("open pinned BPF object", path)?;
    let mut a = Attr::new();
    a.u64(0, c.as_ptr() as u64);
    sys_bpf(BPF_OBJ_GET, &mut a)
        .map(fd_of)
        .map_err(|e| Error::io("open pinned BPF object", path.display().to_string(), e))
}

/// Pins the program or map `fd` at `path` in a bpffs (`BPF_OBJ_PIN`): the pin holds
/// the object until it is unlinked.
pub fn obj_pin(fd: &OwnedFd, path: &std::path::Path) -> Result<()> {
    let c = c_path("pin BPF object", path)?;
    let mut a = Attr::new();
    a.u64(0, c.as_ptr() as u64).u32(8, fd.as_raw_fd() as u32);
    sys_bpf(BPF_OBJ_PIN, &mut a)
        .map(|_| ())
        .map_err(|e| Error::io("pin BPF object", path.display().to_string(), e))
}

/// Runs `prog` once on `packet` (an Ethernet frame); returns the program's verdict.
pub fn test_run(prog: &OwnedFd, packet: &[u8]) -> Result<u32> {
    let mut out = vec![0u8; packet.len() + 256];
    let mut a = Attr::new();
    a.u32(0, prog.as_raw_fd() as u32)
        .u32(8, packet.len() as u32)
        .u32(12, out.len() as u32)
        .u64(16, packet.as_ptr() as u64)
        .u64(24, out.as_mut_ptr() as u64)
        .u32(32, 1);
    sys_bpf(BPF_PROG_TEST_RUN, &mut a).map_err(|e| Error::io("test-run BPF program", "", e))?;
    Ok(a.get_u32(4))
}
