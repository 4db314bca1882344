/* Network policy: identities of peers (ipcache), per-endpoint verdict tables, and the
 * flow table that carries a flow's verdict so only its first packet is judged.
 *
 * INTERFACE (agreed with the control plane; the implementation below the maps is the
 * datapath's). compile/policytypes.py mirrors every enum here. */
#ifndef SLUICE_POLICY_H
#define SLUICE_POLICY_H

#include "common.h"
#include "events.h"

/* Identities below 256 are reserved; 0 never names a peer (in a policy key it means any). */
enum policy_identity {
	ID_ANY = 0,
	ID_HOST = 1,        /* this node itself */
	ID_WORLD_V4 = 2,    /* 0.0.0.0/0: no more specific entry */
	ID_WORLD_V6 = 3,    /* ::/0 */
	ID_REMOTE_NODE = 4, /* another node's address */
};

/* Every address the node can name: pods (/32, /128), nodes, and each CIDR a policy uses.
 * A pod entry also names the most specific policy CIDR holding the pod's address, so
 * an ipBlock selects pods by address as it does any other IP. */
struct ipcache_entry {
	__u32 identity;      /* pods: their label identity; nodes: HOST/REMOTE_NODE; CIDRs: theirs */
	__u32 cidr_identity; /* the most specific policy CIDR holding the address (CIDRs: itself) */
};

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct sl_lpm_key);
	__type(value, struct ipcache_entry);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 262144);
} ipcache SEC(".maps");

enum policy_direction {
	POL_INGRESS = 0,         /* to the endpoint (host endpoints: to the host itself) */
	POL_EGRESS = 1,          /* from the endpoint (host endpoints: from the host itself) */
	POL_PREDNAT = 2,         /* host endpoint ingress, before service translation */
	POL_FORWARD_INGRESS = 3, /* host endpoint: arriving, forwarded by the host (applyOnForward) */
	POL_FORWARD_EGRESS = 4,  /* host endpoint: leaving, forwarded by the host (applyOnForward) */
	POL_UNTRACKED = 5,       /* host endpoint ingress, doNotTrack: judged in XDP, per packet */
};

enum policy_tier {
	TIER_GLOBAL = 0,     /* ordered global policies: Allow, Deny, Pass */
	TIER_KUBERNETES = 1, /* NetworkPolicy: allows, and a catch-all deny when isolated */
	TIER_LOG = 2,        /* global Log rules: recorded when they rank before the decision */
};

enum policy_action {
	POL_ALLOW = 1,
	POL_DENY = 2,
	POL_PASS = 3, /* hand the flow to the Kubernetes tier */
	POL_LOG = 4,
};

/* LPM key: everything up to `peer` is always matched in full; the prefix then runs into
 * dport's bits, so a port range is a handful of prefixes. proto 0 = any protocol (dport
 * bits then 0), peer 0 = any peer. */
struct policy_key {
	__u32 prefixlen;
	__u32 endpoint; /* pods: the host veth's ifindex; host endpoints: the interface's */
	__u8 direction; /* enum policy_direction */
	__u8 tier;      /* enum policy_tier */
	__u8 proto;
	__u8 pad;
	__u32 peer;     /* identity */
	__be16 dport;
	__u16 pad2;
};

#define POLICY_KEY_FIXED_BITS 96
#define POLICY_KEY_MAX_BITS (POLICY_KEY_FIXED_BITS + 16)

/* A more specific entry already carries the best (lowest) rank of every entry covering
 * it in its class (compile does that), so one lookup per class finds the winner. */
struct policy_verdict {
	__u32 rank;    /* lower wins; every Kubernetes allow shares one rank */
	__u8 action;   /* enum policy_action */
	__u8 pad[3];
	__u32 rule_id; /* names the rule in `sluice bpf policy show` and in flow events */
	__u32 pad2;
	__u64 flows;   /* flows this entry decided (the datapath counts) */
};

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct policy_key);
	__type(value, struct policy_verdict);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 1048576);
} policy SEC(".maps");

/* Written by the agent after every policy change: flows judged under an older revision
 * are judged again on their next packet, so a flow a new policy forbids is cut. */
struct policy_state {
	__u32 revision;
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct policy_state);
	__uint(max_entries, 1);
} policy_states SEC(".maps");

