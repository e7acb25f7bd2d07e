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
 *   probes: what the node itself sends, not what it forwards with its address after a
 *   masquerade) and its pods always reach it, as with the nftables datapath.
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
 * IPv6: a dual-stack pod's IPv6 address is judged the same way, in maps of its own
 * (pod_policy6, ingress_peers6, egress_peers6, node_addrs6, flows6, frags6,
 * flow_budget6, event_budget6, policy_drops6: keys of 16-byte addresses; port_sets,
 * config and the ring buffer are shared). The judgment is written once:
 * lib/conntrack.h and lib/verdict.h are templates this file instantiates per family.
 * Neighbour discovery passes (hop limit 255); anything else from or to a link-local or
 * multicast address is dropped, since no pod holds one (the nftables datapath drops
 * those too). The fast path and Service deferral are IPv4 only: an IPv6 packet a pod
 * sends is judged and then takes the bridge and the node's stack.
 *
 * No kernel headers: the few UAPI definitions needed are in uapi.h.
 *
 * This file holds the maps and the programs; the rest is split by concern under lib/:
 * parse.h (what a packet is), common.h (budgets, switches, port sets), conntrack.h
 * (flows, fragments), verdict.h (judging one pod's side), encap.h (VXLAN) and fib.h
 * (forwarding). The structs and
 * constants podnetd shares (keys, values, flags, slots) are in abi.h.
 */
#include "abi.h"
#include "budget.h"
#include "helpers.h"

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

/* The IPv6 twins of the maps above (same roles, same sizes; port_sets is shared). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct in6);
	__type(value, u32);
	__uint(max_entries, 65536);
	__uint(pinning, PIN_BY_NAME);
} pod_policy6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct peer6_key);
	__type(value, u32);
	__uint(max_entries, 1048576);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, PIN_BY_NAME);
} ingress_peers6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct peer6_key);
	__type(value, u32);
	__uint(max_entries, 1048576);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, PIN_BY_NAME);
} egress_peers6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct in6);
	__type(value, u32);
	__uint(max_entries, 256);
	__uint(pinning, PIN_BY_NAME);
} node_addrs6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct flow6_key);
	__type(value, u64);
	__uint(max_entries, 262144);
	__uint(pinning, PIN_BY_NAME);
} flows6 SEC(".maps");

struct frag6_key {
	struct in6 saddr, daddr;
	u32 id;
	u8 proto, side;
	u8 pad[2];
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct frag6_key);
	__type(value, u64);
	__uint(max_entries, 16384);
	__uint(pinning, PIN_BY_NAME);
} frags6 SEC(".maps");

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

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct in6);
	__type(value, struct bucket);
	__uint(max_entries, 65536);
	__uint(pinning, PIN_BY_NAME);
} flow_budget6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct in6);
	__type(value, struct bucket);
	__uint(max_entries, 65536);
	__uint(pinning, PIN_BY_NAME);
} event_budget6 SEC(".maps");

/* What the budgets and the ring cost: budget_stats, BUDGET_* slots (abi.h), each a
 * count. */
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

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct drop6_key);
	__type(value, u64);
	__uint(max_entries, 131072);
	__uint(pinning, PIN_BY_NAME);
} policy_drops6 SEC(".maps");

/* One verdict for podnetd (crates/agent/src/observe, PolicyEvent): struct policy_event
 * (abi.h), or struct policy_event6 for an IPv6 packet (told apart by size). The switches podnetd sets in config: CONFIG_* slots (abi.h), 0 off, 1 on; two
 * writers, never the same slot. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, u32);
	__type(value, u32);
	__uint(max_entries, CONFIG_SLOTS);
	__uint(pinning, PIN_BY_NAME);
} config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
	__uint(pinning, PIN_BY_NAME);
	__type(record, struct policy_event);   /* BTF only: see uapi.h */
	__type(record6, struct policy_event6); /* the IPv6 record, BTF only likewise */
} policy_events SEC(".maps");

