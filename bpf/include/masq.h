/* Masquerade: local pods' traffic leaving the cluster gets the node's address (SNAT on
 * the uplink's egress), and replies get the pod's back (on the uplink's ingress).
 *
 * One LRU holds both directions of a mapping: MASQ_OUT keyed by the pod's tuple (what
 * its packets become), MASQ_IN keyed by the node's tuple (whom a reply is for). Node ports
 * come from [port_min, port_max], which the agent keeps disjoint from the host's
 * ephemeral range; a port is taken when another mapping to the same peer holds it or a
 * local socket owns it. TCP, UDP and ICMP echo (the identifier is the port). */
#ifndef SLUICE_MASQ_H
#define SLUICE_MASQ_H

#include "common.h"
#include "parse.h"
#include "endpoints.h"
#include "conntrack.h"
#include "nat.h"
#include "events.h"

struct masq_config {
	union sl_addr addr4; /* the node's IPv4 address (mapped); zero: IPv4 stays as it is */
	union sl_addr addr6; /* the node's IPv6 address; zero: IPv6 stays as it is */
	__u16 port_min;      /* host order, inclusive */
	__u16 port_max;
	__u32 enabled;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct masq_config);
	__uint(max_entries, 1);
} masq_config SEC(".maps");

/* Destinations that keep the pod's address: the cluster's pod CIDRs and node addresses,
 * link-local, and what the operator adds (ip-masq-agent's nonMasqueradeCIDRs). */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct sl_lpm_key);
	__type(value, __u32);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 4096);
} masq_nonmasq SEC(".maps");

enum masq_dir {
	MASQ_OUT = 1, /* key: the pod's tuple; value: the node's address and port */
	MASQ_IN = 2,  /* key: the node's tuple; value: the pod's address and port */
};

enum masq_flags {
	MASQ_F_INBOUND = 1 << 0, /* MASQ_OUT: an outside peer opened this flow; no SNAT */
};

struct masq_key {
	union sl_addr addr; /* MASQ_OUT: the pod; MASQ_IN: the node */
	union sl_addr peer;
	__be16 port;        /* of addr; ICMP echo: the identifier */
	__be16 peer_port;   /* 0 for ICMP echo */
	__u8 proto;
	__u8 dir;           /* enum masq_dir */
	__u16 pad;
};

struct masq_entry {
	__u64 last_seen_ns;
	union sl_addr addr; /* what the key's address becomes */
	__be16 port;
	__u8 flags;         /* enum masq_flags */
	__u8 pad;
	__u32 pad2;
	__u64 packets;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct masq_key);
	__type(value, struct masq_entry);
	__uint(max_entries, 262144);
} masq_mappings SEC(".maps");

/* Ports tried from a random start before a new flow is refused (SL_DROP_NAT). */
#define MASQ_TRIES 32

#define ICMP_ECHO_REQUEST 8
#define ICMP_ECHO_REPLY 0
#define ICMPV6_ECHO_REQUEST 128
#define ICMPV6_ECHO_REPLY 129
#define ICMP_ID_OFF 4

/* The node's addresses and port range, set whether masquerade is on or off: a NodePort
 * flow to a backend on a node without this datapath is SNATed either way. */
static __always_inline struct masq_config *masq_configured(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&masq_config, &zero);
}

static __always_inline struct masq_config *masq_active(void)
{
	struct masq_config *config = masq_configured();

	return config && config->enabled ? config : NULL;
}

static __always_inline bool masq_addr_unset(const union sl_addr *a)
{
	return !(a->w[0] | a->w[1] | a->w[2] | a->w[3]);
}

static __always_inline bool masq_exempt(const union sl_addr *dst)
{
	struct sl_lpm_key key = { .prefixlen = 128, .addr = *dst };

	return bpf_map_lookup_elem(&masq_nonmasq, &key) != NULL;
}

/* The node-side port of a packet masquerade handles and its peer's (network order);
 * false for what it leaves alone. ICMP: an echo request OUTBOUND, an echo reply inbound,
 * whose identifier is the port. */
