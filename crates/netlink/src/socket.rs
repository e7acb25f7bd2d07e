//! A netlink socket bound to the namespace it was opened in.
//!
//! Requests can be pipelined: [`Socket::ack_all`] writes several requests in one
//! `sendmsg` and collects one acknowledgement per request, so a pod's address, link
//! state and route cost one round trip instead of three.

use crate::error::{Error, Result};
use crate::msg::{self, Msg};
use crate::netns::Netns;
use crate::sys::*;
use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const RECV_BUF: usize = 64 * 1024;

/// One request to be acknowledged: the message, the operation and the object it names.
pub struct Request {
    pub msg: Msg,
    pub op: &'static str,
    pub obj: String,
}

impl Request {
    pub fn new(msg: Msg, op: &'static str, obj: impl Into<String>) -> Request {
        Request {
            msg,
            op,
            obj: obj.into(),
        }
    }
}

pub struct Socket {
    fd: OwnedFd,
    seq: u32,
    buf: Vec<u8>,
}

impl Socket {
    /// Opens a netlink socket of `proto` in the calling thread's network namespace.
    pub fn open(proto: i32) -> Result<Socket> {
        let what = if proto == NETLINK_ROUTE {
            "rtnetlink".to_string()
        } else {
            format!("netlink protocol {proto}")
        };
        // SAFETY: plain socket(2) call; the fd is owned immediately below.
        let fd =
            unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, proto) };
        if fd < 0 {
            return Err(Error::io(
                "open netlink socket",
                what,
                io::Error::last_os_error(),
            ));
        }
        // SAFETY: fd was just returned by socket(2) and is not owned elsewhere.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let one: libc::c_int = 1;
        for opt in [NETLINK_EXT_ACK, NETLINK_CAP_ACK] {
            // SAFETY: setsockopt with a valid int pointer; failure is harmless (older kernels).
            unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    SOL_NETLINK,
                    opt,
                    &one as *const _ as *const libc::c_void,
                    4,
                );
            }
        }
        let tv = libc::timeval {
            tv_sec: 10,
            tv_usec: 0,
        };
        // SAFETY: setsockopt with a valid timeval pointer.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &tv as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::timeval>() as u32,
            );
        }
        // Sequence numbers start from the clock so replies to a previous process using
        // a recycled port id can never be mistaken for ours.
        let seq = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(1)
            | 1;
        Ok(Socket {
            fd,
            seq,
            buf: vec![0u8; RECV_BUF],
        })
    }

    pub fn route() -> Result<Socket> {
        Socket::open(NETLINK_ROUTE)
    }

    /// Opens a socket inside `ns`; the calling thread's namespace is unchanged afterwards.
    pub fn open_in(proto: i32, ns: &Netns) -> Result<Socket> {
        ns.enter_for(|| Socket::open(proto))?
    }

    pub fn route_in(ns: &Netns) -> Result<Socket> {
        Socket::open_in(NETLINK_ROUTE, ns)
    }

    /// Joins a multicast group (e.g. `RTNLGRP_LINK` = 1): the kernel then sends this
    /// socket a notification for every change of that kind in the namespace. Use a
    /// socket of its own for that: when notifications overflow its buffer, the next
    /// receive on it fails with ENOBUFS, whatever request it was waiting for.
    pub fn subscribe(&mut self, group: u32) -> Result<()> {
        // Bound first, letting the kernel pick the port id: an unbound socket has port
        // id 0, and the kernel skips port 0 when it broadcasts notifications it raised
        // itself (a group deletion, for one). A socket that sends is bound by its first
        // send, so only subscribers need this.
        let mut local: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        local.nl_family = libc::AF_NETLINK as u16;
        // SAFETY: bind with a valid sockaddr_nl.
        let rc = unsafe {
            libc::bind(
                self.fd.as_raw_fd(),
                &local as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if rc != 0 {
            return Err(Error::io(
                "bind netlink socket",
                group.to_string(),
                io::Error::last_os_error(),
            ));
        }
        let size: libc::c_int = 1 << 20;
        // SAFETY: setsockopt with a valid int pointer; a smaller buffer is fine too.
        unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                &size as *const _ as *const libc::c_void,
                4,
            );
        }
        // SAFETY: setsockopt with a valid u32 pointer.
        let rc = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                SOL_NETLINK,
                1, // NETLINK_ADD_MEMBERSHIP
                &group as *const u32 as *const libc::c_void,
                4,
            )
        };
        if rc != 0 {
            return Err(Error::io(
                "subscribe to netlink group",
                group.to_string(),
                io::Error::last_os_error(),
            ));
        }
        Ok(())
    }

    /// The socket's file descriptor, for `poll`.
    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        self.fd.as_raw_fd()
    }

    /// Reads one datagram of notifications: `(message type, body)` of each message.
    /// Fails with ENOBUFS if the kernel had to drop notifications. Meant for a socket
    /// that only listens: a notification caused by someone's request carries that
    /// request's sequence number, so nothing is filtered by it.
    pub fn notifications(&mut self) -> Result<Vec<(u16, Vec<u8>)>> {
        let n = self.recv("read netlink notifications", "")?;
        Ok(Replies::new(&self.buf[..n])
            .map(|m| (m.ty, m.body.to_vec()))
            .collect())
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1).max(1);
        self.seq
    }

    fn send(&self, bytes: &[u8], op: &'static str, obj: &str) -> Result<()> {
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as u16;
        // SAFETY: bytes and addr are valid for the duration of the call.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                bytes.as_ptr() as *const libc::c_void,
                bytes.len(),
                0,
                &addr as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if n < 0 {
            return Err(Error::io(op, obj, io::Error::last_os_error()));
        }
        Ok(())
    }

    /// Receives one datagram; returns its length in `self.buf`.
    fn recv(&mut self, op: &'static str, obj: &str) -> Result<usize> {
        loop {
            // SAFETY: buf is a valid writable buffer of the given length.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    self.buf.as_mut_ptr() as *mut libc::c_void,
                    self.buf.len(),
                    libc::MSG_TRUNC,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                if e.kind() == io::ErrorKind::WouldBlock {
                    return Err(Error::io(
                        op,
                        obj,
                        io::Error::new(
                            io::ErrorKind::TimedOut,
                            "no answer from the kernel in 10 s",
                        ),
                    ));
                }
                return Err(Error::io(op, obj, e));
            }
            let n = n as usize;
            if n > self.buf.len() {
                return Err(Error::Malformed {
                    op,
                    obj: obj.to_owned(),
                    why: format!(
                        "netlink reply of {n} bytes is larger than the {RECV_BUF}-byte buffer"
                    ),
                });
            }
            return Ok(n);
        }
    }

    /// Sends every request in one write, each asking for an acknowledgement, and
    /// returns each request's outcome in order. The kernel handles them in order.
    pub fn ack_all(&mut self, mut reqs: Vec<Request>) -> Vec<Result<()>> {
        let mut wire = Vec::new();
        let mut pending: HashMap<u32, usize> = HashMap::new();
        for (i, r) in reqs.iter_mut().enumerate() {
            let seq = self.next_seq();
            r.msg.add_flags(NLM_F_ACK);
            wire.extend_from_slice(r.msg.finish(seq));
            pending.insert(seq, i);
        }
        let mut out: Vec<Option<Result<()>>> = reqs.iter().map(|_| None).collect();
        if let Some(first) = reqs.first() {
            if let Err(e) = self.send(&wire, first.op, &first.obj) {
                return reqs.iter().map(|r| Err(same_failure(&e, r))).collect();
            }
        }
        while !pending.is_empty() {
            let (op, obj) = {
                let i = *pending.values().next().unwrap();
                (reqs[i].op, reqs[i].obj.clone())
            };
            let n = match self.recv(op, &obj) {
                Ok(n) => n,
                Err(e) => {
                    for (_, i) in pending.drain() {
                        out[i] = Some(Err(same_failure(&e, &reqs[i])));
                    }
                    break;
                }
            };
            for m in Replies::new(&self.buf[..n]) {
                if m.ty != NLMSG_ERROR {
                    continue;
                }
                if let Some(i) = pending.remove(&m.seq) {
                    let r = &reqs[i];
                    out[i] = Some(match m.error() {
                        Some((0, _)) | None => Ok(()),
                        Some((errno, ext)) => {
                            Err(Error::from_errno(r.op, r.obj.clone(), errno, ext))
                        }
                    });
                }
            }
        }
        out.into_iter().map(|o| o.unwrap_or(Ok(()))).collect()
    }

    /// One request, acknowledged.
    pub fn ack(&mut self, msg: Msg, op: &'static str, obj: impl Into<String>) -> Result<()> {
        self.ack_all(vec![Request::new(msg, op, obj)])
            .pop()
            .unwrap_or(Ok(()))
    }

    /// One request, acknowledged, asking the kernel to echo what it did (NLM_F_ECHO):
    /// returns the bodies of the echoed messages (e.g. the created link).
    pub fn ack_echo(&mut self, mut msg: Msg, op: &'static str, obj: &str) -> Result<Vec<Vec<u8>>> {
        msg.add_flags(NLM_F_ACK | NLM_F_ECHO);
        let seq = self.next_seq();
        let wire = msg.finish(seq).to_vec();
        self.send(&wire, op, obj)?;
        let mut echoed = Vec::new();
        loop {
            let n = self.recv(op, obj)?;
            for m in Replies::new(&self.buf[..n]) {
                if m.seq != seq {
                    continue;
                }
                if m.ty != NLMSG_ERROR {
                    echoed.push(m.body.to_vec());
                    continue;
                }
                return match m.error() {
                    Some((0, _)) | None => Ok(echoed),
                    Some((errno, ext)) => Err(Error::from_errno(op, obj, errno, ext)),
                };
            }
        }
    }

    /// A request answered by exactly one message (e.g. RTM_GETLINK by name). Returns
    /// that message's body (after the netlink header).
    pub fn get(&mut self, mut msg: Msg, op: &'static str, obj: &str) -> Result<Vec<u8>> {
        let seq = self.next_seq();
        let wire = msg.finish(seq).to_vec();
        self.send(&wire, op, obj)?;
        loop {
            let n = self.recv(op, obj)?;
            for m in Replies::new(&self.buf[..n]) {
                if m.seq != seq {
                    continue;
                }
                if m.ty == NLMSG_ERROR {
                    return match m.error() {
                        Some((errno, ext)) if errno != 0 => {
                            Err(Error::from_errno(op, obj, errno, ext))
                        }
                        _ => Err(Error::Malformed {
                            op,
                            obj: obj.into(),
                            why: "the kernel acknowledged without an answer".into(),
                        }),
                    };
                }
                return Ok(m.body.to_vec());
            }
        }
    }

    /// A dump request; returns the body of every message in the answer.
    pub fn dump(&mut self, mut msg: Msg, op: &'static str, obj: &str) -> Result<Vec<Vec<u8>>> {
        msg.add_flags(NLM_F_DUMP);
        let seq = self.next_seq();
        let wire = msg.finish(seq).to_vec();
        self.send(&wire, op, obj)?;
        let mut out = Vec::new();
        loop {
            let n = self.recv(op, obj)?;
            for m in Replies::new(&self.buf[..n]) {
                if m.seq != seq {
                    continue;
                }
                match m.ty {
                    NLMSG_DONE => return Ok(out),
                    NLMSG_ERROR => match m.error() {
                        Some((errno, ext)) if errno != 0 => {
                            return Err(Error::from_errno(op, obj, errno, ext))
                        }
                        _ => return Ok(out),
                    },
                    NLMSG_NOOP => {}
                    _ => out.push(m.body.to_vec()),
                }
            }
        }
    }
}

