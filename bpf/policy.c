// SPDX-License-Identifier: Apache-2.0
/*
 * NetworkPolicy on a pod's host-side veth (tc, direct action): the eBPF datapath.
 *
 * from_pod_policy runs on the veth's ingress (after from_pod's anti-spoofing, so the
 * source address is the pod's own): the pod's egress policy. to_pod_policy runs on
 * the veth's egress, for everything delivered to the pod: its ingress policy.
 *
 * Maps (pinned by name in the node's bpffs directory, so they outlive podnetd, which
 * writes them; one set per node):
 * - pod_policy: pod address -> flags. A pod without an entry, or without
 *   POD_PROGRAMMED, is closed in both directions (no leak window).
 * - ingress_peers / egress_peers: LPM trie keyed (pod address, peer prefix) -> port
 *   set id; 0 means every protocol and port.
 * - port_sets: LPM trie keyed (set id, protocol, port prefix): port ranges as prefixes.
 * - node_addrs: the node's own addresses. The node always reaches its pods (kubelet
 *   probes) and its pods always reach it, as with the nftables datapath.
 * - flows: connection tracking of our own, an LRU hash of the flows each side
 *   admitted: (packet 5-tuple, side), side being the destination pod's ingress or the
 *   source pod's egress. At a pod's ingress a packet passes without a policy check if
 *   that ingress admitted its flow before (an open connection stays open across a
 *   policy change), or if the pod itself sent the reverse flow through its egress (a
 *   reply); likewise at its egress. A stray reply matches neither and meets the
 *   policy like a new packet. Sides never vouch for each other: a flow one pod sent
 *   does not open another pod's ingress on the same node. A TCP SYN or SCTP INIT opens
 *   a new connection and always meets the policy, even on ports an earlier one used.
 * - frags: the first fragments that passed each side, so that later fragments (no
 *   ports) follow them, as nftables' conntrack reassembles before judging. ICMP
 *   errors follow the flow whose header they quote (nftables: ct related), so that
 *   an isolated pod still learns of unreachable ports and path MTUs.
 * - Broadcast and multicast reach no pod: no pod holds such an address (nftables
 *   drops them likewise).
 * - policy_drops: packets refused, per (pod address, direction); direction 2 counts
 *   packets to or from a closed address.
 *
 * IPv6: podnet's pod network is IPv4, so a pod's IPv6 other than neighbour discovery
 * is dropped here (as the nftables datapath drops bridged IPv6).
 *
 * No kernel headers: the few UAPI definitions needed are in uapi.h.
 */
#include "budget.h"
#include "uapi.h"

#define INLINE static __attribute__((always_inline))

#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define IPPROTO_ICMP 1
#define IPPROTO_TCP 6
#define IPPROTO_UDP 17
#define IPPROTO_ICMPV6 58
#define IPPROTO_SCTP 132

#define POD_PROGRAMMED 1
#define POD_ISOLATED_INGRESS 2
#define POD_ISOLATED_EGRESS 4

#define DIR_INGRESS 0
#define DIR_EGRESS 1
#define DIR_CLOSED 2

/* A flow stays open this long after its last packet: TCP and SCTP, then the rest. */
#define FLOW_TIMEOUT_NS (300ULL * 1000000000ULL)
#define FLOW_TIMEOUT_DGRAM_NS (60ULL * 1000000000ULL)
/* A flow's timestamp is rewritten at most this often. */
#define FLOW_REFRESH_NS (1000000000ULL)

/* Shared with crates/agent/src/ebpf.rs; sizes are checked by the loader. */
struct peer_key {
	u32 prefixlen; /* 32 + peer prefix length */
	u32 pod;       /* network byte order */
	u32 peer;      /* network byte order */
};

struct port_key {
	u32 prefixlen; /* 40 + port prefix length */
	u8 set[4];     /* set id, big-endian */
	u8 proto;
	u8 port[2]; /* big-endian */
	u8 pad;
};

struct flow_key {
	u32 saddr, daddr;
	u16 sport, dport;
	u8 proto, side, pad[2]; /* side: DIR_INGRESS (of daddr) or DIR_EGRESS (of saddr) */
};

