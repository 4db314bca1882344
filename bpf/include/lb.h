/* Service load balancing: frontends, their backend slots and backend selection.
 * Shared by the socket hooks (connect-time) and the tc programs (per packet). */
#ifndef SLUICE_LB_H
#define SLUICE_LB_H

#include "common.h"

enum lb_flags {
	LB_F_AFFINITY = 1 << 0,    /* sessionAffinity: ClientIP */
	LB_F_LOCAL_ONLY = 1 << 1,  /* a traffic policy Local restricted the backends */
	LB_F_SOURCE_RANGES = 1 << 2, /* loadBalancerSourceRanges apply */
	LB_F_MAGLEV = 1 << 3,      /* pick by the flow's hash in the frontend's Maglev table */
	LB_F_DSR = 1 << 4,         /* a remote backend's node answers the client directly */
};

/* A frontend (slot 0) or one of its backend slots (1..count): the slots make the
 * backend list of a service an ordinary hash lookup, no loops over backends. */
struct lb_key {
	union sl_addr addr;
	__be16 port;
	__u8 proto;  /* IPPROTO_TCP, IPPROTO_UDP, IPPROTO_SCTP */
	__u8 pad;
	__u16 slot;
	__u16 pad2;
};

struct lb_value {
	__u32 backend_id;       /* slots 1..count */
	__u32 service_id;       /* slot 0: names the service in affinity and maglev maps */
	__u16 count;            /* slot 0: backend slots; 0 means reject at once */
	__u16 flags;            /* enum lb_flags */
	__u32 affinity_timeout; /* seconds */
	__u32 maglev_id;        /* slot 0: the frontend's table in lb_maglev */
	__u32 pad;
};

enum lb_backend_flags {
	/* On a node without this datapath: it cannot send an outside client's replies back
	 * through the node the client reached (tunnel mode) nor answer it (DSR). */
	LB_BACKEND_F_FOREIGN = 1 << 0,
};

struct lb_backend {
	union sl_addr addr;
	__be16 port;
	__u8 proto;
	__u8 flags; /* enum lb_backend_flags */
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct lb_key);
	__type(value, struct lb_value);
	__uint(max_entries, 262144);
} lb_services SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct lb_backend);
	__uint(max_entries, 262144);
} lb_backends SEC(".maps");

struct lb_affinity_key {
	__u64 client;   /* netns cookie (socket hooks) or a hash of the client address */
	__u32 service_id;
	__u32 pad;
};

struct lb_affinity {
	__u64 last_used_ns;
	__u32 backend_id;
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct lb_affinity_key);
	__type(value, struct lb_affinity);
	__uint(max_entries, 65536);
} lb_affinity SEC(".maps");

/* Maglev tables: lb_value.maglev_id names a table of maglev_table_size slots, each
 * holding a backend id; compile fills them the same on every node. */
struct lb_maglev_key {
	__u32 table;
	__u32 index;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct lb_maglev_key);
	__type(value, __u32);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 1 << 20);
} lb_maglev SEC(".maps");

/* Set at load: the prime size of every Maglev table. */
const volatile __u32 maglev_table_size = 16381;

/* loadBalancerSourceRanges: who may use a frontend flagged LB_F_SOURCE_RANGES. The
 * prefix covers the service id first, then the client address. */
struct lb_source_key {
	__u32 prefixlen;
	__u32 service_id;
	union sl_addr addr;
};

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct lb_source_key);
	__type(value, __u32);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 16384);
} lb_source_ranges SEC(".maps");

static __always_inline struct lb_value *lb_lookup_service(const union sl_addr *addr,
							   __be16 port, __u8 proto)
{
	struct lb_key key = { .addr = *addr, .port = port, .proto = proto };

	return bpf_map_lookup_elem(&lb_services, &key);
}