/* The fast path (`--datapath ebpf`): while config[CONFIG_FAST_PATH] is on, packets whose
 * verdicts allow them skip the bridge and the node's IP stack. A local_pods entry
 * names a pod of this node: its host veth, its MAC, and the gateway's MAC (the source
 * of what the node routes to it). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, u32);
	__type(value, struct local_pod);
	__uint(max_entries, 65536);
	__uint(pinning, PIN_BY_NAME);
} local_pods SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct in6);
	__type(value, struct local_pod);
	__uint(max_entries, 65536);
	__uint(pinning, PIN_BY_NAME);
} local_pods6 SEC(".maps");

/* The fast path across nodes over VXLAN: from_pod_policy writes the encapsulation the
 * node's VXLAN device would write (outer Ethernet, IPv4, UDP, VXLAN, inner Ethernet)
 * and sends the frame straight out of the underlay device; from_underlay, on the
 * underlay device's ingress, takes it off again for this node's pods. The frames on
 * the wire are the VXLAN device's (same VNI, port, inner MACs), so a node on the bridge
 * datapath receives them through its VXLAN device as usual, and frames from such a
 * node are decapsulated here. overlay_self describes this node's VXLAN device
 * (vxlan_ifindex 0: encapsulation off); overlay_peers maps a peer's VTEP MAC (what
 * the node's neighbour table gives for a peer's pod CIDR) to that peer's underlay
 * address, as the device's FDB does (overlay_peers6 to its IPv6 one, over an IPv6
 * underlay). Both are written by podnetd from the kernel's own
 * VXLAN device, FDB and neighbours. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, u32);
	__type(value, struct overlay_self);
	__uint(max_entries, 1);
	__uint(pinning, PIN_BY_NAME);
} overlay_self SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct vtep_key);
	__type(value, u32); /* the peer's underlay address, network order */
	__uint(max_entries, 65536);
	__uint(pinning, PIN_BY_NAME);
} overlay_peers SEC(".maps");

/* Over an IPv6 underlay (overlay_self.ipv6): a peer's VTEP MAC to its underlay IPv6
 * address. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct vtep_key);
	__type(value, struct in6);
	__uint(max_entries, 65536);
	__uint(pinning, PIN_BY_NAME);
} overlay_peers6 SEC(".maps");

/* Service traffic (lib/service.h): the Service range and the node's pod CIDR, written
 * by podnetd; and the flows this node translated, under their reply's addresses, for
 * the fast path (side is always 0). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, u32);
	__type(value, struct svc_config);
	__uint(max_entries, 1);
	__uint(pinning, PIN_BY_NAME);
} svc_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct flow_key);
	__type(value, u64);
	__uint(max_entries, 65536);
	__uint(pinning, PIN_BY_NAME);
} translated SEC(".maps");

/* The same for IPv6 Services (a dual-stack cluster). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, u32);
	__type(value, struct svc_config6);
	__uint(max_entries, 1);
	__uint(pinning, PIN_BY_NAME);
} svc_config6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct flow6_key);
	__type(value, u64);
	__uint(max_entries, 65536);
	__uint(pinning, PIN_BY_NAME);
} translated6 SEC(".maps");

/* The datapath, by concern (each header says what it holds and which of the maps above
 * it uses). */
#include "lib/parse.h"
#include "lib/common.h"

/* The judgment, once per family: F(name) is the family's function or map. */
#define F(name) name
#define PKT struct pkt
#define ADDR u32
#define FLOW_KEY struct flow_key
#define FRAG_KEY struct frag_key
#define PEER_KEY struct peer_key
#define PEER_BITS 64
#define DROP_KEY struct drop_key
#define EVENT struct policy_event
#include "lib/conntrack.h"
#include "lib/verdict.h"
#undef F
#undef PKT
#undef ADDR
#undef FLOW_KEY
#undef FRAG_KEY
#undef PEER_KEY
#undef PEER_BITS
#undef DROP_KEY
#undef EVENT

#define F(name) name##6
#define PKT struct pkt6
#define ADDR struct in6
#define FLOW_KEY struct flow6_key
#define FRAG_KEY struct frag6_key
#define PEER_KEY struct peer6_key
#define PEER_BITS 256
#define DROP_KEY struct drop6_key
#define EVENT struct policy_event6
#include "lib/conntrack.h"
#include "lib/verdict.h"
#undef F
#undef PKT
#undef ADDR
#undef FLOW_KEY
#undef FRAG_KEY
#undef PEER_KEY
#undef PEER_BITS
#undef DROP_KEY
#undef EVENT

#include "lib/encap.h"
#include "lib/fib.h"
#include "lib/service.h"

/* An IPv6 packet from a pod (from_pod_policy): to a Service, deferred until it is
 * translated; else its egress verdict, then with the fast path straight into a local
 * pod or out to the pod's node, as for IPv4 (a reply the node must translate back
 * goes through its stack). */
