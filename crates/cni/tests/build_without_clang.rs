//! A podnet-cni built without clang would refuse every ADD: such a build must fail,
//! loudly and with the fix, unless PODNET_SKIP_BPF=1 asks for it explicitly.
//!
//! Runs `cargo check` of this crate in a target directory of its own (so it never
//! waits on the outer build's lock) with CLANG pointing at nothing.

use std::process::Command;

#[test]
fn a_build_without_clang_fails_with_the_fix_unless_explicitly_skipped() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let target = std::env::temp_dir().join(format!("podnet-noclang-{}", std::process::id()));
    let check = |skip: bool| {
        let mut c = Command::new(&cargo);
        c.args(["check", "--offline", "-p", "podnet-cni"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("CARGO_TARGET_DIR", &target)
            .env("CLANG", "/nonexistent/clang")
            .env_remove("PODNET_SKIP_BPF");
        if skip {
            c.env("PODNET_SKIP_BPF", "1");
        }
        c.output().expect("run cargo")
    };
    let o = check(false);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "a build without clang succeeded");
    assert!(
        err.contains("needs clang to build its eBPF datapath"),
        "{err}"
    );
    assert!(err.contains("apt-get install clang"), "{err}");
    // The explicit opt-out builds, and says what it gave up.
    let o = check(true);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "PODNET_SKIP_BPF=1 build failed: {err}");
    assert!(
        err.contains("WITHOUT its eBPF anti-spoofing program"),
        "{err}"
    );
    // And a later build without the opt-out fails again: nothing stale is kept.
    assert!(!check(false).status.success());
    let _ = std::fs::remove_dir_all(&target);
}
