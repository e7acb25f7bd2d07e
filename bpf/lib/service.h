/* SPDX-License-Identifier: Apache-2.0 */
/*
 * policy.c, Service traffic: kube-proxy translates a packet to a Service address
 * (DNAT in prerouting) after the pod's veth, so the egress verdict waits until the
 * translation is done.
 *
 * - defer_service(): on the pod's veth (from_pod_policy), a packet to the Service
 *   range is marked (PODNET_SVC_MARK and the pod's offset in the node's pod CIDR,
 *   abi.h) and handed to the node's stack, never to the fast path. Its flow is
 *   recorded under its pre-translation addresses, so that the replies — which the
 *   stack translates back to the Service address — meet the pod's ingress as replies.
 * - judge_translated(): at the first tc egress hook after the translation (the
 *   destination pod's veth, the overlay device, the underlay device), the source
 *   pod's egress judges the packet on its real destination and port; the mark is
 *   then cleared, so that the encapsulated packet is not judged again.
 * - translated: the flows this node translated, under their reply's addresses
 *   (backend → client), while the fast path is on: a reply must go back through the
 *   node's stack for its reverse translation, so the fast path leaves it alone
 *   (translated_reply()).
 *
 * IPv6 Services take the same steps with the *6 twins: svc_config6 (the IPv6 Service
 * range and node range), translated6, pod_policy6, judge6().
 *
 * Included by policy.c after its maps: uses svc_config(6), translated(6),
 * pod_policy(6) and verdict.h's judge() and judge6() (included before this file).
 */
#ifndef PODNET_LIB_SERVICE_H
#define PODNET_LIB_SERVICE_H

#include "../abi.h"
#include "../helpers.h"
#include "parse.h"

#define SVC_POD_MAX 0x3ffU
#define SVC_BITS (PODNET_SVC_MARK | (SVC_POD_MAX << PODNET_SVC_POD_SHIFT))

INLINE struct svc_config *svc(void)
{
	u32 zero = 0;
	return bpf_map_lookup_elem(&svc_config, &zero);
}

/* Whether `daddr` is a Service address (none while the range is unknown). */
INLINE int is_service(u32 daddr)
{
	struct svc_config *c = svc();
	return c && c->service_mask && (daddr & c->service_mask) == c->service_net;
}

/* Whether `daddr` is in the cluster CIDR (a pod's address): what the fast path may
 * carry to another node. */
INLINE int in_cluster(u32 daddr)
{
	struct svc_config *c = svc();
	return c && c->cluster_mask && (daddr & c->cluster_mask) == c->cluster_net;
}

/* Whether IPv6 `a` lies in `net`/`prefix`. */
INLINE int in_prefix6(const struct in6 *a, const struct in6 *net, u32 prefix)
{
	u32 left = prefix;
	for (int i = 0; i < 16 && left; i++) {
		u32 bits = left > 8 ? 8 : left;
		u8 mask = (u8)(0xff << (8 - bits));
		if ((a->a[i] ^ net->a[i]) & mask)
			return 0;
		left -= bits;
	}
	return 1;
}

/* Whether IPv6 `daddr` is in the cluster's IPv6 range: what the fast path may carry
 * to another node. */
INLINE int in_cluster6(struct in6 *daddr)
{
	struct svc_config *c = svc();
	return c && c->cluster6_prefix && in_prefix6(daddr, &c->cluster6_net, c->cluster6_prefix);
}

INLINE struct svc_config6 *svc6(void)
{
	u32 zero = 0;
	return bpf_map_lookup_elem(&svc_config6, &zero);
}

/* Whether IPv6 `daddr` is a Service address (none while the range is unknown). */
INLINE int is_service6(struct in6 *daddr)
{
	struct svc_config6 *c = svc6();
	return c && c->service_prefix && in_prefix6(daddr, &c->service_net, c->service_prefix);
}