INLINE int from_pod6(struct __sk_buff *skb)
{
	struct pkt6 k = {};
	if (parse_ip6(skb, &k) != PARSE_IPV6)
		return TC_ACT_SHOT;
	if (is_service6(&k.daddr))
		return defer_service6(skb, &k);
	int r = judge6(&k, k.saddr, k.daddr, DIR_EGRESS);
	if (r != TC_ACT_OK || !switched_on(CONFIG_FAST_PATH))
		return r;
	if (translated_reply6(&k))
		return TC_ACT_OK;
	struct local_pod *dst = bpf_map_lookup_elem(&local_pods6, &k.daddr);
	if (dst) {
		u8 *data = (u8 *)(long)skb->data;
		u8 *end = (u8 *)(long)skb->data_end;
		if (data + 6 > end)
			return TC_ACT_OK;
		return judged_into6(skb, &k, dst, !mac_eq(data, dst->mac));
	}
	if (!in_cluster6(&k.daddr))
		return TC_ACT_OK;
	return to_other_node6(skb, &k);
}

/* An IPv6 packet to a pod (to_pod_policy): a Service packet translated on this node
 * meets its client's egress first; then this pod's ingress verdict on the client. */
INLINE int to_pod6(struct __sk_buff *skb)
{
	struct pkt6 k = {};
	if (parse_ip6(skb, &k) != PARSE_IPV6)
		return TC_ACT_SHOT;
	k.from_host = !skb->ingress_ifindex;
	struct in6 client = {};
	int found;
	int r = judge_translated6(skb, &k, &client, &found);
	if (r != TC_ACT_OK)
		return r;
	return judge6(&k, k.daddr, found ? client : k.saddr, DIR_INGRESS);
}

/* An IPv6 packet from another node to a local pod, on the overlay device (fast path):
 * the pod's ingress verdict, then into it. */
INLINE int into_pod6(struct __sk_buff *skb)
{
	struct pkt6 k = {};
	if (parse_ip6(skb, &k) != PARSE_IPV6)
		return TC_ACT_OK;
	struct local_pod *dst = bpf_map_lookup_elem(&local_pods6, &k.daddr);
	if (!dst || translated_reply6(&k))
		return TC_ACT_OK;
	return judged_into6(skb, &k, dst, 1);
}

SEC("classifier/from_pod_policy") int from_pod_policy(struct __sk_buff *skb)
{
	struct pkt k = {};
	int r = parse(skb, &k);
	if (r == PARSE_OTHER)
		return TC_ACT_OK;
	if (r == PARSE_DROP)
		return TC_ACT_SHOT;
	if (r == PARSE_IPV6)
		return from_pod6(skb);
	/* To a Service: judged once kube-proxy has translated it (lib/service.h). */
	if (is_service(k.daddr))
		return defer_service(skb, &k);
	r = judge(&k, k.saddr, k.daddr, DIR_EGRESS);
	if (r != TC_ACT_OK || !switched_on(CONFIG_FAST_PATH))
		return r;
	/* A reply the node must translate back: through its stack. */
	if (translated_reply(k.saddr, k.daddr, k.sport, k.dport, k.proto))
		return TC_ACT_OK;
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
	/* Only pods of other nodes: what leaves the cluster is masqueraded by the stack. */
	if (!in_cluster(k.daddr))
		return TC_ACT_OK;
	return to_other_node(skb, &k);
}

/* On the overlay device's ingress (fast path only): packets from other nodes to this
 * node's pods go straight into the pod, after the pod's ingress verdict. */
SEC("classifier/from_overlay") int from_overlay(struct __sk_buff *skb)
{
	if (!switched_on(CONFIG_FAST_PATH))
		return TC_ACT_OK;
	struct pkt k = {};
	int r = parse(skb, &k);
	if (r == PARSE_IPV6)
		return into_pod6(skb);
	if (r != PARSE_IPV4)
		return TC_ACT_OK;
	struct local_pod *dst = bpf_map_lookup_elem(&local_pods, &k.daddr);
	if (!dst || translated_reply(k.saddr, k.daddr, k.sport, k.dport, k.proto))
		return TC_ACT_OK;
	return judged_into(skb, &k, dst, 1);
}

/* A VXLAN frame for this node (checked by the caller) whose outer IP header is `hl`
 * bytes long (20: IPv4, 40: IPv6): to a pod of this node, it loses its encapsulation
 * here and goes straight into the pod after the pod's ingress verdict; anything else
 * goes on unchanged. `hl` is a constant at each call, so the offsets are too. */
