/* Routing: the node-wide LPM table of pod CIDRs and the delivery decisions. */
#ifndef SLUICE_ROUTING_H
#define SLUICE_ROUTING_H

#include "common.h"
#include "parse.h"
#include "endpoints.h"

#define TC_ACT_REDIRECT 7
#define AF_INET 2
#define AF_INET6 10

enum route_kind {
	ROUTE_LOCAL_PODS = 1,  /* this node's pod CIDR: only known endpoints are reachable */
	ROUTE_REMOTE_TUNNEL = 2, /* another node's pod CIDR, reached through the VXLAN device */
	ROUTE_REMOTE_NATIVE = 3, /* another node's pod CIDR, reached by the host's FIB on the underlay */
};

struct route_entry {
	__u32 kind;    /* enum route_kind */
	__u32 ifindex; /* tunnel device (ROUTE_REMOTE_TUNNEL) */
	union sl_addr next_hop; /* the remote node's underlay address */
	__u64 hits;    /* packets routed by this entry */
};

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct sl_lpm_key);
	__type(value, struct route_entry);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 16384);
} routes SEC(".maps");

/* Set at load: the VXLAN network identifier of the overlay. */
const volatile __u32 tunnel_vni = 1;

enum deliver_result {
	DELIVER_PASS = 0,    /* not ours: let the host stack have it */
	DELIVER_REDIRECT = 1,
	DELIVER_DROP = 2,
};

static __always_inline int set_macs(struct __sk_buff *skb, const __u8 *dst, const __u8 *src)
{
	if (bpf_skb_store_bytes(skb, 0, dst, ETH_ALEN, 0) < 0)
		return -1;
	return bpf_skb_store_bytes(skb, ETH_ALEN, src, ETH_ALEN, 0);
}

/* Where the program runs: redirect_peer exists only on tc ingress. */
enum hook_side {
	HOOK_INGRESS = 0,
	HOOK_EGRESS = 1,
};

/* A local pod: rewrite L2 for its interface and hand the packet over directly, skipping
 * the host's routing and netfilter. From ingress it goes straight to the pod namespace's
 * ingress; from egress (host-originated) it is transmitted on the pod's host veth. */
static __always_inline int deliver_local(struct __sk_buff *skb, struct endpoint_info *ep,
					 enum hook_side side)
{
	if (set_macs(skb, ep->mac, ep->host_mac) < 0)
		return TC_ACT_SHOT;
	if (side == HOOK_EGRESS)
		return bpf_redirect(ep->ifindex, 0);
	return bpf_redirect_peer(ep->ifindex, 0);
}

static __always_inline int deliver_tunnel(struct __sk_buff *skb, struct route_entry *route)
{
	struct bpf_tunnel_key key = { .tunnel_id = tunnel_vni, .tunnel_ttl = 64 };
	__u64 flags = 0;

	if (route->next_hop.w[0] == 0 && route->next_hop.w[1] == 0 &&
	    route->next_hop.w[2] == bpf_htonl(0x0000ffff)) {
		key.remote_ipv4 = bpf_ntohl(route->next_hop.w[3]);
	} else {
		__builtin_memcpy(key.remote_ipv6, route->next_hop.w, 16);
		flags = BPF_F_TUNINFO_IPV6;
	}
	if (bpf_skb_set_tunnel_key(skb, &key, sizeof(key), flags) < 0)
		return TC_ACT_SHOT;
	return bpf_redirect(route->ifindex, 0);
}

static __always_inline int deliver_native(struct __sk_buff *skb, struct sl_packet *pkt)
{
	/* Host-originated packets have no ingress device: look up from the one they left by. */
	struct bpf_fib_lookup fib = { .ifindex = skb->ingress_ifindex ?: skb->ifindex };
	struct bpf_redir_neigh nh = {};
	int ret;

	if (pkt->family == 4) {
		fib.family = AF_INET;
		fib.ipv4_src = pkt->saddr.w[3];
		fib.ipv4_dst = pkt->daddr.w[3];
	} else {
		fib.family = AF_INET6;
		__builtin_memcpy(fib.ipv6_src, pkt->saddr.w, 16);
		__builtin_memcpy(fib.ipv6_dst, pkt->daddr.w, 16);
	}
	/* A forwarding lookup from the pod's veth: needs forwarding on in the node. */
	ret = bpf_fib_lookup(skb, &fib, sizeof(fib), BPF_FIB_LOOKUP_SKIP_NEIGH);
	if (ret != BPF_FIB_LKUP_RET_SUCCESS)
		return TC_ACT_SHOT;
	if (pkt->family == 4) {
		nh.nh_family = AF_INET;
		nh.ipv4_nh = fib.ipv4_dst;
	} else {
		nh.nh_family = AF_INET6;
		__builtin_memcpy(nh.ipv6_nh, fib.ipv6_dst, 16);
	}
	return bpf_redirect_neigh(fib.ifindex, &nh, sizeof(nh), 0);
}

/* Where does a packet for pkt->daddr go? Local pods first, then the route table. */
static __always_inline int route_and_deliver(struct __sk_buff *skb, struct sl_packet *pkt,
					     enum hook_side side)
{
	struct sl_lpm_key key = { .prefixlen = 128, .addr = pkt->daddr };
	struct endpoint_info *ep = endpoint_lookup(&pkt->daddr);
	struct route_entry *route;

	if (ep)
		return deliver_local(skb, ep, side);

	route = bpf_map_lookup_elem(&routes, &key);
	if (!route)
		return TC_ACT_OK;
	__sync_fetch_and_add(&route->hits, 1);

	switch (route->kind) {
	case ROUTE_REMOTE_TUNNEL:
		return deliver_tunnel(skb, route);
	case ROUTE_REMOTE_NATIVE:
		return deliver_native(skb, pkt);
	case ROUTE_LOCAL_PODS:
	default:
		/* A pod address we have no endpoint for: nobody is there. */
		return TC_ACT_SHOT;
	}
}

#endif
