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
		return prefilter_pass_malformed ? PREFILTER_PASS : PREFILTER_DROP;
	if (prefilter_cidr(&pkt, bytes) == PREFILTER_DROP) {
		policy_count(POLICY_DROP_PREFILTER, bytes);
		return PREFILTER_DROP;
	}
	return policy_untracked(&pkt, ifindex, bytes) == POL_DENY ? PREFILTER_DROP : PREFILTER_PASS;
}

#endif
