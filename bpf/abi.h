/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Every struct and constant that podnet's eBPF programs share with the Rust side, in
 * one place. crates/bpf-abi/build.rs reads this file and generates the Rust types and
 * constants from it (the podnet-bpf-abi crate); crates/bpf-abi/tests/layout.rs checks
 * every struct against the BTF of the compiled programs. Never mirror one by hand.
 *
 * The form is restricted so that build.rs can read it (it fails, naming the line, on
 * anything else):
 * - `#define NAME ((TYPE)VALUE)`: a constant; TYPE u8, u16, u32, u64 or s32; VALUE a
 *   decimal or 0x hexadecimal integer.
 * - `struct name {` ... `};`: one field a line, `TYPE name;`, `TYPE name[LEN];` or
 *   `struct other name;` (a struct defined above); LEN an integer or a constant of
 *   this file (or PODNET_DROP_MAX / PODNET_UNDERLAY_DROP_MAX, counted from
 *   drop_reasons.h). No implicit padding: every pad is a named field.
 * - A struct named `*_key` whose first field is `u32 prefixlen;` is an LPM trie key:
 *   build.rs also generates `*_data`, its fields after the prefix length, the `T` of
 *   aya's `lpm_trie::Key<T>` (which lays out the prefix length and `T` packed, as here).
 * - A comment right above an item (or a field), or after it on its line, becomes its
 *   Rust doc comment; a comment followed by a blank line is free text like this one.
 * Maps are defined in the programs, not here.
 */
#ifndef PODNET_ABI_H
#define PODNET_ABI_H

#include "uapi.h"
#include "drop_reasons.h"

/* ---- from_pod.c: anti-spoofing ---- */

/* A pod's entry in podnet_pods (keyed by its host veth's ifindex): what it may send as
 * (its MAC, its IPv4 address, and a dual-stack pod's IPv6 address), its overlay guard
 * and its drop counters. Written by podnet-cni, read by podnetd.
 *
 * The overlay guard: the node's overlay ports (VXLAN, WireGuard) take encapsulated
 * traffic that the node decapsulates and forwards as if it came from a peer node. A pod
 * may send UDP to those ports only to another pod: an address of the cluster CIDR whose
 * host part in its node's pod CIDR is not 0 (the VXLAN/WireGuard device's address), 1
 * (the bridge gateway) or all ones (the bridge's broadcast), which are node addresses.
 * Everything else on those ports is dropped. Over IPv6 likewise: an address of the
 * cluster's IPv6 range (cluster6_prefix; when that is unknown, of the pod's own node's
 * range) whose host part in its node's range is not ::0 (the subnet-router anycast
 * address, the route's next hop to that node) or ::1 (the gateway). */
struct pod_state {
	u8 mac[6];
	u8 pad[2];
	u32 ip;             /* network byte order */
	u16 guard_ports[2]; /* host order; 0: none */
	u32 cluster_net;    /* host order */
	u32 cluster_mask;   /* host order; 0: no pod destination at all */
	u32 node_mask;      /* host order: the mask of one node's pod CIDR */
	u32 pad2;
	u8 ip6[16];         /* a dual-stack pod's IPv6 address; all zero: none */
	u8 ip6_prefix;      /* the prefix length of its node's IPv6 pod CIDR */
	u8 cluster6_prefix; /* the cluster's IPv6 range's (the pod's address is in it); 0: unknown */
	u8 pad3[6];
	u64 drops[PODNET_DROP_MAX]; /* one counter per drop reason (drop_reasons.h), at offset 56 */
};

/* One dropped frame, a record of the ring buffer podnet_spoofev, for podnetd. */
struct spoof_event {
	u32 ifindex; /* the host veth the frame came in on */
	u32 reason;  /* the drop reason (drop_reasons.h) */
	u8 src_mac[6];
	u8 ethertype[2]; /* network byte order */
	u32 saddr;       /* IPv4 source, ARP sender address; network order */
	u32 daddr;       /* IPv4 destination, ARP target address; network order */
	u8 proto;        /* IPv4 protocol number, IPv6 next header (0 for ARP and others) */
	u8 pad;
	u16 sport; /* TCP, UDP and SCTP ports, host order */
	u16 dport;
	u16 pad2;
	u8 saddr6[16]; /* IPv6 source (IPv6 frames only) */
	u8 daddr6[16]; /* IPv6 destination */
};

/* podnet_spooflost slot: events over a pod's budget. */
#define SPOOF_LOST_BUDGET ((u32)0)
/* podnet_spooflost slot: events the ring buffer had no room for. */
#define SPOOF_LOST_RING_FULL ((u32)1)
/* How many slots podnet_spooflost has. */
#define SPOOF_LOST_SLOTS ((u32)2)

/* ---- policy.c: the policy datapath and the fast path ---- */

/* pod_policy flag: the pod's verdicts are in the maps (without it the pod is closed
 * both ways). */
#define POD_PROGRAMMED ((u32)1)
/* pod_policy flag: an ingress policy selects the pod. */
#define POD_ISOLATED_INGRESS ((u32)2)
/* pod_policy flag: an egress policy selects the pod. */
#define POD_ISOLATED_EGRESS ((u32)4)

