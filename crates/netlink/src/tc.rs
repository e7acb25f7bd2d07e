//! Traffic control on a link's ingress and egress: a `clsact` qdisc and eBPF classifiers in
//! direct-action mode (`tc qdisc add dev X clsact`,
//! `tc filter add dev X ingress prio P bpf da fd F name N`), and reading the filters
//! back (`tc filter show dev X ingress`).
//!
//! Filters on a link live and die with that link: deleting the link removes them (and
//! frees their programs and maps) in the same kernel operation, with no separate
//! cleanup and no wait.

use crate::error::Result;
use crate::msg::{self, Msg};
use crate::socket::{Request, Socket};
use std::os::fd::{AsRawFd, OwnedFd};

const RTM_NEWQDISC: u16 = 36;
const RTM_NEWTFILTER: u16 = 44;
const RTM_DELTFILTER: u16 = 45;
const RTM_GETTFILTER: u16 = 46;
const TCA_KIND: u16 = 1;
const TCA_OPTIONS: u16 = 2;
const TCA_BPF_FD: u16 = 6;
const TCA_BPF_NAME: u16 = 7;
const TCA_BPF_FLAGS: u16 = 8;
const TCA_BPF_ID: u16 = 11;
const TCA_BPF_FLAG_ACT_DIRECT: u32 = 1;
const TC_H_CLSACT: u32 = 0xFFFF_FFF1;
/// `parent ffff:fff2`: the ingress hook of clsact.
const INGRESS: u32 = 0xFFFF_FFF2;
/// `parent ffff:fff3`: the egress hook of clsact.
const EGRESS: u32 = 0xFFFF_FFF3;
/// ETH_P_ALL: the filter sees every frame.
const ETH_P_ALL: u16 = 0x0003;

fn tcmsg(ifindex: u32, handle: u32, parent: u32, info: u32) -> [u8; 20] {
    let mut h = [0u8; 20];
    h[4..8].copy_from_slice(&ifindex.to_ne_bytes());
    h[8..12].copy_from_slice(&handle.to_ne_bytes());
    h[12..16].copy_from_slice(&parent.to_ne_bytes());
    h[16..20].copy_from_slice(&info.to_ne_bytes());
    h
}

/// `tc qdisc add dev INDEX clsact`.
pub fn clsact_request(ifindex: u32) -> Request {
    let mut m = Msg::new(
        RTM_NEWQDISC,
        crate::sys::NLM_F_CREATE | crate::sys::NLM_F_EXCL,
    )
    .fixed(&tcmsg(ifindex, 0xFFFF_0000, TC_H_CLSACT, 0));
    m.str(TCA_KIND, "clsact");
    Request::new(m, "add clsact qdisc to", format!("link {ifindex}"))
}

/// A token bucket's rate and burst: `rate` in bytes per second, `burst` in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    pub rate: u64,
    pub burst: u32,
}

/// `tc qdisc replace dev INDEX root tbf rate R burst B latency 25ms`: the link's sending
/// limited to `s` (its queue holds what `s.rate` sends in 25 ms, at least one burst).
pub fn tbf_root_request(ifindex: u32, s: Shape) -> Request {
    const TC_H_ROOT: u32 = 0xFFFF_FFFF;
    const TCA_TBF_PARMS: u16 = 1;
    const TCA_TBF_RATE64: u16 = 4;
    const TCA_TBF_BURST: u16 = 6;
    const TC_LINKLAYER_ETHERNET: u8 = 1;
    let mut m = Msg::new(
        RTM_NEWQDISC,
        crate::sys::NLM_F_CREATE | crate::sys::NLM_F_REPLACE,
    )
    .fixed(&tcmsg(ifindex, 0x0001_0000, TC_H_ROOT, 0));
    m.str(TCA_KIND, "tbf");
    // struct tc_tbf_qopt: rate and peakrate (struct tc_ratespec, 12 bytes each:
    // cell_log, linklayer, overhead, cell_align, mpu, rate), limit, buffer, mtu. The
    // Ethernet link layer spares the rate table; the burst is given in bytes
    // (TCA_TBF_BURST), from which the kernel computes the buffer.
    let mut q = [0u8; 36];
    q[1] = TC_LINKLAYER_ETHERNET;
    q[8..12].copy_from_slice(&(s.rate.min(u32::MAX as u64) as u32).to_ne_bytes());
    let limit = (s.rate / 40).max(s.burst as u64).min(u32::MAX as u64) as u32;
    q[24..28].copy_from_slice(&limit.to_ne_bytes());
    let opts = m.nest(TCA_OPTIONS);
    m.attr(TCA_TBF_PARMS, &q);
    if s.rate > u32::MAX as u64 {
        m.attr(TCA_TBF_RATE64, &s.rate.to_ne_bytes());
    }
    m.u32(TCA_TBF_BURST, s.burst);
    m.end(opts);
    Request::new(m, "add tbf qdisc to", format!("link {ifindex}"))
}