static __always_inline bool masq_port_of(struct __sk_buff *skb, const struct sl_packet *pkt,
					 bool outbound, __be16 *port, __be16 *peer_port)
{
	__u8 echo;

	switch (pkt->l4_proto) {
	case IPPROTO_TCP:
	case IPPROTO_UDP:
		*port = outbound ? pkt->sport : pkt->dport;
		*peer_port = outbound ? pkt->dport : pkt->sport;
		return true;
	case IPPROTO_ICMP:
		echo = outbound ? ICMP_ECHO_REQUEST : ICMP_ECHO_REPLY;
		break;
	case IPPROTO_ICMPV6:
		echo = outbound ? ICMPV6_ECHO_REQUEST : ICMPV6_ECHO_REPLY;
		break;
	default:
		return false;
	}
	if (pkt->icmp_type != echo)
		return false;
	*peer_port = 0;
	return bpf_skb_load_bytes(skb, pkt->l4_off + ICMP_ID_OFF, port, 2) == 0;
}

static __always_inline void masq_key_of(struct masq_key *key, const union sl_addr *addr,
					const union sl_addr *peer, __be16 port,
					__be16 peer_port, __u8 proto, __u8 dir)
{
	key->addr = *addr;
	key->peer = *peer;
	key->port = port;
	key->peer_port = peer_port;
	key->proto = proto;
	key->dir = dir;
	key->pad = 0;
}

static __always_inline __u64 masq_timeout_ns(__u8 proto)
{
	return (__u64)(proto == IPPROTO_TCP ? ct_timeout_tcp_s : ct_timeout_other_s) *
	       1000000000ULL;
}

/* The live entry for KEY, or NULL when absent or idle past conntrack's timeout. *STALE:
 * it is due a refresh (and so is its other direction). */
static __always_inline struct masq_entry *masq_lookup(const struct masq_key *key, __u64 now,
						      bool *stale)
{
	struct masq_entry *entry = bpf_map_lookup_elem(&masq_mappings, key);

	if (!entry || now - entry->last_seen_ns > masq_timeout_ns(key->proto))
		return NULL;
	*stale = now - entry->last_seen_ns > CT_REFRESH_NS;
	if (*stale)
		entry->last_seen_ns = now;
	__sync_fetch_and_add(&entry->packets, 1);
	return entry;
}

/* Keep a mapping's other direction alive with the one that carries traffic. */
static __always_inline void masq_touch(const struct masq_key *key, __u64 now)
{
	struct masq_entry *entry = bpf_map_lookup_elem(&masq_mappings, key);

	if (entry)
		entry->last_seen_ns = now;
}

/* The other direction's key of KEY, whose entry is ENTRY. */
static __always_inline void masq_partner(struct masq_key *partner, const struct masq_key *key,
					 const struct masq_entry *entry)
{
	masq_key_of(partner, &entry->addr, &key->peer, entry->port, key->peer_port, key->proto,
		    key->dir == MASQ_OUT ? MASQ_IN : MASQ_OUT);
}

/* masq_source's keys and value and the allocator's socket tuple: off the stack, which
 * the programs calling them fill. */
struct masq_scratch {
	struct masq_key out;
	struct masq_key in;
	struct masq_entry value;
	struct bpf_sock_tuple tuple;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct masq_scratch);
	__uint(max_entries, 1);
} masq_scratch SEC(".maps");

/* Does a socket of this namespace own IN's node port toward its peer (a listener, a
 * bound UDP socket, a connection, also one in TIME_WAIT)? */
