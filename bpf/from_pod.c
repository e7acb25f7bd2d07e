// SPDX-License-Identifier: Apache-2.0
/*
 * from_pod: anti-spoofing on the ingress of a pod's host-side veth (tc, direct action).
 *
 * Every frame a pod sends passes here before the node bridge sees it. A frame leaves
 * only if its Ethernet source is the pod's MAC and, for ARP, the sender MAC and IP are
 * the pod's, for IPv4 the source is the pod's IP, and for IPv6 the source is one of the
 * pod's addresses: a dual-stack pod's global address, or its link-local address
 * (derived from its MAC, EUI-64, as the kernel makes it, for pods that keep one); ::
 * only for MLD reports and for duplicate-address detection of one of those addresses.
 * A neighbour advertisement is for one of those addresses and that MAC, and it is not
 * a router advertisement or a redirect (nor a chain of extension headers too long to
 * see through). A first IPv6 fragment (and the destination options that may follow its
 * fragment header) is checked as an unfragmented packet; a later one,
 * which carries no upper-layer header, by its source (large UDP datagrams are sent in
 * fragments). UDP to the node's overlay ports is dropped unless it goes
 * to another pod (see struct pod_state). Everything else is dropped through drop(),
 * which counts it under one reason from drop_reasons.h.
 *
 * One program, one hash map (podnet_pods: struct pod_state keyed by the host veth's
 * ifindex), one ring buffer of drop events (podnet_spoofev), its per-pod budget
 * (podnet_spoofrl) and its count of lost events (podnet_spooflost) serve all pods of a
 * node; podnet-cni writes a pod's MAC and IP there before the veth joins the bridge, and the entry also holds the pod's drop counters. A veth without an entry
 * drops everything: the program fails closed.
 *
 * No kernel headers: the few UAPI definitions needed are in uapi.h, so that the build
 * needs only clang. struct pod_state and struct spoof_event, which podnet-cni and
 * podnetd read, are in abi.h.
 */
#include "abi.h"
#include "budget.h"
#include "drop_reasons.h"
#include "helpers.h"

/* Passing frames go on to the next filter (the policy program, if the node runs the
 * eBPF policy datapath): TC_ACT_UNSPEC, not TC_ACT_OK, which would end the chain. */

/* struct pod_state (abi.h) is shared with the loader, crates/cni/src/antispoof.rs, and
 * the readers in crates/netlink/src/antispoof.rs. */

/* The node's maps, made by podnet-cni's loader (aya) with the program and held by it
 * (no pins: they go with the last filter using the program). The symbol names are the
 * kernel's map names, which podnet-cni and podnetd look for. The loader sets both sizes
 * (crates/cni/src/antispoof.rs: MAX_PODS, EVENTS_BYTES); these are placeholders. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, u32); /* host veth ifindex */
	__type(value, struct pod_state);
	__uint(max_entries, 1);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} podnet_pods SEC(".maps");

/* Drop events for podnetd (crates/netlink/src/antispoof.rs, SpoofEvent). */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4096);
	__type(record, struct spoof_event); /* BTF only: see uapi.h */
} podnet_spoofev SEC(".maps");

/* The event budget: a token bucket per host veth, EVENT_RATE events a second in
 * bursts of EVENT_BURST; past it (a pod spraying forged frames) the event is counted
 * as lost in podnet_spooflost, never the verdict or the drop counter. */
#define EVENT_RATE 50ULL
#define EVENT_BURST 200ULL

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, u32); /* host veth ifindex */
	__type(value, struct bucket);
	__uint(max_entries, 16384);
} podnet_spoofrl SEC(".maps");

/* Events lost: SPOOF_LOST_BUDGET over a pod's budget, SPOOF_LOST_RING_FULL the ring
 * buffer had no room. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, u32);
	__type(value, u64);
	__uint(max_entries, SPOOF_LOST_SLOTS);
} podnet_spooflost SEC(".maps");

INLINE void lost(u32 slot)
{
	u64 *n = bpf_map_lookup_elem(&podnet_spooflost, &slot);
	if (n)
		__sync_fetch_and_add(n, 1);
}

/* One token of veth `ifindex`'s event budget; 0 when it is spent. */
INLINE int event_budget(u32 ifindex)
{
	u64 now = bpf_ktime_get_ns();
	struct bucket *b = bpf_map_lookup_elem(&podnet_spoofrl, &ifindex);
	if (!b) {
		struct bucket nb = {.last = now, .tokens = EVENT_BURST - 1};
		bpf_map_update_elem(&podnet_spoofrl, &ifindex, &nb, 0);
		return 1;
	}
	return bucket_take(b, now, EVENT_RATE, EVENT_BURST);
}

