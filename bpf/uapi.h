/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The few kernel UAPI definitions podnet's tc programs need, so that building them
 * needs only clang (no kernel headers): fixed-width types, struct __sk_buff, tc
 * verdicts, the BTF map-definition macros and map types, and the arguments of the
 * helpers bpf_fib_lookup and bpf_skb_adjust_room. Helper prototypes and protocol
 * numbers are in helpers.h; what podnet shares with its Rust side is in abi.h.
 */
#ifndef PODNET_UAPI_H
#define PODNET_UAPI_H

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef int s32;
typedef unsigned long long u64;

/* struct __sk_buff, up to data_end (stable layout). */
struct __sk_buff {
	u32 len, pkt_type, mark, queue_mapping, protocol, vlan_present, vlan_tci, vlan_proto;
	u32 priority, ingress_ifindex, ifindex, tc_index, cb[5], hash, tc_classid;
	u32 data, data_end;
};

/* tc verdicts. TC_ACT_OK accepts and ends the filter chain; TC_ACT_UNSPEC passes the
 * frame on to the next filter (and, after the last, on as with TC_ACT_OK). */
#define TC_ACT_UNSPEC (-1)
#define TC_ACT_OK 0
#define TC_ACT_SHOT 2
#define TC_ACT_REDIRECT 7

/* Map declarations in BTF form (section ".maps"), as aya and libbpf read them: the
 * object must be built with -g so that clang emits the BTF describing them. */
#define SEC(name) __attribute__((section(name), used))
#define __uint(name, val) int(*name)[val]
#define __type(name, val) typeof(val) *name
/* A ring buffer names the record it carries with `__type(record, struct ...)`: the
 * kernel's ring buffer has no value type, and aya skips a field it does not know, so
 * the field only puts the struct into the object's BTF (where
 * crates/bpf-abi/tests/layout.rs checks it against the Rust side). libbpf, in its
 * default strict mode, would refuse the field: podnet loads its objects with aya only. */

#define BPF_MAP_TYPE_HASH 1
#define BPF_MAP_TYPE_ARRAY 2
#define BPF_MAP_TYPE_LRU_HASH 9
#define BPF_MAP_TYPE_LPM_TRIE 11
#define BPF_MAP_TYPE_RINGBUF 27
#define BPF_F_NO_PREALLOC 1
#define PIN_BY_NAME 1

/* bpf_skb_adjust_room: mode and flags. */
#define BPF_ADJ_ROOM_MAC 1
#define BPF_F_ADJ_ROOM_FIXED_GSO 1
#define BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 2
#define BPF_F_ADJ_ROOM_ENCAP_L3_IPV6 4
#define BPF_F_ADJ_ROOM_ENCAP_L4_UDP 16
#define BPF_F_ADJ_ROOM_ENCAP_L2_ETH 64
#define BPF_F_ADJ_ROOM_ENCAP_L2(len) (((u64)(len) & 0xff) << 56)
#define BPF_F_ADJ_ROOM_DECAP_L3_IPV4 128 /* what is left after the shrink is IPv4 */
#define BPF_F_ADJ_ROOM_DECAP_L3_IPV6 256 /* what is left after the shrink is IPv6 */

/* struct bpf_fib_lookup (UAPI): the IPv4 or IPv6 fields by `family`. */
struct fib_lookup {
	u8 family, l4_protocol;
	u16 sport, dport;
	u16 tot_len;
	u32 ifindex;
	u32 tos; /* IPv6: the flow information */
	union {
		u32 ipv4_src;
		u8 ipv6_src[16];
	};
	union {
		u32 ipv4_dst;
		u8 ipv6_dst[16];
	};
	u16 vlan_proto, vlan_tci;
	u8 smac[6], dmac[6];
};

#define AF_INET 2
#define AF_INET6 10

#define BPF_FIB_LKUP_RET_SUCCESS 0

#endif
