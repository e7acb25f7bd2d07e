//! DEL: take a pod's network away. Idempotent: a second DEL, a missing namespace or a
//! missing veth are all success, and the address is released in every case but one:
//! while the node cannot forget the address's connections (below).
//!
//! Order: the veth pair goes first (the pod is disconnected; its anti-spoofing filters
//! go with it), then what the node remembers of the pod's connections, then the
//! address — so an address is never free while a pod still uses it, and the next pod
//! given it inherits nothing.
//!
//! # Connections outlive the pod
//! The node's conntrack admits an established connection before any policy is
//! consulted (the nftables datapath), and the eBPF datapath's `flows` table lets a
//! flow it admitted through without a policy check. Both are keyed by address, so a
//! new pod given the old one's address would receive the old pod's peers' packets,
//! whatever its own policy says. [`forget_connections`] deletes every conntrack entry
//! and every `flows` entry naming the address, in the node's namespace. If that
//! fails for any reason but "nothing there", DEL fails and the address stays
//! allocated: a leaked address is safe, a reused one with allowances is not. A retried
//! DEL finds the veth gone and tries again.
//!
//! # Not waiting for the kernel's reclamation
//! Deleting a link returns from the kernel only after an RCU barrier
//! (`netdev_run_todo`): ~10 ms on this class of machine, none of which changes what
//! anyone can observe — the link is unlisted, its name free and both ends gone from
//! their namespaces before the barrier. So a detached helper process sends the
//! deletion and waits out the barrier, while DEL waits only until the link is gone,
//! releases the address and returns.

use crate::errors;
use crate::settings::{host_mac, host_veth_name, Ipam, NodeInfo, Settings, DEFAULT_NODE_FILE};
use crate::{antispoof, delegate, Invocation};
use podnet_cni_spec::{code, CniError};
use podnet_ipam::Owner;
use podnet_netlink::{conntrack, link, Socket};
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const RTNLGRP_LINK: u32 = 1;
/// The link group podnet moves a veth into just before deleting it ("pnDL"). Only
/// podnet's DEL and GC put links there, and only to delete them.
pub const DELETE_GROUP: u32 = 0x706e_444c;
const RTM_DELLINK: u16 = 17;

/// The helper's process name (`ps -e` shows it while the kernel finishes reclaiming).
pub const HELPER_NAME: &std::ffi::CStr = c"podnet-reclaim";

pub fn run(inv: &Invocation) -> Result<(), CniError> {
    let s = Settings::for_cleanup(&inv.conf, &inv.raw);
    let host_name = host_veth_name(&inv.env.container_id, &inv.env.ifname);
    let linked = delete_link_detached(&host_name, &s.data_dir)?;
    match &s.ipam {
        Some(Ipam::Delegate { plugin }) => {
            // The delegate holds the address: the veth's MAC names it, or (the veth
            // already gone) the runtime's prevResult.
            let mut ips: Vec<Ipv4Addr> = linked.into_iter().chain(prev_result_ips(inv)).collect();
            ips.sort();
            ips.dedup();
            for ip in ips {
                forget_connections(ip.into(), &inv.raw)?;
            }
            delegate::exec(&inv.env, plugin, "DEL", &inv.stdin)?;
        }
        _ => {
            let store = s.store()?;
            let owner = Owner::new(&inv.env.container_id, &inv.env.ifname);
            // Only the addresses the store says this attachment holds: anything else
            // may be another pod's by now. A dual-stack pod's IPv6 address too: the
            // nftables datapath tracks its connections like the IPv4 one's.
            let held = store.lookup(&owner).map_err(errors::ipam)?;
            for ip in held
                .v4
                .map(IpAddr::V4)
                .into_iter()
                .chain(held.v6.map(IpAddr::V6))
            {
                forget_connections(ip, &inv.raw)?;
            }
            store.release(&owner).map_err(errors::ipam)?;
        }
    }
    Ok(())
}

