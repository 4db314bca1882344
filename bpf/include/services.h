/* Per-packet service translation for what the socket hooks cannot see: traffic from
 * other nodes and from outside (node ports, load balancer IPs, external IPs), and pods
 * whose sockets were not translated. A flow's first packet picks the backend; conntrack
 * carries the translation for the rest of it, both directions. */
#ifndef SLUICE_SERVICES_H
#define SLUICE_SERVICES_H

#include "common.h"
#include "parse.h"
#include "endpoints.h"
#include "conntrack.h"
#include "nat.h"
#include "lb.h"
#include "reject.h"
#include "events.h"

enum svc_verdict {
	SVC_NONE = 0,    /* not service traffic */
	SVC_FORWARD = 1, /* the destination is now a backend */
	SVC_REPLY = 2,   /* a reply (or ICMP error) now comes from the frontend; to its client */
	SVC_RETURN = 3,  /* a reply to send back to the node that forwarded the flow */
	SVC_DONE = 4,    /* answered or dropped here: `ret` is the tc verdict */
};

struct svc_result {
	int ret;
	__u8 flags;     /* enum ct_flags of the forward leg */
	__u8 dsr_ok;    /* in: from the network, so a remote backend's node may answer */
	__u8 reason;    /* SVC_DONE: enum sl_drop_reason when the packet is not forwarded */
	__u8 pad;
	__u32 ifindex;  /* SVC_RETURN: the tunnel device */
	union sl_addr peer;     /* SVC_RETURN: the forwarding node */
	union sl_addr frontend; /* SVC_FORWARD: what the client asked for (for DSR) */
	__be16 frontend_port;
	__u16 pad2;
	__u32 backend_id; /* SVC_FORWARD: the backend chosen */
};

static __always_inline bool is_icmp_error(struct sl_packet *pkt)
{
	if (pkt->l4_proto == IPPROTO_ICMP)
		return pkt->icmp_type == 3 || pkt->icmp_type == 11 || pkt->icmp_type == 12;
	if (pkt->l4_proto == IPPROTO_ICMPV6)
		return pkt->icmp_type >= 1 && pkt->icmp_type <= 4;
	return false;
}

static __always_inline __u64 affinity_client(const union sl_addr *a)
{
	return ((__u64)sl_mix32(a->w[0] ^ a->w[1] ^ a->w[2]) << 32) | a->w[3];
}

/* An ICMP error about a translated flow travels toward its client: put the frontend back
 * into the quoted packet (and the outer source when the backend sent it), so the client
 * matches it to its socket. */
__noinline int svc_icmp_error(struct __sk_buff *skb, __u32 family, __u32 l4_off,
				     struct svc_result *res)
{
	__u32 inner_l3 = l4_off + 8, inner_l4, icmp_csum = l4_off + 2;
	struct ct_entry *entry;
	struct ct_key key = {};
	union sl_addr inner_dst = {}, outer_src = {};
	__u64 clock = 0;
	__be16 ports[2];
	__u8 proto;