struct drop_key {
	u32 pod;
	u32 dir;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, u32);
	__type(value, u32);
	__uint(max_entries, 65536);
	__uint(pinning, PIN_BY_NAME);
} pod_policy SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct peer_key);
	__type(value, u32);
	__uint(max_entries, 1048576);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, PIN_BY_NAME);
} ingress_peers SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct peer_key);
	__type(value, u32);
	__uint(max_entries, 1048576);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, PIN_BY_NAME);
} egress_peers SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct port_key);
	__type(value, u32);
	__uint(max_entries, 1048576);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, PIN_BY_NAME);
} port_sets SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, u32);
	__type(value, u32);
	__uint(max_entries, 256);
	__uint(pinning, PIN_BY_NAME);
} node_addrs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct flow_key);
	__type(value, u64);
	__uint(max_entries, 262144);
	__uint(pinning, PIN_BY_NAME);
} flows SEC(".maps");

/* The fragments of one datagram: (source, destination, IP id, protocol, side) -> when
 * its first fragment, which carries the ports, passed that side. A later fragment
 * passes where its first one did (the kernel reassembles, as nftables' conntrack
 * does before judging): within FRAG_TIMEOUT_NS, the kernel's reassembly time. */
struct frag_key {
	u32 saddr, daddr;
	u16 id;
	u8 proto, side;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct frag_key);
	__type(value, u64);
	__uint(max_entries, 16384);
	__uint(pinning, PIN_BY_NAME);
} frags SEC(".maps");

/* Budgets: a token bucket per key. A new flow-table entry is charged to the address
 * that sent the packet opening it (a spraying pod pays, on every node, not the pods it
 * sprays at), FLOW_RATE entries a second in bursts of FLOW_BURST (a same-node flow is
 * two entries, one per side); past it the flow is judged packet by packet and not
 * remembered (its own replies then meet its ingress policy). This bounds how fast one
 * sender can churn the shared LRU table (which keeps recently used entries), not how
 * much of it one pod holds: that would need a table per pod.
 * An event (a drop told to podnetd) is charged to its pod: EVENT_RATE a second in
 * bursts of EVENT_BURST; past it the event is counted as lost, the verdict is never
 * affected. */
#define FLOW_RATE 20000ULL
#define FLOW_BURST 50000ULL
#define EVENT_RATE 50ULL
#define EVENT_BURST 200ULL

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, u32);
	__type(value, struct bucket);
	__uint(max_entries, 65536);
	__uint(pinning, PIN_BY_NAME);
} flow_budget SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, u32);
	__type(value, struct bucket);
	__uint(max_entries, 65536);
	__uint(pinning, PIN_BY_NAME);
} event_budget SEC(".maps");

/* What the budgets and the ring cost: BUDGET_* slots, each a count. */
#define BUDGET_EVENTS_LIMITED 0 /* events over a pod's budget */
#define BUDGET_EVENTS_RING_FULL 1 /* events the ring buffer had no room for */
#define BUDGET_FLOWS_UNRECORDED 2 /* new flows over their sender's budget */
#define BUDGET_SLOTS 4

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, u32);
	__type(value, u64);
	__uint(max_entries, BUDGET_SLOTS);
	__uint(pinning, PIN_BY_NAME);
} budget_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct drop_key);
	__type(value, u64);
	__uint(max_entries, 131072);
	__uint(pinning, PIN_BY_NAME);
} policy_drops SEC(".maps");

/* One verdict for podnetd (crates/agent/src/ebpf.rs, PolicyEvent): every refused
 * packet, and, while podnetd asks (config[CONFIG_EVENTS_ALLOWED]), every newly
 * admitted flow. */
struct policy_event {
	u32 pod, peer; /* network byte order */
	u16 sport, dport;
	u8 proto, dir, verdict, pad; /* verdict: 0 refused, 1 admitted */
};

#define VERDICT_REFUSED 0
#define VERDICT_ADMITTED 1

