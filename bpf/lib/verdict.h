/* SPDX-License-Identifier: Apache-2.0 */
/*
 * policy.c, verdicts: judge(), one pod's side of a packet (closed pods, the node's own
 * addresses, tracked flows, then the pod's peer and port tables), the refusals it
 * counts (policy_drops) and the events it tells podnetd (policy_events, under the
 * switches in config).
 *
 * Included by policy.c after its maps: uses pod_policy, node_addrs, ingress_peers,
 * egress_peers, port_sets, policy_drops, config, event_budget and policy_events, and
 * EVENT_RATE, EVENT_BURST from there.
 */
#ifndef PODNET_LIB_VERDICT_H
#define PODNET_LIB_VERDICT_H

#include "../abi.h"
#include "../helpers.h"
#include "conntrack.h"
#include "parse.h"

/* Whether the pod's table for this direction admits the peer on this protocol/port. */
INLINE int admitted(void *peers, u32 pod, u32 peer, struct pkt *k)
{
	struct peer_key pk = {.prefixlen = 64, .pod = pod, .peer = peer};
	u32 *set = bpf_map_lookup_elem(peers, &pk);
	if (!set)
		return 0;
	if (*set == 0)
		return 1;
	if (k->proto != IPPROTO_TCP && k->proto != IPPROTO_UDP && k->proto != IPPROTO_SCTP)
		return 0;
	u32 id = *set;
	struct port_key q = {.prefixlen = 56, .proto = k->proto};
	q.set[0] = id >> 24;
	q.set[1] = id >> 16;
	q.set[2] = id >> 8;
	q.set[3] = id;
	q.port[0] = k->dport >> 8;
	q.port[1] = k->dport;
	return bpf_map_lookup_elem(&port_sets, &q) != 0;
}

INLINE void emit(struct pkt *k, u32 pod, u32 peer, u32 dir, u32 verdict)
{
	if (!take(&event_budget, pod, bpf_ktime_get_ns(), EVENT_RATE, EVENT_BURST)) {
		budget_count(BUDGET_EVENTS_LIMITED);
		return;
	}
	struct policy_event e = {.pod = pod, .peer = peer, .sport = k->sport, .dport = k->dport, .proto = k->proto, .dir = dir, .verdict = verdict};
	if (bpf_ringbuf_output(&policy_events, &e, sizeof(e), 0))
		budget_count(BUDGET_EVENTS_RING_FULL);
}

/* A flow admitted for the first time: told to podnetd only while it asks. */
INLINE int switched_on(u32 slot)
{
	u32 *on = bpf_map_lookup_elem(&config, &slot);
	return on && *on;
}

INLINE void admitted_new(struct pkt *k, u32 pod, u32 peer, u32 dir)
{
	if (switched_on(CONFIG_EVENTS_ALLOWED))
		emit(k, pod, peer, dir, VERDICT_ADMITTED);
}

INLINE int refuse(struct pkt *k, u32 pod, u32 peer, u32 dir)
{
	emit(k, pod, peer, dir, VERDICT_REFUSED);
	struct drop_key d = {.pod = pod, .dir = dir};
	u64 *n = bpf_map_lookup_elem(&policy_drops, &d);
	if (n) {
		__sync_fetch_and_add(n, 1);
	} else {
		u64 one = 1;
		bpf_map_update_elem(&policy_drops, &d, &one, 0);
	}
	return TC_ACT_SHOT;
}

/* One pod's side of a packet: `pod` is the pod, `peer` the other end. */
INLINE int judge(struct pkt *k, u32 pod, u32 peer, u32 dir)
{
	u32 *flags = bpf_map_lookup_elem(&pod_policy, &pod);
	if (!flags || !(*flags & POD_PROGRAMMED))
		return refuse(k, pod, peer, DIR_CLOSED);
	/* The node always reaches its pods, and its pods it. At a pod's ingress that is
	 * what the node itself sends; a forwarded packet carrying a node address was
	 * masqueraded on its way (kube-proxy's NodePort with Cluster policy) and meets the
	 * policy like any peer, as in the nftables datapath, which judges before the
	 * masquerade. */
	if ((dir == DIR_EGRESS || k->from_host) && bpf_map_lookup_elem(&node_addrs, &peer))
		return TC_ACT_OK;
	u32 isolated = dir == DIR_INGRESS ? POD_ISOLATED_INGRESS : POD_ISOLATED_EGRESS;
	u64 now = bpf_ktime_get_ns();
	if (*flags & isolated) {
		if (k->frag == FRAG_LATER && frag_seen(k, dir, now))
			return TC_ACT_OK;
		if (related_seen(k, dir, now))
			return TC_ACT_OK;
		if (flow_seen(k, dir, now)) {
			frag_note(k, dir, now);
			return TC_ACT_OK;
		}
		if (!admitted(dir == DIR_INGRESS ? (void *)&ingress_peers : (void *)&egress_peers, pod, peer, k))
			return refuse(k, pod, peer, dir);
		flow_record(k, dir, now);
		frag_note(k, dir, now);
		admitted_new(k, pod, peer, dir);
		return TC_ACT_OK;
	}
	/* Open for this direction: the flow is remembered all the same, for its replies
	 * (the pod may be isolated the other way) and so that it survives a policy that
	 * isolates the pod later. */
	if (k->opens || !flow_seen(k, dir, now)) {
		flow_record(k, dir, now);
		admitted_new(k, pod, peer, dir);
	}
	return TC_ACT_OK;
}

#endif