static __always_inline bool masq_socket_owns(struct __sk_buff *skb, const struct masq_key *in)
{
	struct masq_scratch *s;
	struct bpf_sock_tuple *tuple;
	struct bpf_sock *sk;
	__u32 size, zero = 0;

	if (in->proto != IPPROTO_TCP && in->proto != IPPROTO_UDP)
		return false;
	s = bpf_map_lookup_elem(&masq_scratch, &zero);
	if (!s)
		return true; /* cannot tell: not this port */
	tuple = &s->tuple;
	__builtin_memset(tuple, 0, sizeof(*tuple));
	if (in->addr.w[0] == 0 && in->addr.w[1] == 0 && in->addr.w[2] == bpf_htonl(0x0000ffff)) {
		tuple->ipv4.saddr = in->peer.w[3];
		tuple->ipv4.daddr = in->addr.w[3];
		tuple->ipv4.sport = in->peer_port;
		tuple->ipv4.dport = in->port;
		size = sizeof(tuple->ipv4);
	} else {
		__builtin_memcpy(tuple->ipv6.saddr, in->peer.w, 16);
		__builtin_memcpy(tuple->ipv6.daddr, in->addr.w, 16);
		tuple->ipv6.sport = in->peer_port;
		tuple->ipv6.dport = in->port;
		size = sizeof(tuple->ipv6);
	}
	if (in->proto == IPPROTO_TCP)
		sk = bpf_skc_lookup_tcp(skb, tuple, size, BPF_F_CURRENT_NETNS, 0);
	else
		sk = bpf_sk_lookup_udp(skb, tuple, size, BPF_F_CURRENT_NETNS, 0);
	if (!sk)
		return false;
	bpf_sk_release(sk);
	return true;
}

/* Claim a node port for IN (its port is filled in) and record VALUE under it: the
 * port in host order, or -1 when every port tried is taken. */
static __always_inline int masq_allocate(struct __sk_buff *skb, struct masq_key *in,
			     struct masq_entry *value, __u32 port_min, __u32 port_max)
{
	__u32 span, start, i;
	__u64 now;

	if (!skb || !in || !value || port_min == 0 || port_max < port_min || port_max > 65535)
		return -1;
	span = port_max - port_min + 1;
	start = bpf_get_prandom_u32();
	now = value->last_seen_ns;
	for (i = 0; i < MASQ_TRIES && i < span; i++) {
		__u32 port = port_min + (start + i) % span;
		struct masq_entry *held;

		in->port = bpf_htons(port);
		held = bpf_map_lookup_elem(&masq_mappings, in);
		if (held && now - held->last_seen_ns <= masq_timeout_ns(in->proto))
			continue;
		if (masq_socket_owns(skb, in))
			continue;
		/* Absent: claim it only if no other CPU did meanwhile; expired: take it over. */
		if (bpf_map_update_elem(&masq_mappings, in, value, held ? BPF_ANY : BPF_NOEXIST))
			continue;
		return port;
	}
	return -1;
}

static __always_inline int masq_set_icmp_id(struct __sk_buff *skb, __u32 l4_off, __be16 to)
{
	__be16 old;

	if (bpf_skb_load_bytes(skb, l4_off + ICMP_ID_OFF, &old, 2) < 0)
		return -1;
	if (old == to)
		return 0;
	if (bpf_l4_csum_replace(skb, l4_off + 2, old, to, 2) < 0)
		return -1;
	return bpf_skb_store_bytes(skb, l4_off + ICMP_ID_OFF, &to, 2, 0);
}

/* Rewrite SIDE's address and port (ICMP echo: identifier) of a packet masquerade owns. */
static __always_inline int masq_rewrite(struct __sk_buff *skb, struct sl_packet *pkt,
					enum nat_side side, const union sl_addr *addr, __be16 port)
{
	if (pkt->l4_proto == IPPROTO_TCP || pkt->l4_proto == IPPROTO_UDP)
		return nat_rewrite(skb, pkt, side, addr, port);
	if (nat_set_addr(skb, pkt->family, pkt->l4_proto, pkt->l4_off, side, addr) < 0)
		return -1;
	if (masq_set_icmp_id(skb, pkt->l4_off, port) < 0)
		return -1;
	if (side == NAT_SRC)
		pkt->saddr = *addr;
	else
		pkt->daddr = *addr;
	return 0;
}

/* The node's address of PKT's family (set) and a port of masq_config's range for PKT's
 * source: the flow's mapping, or a new one, left in masq_scratch's value for
 * masq_apply_source (a call of its own here would make the callers' stack too deep).
 * 1: found; 0: an inbound flow (left alone); -1: drop (no port; the reason is in PKT). */
