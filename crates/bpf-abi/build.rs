//! Generates podnet-bpf-abi's Rust structs and constants from `bpf/abi.h`, the one
//! place the eBPF programs' shared structs and constants are written (as
//! crates/netlink/build.rs generates the drop-reason table from `bpf/drop_reasons.h`).
//!
//! abi.h keeps to a restricted form, described at its top; anything else in it is an
//! error naming the line, never skipped. The layout is computed here as C lays it out,
//! and a field that would need implicit padding before it (or a struct that would need
//! it at its end) is an error too: every pad is a named field, so the Rust struct's
//! bytes are the C struct's, all of them initialized.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The Rust text of the generated file.
#[path = "build/render.rs"]
mod render;
use render::render;

fn main() {
    let bpf = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("../../bpf");
    let abi = bpf.join("abi.h");
    let drops = bpf.join("drop_reasons.h");
    println!("cargo:rerun-if-changed={}", abi.display());
    println!("cargo:rerun-if-changed={}", drops.display());
    let text = read(&abi);
    let drops_text = read(&drops);
    let rust = match generate(&text, &drops_text) {
        Ok(rust) => rust,
        Err(e) => panic!("{}:{}: {}", abi.display(), e.line, e.what),
    };
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("abi.rs");
    std::fs::write(&out, rust).unwrap_or_else(|e| panic!("write {}: {e}", out.display()));
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// What in abi.h could not be understood, and where.
#[derive(Debug)]
struct Error {
    line: usize,
    what: String,
}

fn err<T>(line: usize, what: impl Into<String>) -> Result<T, Error> {
    Err(Error {
        line,
        what: what.into(),
    })
}

/// A scalar type of abi.h: its C name, Rust name and size (= alignment).
const SCALARS: &[(&str, &str, usize)] = &[
    ("u8", "u8", 1),
    ("u16", "u16", 2),
    ("u32", "u32", 4),
    ("u64", "u64", 8),
    ("s32", "i32", 4),
];

fn scalar(c: &str) -> Option<(&'static str, usize)> {
    SCALARS
        .iter()
        .find(|(name, _, _)| *name == c)
        .map(|(_, rust, size)| (*rust, *size))
}

struct Const {
    name: String,
    rust_type: &'static str,
    value: String,
    doc: Vec<String>,
    /// The value, for array lengths.
    number: u64,
}

struct FieldDef {
    name: String,
    /// The Rust type of one element, its size and alignment.
    elem: String,
    elem_size: usize,
    align: usize,
    /// `Some(length expression, length)` for an array.
    len: Option<(String, u64)>,
    doc: Vec<String>,
}

impl FieldDef {
    fn rust_type(&self) -> String {
        match &self.len {
            Some((expr, _)) => format!("[{}; {expr}]", self.elem),
            None => self.elem.clone(),
        }
    }

    fn size(&self) -> usize {
        self.elem_size * self.len.as_ref().map_or(1, |(_, n)| *n as usize)
    }
}

struct StructDef {
    c_name: String,
    rust_name: String,
    /// Where in the C struct this one starts: 4 for an LPM key's data (`*_data`), else 0.
    c_offset: usize,
    fields: Vec<FieldDef>,
    size: usize,
    align: usize,
    doc: Vec<String>,
}

fn is_ident(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Rust keywords a C field name may not be (it would need `r#`).
const RUST_KEYWORDS: &[&str] = &[
    "as", "async", "await", "box", "crate", "dyn", "fn", "gen", "impl", "in", "let", "loop",
    "match", "mod", "move", "mut", "pub", "ref", "self", "super", "trait", "type", "unsafe", "use",
    "where", "yield", "abstract", "become", "final", "macro", "override", "priv", "try", "typeof",
    "unsized", "virtual",
];

fn camel(c: &str) -> String {
    c.split('_')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let mut cs = p.chars();
            let first = cs.next().unwrap().to_ascii_uppercase();
            std::iter::once(first).chain(cs).collect::<String>()
        })
        .collect()
}

/// A decimal or 0x hexadecimal literal.
fn number(s: &str) -> Option<u64> {
    if let Some(hex) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        u64::from_str_radix(hex, 16).ok()
    } else if s.chars().all(|c| c.is_ascii_digit()) && !s.is_empty() {
        s.parse().ok()
    } else {
        None
    }
}

