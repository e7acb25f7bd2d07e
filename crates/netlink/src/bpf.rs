//! eBPF: loading a program from a clang-built ELF object, the maps it uses, reading
//! them back by id, and running a program on a test packet (`BPF_PROG_TEST_RUN`).
//!
//! The loader is deliberately small: one program section, whose map references (the
//! `R_BPF_64_64` relocations on `ld_imm64` instructions) are resolved against maps the
//! caller created. No BTF, no CO-RE: podnet's programs read only stable UAPI fields.
//! A verifier rejection keeps the verifier's log in the error.

use crate::error::{Error, Result};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

const BPF_MAP_CREATE: u32 = 0;
const BPF_MAP_LOOKUP_ELEM: u32 = 1;
const BPF_MAP_UPDATE_ELEM: u32 = 2;
const BPF_MAP_DELETE_ELEM: u32 = 3;
const BPF_MAP_GET_NEXT_KEY: u32 = 4;
const BPF_PROG_LOAD: u32 = 5;
const BPF_OBJ_GET: u32 = 7;
const BPF_PROG_TEST_RUN: u32 = 10;
const BPF_PROG_GET_FD_BY_ID: u32 = 13;
const BPF_MAP_GET_FD_BY_ID: u32 = 14;
const BPF_OBJ_GET_INFO_BY_FD: u32 = 15;
const BPF_MAP_TYPE_HASH: u32 = 1;
const BPF_F_NO_PREALLOC: u32 = 1;
/// Program type for tc classifiers.
pub const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
const BPF_PSEUDO_MAP_FD: u8 = 1;

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
    fn name(&mut self, off: usize, name: &str) -> &mut Attr {
        let b = name.as_bytes();
        let n = b.len().min(15);
        self.0[off..off + n].copy_from_slice(&b[..n]);
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

/// Creates a hash map with u32 keys, allocating entries only as they are written.
pub fn create_hash(name: &str, value_size: u32, max_entries: u32) -> Result<OwnedFd> {
    let mut a = Attr::new();
    a.u32(0, BPF_MAP_TYPE_HASH)
        .u32(4, 4)
        .u32(8, value_size)
        .u32(12, max_entries)
        .u32(16, BPF_F_NO_PREALLOC)
        .name(28, name);
    sys_bpf(BPF_MAP_CREATE, &mut a)
        .map(fd_of)
        .map_err(|e| Error::io("create BPF map", name, e))
}

/// `BPF_MAP_TYPE_RINGBUF`.
pub const MAP_TYPE_RINGBUF: u32 = 27;

/// Creates a ring buffer of `bytes` (a power of two, a multiple of the page size):
/// programs write records to it, one reader takes them.
pub fn create_ringbuf(name: &str, bytes: u32) -> Result<OwnedFd> {
    let mut a = Attr::new();
    a.u32(0, MAP_TYPE_RINGBUF)
        .u32(4, 0)
        .u32(8, 0)
        .u32(12, bytes)
        .name(28, name);
    sys_bpf(BPF_MAP_CREATE, &mut a)
        .map(fd_of)
        .map_err(|e| Error::io("create BPF ring buffer", name, e))
}

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

/// One program's instructions and the map symbols it references.
#[derive(Clone, Debug)]
pub struct Program {
    pub insns: Vec<u8>,
    /// `(instruction index, symbol name)` of every map reference.
    pub map_refs: Vec<(usize, String)>,
    pub license: String,
}

fn rd<const N: usize>(b: &[u8], off: usize) -> Option<[u8; N]> {
    b.get(off..off + N)?.try_into().ok()
}
fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    rd::<2>(b, off).map(u16::from_le_bytes)
}
fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    rd::<4>(b, off).map(u32::from_le_bytes)
}
fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    rd::<8>(b, off).map(u64::from_le_bytes)
}
fn cstr(b: &[u8], off: usize) -> Option<String> {
    let s = b.get(off..)?;
    let end = s.iter().position(|&c| c == 0)?;
    Some(String::from_utf8_lossy(&s[..end]).into_owned())
}

struct Section {
    name: String,
    kind: u32,
    offset: usize,
    size: usize,
    link: u32,
    info: u32,
}

