/* SPDX-License-Identifier: Apache-2.0 */
/*
 * policy.c, parsing: struct pkt (IPv4) and struct pkt6 (IPv6), what the policy
 * datapath reads of a packet (addresses, ports or echo id, whether it opens a
 * connection, fragment state, and the flow an ICMP error quotes); parse(), which
 * sorts a frame and fills a struct pkt, and parse_ip6(), which fills a struct pkt6.
 *
 * Needs helpers.h; uses no map.
 */
#ifndef PODNET_LIB_PARSE_H
#define PODNET_LIB_PARSE_H

#include "../abi.h"
#include "../helpers.h"

struct pkt {
	u32 saddr, daddr;
	u16 sport, dport; /* host byte order; for ICMP both are the echo id */
	u8 proto;
	u8 opens; /* a TCP SYN or an SCTP INIT: always a new connection */
	u8 frag;  /* FRAG_NONE, FRAG_FIRST or FRAG_LATER */
	u8 related; /* an ICMP error: `rel` is the flow it travels against, reversed */
	u8 from_host; /* sent by the node itself (not forwarded): set by to_pod_policy */
	u16 ipid;
	/* For an ICMP error (destination unreachable, time exceeded, parameter problem):
	 * the packet it quotes, reversed, so that it is the direction the error travels:
	 * the error belongs to that flow as a reply would (nftables: ct related). */
	u32 rel_saddr, rel_daddr;
	u16 rel_sport, rel_dport;
	u8 rel_proto;
};

/* The same for IPv6 (the fragment id is 32 bits there). */
struct pkt6 {
	struct in6 saddr, daddr;
	u16 sport, dport;
	u8 proto;
	u8 opens;
	u8 frag;
	u8 related;
	u8 from_host;
	u32 ipid;
	struct in6 rel_saddr, rel_daddr;
	u16 rel_sport, rel_dport;
	u8 rel_proto;
};

#define FRAG_NONE 0
#define FRAG_FIRST 1 /* offset 0, more fragments follow */
#define FRAG_LATER 2

/* What parse() found. */
#define PARSE_IPV4 0
#define PARSE_OTHER 1 /* not IP (ARP and the like), or neighbour discovery: passed */
#define PARSE_DROP 2  /* malformed, or IPv6 from or to a link-local or multicast address */
#define PARSE_IPV6 3  /* IPv6 between global addresses: parse_ip6() reads it */

INLINE int parse_ip(u8 *ip, u8 *end, struct pkt *k);

/* A frame from an Ethernet device. */
INLINE int parse(struct __sk_buff *skb, struct pkt *k)
{
	u8 *data = (u8 *)(long)skb->data;
	u8 *end = (u8 *)(long)skb->data_end;
	if (data + 14 > end)
		return PARSE_DROP;
	u16 eth = be16(data + 12);
	if (eth == ETH_P_IPV6) {
		u8 *ip6 = data + 14;
		if (ip6 + 40 > end)
			return PARSE_DROP;
		/* Neighbour discovery between neighbours passes: router solicitation,
		 * neighbour solicitation and advertisement, hop limit 255 (never routed;
		 * router advertisements never leave a pod, and from_pod checked whose
		 * addresses they carry). The nftables datapath passes the same. */
		if (ip6[6] == IPPROTO_ICMPV6 && ip6[7] == 255 && ip6 + 41 <= end) {
			u8 t = ip6[40];
			if (t == 133 || t == 135 || t == 136)
				return PARSE_OTHER;
		}
		/* No pod holds a link-local or multicast address: the isolation tables
		 * hold unicast addresses, so such a packet is dropped here rather than
		 * judged (nftables drops them likewise). */
		if (ip6[24] == 0xff || (ip6[8] == 0xfe && (ip6[9] & 0xc0) == 0x80) ||
		    (ip6[24] == 0xfe && (ip6[25] & 0xc0) == 0x80))
			return PARSE_DROP;
		return PARSE_IPV6;
	}
	if (eth != ETH_P_IP)
		return PARSE_OTHER;
	return parse_ip(data + 14, end, k);
}

/* A packet from a device without link-layer header (the WireGuard device). */
INLINE int parse_l3(struct __sk_buff *skb, struct pkt *k)
{
	if (skb->protocol != __builtin_bswap16(ETH_P_IP))
		return PARSE_OTHER;
	return parse_ip((u8 *)(long)skb->data, (u8 *)(long)skb->data_end, k);
}

