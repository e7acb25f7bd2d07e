//! Builds the eBPF datapath (`bpf/from_pod.c`) with clang.
//!
//! Without clang the build fails, saying how to install it: a podnet-cni without its
//! program would refuse every ADD. `PODNET_SKIP_BPF=1` is the explicit way around it,
//! for `cargo check` or editor tooling on a machine without clang: an empty object is
//! embedded, and such a podnet-cni refuses every ADD with anti-spoofing on, saying
//! why. It never runs a pod unprotected.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("../../bpf");
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    let src = root.join("from_pod.c");
    let header = root.join("drop_reasons.h");
    println!("cargo:rerun-if-changed={}", src.display());
    println!("cargo:rerun-if-changed={}", header.display());
    // Every header the program includes: cargo watches the whole bpf/ directory.
    println!(
        "cargo:rerun-if-changed={}",
        src.with_file_name("").display()
    );
    println!("cargo:rerun-if-env-changed=CLANG");
    println!("cargo:rerun-if-env-changed=PODNET_SKIP_BPF");

    // The program (the drop-reason table is podnet-netlink's: crates/netlink/build.rs).
    let obj = out.join("from_pod.o");
    if std::env::var("PODNET_SKIP_BPF").is_ok_and(|v| v == "1") {
        println!("cargo:warning=PODNET_SKIP_BPF=1: podnet-cni is built WITHOUT its eBPF anti-spoofing program and will refuse ADD; unset it for a working build");
        std::fs::write(&obj, b"").unwrap();
        write_tag(&obj);
        return;
    }
    let clang = std::env::var("CLANG").unwrap_or_else(|_| "clang".into());
    let built = Command::new(&clang)
        .args(["-O2", "-g", "-Wall", "-Werror", "-target", "bpf", "-c"])
        .arg(&src)
        .arg("-o")
        .arg(&obj)
        .status();
    match built {
        Ok(s) if s.success() => {}
        Ok(s) => panic!("{clang} failed to compile {} ({s})", src.display()),
        Err(e) => panic!(
            "cannot run {clang} ({e}): podnet-cni needs clang to build its eBPF datapath (bpf/from_pod.c). \
             Install it (apt-get install clang, or ./scripts/setup.sh) and build again; \
             set CLANG=/path/to/clang if it is not on PATH. Only for `cargo check` without clang: PODNET_SKIP_BPF=1"
        ),
    }
    write_tag(&obj);
}

/// `from_pod.tag`: FNV-1a of the object, which podnet-cni records beside the node's
/// loaded program to know it is this build's. Computed here once rather than over the
/// object's 200 KiB in every invocation (13% of an ADD's own CPU time when it was).
fn write_tag(obj: &std::path::Path) {
    let bytes = std::fs::read(obj).unwrap();
    let h = bytes.iter().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ *b as u64).wrapping_mul(0x100000001b3)
    });
    std::fs::write(obj.with_extension("tag"), format!("{h:016x}")).unwrap();
}
