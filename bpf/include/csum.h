/* Internet checksums over small buffers on the stack (headers we build ourselves). */
#ifndef SLUICE_CSUM_H
#define SLUICE_CSUM_H

#include "common.h"

static __always_inline __u16 csum_fold(__u64 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)~sum;
}

/* LEN must be a multiple of 4 (bpf_csum_diff's rule). */
static __always_inline __u64 csum_add_buf(const void *buf, __u32 len, __u64 seed)
{
	return (__u32)bpf_csum_diff(NULL, 0, (__be32 *)buf, len, (__wsum)seed);
}

struct pseudo4 {
	__be32 saddr;
	__be32 daddr;
	__u8 zero;
	__u8 proto;
	__be16 len;
};

struct pseudo6 {
	__u8 saddr[16];
	__u8 daddr[16];
	__be32 len;
	__u8 zero[3];
	__u8 proto;
};

#endif
