// SPDX-License-Identifier: Apache-2.0
/*
 * underlay_guard: what the node's underlay device lets reach the kernel's VXLAN and
 * WireGuard sockets (tc ingress, direct action, before everything else podnet puts
 * there).
 *
 * The node decapsulates every VXLAN datagram that reaches its VXLAN port and forwards
 * the inner packet as if the peer that sent it had routed it: anti-spoofing never sees
 * that inner packet, and NetworkPolicy judges its source as given. So a datagram to the
 * VXLAN port passes only if it comes from a peer node's underlay address, and its inner
 * frame is IPv4 (or ARP) whose source is one of that peer's addresses: its pod CIDR or
 * its underlay address — or, from a dual-stack peer, IPv6 whose source is in its IPv6
 * pod CIDR. A forged frame cannot claim a local pod, the node itself (whose
 * addresses some datapaths always admit) or another node's pods. Datagrams to the
 * WireGuard port pass only from a peer's underlay address (WireGuard authenticates
 * what they carry, and routes by key: this keeps handshakes from strangers off the
 * device).
 *
 * Plain (unencapsulated) IPv4 whose source is a pod address is bound too: with an
 * overlay it never comes from the wire (a host forging a pod source is refused); with
 * host-gw it must come from the MAC of the peer whose pod CIDR holds the source, never
 * claim this node's own pods (podnet_ulcidrs: pod CIDR -> the owner's underlay MAC, as
 * the node's neighbour table holds it; unknown while unresolved). Plain IPv6 whose
 * source is in a dual-stack cluster's IPv6 range is bound the same way: with an
 * overlay it never comes from the wire (pods' IPv6 crosses inside it); with host-gw
 * only from the MAC of the peer owning that IPv6 pod CIDR (podnet_ulcidrs6), never
 * claiming this node's own. A host on an underlay that carries IPv6 cannot forge a
 * pod's IPv6 address to this node's pods.
 *
 * Over an IPv4 underlay, IPv6 to either port is refused from everyone (peers speak
 * IPv4 there; the WireGuard socket takes both families). Over an IPv6 underlay
 * (--underlay-family ipv6) the same rules hold with the peers' underlay IPv6
 * addresses (podnet_ulpeers6), and IPv4 to the ports is refused from everyone. IPv6
 * whose extension headers are too many to find its port behind is refused.
 *
 * Pods never reach these ports at all: from_pod.c drops a pod's UDP to them unless it
 * goes to another pod. What this cannot stop: a host on the underlay network that
 * forges a peer's underlay address (the underlay is trusted by VXLAN and host-gw; use
 * the WireGuard backend where it is not).
 *
 * Maps (no pins: podnetd loads them anew at start, fills them, then swaps its filter
 * in atomically; the filter holds them while podnetd is down):
 * - podnet_ulpeers: peer underlay address (network order) -> its pod CIDR (and IPv6
 *   pod CIDR); podnet_ulpeers6: the same keyed by its underlay IPv6 address, filled
 *   instead over an IPv6 underlay.
 * - podnet_ulcidrs / podnet_ulcidrs6 (host-gw): pod CIDR of either family -> the
 *   owning peer's underlay MAC, or this node's own.
 * - podnet_ulconf: the ports guarded (host order; 0: none).
 * - podnet_uldrops: packets dropped, one counter per reason in drop_reasons.h
 *   (PODNET_UNDERLAY_DROPS).
 *
 * Passing packets go on to the next filter (TC_ACT_UNSPEC): the fast path's
 * from_underlay when it runs.
 */
#include "abi.h"
#include "drop_reasons.h"
#include "helpers.h"

enum {
#define U(num, name, id, what) UL_DROP_##name = num,
	PODNET_UNDERLAY_DROPS(U)
#undef U
};