INLINE int from_vxlan(struct __sk_buff *skb, u32 hl)
{
	u32 overhead = hl + 30; /* outer IP + UDP 8 + VXLAN 8 + inner Ethernet 14 */
	u8 *data = (u8 *)(long)skb->data;
	u8 *end = (u8 *)(long)skb->data_end;
	/* outer Ethernet 14, the outer headers, inner IPv4 20 */
	if (data + 14 + overhead + 20 > end)
		return TC_ACT_OK;
	u8 *in = data + 14 + hl + 16;
	/* Inner IPv6 (a dual-stack pod's): to a pod of this node, decapsulated here. */
	if (in[12] == 0x86 && in[13] == 0xdd) {
		u8 *i6 = in + 14;
		if (i6 + 44 > end)
			return TC_ACT_OK;
		if (!bpf_map_lookup_elem(&local_pods6, i6 + 24))
			return TC_ACT_OK;
		/* A reply this node translated goes to the stack, as for IPv4; so does
		 * anything whose ports are behind extension headers. */
		if (i6[6] != IPPROTO_TCP && i6[6] != IPPROTO_UDP && i6[6] != IPPROTO_ICMPV6)
			return TC_ACT_OK;
		if (i6[6] != IPPROTO_ICMPV6) {
			struct pkt6 r = {.proto = i6[6], .sport = be16(i6 + 40), .dport = be16(i6 + 42)};
			__builtin_memcpy(&r.saddr, i6 + 8, 16);
			__builtin_memcpy(&r.daddr, i6 + 24, 16);
			if (translated_reply6(&r))
				return TC_ACT_OK;
		}
		if (bpf_skb_adjust_room(skb, -(s32)overhead, BPF_ADJ_ROOM_MAC,
					BPF_F_ADJ_ROOM_FIXED_GSO | BPF_F_ADJ_ROOM_DECAP_L3_IPV6))
			return TC_ACT_OK;
		/* Now the outer Ethernet header before the inner IPv6 packet. */
		data = (u8 *)(long)skb->data;
		end = (u8 *)(long)skb->data_end;
		if (data + 14 > end)
			return TC_ACT_SHOT;
		data[12] = 0x86;
		data[13] = 0xdd;
		struct pkt k = {};
		struct pkt6 k6 = {};
		if (parse(skb, &k) != PARSE_IPV6 || parse_ip6(skb, &k6) != PARSE_IPV6)
			return TC_ACT_SHOT;
		struct local_pod *dst6 = bpf_map_lookup_elem(&local_pods6, &k6.daddr);
		if (!dst6)
			return TC_ACT_SHOT;
		return judged_into6(skb, &k6, dst6, 1);
	}
	if (in[12] != 0x08 || in[13] != 0x00)
		return TC_ACT_OK;
	u32 daddr = raw32(in + 14 + 16);
	struct local_pod *dst = bpf_map_lookup_elem(&local_pods, &daddr);
	if (!dst)
		return TC_ACT_OK;
	/* A reply this node translated: the VXLAN device and the stack take it (the
	 * inner header without options, which is all the fast path sends). */
	u8 *iip = in + 14;
	if (iip + 24 > end)
		return TC_ACT_OK;
	if (iip[0] == 0x45 && translated_reply(raw32(iip + 12), daddr, be16(iip + 20), be16(iip + 22), iip[9]))
		return TC_ACT_OK;
	/* Over IPv6 the frame's protocol changes to IPv4 with the shrink. */
	if (bpf_skb_adjust_room(skb, -(s32)overhead, BPF_ADJ_ROOM_MAC,
				BPF_F_ADJ_ROOM_FIXED_GSO | (hl == 40 ? BPF_F_ADJ_ROOM_DECAP_L3_IPV4 : 0)))
		return TC_ACT_OK;
	if (hl == 40) {
		data = (u8 *)(long)skb->data;
		end = (u8 *)(long)skb->data_end;
		if (data + 14 > end)
			return TC_ACT_SHOT;
		data[12] = 0x08;
		data[13] = 0x00;
	}
	/* Now the outer Ethernet header before the inner IPv4 packet. */
	struct pkt k = {};
	if (parse(skb, &k) != PARSE_IPV4)
		return TC_ACT_SHOT;
	return judged_into(skb, &k, dst, 1);
}