/// Splits `code /* comment */` into the code and the comment's text.
fn trailing_comment(line: usize, s: &str) -> Result<(&str, Option<String>), Error> {
    match s.find("/*") {
        None => {
            if s.contains("*/") || s.contains("//") {
                return err(line, "a comment that is not `/* ... */` on one line");
            }
            Ok((s.trim(), None))
        }
        Some(at) => {
            let rest = &s[at + 2..];
            let Some(end) = rest.find("*/") else {
                return err(line, "a comment after code must end on its line (`*/`)");
            };
            if !rest[end + 2..].trim().is_empty() {
                return err(line, "text after a comment");
            }
            Ok((s[..at].trim(), Some(rest[..end].trim().to_string())))
        }
    }
}

/// Parses abi.h (and counts drop_reasons.h's rows) and returns the generated Rust.
fn generate(text: &str, drops_text: &str) -> Result<String, Error> {
    let lines: Vec<&str> = text.lines().collect();
    let mut abi = Abi::default();
    let mut doc: Vec<String> = Vec::new();
    let mut guard = 0; // 0: before #ifndef, 1: after #ifndef, 2: after its #define, 3: after #endif
    let mut i = 0;
    while i < lines.len() {
        let n = i + 1;
        let l = lines[i].trim();
        i += 1;
        if guard == 3 && !l.is_empty() {
            return err(n, "nothing may follow the include guard's #endif");
        }
        if l.is_empty() {
            doc.clear();
            continue;
        }
        if l.starts_with("/*") {
            doc = comment(&lines, &mut i, n)?;
            continue;
        }
        if l.starts_with("//") {
            return err(n, "use /* */ comments");
        }
        if !l.starts_with("#define ") && !l.starts_with("struct ") {
            // Guard, #include, #endif: a comment right above them documents nothing.
            doc.clear();
        }
        match guard {
            0 if l == "#ifndef PODNET_ABI_H" => {
                guard = 1;
                continue;
            }
            0 => return err(n, "expected the include guard `#ifndef PODNET_ABI_H` first"),
            1 if l == "#define PODNET_ABI_H" => {
                guard = 2;
                continue;
            }
            1 => return err(n, "expected `#define PODNET_ABI_H` after the #ifndef"),
            _ => {}
        }
        if l == "#endif" {
            guard = 3;
            continue;
        }
        if l == "#include \"uapi.h\"" {
            continue;
        }
        if l == "#include \"drop_reasons.h\"" {
            abi.drop_counts(n, drops_text)?;
            continue;
        }
        if let Some(rest) = l.strip_prefix("#define ") {
            abi.define(n, rest, &mut doc)?;
            continue;
        }
        if let Some(rest) = l.strip_prefix("struct ") {
            abi.structure(n, rest, &lines, &mut i, &mut doc)?;
            continue;
        }
        return err(
            n,
            format!("not understood: `{l}` (see the form described at the top of abi.h)"),
        );
    }
    if guard != 3 {
        return err(lines.len(), "the include guard is not closed with #endif");
    }
    Ok(render(&abi.consts, &abi.structs))
}

/// What abi.h has defined so far: its constants and structs, and the line each name
/// was first defined on (a name is defined once).
#[derive(Default)]
struct Abi {
    consts: Vec<Const>,
    structs: Vec<StructDef>,
    names: HashMap<String, usize>,
}

impl Abi {
    /// Records that `name` is defined on `line`; a second definition is an error.
    fn declare(&mut self, name: &str, line: usize) -> Result<(), Error> {
        if let Some(first) = self.names.insert(name.to_string(), line) {
            return err(line, format!("`{name}` is already defined on line {first}"));
        }
        Ok(())
    }

    /// `#include "drop_reasons.h"` on line `n`: the two drop-reason counts, as
    /// constants counted from drop_reasons.h's rows.
    fn drop_counts(&mut self, n: usize, drops_text: &str) -> Result<(), Error> {
        for (name, prefix, what) in [
            (
                "PODNET_DROP_MAX",
                "X(",
                "anti-spoofing drop reasons (PODNET_DROP_REASONS)",
            ),
            (
                "PODNET_UNDERLAY_DROP_MAX",
                "U(",
                "underlay guard drop reasons (PODNET_UNDERLAY_DROPS)",
            ),
        ] {
            let count = drops_text
                .lines()
                .filter(|l| l.trim_start().starts_with(prefix))
                .count() as u64;
            if count == 0 {
                return err(n, format!("bpf/drop_reasons.h has no `{prefix}` rows"));
            }
            self.declare(name, n)?;
            self.consts.push(Const {
                name: name.into(),
                rust_type: "u32",
                value: count.to_string(),
                doc: vec![format!(
                    "How many {what} there are, counted from bpf/drop_reasons.h."
                )],
                number: count,
            });
        }
        Ok(())
    }