static __always_inline bool lb_source_allowed(struct lb_value *svc, const union sl_addr *client)
{
	struct lb_source_key key = { .prefixlen = 32 + 128, .service_id = svc->service_id,
				     .addr = *client };

	if (!(svc->flags & LB_F_SOURCE_RANGES))
		return true;
	return bpf_map_lookup_elem(&lb_source_ranges, &key) != NULL;
}

static __always_inline __u32 sl_mix32(__u32 h)
{
	h ^= h >> 16;
	h *= 0x85ebca6b;
	h ^= h >> 13;
	h *= 0xc2b2ae35;
	h ^= h >> 16;
	return h;
}

/* A flow's hash for Maglev: the client's address, port and protocol, which every node
 * sees alike (the frontend address differs per node for node ports). */
static __always_inline __u32 lb_flow_hash(const union sl_addr *client, __be16 port, __u8 proto)
{
	__u32 h = 0x5109e;

	h = sl_mix32(h ^ client->w[0]);
	h = sl_mix32(h ^ client->w[1]);
	h = sl_mix32(h ^ client->w[2]);
	h = sl_mix32(h ^ client->w[3]);
	return sl_mix32(h ^ ((__u32)port << 8) ^ proto);
}

/* Per-CPU: new flows (and socket connects) each backend was chosen for, by backend id. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_PERCPU_HASH);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 65536);
} lb_selections SEC(".maps");

static __always_inline void lb_count_selection(__u32 id)
{
	__u64 one = 1, *count = bpf_map_lookup_elem(&lb_selections, &id);

	if (count)
		(*count)++;
	else
		bpf_map_update_elem(&lb_selections, &id, &one, BPF_NOEXIST);
}

/* Pick a backend for a new flow to the frontend ADDR:PORT/PROTO (its slot 0 is SVC):
 * the remembered one under ClientIP affinity while it still exists, else by Maglev or
 * at random. CLIENT keys the affinity; HASH feeds Maglev. */
static __always_inline struct lb_backend *lb_select(const union sl_addr *addr, __be16 port,
						    __u8 proto, struct lb_value *svc,
						    __u64 client, __u32 hash, __u32 *backend_id)
{
	struct lb_key key = { .addr = *addr, .port = port, .proto = proto };
	struct lb_affinity_key akey = { .client = client, .service_id = svc->service_id };
	struct lb_affinity *remembered = NULL;
	struct lb_affinity fresh = {};
	struct lb_backend *backend;
	__u64 now = bpf_ktime_get_ns();
	__u32 id;

	if (svc->count == 0)
		return NULL;
	if (svc->flags & LB_F_AFFINITY) {
		remembered = bpf_map_lookup_elem(&lb_affinity, &akey);
		if (remembered &&
		    now - remembered->last_used_ns < (__u64)svc->affinity_timeout * 1000000000ULL) {
			id = remembered->backend_id;
			backend = bpf_map_lookup_elem(&lb_backends, &id);
			if (backend) {
				remembered->last_used_ns = now;
				*backend_id = id;
				lb_count_selection(id);
				return backend;
			}
		}
	}
	if (svc->flags & LB_F_MAGLEV) {
		struct lb_maglev_key mkey = { .table = svc->maglev_id,
					      .index = hash % (maglev_table_size ?: 1) };
		__u32 *found = bpf_map_lookup_elem(&lb_maglev, &mkey);

		if (!found)
			return NULL;
		id = *found;
	} else {
		struct lb_value *slot;

		key.slot = (bpf_get_prandom_u32() % svc->count) + 1;
		slot = bpf_map_lookup_elem(&lb_services, &key);
		if (!slot)
			return NULL;
		id = slot->backend_id;
	}
	backend = bpf_map_lookup_elem(&lb_backends, &id);
	if (!backend)
		return NULL;
	*backend_id = id;
	lb_count_selection(id);
	if (svc->flags & LB_F_AFFINITY) {
		fresh.last_used_ns = now;
		fresh.backend_id = id;
		bpf_map_update_elem(&lb_affinity, &akey, &fresh, BPF_ANY);
	}
	return backend;
}

#endif