/* The maps' key and value structs (ul_peer, ul_config, ul_cidr_key, ul_cidr) are in
 * abi.h, shared with crates/agent/src/guard.rs. */

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, u32);
	__type(value, struct ul_peer);
	__uint(max_entries, 16384);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} podnet_ulpeers SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct ul_peer6_key);
	__type(value, struct ul_peer);
	__uint(max_entries, 16384);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} podnet_ulpeers6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, u32);
	__type(value, struct ul_config);
	__uint(max_entries, 1);
} podnet_ulconf SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct ul_cidr_key);
	__type(value, struct ul_cidr);
	__uint(max_entries, 16384);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} podnet_ulcidrs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct ul_cidr6_key);
	__type(value, struct ul_cidr);
	__uint(max_entries, 16384);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} podnet_ulcidrs6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, u32);
	__type(value, u64);
	__uint(max_entries, PODNET_UNDERLAY_DROP_MAX);
} podnet_uldrops SEC(".maps");

/* Whether IPv6 address `a` lies in `net`/`prefix` (prefix 0..128). */
INLINE int in_range6(const u8 *a, const u8 *net, u32 prefix)
{
#pragma unroll
	for (int i = 0; i < 16; i++) {
		u32 bits = prefix > (u32)(8 * i) ? prefix - 8 * i : 0;
		u8 m = bits >= 8 ? 0xff : (u8)(0xff00 >> bits);
		if ((a[i] ^ net[i]) & m)
			return 0;
	}
	return 1;
}

/* host-gw: whether a plain packet with a pod source whose owner entry is `o` (NULL:
 * no peer's) may come from the Ethernet source in `h` (the frame's first bytes): not
 * a local pod's, and from the owner's MAC when the neighbour table knows it. */
INLINE int from_owner(const struct ul_cidr *o, const u8 *h)
{
	if (!o || o->local)
		return 0;
	if (!(o->mac[0] | o->mac[1] | o->mac[2] | o->mac[3] | o->mac[4] | o->mac[5]))
		return 1;
	return o->mac[0] == h[6] && o->mac[1] == h[7] && o->mac[2] == h[8] && o->mac[3] == h[9] &&
	       o->mac[4] == h[10] && o->mac[5] == h[11];
}

INLINE int refuse(u32 reason)
{
	u64 *n = bpf_map_lookup_elem(&podnet_uldrops, &reason);
	if (n)
		__sync_fetch_and_add(n, 1);
	return TC_ACT_SHOT;
}

/* A VXLAN datagram from peer `p` whose VXLAN header starts at `off`: its inner frame
 * must be IPv4 (or ARP) from the peer's pod CIDR or its underlay IPv4 address, or
 * IPv6 from its IPv6 pod CIDR. */
INLINE int vxlan_inner(struct __sk_buff *skb, u32 off, const struct ul_peer *p)
{
	/* VXLAN header 8, inner Ethernet 14, then IPv4's source (at 12) or ARP's sender
	 * address (at 14): 20 bytes of either; IPv6's source is at 8, 16 bytes. */
	u8 in[8 + 14 + 24];
	if (bpf_skb_load_bytes(skb, off, in, 8 + 14 + 20))
		return refuse(UL_DROP_VXLAN_FRAME);
	u8 *e = in + 8;
	u32 src;
	if (e[12] == 0x08 && e[13] == 0x00)
		src = be32(e + 14 + 12);
	else if (e[12] == 0x08 && e[13] == 0x06)
		src = be32(e + 14 + 14);
	else if (e[12] == 0x86 && e[13] == 0xdd) {
		if (bpf_skb_load_bytes(skb, off, in, sizeof(in)))
			return refuse(UL_DROP_VXLAN_FRAME);
		if (!p->prefix6 || p->prefix6 > 128)
			return refuse(UL_DROP_VXLAN_INNER);
		const u8 *s6 = e + 14 + 8;
		if (!in_range6(s6, p->net6, p->prefix6))
			return refuse(UL_DROP_VXLAN_INNER);
		return TC_ACT_UNSPEC;
	} else
		return refuse(UL_DROP_VXLAN_FRAME);
	if ((src & p->mask) == p->net || src == p->underlay)
		return TC_ACT_UNSPEC;
	return refuse(UL_DROP_VXLAN_INNER);
}

