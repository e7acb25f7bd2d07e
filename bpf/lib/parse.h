/* SPDX-License-Identifier: Apache-2.0 */
/*
 * policy.c, parsing: struct pkt, what the policy datapath reads of a packet (IPv4
 * addresses, ports or echo id, whether it opens a connection, fragment state, and the
 * flow an ICMP error quotes), and parse(), which fills it from the frame.
 *
 * Needs helpers.h; uses no map.
 */
#ifndef PODNET_LIB_PARSE_H
#define PODNET_LIB_PARSE_H

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

#define FRAG_NONE 0
#define FRAG_FIRST 1 /* offset 0, more fragments follow */
#define FRAG_LATER 2

/* What parse() found. */
#define PARSE_IPV4 0
#define PARSE_OTHER 1 /* not IP: ARP and the like, passed */
#define PARSE_DROP 2  /* IPv6 other than neighbour discovery, or malformed */

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
		if (ip6 + 41 > end)
			return PARSE_DROP;
		/* Neighbour discovery only: router solicitation, neighbour solicitation and
		 * advertisement (router advertisements never leave a pod: from_pod). */
		if (ip6[6] == IPPROTO_ICMPV6) {
			u8 t = ip6[40];
			if (t == 133 || t == 135 || t == 136)
				return PARSE_OTHER;
		}
		return PARSE_DROP;
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

#endif
