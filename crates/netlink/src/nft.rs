//! nftables over nfnetlink: tables, base chains, rules with counters, and reading
//! them back. This is the same wire format `nft` uses (`nft -d netlink` prints it),
//! written directly so that installing a pod's rules costs one netlink round trip.
//!
//! Comments are stored as nft stores them (userdata TLV), so `nft list ruleset`
//! shows podnet's own explanation next to each rule.

use crate::error::Result;
use crate::msg::{self, Msg};
use crate::socket::{Request, Socket};
use crate::sys::*;

/// `netdev` family: chains bound to one device's ingress.
pub const FAMILY_NETDEV: u8 = 5;
/// `bridge` family.
pub const FAMILY_BRIDGE: u8 = 7;
/// `inet` family.
pub const FAMILY_INET: u8 = 1;

fn family_name(f: u8) -> &'static str {
    match f {
        FAMILY_NETDEV => "netdev",
        FAMILY_BRIDGE => "bridge",
        FAMILY_INET => "inet",
        2 => "ip",
        10 => "ip6",
        3 => "arp",
        _ => "?",
    }
}

fn nfgen(family: u8) -> [u8; 4] {
    [family, 0, 0, 0]
}

fn nft_msg(kind: u16, flags: u16, family: u8) -> Msg {
    Msg::new((NFNL_SUBSYS_NFTABLES << 8) | kind, flags).fixed(&nfgen(family))
}

fn comment_udata(text: &str) -> Vec<u8> {
    // nft limits comments to 128 bytes; keep within it so `nft list` can print ours.
    let mut t: String = text.chars().take(127).collect();
    while t.len() > 127 {
        t.pop();
    }
    let mut v = vec![NFTNL_UDATA_COMMENT, (t.len() + 1) as u8];
    v.extend_from_slice(t.as_bytes());
    v.push(0);
    v
}

fn comment_of(udata: &[u8]) -> Option<String> {
    let mut rest = udata;
    while rest.len() >= 2 {
        let (ty, len) = (rest[0], rest[1] as usize);
        let val = rest.get(2..2 + len)?;
        if ty == NFTNL_UDATA_COMMENT {
            return Some(msg::as_str(val));
        }
        rest = &rest[2 + len..];
    }
    None
}

/// Where a payload expression reads from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Base {
    /// The Ethernet header.
    Link = 0,
    /// The IP or ARP header.
    Network = 1,
    /// The TCP/UDP/ICMP header.
    Transport = 2,
}

/// Comparison operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Eq = 0,
    Neq = 1,
}

/// `meta` keys podnet uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetaKey {
    /// The layer-4 protocol number (after IPv6 extension headers).
    L4Proto = 16,
}

/// Final verdicts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Drop = 0,
    Accept = 1,
}

/// One nftables expression, always using register 1 for data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expr {
    /// `payload load LEN @ BASE + OFFSET => reg 1`
    Payload { base: Base, offset: u32, len: u32 },
    /// `meta load KEY => reg 1`
    Meta(MetaKey),
    /// `cmp OP reg 1 DATA`
    Cmp(Op, Vec<u8>),
    /// `counter`
    Counter,
    /// `immediate reg 0 VERDICT`
    Verdict(Verdict),
}

