/* SPDX-License-Identifier: Apache-2.0 */
/*
 * policy.c, VXLAN encapsulation for the fast path: to_overlay() writes the headers the
 * node's VXLAN device would (outer Ethernet, IPv4, UDP, VXLAN, inner Ethernet) and sends
 * the frame out of the underlay device. Taking the encapsulation off again is
 * from_underlay's, in policy.c.
 *
 * Included by policy.c after its maps: uses overlay_self, overlay_peers and
 * overlay_peers6.
 */
#ifndef PODNET_LIB_ENCAP_H
#define PODNET_LIB_ENCAP_H

#include "../abi.h"
#include "../helpers.h"

/* outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14: what a pod's MTU leaves room for */
#define VXLAN_OVERHEAD 50
/* the same with an outer IPv6 header (40) */
#define VXLAN6_OVERHEAD 70

/* The headers after the outer IP one, as the VXLAN device writes them: UDP from
 * `sport` to this node's port, `ulen` bytes, no checksum; VXLAN with the VNI flag and
 * the VNI; the inner Ethernet header from this node's VTEP to the peer's (`f`'s MACs)
 * with the inner frame's `ethertype`. */
INLINE void write_udp_vxlan(u8 *udp, u16 sport, u16 ulen, const struct overlay_self *self,
			    const struct fib_lookup *f, u16 ethertype)
{
	udp[0] = sport >> 8;
	udp[1] = sport;
	__builtin_memcpy(udp + 2, &self->port, 2);
	udp[4] = ulen >> 8;
	udp[5] = ulen;
	u8 *vx = udp + 8;
	vx[0] = 0x08;
	vx[4] = self->vni >> 16;
	vx[5] = self->vni >> 8;
	vx[6] = self->vni;
	u8 *in = vx + 8;
	__builtin_memcpy(in, f->dmac, 6);
	__builtin_memcpy(in + 6, f->smac, 6);
	in[12] = ethertype >> 8;
	in[13] = ethertype;
}

/* Over an IPv6 underlay (overlay_self.ipv6): outer Ethernet, IPv6, UDP with a zero
 * checksum (RFC 6935; every node's VXLAN device takes them, podnetd makes it with
 * udp6zerocsumrx), VXLAN, inner Ethernet, to the peer's underlay IPv6 address
 * (overlay_peers6). */
INLINE int to_overlay6(struct __sk_buff *skb, struct fib_lookup *f, u8 tclass, u16 ethertype,
		       struct overlay_self *self, struct vtep_key *vk)
{
	struct in6 *peer = bpf_map_lookup_elem(&overlay_peers6, vk);
	if (!peer)
		return -1;
	struct fib_lookup u = {};
	u.family = AF_INET6;
	u.l4_protocol = IPPROTO_UDP;
	u.ifindex = skb->ingress_ifindex;
	__builtin_memcpy(u.ipv6_src, self->local6, 16);
	__builtin_memcpy(u.ipv6_dst, peer->a, 16);
	if (bpf_fib_lookup(skb, &u, sizeof(u), 0) != BPF_FIB_LKUP_RET_SUCCESS)
		return -1;
	u32 len = skb->len; /* the pod's frame: Ethernet and IP */
	u16 sport = 49152 | (bpf_get_hash_recalc(skb) & 0x3fff);
	if (bpf_skb_adjust_room(skb, VXLAN6_OVERHEAD, BPF_ADJ_ROOM_MAC,
				BPF_F_ADJ_ROOM_FIXED_GSO | BPF_F_ADJ_ROOM_ENCAP_L3_IPV6 |
					BPF_F_ADJ_ROOM_ENCAP_L4_UDP | BPF_F_ADJ_ROOM_ENCAP_L2_ETH |
					BPF_F_ADJ_ROOM_ENCAP_L2(14)))
		return -1;
	u8 h[84] = {};
	__builtin_memcpy(h, u.dmac, 6);
	__builtin_memcpy(h + 6, u.smac, 6);
	h[12] = 0x86;
	h[13] = 0xdd;
	/* outer IPv6: version, traffic class (the inner one's), no flow label */
	u8 *ip = h + 14;
	u16 plen = len + VXLAN6_OVERHEAD - 14 - 40;
	ip[0] = 0x60 | tclass >> 4;
	ip[1] = tclass << 4;
	ip[4] = plen >> 8;
	ip[5] = plen;
	ip[6] = IPPROTO_UDP;
	ip[7] = 64;
	__builtin_memcpy(ip + 8, self->local6, 16);
	__builtin_memcpy(ip + 24, peer->a, 16);
	/* UDP (zero checksum), VXLAN, inner Ethernet */
	write_udp_vxlan(ip + 40, sport, plen, self, f, ethertype);
	if (bpf_skb_store_bytes(skb, 0, h, sizeof(h), 0))
		return TC_ACT_SHOT;
	return bpf_redirect(u.ifindex, 0);
}