/* UDP over IPv6 to an overlay port: over an IPv4 underlay no peer sends it (and the
 * WireGuard device's socket, bound to both families, would take anyone's), so it is
 * from a stranger whatever its source; over an IPv6 underlay it passes from a peer's
 * underlay IPv6 address (podnet_ulpeers6), VXLAN with an inner frame of that peer's.
 * The port is found behind up to four hop-by-hop, routing, destination-options or
 * fragment headers; a later fragment carries none (its first is checked; without it
 * nothing is delivered); a longer chain is refused, as it could hide the port. */
INLINE int overlay_port6(struct __sk_buff *skb, const struct ul_config *c)
{
	if (!c->vxlan_port && !c->wireguard_port)
		return TC_ACT_UNSPEC;
	u8 next;
	if (bpf_skb_load_bytes(skb, 14 + 6, &next, 1))
		return TC_ACT_UNSPEC;
	u32 off = 14 + 40;
#pragma unroll
	for (int i = 0; i < 4; i++) {
		u8 e[4];
		if (next == 44) {
			if (bpf_skb_load_bytes(skb, off, e, sizeof(e)))
				return TC_ACT_UNSPEC;
			if (((u32)e[2] << 8 | e[3]) & 0xfff8)
				return TC_ACT_UNSPEC;
			next = e[0];
			off += 8;
			continue;
		}
		if (next != 0 && next != 43 && next != 60)
			break;
		if (bpf_skb_load_bytes(skb, off, e, 2))
			return TC_ACT_UNSPEC;
		next = e[0];
		off += ((u32)e[1] + 1) * 8;
	}
	if (next == 0 || next == 43 || next == 60 || next == 44)
		return refuse(UL_DROP_IPV6_CHAIN);
	u8 udp[4];
	if (next != IPPROTO_UDP || bpf_skb_load_bytes(skb, off, udp, sizeof(udp)))
		return TC_ACT_UNSPEC;
	u16 dport = (u16)udp[2] << 8 | udp[3];
	int vxlan = c->vxlan_port && dport == c->vxlan_port;
	int wireguard = c->wireguard_port && dport == c->wireguard_port;
	if (!vxlan && !wireguard)
		return TC_ACT_UNSPEC;
	struct ul_peer6_key k;
	if (bpf_skb_load_bytes(skb, 14 + 8, k.addr, sizeof(k.addr)))
		return TC_ACT_UNSPEC;
	struct ul_peer *p = c->underlay6 ? bpf_map_lookup_elem(&podnet_ulpeers6, &k) : 0;
	if (!p)
		return refuse(vxlan ? UL_DROP_VXLAN_SRC : UL_DROP_WIREGUARD_SRC);
	if (!vxlan)
		return TC_ACT_UNSPEC;
	return vxlan_inner(skb, off + 8, p);
}