    /// `#define NAME ((TYPE)VALUE)` on line `n` (`rest` is what follows `#define `): a
    /// constant, documented by the comment above it (taken from `doc`) and after it.
    fn define(&mut self, n: usize, rest: &str, doc: &mut Vec<String>) -> Result<(), Error> {
        let (code, trailing) = trailing_comment(n, rest)?;
        let Some((name, value)) = code.split_once(char::is_whitespace) else {
            return err(n, "a #define needs a value: `#define NAME ((TYPE)VALUE)`");
        };
        let value = value.trim();
        if !is_ident(name) {
            return err(n, format!("`{name}` is not a C identifier"));
        }
        let inner = value
            .strip_prefix("((")
            .and_then(|v| v.strip_suffix(')'))
            .and_then(|v| v.split_once(')'));
        let Some((ty, lit)) = inner else {
            return err(
                n,
                format!("`{value}`: a constant is written `((TYPE)VALUE)`, e.g. ((u32)1)"),
            );
        };
        let Some((rust_type, size)) = scalar(ty.trim()) else {
            return err(n, format!("unknown type `{ty}` (u8, u16, u32, u64 or s32)"));
        };
        let lit = lit.trim();
        let (negative, digits) = match lit.strip_prefix('-') {
            Some(d) => (true, d),
            None => (false, lit),
        };
        let Some(v) = number(digits) else {
            return err(
                n,
                format!("`{lit}` is not a decimal or 0x hexadecimal integer"),
            );
        };
        let fits = if rust_type == "i32" {
            if negative {
                v <= 1 << 31
            } else {
                v < 1 << 31
            }
        } else {
            !negative && (size == 8 || v < 1u64 << (8 * size))
        };
        if !fits {
            return err(n, format!("{lit} does not fit {ty}"));
        }
        self.declare(name, n)?;
        let mut d = std::mem::take(doc);
        d.extend(trailing);
        self.consts.push(Const {
            name: name.into(),
            rust_type,
            value: lit.to_string(),
            doc: d,
            number: if negative { 0 } else { v },
        });
        Ok(())
    }

    /// `struct name {` on line `n` (`rest` is what follows `struct `): the struct up to
    /// its `};` (`i` is left after it), documented by the comment above it (taken from
    /// `doc`), and for an LPM key the struct of its data too.
    fn structure(
        &mut self,
        n: usize,
        rest: &str,
        lines: &[&str],
        i: &mut usize,
        doc: &mut Vec<String>,
    ) -> Result<(), Error> {
        let Some(name) = rest.strip_suffix('{').map(str::trim) else {
            return err(n, "expected `struct name {` on one line");
        };
        if !is_ident(name) {
            return err(n, format!("`{name}` is not a C identifier"));
        }
        self.declare(name, n)?;
        let s = parse_struct(
            name,
            lines,
            i,
            std::mem::take(doc),
            &self.consts,
            &self.structs,
        )?;
        let data = lpm_data(&s, n)?;
        self.structs.push(s);
        if let Some(data) = data {
            self.declare(&data.c_name, n)?;
            self.structs.push(data);
        }
        Ok(())
    }
}