/* Failsafe ports: host endpoint policy (tracked or not) never blocks these. */
enum failsafe_direction {
	FAILSAFE_INBOUND = 0,
	FAILSAFE_OUTBOUND = 1,
};

struct failsafe_key {
	__u8 direction; /* enum failsafe_direction */
	__u8 proto;
	__be16 port;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct failsafe_key);
	__type(value, __u32);
	__uint(max_entries, 256);
} failsafe_ports SEC(".maps");

/* ==== The datapath's side: below this line the interface is implemented. ==== */

#include "parse.h"

/* Interfaces of this node that host endpoints cover, written by the agent. */
enum host_interface_flags {
	HOST_IF_ENDPOINT = 1 << 0,  /* tc: its host endpoint's policy applies */
	HOST_IF_UNTRACKED = 1 << 1, /* XDP: it has doNotTrack (POL_UNTRACKED) policy to judge */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);   /* ifindex */
	__type(value, __u32); /* enum host_interface_flags */
	__uint(max_entries, 256);
} host_interfaces SEC(".maps");

/* Packets dropped or let through, by reason: a per-CPU array indexed by this enum
 * (sluice.datapath.policy.CounterReason mirrors it). */
enum policy_counter_reason {
	POLICY_DROP_DENIED = 0,    /* a new flow (or a hook's first sight of one) denied */
	POLICY_DROP_FLOW_CUT = 1,  /* a flow judged again and now denied, and its later packets */
	POLICY_DROP_UNTRACKED = 2, /* XDP: a doNotTrack deny */
	POLICY_DROP_PREFILTER = 3, /* XDP/tc prefilter: a denied source CIDR (or the default) */
	POLICY_PASS_FAILSAFE = 4,  /* a failsafe port bypassed host endpoint policy */
	POLICY_PASS_NEW_FLOW = 5,  /* a new flow allowed (and recorded) */
	POLICY_COUNTER_MAX = 8,
};

struct policy_counter {
	__u64 packets;
	__u64 bytes;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct policy_counter);
	__uint(max_entries, POLICY_COUNTER_MAX);
} policy_counters SEC(".maps");

static __always_inline void policy_count(__u32 reason, __u32 bytes)
{
	struct policy_counter *counter = bpf_map_lookup_elem(&policy_counters, &reason);

	if (counter) {
		counter->packets++;
		counter->bytes += bytes;
	}
}

/* One decision: ENDPOINT's policy in DIRECTION toward the peer at PEER. */
struct policy_query {
	__u32 endpoint;
	__u8 direction;
	__u8 proto;
	__be16 dport;         /* 0 for protocols without ports */
	__u32 peer_identity;  /* in: what the caller knows better than the ipcache (0: nothing) */
	__u32 identity;       /* resolved: the peer's identity */
	__u32 cidr_identity;  /* resolved: the most specific policy CIDR holding it */
	__u32 pad;
	union sl_addr peer;
};

static __always_inline bool policy_has_ports(__u8 proto)
{
	return proto == IPPROTO_TCP || proto == IPPROTO_UDP || proto == IPPROTO_SCTP;
}

static __always_inline bool sl_addr_is_v4(const union sl_addr *a)
{
	return a->w[0] == 0 && a->w[1] == 0 && a->w[2] == bpf_htonl(0x0000ffff);
}

static __always_inline struct ipcache_entry *ipcache_lookup(const union sl_addr *addr)
{
	struct sl_lpm_key key = { .prefixlen = 128 };

	key.addr = *addr;
	return bpf_map_lookup_elem(&ipcache, &key);
}

static __always_inline void policy_resolve_peer(struct policy_query *q)
{
	struct ipcache_entry *entry = ipcache_lookup(&q->peer);

	if (entry) {
		q->identity = entry->identity;
		q->cidr_identity = entry->cidr_identity;
	} else {
		q->identity = sl_addr_is_v4(&q->peer) ? ID_WORLD_V4 : ID_WORLD_V6;
		q->cidr_identity = q->identity;
	}
	if (q->peer_identity)
		q->identity = q->peer_identity;
}

/* The winning (lowest rank) entry of TIER for the query: the peer's identity, its CIDR
 * identity and "any peer", each for the protocol with the port and for any protocol. */
