//! Builds podnetd's eBPF programs with clang, with BTF (`-g`): the policy datapath
//! (`bpf/policy.c`, whose maps are BTF-defined so that the loader, aya, pins them by
//! name) and the underlay guard (`bpf/underlay.c`).
//!
//! Without clang the build fails with the fix, as podnet-cni's does;
//! `PODNET_SKIP_BPF=1` embeds an empty object instead (for `cargo check` only), and
//! such a podnetd refuses `--policy-datapath ebpf`, saying why.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=CLANG");
    println!("cargo:rerun-if-env-changed=PODNET_SKIP_BPF");
    for name in ["policy", "underlay"] {
        build(name);
    }
}

fn build(name: &str) {
    let src = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap())
        .join(format!("../../bpf/{name}.c"));
    let obj = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join(format!("{name}.o"));
    println!("cargo:rerun-if-changed={}", src.display());
    // Every header the programs include (bpf/*.h, bpf/lib/*.h): cargo watches the
    // whole directory.
    println!(
        "cargo:rerun-if-changed={}",
        src.with_file_name("").display()
    );
    if std::env::var("PODNET_SKIP_BPF").is_ok_and(|v| v == "1") {
        println!("cargo:warning=PODNET_SKIP_BPF=1: podnetd is built WITHOUT its eBPF programs (bpf/{name}.c); unset it for a working build");
        std::fs::write(&obj, b"").unwrap();
        return;
    }
    let clang = std::env::var("CLANG").unwrap_or_else(|_| "clang".into());
    match Command::new(&clang)
        .args(["-O2", "-g", "-Wall", "-Werror", "-target", "bpf", "-c"])
        .arg(&src)
        .arg("-o")
        .arg(&obj)
        .status()
    {
        Ok(s) if s.success() => {}
        Ok(s) => panic!("{clang} failed to compile {} ({s})", src.display()),
        Err(e) => panic!(
            "cannot run {clang} ({e}): podnetd needs clang to build its eBPF programs (bpf/{name}.c). \
             Install it (apt-get install clang, or ./scripts/setup.sh) and build again; \
             set CLANG=/path/to/clang if it is not on PATH. Only for `cargo check` without clang: PODNET_SKIP_BPF=1"
        ),
    }
}
