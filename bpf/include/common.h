/* Shared basics for every Sluice datapath object. */
#ifndef SLUICE_COMMON_H
#define SLUICE_COMMON_H

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

/* UAPI macros that vmlinux.h cannot carry. */
#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define ETH_HLEN 14

#define TC_ACT_OK 0
#define TC_ACT_SHOT 2
#define IPPROTO_ICMPV6 58

#ifndef __always_inline
#define __always_inline inline __attribute__((always_inline))
static __always_inline bool sl_addr_eq(const union sl_addr *a, const union sl_addr *b)
{
	return a->w[0] == b->w[0] && a->w[1] == b->w[1] && a->w[2] == b->w[2] &&
	       a->w[3] == b->w[3];
}

#endif

/* Addresses are stored as 16 bytes in every map; IPv4 is IPv4-mapped
 * (::ffff:a.b.c.d) so one key layout and one LPM trie serve both families. */
union sl_addr {
	__u8 b[16];
	__be32 w[4];
};

#define SL_V4_MAPPED_PREFIX 96

/* The key of every LPM trie over addresses (prefilter CIDRs, routes, ipcache). */
struct sl_lpm_key {
	__u32 prefixlen; /* over addr; IPv4 entries add SL_V4_MAPPED_PREFIX */
	union sl_addr addr;
};

static __always_inline void sl_addr_from_v4(union sl_addr *a, __be32 v4)
{
	a->w[0] = 0;
	a->w[1] = 0;
	a->w[2] = bpf_htonl(0x0000ffff);
	a->w[3] = v4;
}

static __always_inline bool sl_addr_eq(const union sl_addr *a, const union sl_addr *b)
{
	return a->w[0] == b->w[0] && a->w[1] == b->w[1] && a->w[2] == b->w[2] &&
	       a->w[3] == b->w[3];
}

/* bpf_ktime_get_ns() costs as much as a map lookup: a packet reads the clock once, the
 * first time a flow table needs it, and every table it touches shares that time.
 * CLOCK: the packet's cache, 0 until read. */
static __always_inline __u64 sl_now(__u64 *clock)
{
	if (!*clock)
		*clock = bpf_ktime_get_ns();
	return *clock;
}

#endif