static __always_inline struct policy_verdict *policy_best(const struct policy_query *q,
							 __u8 tier)
{
	struct policy_verdict *best = NULL, *found;
	struct policy_key key;
	int i;

#pragma unroll
	for (i = 0; i < 6; i++) {
		bool any_proto = i & 1;
		int peer_class = i >> 1;

		if (any_proto && !q->proto)
			continue;
		if (peer_class == 1 && (!q->cidr_identity || q->cidr_identity == q->identity))
			continue;
		key.prefixlen = POLICY_KEY_MAX_BITS;
		key.endpoint = q->endpoint;
		key.direction = q->direction;
		key.tier = tier;
		key.proto = any_proto ? 0 : q->proto;
		key.pad = 0;
		key.peer = peer_class == 0 ? q->identity : peer_class == 1 ? q->cidr_identity : ID_ANY;
		key.dport = any_proto ? 0 : q->dport;
		key.pad2 = 0;
		found = bpf_map_lookup_elem(&policy, &key);
		if (found && (!best || found->rank < best->rank))
			best = found;
	}
	return best;
}

static __always_inline bool policy_failsafe(__u8 direction, __u8 proto, __be16 port)
{
	struct failsafe_key key = { .direction = direction, .proto = proto, .port = port };

	return policy_has_ports(proto) && bpf_map_lookup_elem(&failsafe_ports, &key);
}

static __always_inline __u32 host_interface_flags(__u32 ifindex)
{
	__u32 *flags = bpf_map_lookup_elem(&host_interfaces, &ifindex);

	return flags ? *flags : 0;
}

/* XDP: a packet arriving on IFINDEX against its doNotTrack policy, global tier only
 * and without any state. Failsafe inbound ports are never blocked. */
static __always_inline int policy_untracked(const struct sl_packet *pkt, __u32 ifindex,
					    __u32 bytes)
{
	struct policy_verdict *verdict;
	struct policy_query q = {};

	if (!(host_interface_flags(ifindex) & HOST_IF_UNTRACKED))
		return POL_ALLOW;
	if (policy_failsafe(FAILSAFE_INBOUND, pkt->l4_proto, pkt->dport)) {
		policy_count(POLICY_PASS_FAILSAFE, bytes);
		return POL_ALLOW;
	}
	q.endpoint = ifindex;
	q.direction = POL_UNTRACKED;
	q.proto = pkt->l4_proto;
	q.dport = policy_has_ports(pkt->l4_proto) ? pkt->dport : 0;
	q.peer = pkt->saddr;
	policy_resolve_peer(&q);
	verdict = policy_best(&q, TIER_GLOBAL);
	if (verdict && verdict->action == POL_DENY) {
		policy_count(POLICY_DROP_UNTRACKED, bytes);
		return POL_DENY;
	}
	return POL_ALLOW;
}

#ifndef SLUICE_POLICY_NO_FLOWS
/* Everything below is the tc datapath's: the flow table and the per-flow decision.
 * Objects that judge packets without flows (the XDP prefilter) define
 * SLUICE_POLICY_NO_FLOWS before including this header. */

#include "conntrack.h"
#include "endpoints.h"

/* Where a flow was judged. A flow may cross two hooks of one node (a pod's packets
 * leaving by the uplink; traffic the host forwards): each judges the flow once. */
enum policy_hook {
	POLICY_AT_ENDPOINT = 1 << 0, /* from_endpoint: a pod sends */
	POLICY_AT_NETWORK = 1 << 1,  /* from_network: it arrives by the tunnel or the uplink */
	POLICY_AT_HOST = 1 << 2,     /* from_host: the node sends to a pod */
	POLICY_AT_UPLINK = 1 << 3,   /* to_network: it leaves by the uplink */
};

/* A flow's verdict, keyed by the tuple of its first packet (the pod-facing one: after a
 * service's DNAT). One entry serves both directions; replies pass if it allows. What each
 * hook knew of the first packet is kept, so the flow can be judged again after a policy
 * change. */
struct policy_flow {
	__u64 last_seen_ns;
	__u32 revision;     /* policy_states[0].revision it was judged under */
	__u8 verdict;       /* POL_ALLOW, or POL_DENY once a policy change cut it */
	__u8 hooks;         /* enum policy_hook: where it was judged */
	__be16 orig_dport;  /* AT_NETWORK: the destination port before service translation */
	__u32 src_endpoint; /* AT_ENDPOINT: the sending pod's policy id */
	__u32 src_identity; /* AT_ENDPOINT: the sending pod's identity */
	__u32 in_ifindex;   /* AT_NETWORK: the host interface it arrived on (0: none) */
	__u32 out_ifindex;  /* AT_UPLINK: the host interface it left by (0: none) */
	__u64 packets;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct ct_key);
	__type(value, struct policy_flow);
	__uint(max_entries, 262144);
} policy_flows SEC(".maps");