enum {
#define X(num, name, id, what) DROP_##name = num,
	PODNET_DROP_REASONS(X)
#undef X
};

/* May a pod send UDP to port `dport` at `daddr` (host order)? See struct pod_state. */
INLINE int overlay_port_allowed(const struct pod_state *st, u32 daddr,
								u16 dport)
{
	if (!dport || (dport != st->guard_ports[0] && dport != st->guard_ports[1]))
		return 1;
	if (!st->cluster_mask || (daddr & st->cluster_mask) != st->cluster_net)
		return 0;
	u32 host = daddr & ~st->node_mask;
	return host != 0 && host != 1 && host != ~st->node_mask;
}

/* Counts the drop under `reason` and tells podnetd what was dropped (an event in the
 * ring buffer; when it is full the event is lost, never the verdict). Frames that
 * pass cost nothing here. A function of its own (a BPF-to-BPF call), not inlined: its
 * event on the stack, once per call site, would not fit the program's 512 bytes. */
static __attribute__((noinline)) int drop(u32 ifindex, u8 *data, u8 *end, struct pod_state *st,
						u32 reason)
{
	if (reason < PODNET_DROP_MAX)
		__sync_fetch_and_add(&st->drops[reason], 1);
	if (!event_budget(ifindex)) {
		lost(SPOOF_LOST_BUDGET);
		return TC_ACT_SHOT;
	}
	struct spoof_event e = {};
	e.ifindex = ifindex;
	e.reason = reason;
	if (data + 14 <= end) {
		for (int i = 0; i < 6; i++)
			e.src_mac[i] = data[6 + i];
		e.ethertype[0] = data[12];
		e.ethertype[1] = data[13];
		u8 *l3 = data + 14;
		if (data[12] == 0x08 && data[13] == 0x06 && l3 + 28 <= end) {
			e.saddr = raw32(l3 + 14);
			e.daddr = raw32(l3 + 24);
		} else if (data[12] == 0x08 && data[13] == 0x00 && l3 + 20 <= end) {
			e.saddr = raw32(l3 + 12);
			e.daddr = raw32(l3 + 16);
			e.proto = l3[9];
			u32 ihl = (u32)(l3[0] & 0x0f) * 4;
			u8 *l4 = l3 + ihl;
			if ((e.proto == IPPROTO_TCP || e.proto == IPPROTO_UDP || e.proto == IPPROTO_SCTP) && ihl >= 20 && l4 + 4 <= end) {
				e.sport = (u16)l4[0] << 8 | l4[1];
				e.dport = (u16)l4[2] << 8 | l4[3];
			}
		} else if (data[12] == 0x86 && data[13] == 0xdd && l3 + 40 <= end) {
			for (int i = 0; i < 16; i++) {
				e.saddr6[i] = l3[8 + i];
				e.daddr6[i] = l3[24 + i];
			}
			/* The next header; ports only right behind the fixed header. */
			e.proto = l3[6];
			u8 *l4 = l3 + 40;
			if ((e.proto == IPPROTO_TCP || e.proto == IPPROTO_UDP || e.proto == IPPROTO_SCTP) && l4 + 4 <= end) {
				e.sport = (u16)l4[0] << 8 | l4[1];
				e.dport = (u16)l4[2] << 8 | l4[3];
			}
		}
	}
	if (bpf_ringbuf_output(&podnet_spoofev, &e, sizeof(e), 0))
		lost(SPOOF_LOST_RING_FULL);
	return TC_ACT_SHOT;
}

/* Is `a` the link-local address the kernel gives an interface with MAC `mac` (EUI-64:
 * fe80::, then the MAC with the universal/local bit flipped and ff:fe in the middle)? */
INLINE int own_link_local(const u8 *a, const u8 *mac)
{
	return a[0] == 0xfe && a[1] == 0x80 && a[2] == 0 && a[3] == 0 && a[4] == 0 && a[5] == 0 &&
	       a[6] == 0 && a[7] == 0 && a[8] == (mac[0] ^ 2) && a[9] == mac[1] && a[10] == mac[2] &&
	       a[11] == 0xff && a[12] == 0xfe && a[13] == mac[3] && a[14] == mac[4] && a[15] == mac[5];
}

INLINE int unspecified(const u8 *a)
{
	return (raw32(a) | raw32(a + 4) | raw32(a + 8) | raw32(a + 12)) == 0;
}

/* Is `a` the pod's global IPv6 address (a dual-stack pod's; none when all zero)? */
INLINE int own_ip6(const u8 *a, const struct pod_state *st)
{
	const u8 *m = st->ip6;
	if (unspecified(m))
		return 0;
	return raw32(a) == raw32(m) && raw32(a + 4) == raw32(m + 4) && raw32(a + 8) == raw32(m + 8) &&
	       raw32(a + 12) == raw32(m + 12);
}