	if (!skb || !res || l4_off > ETH_HLEN + 60)
		return SVC_NONE;
	if (family == 4) {
		struct iphdr inner;

		if (bpf_skb_load_bytes(skb, inner_l3, &inner, sizeof(inner)) < 0 || inner.ihl != 5)
			return SVC_NONE;
		sl_addr_from_v4(&key.dst, inner.saddr);
		sl_addr_from_v4(&inner_dst, inner.daddr);
		proto = inner.protocol;
		inner_l4 = inner_l3 + sizeof(inner);
	} else {
		struct ipv6hdr inner;

		if (bpf_skb_load_bytes(skb, inner_l3, &inner, sizeof(inner)) < 0)
			return SVC_NONE;
		__builtin_memcpy(key.dst.b, &inner.saddr, 16);
		__builtin_memcpy(inner_dst.b, &inner.daddr, 16);
		proto = inner.nexthdr;
		inner_l4 = inner_l3 + sizeof(inner);
	}
	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP && proto != IPPROTO_SCTP)
		return SVC_NONE;
	if (bpf_skb_load_bytes(skb, inner_l4, ports, sizeof(ports)) < 0)
		return SVC_NONE;
	/* The quoted packet went client -> backend; its reply leg names the flow. */
	key.src = inner_dst;
	key.sport = ports[1];
	key.dport = ports[0];
	key.proto = proto;
	entry = ct_lookup(&key, &clock);
	if (!entry)
		return SVC_NONE;
	if (entry->kind == CT_RETURN_TUNNEL) {
		res->peer = entry->peer;
		res->ifindex = entry->ifindex;
		return SVC_RETURN;
	}
	if (entry->kind != CT_REPLY_SNAT)
		return SVC_NONE;

	/* Inner destination port, then address; the ICMP checksum covers both. */
	if (bpf_l4_csum_replace(skb, icmp_csum, ports[1], entry->nat_port, 2) < 0 ||
	    bpf_skb_store_bytes(skb, inner_l4 + 2, &entry->nat_port, 2, 0) < 0)
		return SVC_DONE;
	if (family == 4) {
		__sum16 old_check, new_check;

		if (bpf_skb_load_bytes(skb, inner_l3 + 10, &old_check, 2) < 0 ||
		    bpf_l3_csum_replace(skb, inner_l3 + 10, inner_dst.w[3], entry->nat_addr.w[3], 4) < 0)
			return SVC_DONE;
		if (bpf_skb_load_bytes(skb, inner_l3 + 10, &new_check, 2) < 0 ||
		    bpf_l4_csum_replace(skb, icmp_csum, inner_dst.w[3], entry->nat_addr.w[3], 4) < 0 ||
		    bpf_l4_csum_replace(skb, icmp_csum, old_check, new_check, 2) < 0 ||
		    bpf_skb_store_bytes(skb, inner_l3 + 16, &entry->nat_addr.w[3], 4, 0) < 0)
			return SVC_DONE;
		if (bpf_skb_load_bytes(skb, IPV4_SADDR_OFF, &outer_src.w[3], 4) < 0)
			return SVC_DONE;
		if (outer_src.w[3] == inner_dst.w[3] &&
		    nat_set_addr(skb, 4, IPPROTO_ICMP, l4_off, NAT_SRC, &entry->nat_addr) < 0)
			return SVC_DONE;
	} else {
		__s64 diff = bpf_csum_diff(inner_dst.w, 16, entry->nat_addr.w, 16, 0);

		if (bpf_l4_csum_replace(skb, icmp_csum, 0, diff, 0) < 0 ||
		    bpf_skb_store_bytes(skb, inner_l3 + 24, entry->nat_addr.b, 16, 0) < 0)
			return SVC_DONE;
		if (bpf_skb_load_bytes(skb, IPV6_SADDR_OFF, &outer_src, 16) < 0)
			return SVC_DONE;
		if (sl_addr_eq(&outer_src, &inner_dst) &&
		    nat_set_addr(skb, 6, IPPROTO_ICMPV6, l4_off, NAT_SRC, &entry->nat_addr) < 0)
			return SVC_DONE;
	}
	return SVC_REPLY;
}

/* A forward leg whose backend is gone (not just out of rotation) would black-hole the
 * flow: let the packet pick a live backend instead. */
static __always_inline bool backend_alive(struct ct_entry *entry)
{
	__u32 id = entry->backend_id;
	struct lb_backend *backend = bpf_map_lookup_elem(&lb_backends, &id);

	return backend && sl_addr_eq(&backend->addr, &entry->nat_addr) &&
	       backend->port == entry->nat_port;
}

static __always_inline void svc_claim_reply(struct sl_packet *pkt, struct ct_entry *entry)
{
	struct ct_key reply = {};
	bool hairpin = entry->flags & CT_F_HAIRPIN;

	ct_key_of(&reply, &entry->nat_addr, hairpin ? &pkt->daddr : &pkt->saddr,
		  entry->nat_port, pkt->sport, pkt->l4_proto);
	ct_create(&reply, CT_REPLY_SNAT, entry->flags & CT_F_HAIRPIN, &pkt->daddr, pkt->dport,
		  entry->backend_id, NULL, 0, sl_now(&pkt->now));
}

