//! A real container runtime on podnet-cni: Debian's podman with the CNI backend and
//! runc, podnet-cni first in a chain with the reference `tuning` plugin. Podman runs
//! inside a scratch node namespace, so the machine's own namespace is untouched.

use crate::common::*;
use podnet_lab::scratch::ScratchDir;
use podnet_netlink::link;
use serde_json::json;
use std::path::Path;
use std::process::{Command, Output};

struct Podman<'a> {
    node: &'a Node,
    dir: &'a Path,
}

impl Podman<'_> {
    fn run(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.node.ns.path().display()))
            .arg("podman")
            .arg("--root")
            .arg(self.dir.join("root"))
            .arg("--runroot")
            .arg(self.dir.join("runroot"))
            // Its own exit files and locks: tests run podman side by side, and one's
            // `system reset` must not touch another's containers.
            .arg("--tmpdir")
            .arg(self.dir.join("libpod-tmp"))
            .args(["--storage-driver", "vfs"])
            .args(args)
            .env("CONTAINERS_CONF", self.dir.join("containers.conf"));
        cmd.output()
            .expect("run podman (apt-get install podman runc)")
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "podman {args:?} failed: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    }
}

impl Drop for Podman<'_> {
    fn drop(&mut self) {
        let _ = self.run(&["rm", "--all", "--force"]);
        let _ = self.run(&["system", "reset", "--force"]);
    }
}

#[test]
fn podman_runs_containers_on_podnet() {
    let node = Node::new("10.205.0.0/24");
    let dir = ScratchDir::new("podnet-podman").unwrap();
    let d = dir.path();
    let plugin_dir = plugin().parent().unwrap().to_path_buf();

    // A tiny image from Debian's static busybox: no registry needed.
    let rootfs = d.join("rootfs");
    for sub in ["bin", "srv", "etc", "proc", "sys", "dev", "tmp"] {
        std::fs::create_dir_all(rootfs.join(sub)).unwrap();
    }
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox"))
        .expect("/bin/busybox (apt-get install busybox-static)");
    std::os::unix::fs::symlink("busybox", rootfs.join("bin/sh")).unwrap();
    std::fs::write(rootfs.join("srv/index.html"), "podnet-ok\n").unwrap();
    let tar = d.join("rootfs.tar");
    let st = Command::new("tar")
        .arg("-C")
        .arg(&rootfs)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());

    std::fs::write(
        d.join("containers.conf"),
        format!(
            "[network]\nnetwork_backend = \"cni\"\ncni_plugin_dirs = [\"{}\", \"/usr/lib/cni\"]\nnetwork_config_dir = \"{}\"\n\
             [engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n",
            plugin_dir.display(),
            d.join("cni").display()
        ),
    )
    .unwrap();
    std::fs::create_dir_all(d.join("cni")).unwrap();
    let net = format!("pntest{}", std::process::id());
    let conflist = json!({
        "cniVersion": "1.0.0", "name": net,
        "plugins": [
            {"type": "podnet-cni", "subnets": ["10.205.0.0/24", "fd00:205::/64"], "bridge": "pnpm0", "dataDir": node.dir.path()},
            {"type": "tuning", "sysctl": {"net.ipv4.conf.eth0.accept_redirects": "0"}},
        ],
    });
    std::fs::write(
        d.join("cni").join(format!("{net}.conflist")),
        conflist.to_string(),
    )
    .unwrap();

    let pm = Podman {
        node: &node,
        dir: d,
    };
    pm.ok(&[
        "import",
        tar.to_str().unwrap(),
        "localhost/podnet-test:latest",
    ]);
    // This sandbox lets runc set rlimits only below the current hard limits.
    let limits = [
        "--ulimit",
        "nofile=1024:1024",
        "--ulimit",
        "nproc=1024:1024",
    ];
    let mut run_a = vec!["run", "-d", "--name", "a", "--network", &net];
    run_a.extend(limits);
    run_a.extend([
        "localhost/podnet-test",
        "/bin/busybox",
        "httpd",
        "-f",
        "-p",
        "8080",
        "-h",
        "/srv",
    ]);
    pm.ok(&run_a);
    let fmt = format!("{{{{(index .NetworkSettings.Networks \"{net}\").IPAddress}}}}");
    let ip_a = pm.ok(&["inspect", "a", "--format", &fmt]);
    assert!(ip_a.starts_with("10.205.0."), "container a got {ip_a:?}");
    // Dual-stack: podman read both addresses of the result.
    let fmt6 = format!("{{{{(index .NetworkSettings.Networks \"{net}\").GlobalIPv6Address}}}}");
    let ip6_a = pm.ok(&["inspect", "a", "--format", &fmt6]);
    assert!(ip6_a.starts_with("fd00:205::"), "container a got {ip6_a:?}");
    for url in [
        format!("http://{ip_a}:8080/"),
        format!("http://[{ip6_a}]:8080/"),
    ] {
        let mut run_b = vec!["run", "--rm", "--name", "b", "--network", &net];
        run_b.extend(limits);
        run_b.extend([
            "localhost/podnet-test",
            "/bin/busybox",
            "wget",
            "-q",
            "-O",
            "-",
            &url,
        ]);
        assert_eq!(
            pm.ok(&run_b),
            "podnet-ok",
            "container b could not reach container a at {url}"
        );
    }
    // tuning ran after podnet-cni, on the interface podnet-cni made.
    let redirects = pm.ok(&[
        "exec",
        "a",
        "/bin/busybox",
        "cat",
        "/proc/sys/net/ipv4/conf/eth0/accept_redirects",
    ]);
    assert_eq!(redirects, "0");

    pm.ok(&["rm", "--force", "a"]);
    let left: Vec<String> = link::list(&mut node.sock())
        .unwrap()
        .into_iter()
        .map(|l| l.name)
        .filter(|n| n.starts_with("pn") && n != "pnpm0")
        .collect();
    assert!(left.is_empty(), "veths left behind: {left:?}");
    let held = podnet_ipam::Store::open(node.dir.path(), &net)
        .unwrap()
        .list_all()
        .unwrap();
    assert!(held.is_empty(), "addresses left behind: {held:?}");
}