__noinline int masq_source(struct __sk_buff *skb, struct sl_packet *pkt, __be16 port,
			   __be16 peer_port)
{
	/* Looked up here, not passed: a global function's pointer arguments must be
	 * writable, and the tracer loads masq_config read-only. */
	const struct masq_config *config = masq_configured();
	struct masq_scratch *s;
	struct masq_entry *entry;
	const union sl_addr *node;
	bool stale = false;
	__u32 zero = 0;
	__u64 now;
	int got;

	if (!skb || !pkt || !config)
		return 0;
	s = bpf_map_lookup_elem(&masq_scratch, &zero);
	if (!s) {
		pkt->drop_reason = SL_DROP_NAT;
		return -1;
	}
	__builtin_memset(s, 0, sizeof(*s));
	node = pkt->family == 4 ? &config->addr4 : &config->addr6;
	masq_key_of(&s->out, &pkt->saddr, &pkt->daddr, port, peer_port, pkt->l4_proto, MASQ_OUT);
	now = sl_now(&pkt->now);
	entry = masq_lookup(&s->out, now, &stale);
	if (entry) {
		if (entry->flags & MASQ_F_INBOUND)
			return 0;
		s->value.addr = entry->addr;
		s->value.port = entry->port;
		if (stale) {
			masq_partner(&s->in, &s->out, entry);
			masq_touch(&s->in, now);
		}
	} else {
		s->in.addr = *node;
		s->in.peer = pkt->daddr;
		s->in.peer_port = peer_port;
		s->in.proto = pkt->l4_proto;
		s->in.dir = MASQ_IN;
		s->value.last_seen_ns = now;
		s->value.addr = pkt->saddr;
		s->value.port = port;
		s->value.packets = 1;
		got = masq_allocate(skb, &s->in, &s->value, config->port_min, config->port_max);
		if (got < 0) {
			pkt->drop_reason = SL_DROP_NAT;
			return -1;
		}
		s->value.addr = *node;
		s->value.port = bpf_htons(got);
		if (bpf_map_update_elem(&masq_mappings, &s->out, &s->value, BPF_ANY) < 0) {
			bpf_map_delete_elem(&masq_mappings, &s->in);
			pkt->drop_reason = SL_DROP_NAT;
			return -1;
		}
		pkt->new_flow = 1;
	}
	return 1;
}

/* After masq_source returned 1: the source PKT gets, rewritten. 1, or -1: drop. */
static __always_inline int masq_apply_source(struct __sk_buff *skb, struct sl_packet *pkt)
{
	struct masq_scratch *s;
	__u32 zero = 0;

	s = bpf_map_lookup_elem(&masq_scratch, &zero);
	if (!s || masq_rewrite(skb, pkt, NAT_SRC, &s->value.addr, s->value.port) < 0) {
		pkt->drop_reason = SL_DROP_NAT;
		return -1;
	}
	return 1;
}

/* On the uplink's egress: a local pod's packet to a masqueraded destination leaves with
 * the node's address. 1: translated; 0: left alone; -1: drop (reason in PKT). */
static __always_inline int masq_snat(struct __sk_buff *skb, struct sl_packet *pkt)
{
	struct masq_config *config;
	const union sl_addr *node;
	__be16 port, peer_port;
	int got;

	if (!skb || !pkt)
		return 0;
	config = masq_active();
	if (!config)
		return 0;
	node = pkt->family == 4 ? &config->addr4 : &config->addr6;
	if (masq_addr_unset(node) || !endpoint_lookup(&pkt->saddr))
		return 0;
	if (!masq_port_of(skb, pkt, true, &port, &peer_port) || masq_exempt(&pkt->daddr))
		return 0;
	got = masq_source(skb, pkt, port, peer_port);
	return got > 0 ? masq_apply_source(skb, pkt) : got;
}

/* A service flow from outside, already sent to a backend on a node without this datapath
 * (which cannot return the replies through us): its source becomes this node, so the
 * replies come back here, whether masquerade is on or off. 1: translated; -1: drop. */
