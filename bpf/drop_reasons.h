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
	X(8, IPV6_SRC,  "ipv6-src",  "IPv6 whose source is not the pod's link-local address (or :: for DAD and MLD)") \
	X(9, IPV6_NA,   "ipv6-na",   "neighbour advertisements for an address or MAC that is not the pod's")

/* How many reasons there are: counted from the table, never kept by hand. */
#define PODNET_DROP_ONE(num, name, id, what) +1
#define PODNET_DROP_MAX (0 PODNET_DROP_REASONS(PODNET_DROP_ONE))