/* The offset of pod address `a` in the node's IPv6 pod CIDR, if it fits the mark's pod
 * bits (podnet-cni numbers a node's IPv6 pods from the start of its range, so they
 * do): 1..SVC_POD_MAX; 0 when it does not fit (no pod is named). */
INLINE u32 pod_offset6(const struct in6 *a)
{
	struct svc_config6 *c = svc6();
	if (!c || !c->node_prefix || c->node_prefix > 118 || !in_prefix6(a, &c->node_net, c->node_prefix))
		return 0;
	/* Every host bit but the last 10 must be zero. */
	u32 prefix = c->node_prefix;
#pragma unroll
	for (int i = 0; i < 15; i++) {
		u32 lo = 8 * i;
		u8 host = prefix >= lo + 8 ? 0 : prefix <= lo ? 0xff : (u8)(0xff >> (prefix - lo));
		if (i == 14)
			host &= 0xfc;
		if (a->a[i] & host)
			return 0;
	}
	return ((u32)(a->a[14] & 0x03) << 8) | a->a[15];
}

/* On the pod's veth: a packet of pod k->saddr to a Service address. A closed pod sends
 * nothing, as judge() would refuse it. */
INLINE int defer_service(struct __sk_buff *skb, struct pkt *k)
{
	u32 *flags = bpf_map_lookup_elem(&pod_policy, &k->saddr);
	if (!flags || !(*flags & POD_PROGRAMMED))
		return refuse(k, k->saddr, k->daddr, DIR_CLOSED);
	u32 mark = (skb->mark & ~SVC_BITS) | PODNET_SVC_MARK;
	struct svc_config *c = svc();
	if (c && c->node_mask)
		mark |= (__builtin_bswap32(k->saddr & ~c->node_mask) & SVC_POD_MAX) << PODNET_SVC_POD_SHIFT;
	skb->mark = mark;
	if (k->frag != FRAG_LATER)
		flow_record(k, DIR_EGRESS, bpf_ktime_get_ns());
	return TC_ACT_OK;
}

/* The pod that sent a marked packet: its source if that is a pod of this node, else
 * (the node masqueraded it) the pod the mark names; 0 if neither. */
INLINE u32 service_client(struct __sk_buff *skb, struct pkt *k)
{
	if (bpf_map_lookup_elem(&pod_policy, &k->saddr))
		return k->saddr;
	struct svc_config *c = svc();
	if (!c || !c->node_mask)
		return 0;
	u32 off = (skb->mark >> PODNET_SVC_POD_SHIFT) & SVC_POD_MAX;
	return c->node_net | (__builtin_bswap32(off) & ~c->node_mask);
}

INLINE void note_translated(struct pkt *k)
{
	if (!switched_on(CONFIG_FAST_PATH) || k->frag == FRAG_LATER)
		return;
	struct flow_key r = {.saddr = k->daddr, .daddr = k->saddr, .sport = k->dport, .dport = k->sport, .proto = k->proto};
	u64 now = bpf_ktime_get_ns();
	u64 *t = bpf_map_lookup_elem(&translated, &r);
	if (t && now - *t < FLOW_REFRESH_NS)
		return;
	bpf_map_update_elem(&translated, &r, &now, 0);
}

/* Whether the packet is the reply of a flow this node translated (fast path only). */
INLINE int translated_reply(u32 saddr, u32 daddr, u16 sport, u16 dport, u8 proto)
{
	struct flow_key f = {.saddr = saddr, .daddr = daddr, .sport = sport, .dport = dport, .proto = proto};
	u64 *t = bpf_map_lookup_elem(&translated, &f);
	return t && bpf_ktime_get_ns() - *t < FLOW_TIMEOUT_NS;
}

/* After the translation: the client pod's egress on the real destination. `*client`
 * is set to the pod (0 when the packet was not marked). */
