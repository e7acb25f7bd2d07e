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
 * Included by policy.c after its maps: uses svc_config, translated, pod_policy and
 * verdict.h's judge() (IPv4; included before this file).
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

/* Whether IPv6 `daddr` is in the cluster's IPv6 range: what the fast path may carry
 * to another node. */
INLINE int in_cluster6(struct in6 *daddr)
{
	struct svc_config *c = svc();
	if (!c || !c->cluster6_prefix)
		return 0;
	u32 left = c->cluster6_prefix;
	for (int i = 0; i < 16 && left; i++) {
		u32 bits = left > 8 ? 8 : left;
		u8 mask = (u8)(0xff << (8 - bits));
		if ((daddr->a[i] ^ c->cluster6_net.a[i]) & mask)
			return 0;
		left -= bits;
	}
	return 1;
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

#endif