/* The VXLAN device's work, done here: when the route names this node's VXLAN device
 * and its neighbour a known peer VTEP, wrap the frame (see overlay_self) and send it
 * out of the underlay device to the peer node's neighbour. `tos`: the inner packet's
 * (IPv4 TOS or IPv6 traffic class), copied outside as the device does; `ethertype`:
 * the inner frame's (ETH_P_IP or ETH_P_IPV6). The outer header is IPv4, or IPv6 over
 * an IPv6 underlay (to_overlay6). Returns -1, the frame untouched, when it cannot (the caller then uses the VXLAN
 * device). */
INLINE int to_overlay(struct __sk_buff *skb, struct fib_lookup *f, u8 tos, u16 ethertype)
{
	u32 zero = 0;
	struct overlay_self *self = bpf_map_lookup_elem(&overlay_self, &zero);
	if (!self || !self->vxlan_ifindex || f->ifindex != self->vxlan_ifindex)
		return -1;
	struct vtep_key vk = {};
	__builtin_memcpy(vk.mac, f->dmac, 6);
	if (self->ipv6)
		return to_overlay6(skb, f, tos, ethertype, self, &vk);
	u32 *peer = bpf_map_lookup_elem(&overlay_peers, &vk);
	if (!peer)
		return -1;
	/* The underlay hop: the node's route and neighbour towards the peer node. */
	struct fib_lookup u = {};
	u.family = AF_INET;
	u.l4_protocol = IPPROTO_UDP;
	u.ifindex = skb->ingress_ifindex;
	u.ipv4_src = self->local;
	u.ipv4_dst = *peer;
	if (bpf_fib_lookup(skb, &u, sizeof(u), 0) != BPF_FIB_LKUP_RET_SUCCESS)
		return -1;
	u32 len = skb->len; /* the pod's frame: Ethernet and IP */
	u16 sport = 49152 | (bpf_get_hash_recalc(skb) & 0x3fff);
	if (bpf_skb_adjust_room(skb, VXLAN_OVERHEAD, BPF_ADJ_ROOM_MAC,
				BPF_F_ADJ_ROOM_FIXED_GSO | BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 |
					BPF_F_ADJ_ROOM_ENCAP_L4_UDP | BPF_F_ADJ_ROOM_ENCAP_L2_ETH |
					BPF_F_ADJ_ROOM_ENCAP_L2(14)))
		return -1;
	u8 h[64] = {};
	__builtin_memcpy(h, u.dmac, 6);
	__builtin_memcpy(h + 6, u.smac, 6);
	h[12] = 0x08;
	/* outer IPv4 */
	u8 *ip = h + 14;
	u16 tot = len + VXLAN_OVERHEAD - 14;
	ip[0] = 0x45;
	ip[1] = tos;
	ip[2] = tot >> 8;
	ip[3] = tot;
	ip[6] = 0x40; /* DF: never fragmented (the pod's MTU leaves room), so ID 0 is allowed */
	ip[8] = 64;
	ip[9] = IPPROTO_UDP;
	__builtin_memcpy(ip + 12, &self->local, 4);
	__builtin_memcpy(ip + 16, peer, 4);
	u32 sum = 0;
	for (int i = 0; i < 20; i += 2)
		sum += (u32)ip[i] << 8 | ip[i + 1];
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = ~sum;
	ip[10] = sum >> 8;
	ip[11] = sum;
	/* UDP (no checksum, as the VXLAN device sends over IPv4), VXLAN, inner Ethernet */
	write_udp_vxlan(ip + 20, sport, tot - 20, self, f, ethertype);
	if (bpf_skb_store_bytes(skb, 0, h, sizeof(h), 0))
		return TC_ACT_SHOT;
	return bpf_redirect(u.ifindex, 0);
}

#endif