/* podnetd's switches, one slot each (0 off, 1 on); two writers, never the same slot.
 * Shared with crates/agent/src/ebpf.rs. */
#define CONFIG_EVENTS_ALLOWED 0 /* report admitted flows too */
#define CONFIG_FAST_PATH 1      /* the fast path (`--datapath ebpf`) */

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, u32);
	__type(value, u32);
	__uint(max_entries, 2);
	__uint(pinning, PIN_BY_NAME);
} config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
	__uint(pinning, PIN_BY_NAME);
} policy_events SEC(".maps");

/* The fast path (`--datapath ebpf`): while config[CONFIG_FAST_PATH] is on, packets whose
 * verdicts allow them skip the bridge and the node's IP stack. A local_pods entry
 * names a pod of this node: its host veth, its MAC, and the gateway's MAC (the source
 * of what the node routes to it). */
struct local_pod {
	u32 ifindex;
	u8 mac[6];
	u8 gw_mac[6];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, u32);
	__type(value, struct local_pod);
	__uint(max_entries, 65536);
	__uint(pinning, PIN_BY_NAME);
} local_pods SEC(".maps");

/* The fast path across nodes over VXLAN: from_pod_policy writes the encapsulation the
 * node's VXLAN device would write (outer Ethernet, IPv4, UDP, VXLAN, inner Ethernet)
 * and sends the frame straight out of the underlay device; from_underlay, on the
 * underlay device's ingress, takes it off again for this node's pods. The frames on
 * the wire are the VXLAN device's (same VNI, port, inner MACs), so a node on the bridge
 * datapath receives them through its VXLAN device as usual, and frames from such a
 * node are decapsulated here. overlay_self describes this node's VXLAN device
 * (vxlan_ifindex 0: encapsulation off); overlay_peers maps a peer's VTEP MAC (what
 * the node's neighbour table gives for a peer's pod CIDR) to that peer's underlay
 * address, as the device's FDB does. Both are written by podnetd from the kernel's own
 * VXLAN device, FDB and neighbours. */
struct overlay_self {
	u32 vxlan_ifindex;
	u32 local; /* underlay address, network order */
	u32 vni;
	u16 port; /* network order */
	u16 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, u32);
	__type(value, struct overlay_self);
	__uint(max_entries, 1);
	__uint(pinning, PIN_BY_NAME);
} overlay_self SEC(".maps");

struct vtep_key {
	u8 mac[6];
	u16 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct vtep_key);
	__type(value, u32); /* the peer's underlay address, network order */
	__uint(max_entries, 65536);
	__uint(pinning, PIN_BY_NAME);
} overlay_peers SEC(".maps");

/* outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14: what a pod's MTU leaves room for */
#define VXLAN_OVERHEAD 50
#define BPF_ADJ_ROOM_MAC 1
#define BPF_F_ADJ_ROOM_FIXED_GSO 1
#define BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 2
#define BPF_F_ADJ_ROOM_ENCAP_L4_UDP 16
#define BPF_F_ADJ_ROOM_ENCAP_L2_ETH 64
#define BPF_F_ADJ_ROOM_ENCAP_L2(len) (((u64)(len) & 0xff) << 56)

/* struct bpf_fib_lookup (UAPI), IPv4 fields. */
struct fib_lookup {
	u8 family, l4_protocol;
	u16 sport, dport;
	u16 tot_len;
	u32 ifindex;
	u32 tos;
	u32 ipv4_src, pad_src[3];
	u32 ipv4_dst, pad_dst[3];
	u16 vlan_proto, vlan_tci;
	u8 smac[6], dmac[6];
};

#define BPF_FIB_LKUP_RET_SUCCESS 0
#define TC_ACT_REDIRECT 7