SEC("classifier/underlay_guard") int underlay_guard(struct __sk_buff *skb)
{
	u32 zero = 0;
	struct ul_config *c = bpf_map_lookup_elem(&podnet_ulconf, &zero);
	if (!c)
		return TC_ACT_UNSPEC;
	/* Ethernet and the fixed IPv4 header. */
	u8 h[34];
	if (bpf_skb_load_bytes(skb, 0, h, sizeof(h)))
		return TC_ACT_UNSPEC;
	u8 *ip = h + 14;
	if (h[12] == 0x86 && h[13] == 0xdd) {
		/* Plain IPv6 with a source in the cluster's IPv6 range: with an overlay a
		 * forgery; with host-gw only from the owning peer's MAC. */
		u32 prefix = c->cluster6_prefix;
		struct ul_cidr6_key k6 = {.prefixlen = 128};
		if (bpf_skb_load_bytes(skb, 14 + 8, k6.addr, sizeof(k6.addr)))
			return TC_ACT_UNSPEC;
		if (prefix && prefix <= 128 && in_range6(k6.addr, c->cluster6_net, prefix)) {
			if (c->host_gw && from_owner(bpf_map_lookup_elem(&podnet_ulcidrs6, &k6), h))
				return TC_ACT_UNSPEC;
			return refuse(UL_DROP_POD_SRC);
		}
		return overlay_port6(skb, c);
	}
	if (h[12] != 0x08 || h[13] != 0x00 || (ip[0] >> 4) != 4)
		return TC_ACT_UNSPEC;
	/* A pod source, plain on the wire: with an overlay never (pods' traffic crosses
	 * encapsulated); with host-gw only from the MAC of the peer owning that source. */
	u32 outer_src = be32(ip + 12);
	if (c->cluster_mask && (outer_src & c->cluster_mask) == c->cluster_net) {
		if (!c->host_gw)
			return refuse(UL_DROP_POD_SRC);
		struct ul_cidr_key ck = {.prefixlen = 32, .addr = raw32(ip + 12)};
		if (!from_owner(bpf_map_lookup_elem(&podnet_ulcidrs, &ck), h))
			return refuse(UL_DROP_POD_SRC);
		return TC_ACT_UNSPEC;
	}
	if (ip[9] != IPPROTO_UDP || (!c->vxlan_port && !c->wireguard_port))
		return TC_ACT_UNSPEC;
	/* A later fragment carries no port; the kernel's reassembly needs the first. */
	if (((u32)ip[6] << 8 | ip[7]) & 0x1fff)
		return TC_ACT_UNSPEC;
	u32 ihl = (u32)(ip[0] & 0x0f) * 4;
	if (ihl < 20)
		return TC_ACT_UNSPEC;
	u8 udp[8];
	if (bpf_skb_load_bytes(skb, 14 + ihl, udp, sizeof(udp)))
		return TC_ACT_UNSPEC;
	u16 dport = (u16)udp[2] << 8 | udp[3];
	int vxlan = c->vxlan_port && dport == c->vxlan_port;
	int wireguard = c->wireguard_port && dport == c->wireguard_port;
	if (!vxlan && !wireguard)
		return TC_ACT_UNSPEC;
	u32 from = raw32(ip + 12);
	struct ul_peer *p = c->underlay6 ? 0 : bpf_map_lookup_elem(&podnet_ulpeers, &from);
	if (!p)
		return refuse(vxlan ? UL_DROP_VXLAN_SRC : UL_DROP_WIREGUARD_SRC);
	if (!vxlan)
		return TC_ACT_UNSPEC;
	return vxlan_inner(skb, 14 + ihl + 8, p);
}

/*
 * nft_backstop: on the egress of every pod's host veth with the nftables policy
 * datapath (priority 2, after nothing else podnet puts there). nftables' forward chain
 * marks every packet it sees on its way to a pod (PODNET_NFT_MARK); a forwarded or
 * bridged IP packet reaching a pod without the mark did not pass podnet's table: the
 * table was flushed (a firewall reload) or bridge-nf-call-iptables was switched off.
 * Such packets are dropped until the agent puts things back, so that a pod never opens
 * meanwhile: the table failing closed. The node's own packets (kubelet probes) never
 * cross the forward hook and carry no ingress interface: they pass. ARP and IPv6
 * neighbour discovery pass; nftables never sees them either.
 */
/* PODNET_NFT_MARK: abi.h. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, u32);
	__type(value, u64);
	__uint(max_entries, 1);
} podnet_backstop SEC(".maps");

SEC("classifier/nft_backstop") int nft_backstop(struct __sk_buff *skb)
{
	if (!skb->ingress_ifindex || (skb->mark & PODNET_NFT_MARK))
		return TC_ACT_UNSPEC;
	u8 h[14 + 40 + 1];
	if (bpf_skb_load_bytes(skb, 0, h, 14))
		return TC_ACT_UNSPEC;
	if (h[12] == 0x86 && h[13] == 0xdd) {
		/* Neighbour discovery (ICMPv6 133-136, no extension headers) passes. */
		if (!bpf_skb_load_bytes(skb, 0, h, sizeof(h)) && h[14 + 6] == IPPROTO_ICMPV6 && h[54] >= 133 &&
		    h[54] <= 136)
			return TC_ACT_UNSPEC;
	} else if (h[12] != 0x08 || h[13] != 0x00) {
		return TC_ACT_UNSPEC;
	}
	u32 zero = 0;
	u64 *n = bpf_map_lookup_elem(&podnet_backstop, &zero);
	if (n)
		__sync_fetch_and_add(n, 1);
	return TC_ACT_SHOT;
}

char _license[] SEC("license") = "Dual BSD/GPL";