/* A Log rule that ranked before the decision of a flow's first packet. */
struct policy_event {
	struct ct_key tuple;
	__u32 endpoint;
	__u32 rule_id;   /* the Log rule */
	__u8 direction;  /* enum policy_direction */
	__u8 action;     /* the Log rule's action (POL_LOG) */
	__u8 verdict;    /* what the decision was: POL_ALLOW or POL_DENY */
	__u8 hook;       /* enum policy_hook */
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} policy_events SEC(".maps");

/* Per-CPU working memory of a tc program (the stack is too small): a node program keeps
 * one in its scratch map and passes it to the functions below. */
struct policy_scratch {
	struct ct_key key;      /* the flow, as its first packet carried it */
	struct ct_key raw;      /* the packet's own tuple before service translation */
	struct ct_key reverse;
	struct policy_flow here; /* this hook's view of the packet: hooks = the hook */
	struct policy_flow flow; /* the view being judged */
	struct policy_query query;
	struct policy_event event;
	__u32 bytes;
	__u8 skip_prednat;       /* AT_NETWORK: preDNAT policy was judged before translation */
	__u8 drop_reason;        /* enum sl_drop_reason of a refused packet */
	__u8 new_flow;           /* the flow was recorded from this packet */
	__u8 pad;
	__u32 rule_id;           /* the rule of the last decision (0: none) */
	__u32 pad2;
};

enum policy_outcome {
	POLICY_PASS = 0,
	POLICY_DROP = 1,    /* denied: drop without a word */
	POLICY_CUT = 2,     /* a flow policy no longer allows: drop, and reset a TCP sender */
	POLICY_UNKNOWN = 3, /* no flow, and the caller asked not to judge a new one */
};

static __always_inline __u32 policy_revision(void)
{
	__u32 zero = 0;
	struct policy_state *state = bpf_map_lookup_elem(&policy_states, &zero);

	return state ? state->revision : 0;
}

static __always_inline bool policy_is_host(const union sl_addr *addr)
{
	struct ipcache_entry *entry = ipcache_lookup(addr);

	return entry && entry->identity == ID_HOST;
}

/* Packets no flow policy judges: ICMP errors relate to a flow of their own, and IPv6
 * neighbour discovery and multicast listener messages are the link's business. */
static __always_inline bool policy_exempt(const struct sl_packet *pkt)
{
	if (pkt->l4_proto == IPPROTO_ICMP)
		return pkt->icmp_type == 3 || pkt->icmp_type == 11 || pkt->icmp_type == 12;
	if (pkt->l4_proto == IPPROTO_ICMPV6)
		return (pkt->icmp_type >= 1 && pkt->icmp_type <= 4) ||
		       (pkt->icmp_type >= 130 && pkt->icmp_type <= 143);
	return false;
}

static __always_inline bool policy_is_echo(const struct sl_packet *pkt)
{
	if (pkt->l4_proto == IPPROTO_ICMP)
		return pkt->icmp_type == 8 || pkt->icmp_type == 0;
	return pkt->l4_proto == IPPROTO_ICMPV6 && (pkt->icmp_type == 128 || pkt->icmp_type == 129);
}

/* The overlay's own VXLAN packets between nodes: never a host endpoint's to judge. */
#define VXLAN_PORT 4789
static __always_inline bool policy_is_overlay(const struct sl_packet *pkt,
					      const union sl_addr *other_node)
{
	struct ipcache_entry *entry;

	if (pkt->l4_proto != IPPROTO_UDP || pkt->dport != bpf_htons(VXLAN_PORT))
		return false;
	entry = ipcache_lookup(other_node);
	return entry && entry->identity == ID_REMOTE_NODE;
}

/* An IPv4 fragment after the first carries no ports (the parser leaves them 0): it is
 * not judged, as the first fragment, which carries the ports, was. */