/* A direction (drop_key.dir, policy_event.dir, flow_key.side): the pod's ingress. */
#define DIR_INGRESS ((u32)0)
/* The pod's egress. */
#define DIR_EGRESS ((u32)1)
/* To or from a closed address (drop_key.dir, policy_event.dir only). */
#define DIR_CLOSED ((u32)2)

/* policy_event.verdict: the packet was refused. */
#define VERDICT_REFUSED ((u8)0)
/* policy_event.verdict: a new flow was admitted. */
#define VERDICT_ADMITTED ((u8)1)

/* config slot (0 off, 1 on): report admitted flows too. */
#define CONFIG_EVENTS_ALLOWED ((u32)0)
/* config slot (0 off, 1 on): the fast path (`--datapath ebpf`). */
#define CONFIG_FAST_PATH ((u32)1)
/* How many slots config has. */
#define CONFIG_SLOTS ((u32)2)

/* budget_stats slot: events over a pod's budget. */
#define BUDGET_EVENTS_LIMITED ((u32)0)
/* budget_stats slot: events the ring buffer had no room for. */
#define BUDGET_EVENTS_RING_FULL ((u32)1)
/* budget_stats slot: new flows over their sender's budget (not remembered). */
#define BUDGET_FLOWS_UNRECORDED ((u32)2)
/* How many slots budget_stats has. */
#define BUDGET_SLOTS ((u32)4)

/* The key of ingress_peers and egress_peers (LPM tries; value: port set id, 0 for every
 * protocol and port). */
struct peer_key {
	u32 prefixlen; /* 32 + peer prefix length */
	u32 pod;       /* network byte order */
	u32 peer;      /* network byte order */
};

/* The key of port_sets (LPM trie): port ranges as prefixes of the port number. */
struct port_key {
	u32 prefixlen; /* 40 + port prefix length */
	u8 set[4];     /* set id, big-endian */
	u8 proto;
	u8 port[2]; /* big-endian */
	u8 pad;
};

/* The key of flows (connection tracking; value: when the flow was last seen, ns). */
struct flow_key {
	u32 saddr; /* network byte order */
	u32 daddr; /* network byte order */
	u16 sport; /* host byte order; for ICMP both are the echo id */
	u16 dport;
	u8 proto;
	u8 side; /* DIR_INGRESS (of daddr) or DIR_EGRESS (of saddr) */
	u8 pad[2];
};

/* The key of policy_drops (value: packets refused). */
struct drop_key {
	u32 pod; /* network byte order */
	u32 dir; /* DIR_INGRESS, DIR_EGRESS or DIR_CLOSED (pod is then the closed address) */
};

/* One verdict for podnetd, a record of the ring buffer policy_events: every refused
 * packet, and, while config[CONFIG_EVENTS_ALLOWED] is on, every newly admitted flow. */
struct policy_event {
	u32 pod;  /* network byte order */
	u32 peer; /* network byte order */
	u16 sport; /* host byte order */
	u16 dport;
	u8 proto;
	u8 dir;     /* DIR_* */
	u8 verdict; /* VERDICT_* */
	u8 pad;
};

/* ---- policy.c over IPv6: the same tables for pods' IPv6 addresses ---- */

/* An IPv6 address, network byte order: the address part of the IPv6 tables' keys. */
struct in6 {
	u8 a[16];
};

/* The key of ingress_peers6 and egress_peers6 (LPM tries; value: port set id in
 * port_sets, shared with IPv4, 0 for every protocol and port). */
struct peer6_key {
	u32 prefixlen; /* 128 + peer prefix length */
	struct in6 pod;
	struct in6 peer;
};

/* The key of flows6 (value: when the flow was last seen, ns). */
struct flow6_key {
	struct in6 saddr;
	struct in6 daddr;
	u16 sport; /* host byte order; for ICMPv6 both are the echo id */
	u16 dport;
	u8 proto;
	u8 side; /* DIR_INGRESS (of daddr) or DIR_EGRESS (of saddr) */
	u8 pad[2];
};

/* The key of policy_drops6 (value: packets refused). */
struct drop6_key {
	struct in6 pod;
	u32 dir; /* DIR_INGRESS, DIR_EGRESS or DIR_CLOSED (pod is then the closed address) */
};

/* A verdict on an IPv6 packet, a record of the same ring buffer policy_events as
 * struct policy_event: the reader tells the two apart by their sizes. */
struct policy_event6 {
	struct in6 pod;
	struct in6 peer;
	u16 sport; /* host byte order */
	u16 dport;
	u8 proto;
	u8 dir;     /* DIR_* */
	u8 verdict; /* VERDICT_* */
	u8 pad;
};

/* A local_pods value (keyed by the pod's address, network order; local_pods6: by a
 * dual-stack pod's IPv6 address): a pod of this node for the fast path: its host veth,
 * its MAC, and the gateway's MAC (the source of what the node routes to it). */
struct local_pod {
	u32 ifindex;
	u8 mac[6];
	u8 gw_mac[6];
};

/* overlay_self's one value: this node's VXLAN device as the fast path writes its
 * encapsulation; vxlan_ifindex 0: encapsulation off. */