/* A packet of a flow conntrack already knows. */
static __always_inline int svc_known(struct __sk_buff *skb, struct sl_packet *pkt,
				     struct ct_key *key, struct ct_entry *entry,
				     struct svc_result *res)
{
	union sl_addr nat_addr = entry->nat_addr;
	__be16 nat_port = entry->nat_port;

	switch (entry->kind) {
	case CT_DNAT:
		res->flags = entry->flags;
		res->backend_id = entry->backend_id;
		res->frontend = key->dst;
		res->frontend_port = key->dport;
		if (nat_rewrite(skb, pkt, NAT_DST, &nat_addr, nat_port) < 0)
			goto drop;
		if (entry->flags & CT_F_HAIRPIN &&
		    nat_rewrite(skb, pkt, NAT_SRC, &res->frontend, pkt->sport) < 0)
			goto drop;
		return SVC_FORWARD;
	case CT_REPLY_SNAT:
		if (entry->flags & CT_F_HAIRPIN &&
		    nat_rewrite(skb, pkt, NAT_DST, &key->src, pkt->dport) < 0)
			goto drop;
		if (nat_rewrite(skb, pkt, NAT_SRC, &nat_addr, nat_port) < 0)
			goto drop;
		return SVC_REPLY;
	case CT_RETURN_TUNNEL:
		res->peer = entry->peer;
		res->ifindex = entry->ifindex;
		return SVC_RETURN;
	}
	return SVC_NONE;
drop:
	res->ret = TC_ACT_SHOT;
	res->reason = SL_DROP_NAT;
	return SVC_DONE;
}

/* A flow's first packet to a frontend: pick a backend, remember both legs, translate. */
static __always_inline int svc_new_flow(struct __sk_buff *skb, struct sl_packet *pkt,
					struct ct_key *key, struct svc_result *res)
{
	struct lb_value *svc = lb_lookup_service(&pkt->daddr, pkt->dport, pkt->l4_proto);
	struct lb_backend *backend;
	union sl_addr backend_addr;
	struct ct_key reply = {};
	__be16 backend_port;
	__u32 backend_id = 0;
	__u8 flags = 0;

