/* Flow events and datapath counters: what the datapath did with a packet and why.
 *
 * INTERFACE (agreed with the agent; src/sluice/datapath/events.py mirrors every enum and
 * struct here, the README lists the drop reasons). Numbers are stable: only append. */
#ifndef SLUICE_EVENTS_H
#define SLUICE_EVENTS_H

#include "common.h"

enum sl_verdict {
	SL_VERDICT_FORWARDED = 1,
	SL_VERDICT_DROPPED = 2,
	SL_VERDICT_TRANSLATED = 3, /* socket-level load balancing rewrote a connect/sendmsg */
	SL_VERDICT_LOGGED = 4,     /* a Log rule (the agent turns policy_events into these) */
};

/* Why a packet was dropped (0: it was not). */
enum sl_drop_reason {
	SL_DROP_NONE = 0,
	SL_DROP_POLICY_DENIED = 1,    /* a new flow no policy allows */
	SL_DROP_POLICY_CUT = 2,       /* a flow a policy change no longer allows */
	SL_DROP_NO_BACKEND = 3,       /* a service without backends: answered with RST/ICMP */
	SL_DROP_NO_LOCAL_BACKEND = 4, /* traffic policy Local without a backend on this node */
	SL_DROP_SOURCE_RANGE = 5,     /* loadBalancerSourceRanges does not hold the client */
	SL_DROP_CT_INSERT = 6,        /* conntrack entry could not be created */
	SL_DROP_FIB = 7,              /* the kernel's FIB has no route (native routing, outside) */
	SL_DROP_MALFORMED = 8,        /* truncated or inconsistent headers */
	SL_DROP_NAT = 9,              /* rewriting addresses or ports failed; masquerade: no free port */
	SL_DROP_PREFILTER = 10,       /* the source is on the deny list (XDP) */
	SL_DROP_UNTRACKED = 11,       /* a doNotTrack (untracked) policy denies it (XDP) */
	SL_DROP_NO_ENDPOINT = 12,     /* a local pod address nobody uses */
	SL_DROP_ENCAP = 13,           /* tunnel encapsulation or DSR option failed */
	SL_DROP_DELIVER = 14,         /* rewriting MACs for a local pod failed */
	SL_DROP_UNKNOWN = 15,         /* dropped without a recorded reason */
	SL_DROP_REASONS = 32,
};

/* Where the datapath saw the packet. */
enum sl_hook {
	SL_HOOK_FROM_ENDPOINT = 1, /* tc ingress of a pod's host veth (egress from the pod) */
	SL_HOOK_FROM_NETWORK = 2,  /* tc ingress of the tunnel device and the uplink */
	SL_HOOK_FROM_HOST = 3,     /* tc egress of sl-host: the node to its pods */
	SL_HOOK_TO_NETWORK = 4,    /* tc egress of the uplink */
	SL_HOOK_PREFILTER = 5,     /* XDP (or tc) prefilter on the uplink */
	SL_HOOK_SOCK_CONNECT = 6,  /* cgroup connect4/6 */
	SL_HOOK_SOCK_SENDMSG = 7,  /* cgroup sendmsg4/6 */
	SL_HOOKS = 8,
};

/* What the agent asks for (events_config[0]); all zero: no events at all. */
enum sl_event_kinds {
	SL_EVENTS_DROPS = 1 << 0, /* every drop */
	SL_EVENTS_FLOWS = 1 << 1, /* tc: a flow's first packet (TCP SYN, or a new flow entry), FIN, RST */
	SL_EVENTS_SOCK = 1 << 2,  /* socket-level load balancing translations */
};

struct events_config {
	__u32 kinds;        /* enum sl_event_kinds */
	__u32 sample;       /* flow and sock events: one in SAMPLE is sent (0, 1: all); drops: all */
	__u32 rate_per_cpu; /* events per second per CPU at most (0: no limit) */
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct events_config);
	__uint(max_entries, 1);
} events_config SEC(".maps");

