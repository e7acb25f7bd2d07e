//! Generates the Rust side of podnet's drop-reason table from `bpf/drop_reasons.h`,
//! the single source of truth shared with the eBPF anti-spoofing program.

use std::path::PathBuf;

fn main() {
    let header = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap())
        .join("../../bpf/drop_reasons.h");
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    println!("cargo:rerun-if-changed={}", header.display());
    let text = std::fs::read_to_string(&header).expect("bpf/drop_reasons.h");
    // `X(` rows: the per-pod anti-spoofing reasons; `U(` rows: the underlay guard's.
    let rows = |prefix: &str| {
        let mut rows = Vec::new();
        for line in text.lines() {
            let l = line.trim();
            let Some(inner) = l.strip_prefix(prefix) else {
                continue;
            };
            let inner = inner.trim_end_matches('\\').trim().trim_end_matches(')');
            let parts: Vec<&str> = inner.splitn(4, ',').map(str::trim).collect();
            if parts.len() == 4 {
                rows.push(format!("    ({}, {}, {}),\n", parts[0], parts[2], parts[3]));
            }
        }
        assert!(
            !rows.is_empty(),
            "no {prefix} drop reasons found in {}",
            header.display()
        );
        rows.concat()
    };
    let table = format!(
        "/// Drop reasons `(number, id, what)`, generated from bpf/drop_reasons.h.\n\
         pub const DROP_REASONS: &[(u32, &str, &str)] = &[\n{}];\n\
         /// The underlay guard's drop reasons `(number, id, what)`, generated from bpf/drop_reasons.h.\n\
         pub const UNDERLAY_DROP_REASONS: &[(u32, &str, &str)] = &[\n{}];\n",
        rows("X("),
        rows("U(")
    );
    std::fs::write(out.join("drop_reasons.rs"), table).unwrap();
}
