/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The few kernel UAPI definitions podnet's tc programs need, so that building them
 * needs only clang (no kernel headers).
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

/* Map declarations in BTF form (section ".maps"), as aya and libbpf read them: the
 * object must be built with -g so that clang emits the BTF describing them. */
#define SEC(name) __attribute__((section(name), used))
#define __uint(name, val) int(*name)[val]
#define __type(name, val) typeof(val) *name

#define BPF_MAP_TYPE_HASH 1
#define BPF_MAP_TYPE_ARRAY 2
#define BPF_MAP_TYPE_LRU_HASH 9
#define BPF_MAP_TYPE_LPM_TRIE 11
#define BPF_MAP_TYPE_RINGBUF 27
#define BPF_F_NO_PREALLOC 1
#define PIN_BY_NAME 1

#endif
