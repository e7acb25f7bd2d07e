/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The token bucket podnet's eBPF budgets share (from_pod.c: drop events per pod;
 * policy.c: flow-table entries per sender, events per pod). Approximate across CPUs
 * (no lock), which a budget can afford. Each program keeps its buckets in a map of its
 * own; a key without a bucket yet is given a full one by the caller.
 */
#ifndef PODNET_BUDGET_H
#define PODNET_BUDGET_H

#include "uapi.h"

struct bucket {
	u64 last;
	u64 tokens;
};

/* Refills `b` for the time since its last refill (RATE a second, at most BURST) and
 * takes one token; 0 when it is empty. */
static __attribute__((always_inline)) int bucket_take(struct bucket *b, u64 now, u64 rate, u64 burst)
{
	u64 idle = now - b->last;
	u64 add = idle >= 10000000000ULL ? burst : idle * rate / 1000000000ULL;
	if (add) {
		u64 t = b->tokens + add;
		b->tokens = t > burst ? burst : t;
		b->last = now;
	}
	if (!b->tokens)
		return 0;
	b->tokens -= 1;
	return 1;
}

#endif
