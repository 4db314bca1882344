/* Connection tracking for service NAT: an LRU of flows keyed by the packet's own tuple.
 * A NATed flow has two entries (forward: client->frontend, reply: backend->client), so
 * every packet of it is classified by one lookup of the tuple it carries. */
#ifndef SLUICE_CONNTRACK_H
#define SLUICE_CONNTRACK_H

#include "common.h"

enum ct_kind {
	CT_DNAT = 1,          /* forward leg: rewrite the destination to nat_addr:nat_port */
	CT_REPLY_SNAT = 2,    /* reply leg: rewrite the source back to nat_addr:nat_port */
	CT_RETURN_TUNNEL = 3, /* reply of a flow another node forwarded: send it back there */
};

enum ct_flags {
	CT_F_DSR = 1 << 0,    /* forward leg carries the frontend to the backend's node */
	CT_F_REMOTE = 1 << 1, /* the backend is on another node */
	CT_F_HAIRPIN = 1 << 2, /* a pod reached itself: its source becomes the frontend too */
	CT_F_MASQ = 1 << 3,   /* from outside to a backend on a node without this datapath:
			       * the source becomes this node (masq.h), replies come here */
};

struct ct_key {
	union sl_addr src;
	union sl_addr dst;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 pad[3];
};

struct ct_entry {
	__u64 last_seen_ns;
	union sl_addr nat_addr;
	__be16 nat_port;
	__u8 kind;  /* enum ct_kind */
	__u8 flags; /* enum ct_flags */
	__u32 backend_id;
	union sl_addr peer; /* CT_RETURN_TUNNEL: the forwarding node's underlay address */
	__u32 ifindex;      /* CT_RETURN_TUNNEL: the tunnel device */
	__u32 pad;
	__u64 packets;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct ct_key);
	__type(value, struct ct_entry);
	__uint(max_entries, 262144);
} conntrack SEC(".maps");

/* Set at load: idle time after which a flow's entries no longer apply. */
const volatile __u32 ct_timeout_tcp_s = 3600;
const volatile __u32 ct_timeout_other_s = 120;

#define CT_REFRESH_NS 1000000000ULL

static __always_inline void ct_key_of(struct ct_key *key, const union sl_addr *src,
				      const union sl_addr *dst, __be16 sport, __be16 dport,
				      __u8 proto)
{
	key->src = *src;
	key->dst = *dst;
	key->sport = sport;
	key->dport = dport;
	key->proto = proto;
}

static __always_inline void ct_key_reverse(struct ct_key *rev, const struct ct_key *key)
{
	ct_key_of(rev, &key->dst, &key->src, key->dport, key->sport, key->proto);
}

/* The live entry for KEY, refreshed; NULL when absent or idle past its timeout. CLOCK:
 * the packet's time (sl_now). */
static __always_inline struct ct_entry *ct_lookup(const struct ct_key *key, __u64 *clock)
{
	struct ct_entry *entry = bpf_map_lookup_elem(&conntrack, key);
	__u64 now, timeout;

	if (!entry)
		return NULL;
	now = sl_now(clock);
	timeout = (__u64)(key->proto == IPPROTO_TCP ? ct_timeout_tcp_s : ct_timeout_other_s) *
		  1000000000ULL;
	if (now - entry->last_seen_ns > timeout)
		return NULL;
	if (now - entry->last_seen_ns > CT_REFRESH_NS)
		entry->last_seen_ns = now;
	__sync_fetch_and_add(&entry->packets, 1);
	return entry;
}

static __always_inline int ct_create(const struct ct_key *key, __u8 kind, __u8 flags,
				     const union sl_addr *nat_addr, __be16 nat_port,
				     __u32 backend_id, const union sl_addr *peer, __u32 ifindex,
				     __u64 now)
{
	struct ct_entry entry = {
		.last_seen_ns = now,
		.nat_port = nat_port,
		.kind = kind,
		.flags = flags,
		.backend_id = backend_id,
		.ifindex = ifindex,
		.packets = 1,
	};

	if (nat_addr)
		entry.nat_addr = *nat_addr;
	if (peer)
		entry.peer = *peer;
	return bpf_map_update_elem(&conntrack, key, &entry, BPF_ANY);
}

#endif
