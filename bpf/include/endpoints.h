/* Local endpoints: pods on this node, keyed by address, and how to reach them. */
#ifndef SLUICE_ENDPOINTS_H
#define SLUICE_ENDPOINTS_H

#include "common.h"

#define ETH_ALEN 6

enum endpoint_flags {
	ENDPOINT_F_POD = 1 << 0,
};

struct endpoint_info {
	__u32 ifindex;  /* host-side veth; its peer is the pod's interface */
	__u32 flags;    /* enum endpoint_flags */
	__u32 identity; /* policy identity of the pod's label set */
	__u32 pad;
	__u8 mac[ETH_ALEN];      /* the pod interface's MAC */
	__u8 host_mac[ETH_ALEN]; /* the host veth's MAC: the pod's gateway */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, union sl_addr);
	__type(value, struct endpoint_info);
	__uint(max_entries, 65536);
} endpoints SEC(".maps");

static __always_inline struct endpoint_info *endpoint_lookup(union sl_addr *addr)
{
	return bpf_map_lookup_elem(&endpoints, addr);
}

#endif