/// For an LPM trie key (`*_key` whose first field is `u32 prefixlen`), the struct of its
/// fields after the prefix length, `*_data`: the `T` of aya's `lpm_trie::Key<T>`, which
/// is `#[repr(C, packed)]` (prefix length, then `T`), so the C key's bytes exactly when
/// `T` needs no padding of its own and at most 4-byte alignment.
fn lpm_data(key: &StructDef, line: usize) -> Result<Option<StructDef>, Error> {
    let Some(base) = key.c_name.strip_suffix("_key") else {
        return Ok(None);
    };
    match key.fields.first() {
        Some(f) if f.name == "prefixlen" && f.elem == "u32" && f.len.is_none() => {}
        _ => return Ok(None),
    }
    let rest = &key.fields[1..];
    if rest.is_empty() {
        return err(
            line,
            format!("LPM key struct {} has nothing after prefixlen", key.c_name),
        );
    }
    let align = rest.iter().map(|f| f.align).max().unwrap();
    if align > 4 {
        return err(
            line,
            format!(
                "LPM key struct {}: a field after prefixlen is aligned to {align}; aya's packed Key<T> would move it",
                key.c_name
            ),
        );
    }
    let size: usize = rest.iter().map(FieldDef::size).sum();
    if size != key.size - 4 || !size.is_multiple_of(align) {
        return err(
            line,
            format!("LPM key struct {}: its data would need padding", key.c_name),
        );
    }
    let c_name = format!("{base}_data");
    Ok(Some(StructDef {
        rust_name: camel(&c_name),
        c_name,
        c_offset: 4,
        fields: rest
            .iter()
            .map(|f| FieldDef {
                name: f.name.clone(),
                elem: f.elem.clone(),
                elem_size: f.elem_size,
                align: f.align,
                len: f.len.clone(),
                doc: f.doc.clone(),
            })
            .collect(),
        size,
        align,
        doc: vec![
            format!(
                "`struct {}` after its prefix length: the `T` of aya's",
                key.c_name
            ),
            format!(
                "`lpm_trie::Key<T>`, which is the C key (`{}`) byte for byte.",
                camel(&key.c_name)
            ),
        ],
    }))
}

/// Reads the comment starting on line `n` (`lines[n - 1]`); `i` is left after its last
/// line. Returns its text, one entry a line, the ` * ` margins removed.
fn comment(lines: &[&str], i: &mut usize, n: usize) -> Result<Vec<String>, Error> {
    let mut text = Vec::new();
    let mut l = lines[n - 1].trim().strip_prefix("/*").unwrap();
    let mut at = n;
    loop {
        if let Some(end) = l.find("*/") {
            if !l[end + 2..].trim().is_empty() {
                return err(at, "text after the end of a comment");
            }
            let t = clean(&l[..end]);
            if !t.is_empty() || !text.is_empty() {
                text.push(t);
            }
            break;
        }
        let t = clean(l);
        if !t.is_empty() || !text.is_empty() {
            text.push(t);
        }
        if *i >= lines.len() {
            return err(n, "comment not closed");
        }
        l = lines[*i];
        *i += 1;
        at = *i;
    }
    while text.last().is_some_and(String::is_empty) {
        text.pop();
    }
    Ok(text)
}

fn clean(l: &str) -> String {
    let t = l.trim();
    let t = t.strip_prefix('*').unwrap_or(t);
    t.strip_prefix(' ').unwrap_or(t).trim_end().to_string()
}

/// Parses the fields of struct `c_name` from `lines[*i]` up to its `};` (`i` is left
/// after it), laying them out as C does; `consts` and `structs` are those defined above.
fn parse_struct(
    c_name: &str,
    lines: &[&str],
    i: &mut usize,
    doc: Vec<String>,
    consts: &[Const],
    structs: &[StructDef],
) -> Result<StructDef, Error> {
    let start = *i;
    let mut fields: Vec<FieldDef> = Vec::new();
    let mut field_doc: Vec<String> = Vec::new();
    let mut offset = 0usize;
    let mut align = 1usize;
    loop {
        if *i >= lines.len() {
            return err(start, format!("struct {c_name} is not closed with `}};`"));
        }
        let n = *i + 1;
        let l = lines[*i].trim();
        *i += 1;
        if l.is_empty() {
            field_doc.clear();
            continue;
        }
        if l.starts_with("/*") {
            field_doc = comment(lines, i, n)?;
            continue;
        }
        if l == "};" {
            return close_struct(c_name, n, fields, offset, align, doc);
        }
        let (code, trailing) = trailing_comment(n, l)?;
        let Some(decl) = code.strip_suffix(';') else {
            return err(
                n,
                format!("expected a field `TYPE name;` or `}};`, found `{l}`"),
            );
        };
        if decl.contains(',') {
            return err(n, "one field a line");
        }
        let (elem, elem_size, elem_align, declarator) = field_type(n, decl, code, structs)?;
        let (name, len) = field_name(n, declarator, consts)?;
        if fields.iter().any(|f| f.name == name) {
            return err(n, format!("struct {c_name} already has a field `{name}`"));
        }
        if !offset.is_multiple_of(elem_align) {
            let pad = elem_align - offset % elem_align;
            return err(
                n,
                format!(
                    "implicit padding: `{name}` (aligned to {elem_align}) would start at {} after {pad} unnamed bytes at {offset}: add an explicit pad field",
                    offset + pad
                ),
            );
        }
        let mut d = std::mem::take(&mut field_doc);
        d.extend(trailing);
        let f = FieldDef {
            name: name.into(),
            elem,
            elem_size,
            align: elem_align,
            len,
            doc: d,
        };
        offset += f.size();
        align = align.max(f.align);
        fields.push(f);
    }
}