/// Extracts the program in section `section` from an ELF64 little-endian object.
pub fn parse_object(elf: &[u8], section: &str) -> Result<Program> {
    let bad = |why: &str| Error::Malformed {
        op: "read BPF object",
        obj: section.into(),
        why: why.into(),
    };
    if elf.get(..4) != Some(b"\x7fELF") || elf.get(4) != Some(&2) || elf.get(5) != Some(&1) {
        return Err(bad(
            "not a 64-bit little-endian ELF object (was clang given -target bpf?)",
        ));
    }
    let shoff = u64_at(elf, 0x28).ok_or_else(|| bad("short header"))? as usize;
    let shnum = u16_at(elf, 0x3c).ok_or_else(|| bad("short header"))? as usize;
    let shstrndx = u16_at(elf, 0x3e).ok_or_else(|| bad("short header"))? as usize;
    let raw: Vec<(u32, u32, usize, usize, u32, u32)> = (0..shnum)
        .map(|i| {
            let h = shoff + i * 64;
            Some((
                u32_at(elf, h)?,
                u32_at(elf, h + 4)?,
                u64_at(elf, h + 24)? as usize,
                u64_at(elf, h + 32)? as usize,
                u32_at(elf, h + 40)?,
                u32_at(elf, h + 44)?,
            ))
        })
        .collect::<Option<_>>()
        .ok_or_else(|| bad("truncated section table"))?;
    let strtab_off = raw.get(shstrndx).ok_or_else(|| bad("no section names"))?.2;
    let secs: Vec<Section> = raw
        .iter()
        .map(|&(name, kind, offset, size, link, info)| Section {
            name: cstr(elf, strtab_off + name as usize).unwrap_or_default(),
            kind,
            offset,
            size,
            link,
            info,
        })
        .collect();
    let body = |s: &Section| {
        elf.get(s.offset..s.offset + s.size)
            .ok_or_else(|| bad("section outside the file"))
    };
    let (idx, prog) = secs
        .iter()
        .enumerate()
        .find(|(_, s)| s.name == section)
        .ok_or_else(|| bad("no such section"))?;
    let insns = body(prog)?.to_vec();
    let license = secs
        .iter()
        .find(|s| s.name == "license")
        .and_then(|s| cstr(body(s).ok()?, 0))
        .unwrap_or_else(|| "GPL".into());
    let mut map_refs = Vec::new();
    // SHT_REL sections that apply to the program section.
    for rel in secs
        .iter()
        .filter(|s| s.kind == 9 && s.info as usize == idx)
    {
        let symtab = secs
            .get(rel.link as usize)
            .ok_or_else(|| bad("relocation without symbols"))?;
        let strtab = secs
            .get(symtab.link as usize)
            .ok_or_else(|| bad("symbols without names"))?;
        let (syms, names) = (body(symtab)?, body(strtab)?);
        for r in body(rel)?.chunks_exact(16) {
            let off = u64_at(r, 0).unwrap() as usize;
            let sym = (u64_at(r, 8).unwrap() >> 32) as usize;
            let name_off = u32_at(syms, sym * 24).ok_or_else(|| bad("bad symbol index"))? as usize;
            map_refs.push((off / 8, cstr(names, name_off).unwrap_or_default()));
        }
    }
    Ok(Program {
        insns,
        map_refs,
        license,
    })
}

/// Loads `prog` as a tc classifier, resolving each map symbol through `maps`.
pub fn load(prog: &Program, name: &str, maps: &[(&str, &OwnedFd)]) -> Result<OwnedFd> {
    let mut insns = prog.insns.clone();
    for (i, sym) in &prog.map_refs {
        let fd = maps
            .iter()
            .find(|(n, _)| n == sym)
            .map(|(_, f)| f.as_raw_fd())
            .ok_or_else(|| Error::Malformed {
                op: "load BPF program",
                obj: name.into(),
                why: format!("no map given for symbol {sym}"),
            })?;
        let at = i * 8;
        if insns.get(at) != Some(&0x18) {
            return Err(Error::Malformed {
                op: "load BPF program",
                obj: name.into(),
                why: format!("relocation at {i} is not a 64-bit load"),
            });
        }
        insns[at + 1] = (insns[at + 1] & 0x0f) | (BPF_PSEUDO_MAP_FD << 4);
        insns[at + 4..at + 8].copy_from_slice(&fd.to_ne_bytes());
    }
    let license = std::ffi::CString::new(prog.license.clone()).unwrap_or_default();
    let mut log = vec![0u8; 0];
    for attempt in 0..2 {
        let mut a = Attr::new();
        a.u32(0, BPF_PROG_TYPE_SCHED_CLS)
            .u32(4, (insns.len() / 8) as u32)
            .u64(8, insns.as_ptr() as u64)
            .u64(16, license.as_ptr() as u64)
            .name(48, name);
        if attempt == 1 {
            // Second try only to collect the verifier's explanation.
            log = vec![0u8; 1 << 20];
            a.u32(24, 1)
                .u32(28, log.len() as u32)
                .u64(32, log.as_mut_ptr() as u64);
        }
        match sys_bpf(BPF_PROG_LOAD, &mut a) {
            Ok(fd) => return Ok(fd_of(fd)),
            Err(e) if attempt == 1 => {
                let text =
                    String::from_utf8_lossy(&log[..log.iter().position(|&b| b == 0).unwrap_or(0)])
                        .into_owned();
                let tail: String = text
                    .lines()
                    .rev()
                    .take(12)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect::<Vec<_>>()
                    .join("\n");
                return Err(Error::Kernel {
                    op: "load BPF program",
                    obj: name.into(),
                    source: e,
                    ext: Some(format!("verifier log:\n{tail}")),
                });
            }
            Err(_) => {}
        }
    }
    unreachable!("the loop returns on its second attempt")
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

/// Opens a program or map pinned at `path` in a bpffs (`BPF_OBJ_GET`): how podnet-cni
/// finds the policy programs podnetd pinned, without a loader of its own.
pub fn obj_get(path: &std::path::Path) -> Result<OwnedFd> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| {
        Error::io(
            "open pinned BPF object",
            path.display().to_string(),
            io::Error::from(io::ErrorKind::InvalidInput),
        )
    })?;
    let mut a = Attr::new();
    a.u64(0, c.as_ptr() as u64);
    sys_bpf(BPF_OBJ_GET, &mut a)
        .map(fd_of)
        .map_err(|e| Error::io("open pinned BPF object", path.display().to_string(), e))
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