static __always_inline bool policy_later_fragment(struct __sk_buff *skb,
						  const struct sl_packet *pkt)
{
	__be16 frag_off;

	if (pkt->family != 4 || pkt->sport || pkt->dport || !policy_has_ports(pkt->l4_proto))
		return false;
	return bpf_skb_load_bytes(skb, ETH_HLEN + 6, &frag_off, 2) == 0 &&
	       frag_off & bpf_htons(0x1fff);
}

/* Set up S for a packet seen at HOOK: its tuple (ICMP echo by its id as both ports) and a
 * clean view of this hook. False for packets no flow policy judges. */
static __always_inline bool policy_begin(struct __sk_buff *skb, struct policy_scratch *s,
					 const struct sl_packet *pkt, __u8 hook)
{
	__builtin_memset(&s->here, 0, sizeof(s->here));
	s->here.hooks = hook;
	s->skip_prednat = 0;
	s->bytes = skb->len;
	if (policy_exempt(pkt) || policy_later_fragment(skb, pkt))
		return false;
	__builtin_memset(&s->key, 0, sizeof(s->key));
	ct_key_of(&s->key, &pkt->saddr, &pkt->daddr, pkt->sport, pkt->dport, pkt->l4_proto);
	if (policy_is_echo(pkt)) {
		if (bpf_skb_load_bytes(skb, pkt->l4_off + 4, &s->key.sport, 2) < 0)
			s->key.sport = 0;
		s->key.dport = s->key.sport;
	}
	s->raw = s->key;
	return true;
}

/* After service translation the flow is named by the packet as it is now. */
static __always_inline void policy_retuple(struct policy_scratch *s, const struct sl_packet *pkt)
{
	ct_key_of(&s->key, &pkt->saddr, &pkt->daddr, pkt->sport, pkt->dport, pkt->l4_proto);
}

static __always_inline __be16 policy_port(const struct ct_key *key)
{
	return policy_has_ports(key->proto) ? key->dport : 0;
}

/* Decide s->query (its peer address, and identity if known, filled in): the global tier,
 * then, if it passes or has nothing, the Kubernetes tier; no entry allows. Log rules
 * ranking before the global decision emit an event. The deciding entry counts the flow. */
__noinline int policy_decide(struct policy_scratch *s)
{
	struct policy_verdict *global, *decider, *logged;
	struct policy_event *event;
	struct policy_query *q;
	int verdict;

	if (!s)
		return POL_DENY;
	q = &s->query;
	policy_resolve_peer(q);
	global = policy_best(q, TIER_GLOBAL);
	decider = global;
	if (!global || global->action == POL_PASS)
		decider = policy_best(q, TIER_KUBERNETES);
	verdict = decider && decider->action == POL_DENY ? POL_DENY : POL_ALLOW;
	if (decider) {
		__sync_fetch_and_add(&decider->flows, 1);
		s->rule_id = decider->rule_id;
	}

	logged = policy_best(q, TIER_LOG);
	if (logged && (!global || logged->rank < global->rank)) {
		event = &s->event;
		event->tuple = s->key;
		event->endpoint = q->endpoint;
		event->rule_id = logged->rule_id;
		event->direction = q->direction;
		event->action = logged->action;
		event->verdict = verdict;
		event->hook = s->flow.hooks;
		bpf_ringbuf_output(&policy_events, event, sizeof(*event), 0);
	}
	return verdict;
}

static __always_inline int policy_check(struct policy_scratch *s, __u32 endpoint, __u8 direction,
					const union sl_addr *peer, __u32 peer_identity,
					__be16 dport)
{
	s->query.endpoint = endpoint;
	s->query.direction = direction;
	s->query.proto = s->key.proto;
	s->query.dport = dport;
	s->query.peer_identity = peer_identity;
	s->query.peer = *peer;
	return policy_decide(s);
}

/* Judge the flow s->key as the hooks in HOOKS see it (their view in s->flow): every
 * policy that applies must allow. POL_ALLOW, POL_DENY, or 0 when no policy applied. */