impl Expr {
    fn encode(&self, m: &mut Msg) {
        let elem = m.nest(NFTA_LIST_ELEM);
        let (name, _) = self.name();
        m.str(NFTA_EXPR_NAME, name);
        let data = m.nest(NFTA_EXPR_DATA);
        match self {
            Expr::Payload { base, offset, len } => {
                m.be32(NFTA_PAYLOAD_DREG, NFT_REG_1);
                m.be32(NFTA_PAYLOAD_BASE, *base as u32);
                m.be32(NFTA_PAYLOAD_OFFSET, *offset);
                m.be32(NFTA_PAYLOAD_LEN, *len);
            }
            Expr::Meta(k) => {
                m.be32(NFTA_META_DREG, NFT_REG_1);
                m.be32(NFTA_META_KEY, *k as u32);
            }
            Expr::Cmp(op, bytes) => {
                m.be32(NFTA_CMP_SREG, NFT_REG_1);
                m.be32(NFTA_CMP_OP, *op as u32);
                let d = m.nest(NFTA_CMP_DATA);
                m.attr(NFTA_DATA_VALUE, bytes);
                m.end(d);
            }
            Expr::Counter => {
                m.attr(NFTA_COUNTER_BYTES, &0u64.to_be_bytes());
                m.attr(NFTA_COUNTER_PACKETS, &0u64.to_be_bytes());
            }
            Expr::Verdict(v) => {
                m.be32(NFTA_IMMEDIATE_DREG, NFT_REG_VERDICT);
                let d = m.nest(NFTA_IMMEDIATE_DATA);
                let vd = m.nest(NFTA_DATA_VERDICT);
                m.be32(NFTA_VERDICT_CODE, *v as u32);
                m.end(vd);
                m.end(d);
            }
        }
        m.end(data);
        m.end(elem);
    }

    fn name(&self) -> (&'static str, ()) {
        (
            match self {
                Expr::Payload { .. } => "payload",
                Expr::Meta(_) => "meta",
                Expr::Cmp(..) => "cmp",
                Expr::Counter => "counter",
                Expr::Verdict(_) => "immediate",
            },
            (),
        )
    }
}

/// A set of changes committed atomically (`nft -f` of one file).
#[derive(Default)]
pub struct Batch {
    reqs: Vec<Request>,
}

impl Batch {
    pub fn new() -> Batch {
        Batch::default()
    }

    pub fn is_empty(&self) -> bool {
        self.reqs.is_empty()
    }

    /// `add table FAMILY NAME { comment "…" }` — no error if it exists.
    pub fn add_table(&mut self, family: u8, name: &str, comment: &str) -> &mut Batch {
        let mut m = nft_msg(NFT_MSG_NEWTABLE, NLM_F_CREATE, family);
        m.str(NFTA_TABLE_NAME, name);
        m.attr(NFTA_TABLE_USERDATA, &comment_udata(comment));
        self.reqs.push(Request::new(
            m,
            "create nftables table",
            format!("{} {name}", family_name(family)),
        ));
        self
    }

    /// `add chain netdev TABLE NAME { type filter hook ingress device DEV priority P; }`
    /// — fails if the chain exists.
    pub fn add_ingress_chain(
        &mut self,
        table: &str,
        name: &str,
        dev: &str,
        priority: i32,
        comment: &str,
    ) -> &mut Batch {
        let mut m = nft_msg(NFT_MSG_NEWCHAIN, NLM_F_CREATE | NLM_F_EXCL, FAMILY_NETDEV);
        m.str(NFTA_CHAIN_TABLE, table);
        m.str(NFTA_CHAIN_NAME, name);
        let h = m.nest(NFTA_CHAIN_HOOK);
        m.be32(NFTA_HOOK_HOOKNUM, 0);
        m.be32(NFTA_HOOK_PRIORITY, priority as u32);
        m.str(NFTA_HOOK_DEV, dev);
        m.end(h);
        m.be32(NFTA_CHAIN_POLICY, Verdict::Accept as u32);
        m.str(NFTA_CHAIN_TYPE, "filter");
        m.attr(NFTA_CHAIN_USERDATA, &comment_udata(comment));
        self.reqs.push(Request::new(
            m,
            "create nftables chain",
            format!("netdev {table} {name} (ingress of {dev})"),
        ));
        self
    }