/// The `};` on line `n` that closes struct `c_name`: the struct, unless it is empty or
/// would end in implicit padding.
fn close_struct(
    c_name: &str,
    n: usize,
    fields: Vec<FieldDef>,
    offset: usize,
    align: usize,
    doc: Vec<String>,
) -> Result<StructDef, Error> {
    if fields.is_empty() {
        return err(n, format!("struct {c_name} has no fields"));
    }
    let size = offset.div_ceil(align) * align;
    if size != offset {
        return err(
            n,
            format!(
                "struct {c_name} would end in {} bytes of implicit padding (size {offset}, aligned to {align}): add an explicit pad field",
                size - offset
            ),
        );
    }
    Ok(StructDef {
        c_name: c_name.into(),
        rust_name: camel(c_name),
        c_offset: 0,
        fields,
        size,
        align,
        doc,
    })
}

/// The type of the field declared by `decl` (`code` without its `;`) on line `n`: its
/// Rust element type, size and alignment, and the declarator that follows the type.
fn field_type<'a>(
    n: usize,
    decl: &'a str,
    code: &str,
    structs: &[StructDef],
) -> Result<(String, usize, usize, &'a str), Error> {
    let words: Vec<&str> = decl.split_whitespace().collect();
    match words.as_slice() {
        ["struct", other, declarator] => {
            let Some(s) = structs.iter().find(|s| s.c_name == *other) else {
                return err(n, format!("struct {other} is not defined above"));
            };
            Ok((s.rust_name.clone(), s.size, s.align, *declarator))
        }
        [ty, declarator] => match scalar(ty) {
            Some((rust, size)) => Ok((rust.to_string(), size, size, *declarator)),
            None => err(
                n,
                format!("unknown type `{ty}` (u8, u16, u32, u64, s32 or struct NAME)"),
            ),
        },
        _ => err(
            n,
            format!(
                "expected `TYPE name;`, `TYPE name[LEN];` or `struct NAME name;`, found `{code}`"
            ),
        ),
    }
}

/// An array's length: the Rust expression for it, and its value.
type ArrayLen = (String, u64);

/// The field name in `declarator` on line `n`, checked, and for an array its length
/// (the Rust length expression and its value); `consts` are those defined above.
fn field_name<'a>(
    n: usize,
    declarator: &'a str,
    consts: &[Const],
) -> Result<(&'a str, Option<ArrayLen>), Error> {
    let (name, len) = match declarator.split_once('[') {
        None => (declarator, None),
        Some((name, rest)) => {
            let Some(len) = rest.strip_suffix(']') else {
                return err(
                    n,
                    format!("`{declarator}`: one array dimension, `name[LEN]`"),
                );
            };
            if len.contains('[') {
                return err(n, "arrays of arrays are not supported");
            }
            let (expr, count) = if let Some(v) = number(len) {
                (v.to_string(), v)
            } else if let Some(c) = consts.iter().find(|c| c.name == len) {
                if c.rust_type == "i32" {
                    return err(n, format!("array length `{len}` is signed"));
                }
                (format!("{len} as usize"), c.number)
            } else {
                return err(
                    n,
                    format!(
                        "array length `{len}` is neither an integer nor a constant defined above"
                    ),
                );
            };
            if count == 0 {
                return err(n, "zero-length arrays are not supported");
            }
            (name, Some((expr, count)))
        }
    };
    if !is_ident(name) {
        return err(n, format!("`{name}` is not a C identifier"));
    }
    if RUST_KEYWORDS.contains(&name) {
        return err(n, format!("field name `{name}` is a Rust keyword"));
    }
    Ok((name, len))
}
