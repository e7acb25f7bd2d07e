//! DEL: take a pod's network away. Idempotent: a second DEL, a missing namespace or a
//! missing veth are all success, and the address is released in every case.
//!
//! Order: the veth pair goes first (the pod is disconnected), then its anti-spoofing
//! chain, then the address — so an address is never free while a pod still uses it.
//!
//! # Not waiting for the kernel's reclamation
//! Deleting a link returns from the kernel only after an RCU barrier (`netdev_run_todo`),
//! and closing an nftables socket after a deletion waits for an RCU grace period
//! (the deferred destroy work is flushed). Together that is ~20 ms on this class of
//! machine, none of which changes what anyone can observe: the link is unlisted and its
//! name free before the barrier, and the chain is gone once the transaction commits.
//! So the waiting is handed to a detached helper process: it sends the link deletion
//! and holds the nftables socket, while DEL itself waits only until the link is gone
//! from the namespace, commits the chain removal, releases the address and returns.

use crate::errors;
use crate::settings::{host_veth_name, Ipam, Settings};
use crate::{antispoof, delegate, Invocation};
use podnet_cni_spec::{code, CniError};
use podnet_ipam::{Owner, Store};
use podnet_netlink::nft::Batch;
use podnet_netlink::{link, Socket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

pub fn run(inv: &Invocation) -> Result<(), CniError> {
    let s = Settings::resolve(&inv.conf, &inv.raw, false)?;
    let host_name = host_veth_name(&inv.env.container_id, &inv.env.ifname);
    remove_detached(&host_name)?;
    match &s.ipam {
        Some(Ipam::Delegate { plugin }) => {
            delegate::exec(&inv.env, plugin, "DEL", &inv.stdin)?;
        }
        _ => {
            let store = Store::open(&s.data_dir, &s.network).map_err(errors::ipam)?;
            store
                .release(&Owner::new(&inv.env.container_id, &inv.env.ifname))
                .map_err(errors::ipam)?;
        }
    }
    Ok(())
}

fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two fds we then own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both fds were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Removes the pod's veth pair and anti-spoofing chain, returning as soon as both are
/// gone from the namespace; the kernel's slow reclamation finishes in a detached helper.
fn remove_detached(host_name: &str) -> Result<(), CniError> {
    let nl = |e| {
        errors::netlink(e, "podnet-cni must run as root; remove the link by hand with `ip link del` if it persists")
    };
    let mut host = Socket::route().map_err(nl)?;
    let mut nf = Socket::netfilter().map_err(|e| errors::nft(e, "podnet-cni must run as root"))?;
    let exists = link::get_by_name(&mut host, host_name)
        .map_err(nl)?
        .is_some();
    // The helper gets a socket of its own: two processes reading one socket would
    // steal each other's answers.
    let mut helper_sock = Socket::route().map_err(nl)?;
    let io = |what: &str, e: std::io::Error| {
        CniError::new(
            code::IO,
            format!("cannot {what} while deleting {host_name}"),
            e.to_string(),
        )
    };
    // `status`: the helper writes an errno if the deletion fails. `hold`: the helper
    // keeps its sockets until this process exits and the pipe closes.
    let (status_r, status_w) = pipe().map_err(|e| io("create a pipe", e))?;
    let (hold_r, hold_w) = pipe().map_err(|e| io("create a pipe", e))?;
    // SAFETY: this process is single-threaded; the child only makes system calls on
    // fds it inherited and then exits with _exit.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io(
            "start the cleanup helper",
            std::io::Error::last_os_error(),
        ));
    }
    if pid == 0 {
        helper(&mut helper_sock, host_name, exists, status_w, hold_r);
    }
    drop(helper_sock);
    drop(status_w);
    drop(hold_r);
    if exists {
        wait_unlisted(&mut host, host_name, &status_r).map_err(|e| {
            CniError::new(
                code::NETLINK,
                format!("delete link {host_name}: {e}"),
                "remove it by hand with `ip link del` and retry DEL",
            )
        })?;
    }
    let mut b = Batch::new();
    antispoof::remove(&mut b, host_name);
    b.commit(&mut nf).map_err(|e| {
        errors::nft(
            e,
            "remove the chain by hand with `nft delete chain netdev podnet <name>` and retry DEL",
        )
    })?;
    // The helper holds its copy of the nftables socket until this process exits.
    std::mem::forget(hold_w);
    Ok(())
}

/// The detached helper: deletes the link (blocking through the kernel's RCU barrier),
/// reports a failure through `status`, and exits once the parent has exited.
fn helper(host: &mut Socket, host_name: &str, exists: bool, status: OwnedFd, hold: OwnedFd) -> ! {
    // SAFETY: plain system calls in the forked child.
    unsafe {
        libc::setsid();
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null >= 0 {
            for fd in 0..3 {
                libc::dup2(null, fd);
            }
        }
    }
    if exists {
        if let Err(e) = link::delete_by_name(host, host_name) {
            let errno = e.errno().unwrap_or(libc::EIO).to_ne_bytes();
            // SAFETY: writing 4 bytes from a local buffer.
            unsafe { libc::write(status.as_raw_fd(), errno.as_ptr() as *const _, 4) };
        }
    }
    drop(status);
    let mut b = [0u8; 1];
    // SAFETY: blocking read until the parent's end closes (EOF).
    while unsafe { libc::read(hold.as_raw_fd(), b.as_mut_ptr() as *mut _, 1) } > 0 {}
    // SAFETY: leave without running the parent's atexit handlers or flushing its stdio.
    unsafe { libc::_exit(0) }
}

/// Polls until `name` is gone, or the helper reports why it could not delete it.
fn wait_unlisted(host: &mut Socket, name: &str, status: &OwnedFd) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut pfd = libc::pollfd {
        fd: status.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        // SAFETY: poll on one valid fd, 200 µs at most.
        let ready = unsafe { libc::poll(&mut pfd, 1, 0) };
        if ready > 0 {
            let mut b = [0u8; 4];
            // SAFETY: reading at most 4 bytes into a local buffer.
            let n = unsafe { libc::read(status.as_raw_fd(), b.as_mut_ptr() as *mut _, 4) };
            if n == 4 {
                return Err(std::io::Error::from_raw_os_error(i32::from_ne_bytes(b)).to_string());
            }
            // EOF: the helper finished the deletion (or died); the lookup below decides.
        }
        match link::get_by_name(host, name) {
            Ok(None) => return Ok(()),
            Ok(Some(_)) => {}
            Err(e) => return Err(e.to_string()),
        }
        if Instant::now() > deadline {
            return Err("the link was still there after 10 s".into());
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}