    /// `add rule FAMILY TABLE CHAIN EXPRS comment "…"` (appended).
    pub fn add_rule(
        &mut self,
        family: u8,
        table: &str,
        chain: &str,
        exprs: &[Expr],
        comment: &str,
    ) -> &mut Batch {
        let mut m = nft_msg(NFT_MSG_NEWRULE, NLM_F_CREATE | 0x800, family);
        m.str(NFTA_RULE_TABLE, table);
        m.str(NFTA_RULE_CHAIN, chain);
        let l = m.nest(NFTA_RULE_EXPRESSIONS);
        for e in exprs {
            e.encode(&mut m);
        }
        m.end(l);
        m.attr(NFTA_RULE_USERDATA, &comment_udata(comment));
        self.reqs.push(Request::new(
            m,
            "add nftables rule",
            format!("{} {table} {chain} ({comment})", family_name(family)),
        ));
        self
    }

    /// `destroy chain FAMILY TABLE NAME` — the chain and its rules; absent is success.
    pub fn destroy_chain(&mut self, family: u8, table: &str, name: &str) -> &mut Batch {
        let mut m = nft_msg(NFT_MSG_DESTROYCHAIN, 0, family);
        m.str(NFTA_CHAIN_TABLE, table);
        m.str(NFTA_CHAIN_NAME, name);
        self.reqs.push(Request::new(
            m,
            "delete nftables chain",
            format!("{} {table} {name}", family_name(family)),
        ));
        self
    }

    /// `destroy table FAMILY NAME` — absent is success.
    pub fn destroy_table(&mut self, family: u8, name: &str) -> &mut Batch {
        let mut m = nft_msg(NFT_MSG_DESTROYTABLE, 0, family);
        m.str(NFTA_TABLE_NAME, name);
        self.reqs.push(Request::new(
            m,
            "delete nftables table",
            format!("{} {name}", family_name(family)),
        ));
        self
    }

    /// Commits everything at once; nothing is applied if any part fails.
    /// A missing table or chain while destroying counts as success.
    pub fn commit(self, sock: &mut Socket) -> Result<()> {
        if self.reqs.is_empty() {
            return Ok(());
        }
        let only_destroys = self.reqs.iter().all(|r| {
            let t = r.msg.msg_type() & 0xff;
            t == NFT_MSG_DESTROYCHAIN || t == NFT_MSG_DESTROYTABLE
        });
        match sock.nft_batch(self.reqs) {
            Err(e) if only_destroys && e.is_not_found() => Ok(()),
            other => other,
        }
    }
}

/// A chain as read back from the kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainInfo {
    pub table: String,
    pub name: String,
    pub comment: Option<String>,
    /// The device a netdev base chain is bound to.
    pub dev: Option<String>,
}

/// `nft list chains FAMILY` restricted to `table`. A missing table gives an empty list.
pub fn list_chains(sock: &mut Socket, family: u8, table: &str) -> Result<Vec<ChainInfo>> {
    let mut m = nft_msg(NFT_MSG_GETCHAIN, 0, family);
    m.str(NFTA_CHAIN_TABLE, table);
    let bodies = match sock.dump(m, "list nftables chains", table) {
        Err(e) if e.is_not_found() => return Ok(vec![]),
        other => other?,
    };
    Ok(bodies
        .iter()
        .filter_map(|b| {
            let attrs = b.get(4..)?;
            let t = msg::as_str(msg::find(attrs, NFTA_CHAIN_TABLE)?);
            (t == table).then(|| ChainInfo {
                table: t,
                name: msg::find(attrs, NFTA_CHAIN_NAME)
                    .map(msg::as_str)
                    .unwrap_or_default(),
                comment: msg::find(attrs, NFTA_CHAIN_USERDATA).and_then(comment_of),
                dev: msg::find(attrs, NFTA_CHAIN_HOOK)
                    .and_then(|h| msg::find(h, NFTA_HOOK_DEV))
                    .map(msg::as_str),
            })
        })
        .collect())
}

/// A rule's comment and counter, as read back from the kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleInfo {
    pub comment: Option<String>,
    pub packets: Option<u64>,
    pub bytes: Option<u64>,
    /// Expression names in order (`payload`, `cmp`, `counter`, …).
    pub exprs: Vec<String>,
}

