//! Network namespaces: opening a pod's namespace safely, entering it for the span of
//! one call, and creating or removing named namespaces the way `ip netns` does
//! (a bind mount of the namespace at `/run/netns/NAME`).
//!
//! A namespace switch applies to the calling thread only. [`Netns::enter_for`] always
//! switches back, so a short-lived process such as the CNI plugin can open one socket
//! per namespace from its single thread; [`Netns::run`] runs work on a fresh thread
//! for callers that must not touch their own thread at all.

use crate::error::{Error, Result};
use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

const NSFS_MAGIC: i64 = 0x6e73_6673;

/// Where named namespaces live, as for `ip netns`.
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// An open handle on a network namespace.
#[derive(Debug)]
pub struct Netns {
    file: File,
    path: String,
}

impl Netns {
    /// Opens the namespace at `path` (`/run/netns/x`, `/proc/PID/ns/net`) and checks
    /// that it really is a network namespace.
    pub fn open(path: impl AsRef<Path>) -> Result<Netns> {
        let p = path.as_ref();
        let shown = p.display().to_string();
        let file = File::open(p).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => Error::NotFound {
                op: "open network namespace",
                obj: shown.clone(),
                ext: None,
            },
            _ => Error::io("open network namespace", shown.clone(), e),
        })?;
        // SAFETY: fstatfs writes into a zeroed statfs struct we own.
        let mut st: libc::statfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::fstatfs(file.as_raw_fd(), &mut st) } != 0 {
            return Err(Error::io(
                "inspect network namespace",
                shown,
                io::Error::last_os_error(),
            ));
        }
        if st.f_type as i64 != NSFS_MAGIC {
            return Err(Error::io(
                "open network namespace",
                shown,
                io::Error::new(io::ErrorKind::InvalidInput, "not a namespace file (nsfs)"),
            ));
        }
        // SAFETY: NS_GET_NSTYPE takes no argument and returns the CLONE_NEW* flag.
        let kind = unsafe { libc::ioctl(file.as_raw_fd(), 0xb703 as _) };
        if kind >= 0 && kind != libc::CLONE_NEWNET {
            return Err(Error::io(
                "open network namespace",
                shown,
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "a namespace, but not a network namespace",
                ),
            ));
        }
        Ok(Netns { file, path: shown })
    }

    /// The calling thread's current network namespace.
    pub fn current() -> Result<Netns> {
        Netns::open("/proc/thread-self/ns/net")
    }

    pub fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    /// The namespace's inode number: equal for two handles on the same namespace.
    pub fn inode(&self) -> u64 {
        self.file.metadata().map(|m| m.ino()).unwrap_or(0)
    }

    /// Moves the calling thread into this namespace for good.
    pub fn enter(&self) -> Result<()> {
        // SAFETY: setns on a valid namespace fd.
        if unsafe { libc::setns(self.fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(Error::io(
                "enter network namespace",
                self.path.clone(),
                io::Error::last_os_error(),
            ));
        }
        Ok(())
    }

    /// Runs `f` with the calling thread inside this namespace, then switches back.
    pub fn enter_for<T>(&self, f: impl FnOnce() -> T) -> Result<T> {
        let home = Netns::current()?;
        self.enter()?;
        let out = f();
        home.enter().map_err(|e| {
            // Staying in the wrong namespace would make every later call lie.
            eprintln!("podnet: fatal: cannot return to the original network namespace: {e}");
            std::process::abort();
        })?;
        Ok(out)
    }

    /// Runs `f` on a new thread that lives inside this namespace.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        std::thread::scope(|s| {
            s.spawn(|| {
                self.enter()?;
                Ok(f())
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }
}

/// Makes `cmd` run inside the network namespace `net` — and the mount namespace `mnt`
/// first, if given — entered in the child between fork and exec, so the caller's own
/// thread never moves. With `detach` the child also gets a session of its own and the
/// default SIGTERM and SIGINT dispositions (a daemon outliving its starter). The
/// namespace descriptors must stay open until the command is spawned.
pub fn in_netns(
    cmd: &mut std::process::Command,
    net: RawFd,
    mnt: Option<RawFd>,
    detach: bool,
) -> &mut std::process::Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: setns, setsid and signal are async-signal-safe; the closure runs in the
    // single-threaded child between fork and exec and touches no memory of the parent's.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(m) = mnt {
                if libc::setns(m, libc::CLONE_NEWNS) != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            if libc::setns(net, libc::CLONE_NEWNET) != 0 {
                return Err(io::Error::last_os_error());
            }
            if detach {
                libc::setsid();
                libc::signal(libc::SIGTERM, libc::SIG_DFL);
                libc::signal(libc::SIGINT, libc::SIG_DFL);
            }
            Ok(())
        })
    }
}