	if (!svc)
		return SVC_NONE;
	if (!lb_source_allowed(svc, &pkt->saddr)) {
		res->ret = TC_ACT_SHOT;
		res->reason = SL_DROP_SOURCE_RANGE;
		return SVC_DONE;
	}
	backend = lb_select(&pkt->daddr, pkt->dport, pkt->l4_proto, svc,
			    affinity_client(&pkt->saddr),
			    lb_flow_hash(&pkt->saddr, pkt->sport, pkt->l4_proto), &backend_id);
	if (!backend) {
		/* Traffic policy Local without a local backend: not ours to answer. */
		if (svc->flags & LB_F_LOCAL_ONLY) {
			res->ret = TC_ACT_SHOT;
			res->reason = SL_DROP_NO_LOCAL_BACKEND;
		} else {
			res->ret = reject(skb, pkt);
			res->reason = SL_DROP_NO_BACKEND;
		}
		return SVC_DONE;
	}
	backend_addr = backend->addr;
	backend_port = backend->port;
	if (!endpoint_lookup(&backend_addr))
		flags |= CT_F_REMOTE;
	/* What dsr_ok marks comes from the network: outside clients among it. */
	if (flags & CT_F_REMOTE && backend->flags & LB_BACKEND_F_FOREIGN && res->dsr_ok)
		flags |= CT_F_MASQ;
	else if (flags & CT_F_REMOTE && svc->flags & LB_F_DSR && res->dsr_ok)
		flags |= CT_F_DSR;
	if (sl_addr_eq(&backend_addr, &pkt->saddr))
		flags |= CT_F_HAIRPIN;
	if (ct_create(key, CT_DNAT, flags, &backend_addr, backend_port, backend_id, NULL, 0,
		      sl_now(&pkt->now)) < 0) {
		res->ret = TC_ACT_SHOT;
		res->reason = SL_DROP_CT_INSERT;
		return SVC_DONE;
	}
	pkt->new_flow = 1;
	res->backend_id = backend_id;
	if (!(flags & CT_F_DSR)) {
		/* A hairpinned flow comes back to the frontend address, from the backend. */
		ct_key_of(&reply, &backend_addr,
			  flags & CT_F_HAIRPIN ? &pkt->daddr : &pkt->saddr,
			  backend_port, pkt->sport, pkt->l4_proto);
		ct_create(&reply, CT_REPLY_SNAT, flags & CT_F_HAIRPIN, &pkt->daddr, pkt->dport,
			  backend_id, NULL, 0, sl_now(&pkt->now));
	}
	res->flags = flags;
	res->frontend = pkt->daddr;
	res->frontend_port = pkt->dport;
	if (nat_rewrite(skb, pkt, NAT_DST, &backend_addr, backend_port) < 0 ||
	    (flags & CT_F_HAIRPIN &&
	     nat_rewrite(skb, pkt, NAT_SRC, &res->frontend, pkt->sport) < 0)) {
		res->ret = TC_ACT_SHOT;
		res->reason = SL_DROP_NAT;
		return SVC_DONE;
	}
	return SVC_FORWARD;
}

static __always_inline int svc_translate(struct __sk_buff *skb, struct sl_packet *pkt,
					 struct svc_result *res)
{
	struct ct_entry *entry;
	struct ct_key key = {};

	if (is_icmp_error(pkt))
		return svc_icmp_error(skb, pkt->family, pkt->l4_off, res);
	if (pkt->l4_proto != IPPROTO_TCP && pkt->l4_proto != IPPROTO_UDP &&
	    pkt->l4_proto != IPPROTO_SCTP)
		return SVC_NONE;
	ct_key_of(&key, &pkt->saddr, &pkt->daddr, pkt->sport, pkt->dport, pkt->l4_proto);
	entry = ct_lookup(&key, &pkt->now);
	if (entry && (entry->kind != CT_DNAT || backend_alive(entry))) {
		/* A SYN on a known forward leg: a retransmission, or a new connection reusing
		 * the client port. Keep the backend, but claim the reply leg again: another
		 * frontend's flow from the same client port may have taken it meanwhile. */
		if (entry->kind == CT_DNAT && !(entry->flags & CT_F_DSR) &&
		    (pkt->tcp_flags & 0x12) == 0x02)
			svc_claim_reply(pkt, entry);
		return svc_known(skb, pkt, &key, entry, res);
	}
	return svc_new_flow(skb, pkt, &key, res);
}

/* On the backend's node: remember how to answer a flow another node forwarded. */
static __always_inline void svc_note_forwarded(struct sl_packet *pkt, __u8 kind,
					       const union sl_addr *nat_addr, __be16 nat_port,
					       const union sl_addr *peer, __u32 ifindex)
{
	struct ct_key reply = {};
	struct ct_entry *known;

	ct_key_of(&reply, &pkt->daddr, &pkt->saddr, pkt->dport, pkt->sport, pkt->l4_proto);
	/* The same client port may have reached this backend another way before (another
	 * node's frontend, or one of ours): the flow arriving now is the live one. */
	known = ct_lookup(&reply, &pkt->now);
	if (known && known->kind == kind && known->ifindex == ifindex &&
	    (!peer || sl_addr_eq(&known->peer, peer)) &&
	    (!nat_addr || (known->nat_port == nat_port && sl_addr_eq(&known->nat_addr, nat_addr))))
		return;
	ct_create(&reply, kind, 0, nat_addr, nat_port, 0, peer, ifindex, sl_now(&pkt->now));
}

#endif
