/* SPDX-License-Identifier: Apache-2.0 */
/*
 * policy.c, forwarding for the fast path in place of the node's routing: the TTL (IPv6:
 * the hop limit), delivery straight into a local pod (after its ingress verdict), and
 * out of the node through the device and neighbour the FIB names (over VXLAN through
 * encap.h). The IPv6 twins end in 6.
 *
 * Included by policy.c after its maps: uses none itself, but verdict.h's and encap.h's.
 */
#ifndef PODNET_LIB_FIB_H
#define PODNET_LIB_FIB_H

#include "../abi.h"
#include "../helpers.h"
#include "encap.h"
#include "parse.h"

/* What the node's routing does to a forwarded packet: TTL minus one (with the header
 * checksum). 0 when the TTL would run out: the stack then answers it. */
INLINE int forward_ttl(struct __sk_buff *skb)
{
	u8 *data = (u8 *)(long)skb->data;
	u8 *end = (u8 *)(long)skb->data_end;
	if (data + 34 > end)
		return 0;
	u8 *ip = data + 14;
	if (ip[8] <= 1)
		return 0;
	u16 old = *(u16 *)(ip + 8);
	ip[8] -= 1;
	u16 new = *(u16 *)(ip + 8);
	bpf_l3_csum_replace(skb, 14 + 10, old, new, 2);
	return 1;
}

/* Into `dst`'s namespace, straight to its eth0, as if the node had routed it there
 * (`routed`: from the gateway's MAC, TTL minus one) or the bridge had switched it. */
INLINE int to_local_pod(struct __sk_buff *skb, struct local_pod *dst, int routed)
{
	if (routed && !forward_ttl(skb))
		return TC_ACT_OK;
	bpf_skb_store_bytes(skb, 0, dst->mac, 6, 0);
	if (routed)
		bpf_skb_store_bytes(skb, 6, dst->gw_mac, 6, 0);
	return bpf_redirect_peer(dst->ifindex, 0);
}

/* Into local pod `dst` from elsewhere (another pod's veth, the overlay, the wire), once
 * that pod's ingress admits it: the redirect skips the pod's host veth, where
 * to_pod_policy would judge it. */
INLINE int judged_into(struct __sk_buff *skb, struct pkt *k, struct local_pod *dst, int routed)
{
	int r = judge(k, k->daddr, k->saddr, DIR_INGRESS);
	if (r != TC_ACT_OK)
		return r;
	return to_local_pod(skb, dst, routed);
}

/* Out of the node through the device its routes name (the overlay device, or the
 * underlay for host-gw), with the neighbour its tables hold; over VXLAN wrapped here
 * (to_overlay). Anything the lookups cannot settle takes the normal path. */
INLINE int to_other_node(struct __sk_buff *skb, struct pkt *k)
{
	u8 *data = (u8 *)(long)skb->data;
	u8 *end = (u8 *)(long)skb->data_end;
	if (data + 34 > end)
		return TC_ACT_OK;
	struct fib_lookup f = {};
	u8 tos = data[15];
	f.family = AF_INET;
	f.l4_protocol = k->proto;
	f.ifindex = skb->ingress_ifindex;
	f.tos = tos;
	f.ipv4_src = k->saddr;
	f.ipv4_dst = k->daddr;
	if (bpf_fib_lookup(skb, &f, sizeof(f), 0) != BPF_FIB_LKUP_RET_SUCCESS)
		return TC_ACT_OK;
	if (!forward_ttl(skb))
		return TC_ACT_OK;
	int r = to_overlay(skb, &f, tos, ETH_P_IP);
	if (r >= 0)
		return r;
	bpf_skb_store_bytes(skb, 0, f.dmac, 6, 0);
	bpf_skb_store_bytes(skb, 6, f.smac, 6, 0);
	return bpf_redirect(f.ifindex, 0);
}

/* The IPv6 hop limit minus one (no header checksum to mend). 0 when it would run out:
 * the stack then answers it. */
INLINE int forward_hops6(struct __sk_buff *skb)
{
	u8 *data = (u8 *)(long)skb->data;
	u8 *end = (u8 *)(long)skb->data_end;
	if (data + 54 > end)
		return 0;
	if (data[14 + 7] <= 1)
		return 0;
	data[14 + 7] -= 1;
	return 1;
}

INLINE int to_local_pod6(struct __sk_buff *skb, struct local_pod *dst, int routed)
{
	if (routed && !forward_hops6(skb))
		return TC_ACT_OK;
	bpf_skb_store_bytes(skb, 0, dst->mac, 6, 0);
	if (routed)
		bpf_skb_store_bytes(skb, 6, dst->gw_mac, 6, 0);
	return bpf_redirect_peer(dst->ifindex, 0);
}

INLINE int judged_into6(struct __sk_buff *skb, struct pkt6 *k, struct local_pod *dst, int routed)
{
	int r = judge6(k, k->daddr, k->saddr, DIR_INGRESS);
	if (r != TC_ACT_OK)
		return r;
	return to_local_pod6(skb, dst, routed);
}

INLINE int to_other_node6(struct __sk_buff *skb, struct pkt6 *k)
{
	u8 *data = (u8 *)(long)skb->data;
	u8 *end = (u8 *)(long)skb->data_end;
	if (data + 54 > end)
		return TC_ACT_OK;
	u8 tclass = (data[14] & 0x0f) << 4 | data[15] >> 4;
	struct fib_lookup f = {};
	f.family = AF_INET6;
	f.l4_protocol = k->proto;
	f.ifindex = skb->ingress_ifindex;
	__builtin_memcpy(f.ipv6_src, &k->saddr, 16);
	__builtin_memcpy(f.ipv6_dst, &k->daddr, 16);
	if (bpf_fib_lookup(skb, &f, sizeof(f), 0) != BPF_FIB_LKUP_RET_SUCCESS)
		return TC_ACT_OK;
	if (!forward_hops6(skb))
		return TC_ACT_OK;
	int r = to_overlay(skb, &f, tclass, ETH_P_IPV6);
	if (r >= 0)
		return r;
	bpf_skb_store_bytes(skb, 0, f.dmac, 6, 0);
	bpf_skb_store_bytes(skb, 6, f.smac, 6, 0);
	return bpf_redirect(f.ifindex, 0);
}

#endif
