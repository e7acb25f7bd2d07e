/* SPDX-License-Identifier: Apache-2.0 */
/*
 * podnet's drop reasons: the one table shared by the eBPF datapath and the Rust side.
 * build.rs reads the PODNET_DROP lines below to generate the Rust table; never keep a
 * second copy by hand. Numbers are stable: they index the counters in pod_state.
 *
 *          number  name            reason id        what is dropped
 */
#define PODNET_DROP_REASONS(X)                                                               \
	X(0, SRC_MAC,   "src-mac",   "frames whose Ethernet source is not the pod's MAC")      \
	X(1, ARP_SHA,   "arp-sha",   "ARP whose sender MAC is not the pod's")                  \
	X(2, ARP_SPA,   "arp-spa",   "ARP whose sender IP is not the pod's")                   \
	X(3, IP_SRC,    "ip-src",    "IPv4 whose source is not the pod's IP")                  \
	X(4, IPV6_RA,   "ipv6-ra",   "IPv6 router advertisements from a pod")                  \
	X(5, ETHERTYPE, "ethertype", "frames that are not ARP, IPv4 or IPv6, VLAN tags included") \
	X(6, MALFORMED, "malformed", "truncated headers, ARP that is not Ethernet/IPv4, IPv6 fragments or over four extension headers") \
	X(7, IPV6_REDIRECT, "ipv6-redirect", "ICMPv6 redirects from a pod")                 \
	X(8, IPV6_SRC,  "ipv6-src",  "IPv6 whose source is not one of the pod's addresses (its IPv6 address or link-local address; :: for DAD and MLD)") \
	X(9, IPV6_NA,   "ipv6-na",   "neighbour advertisements for an address or MAC that is not the pod's") \
	X(10, OVERLAY_PORT, "overlay-port", "UDP to the node's VXLAN or WireGuard port at an address that is not another pod's (encapsulated frames forged by a pod)") \
	X(11, IPV6_DAD, "ipv6-dad",  "duplicate-address detection (a solicitation from ::) for an address that is not the pod's")

/* How many reasons there are: counted from the table, never kept by hand. */
#define PODNET_DROP_ONE(num, name, id, what) +1
#define PODNET_DROP_MAX (0 PODNET_DROP_REASONS(PODNET_DROP_ONE))

/*
 * The underlay guard's drop reasons (bpf/underlay.c, per node, not per pod): what the
 * node's underlay device refuses before the kernel decapsulates or decrypts it.
 * build.rs reads the U( lines.
 *
 *          number  name            reason id            what is dropped
 */
#define PODNET_UNDERLAY_DROPS(U)                                                             \
	U(0, VXLAN_SRC,     "vxlan-src",     "VXLAN from an address that is not a peer node's underlay address, or over IPv6 (peers speak IPv4 on the underlay)") \
	U(1, VXLAN_INNER,   "vxlan-inner",   "VXLAN whose inner source is not an address of the sending peer (its pod CIDRs or its underlay address)") \
	U(2, VXLAN_FRAME,   "vxlan-frame",   "VXLAN whose inner frame is not IPv4, IPv6 or ARP, or is truncated") \
	U(3, WIREGUARD_SRC, "wireguard-src", "datagrams to the WireGuard port from an address that is not a peer node's underlay address, or over IPv6 (peers speak IPv4 on the underlay)") \
	U(4, POD_SRC,       "pod-src",       "plain IPv4 with a pod source from the underlay: with an overlay (pods' traffic is encapsulated), from a source of this node's, or (host-gw) from a MAC that is not the peer's owning that source; plain IPv6 with a source in the cluster's IPv6 range") \
	U(5, IPV6_CHAIN,    "ipv6-chain",    "IPv6 from the underlay behind more than four extension headers, on a node with an overlay port (they could hide a datagram to it)")

#define PODNET_UNDERLAY_DROP_MAX (0 PODNET_UNDERLAY_DROPS(PODNET_DROP_ONE))