__noinline int policy_judge(struct policy_scratch *s, __u32 hooks)
{
	struct endpoint_info *ep;
	__u32 identity, ifindex;
	int applied = 0;
	__u8 direction;
	__be16 dport;

	if (!s)
		return POL_DENY;
	dport = policy_port(&s->key);
	if (hooks & POLICY_AT_ENDPOINT) {
		ifindex = s->flow.src_endpoint;
		if (ifindex) {
			if (policy_check(s, ifindex, POL_EGRESS, &s->key.dst, 0, dport) == POL_DENY)
				return POL_DENY;
			applied = 1;
		}
		ep = endpoint_lookup(&s->key.dst);
		if (ep) {
			ifindex = ep->ifindex;
			/* The sender's identity as it is now; a hairpinned flow's source is the
			 * frontend, so it falls back to what the first packet knew. */
			ep = endpoint_lookup(&s->key.src);
			identity = ep ? ep->identity : s->flow.src_identity;
			if (policy_check(s, ifindex, POL_INGRESS, &s->key.src, identity, dport) ==
			    POL_DENY)
				return POL_DENY;
			applied = 1;
		}
	}
	if (hooks & POLICY_AT_NETWORK) {
		ifindex = s->flow.in_ifindex;
		if (ifindex) {
			applied = 1;
			if (policy_failsafe(FAILSAFE_INBOUND, s->key.proto, s->flow.orig_dport)) {
				policy_count(POLICY_PASS_FAILSAFE, s->bytes);
			} else {
				if (!s->skip_prednat &&
				    policy_check(s, ifindex, POL_PREDNAT, &s->key.src, 0,
						 s->flow.orig_dport) == POL_DENY)
					return POL_DENY;
				direction = policy_is_host(&s->key.dst) ? POL_INGRESS : POL_FORWARD_INGRESS;
				if (policy_check(s, ifindex, direction, &s->key.src, 0, dport) == POL_DENY)
					return POL_DENY;
			}
		}
		ep = endpoint_lookup(&s->key.dst);
		if (ep) {
			if (policy_check(s, ep->ifindex, POL_INGRESS, &s->key.src, 0, dport) == POL_DENY)
				return POL_DENY;
			applied = 1;
		}
	}
	if (hooks & POLICY_AT_HOST) {
		ep = endpoint_lookup(&s->key.dst);
		if (ep) {
			if (policy_check(s, ep->ifindex, POL_INGRESS, &s->key.src, ID_HOST, dport) ==
			    POL_DENY)
				return POL_DENY;
			applied = 1;
		}
	}
	if (hooks & POLICY_AT_UPLINK) {
		ifindex = s->flow.out_ifindex;
		if (ifindex) {
			applied = 1;
			if (policy_failsafe(FAILSAFE_OUTBOUND, s->key.proto, dport)) {
				policy_count(POLICY_PASS_FAILSAFE, s->bytes);
			} else {
				direction = policy_is_host(&s->key.src) ? POL_EGRESS : POL_FORWARD_EGRESS;
				if (policy_check(s, ifindex, direction, &s->key.dst, 0, dport) == POL_DENY)
					return POL_DENY;
			}
		}
	}
	return applied ? POL_ALLOW : 0;
}

/* A host interface's preDNAT policy for a new flow, before service translation. */
__noinline int policy_prednat(struct policy_scratch *s)
{
	if (!s)
		return POLICY_DROP;
	if (!s->here.in_ifindex ||
	    policy_failsafe(FAILSAFE_INBOUND, s->key.proto, s->here.orig_dport))
		return POLICY_PASS;
	s->flow = s->here;
	if (policy_check(s, s->here.in_ifindex, POL_PREDNAT, &s->key.src, 0,
			 s->here.orig_dport) == POL_DENY) {
		policy_count(POLICY_DROP_DENIED, s->bytes);
		s->drop_reason = SL_DROP_POLICY_DENIED;
		return POLICY_DROP;
	}
	s->skip_prednat = 1;
	return POLICY_PASS;
}

static __always_inline struct policy_flow *policy_flow_lookup(const struct ct_key *key, __u64 now)
{
	struct policy_flow *flow = bpf_map_lookup_elem(&policy_flows, key);
	__u64 timeout;

	if (!flow)
		return NULL;
	timeout = (__u64)(key->proto == IPPROTO_TCP ? ct_timeout_tcp_s : ct_timeout_other_s) *
		  1000000000ULL;
	if (now - flow->last_seen_ns > timeout)
		return NULL;
	return flow;
}

/* What a hook knows of a packet beyond its tuple, looked up only for a flow it judges:
 * from a pod, the sender is the pod whose address the packet carried as it arrived. */