/// The kind of the link's root qdisc (`noqueue`, `tbf`, …), if it has one.
pub fn root_qdisc(sock: &mut Socket, ifindex: u32) -> Result<Option<String>> {
    const RTM_GETQDISC: u16 = 38;
    let m = Msg::new(RTM_GETQDISC, 0).fixed(&tcmsg(0, 0, 0, 0));
    let mut kind = None;
    for p in sock.dump(m, "list qdiscs of", &format!("link {ifindex}"))? {
        if p.len() < 20 || u32::from_ne_bytes(p[4..8].try_into().unwrap()) != ifindex {
            continue;
        }
        if u32::from_ne_bytes(p[12..16].try_into().unwrap()) != 0xFFFF_FFFF {
            continue;
        }
        kind = msg::find(&p[20..], TCA_KIND).map(msg::as_str);
    }
    Ok(kind)
}

/// `tc filter add dev INDEX ingress prio PRIO protocol all bpf da fd PROG name NAME`.
/// The kernel takes its own reference on the program; `prog` may be closed after.
pub fn bpf_ingress_request(ifindex: u32, prio: u16, prog: &OwnedFd, name: &str) -> Request {
    bpf_filter_request(ifindex, INGRESS, prio, prog, name)
}

/// `tc filter add dev INDEX egress prio PRIO protocol all bpf da fd PROG name NAME`:
/// every frame the link sends (for a host veth: every frame delivered to its pod).
pub fn bpf_egress_request(ifindex: u32, prio: u16, prog: &OwnedFd, name: &str) -> Request {
    bpf_filter_request(ifindex, EGRESS, prio, prog, name)
}

/// `tc filter replace dev INDEX ingress prio PRIO handle 1 protocol all bpf da fd PROG
/// name NAME`: one kernel operation, so the link is never without a filter at that
/// priority when one was there.
pub fn bpf_ingress_replace_request(ifindex: u32, prio: u16, prog: &OwnedFd, name: &str) -> Request {
    bpf_filter(
        ifindex,
        INGRESS,
        prio,
        prog,
        name,
        crate::sys::NLM_F_REPLACE,
    )
}

/// `tc filter replace dev INDEX egress prio PRIO handle 1 protocol all bpf da fd PROG
/// name NAME`: the egress twin of [`bpf_ingress_replace_request`].
pub fn bpf_egress_replace_request(ifindex: u32, prio: u16, prog: &OwnedFd, name: &str) -> Request {
    bpf_filter(ifindex, EGRESS, prio, prog, name, crate::sys::NLM_F_REPLACE)
}

fn bpf_filter_request(ifindex: u32, parent: u32, prio: u16, prog: &OwnedFd, name: &str) -> Request {
    bpf_filter(ifindex, parent, prio, prog, name, crate::sys::NLM_F_EXCL)
}

