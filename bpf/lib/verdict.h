/* SPDX-License-Identifier: Apache-2.0 */
/*
 * policy.c, verdicts: F(judge)(), one pod's side of a packet (closed pods, the node's
 * own addresses, tracked flows, then the pod's peer and port tables), the refusals it
 * counts (F(policy_drops)) and the events it tells podnetd (policy_events, under the
 * switches in config).
 *
 * A template like conntrack.h (included after it, once per family, by policy.c): F(),
 * PKT and ADDR as there; PEER_KEY and PEER_BITS (the key of F(ingress_peers) and
 * F(egress_peers), and its full prefix length), DROP_KEY, EVENT. Uses the maps
 * F(pod_policy), F(node_addrs), F(ingress_peers), F(egress_peers), F(policy_drops),
 * F(event_budget), and port_sets, config and policy_events of both families, and
 * EVENT_RATE, EVENT_BURST from policy.c.
 */

/* Whether the pod's table for this direction admits the peer on this protocol/port. */
INLINE int F(admitted)(void *peers, ADDR pod, ADDR peer, PKT *k)
{
	PEER_KEY pk = {.prefixlen = PEER_BITS, .pod = pod, .peer = peer};
	u32 *set = bpf_map_lookup_elem(peers, &pk);
	return set && in_port_set(*set, k->proto, k->dport);
}

INLINE void F(emit)(PKT *k, ADDR pod, ADDR peer, u32 dir, u32 verdict)
{
	if (!take(&F(event_budget), &pod, bpf_ktime_get_ns(), EVENT_RATE, EVENT_BURST)) {
		budget_count(BUDGET_EVENTS_LIMITED);
		return;
	}
	EVENT e = {.pod = pod, .peer = peer, .sport = k->sport, .dport = k->dport, .proto = k->proto, .dir = dir, .verdict = verdict};
	if (bpf_ringbuf_output(&policy_events, &e, sizeof(e), 0))
		budget_count(BUDGET_EVENTS_RING_FULL);
}

/* A flow admitted for the first time: told to podnetd only while it asks. */
INLINE void F(admitted_new)(PKT *k, ADDR pod, ADDR peer, u32 dir)
{
	if (switched_on(CONFIG_EVENTS_ALLOWED))
		F(emit)(k, pod, peer, dir, VERDICT_ADMITTED);
}

INLINE int F(refuse)(PKT *k, ADDR pod, ADDR peer, u32 dir)
{
	F(emit)(k, pod, peer, dir, VERDICT_REFUSED);
	DROP_KEY d = {.pod = pod, .dir = dir};
	u64 *n = bpf_map_lookup_elem(&F(policy_drops), &d);
	if (n) {
		__sync_fetch_and_add(n, 1);
	} else {
		u64 one = 1;
		bpf_map_update_elem(&F(policy_drops), &d, &one, 0);
	}
	return TC_ACT_SHOT;
}

/* One pod's side of a packet: `pod` is the pod, `peer` the other end. */
INLINE int F(judge)(PKT *k, ADDR pod, ADDR peer, u32 dir)
{
	u32 *flags = bpf_map_lookup_elem(&F(pod_policy), &pod);
	if (!flags || !(*flags & POD_PROGRAMMED))
		return F(refuse)(k, pod, peer, DIR_CLOSED);
	/* The node always reaches its pods, and its pods it. At a pod's ingress that is
	 * what the node itself sends; a forwarded packet carrying a node address was
	 * masqueraded on its way (kube-proxy's NodePort with Cluster policy) and meets the
	 * policy like any peer, as in the nftables datapath, which judges before the
	 * masquerade. */
	if ((dir == DIR_EGRESS || k->from_host) && bpf_map_lookup_elem(&F(node_addrs), &peer))
		return TC_ACT_OK;
	u32 isolated = dir == DIR_INGRESS ? POD_ISOLATED_INGRESS : POD_ISOLATED_EGRESS;
	u64 now = bpf_ktime_get_ns();
	if (*flags & isolated) {
		if (k->frag == FRAG_LATER && F(frag_seen)(k, dir, now))
			return TC_ACT_OK;
		if (F(related_seen)(k, dir, now))
			return TC_ACT_OK;
		if (F(flow_seen)(k, dir, now)) {
			F(frag_note)(k, dir, now);
			return TC_ACT_OK;
		}
		if (!F(admitted)(dir == DIR_INGRESS ? (void *)&F(ingress_peers) : (void *)&F(egress_peers), pod, peer, k))
			return F(refuse)(k, pod, peer, dir);
		F(flow_record)(k, dir, now);
		F(frag_note)(k, dir, now);
		F(admitted_new)(k, pod, peer, dir);
		return TC_ACT_OK;
	}
	/* Open for this direction: the flow is remembered all the same, for its replies
	 * (the pod may be isolated the other way) and so that it survives a policy that
	 * isolates the pod later. */
	if (k->opens || !F(flow_seen)(k, dir, now)) {
		F(flow_record)(k, dir, now);
		F(admitted_new)(k, pod, peer, dir);
	}
	return TC_ACT_OK;
}