static __always_inline void policy_look(struct policy_scratch *s)
{
	struct endpoint_info *sender;

	if (s->here.hooks & POLICY_AT_ENDPOINT) {
		sender = endpoint_lookup(&s->raw.src);
		if (sender) {
			s->here.src_endpoint = sender->ifindex;
			s->here.src_identity = sender->identity;
		}
	}
}

/* A hook that sees a known flow's first direction for the first time adds its view. */
static __always_inline void policy_flow_merge(struct policy_flow *flow,
					      const struct policy_flow *here)
{
	flow->hooks |= here->hooks;
	if (here->hooks & POLICY_AT_ENDPOINT) {
		flow->src_endpoint = here->src_endpoint;
		flow->src_identity = here->src_identity;
	}
	if (here->hooks & POLICY_AT_NETWORK) {
		flow->in_ifindex = here->in_ifindex;
		flow->orig_dport = here->orig_dport;
	}
	if (here->hooks & POLICY_AT_UPLINK)
		flow->out_ifindex = here->out_ifindex;
}

/* The packet whose flow is s->key (set up by policy_begin): its flow's verdict, judged
 * now if the flow is new (and CREATE) or was judged under another policy revision.
 * Returns enum policy_outcome; on a reply s->key is turned to the flow's direction.
 * NOW: the packet's time (sl_now). */
__noinline int policy_enforce(struct policy_scratch *s, __u32 create, __u64 now)
{
	struct policy_flow *flow;
	__u32 revision, fresh_hooks = 0;
	bool forward = true;
	int verdict;
	__u8 was;

	if (!s)
		return POLICY_DROP;
	revision = policy_revision();
	flow = policy_flow_lookup(&s->key, now);
	if (!flow) {
		ct_key_reverse(&s->reverse, &s->key);
		flow = policy_flow_lookup(&s->reverse, now);
		if (flow) {
			s->key = s->reverse;
			forward = false;
		}
	}

	if (!flow) {
		if (!create)
			return POLICY_UNKNOWN;
		policy_look(s);
		s->flow = s->here;
		verdict = policy_judge(s, s->here.hooks);
		if (verdict == POL_DENY) {
			policy_count(POLICY_DROP_DENIED, s->bytes);
			s->drop_reason = SL_DROP_POLICY_DENIED;
			return POLICY_DROP;
		}
		if (verdict == POL_ALLOW) {
			s->flow.verdict = POL_ALLOW;
			s->flow.revision = revision;
			s->flow.last_seen_ns = now;
			s->flow.packets = 1;
			bpf_map_update_elem(&policy_flows, &s->key, &s->flow, BPF_ANY);
			policy_count(POLICY_PASS_NEW_FLOW, s->bytes);
			s->new_flow = 1;
		}
		return POLICY_PASS;
	}

	if (now - flow->last_seen_ns > CT_REFRESH_NS)
		flow->last_seen_ns = now;
	__sync_fetch_and_add(&flow->packets, 1);
	if (forward && !(flow->hooks & s->here.hooks)) {
		policy_look(s);
		policy_flow_merge(flow, &s->here);
		fresh_hooks = s->here.hooks;
	}
	if (flow->revision != revision) {
		was = flow->verdict;
		s->flow = *flow;
		verdict = policy_judge(s, s->flow.hooks);
		flow->verdict = verdict == POL_DENY ? POL_DENY : POL_ALLOW;
		flow->revision = revision;
		if (verdict != POL_DENY)
			return POLICY_PASS;
		policy_count(POLICY_DROP_FLOW_CUT, s->bytes);
		s->drop_reason = SL_DROP_POLICY_CUT;
		return was == POL_DENY ? POLICY_DROP : POLICY_CUT;
	}
	if (flow->verdict == POL_DENY) {
		policy_count(POLICY_DROP_FLOW_CUT, s->bytes);
		s->drop_reason = SL_DROP_POLICY_CUT;
		return POLICY_DROP;
	}
	if (fresh_hooks) {
		s->flow = *flow;
		if (policy_judge(s, fresh_hooks) == POL_DENY) {
			flow->verdict = POL_DENY;
			policy_count(POLICY_DROP_DENIED, s->bytes);
			s->drop_reason = SL_DROP_POLICY_DENIED;
			return POLICY_DROP;
		}
	}
	return POLICY_PASS;
}

#endif /* SLUICE_POLICY_NO_FLOWS */

#endif