/* On the underlay device's ingress (fast path only): VXLAN frames from other nodes to
 * this node's pods lose their encapsulation here and go straight into the pod, after
 * the pod's ingress verdict, without the VXLAN device or the node's IP stack. Frames
 * for anyone else, and anything unusual (IP options, fragments, IPv6 extension
 * headers, another VNI or port, the other family than the underlay's), go on to the
 * stack and the VXLAN device unchanged. */
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
	if (self->ipv6) {
		/* outer Ethernet 14, IPv6 40 (no extension headers), UDP 8, VXLAN 8 */
		if (data + 70 > end)
			return TC_ACT_OK;
		u8 *ip6 = data + 14, *udp = data + 54, *vx = data + 62;
		if (data[12] != 0x86 || data[13] != 0xdd || (ip6[0] >> 4) != 6 || ip6[6] != IPPROTO_UDP)
			return TC_ACT_OK;
		for (int i = 0; i < 16; i++)
			if (ip6[24 + i] != self->local6[i])
				return TC_ACT_OK;
		if (*(u16 *)(udp + 2) != self->port || !(vx[0] & 0x08))
			return TC_ACT_OK;
		if (((u32)vx[4] << 16 | (u32)vx[5] << 8 | vx[6]) != self->vni)
			return TC_ACT_OK;
		return from_vxlan(skb, 40);
	}
	/* outer Ethernet 14, IPv4 20, UDP 8, VXLAN 8 */
	if (data + 50 > end)
		return TC_ACT_OK;
	u8 *ip = data + 14, *udp = data + 34, *vx = data + 42;
	if (data[12] != 0x08 || data[13] != 0x00 || ip[0] != 0x45 || ip[9] != IPPROTO_UDP)
		return TC_ACT_OK;
	if ((ip[6] & 0x3f) || ip[7] || raw32(ip + 16) != self->local)
		return TC_ACT_OK;
	if (*(u16 *)(udp + 2) != self->port || !(vx[0] & 0x08))
		return TC_ACT_OK;
	if (((u32)vx[4] << 16 | (u32)vx[5] << 8 | vx[6]) != self->vni)
		return TC_ACT_OK;
	return from_vxlan(skb, 20);
}

SEC("classifier/to_pod_policy") int to_pod_policy(struct __sk_buff *skb)
{
	struct pkt k = {};
	int r = parse(skb, &k);
	if (r == PARSE_OTHER)
		return TC_ACT_OK;
	if (r == PARSE_DROP)
		return TC_ACT_SHOT;
	if (r == PARSE_IPV6)
		return to_pod6(skb);
	k.from_host = !skb->ingress_ifindex;
	/* Translated on this node (a Service whose backend is this pod): the client's
	 * egress first; then this pod's ingress judges the client pod itself, even when
	 * the node masqueraded it (a pod reaching itself through its Service). */
	u32 client;
	r = judge_translated(skb, &k, &client);
	if (r != TC_ACT_OK)
		return r;
	return judge(&k, k.daddr, client ? client : k.saddr, DIR_INGRESS);
}

/* A marked IPv6 packet (its header at `base`) leaving the node: its client's egress. */
INLINE int after_translation6(struct __sk_buff *skb, u32 base)
{
	struct pkt6 k = {};
	if (parse_ip6_at(skb, &k, base) != PARSE_IPV6) {
		skb->mark &= ~SVC_BITS;
		return TC_ACT_SHOT;
	}
	struct in6 client = {};
	int found;
	return judge_translated6(skb, &k, &client, &found);
}

/* On the egress of the overlay and underlay devices: a Service packet translated on
 * this node and leaving it meets its client's egress here (lib/service.h). */
SEC("classifier/after_translation") int after_translation(struct __sk_buff *skb)
{
	if (!(skb->mark & PODNET_SVC_MARK))
		return TC_ACT_OK;
	struct pkt k = {};
	u32 client;
	int r = parse(skb, &k);
	if (r == PARSE_IPV4)
		return judge_translated(skb, &k, &client);
	if (r == PARSE_IPV6)
		return after_translation6(skb, 14);
	skb->mark &= ~SVC_BITS;
	return r == PARSE_DROP ? TC_ACT_SHOT : TC_ACT_OK;
}

/* The same on a device without link-layer header (the WireGuard device). */
SEC("classifier/after_translation_l3") int after_translation_l3(struct __sk_buff *skb)
{
	if (!(skb->mark & PODNET_SVC_MARK))
		return TC_ACT_OK;
	if (skb->protocol == __builtin_bswap16(ETH_P_IPV6))
		return after_translation6(skb, 0);
	struct pkt k = {};
	u32 client;
	int r = parse_l3(skb, &k);
	if (r == PARSE_IPV4)
		return judge_translated(skb, &k, &client);
	skb->mark &= ~SVC_BITS;
	return r == PARSE_DROP ? TC_ACT_SHOT : TC_ACT_OK;
}

char _license[] SEC("license") = "GPL";