INLINE int judge_translated(struct __sk_buff *skb, struct pkt *k, u32 *client)
{
	*client = 0;
	if (!(skb->mark & PODNET_SVC_MARK))
		return TC_ACT_OK;
	u32 pod = service_client(skb, k);
	skb->mark &= ~SVC_BITS;
	if (!pod)
		/* Neither a pod of this node nor a pod the mark can name (a pod CIDR wider
		 * than /22, masqueraded): refused rather than judged as the node. */
		return refuse(k, k->saddr, k->daddr, DIR_EGRESS);
	*client = pod;
	int r = judge(k, pod, k->daddr, DIR_EGRESS);
	if (r == TC_ACT_OK)
		note_translated(k);
	return r;
}

/* IPv6 Services: the same steps as for IPv4 above, on the IPv6 maps (pod_policy6,
 * flows6, translated6, svc_config6). */

INLINE int defer_service6(struct __sk_buff *skb, struct pkt6 *k)
{
	u32 *flags = bpf_map_lookup_elem(&pod_policy6, &k->saddr);
	if (!flags || !(*flags & POD_PROGRAMMED))
		return refuse6(k, k->saddr, k->daddr, DIR_CLOSED);
	skb->mark = (skb->mark & ~SVC_BITS) | PODNET_SVC_MARK | (pod_offset6(&k->saddr) << PODNET_SVC_POD_SHIFT);
	if (k->frag != FRAG_LATER)
		flow_record6(k, DIR_EGRESS, bpf_ktime_get_ns());
	return TC_ACT_OK;
}

/* The pod that sent a marked IPv6 packet: its source if that is a pod of this node,
 * else the pod the mark names; 0 (and `pod` untouched) if neither. */
INLINE int service_client6(struct __sk_buff *skb, struct pkt6 *k, struct in6 *pod)
{
	if (bpf_map_lookup_elem(&pod_policy6, &k->saddr)) {
		*pod = k->saddr;
		return 1;
	}
	struct svc_config6 *c = svc6();
	u32 off = (skb->mark >> PODNET_SVC_POD_SHIFT) & SVC_POD_MAX;
	if (!c || !c->node_prefix || c->node_prefix > 118 || !off)
		return 0;
	*pod = c->node_net;
	pod->a[14] |= (u8)(off >> 8);
	pod->a[15] |= (u8)off;
	return 1;
}

INLINE void note_translated6(struct pkt6 *k)
{
	if (!switched_on(CONFIG_FAST_PATH) || k->frag == FRAG_LATER)
		return;
	struct flow6_key r = {.saddr = k->daddr, .daddr = k->saddr, .sport = k->dport, .dport = k->sport, .proto = k->proto};
	u64 now = bpf_ktime_get_ns();
	u64 *t = bpf_map_lookup_elem(&translated6, &r);
	if (t && now - *t < FLOW_REFRESH_NS)
		return;
	bpf_map_update_elem(&translated6, &r, &now, 0);
}

/* Whether the IPv6 packet `k` is the reply of a flow this node translated. */
INLINE int translated_reply6(struct pkt6 *k)
{
	struct flow6_key f = {.saddr = k->saddr, .daddr = k->daddr, .sport = k->sport, .dport = k->dport, .proto = k->proto};
	u64 *t = bpf_map_lookup_elem(&translated6, &f);
	return t && bpf_ktime_get_ns() - *t < FLOW_TIMEOUT_NS;
}

/* After the translation of an IPv6 Service packet: its client pod's egress on the
 * real destination; `*client` is set (and 1 returned in `*found`) when marked. */
INLINE int judge_translated6(struct __sk_buff *skb, struct pkt6 *k, struct in6 *client, int *found)
{
	*found = 0;
	if (!(skb->mark & PODNET_SVC_MARK))
		return TC_ACT_OK;
	int named = service_client6(skb, k, client);
	skb->mark &= ~SVC_BITS;
	if (!named)
		return refuse6(k, k->saddr, k->daddr, DIR_EGRESS);
	*found = 1;
	int r = judge6(k, *client, k->daddr, DIR_EGRESS);
	if (r == TC_ACT_OK)
		note_translated6(k);
	return r;
}

#endif