/* The IPv4 header at `ip` and what follows. */
INLINE int parse_ip(u8 *ip, u8 *end, struct pkt *k)
{
	if (ip + 20 > end)
		return PARSE_DROP;
	u32 ihl = (ip[0] & 0x0f) * 4;
	if (ihl < 20 || ihl > 60)
		return PARSE_DROP;
	k->proto = ip[9];
	k->saddr = raw32(ip + 12);
	k->daddr = raw32(ip + 16);
	k->sport = 0;
	k->dport = 0;
	k->ipid = be16(ip + 4);
	u16 frag = be16(ip + 6);
	/* A later fragment carries no ports: it follows its first fragment (frags). */
	if ((frag & 0x1fff) != 0) {
		k->frag = FRAG_LATER;
		return PARSE_IPV4;
	}
	if (frag & 0x2000)
		k->frag = FRAG_FIRST;
	u8 *l4 = ip + ihl;
	if (k->proto == IPPROTO_TCP || k->proto == IPPROTO_UDP || k->proto == IPPROTO_SCTP) {
		if (l4 + 4 > end)
			return PARSE_DROP;
		k->sport = be16(l4);
		k->dport = be16(l4 + 2);
		if (k->proto == IPPROTO_TCP) {
			if (l4 + 14 > end)
				return PARSE_DROP;
			k->opens = (l4[13] & 0x12) == 0x02; /* SYN without ACK */
		} else if (k->proto == IPPROTO_SCTP) {
			if (l4 + 13 > end)
				return PARSE_DROP;
			k->opens = l4[12] == 1; /* INIT */
		}
	} else if (k->proto == IPPROTO_ICMP) {
		if (l4 + 8 > end)
			return PARSE_DROP;
		/* Echo request and reply: one flow per echo id. */
		if (l4[0] == 8 || l4[0] == 0) {
			k->sport = be16(l4 + 4);
			k->dport = k->sport;
		}
		/* An error quoting a packet: the quoted header, reversed. */
		if (l4[0] == 3 || l4[0] == 11 || l4[0] == 12) {
			u8 *in = l4 + 8;
			if (in + 20 > end)
				return PARSE_IPV4;
			u32 ihl2 = (in[0] & 0x0f) * 4;
			if (ihl2 < 20 || ihl2 > 60)
				return PARSE_IPV4;
			u8 *q = in + ihl2;
			k->rel_proto = in[9];
			k->rel_saddr = raw32(in + 16);
			k->rel_daddr = raw32(in + 12);
			if (k->rel_proto == IPPROTO_TCP || k->rel_proto == IPPROTO_UDP || k->rel_proto == IPPROTO_SCTP) {
				if (q + 4 > end)
					return PARSE_IPV4;
				k->rel_sport = be16(q + 2);
				k->rel_dport = be16(q);
			} else if (k->rel_proto == IPPROTO_ICMP) {
				if (q + 8 > end)
					return PARSE_IPV4;
				if (q[0] == 8 || q[0] == 0) {
					k->rel_sport = be16(q + 4);
					k->rel_dport = k->rel_sport;
				}
			}
			k->related = 1;
		}
	}
	return PARSE_IPV4;
}

/* IPv6 extension headers parse_ip6() steps over to find the upper-layer header (as
 * the kernel's ipv6_skip_exthdr, which nftables' `meta l4proto` uses); more than
 * IP6_EXT_MAX of them is refused as malformed. */
#define IP6_HOPOPTS 0
#define IP6_ROUTING 43
#define IP6_FRAGMENT 44
#define IP6_AUTH 51
#define IP6_DSTOPTS 60
#define IP6_EXT_MAX 8

INLINE int is_ip6_ext(u8 nh)
{
	return nh == IP6_HOPOPTS || nh == IP6_ROUTING || nh == IP6_FRAGMENT || nh == IP6_AUTH ||
	       nh == IP6_DSTOPTS;
}

/* The ports (or echo id) of the upper-layer header `proto` at `off`, for the flow an
 * ICMPv6 error quotes: swapped, as the error travels against that flow. */
