//! Scratch network namespaces and directories that remove themselves when dropped,
//! also when a test or a benchmark fails halfway. Names carry a prefix, the process
//! id and a counter, so parallel runs never collide.

use podnet_netlink::{netns, Netns};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A unique name: `<prefix>-<pid>-<n>`.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A named network namespace deleted on drop.
pub struct ScratchNs {
    pub name: String,
    pub ns: Netns,
}

impl ScratchNs {
    /// Creates `/run/netns/<name>` with loopback up.
    pub fn new(name: impl Into<String>) -> anyhow::Result<ScratchNs> {
        let name = name.into();
        let ns = netns::create_named(&name)?;
        let me = ScratchNs { name, ns };
        me.ns.run(|| -> anyhow::Result<()> {
            let mut s = podnet_netlink::Socket::route()?;
            podnet_netlink::link::change(
                &mut s,
                podnet_netlink::link::Target::Name("lo"),
                &podnet_netlink::link::LinkChange {
                    up: Some(true),
                    ..Default::default()
                },
            )?;
            Ok(())
        })??;
        Ok(me)
    }

    pub fn path(&self) -> PathBuf {
        netns::named_path(&self.name)
    }
}

impl Drop for ScratchNs {
    fn drop(&mut self) {
        let _ = netns::delete_named(&self.name);
    }
}

/// A directory removed with its contents on drop.
pub struct ScratchDir(pub PathBuf);

impl ScratchDir {
    pub fn new(prefix: &str) -> anyhow::Result<ScratchDir> {
        let p = std::env::temp_dir().join(unique(prefix));
        std::fs::create_dir_all(&p)?;
        Ok(ScratchDir(p))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A bpffs mounted on a directory for a run or a test, unmounted when dropped (with
/// it go the pins made in it).
pub struct ScratchBpffs(pub PathBuf);

impl ScratchBpffs {
    pub fn mount(at: &Path) -> anyhow::Result<ScratchBpffs> {
        std::fs::create_dir_all(at)?;
        let c = std::ffi::CString::new(at.as_os_str().as_encoded_bytes())?;
        let fs = std::ffi::CString::new("bpf")?;
        // SAFETY: mounting a new bpffs instance on a directory the caller made.
        if unsafe { libc::mount(fs.as_ptr(), c.as_ptr(), fs.as_ptr(), 0, std::ptr::null()) } != 0 {
            anyhow::bail!(
                "cannot mount a bpffs on {} (the kernel needs CONFIG_BPF_SYSCALL): {}",
                at.display(),
                std::io::Error::last_os_error()
            );
        }
        Ok(ScratchBpffs(at.to_path_buf()))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchBpffs {
    fn drop(&mut self) {
        if let Ok(c) = std::ffi::CString::new(self.0.as_os_str().as_encoded_bytes()) {
            // SAFETY: unmounting the bpffs this guard mounted.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
    }
}