/// The IPv4 addresses of the runtime's `prevResult`, if it sent one.
fn prev_result_ips(inv: &Invocation) -> Vec<Ipv4Addr> {
    let Some(prev) = &inv.conf.prev_result else {
        return vec![];
    };
    prev["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["address"].as_str()?.split('/').next()?.parse().ok())
        .collect()
}

/// Deletes what the node remembers of connections of `ip` (a pod's address of either
/// family that is about to be freed): its conntrack entries (`conntrack -D -s/-d ip`,
/// both directions) and, on the eBPF policy datapath, its entries in the pinned
/// `flows` table (`flows6` for an IPv6 address).
/// Run in the node's namespace. "Nothing there" (no conntrack, no eBPF datapath, no
/// entries) is success; anything else is an error naming the address, since the
/// address must not be reused with its allowances in place.
pub fn forget_connections(ip: IpAddr, raw: &serde_json::Value) -> Result<(), CniError> {
    let keep =
        "the address stays allocated until this succeeds, so no new pod inherits its connections";
    conntrack::flush_addr(ip).map_err(|e| {
        CniError::new(
            code::NETLINK,
            format!("cannot delete the conntrack entries of {ip}: {e}"),
            format!("{keep}; delete them by hand (`conntrack -D -s {ip}`, `conntrack -D -d {ip}`, and --reply-src / --reply-dst) and retry DEL"),
        )
    })?;
    let Some(flows) = flows_map_path(raw)? else {
        return Ok(());
    };
    forget_flows(&flows, ip).map_err(|e| {
        CniError::new(
            code::ANTISPOOF,
            format!(
                "cannot delete the flow-table entries of {ip} in {}: {e}",
                flows.display()
            ),
            format!("{keep}; check that podnetd runs on this node (and its log), then retry DEL"),
        )
    })?;
    Ok(())
}

/// The pinned `flows` map of the node's eBPF policy datapath (`bpf/policy.c`),
/// beside the programs the node file names; `None` when the node does not run it.
fn flows_map_path(raw: &serde_json::Value) -> Result<Option<PathBuf>, CniError> {
    let node_file = raw
        .get("nodeFile")
        .and_then(|v| v.as_str())
        .unwrap_or(DEFAULT_NODE_FILE);
    let node: NodeInfo = match std::fs::read(node_file) {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| e.to_string()),
        // No agent on this node: no eBPF datapath either.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => Err(e.to_string()),
    }
    .map_err(|e| {
        CniError::new(
            code::IO,
            format!("cannot read the agent's node file {node_file} to find its flow table"),
            format!("{e}; podnetd rewrites it when it starts: restart podnetd on this node and retry DEL (the pod's address stays allocated until then)"),
        )
    })?;
    Ok(node
        .policy_programs
        .and_then(|p| p.from_pod.parent().map(|d| d.join(FLOWS_MAP))))
}

/// The eBPF policy datapath's flow table, pinned by name in the node's bpffs directory.
const FLOWS_MAP: &str = podnet_netlink::flows::FLOWS_MAP;

/// See [`podnet_netlink::flows::forget`].
pub fn forget_flows(path: &Path, ip: IpAddr) -> Result<usize, podnet_netlink::Error> {
    podnet_netlink::flows::forget(path, ip)
}

/// Deletes the link `name` (a pod's host veth: both ends and their filters go) and
/// its datapath entry, returning as soon as the link is gone from the namespace.
/// Absent is success. Returns the pod address the link's MAC names
/// ([`host_mac`]), if there was a link.
pub fn delete_link_detached(name: &str, data_dir: &Path) -> Result<Option<Ipv4Addr>, CniError> {
    let nl = |e| {
        errors::netlink(e, "podnet-cni must run as root; remove the link by hand with `ip link del` if it persists")
    };
    let mut host = Socket::route().map_err(nl)?;
    let Some(l) = link::get_by_name(&mut host, name).map_err(nl)? else {
        return Ok(None);
    };
    let ip = pod_ip_of_host_mac(&l.mac);
    // Listen for the link's removal (on a socket of its own, see Socket::subscribe)
    // before it can happen, then mark the link for deletion.
    let mut watch = Socket::route().map_err(nl)?;
    watch.subscribe(RTNLGRP_LINK).map_err(nl)?;
    // Everything the helper needs exists before the link is marked: a link left marked
    // would be deleted by another DEL's helper, behind this DEL's back.
    // The helper gets a socket of its own: two processes reading one socket would
    // steal each other's answers.
    let mut helper_sock = Socket::route().map_err(nl)?;
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two fds that are owned right below.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(CniError::new(
            code::IO,
            format!("cannot create a pipe while deleting {name}"),
            std::io::Error::last_os_error().to_string(),
        ));
    }
    // SAFETY: both fds were just created and belong to nobody else.
    let (status_r, status_w) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let mark = link::LinkChange {
        group: Some(DELETE_GROUP),
        ..Default::default()
    };
    match link::change(&mut host, link::Target::Index(l.index), &mark) {
        Ok(()) => {}
        Err(e) if e.is_not_found() => {
            forget(data_dir, &l);
            return Ok(ip);
        }
        Err(e) => return Err(nl(e)),
    }
    // SAFETY: podnet-cni is single-threaded (callers of `podnet_cni::run` must be too:
    // see its docs), so the child may allocate; it uses only fds it inherited and
    // leaves with _exit.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(CniError::new(
            code::IO,
            format!("cannot start the cleanup helper for {name}"),
            std::io::Error::last_os_error().to_string(),
        ));
    }
    if pid == 0 {
        // The child keeps only its own socket and the status pipe.
        drop(status_r);
        drop(watch);
        drop(host);
        helper(&mut helper_sock, status_w);
    }
    drop(helper_sock);
    drop(status_w);
    wait_gone(&mut watch, &mut host, l.index, name, &status_r).map_err(|e| {
        CniError::new(
            code::NETLINK,
            format!("delete link {name}: {e}"),
            "remove it by hand with `ip link del` and retry DEL",
        )
    })?;
    forget(data_dir, &l);
    Ok(ip)
}