struct overlay_self {
	u32 vxlan_ifindex;
	u32 local; /* underlay address, network order */
	u32 vni;
	u16 port; /* UDP port, network order */
	u16 pad;
	u8 local6[16]; /* over an IPv6 underlay: the device's IPv6 address */
	u32 ipv6;      /* 1: tunnels between IPv6 addresses (local6, overlay_peers6) */
};

/* The key of overlay_peers: a peer's VTEP MAC (value: its underlay address, network
 * order); of overlay_peers6 too (value: its underlay IPv6 address, struct in6). */
struct vtep_key {
	u8 mac[6];
	u16 pad;
};

/* ---- underlay.c: the underlay guard and the nftables backstop ---- */

/* A podnet_ulpeers value (keyed by the peer's underlay address, network order) or a
 * podnet_ulpeers6 one (keyed by its underlay IPv6 address, over an IPv6 underlay):
 * the sources the peer's VXLAN frames may carry. */
struct ul_peer {
	u32 net;      /* host order */
	u32 mask;     /* host order */
	u8 net6[16];  /* a dual-stack peer's IPv6 pod CIDR */
	u8 prefix6;   /* its prefix length; 0: the peer has none */
	u8 pad[3];
	u32 underlay; /* host order: its underlay IPv4 address (its node's own packets) */
};

/* The key of podnet_ulpeers6: a peer's underlay IPv6 address. */
struct ul_peer6_key {
	u8 addr[16];
};

/* podnet_ulconf's one value: what the guard binds. */
struct ul_config {
	u16 vxlan_port;     /* host order; 0: none */
	u16 wireguard_port; /* host order; 0: none */
	u32 cluster_net;    /* host order */
	u32 cluster_mask;   /* host order; 0: no source binding */
	u32 host_gw;        /* 1: pods' traffic crosses the underlay plain */
	u8 cluster6_net[16]; /* a dual-stack cluster's IPv6 range */
	u32 cluster6_prefix; /* its prefix length; 0: no IPv6 source binding */
	u32 underlay6;       /* 1: peers' tunnels end at their underlay IPv6 addresses */
};

/* The key of podnet_ulcidrs (LPM trie, host-gw): which peer a pod source belongs to. */
struct ul_cidr_key {
	u32 prefixlen;
	u32 addr; /* network order */
};

/* The key of podnet_ulcidrs6 (LPM trie, host-gw on a dual-stack cluster): which peer
 * an IPv6 pod source belongs to. Values are struct ul_cidr, as for IPv4. */
struct ul_cidr6_key {
	u32 prefixlen;
	u8 addr[16];
};

/* A podnet_ulcidrs value: the underlay MAC of the peer owning a pod CIDR. */
struct ul_cidr {
	u8 mac[6]; /* all zero: not known yet (its neighbour unresolved): any */
	u8 local;  /* 1: this node's own pod CIDR: never from the underlay */
	u8 pad;
};

/* The mark nftables' forward chain sets on every packet it passes to a pod; nft_backstop
 * drops forwarded packets to pods without it. */
#define PODNET_NFT_MARK ((u32)0x00200000)

/* Service traffic on the eBPF policy datapath. kube-proxy translates a Service address
 * after the pod's veth, so from_pod_policy cannot judge such a packet's egress: it marks
 * it (PODNET_SVC_MARK, with the source pod's offset in the node's pod CIDR in the top
 * ten bits, PODNET_SVC_POD_SHIFT) and the first tc egress hook after the translation judges
 * it: the destination pod's veth (to_pod_policy), the overlay device or the underlay
 * device (after_translation). The offset names the pod even once the node has
 * masqueraded the packet. kube-proxy's own marks (0x4000, 0x8000) are left alone. */
#define PODNET_SVC_MARK ((u32)0x00100000)
#define PODNET_SVC_POD_SHIFT ((u32)22)

/* svc_config's one value (addresses and masks in network order); service_mask 0: no
 * Service range known, nothing is deferred; node_mask 0: the node's pod CIDR is wider
 * than a /22 and its offsets do not fit the mark. The cluster CIDR bounds the fast
 * path: a packet to anything outside it takes the node's stack (masquerade, conntrack);
 * cluster_mask 0: not known yet, nothing leaves by the fast path. The cluster's IPv6
 * range bounds it likewise for IPv6 (cluster6_prefix 0: none, no IPv6 leaves by it). */
struct svc_config {
	u32 service_net;
	u32 service_mask;
	u32 node_net;
	u32 node_mask;
	u32 cluster_net;
	u32 cluster_mask;
	struct in6 cluster6_net;
	u32 cluster6_prefix;
};

/* svc_config6's one value (a dual-stack cluster): the IPv6 Service range and the
 * node's IPv6 pod CIDR, whose pods' offsets go in PODNET_SVC_MARK's pod bits as
 * svc_config's node range does for IPv4. */
struct svc_config6 {
	struct in6 service_net;
	u32 service_prefix; /* 0: no IPv6 Service range */
	struct in6 node_net;
	u32 node_prefix;    /* 0: offsets not marked */
};

#endif