/* Any address of the pod's: its global IPv6 address or its link-local one. */
INLINE int own_addr6(const u8 *a, const struct pod_state *st)
{
	return own_ip6(a, st) || own_link_local(a, st->mac);
}

/* The mask of byte `i` of a `prefix`-bit prefix. */
INLINE u8 prefix_byte(u32 prefix, int i)
{
	u32 bits = prefix > (u32)(8 * i) ? prefix - 8 * i : 0;
	return bits >= 8 ? 0xff : (u8)(0xff00 >> bits);
}

/* May a pod send UDP to an overlay port at IPv6 address `d`? Only to another pod: an
 * address of the cluster's IPv6 range (which holds the pod's own address; unknown:
 * of the pod's own node's range) that is not ::0 (subnet-router anycast, the next hop
 * of the route to that node) or ::1 (the gateway, the node itself) of its node's range
 * (every node's range has the same length). See struct pod_state. */
INLINE int overlay_port_allowed6(const struct pod_state *st, const u8 *d)
{
	if (unspecified(st->ip6))
		return 0;
	u32 node = st->ip6_prefix;
	u32 range = st->cluster6_prefix ? st->cluster6_prefix : node;
	u32 host_high = 0;
	u8 low = 0;
#pragma unroll
	for (int i = 0; i < 16; i++) {
		if ((d[i] ^ st->ip6[i]) & prefix_byte(range, i))
			return 0;
		u8 host = d[i] & (u8)~prefix_byte(node, i);
		if (i < 15)
			host_high |= host;
		else
			low = host;
	}
	return host_high != 0 || low > 1;
}