/// The pod address a host veth's MAC names ([`host_mac`]: `0a:5a` + the address).
fn pod_ip_of_host_mac(mac: &[u8]) -> Option<Ipv4Addr> {
    let b: [u8; 6] = mac.try_into().ok()?;
    let ip = Ipv4Addr::new(b[2], b[3], b[4], b[5]);
    (host_mac(ip) == b).then_some(ip)
}

/// Drops the datapath entry of a deleted host veth. Best effort: the pod is gone and
/// its address must still be released; GC removes an entry left behind.
fn forget(data_dir: &Path, l: &link::LinkInfo) {
    if let Err(e) = antispoof::forget_pod(data_dir, l.index, &l.mac) {
        eprintln!(
            "podnet-cni: could not remove the datapath entry of {} (index {}): {e}; GC removes it",
            l.name, l.index
        );
    }
}

/// The detached helper: deletes every link waiting in [`DELETE_GROUP`] (the kernel
/// returns after its RCU barrier), reports a failure through `status`, and exits.
fn helper(sock: &mut Socket, status: OwnedFd) -> ! {
    // SAFETY: plain system calls in the forked child; stdio goes to /dev/null so the
    // runtime reading our stdout sees end-of-file when the parent exits.
    unsafe {
        libc::prctl(libc::PR_SET_NAME, HELPER_NAME.as_ptr());
        libc::setsid();
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        for fd in 0..3 {
            if null >= 0 {
                libc::dup2(null, fd);
            } else {
                libc::close(fd);
            }
        }
        if null > 2 {
            libc::close(null);
        }
    }
    if let Err(e) = link::delete_group(sock, DELETE_GROUP) {
        let errno = e.errno().unwrap_or(libc::EIO).to_ne_bytes();
        // SAFETY: writing 4 bytes from a local buffer.
        unsafe { libc::write(status.as_raw_fd(), errno.as_ptr() as *const _, 4) };
    }
    // SAFETY: leave without running the parent's atexit handlers or flushing its stdio.
    unsafe { libc::_exit(0) }
}

/// Waits until the kernel announces that link `index` is gone (the socket is
/// subscribed to link notifications), or the helper reports why it could not delete
/// it. If notifications were lost, a lookup decides.
fn wait_gone(
    watch: &mut Socket,
    host: &mut Socket,
    index: u32,
    name: &str,
    status: &OwnedFd,
) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err("the link was still there after 10 s".into());
        }
        let mut fds = [
            libc::pollfd {
                fd: watch.raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: status.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: poll on two valid fds.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), 2, left.as_millis().max(1) as i32) };
        if ready <= 0 {
            continue;
        }
        if fds[1].revents != 0 {
            let mut b = [0u8; 4];
            // SAFETY: reading at most 4 bytes into a local buffer.
            let n = unsafe { libc::read(status.as_raw_fd(), b.as_mut_ptr() as *mut _, 4) };
            if n == 4 {
                return Err(std::io::Error::from_raw_os_error(i32::from_ne_bytes(b)).to_string());
            }
            // EOF: the helper is done; whatever happened, a lookup decides.
            return match link::get_by_name(host, name) {
                Ok(None) => Ok(()),
                Ok(Some(_)) => Err("the helper finished but the link is still there".into()),
                Err(e) => Err(e.to_string()),
            };
        }
        match watch.notifications() {
            Ok(msgs) => {
                // AF_UNSPEC: the link itself went. (An AF_BRIDGE RTM_DELLINK only
                // says it left the bridge.)
                let gone = msgs.iter().any(|(ty, body)| {
                    *ty == RTM_DELLINK
                        && body.first() == Some(&(libc::AF_UNSPEC as u8))
                        && body
                            .get(4..8)
                            .map(|b| u32::from_ne_bytes(b.try_into().unwrap()))
                            == Some(index)
                });
                if gone {
                    return Ok(());
                }
            }
            // Notifications overflowed: ask directly.
            Err(_) => {
                if let Ok(None) = link::get_by_name(host, name) {
                    return Ok(());
                }
            }
        }
    }
}