/* One event; the agent decodes it (datapath/events.py) and names pods and services. */
struct sl_flow_event {
	__u64 time_ns;          /* bpf_ktime_get_ns (CLOCK_MONOTONIC) */
	union sl_addr src;      /* as the packet arrived at the hook */
	union sl_addr dst;      /* as it arrived: a service's frontend before translation */
	union sl_addr nat_addr; /* a service's backend chosen (zero when none) */
	__be16 sport;
	__be16 dport;
	__be16 nat_port;
	__u8 proto;
	__u8 family;            /* 4 or 6 */
	__u8 verdict;           /* enum sl_verdict */
	__u8 reason;            /* enum sl_drop_reason */
	__u8 hook;              /* enum sl_hook */
	__u8 tcp_flags;
	__u32 ifindex;          /* the interface the hook runs on (0 for socket hooks) */
	__u32 rule_id;          /* the policy rule that decided (0: none) */
	__u32 backend_id;       /* a service's backend chosen (0: none) */
	__u32 bytes;            /* packet length */
	__u32 pid;              /* socket hooks: the process (tgid) */
	__u64 cgroup_id;        /* socket hooks: the process's cgroup */
	char comm[16];          /* socket hooks: the process's command */
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1024 * 1024);
} flow_events SEC(".maps");

/* Per-CPU: what happened to the events the datapath wanted to send. */
enum sl_event_stat {
	SL_EVENTS_SENT = 0,
	SL_EVENTS_LOST_FULL = 1,    /* the ring buffer was full: the agent reads too slowly */
	SL_EVENTS_RATE_LIMITED = 2, /* over rate_per_cpu in this second */
	SL_EVENTS_SAMPLED_OUT = 3,  /* not one of the sampled ones (not lost: by design) */
	SL_EVENT_STATS = 4,
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, SL_EVENT_STATS);
} events_stats SEC(".maps");

/* Per-CPU rate limiter state: events sent in the current one-second window. */
struct events_window {
	__u64 start_ns;
	__u32 sent;
	__u32 seen; /* sampling: candidates counted */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct events_window);
	__uint(max_entries, 1);
} events_window SEC(".maps");

/* Per-CPU packets and bytes by hook and drop reason (reason 0: forwarded). Index:
 * hook * SL_DROP_REASONS + reason. */
struct datapath_counter {
	__u64 packets;
	__u64 bytes;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct datapath_counter);
	__uint(max_entries, SL_HOOKS * SL_DROP_REASONS);
} datapath_counters SEC(".maps");

static __always_inline void datapath_count(__u8 hook, __u8 reason, __u32 bytes)
{
	__u32 index = (__u32)hook * SL_DROP_REASONS + (reason & (SL_DROP_REASONS - 1));
	struct datapath_counter *counter = bpf_map_lookup_elem(&datapath_counters, &index);

	if (counter) {
		counter->packets++;
		counter->bytes += bytes;
	}
}

static __always_inline void events_stat(__u32 stat)
{
	__u64 *count = bpf_map_lookup_elem(&events_stats, &stat);

	if (count)
		(*count)++;
}

/* The configuration if an event of KIND is wanted now, after sampling (not for drops)
 * and the rate limit, or NULL. Skipped events are counted. */
static __always_inline struct events_config *events_admit(__u32 kind, __u64 now)
{
	struct events_config *config;
	struct events_window *window;
	__u32 zero = 0;

	config = bpf_map_lookup_elem(&events_config, &zero);
	if (!config || !(config->kinds & kind))
		return NULL;
	window = bpf_map_lookup_elem(&events_window, &zero);
	if (!window)
		return NULL;
	if (kind != SL_EVENTS_DROPS && config->sample > 1 && ++window->seen % config->sample) {
		events_stat(SL_EVENTS_SAMPLED_OUT);
		return NULL;
	}
	if (now - window->start_ns >= 1000000000ULL) {
		window->start_ns = now;
		window->sent = 0;
	}
	if (config->rate_per_cpu && window->sent >= config->rate_per_cpu) {
		events_stat(SL_EVENTS_RATE_LIMITED);
		return NULL;
	}
	window->sent++;
	return config;
}

/* A zeroed event in the ring buffer, stamped NOW, or NULL (counted as lost). */
static __always_inline struct sl_flow_event *events_reserve(__u64 now)
{
	struct sl_flow_event *event = bpf_ringbuf_reserve(&flow_events, sizeof(*event), 0);

	if (!event) {
		events_stat(SL_EVENTS_LOST_FULL);
		return NULL;
	}
	__builtin_memset(event, 0, sizeof(*event));
	event->time_ns = now;
	return event;
}

/* Waking the agent for every event would cost more than the event: it is woken once
 * WAKEUP_BYTES are waiting, and otherwise reads them within its poll interval. */
#define EVENTS_WAKEUP_BYTES (64 * 1024)

static __always_inline void events_submit(struct sl_flow_event *event)
{
	__u64 flags = bpf_ringbuf_query(&flow_events, BPF_RB_AVAIL_DATA) >= EVENTS_WAKEUP_BYTES ?
		      BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP;

	bpf_ringbuf_submit(event, flags);
	events_stat(SL_EVENTS_SENT);
}

#endif