#[test]
fn image_builds_from_scratch_and_its_binaries_run() {
    // deploy/Containerfile: the static binaries on an empty base, built offline.
    let node = Node::new("10.206.0.0/24");
    let dir = ScratchDir::new("podnet-image").unwrap();
    let d = dir.path();
    let ctx = d.join("context");
    std::fs::create_dir_all(&ctx).unwrap();
    for (name, path) in [
        ("podnetd", env!("CARGO_BIN_EXE_podnetd")),
        ("podnet-cni", env!("CARGO_BIN_EXE_podnet-cni")),
        ("podnet", env!("CARGO_BIN_EXE_podnet")),
    ] {
        std::fs::copy(path, ctx.join(name)).unwrap();
    }
    // The reference portmap plugin the shipped conflist chains (scripts/real-nodes.sh
    // builds it, static, into its cache).
    let nodes = podnet_lab::real::bin_dir().unwrap_or_else(|e| panic!("{e:#}"));
    std::fs::copy(nodes.join("cni/portmap"), ctx.join("portmap")).unwrap();
    std::fs::write(
        d.join("containers.conf"),
        "[engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n",
    )
    .unwrap();
    let pm = Podman {
        node: &node,
        dir: d,
    };
    let tag = format!("localhost/podnet-image-test:{}", std::process::id());
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/Containerfile");
    pm.ok(&[
        "build",
        "--network",
        "none",
        "-f",
        file,
        "-t",
        &tag,
        ctx.to_str().unwrap(),
    ]);
    // Nothing but the three binaries: no shell, no libc, no other file.
    let run = |extra: &[&str]| {
        let mut args = vec![
            "run",
            "--rm",
            "--network",
            "none",
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=1024:1024",
        ];
        args.extend_from_slice(extra);
        pm.ok(&args)
    };
    let out = run(&[&tag, "--version"]);
    assert!(out.starts_with("podnetd "), "{out}");
    let out = run(&[
        "--env",
        "CNI_COMMAND=VERSION",
        "--entrypoint",
        "/podnet-cni",
        &tag,
    ]);
    assert!(out.contains("supportedVersions"), "{out}");
    let out = run(&[
        "--env",
        "CNI_COMMAND=VERSION",
        "--entrypoint",
        "/portmap",
        &tag,
    ]);
    assert!(out.contains("supportedVersions"), "{out}");
    // The init container's job: podnet-cni and the chained portmap into the plugin
    // directory, then the conflist.
    let host = d.join("host");
    std::fs::create_dir_all(host.join("bin")).unwrap();
    std::fs::create_dir_all(host.join("net.d")).unwrap();
    std::fs::write(
        host.join("10-podnet.conflist"),
        r#"{"cniVersion":"1.1.0","name":"podnet","plugins":[{"type":"podnet-cni"},{"type":"portmap","capabilities":{"portMappings":true}}]}"#,
    )
    .unwrap();
    let vol = format!("{}:/host", host.display());
    let out = run(&[
        "-v",
        &vol,
        &tag,
        "install-cni",
        "--bin-dir=/host/bin",
        "--conflist=/host/10-podnet.conflist",
        "--conf-dir=/host/net.d",
    ]);
    assert!(out.contains("/host/bin/portmap"), "{out}");
    for f in ["bin/podnet-cni", "bin/portmap", "net.d/10-podnet.conflist"] {
        assert!(
            host.join(f).is_file(),
            "install-cni did not install {f}: {out}"
        );
    }
}