/// `/run/netns/NAME`.
pub fn named_path(name: &str) -> PathBuf {
    Path::new(NETNS_RUN_DIR).join(name)
}

/// Creates a new, empty network namespace and pins it at `/run/netns/NAME`
/// (like `ip netns add NAME`). Fails if the name is taken.
/// Makes the namespace directory a shared mount of itself, as `ip netns add` does.
/// Without it, the first `ip netns add` after ours bind-mounts the directory over
/// itself and hides the namespaces already pinned there: they can then neither be
/// seen nor deleted (`rm` says busy) until the overmount goes.
fn ensure_run_dir_mount() -> Result<()> {
    static ONCE: std::sync::Mutex<bool> = std::sync::Mutex::new(false);
    let mut done = ONCE.lock().unwrap_or_else(|e| e.into_inner());
    if *done {
        return Ok(());
    }
    let dir = CString::new(NETNS_RUN_DIR).expect("no NUL in path");
    let shared = || {
        // SAFETY: changing the propagation of a mount point we name.
        unsafe {
            libc::mount(
                c"none".as_ptr(),
                dir.as_ptr(),
                std::ptr::null(),
                libc::MS_SHARED | libc::MS_REC,
                std::ptr::null(),
            )
        }
    };
    if shared() != 0 {
        if io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL) {
            return Err(Error::io(
                "share mount",
                NETNS_RUN_DIR,
                io::Error::last_os_error(),
            ));
        }
        // Not a mount point yet: bind it onto itself, then share it.
        // SAFETY: a bind mount of a directory onto itself.
        let rc = unsafe {
            libc::mount(
                dir.as_ptr(),
                dir.as_ptr(),
                c"none".as_ptr(),
                libc::MS_BIND | libc::MS_REC,
                std::ptr::null(),
            )
        };
        if rc != 0 || shared() != 0 {
            return Err(Error::io(
                "bind-mount",
                NETNS_RUN_DIR,
                io::Error::last_os_error(),
            ));
        }
    }
    *done = true;
    Ok(())
}

pub fn create_named(name: &str) -> Result<Netns> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(Error::io(
            "create network namespace",
            name,
            io::Error::new(io::ErrorKind::InvalidInput, "invalid name"),
        ));
    }
    std::fs::create_dir_all(NETNS_RUN_DIR)
        .map_err(|e| Error::io("create directory", NETNS_RUN_DIR, e))?;
    ensure_run_dir_mount()?;
    let path = named_path(name);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| Error::io("create network namespace", name, e))?;
    let target = CString::new(path.as_os_str().as_encoded_bytes()).expect("no NUL in path");
    let made: Result<()> = std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: unshare of the network namespace affects this thread only.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                return Err(Error::io(
                    "create network namespace",
                    name,
                    io::Error::last_os_error(),
                ));
            }
            let src = c"/proc/thread-self/ns/net";
            // SAFETY: bind mount of our own namespace file onto the placeholder.
            let rc = unsafe {
                libc::mount(
                    src.as_ptr(),
                    target.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND,
                    std::ptr::null(),
                )
            };
            if rc != 0 {
                return Err(Error::io(
                    "pin network namespace",
                    name,
                    io::Error::last_os_error(),
                ));
            }
            Ok(())
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    });
    if let Err(e) = made {
        let _ = std::fs::remove_file(&path);
        return Err(e);
    }
    Netns::open(&path)
}

/// Removes `/run/netns/NAME` (like `ip netns del NAME`). Returns false if it was not
/// there. The namespace itself goes away once nothing else holds it.
pub fn delete_named(name: &str) -> Result<bool> {
    let path = named_path(name);
    if !path.exists() {
        return Ok(false);
    }
    let c = CString::new(path.as_os_str().as_encoded_bytes()).expect("no NUL in path");
    // SAFETY: lazy unmount of a path we own; EINVAL means it was not mounted.
    unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::io("delete network namespace", name, e)),
    }
}