/// `mode`: NLM_F_EXCL (add) or NLM_F_REPLACE (add or replace).
fn bpf_filter(
    ifindex: u32,
    parent: u32,
    prio: u16,
    prog: &OwnedFd,
    name: &str,
    mode: u16,
) -> Request {
    let info = ((prio as u32) << 16) | (ETH_P_ALL.to_be() as u32);
    let mut m = Msg::new(RTM_NEWTFILTER, crate::sys::NLM_F_CREATE | mode)
        .fixed(&tcmsg(ifindex, 1, parent, info));
    m.str(TCA_KIND, "bpf");
    let o = m.nest(TCA_OPTIONS);
    m.u32(TCA_BPF_FD, prog.as_raw_fd() as u32);
    m.str(TCA_BPF_NAME, name);
    m.u32(TCA_BPF_FLAGS, TCA_BPF_FLAG_ACT_DIRECT);
    m.end(o);
    Request::new(
        m,
        if parent == EGRESS {
            "attach egress filter to"
        } else {
            "attach ingress filter to"
        },
        format!("link {ifindex} ({name})"),
    )
}

/// `tc filter del dev INDEX ingress prio PRIO`: every filter of that priority (for a
/// priority only podnet uses, podnet's filter).
pub fn del_ingress_request(ifindex: u32, prio: u16) -> Request {
    let info = ((prio as u32) << 16) | (ETH_P_ALL.to_be() as u32);
    let m = Msg::new(RTM_DELTFILTER, 0).fixed(&tcmsg(ifindex, 0, INGRESS, info));
    Request::new(
        m,
        "remove ingress filter from",
        format!("link {ifindex} (prio {prio})"),
    )
}

/// `tc filter del dev INDEX egress prio PRIO`.
pub fn del_egress_request(ifindex: u32, prio: u16) -> Request {
    let info = ((prio as u32) << 16) | (ETH_P_ALL.to_be() as u32);
    let m = Msg::new(RTM_DELTFILTER, 0).fixed(&tcmsg(ifindex, 0, EGRESS, info));
    Request::new(
        m,
        "remove egress filter from",
        format!("link {ifindex} (prio {prio})"),
    )
}

/// An ingress filter as read back from the kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FilterInfo {
    pub prio: u16,
    /// `bpf`, `u32`…
    pub kind: String,
    /// For `bpf`: the name given at attach time and the program's kernel id.
    pub name: Option<String>,
    pub prog_id: Option<u32>,
}

/// `tc filter show dev INDEX ingress`.
pub fn list_ingress(sock: &mut Socket, ifindex: u32) -> Result<Vec<FilterInfo>> {
    list(sock, ifindex, INGRESS)
}

/// `tc filter show dev INDEX egress`.
pub fn list_egress(sock: &mut Socket, ifindex: u32) -> Result<Vec<FilterInfo>> {
    list(sock, ifindex, EGRESS)
}

fn list(sock: &mut Socket, ifindex: u32, parent: u32) -> Result<Vec<FilterInfo>> {
    let m = Msg::new(RTM_GETTFILTER, 0).fixed(&tcmsg(ifindex, 0, parent, 0));
    let what = if parent == EGRESS {
        "list egress filters of"
    } else {
        "list ingress filters of"
    };
    let bodies = match sock.dump(m, what, &format!("link {ifindex}")) {
        // No clsact qdisc at all: no filters.
        Err(e) if e.errno() == Some(libc::EINVAL) => return Ok(vec![]),
        other => other?,
    };
    let mut out = Vec::new();
    for b in bodies {
        if b.len() < 20 {
            continue;
        }
        let info = u32::from_ne_bytes(b[16..20].try_into().unwrap());
        let attrs = &b[20..];
        let Some(opts) = msg::find(attrs, TCA_OPTIONS) else {
            continue; // the per-priority head carries no options
        };
        out.push(FilterInfo {
            prio: (info >> 16) as u16,
            kind: msg::find(attrs, TCA_KIND)
                .map(msg::as_str)
                .unwrap_or_default(),
            name: msg::find(opts, TCA_BPF_NAME).map(msg::as_str),
            prog_id: msg::find(opts, TCA_BPF_ID).and_then(msg::as_u32),
        });
    }
    Ok(out)
}