static void *(*bpf_map_lookup_elem)(void *map, const void *key) = (void *)1;
static long (*bpf_skb_store_bytes)(struct __sk_buff *skb, u32 offset, const void *from, u32 len, u64 flags) = (void *)9;
static long (*bpf_l3_csum_replace)(struct __sk_buff *skb, u32 offset, u64 from, u64 to, u64 size) = (void *)10;
static long (*bpf_redirect)(u32 ifindex, u64 flags) = (void *)23;
static long (*bpf_fib_lookup)(struct __sk_buff *skb, struct fib_lookup *params, int plen, u32 flags) = (void *)69;
static long (*bpf_redirect_peer)(u32 ifindex, u64 flags) = (void *)155;
static long (*bpf_ringbuf_output)(void *ringbuf, void *data, u64 size, u64 flags) = (void *)130;
static long (*bpf_map_update_elem)(void *map, const void *key, const void *value, u64 flags) = (void *)2;
static u64 (*bpf_ktime_get_ns)(void) = (void *)5;
static u32 (*bpf_get_hash_recalc)(struct __sk_buff *skb) = (void *)34;
static long (*bpf_skb_adjust_room)(struct __sk_buff *skb, s32 len_diff, u32 mode, u64 flags) = (void *)50;

struct pkt {
	u32 saddr, daddr;
	u16 sport, dport; /* host byte order; for ICMP both are the echo id */
	u8 proto;
	u8 opens; /* a TCP SYN or an SCTP INIT: always a new connection */
	u8 frag;  /* FRAG_NONE, FRAG_FIRST or FRAG_LATER */
	u8 related; /* an ICMP error: `rel` is the flow it travels against, reversed */
	u16 ipid;
	/* For an ICMP error (destination unreachable, time exceeded, parameter problem):
	 * the packet it quotes, reversed, so that it is the direction the error travels:
	 * the error belongs to that flow as a reply would (nftables: ct related). */
	u32 rel_saddr, rel_daddr;
	u16 rel_sport, rel_dport;
	u8 rel_proto;
};

#define FRAG_NONE 0
#define FRAG_FIRST 1 /* offset 0, more fragments follow */
#define FRAG_LATER 2
#define FRAG_TIMEOUT_NS (30ULL * 1000000000ULL)

/* What parse() found. */
#define PARSE_IPV4 0
#define PARSE_OTHER 1 /* not IP: ARP and the like, passed */
#define PARSE_DROP 2  /* IPv6 other than neighbour discovery, or malformed */

INLINE u16 be16(const u8 *p)
{
	return (u16)p[0] << 8 | p[1];
}

INLINE u32 raw32(const u8 *p)
{
	return (u32)p[0] | (u32)p[1] << 8 | (u32)p[2] << 16 | (u32)p[3] << 24;
}