INLINE void quoted6_ports(struct __sk_buff *skb, u32 off, struct pkt6 *k)
{
	u8 l4[8];
	if (bpf_skb_load_bytes(skb, off, l4, 8))
		return;
	if (k->rel_proto == IPPROTO_TCP || k->rel_proto == IPPROTO_UDP || k->rel_proto == IPPROTO_SCTP) {
		k->rel_sport = be16(l4 + 2);
		k->rel_dport = be16(l4);
	} else if (k->rel_proto == IPPROTO_ICMPV6 && (l4[0] == 128 || l4[0] == 129)) {
		k->rel_sport = be16(l4 + 4);
		k->rel_dport = k->rel_sport;
	}
}

/* The IPv6 packet at `base` (after the Ethernet header of a frame parse() called
 * PARSE_IPV6, or at 0 on a device without one): its
 * addresses, the upper-layer protocol after the extension headers, ports or echo id,
 * fragment state (fragment header), and for an ICMPv6 error (destination unreachable,
 * packet too big, time exceeded, parameter problem) the flow it quotes. Read with
 * bpf_skb_load_bytes, so the headers need not be in the linear part. */
INLINE int parse_ip6_at(struct __sk_buff *skb, struct pkt6 *k, u32 base)
{
	u8 h[40];
	if (bpf_skb_load_bytes(skb, base, h, 40))
		return PARSE_DROP;
	__builtin_memcpy(&k->saddr, h + 8, 16);
	__builtin_memcpy(&k->daddr, h + 24, 16);
	u8 nh = h[6];
	u32 off = base + 40;
	for (int i = 0; i < IP6_EXT_MAX; i++) {
		if (!is_ip6_ext(nh))
			break;
		u8 x[8];
		if (bpf_skb_load_bytes(skb, off, x, 8))
			return PARSE_DROP;
		if (nh == IP6_FRAGMENT) {
			u16 fo = be16(x + 2);
			k->ipid = be32(x + 4);
			nh = x[0];
			off += 8;
			/* A later fragment carries no upper-layer header: it follows its
			 * first fragment (frags6). */
			if (fo & 0xfff8) {
				k->proto = nh;
				k->frag = FRAG_LATER;
				return PARSE_IPV6;
			}
			if (fo & 1)
				k->frag = FRAG_FIRST;
			continue;
		}
		nh = x[0];
		off += nh == IP6_AUTH ? ((u32)x[1] + 2) * 4 : ((u32)x[1] + 1) * 8;
	}
	if (is_ip6_ext(nh))
		return PARSE_DROP;
	k->proto = nh;
	u8 l4[16];
	if (nh == IPPROTO_TCP || nh == IPPROTO_UDP || nh == IPPROTO_SCTP) {
		if (bpf_skb_load_bytes(skb, off, l4, 4))
			return PARSE_DROP;
		k->sport = be16(l4);
		k->dport = be16(l4 + 2);
		if (nh == IPPROTO_TCP) {
			if (bpf_skb_load_bytes(skb, off, l4, 14))
				return PARSE_DROP;
			k->opens = (l4[13] & 0x12) == 0x02; /* SYN without ACK */
		} else if (nh == IPPROTO_SCTP) {
			if (bpf_skb_load_bytes(skb, off, l4, 13))
				return PARSE_DROP;
			k->opens = l4[12] == 1; /* INIT */
		}
	} else if (nh == IPPROTO_ICMPV6) {
		if (bpf_skb_load_bytes(skb, off, l4, 8))
			return PARSE_DROP;
		/* Echo request and reply: one flow per echo id. */
		if (l4[0] == 128 || l4[0] == 129) {
			k->sport = be16(l4 + 4);
			k->dport = k->sport;
		}
		/* An error quoting a packet: the quoted header, reversed. Only an
		 * upper-layer header right after the quoted IPv6 header is read; behind
		 * extension headers the flow has no ports here. */
		if (l4[0] >= 1 && l4[0] <= 4) {
			u8 q[40];
			if (bpf_skb_load_bytes(skb, off + 8, q, 40))
				return PARSE_IPV6;
			__builtin_memcpy(&k->rel_saddr, q + 24, 16);
			__builtin_memcpy(&k->rel_daddr, q + 8, 16);
			k->rel_proto = q[6];
			quoted6_ports(skb, off + 48, k);
			k->related = 1;
		}
	}
	return PARSE_IPV6;
}

/* parse_ip6_at() after an Ethernet header. */
INLINE int parse_ip6(struct __sk_buff *skb, struct pkt6 *k)
{
	return parse_ip6_at(skb, k, 14);
}

#endif