SEC("classifier") int podnet_from_pod(struct __sk_buff *skb)
{
	u32 key = skb->ifindex;
	struct pod_state *st = bpf_map_lookup_elem(&podnet_pods, &key);
	if (!st)
		return TC_ACT_SHOT;

	u8 *data = (u8 *)(long)skb->data;
	u8 *end = (u8 *)(long)skb->data_end;
	if (data + 14 > end)
		return drop(key, data, end, st, DROP_MALFORMED);
	if (skb->vlan_present)
		return drop(key, data, end, st, DROP_ETHERTYPE);
	if (!mac_eq(data + 6, st->mac))
		return drop(key, data, end, st, DROP_SRC_MAC);

	u16 proto = (u16)data[12] << 8 | data[13];
	u8 *l3 = data + 14;

	if (proto == ETH_P_ARP) {
		if (l3 + 28 > end)
			return drop(key, data, end, st, DROP_MALFORMED);
		/* htype 1 (Ethernet), ptype 0x0800, hlen 6, plen 4 */
		if (l3[0] != 0 || l3[1] != 1 || l3[2] != 8 || l3[3] != 0 || l3[4] != 6 || l3[5] != 4)
			return drop(key, data, end, st, DROP_MALFORMED);
		if (!mac_eq(l3 + 8, st->mac))
			return drop(key, data, end, st, DROP_ARP_SHA);
		if (raw32(l3 + 14) != st->ip)
			return drop(key, data, end, st, DROP_ARP_SPA);
		return TC_ACT_UNSPEC;
	}
	if (proto == ETH_P_IP) {
		if (l3 + 20 > end)
			return drop(key, data, end, st, DROP_MALFORMED);
		if (raw32(l3 + 12) != st->ip)
			return drop(key, data, end, st, DROP_IP_SRC);
		/* UDP to an overlay port: only the first fragment carries the port (any later
		 * fragment is useless to the node without it). */
		if (l3[9] == IPPROTO_UDP && !(((u32)l3[6] << 8 | l3[7]) & 0x1fff)) {
			u32 ihl = (u32)(l3[0] & 0x0f) * 4;
			u8 *l4 = l3 + ihl;
			if (ihl < 20 || l4 + 4 > end)
				return drop(key, data, end, st, DROP_MALFORMED);
			if (!overlay_port_allowed(st, be32(l3 + 16), (u16)l4[2] << 8 | l4[3]))
				return drop(key, data, end, st, DROP_OVERLAY_PORT);
		}
		return TC_ACT_UNSPEC;
	}
	if (proto == ETH_P_IPV6) {
		if (l3 + 40 > end)
			return drop(key, data, end, st, DROP_MALFORMED);
		u8 next = l3[6];
		u8 *p = l3 + 40;
		/* Skip up to four hop-by-hop, routing or destination-options headers. */
#pragma unroll
		for (int i = 0; i < 4; i++) {
			if (next != 0 && next != 43 && next != 60)
				break;
			if (p + 2 > end)
				return drop(key, data, end, st, DROP_MALFORMED);
			u32 len = ((u32)p[1] + 1) * 8;
			next = p[0];
			p += len;
		}
		/* A fragment: the first carries the upper-layer header, checked below as
		 * if unfragmented (a neighbour discovery message there is dropped the same
		 * way, and the kernel ignores fragmented ones anyway, RFC 6980); a later one
		 * carries none, so only its source is checked. */
		u8 later = 0;
		if (next == 44) {
			if (p + 8 > end)
				return drop(key, data, end, st, DROP_MALFORMED);
			later = (((u32)p[2] << 8 | p[3]) & 0xfff8) != 0;
			next = p[0];
			p += 8;
			/* A first fragment's destination options for the final destination
			 * may follow the fragment header (RFC 8200, 4.1). */
			if (!later && next == 60) {
				if (p + 2 > end)
					return drop(key, data, end, st, DROP_MALFORMED);
				u32 len = ((u32)p[1] + 1) * 8;
				next = p[0];
				p += len;
			}
		}
		if (later) {
			if (!own_addr6(l3 + 8, st))
				return drop(key, data, end, st, DROP_IPV6_SRC);
			return TC_ACT_UNSPEC;
		}
		/* Still inside the chain (or a second fragment header): what follows cannot
		 * be checked. */
		if (next == 0 || next == 43 || next == 60 || next == 44)
			return drop(key, data, end, st, DROP_MALFORMED);
		u8 icmp = 0;
		if (next == IPPROTO_ICMPV6) {
			if (p + 1 > end)
				return drop(key, data, end, st, DROP_MALFORMED);
			icmp = p[0];
		}
		const u8 *src = l3 + 8;
		if (!own_addr6(src, st)) {
			/* MLD reports and duplicate-address detection (a neighbour solicitation)
			 * go out before an address is ready, from ::. Detection only for the
			 * pod's own addresses: a probe for another pod's address would make that
			 * pod, were it still detecting, give its address up. */
			if (!unspecified(src) || (icmp != 135 && icmp != 143))
				return drop(key, data, end, st, DROP_IPV6_SRC);
			if (icmp == 135) {
				/* type, code, checksum, reserved (8 bytes), then the target. */
				if (p + 24 > end)
					return drop(key, data, end, st, DROP_MALFORMED);
				if (!own_addr6(p + 8, st))
					return drop(key, data, end, st, DROP_IPV6_DAD);
			}
		}
		/* UDP to an overlay port (the first fragment's header; later ones passed
		 * above are useless to the node without it). */
		if (next == IPPROTO_UDP) {
			if (p + 4 > end)
				return drop(key, data, end, st, DROP_MALFORMED);
			u16 dport = (u16)p[2] << 8 | p[3];
			if (dport && (dport == st->guard_ports[0] || dport == st->guard_ports[1]) &&
			    !overlay_port_allowed6(st, l3 + 24))
				return drop(key, data, end, st, DROP_OVERLAY_PORT);
		}
		if (icmp == 134)
			return drop(key, data, end, st, DROP_IPV6_RA);
		if (icmp == 137)
			return drop(key, data, end, st, DROP_IPV6_REDIRECT);
		if (icmp == 136) {
			/* type, code, checksum, flags (8 bytes), then the target address. */
			if (p + 24 > end)
				return drop(key, data, end, st, DROP_MALFORMED);
			if (!own_addr6(p + 8, st))
				return drop(key, data, end, st, DROP_IPV6_NA);
			/* Every target link-layer address option must carry the pod's MAC;
			 * an advertisement with more options than are checked is refused. */
			u8 *o = p + 24;
#define NA_OPTION()                                                                    \
	if (o + 8 <= end) {                                                                  \
		u32 olen = (u32)o[1] * 8;                                                        \
		if (olen == 0)                                                                   \
			return drop(key, data, end, st, DROP_MALFORMED);                                             \
		if (o[0] == 2 && (o[1] != 1 || !mac_eq(o + 2, st->mac)))                         \
			return drop(key, data, end, st, DROP_IPV6_NA);                                               \
		o += olen;                                                                       \
	}
			NA_OPTION()
			NA_OPTION()
			NA_OPTION()
#undef NA_OPTION
			if (o + 8 <= end)
				return drop(key, data, end, st, DROP_IPV6_NA);
		}
		return TC_ACT_UNSPEC;
	}
	return drop(key, data, end, st, DROP_ETHERTYPE);
}

char _license[] SEC("license") = "Dual BSD/GPL";
