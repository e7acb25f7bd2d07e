/* SPDX-License-Identifier: Apache-2.0 */
/*
 * What every podnet eBPF program shares that is not part of the Rust ABI: the BPF
 * helper prototypes (each once, under its kernel name, numbered as in the kernel's
 * enum bpf_func_id), INLINE, the protocol numbers the programs compare with, and small
 * byte readers. The kernel definitions are in uapi.h; structs and constants shared with
 * the Rust side are in abi.h.
 */
#ifndef PODNET_HELPERS_H
#define PODNET_HELPERS_H

#include "uapi.h"

/* Every function of podnet's programs is inlined into the program that uses it
 * (inline: one a program does not use costs nothing, not even a warning). */
#define INLINE static inline __attribute__((always_inline))

/* Helpers: only those used are referenced, the rest costs nothing. */
static void *(*bpf_map_lookup_elem)(void *map, const void *key) = (void *)1;
static long (*bpf_map_update_elem)(void *map, const void *key, const void *value, u64 flags) = (void *)2;
static u64 (*bpf_ktime_get_ns)(void) = (void *)5;
static long (*bpf_skb_store_bytes)(struct __sk_buff *skb, u32 offset, const void *from, u32 len, u64 flags) = (void *)9;
static long (*bpf_l3_csum_replace)(struct __sk_buff *skb, u32 offset, u64 from, u64 to, u64 size) = (void *)10;
static long (*bpf_redirect)(u32 ifindex, u64 flags) = (void *)23;
static long (*bpf_skb_load_bytes)(const struct __sk_buff *skb, u32 offset, void *to, u32 len) = (void *)26;
static u32 (*bpf_get_hash_recalc)(struct __sk_buff *skb) = (void *)34;
static long (*bpf_skb_adjust_room)(struct __sk_buff *skb, s32 len_diff, u32 mode, u64 flags) = (void *)50;
static long (*bpf_fib_lookup)(struct __sk_buff *skb, struct fib_lookup *params, int plen, u32 flags) = (void *)69;
static long (*bpf_ringbuf_output)(void *ringbuf, void *data, u64 size, u64 flags) = (void *)130;
static long (*bpf_redirect_peer)(u32 ifindex, u64 flags) = (void *)155;

/* EtherTypes (host order) and IP protocol numbers. */
#define ETH_P_IP 0x0800
#define ETH_P_ARP 0x0806
#define ETH_P_IPV6 0x86DD
#define IPPROTO_ICMP 1
#define IPPROTO_TCP 6
#define IPPROTO_UDP 17
#define IPPROTO_ICMPV6 58
#define IPPROTO_SCTP 132

/* A big-endian (network order) field as a number. */
INLINE u16 be16(const u8 *p)
{
	return (u16)p[0] << 8 | p[1];
}

INLINE u32 be32(const u8 *p)
{
	return (u32)p[0] << 24 | (u32)p[1] << 16 | (u32)p[2] << 8 | (u32)p[3];
}

/* Four bytes as they lie (an address kept in network order, as the maps hold it). */
INLINE u32 raw32(const u8 *p)
{
	return (u32)p[0] | (u32)p[1] << 8 | (u32)p[2] << 16 | (u32)p[3] << 24;
}

INLINE int mac_eq(const u8 *a, const u8 *b)
{
	return a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3] && a[4] == b[4] &&
	       a[5] == b[5];
}

#endif
