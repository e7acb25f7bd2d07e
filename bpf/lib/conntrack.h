/* SPDX-License-Identifier: Apache-2.0 */
/*
 * policy.c, connection tracking of its own: the flow table (F(flows): a flow each
 * side admitted, and the reverse flows that count as replies), fragments following
 * their first (F(frags)), and ICMP errors following the flow they quote.
 *
 * A template, written once for both families and included once per family by
 * policy.c (no include guard): F(name) is the family's function or map (name for
 * IPv4, name6 for IPv6), PKT its struct pkt, FLOW_KEY and FRAG_KEY its keys, and
 * F(flow_budget) the budget a new entry is charged to (the sender's address).
 * Uses budget_count() and take() of common.h, FLOW_RATE and FLOW_BURST of policy.c.
 */

/* Whether this side admitted the packet's flow before, or the pod sent its reverse. */
INLINE int F(flow_seen)(PKT *k, u32 side, u64 now)
{
	/* A connection being opened is new, whatever an earlier one on the same ports
	 * left behind. */
	if (k->opens)
		return 0;
	FLOW_KEY f = {.saddr = k->saddr, .daddr = k->daddr, .sport = k->sport, .dport = k->dport, .proto = k->proto, .side = side};
	u64 *t = bpf_map_lookup_elem(&F(flows), &f);
	if (!t) {
		FLOW_KEY r = {.saddr = k->daddr, .daddr = k->saddr, .sport = k->dport, .dport = k->sport, .proto = k->proto, .side = 1 - side};
		t = bpf_map_lookup_elem(&F(flows), &r);
	}
	u64 timeout = (k->proto == IPPROTO_TCP || k->proto == IPPROTO_SCTP) ? FLOW_TIMEOUT_NS : FLOW_TIMEOUT_DGRAM_NS;
	if (!t || now - *t > timeout)
		return 0;
	if (now - *t > FLOW_REFRESH_NS)
		*t = now;
	return 1;
}

/* A first fragment passed `side`: its later fragments will too. */
INLINE void F(frag_note)(PKT *k, u32 side, u64 now)
{
	if (k->frag != FRAG_FIRST)
		return;
	FRAG_KEY f = {.saddr = k->saddr, .daddr = k->daddr, .id = k->ipid, .proto = k->proto, .side = side};
	bpf_map_update_elem(&F(frags), &f, &now, 0);
}

INLINE int F(frag_seen)(PKT *k, u32 side, u64 now)
{
	FRAG_KEY f = {.saddr = k->saddr, .daddr = k->daddr, .id = k->ipid, .proto = k->proto, .side = side};
	u64 *t = bpf_map_lookup_elem(&F(frags), &f);
	return t && now - *t <= FRAG_TIMEOUT_NS;
}

/* An ICMP error about a flow this side saw: it passes as that flow's reply would. */
INLINE int F(related_seen)(PKT *k, u32 side, u64 now)
{
	if (!k->related)
		return 0;
	PKT r = {.saddr = k->rel_saddr, .daddr = k->rel_daddr, .sport = k->rel_sport, .dport = k->rel_dport, .proto = k->rel_proto};
	return F(flow_seen)(&r, side, now);
}

INLINE void F(flow_record)(PKT *k, u32 side, u64 now)
{
	/* Every entry is charged, both sides of a same-node flow included: the budget
	 * bounds how fast one sender can churn the shared table. */
	if (!take(&F(flow_budget), &k->saddr, now, FLOW_RATE, FLOW_BURST)) {
		budget_count(BUDGET_FLOWS_UNRECORDED);
		return;
	}
	FLOW_KEY f = {.saddr = k->saddr, .daddr = k->daddr, .sport = k->sport, .dport = k->dport, .proto = k->proto, .side = side};
	bpf_map_update_elem(&F(flows), &f, &now, 0);
}
