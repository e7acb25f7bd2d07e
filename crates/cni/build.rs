//! Builds the eBPF datapath (`bpf/from_pod.c`) with clang and generates the Rust side
//! of the drop-reason table from `bpf/drop_reasons.h`, the single source of truth.
//!
//! Without clang (`cargo check` on a machine without it) an empty object is embedded
//! and a warning printed; podnet-cni then refuses every ADD with anti-spoofing on,
//! saying it was built without clang. It never runs a pod unprotected.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("../../bpf");
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    let src = root.join("from_pod.c");
    let header = root.join("drop_reasons.h");
    println!("cargo:rerun-if-changed={}", src.display());
    println!("cargo:rerun-if-changed={}", header.display());
    println!("cargo:rerun-if-env-changed=CLANG");

    // 1. The drop-reason table.
    let text = std::fs::read_to_string(&header).expect("bpf/drop_reasons.h");
    let mut rows = Vec::new();
    for line in text.lines() {
        let l = line.trim();
        let Some(inner) = l.strip_prefix("X(") else {
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
        "no drop reasons found in {}",
        header.display()
    );
    let table = format!(
        "/// Drop reasons `(number, id, what)`, generated from bpf/drop_reasons.h.\n\
         pub const DROP_REASONS: &[(u32, &str, &str)] = &[\n{}];\n",
        rows.concat()
    );
    std::fs::write(out.join("drop_reasons.rs"), table).unwrap();

    // 2. The program.
    let obj = out.join("from_pod.o");
    let clang = std::env::var("CLANG").unwrap_or_else(|_| "clang".into());
    let built = Command::new(&clang)
        .args(["-O2", "-g0", "-Wall", "-Werror", "-target", "bpf", "-c"])
        .arg(&src)
        .arg("-o")
        .arg(&obj)
        .status();
    match built {
        Ok(s) if s.success() => {}
        Ok(s) => panic!("{clang} failed to compile {} ({s})", src.display()),
        Err(e) => {
            println!("cargo:warning=clang not found ({e}): podnet-cni is built WITHOUT its eBPF anti-spoofing program and will refuse ADD; install clang (apt-get install clang) and rebuild");
            std::fs::write(&obj, b"").unwrap();
        }
    }
}