INLINE int parse(struct __sk_buff *skb, struct pkt *k)
{
	u8 *data = (u8 *)(long)skb->data;
	u8 *end = (u8 *)(long)skb->data_end;
	if (data + 14 > end)
		return PARSE_DROP;
	u16 eth = be16(data + 12);
	if (eth == ETH_P_IPV6) {
		u8 *ip6 = data + 14;
		if (ip6 + 41 > end)
			return PARSE_DROP;
		/* Neighbour discovery only: router solicitation, neighbour solicitation and
		 * advertisement (router advertisements never leave a pod: from_pod). */
		if (ip6[6] == IPPROTO_ICMPV6) {
			u8 t = ip6[40];
			if (t == 133 || t == 135 || t == 136)
				return PARSE_OTHER;
		}
		return PARSE_DROP;
	}
	if (eth != ETH_P_IP)
		return PARSE_OTHER;
	u8 *ip = data + 14;
	if (ip + 20 > end)
		return PARSE_DROP;
	u32 ihl = (ip[0] & 0x0f) * 4;
	if (ihl < 20 || ihl > 60)
		return PARSE_DROP;
	k->proto = ip[9];
	k->saddr = raw32(ip + 12);
	k->daddr = raw32(ip + 16);
	k->sport = 0;
	k->dport = 0;
	k->ipid = be16(ip + 4);
	u16 frag = be16(ip + 6);
	/* A later fragment carries no ports: it follows its first fragment (frags). */
	if ((frag & 0x1fff) != 0) {
		k->frag = FRAG_LATER;
		return PARSE_IPV4;
	}
	if (frag & 0x2000)
		k->frag = FRAG_FIRST;
	u8 *l4 = ip + ihl;
	if (k->proto == IPPROTO_TCP || k->proto == IPPROTO_UDP || k->proto == IPPROTO_SCTP) {
		if (l4 + 4 > end)
			return PARSE_DROP;
		k->sport = be16(l4);
		k->dport = be16(l4 + 2);
		if (k->proto == IPPROTO_TCP) {
			if (l4 + 14 > end)
				return PARSE_DROP;
			k->opens = (l4[13] & 0x12) == 0x02; /* SYN without ACK */
		} else if (k->proto == IPPROTO_SCTP) {
			if (l4 + 13 > end)
				return PARSE_DROP;
			k->opens = l4[12] == 1; /* INIT */
		}
	} else if (k->proto == IPPROTO_ICMP) {
		if (l4 + 8 > end)
			return PARSE_DROP;
		/* Echo request and reply: one flow per echo id. */
		if (l4[0] == 8 || l4[0] == 0) {
			k->sport = be16(l4 + 4);
			k->dport = k->sport;
		}
		/* An error quoting a packet: the quoted header, reversed. */
		if (l4[0] == 3 || l4[0] == 11 || l4[0] == 12) {
			u8 *in = l4 + 8;
			if (in + 20 > end)
				return PARSE_IPV4;
			u32 ihl2 = (in[0] & 0x0f) * 4;
			if (ihl2 < 20 || ihl2 > 60)
				return PARSE_IPV4;
			u8 *q = in + ihl2;
			k->rel_proto = in[9];
			k->rel_saddr = raw32(in + 16);
			k->rel_daddr = raw32(in + 12);
			if (k->rel_proto == IPPROTO_TCP || k->rel_proto == IPPROTO_UDP || k->rel_proto == IPPROTO_SCTP) {
				if (q + 4 > end)
					return PARSE_IPV4;
				k->rel_sport = be16(q + 2);
				k->rel_dport = be16(q);
			} else if (k->rel_proto == IPPROTO_ICMP) {
				if (q + 8 > end)
					return PARSE_IPV4;
				if (q[0] == 8 || q[0] == 0) {
					k->rel_sport = be16(q + 4);
					k->rel_dport = k->rel_sport;
				}
			}
			k->related = 1;
		}
	}
	return PARSE_IPV4;
}

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
	if (bpf_map_lookup_elem(&node_addrs, &peer))
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

/* The VXLAN device's work, done here: when the route names this node's VXLAN device
 * and its neighbour a known peer VTEP, wrap the frame (see overlay_self) and send it
 * out of the underlay device to the peer node's neighbour. Returns -1, the frame
 * untouched, when it cannot (the caller then uses the VXLAN device). */