static __always_inline int masq_service_snat(struct __sk_buff *skb, struct sl_packet *pkt)
{
	struct masq_config *config;
	const union sl_addr *node;
	__be16 port, peer_port;

	if (!skb || !pkt)
		return -1;
	config = masq_configured();
	if (!config) {
		pkt->drop_reason = SL_DROP_NAT;
		return -1;
	}
	node = pkt->family == 4 ? &config->addr4 : &config->addr6;
	if (masq_addr_unset(node) || !masq_port_of(skb, pkt, true, &port, &peer_port)) {
		pkt->drop_reason = SL_DROP_NAT;
		return -1;
	}
	if (masq_source(skb, pkt, port, peer_port) <= 0) {
		if (!pkt->drop_reason)
			pkt->drop_reason = SL_DROP_NAT;
		return -1;
	}
	return masq_apply_source(skb, pkt);
}

/* On the uplink's ingress: a reply to a masqueraded flow gets its pod's address and port
 * back. 1: translated; 0: not a reply we know (the host's); -1: drop (rewrite failed). */
__noinline int masq_reverse(struct __sk_buff *skb, struct sl_packet *pkt)
{
	struct masq_scratch *s;
	struct masq_entry *entry;
	struct masq_config *config;
	const union sl_addr *node;
	bool stale = false;
	__be16 port, peer_port;
	__u32 zero = 0;
	__u64 now;

	if (!skb || !pkt)
		return 0;
	/* Also when masquerade is off: masq_service_snat's flows. */
	config = masq_configured();
	if (!config)
		return 0;
	node = pkt->family == 4 ? &config->addr4 : &config->addr6;
	if (masq_addr_unset(node) || !sl_addr_eq(node, &pkt->daddr))
		return 0;
	if (!masq_port_of(skb, pkt, false, &port, &peer_port) ||
	    bpf_ntohs(port) < config->port_min || bpf_ntohs(port) > config->port_max)
		return 0;
	s = bpf_map_lookup_elem(&masq_scratch, &zero);
	if (!s)
		return 0;
	__builtin_memset(s, 0, sizeof(*s));
	masq_key_of(&s->in, &pkt->daddr, &pkt->saddr, port, peer_port, pkt->l4_proto, MASQ_IN);
	now = sl_now(&pkt->now);
	entry = masq_lookup(&s->in, now, &stale);
	if (!entry)
		return 0;
	s->value.addr = entry->addr;
	s->value.port = entry->port;
	if (stale) {
		masq_partner(&s->out, &s->in, entry);
		masq_touch(&s->out, now);
	}
	if (masq_rewrite(skb, pkt, NAT_DST, &s->value.addr, s->value.port) < 0) {
		pkt->drop_reason = SL_DROP_NAT;
		return -1;
	}
	return 1;
}

/* On the uplink's ingress, for a packet an outside peer sends straight to a local pod
 * (a routed fabric reaches pod addresses): the pod's answers must keep its address. */
__noinline int masq_note_inbound(struct __sk_buff *skb, struct sl_packet *pkt)
{
	struct masq_key out = {};
	struct masq_entry value = {};
	__be16 port, peer_port;
	bool stale;
	__u64 now;

	if (!skb || !pkt || !masq_active())
		return 0;
	if (pkt->l4_proto == IPPROTO_ICMP || pkt->l4_proto == IPPROTO_ICMPV6)
		return 0; /* the pod's echo replies are not what masquerade translates */
	if (!masq_port_of(skb, pkt, false, &port, &peer_port) || masq_exempt(&pkt->saddr))
		return 0;
	out.addr = pkt->daddr;
	out.peer = pkt->saddr;
	out.port = port;
	out.peer_port = peer_port;
	out.proto = pkt->l4_proto;
	out.dir = MASQ_OUT;
	now = sl_now(&pkt->now);
	/* Known (and refreshed): an inbound flow, or a mapping the pod made itself. */
	if (masq_lookup(&out, now, &stale))
		return 0;
	value.last_seen_ns = now;
	value.addr = pkt->daddr;
	value.port = port;
	value.flags = MASQ_F_INBOUND;
	bpf_map_update_elem(&masq_mappings, &out, &value, BPF_ANY);
	return 0;
}

#endif
