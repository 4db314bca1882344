/* The netfilter blocker's maps: which network namespaces and cgroup it guards, which
 * processes may still change netfilter there, and what it refused.
 *
 * The agent fills nfguard_scope, nfguard_allow and nfguard_cgroup; the programs of
 * nfguard.c count into nfguard_counts and report each refusal in nfguard_events.
 * src/sluice/datapath/nfguard.py mirrors the structures (checked against BTF). */
#ifndef SLUICE_NFGUARD_H
#define SLUICE_NFGUARD_H

#include "common.h"

/* What a program refused or let through; the index of nfguard_counts. */
enum nfguard_op {
	NFGUARD_OP_SETSOCKOPT = 0,     /* iptables/ip6tables/arptables/ebtables (legacy) */
	NFGUARD_OP_NETLINK_SOCKET = 1, /* a NETLINK_NETFILTER socket: nftables, iptables-nft */
	NFGUARD_OP_COUNT = 2,
};

/* Ancestors (besides the process itself) whose allowlisting covers a process: the
 * agent's children (iptables-save, nft) and their children (a shell's commands). */
#define NFGUARD_ALLOW_DEPTH 4

struct nfguard_counter {
	__u64 refused;
	__u64 allowed; /* in scope, but the process or an ancestor is allowlisted */
	__u64 lost;    /* refusals whose event found the ring buffer full */
};

/* One record of nfguard_events per refusal. */
struct nfguard_event {
	__u64 netns_cookie;
	__u32 pid; /* the thread group id, as the initial PID namespace sees it */
	__u32 uid;
	__u32 op;     /* enum nfguard_op */
	__s32 level;  /* setsockopt: the level; netlink socket: the address family */
	__s32 option; /* setsockopt: the option name; netlink socket: the protocol */
	__u32 pad;
	char comm[16];
};

/* Network namespace cookies the blocker guards -> 1. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u64);
	__type(value, __u32);
	__uint(max_entries, 16);
} nfguard_scope SEC(".maps");

/* Thread group ids of Sluice's own processes -> 1. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, 64);
} nfguard_allow SEC(".maps");

/* Slot 0: the node's cgroup (the tracepoint program acts only on its processes). */
struct {
	__uint(type, BPF_MAP_TYPE_CGROUP_ARRAY);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, sizeof(__u32));
	__uint(max_entries, 1);
} nfguard_cgroup SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct nfguard_counter);
	__uint(max_entries, NFGUARD_OP_COUNT);
} nfguard_counts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 64 * 1024);
} nfguard_events SEC(".maps");

#endif
