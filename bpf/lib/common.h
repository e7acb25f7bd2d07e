/* SPDX-License-Identifier: Apache-2.0 */
/*
 * policy.c, what the judgment of both families shares: the token-bucket budgets
 * (take(), budget_count()), the switches podnetd sets (switched_on()) and the port
 * sets (in_port_set()), which hold protocols and ports, not addresses.
 *
 * Included by policy.c after its maps: uses budget_stats, config and port_sets.
 */
#ifndef PODNET_LIB_COMMON_H
#define PODNET_LIB_COMMON_H

#include "../abi.h"
#include "../budget.h"
#include "../helpers.h"

/* A flow stays open this long after its last packet: TCP and SCTP, then the rest. */
#define FLOW_TIMEOUT_NS (300ULL * 1000000000ULL)
#define FLOW_TIMEOUT_DGRAM_NS (60ULL * 1000000000ULL)
/* A flow's timestamp is rewritten at most this often. */
#define FLOW_REFRESH_NS (1000000000ULL)
/* A later fragment passes within this time of its first: the kernel's reassembly time. */
#define FRAG_TIMEOUT_NS (30ULL * 1000000000ULL)

INLINE void budget_count(u32 slot)
{
	u64 *n = bpf_map_lookup_elem(&budget_stats, &slot);
	if (n)
		__sync_fetch_and_add(n, 1);
}

/* Takes one token of the bucket under `key` in `map`; 0 when it is empty.
 * Approximate across CPUs (no lock), which a budget can afford. */
INLINE int take(void *map, const void *key, u64 now, u64 rate, u64 burst)
{
	struct bucket *b = bpf_map_lookup_elem(map, key);
	if (!b) {
		struct bucket nb = {.last = now, .tokens = burst - 1};
		bpf_map_update_elem(map, key, &nb, 0);
		return 1;
	}
	return bucket_take(b, now, rate, burst);
}

/* Whether podnetd switched `slot` of config on. */
INLINE int switched_on(u32 slot)
{
	u32 *on = bpf_map_lookup_elem(&config, &slot);
	return on && *on;
}

/* Whether port set `set` (a peer entry's value; 0: every protocol and port) holds
 * `proto` and `dport`. */
INLINE int in_port_set(u32 set, u8 proto, u16 dport)
{
	if (set == 0)
		return 1;
	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP && proto != IPPROTO_SCTP)
		return 0;
	struct port_key q = {.prefixlen = 56, .proto = proto};
	q.set[0] = set >> 24;
	q.set[1] = set >> 16;
	q.set[2] = set >> 8;
	q.set[3] = set;
	q.port[0] = dport >> 8;
	q.port[1] = dport;
	return bpf_map_lookup_elem(&port_sets, &q) != 0;
}

#endif
