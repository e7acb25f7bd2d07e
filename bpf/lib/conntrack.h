/* SPDX-License-Identifier: Apache-2.0 */
/*
 * policy.c, connection tracking of its own: the flow table (flows: a flow each side
 * admitted, and the reverse flows that count as replies), fragments following their
 * first (frags), ICMP errors following the flow they quote, and the token-bucket
 * budgets (take(), budget_count()) that bound how fast one sender fills the flow table
 * and, in verdict.h, how many events a pod sends.
 *
 * Included by policy.c after its maps: uses flows, frags, flow_budget and budget_stats,
 * and FLOW_RATE, FLOW_BURST from there.
 */
#ifndef PODNET_LIB_CONNTRACK_H
#define PODNET_LIB_CONNTRACK_H

#include "../abi.h"
#include "../budget.h"
#include "../helpers.h"
#include "parse.h"

/* A flow stays open this long after its last packet: TCP and SCTP, then the rest. */
#define FLOW_TIMEOUT_NS (300ULL * 1000000000ULL)
#define FLOW_TIMEOUT_DGRAM_NS (60ULL * 1000000000ULL)
/* A flow's timestamp is rewritten at most this often. */
#define FLOW_REFRESH_NS (1000000000ULL)
/* A later fragment passes within this time of its first: the kernel's reassembly time. */
#define FRAG_TIMEOUT_NS (30ULL * 1000000000ULL)

/* Whether this side admitted the packet's flow before, or the pod sent its reverse. */
INLINE int flow_seen(struct pkt *k, u32 side, u64 now)
{
	/* A connection being opened is new, whatever an earlier one on the same ports
	 * left behind. */
	if (k->opens)
		return 0;
	struct flow_key f = {.saddr = k->saddr, .daddr = k->daddr, .sport = k->sport, .dport = k->dport, .proto = k->proto, .side = side};
	u64 *t = bpf_map_lookup_elem(&flows, &f);
	if (!t) {
		struct flow_key r = {.saddr = k->daddr, .daddr = k->saddr, .sport = k->dport, .dport = k->sport, .proto = k->proto, .side = 1 - side};
		t = bpf_map_lookup_elem(&flows, &r);
	}
	u64 timeout = (k->proto == IPPROTO_TCP || k->proto == IPPROTO_SCTP) ? FLOW_TIMEOUT_NS : FLOW_TIMEOUT_DGRAM_NS;
	if (!t || now - *t > timeout)
		return 0;
	if (now - *t > FLOW_REFRESH_NS)
		*t = now;
	return 1;
}

INLINE void budget_count(u32 slot)
{
	u64 *n = bpf_map_lookup_elem(&budget_stats, &slot);
	if (n)
		__sync_fetch_and_add(n, 1);
}

/* Takes one token of `key`'s bucket in `map`; 0 when it is empty. Approximate across
 * CPUs (no lock), which a budget can afford. */
INLINE int take(void *map, u32 key, u64 now, u64 rate, u64 burst)
{
	struct bucket *b = bpf_map_lookup_elem(map, &key);
	if (!b) {
		struct bucket nb = {.last = now, .tokens = burst - 1};
		bpf_map_update_elem(map, &key, &nb, 0);
		return 1;
	}
	return bucket_take(b, now, rate, burst);
}

/* A first fragment passed `side`: its later fragments will too. */
INLINE void frag_note(struct pkt *k, u32 side, u64 now)
{
	if (k->frag != FRAG_FIRST)
		return;
	struct frag_key f = {.saddr = k->saddr, .daddr = k->daddr, .id = k->ipid, .proto = k->proto, .side = side};
	bpf_map_update_elem(&frags, &f, &now, 0);
}

INLINE int frag_seen(struct pkt *k, u32 side, u64 now)
{
	struct frag_key f = {.saddr = k->saddr, .daddr = k->daddr, .id = k->ipid, .proto = k->proto, .side = side};
	u64 *t = bpf_map_lookup_elem(&frags, &f);
	return t && now - *t <= FRAG_TIMEOUT_NS;
}

/* An ICMP error about a flow this side saw: it passes as that flow's reply would. */
INLINE int related_seen(struct pkt *k, u32 side, u64 now)
{
	if (!k->related)
		return 0;
	struct pkt r = {.saddr = k->rel_saddr, .daddr = k->rel_daddr, .sport = k->rel_sport, .dport = k->rel_dport, .proto = k->rel_proto};
	return flow_seen(&r, side, now);
}

INLINE void flow_record(struct pkt *k, u32 side, u64 now)
{
	/* Every entry is charged, both sides of a same-node flow included: the budget
	 * bounds how fast one sender can churn the shared table. */
	if (!take(&flow_budget, k->saddr, now, FLOW_RATE, FLOW_BURST)) {
		budget_count(BUDGET_FLOWS_UNRECORDED);
		return;
	}
	struct flow_key f = {.saddr = k->saddr, .daddr = k->daddr, .sport = k->sport, .dport = k->dport, .proto = k->proto, .side = side};
	bpf_map_update_elem(&flows, &f, &now, 0);
}

#endif