/// The failure `e` of a shared send or receive, restated for request `r`.
fn same_failure(e: &Error, r: &Request) -> Error {
    let source = match e {
        Error::Io { source, .. } | Error::Kernel { source, .. } => match source.raw_os_error() {
            Some(code) => io::Error::from_raw_os_error(code),
            None => io::Error::new(source.kind(), source.to_string()),
        },
        other => io::Error::other(other.to_string()),
    };
    Error::io(r.op, r.obj.clone(), source)
}

/// One message in a datagram from the kernel.
pub(crate) struct Reply<'a> {
    pub ty: u16,
    pub flags: u16,
    pub seq: u32,
    pub body: &'a [u8],
}

impl Reply<'_> {
    /// For NLMSG_ERROR: the positive errno (0 = ack) and the extended-ack message.
    pub fn error(&self) -> Option<(i32, Option<String>)> {
        let code = i32::from_ne_bytes(self.body.get(..4)?.try_into().ok()?);
        let mut ext = None;
        if self.flags & NLM_F_ACK_TLVS != 0 {
            // The original request's header follows; capped (CAP_ACK) means header only.
            let capped = self.flags & 0x100 != 0;
            let orig_len = if capped {
                NLMSG_HDRLEN
            } else {
                self.body
                    .get(4..8)
                    .and_then(|b| b.try_into().ok())
                    .map(u32::from_ne_bytes)
                    .unwrap_or(0) as usize
            };
            if let Some(tlvs) = self.body.get(4 + orig_len..) {
                ext = msg::find(tlvs, NLMSGERR_ATTR_MSG)
                    .map(msg::as_str)
                    .filter(|s| !s.is_empty());
            }
        }
        Some((-code, ext))
    }
}

pub(crate) struct Replies<'a> {
    buf: &'a [u8],
}

impl<'a> Replies<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Replies { buf }
    }
}

impl<'a> Iterator for Replies<'a> {
    type Item = Reply<'a>;
    fn next(&mut self) -> Option<Reply<'a>> {
        if self.buf.len() < NLMSG_HDRLEN {
            return None;
        }
        let len = u32::from_ne_bytes(self.buf[0..4].try_into().ok()?) as usize;
        if len < NLMSG_HDRLEN || len > self.buf.len() {
            return None;
        }
        let r = Reply {
            ty: u16::from_ne_bytes(self.buf[4..6].try_into().ok()?),
            flags: u16::from_ne_bytes(self.buf[6..8].try_into().ok()?),
            seq: u32::from_ne_bytes(self.buf[8..12].try_into().ok()?),
            body: &self.buf[NLMSG_HDRLEN..len],
        };
        let next = ((len + 3) & !3).min(self.buf.len());
        self.buf = &self.buf[next..];
        Some(r)
    }
}