/// `nft list chain FAMILY TABLE CHAIN`, as comments and counters.
pub fn list_rules(
    sock: &mut Socket,
    family: u8,
    table: &str,
    chain: &str,
) -> Result<Vec<RuleInfo>> {
    let mut m = nft_msg(NFT_MSG_GETRULE, 0, family);
    m.str(NFTA_RULE_TABLE, table);
    m.str(NFTA_RULE_CHAIN, chain);
    let obj = format!("{} {table} {chain}", family_name(family));
    let bodies = sock.dump(m, "list nftables rules", &obj)?;
    Ok(bodies
        .iter()
        .filter_map(|b| {
            let attrs = b.get(4..)?;
            if msg::find(attrs, NFTA_RULE_CHAIN)
                .map(msg::as_str)
                .as_deref()
                != Some(chain)
            {
                return None;
            }
            let mut r = RuleInfo {
                comment: msg::find(attrs, NFTA_RULE_USERDATA).and_then(comment_of),
                packets: None,
                bytes: None,
                exprs: vec![],
            };
            for (_, e) in msg::attrs(msg::find(attrs, NFTA_RULE_EXPRESSIONS).unwrap_or(&[])) {
                let name = msg::find(e, NFTA_EXPR_NAME)
                    .map(msg::as_str)
                    .unwrap_or_default();
                if name == "counter" {
                    let d = msg::find(e, NFTA_EXPR_DATA).unwrap_or(&[]);
                    r.packets = msg::find(d, NFTA_COUNTER_PACKETS).and_then(msg::as_be64);
                    r.bytes = msg::find(d, NFTA_COUNTER_BYTES).and_then(msg::as_be64);
                }
                r.exprs.push(name);
            }
            Some(r)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comment_tlv_roundtrip() {
        let u = comment_udata("drop: spoofed source MAC");
        assert_eq!(u[0], NFTNL_UDATA_COMMENT);
        assert_eq!(u[1] as usize, "drop: spoofed source MAC".len() + 1);
        assert_eq!(comment_of(&u).as_deref(), Some("drop: spoofed source MAC"));
        let long = "x".repeat(300);
        assert_eq!(comment_of(&comment_udata(&long)).unwrap().len(), 127);
    }

    #[test]
    fn rule_encoding_matches_nft() {
        // `ether saddr != 0a:58:0a:f4:00:05 counter drop` as nft -d netlink prints it:
        // payload load 6b @ link header + 6 => reg 1; cmp neq reg 1 …; counter; immediate drop
        let mut b = Batch::new();
        b.add_rule(
            FAMILY_NETDEV,
            "podnet",
            "c",
            &[
                Expr::Payload {
                    base: Base::Link,
                    offset: 6,
                    len: 6,
                },
                Expr::Cmp(Op::Neq, vec![0x0a, 0x58, 0x0a, 0xf4, 0, 5]),
                Expr::Counter,
                Expr::Verdict(Verdict::Drop),
            ],
            "t",
        );
        let m = &b.reqs[0].msg;
        assert_eq!(m.msg_type(), (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWRULE);
        let body = &m.buf[16 + 4..];
        let exprs = msg::find(body, NFTA_RULE_EXPRESSIONS).unwrap();
        let names: Vec<String> = msg::attrs(exprs)
            .map(|(_, e)| msg::as_str(msg::find(e, NFTA_EXPR_NAME).unwrap()))
            .collect();
        assert_eq!(names, ["payload", "cmp", "counter", "immediate"]);
        let payload = msg::find(msg::attrs(exprs).next().unwrap().1, NFTA_EXPR_DATA).unwrap();
        assert_eq!(
            msg::as_be32(msg::find(payload, NFTA_PAYLOAD_OFFSET).unwrap()),
            Some(6)
        );
        assert_eq!(
            msg::as_be32(msg::find(payload, NFTA_PAYLOAD_BASE).unwrap()),
            Some(0)
        );
    }
}