INLINE int to_overlay(struct __sk_buff *skb, struct fib_lookup *f, u8 tos)
{
	u32 zero = 0;
	struct overlay_self *self = bpf_map_lookup_elem(&overlay_self, &zero);
	if (!self || !self->vxlan_ifindex || f->ifindex != self->vxlan_ifindex)
		return -1;
	struct vtep_key vk = {};
	__builtin_memcpy(vk.mac, f->dmac, 6);
	u32 *peer = bpf_map_lookup_elem(&overlay_peers, &vk);
	if (!peer)
		return -1;
	/* The underlay hop: the node's route and neighbour towards the peer node. */
	struct fib_lookup u = {};
	u.family = 2; /* AF_INET */
	u.l4_protocol = IPPROTO_UDP;
	u.ifindex = skb->ingress_ifindex;
	u.ipv4_src = self->local;
	u.ipv4_dst = *peer;
	if (bpf_fib_lookup(skb, &u, sizeof(u), 0) != BPF_FIB_LKUP_RET_SUCCESS)
		return -1;
	u32 len = skb->len; /* the pod's frame: Ethernet and IP */
	u16 sport = 49152 | (bpf_get_hash_recalc(skb) & 0x3fff);
	if (bpf_skb_adjust_room(skb, VXLAN_OVERHEAD, BPF_ADJ_ROOM_MAC,
				BPF_F_ADJ_ROOM_FIXED_GSO | BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 |
					BPF_F_ADJ_ROOM_ENCAP_L4_UDP | BPF_F_ADJ_ROOM_ENCAP_L2_ETH |
					BPF_F_ADJ_ROOM_ENCAP_L2(14)))
		return -1;
	u8 h[64] = {};
	__builtin_memcpy(h, u.dmac, 6);
	__builtin_memcpy(h + 6, u.smac, 6);
	h[12] = 0x08;
	/* outer IPv4 */
	u8 *ip = h + 14;
	u16 tot = len + VXLAN_OVERHEAD - 14;
	ip[0] = 0x45;
	ip[1] = tos;
	ip[2] = tot >> 8;
	ip[3] = tot;
	ip[6] = 0x40; /* DF: never fragmented (the pod's MTU leaves room), so ID 0 is allowed */
	ip[8] = 64;
	ip[9] = IPPROTO_UDP;
	__builtin_memcpy(ip + 12, &self->local, 4);
	__builtin_memcpy(ip + 16, peer, 4);
	u32 sum = 0;
	for (int i = 0; i < 20; i += 2)
		sum += (u32)ip[i] << 8 | ip[i + 1];
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = ~sum;
	ip[10] = sum >> 8;
	ip[11] = sum;
	/* UDP, no checksum (as the VXLAN device sends over IPv4) */
	u8 *udp = ip + 20;
	u16 ulen = tot - 20;
	udp[0] = sport >> 8;
	udp[1] = sport;
	__builtin_memcpy(udp + 2, &self->port, 2);
	udp[4] = ulen >> 8;
	udp[5] = ulen;
	/* VXLAN: the VNI flag and the VNI */
	u8 *vx = udp + 8;
	vx[0] = 0x08;
	vx[4] = self->vni >> 16;
	vx[5] = self->vni >> 8;
	vx[6] = self->vni;
	/* inner Ethernet: from this node's VTEP to the peer's, as the device writes it */
	u8 *in = vx + 8;
	__builtin_memcpy(in, f->dmac, 6);
	__builtin_memcpy(in + 6, f->smac, 6);
	in[12] = 0x08;
	if (bpf_skb_store_bytes(skb, 0, h, sizeof(h), 0))
		return TC_ACT_SHOT;
	return bpf_redirect(u.ifindex, 0);
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
	f.family = 2; /* AF_INET */
	f.l4_protocol = k->proto;
	f.ifindex = skb->ingress_ifindex;
	f.tos = tos;
	f.ipv4_src = k->saddr;
	f.ipv4_dst = k->daddr;
	if (bpf_fib_lookup(skb, &f, sizeof(f), 0) != BPF_FIB_LKUP_RET_SUCCESS)
		return TC_ACT_OK;
	if (!forward_ttl(skb))
		return TC_ACT_OK;
	int r = to_overlay(skb, &f, tos);
	if (r >= 0)
		return r;
	bpf_skb_store_bytes(skb, 0, f.dmac, 6, 0);
	bpf_skb_store_bytes(skb, 6, f.smac, 6, 0);
	return bpf_redirect(f.ifindex, 0);
}

SEC("classifier/from_pod_policy") int from_pod_policy(struct __sk_buff *skb)
{
	struct pkt k = {};
	int r = parse(skb, &k);
	if (r == PARSE_OTHER)
		return TC_ACT_OK;
	if (r == PARSE_DROP)
		return TC_ACT_SHOT;
	r = judge(&k, k.saddr, k.daddr, DIR_EGRESS);
	if (r != TC_ACT_OK || !switched_on(CONFIG_FAST_PATH))
		return r;
	/* The fast path. A pod of this node: its ingress verdict here, since the
	 * redirect skips its host veth (and to_pod_policy there). */
	struct local_pod *dst = bpf_map_lookup_elem(&local_pods, &k.daddr);
	if (dst) {
		u8 *data = (u8 *)(long)skb->data;
		u8 *end = (u8 *)(long)skb->data_end;
		if (data + 6 > end)
			return TC_ACT_OK;
		/* Addressed to the gateway: the node would have routed it. */
		int routed = !(data[0] == dst->mac[0] && data[1] == dst->mac[1] && data[2] == dst->mac[2] &&
			       data[3] == dst->mac[3] && data[4] == dst->mac[4] && data[5] == dst->mac[5]);
		return judged_into(skb, &k, dst, routed);
	}
	return to_other_node(skb, &k);
}

