//! Every struct podnet-bpf-abi generates from `bpf/abi.h` against the BTF of the
//! compiled programs: each program is built with clang as the crates' build.rs files
//! build it, and in each object's BTF every generated struct that is there must have
//! the Rust type's size (`size_of`) and the same fields, by name, in the same order, at
//! the same byte offsets (`offset_of`) with the same sizes. An LPM key's data type
//! (`PeerData`) is compared with its key's fields after the prefix length. Every struct
//! must be in the BTF of at least one program (a map's key, value or ring-buffer record
//! puts it there).

use podnet_bpf_abi::{Layout, LAYOUTS};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The programs, as crates/cni/build.rs and crates/agent/build.rs compile them.
const PROGRAMS: &[&str] = &["from_pod", "policy", "underlay"];
const CFLAGS: &[&str] = &["-O2", "-g", "-Wall", "-Werror", "-target", "bpf", "-c"];

/// A directory of this test's own, removed when dropped (also when the test panics).
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let dir = std::env::temp_dir().join(format!(
            "podnet-bpf-abi-layout-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn compile(src: &Path, obj: &Path) -> Vec<u8> {
    let clang = std::env::var("CLANG").unwrap_or_else(|_| "clang".into());
    match Command::new(&clang)
        .args(CFLAGS)
        .arg(src)
        .arg("-o")
        .arg(obj)
        .status()
    {
        Ok(s) if s.success() => {}
        Ok(s) => panic!("{clang} failed to compile {} ({s})", src.display()),
        Err(e) => panic!(
            "cannot run {clang} ({e}): this test compiles the eBPF programs to read their BTF. \
             Install clang (apt-get install clang, or ./scripts/setup.sh); \
             set CLANG=/path/to/clang if it is not on PATH"
        ),
    }
    std::fs::read(obj).unwrap_or_else(|e| panic!("read {}: {e}", obj.display()))
}

fn btf_section(obj: &[u8], what: &str) -> Vec<u8> {
    use object::{Object, ObjectSection};
    let file = object::File::parse(obj).unwrap_or_else(|e| panic!("{what}: not an object: {e}"));
    let section = file
        .section_by_name(".BTF")
        .unwrap_or_else(|| panic!("{what} has no .BTF section (built without -g?)"));
    section
        .data()
        .unwrap_or_else(|e| panic!("{what}: .BTF: {e}"))
        .to_vec()
}

#[test]
fn every_shared_struct_matches_the_programs_btf() {
    let bpf = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bpf");
    let tmp = TempDir::new();
    let mut found: HashMap<&str, Vec<&str>> = HashMap::new();
    let mut problems = Vec::new();
    for program in PROGRAMS {
        let src = bpf.join(format!("{program}.c"));
        let obj = compile(&src, &tmp.0.join(format!("{program}.o")));
        let what = format!("{program}.o");
        let structs = btf::structs(&btf_section(&obj, &what))
            .unwrap_or_else(|e| panic!("{what}: unreadable BTF: {e}"));
        for layout in LAYOUTS {
            let Some(s) = structs.get(layout.c_name) else {
                continue;
            };
            found.entry(layout.rust_name).or_default().push(program);
            problems.extend(
                compare(layout, s)
                    .into_iter()
                    .map(|p| format!("{what}: {p}")),
            );
        }
    }
    for layout in LAYOUTS {
        if !found.contains_key(layout.rust_name) {
            problems.push(format!(
                "struct {} is in no program's BTF: use it in a map definition (key, value, or \
                 `__type(record, ...)` for a ring buffer), or it is no longer shared",
                layout.c_name
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "the generated Rust (podnet-bpf-abi) and the programs' BTF disagree:\n  {}",
        problems.join("\n  ")
    );
    // Something was compared: every struct of abi.h, in some program.
    assert!(!LAYOUTS.is_empty());
    eprintln!(
        "{} structs checked: {}",
        LAYOUTS.len(),
        LAYOUTS
            .iter()
            .map(|l| format!("{} ({})", l.rust_name, found[l.rust_name].join(", ")))
            .collect::<Vec<_>>()
            .join("; ")
    );
}

/// What differs between the Rust layout and the BTF struct of the same name.
fn compare(layout: &Layout, s: &btf::Struct) -> Vec<String> {
    let mut out = Vec::new();
    let name = layout.c_name;
    let rust = layout.rust_name;
    let base = layout.c_offset;
    if s.size.checked_sub(base) != Some(layout.size) {
        out.push(format!(
            "struct {name}: BTF size {} (from byte {base} on), size_of::<{rust}>() {}",
            s.size, layout.size
        ));
    }
    // The members from byte `base` on (an LPM key's data: after the prefix length).
    let members: Vec<&btf::Member> = s.members.iter().filter(|m| m.offset >= base).collect();
    let btf_names: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
    let rust_names: Vec<&str> = layout.fields.iter().map(|f| f.name).collect();
    if btf_names != rust_names {
        out.push(format!(
            "struct {name}: BTF fields {btf_names:?}, {rust} fields {rust_names:?}"
        ));
    }
    for f in layout.fields {
        let Some(m) = members.iter().find(|m| m.name == f.name) else {
            continue;
        };
        if m.offset != base + f.offset || m.size != f.size {
            out.push(format!(
                "struct {name}.{}: BTF offset {} size {}, {rust} offset {} (+{base}) size {}",
                f.name, m.offset, m.size, f.offset, f.size
            ));
        }
    }
    out
}

/// Just enough of BTF (the kernel's Documentation/bpf/btf.rst) to list the named
/// structs of an object with their size and members.
mod btf {
    use std::collections::HashMap;

    pub struct Member {
        pub name: String,
        /// In bytes.
        pub offset: usize,
        pub size: usize,
    }

    pub struct Struct {
        pub size: usize,
        pub members: Vec<Member>,
    }

    const KIND_INT: u32 = 1;
    const KIND_PTR: u32 = 2;
    const KIND_ARRAY: u32 = 3;
    const KIND_STRUCT: u32 = 4;
    const KIND_UNION: u32 = 5;
    const KIND_ENUM: u32 = 6;
    const KIND_FWD: u32 = 7;
    const KIND_TYPEDEF: u32 = 8;
    const KIND_VOLATILE: u32 = 9;
    const KIND_CONST: u32 = 10;
    const KIND_RESTRICT: u32 = 11;
    const KIND_FUNC: u32 = 12;
    const KIND_FUNC_PROTO: u32 = 13;
    const KIND_VAR: u32 = 14;
    const KIND_DATASEC: u32 = 15;
    const KIND_FLOAT: u32 = 16;
    const KIND_DECL_TAG: u32 = 17;
    const KIND_TYPE_TAG: u32 = 18;
    const KIND_ENUM64: u32 = 19;

    struct Type {
        name_off: u32,
        kind: u32,
        kind_flag: bool,
        /// size or type, by kind.
        size_type: u32,
        /// Struct and union members: (name offset, type, offset).
        members: Vec<(u32, u32, u32)>,
        /// Arrays: (element type, number of elements).
        array: Option<(u32, u32)>,
    }

    fn u32_at(b: &[u8], at: usize) -> Result<u32, String> {
        b.get(at..at + 4)
            .map(|s| u32::from_le_bytes(s.try_into().unwrap()))
            .ok_or_else(|| format!("truncated at byte {at}"))
    }

    /// The named structs of the BTF blob `b` (a little-endian object's .BTF section).
    pub fn structs(b: &[u8]) -> Result<HashMap<String, Struct>, String> {
        match b.get(0..2) {
            Some([0x9f, 0xeb]) => {}
            Some([0xeb, 0x9f]) => return Err("big-endian BTF is not supported".into()),
            _ => return Err("no BTF magic".into()),
        }
        let hdr_len = u32_at(b, 4)? as usize;
        let type_off = u32_at(b, 8)? as usize;
        let type_len = u32_at(b, 12)? as usize;
        let str_off = u32_at(b, 16)? as usize;
        let str_len = u32_at(b, 20)? as usize;
        let types_bytes = b
            .get(hdr_len + type_off..hdr_len + type_off + type_len)
            .ok_or("type section out of bounds")?;
        let strings = b
            .get(hdr_len + str_off..hdr_len + str_off + str_len)
            .ok_or("string section out of bounds")?;
        let string = |off: u32| -> Result<String, String> {
            let s = strings
                .get(off as usize..)
                .ok_or("string offset out of bounds")?;
            let end = s
                .iter()
                .position(|&c| c == 0)
                .ok_or("unterminated string")?;
            String::from_utf8(s[..end].to_vec()).map_err(|e| e.to_string())
        };

        // Type ids start at 1; 0 is void.
        let mut types: Vec<Type> = Vec::new();
        let mut at = 0;
        while at < types_bytes.len() {
            let name_off = u32_at(types_bytes, at)?;
            let info = u32_at(types_bytes, at + 4)?;
            let size_type = u32_at(types_bytes, at + 8)?;
            at += 12;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let mut t = Type {
                name_off,
                kind,
                kind_flag: info >> 31 == 1,
                size_type,
                members: Vec::new(),
                array: None,
            };
            at += match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_PTR | KIND_FWD | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT
                | KIND_FUNC | KIND_FLOAT | KIND_TYPE_TAG => 0,
                KIND_ARRAY => {
                    t.array = Some((u32_at(types_bytes, at)?, u32_at(types_bytes, at + 8)?));
                    12
                }
                KIND_STRUCT | KIND_UNION => {
                    for m in 0..vlen {
                        let o = at + 12 * m;
                        t.members.push((
                            u32_at(types_bytes, o)?,
                            u32_at(types_bytes, o + 4)?,
                            u32_at(types_bytes, o + 8)?,
                        ));
                    }
                    12 * vlen
                }
                KIND_ENUM | KIND_FUNC_PROTO => 8 * vlen,
                KIND_DATASEC | KIND_ENUM64 => 12 * vlen,
                other => return Err(format!("unknown BTF kind {other}")),
            };
            types.push(t);
        }
        let by_id = |id: u32| -> Result<&Type, String> {
            id.checked_sub(1)
                .and_then(|i| types.get(i as usize))
                .ok_or_else(|| format!("type id {id} out of range"))
        };
        let size_of =
            |mut id: u32| -> Result<usize, String> {
                let mut count = 1usize;
                for _ in 0..32 {
                    let t = by_id(id)?;
                    match t.kind {
                        KIND_INT | KIND_STRUCT | KIND_UNION | KIND_ENUM | KIND_ENUM64
                        | KIND_FLOAT => return Ok(count * t.size_type as usize),
                        KIND_PTR => return Ok(count * 8),
                        KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT
                        | KIND_TYPE_TAG => id = t.size_type,
                        KIND_ARRAY => {
                            let (elem, n) = t.array.unwrap();
                            count *= n as usize;
                            id = elem;
                        }
                        other => return Err(format!("type {id} (kind {other}) has no size")),
                    }
                }
                Err(format!("type {id}: too deep"))
            };

        let mut out = HashMap::new();
        for t in &types {
            if t.kind != KIND_STRUCT || t.name_off == 0 {
                continue;
            }
            let name = string(t.name_off)?;
            let mut members = Vec::new();
            for &(m_name, m_type, m_offset) in &t.members {
                let (bits, bitfield) = if t.kind_flag {
                    (m_offset & 0xff_ffff, m_offset >> 24)
                } else {
                    (m_offset, 0)
                };
                let member = string(m_name)?;
                if bitfield != 0 || bits % 8 != 0 {
                    return Err(format!("struct {name}.{member} is a bitfield"));
                }
                members.push(Member {
                    name: member,
                    offset: bits as usize / 8,
                    size: size_of(m_type)?,
                });
            }
            out.entry(name).or_insert(Struct {
                size: t.size_type as usize,
                members,
            });
        }
        Ok(out)
    }
}
