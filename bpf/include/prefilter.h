/* Prefilter: what the uplink drops before anything else, per packet and without state:
 * a source-CIDR verdict table, then (past the failsafe ports) doNotTrack policy. */
#ifndef SLUICE_PREFILTER_H
#define SLUICE_PREFILTER_H

#include "common.h"
#include "parse.h"
#define SLUICE_POLICY_NO_FLOWS
#include "policy.h"

enum prefilter_action {
	PREFILTER_PASS = 0,
	PREFILTER_DROP = 1,
};

struct prefilter_entry {
	__u32 action;  /* enum prefilter_action */
	__u32 rule_id; /* the control plane's name for the entry, echoed in dumps */
	__u64 packets;
	__u64 bytes;
};

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct sl_lpm_key);
	__type(value, struct prefilter_entry);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 65536);
} prefilter_cidrs SEC(".maps");

/* Set by the loader before load: what happens to IP packets no entry covers. */
const volatile __u32 prefilter_default_action = PREFILTER_PASS;
/* Malformed IP headers are dropped unless the operator asks otherwise. */
const volatile __u32 prefilter_pass_malformed = 0;

/* The source-CIDR table's verdict for a parsed packet (counted on its entry). */
static __always_inline enum prefilter_action prefilter_cidr(const struct sl_packet *pkt,
							    __u32 bytes)
{
	struct sl_lpm_key key = { .prefixlen = 128 };
	struct prefilter_entry *entry;

	key.addr = pkt->saddr;
	entry = bpf_map_lookup_elem(&prefilter_cidrs, &key);
	if (!entry)
		return prefilter_default_action;
	__sync_fetch_and_add(&entry->packets, 1);
	__sync_fetch_and_add(&entry->bytes, bytes);
	return entry->action;
}

/* Count the packet, and tell the agent of a drop (REASON) as a flow event. */
static __always_inline enum prefilter_action prefilter_verdict(const struct sl_packet *pkt,
							       __u8 reason, __u32 ifindex,
							       __u32 bytes)
{
	struct sl_flow_event *event;
	__u64 now;

	datapath_count(SL_HOOK_PREFILTER, reason, bytes);
	if (!reason)
		return PREFILTER_PASS;
	now = bpf_ktime_get_ns();
	if (!events_admit(SL_EVENTS_DROPS, now))
		return PREFILTER_DROP;
	event = events_reserve(now);
	if (!event)
		return PREFILTER_DROP;
	event->src = pkt->saddr;
	event->dst = pkt->daddr;
	event->sport = pkt->sport;
	event->dport = pkt->dport;
	event->proto = pkt->l4_proto;
	event->family = pkt->family;
	event->verdict = SL_VERDICT_DROPPED;
	event->reason = reason;
	event->hook = SL_HOOK_PREFILTER;
	event->tcp_flags = pkt->tcp_flags;
	event->ifindex = ifindex;
	event->bytes = bytes;
	events_submit(event);
	return PREFILTER_DROP;
}

/* In order: the CIDR deny list, then the failsafe inbound ports, then the doNotTrack
 * policy of IFINDEX (the interface the packet arrived on). */
static __always_inline enum prefilter_action prefilter_decide(void *data, void *data_end,
							      __u32 ifindex)
{
	__u32 bytes = data_end - data;
	struct sl_packet pkt = {};
	int parsed = sl_parse(data, data_end, &pkt);

	if (parsed == SL_PARSE_NOT_IP)
		return PREFILTER_PASS;
	if (parsed == SL_PARSE_MALFORMED)
		return prefilter_verdict(&pkt, prefilter_pass_malformed ? 0 : SL_DROP_MALFORMED,
					 ifindex, bytes);
	if (prefilter_cidr(&pkt, bytes) == PREFILTER_DROP) {
		policy_count(POLICY_DROP_PREFILTER, bytes);
		return prefilter_verdict(&pkt, SL_DROP_PREFILTER, ifindex, bytes);
	}
	if (policy_untracked(&pkt, ifindex, bytes) == POL_DENY)
		return prefilter_verdict(&pkt, SL_DROP_UNTRACKED, ifindex, bytes);
	return prefilter_verdict(&pkt, 0, ifindex, bytes);
}

#endif