/* On the overlay device's ingress (fast path only): packets from other nodes to this
 * node's pods go straight into the pod, after the pod's ingress verdict. */
SEC("classifier/from_overlay") int from_overlay(struct __sk_buff *skb)
{
	if (!switched_on(CONFIG_FAST_PATH))
		return TC_ACT_OK;
	struct pkt k = {};
	if (parse(skb, &k) != PARSE_IPV4)
		return TC_ACT_OK;
	struct local_pod *dst = bpf_map_lookup_elem(&local_pods, &k.daddr);
	if (!dst)
		return TC_ACT_OK;
	return judged_into(skb, &k, dst, 1);
}

/* On the underlay device's ingress (fast path only): VXLAN frames from other nodes to
 * this node's pods lose their encapsulation here and go straight into the pod, after
 * the pod's ingress verdict, without the VXLAN device or the node's IP stack. Frames
 * for anyone else, and anything unusual (IP options, fragments, another VNI or
 * port), go on to the stack and the VXLAN device unchanged. */
SEC("classifier/from_underlay") int from_underlay(struct __sk_buff *skb)
{
	if (!switched_on(CONFIG_FAST_PATH))
		return TC_ACT_OK;
	u32 zero = 0;
	struct overlay_self *self = bpf_map_lookup_elem(&overlay_self, &zero);
	if (!self || !self->vxlan_ifindex)
		return TC_ACT_OK;
	u8 *data = (u8 *)(long)skb->data;
	u8 *end = (u8 *)(long)skb->data_end;
	/* outer Ethernet 14, IPv4 20, UDP 8, VXLAN 8, inner Ethernet 14, inner IPv4 20 */
	if (data + 84 > end)
		return TC_ACT_OK;
	u8 *ip = data + 14, *udp = data + 34, *vx = data + 42, *in = data + 50;
	if (data[12] != 0x08 || data[13] != 0x00 || ip[0] != 0x45 || ip[9] != IPPROTO_UDP)
		return TC_ACT_OK;
	if ((ip[6] & 0x3f) || ip[7] || raw32(ip + 16) != self->local)
		return TC_ACT_OK;
	if (*(u16 *)(udp + 2) != self->port || !(vx[0] & 0x08))
		return TC_ACT_OK;
	if (((u32)vx[4] << 16 | (u32)vx[5] << 8 | vx[6]) != self->vni)
		return TC_ACT_OK;
	if (in[12] != 0x08 || in[13] != 0x00)
		return TC_ACT_OK;
	u32 daddr = raw32(in + 14 + 16);
	struct local_pod *dst = bpf_map_lookup_elem(&local_pods, &daddr);
	if (!dst)
		return TC_ACT_OK;
	if (bpf_skb_adjust_room(skb, -VXLAN_OVERHEAD, BPF_ADJ_ROOM_MAC, BPF_F_ADJ_ROOM_FIXED_GSO))
		return TC_ACT_OK;
	/* Now the outer Ethernet header before the inner IPv4 packet. */
	struct pkt k = {};
	if (parse(skb, &k) != PARSE_IPV4)
		return TC_ACT_SHOT;
	return judged_into(skb, &k, dst, 1);
}

SEC("classifier/to_pod_policy") int to_pod_policy(struct __sk_buff *skb)
{
	struct pkt k = {};
	int r = parse(skb, &k);
	if (r == PARSE_OTHER)
		return TC_ACT_OK;
	if (r == PARSE_DROP)
		return TC_ACT_SHOT;
	return judge(&k, k.daddr, k.saddr, DIR_INGRESS);
}

char _license[] SEC("license") = "GPL";
