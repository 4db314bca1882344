/* Routing: the node-wide LPM table of pod CIDRs and the delivery decisions. */
#ifndef SLUICE_ROUTING_H
#define SLUICE_ROUTING_H

#include "common.h"
#include "parse.h"
#include "endpoints.h"
#include "events.h"

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
	__u32 ifindex; /* the tunnel device (both remote kinds: service traffic uses it) */
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

/* Set at load: the VXLAN network identifiers of the overlay, and of service traffic
 * forwarded for an outside client (its replies must come back through this node). */
const volatile __u32 tunnel_vni = 1;
const volatile __u32 service_vni = 2;

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

static __always_inline int deliver_tunnel(struct __sk_buff *skb, __u32 ifindex,
					  const union sl_addr *next_hop, __u32 vni)
{
	struct bpf_tunnel_key key = { .tunnel_id = vni, .tunnel_ttl = 64 };
	__u64 flags = 0;

	if (next_hop->w[0] == 0 && next_hop->w[1] == 0 &&
	    next_hop->w[2] == bpf_htonl(0x0000ffff)) {
		key.remote_ipv4 = bpf_ntohl(next_hop->w[3]);
	} else {
		__builtin_memcpy(key.remote_ipv6, next_hop->w, 16);
		flags = BPF_F_TUNINFO_IPV6;
	}
	if (bpf_skb_set_tunnel_key(skb, &key, sizeof(key), flags) < 0)
		return TC_ACT_SHOT;
	return bpf_redirect(ifindex, 0);
}

/* The node a packet came from through the tunnel, when it came with VNI. */
static __always_inline bool tunnel_source(struct __sk_buff *skb, __u32 vni, union sl_addr *peer)
{
	struct bpf_tunnel_key key = {};

	if (bpf_skb_get_tunnel_key(skb, &key, sizeof(key), 0) == 0) {
		sl_addr_from_v4(peer, bpf_htonl(key.remote_ipv4));
	} else if (bpf_skb_get_tunnel_key(skb, &key, sizeof(key), BPF_F_TUNINFO_IPV6) == 0) {
		__builtin_memcpy(peer->w, key.remote_ipv6, 16);
	} else {
		return false;
	}
	return key.tunnel_id == vni;
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
	if (ret != BPF_FIB_LKUP_RET_SUCCESS) {
		pkt->drop_reason = SL_DROP_FIB;
		return TC_ACT_SHOT;
	}
	if (pkt->family == 4) {
		nh.nh_family = AF_INET;
		nh.ipv4_nh = fib.ipv4_dst;
	} else {
		nh.nh_family = AF_INET6;
		__builtin_memcpy(nh.ipv6_nh, fib.ipv6_dst, 16);
	}
	return bpf_redirect_neigh(fib.ifindex, &nh, sizeof(nh), 0);
}

static __always_inline struct route_entry *route_lookup(const union sl_addr *addr)
{
	struct sl_lpm_key key = { .prefixlen = 128, .addr = *addr };

	return bpf_map_lookup_elem(&routes, &key);
}

/* RET, with REASON recorded in PKT when RET drops the packet. */
static __always_inline int sl_dropping(struct sl_packet *pkt, int ret, __u8 reason)
{
	if (ret == TC_ACT_SHOT && !pkt->drop_reason)
		pkt->drop_reason = reason;
	return ret;
}

/* Where does a packet for pkt->daddr go? Local pods first, then the route table; an
 * address outside both is the host's business (OUTSIDE_VIA_FIB: forward it ourselves). */
static __always_inline int route_and_deliver(struct __sk_buff *skb, struct sl_packet *pkt,
					     enum hook_side side, bool outside_via_fib)
{
	struct endpoint_info *ep = endpoint_lookup(&pkt->daddr);
	struct route_entry *route;

	if (ep)
		return sl_dropping(pkt, deliver_local(skb, ep, side), SL_DROP_DELIVER);

	route = route_lookup(&pkt->daddr);
	if (!route)
		return outside_via_fib ? deliver_native(skb, pkt) : TC_ACT_OK;
	__sync_fetch_and_add(&route->hits, 1);

	switch (route->kind) {
	case ROUTE_REMOTE_TUNNEL:
		return sl_dropping(pkt, deliver_tunnel(skb, route->ifindex, &route->next_hop,
						       tunnel_vni), SL_DROP_ENCAP);
	case ROUTE_REMOTE_NATIVE:
		return deliver_native(skb, pkt);
	case ROUTE_LOCAL_PODS:
	default:
		/* A pod address we have no endpoint for: nobody is there. */
		pkt->drop_reason = SL_DROP_NO_ENDPOINT;
		return TC_ACT_SHOT;
	}
}

#endif
