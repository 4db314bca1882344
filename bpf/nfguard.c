/* The netfilter blocker: refuses changes to netfilter rules in the node's network
 * namespace, except by Sluice's own processes.
 *
 * An LSM program would refuse these cleanly, but this kernel refuses LSM (and
 * lsm_cgroup, fentry) programs, so the blocker is built on hooks it allows:
 *
 * - cgroup/setsockopt (attached to the node's cgroup): the legacy tools hand the kernel a
 *   whole table with one setsockopt (IPT_SO_SET_REPLACE and its IPv6, ARP and bridge
 *   siblings); it fails with EPERM. Counter updates (SO_SET_ADD_COUNTERS) pass: they
 *   change no rule.
 * - tracepoint syscalls/sys_enter_socket: nftables and iptables-nft talk netlink
 *   (NETLINK_NETFILTER), which no cgroup hook sees: cgroup/sock_create runs for
 *   AF_INET/AF_INET6 sockets only, and a netlink message to the kernel is carried out
 *   inside sendmsg. So a process of the node's cgroup that opens a NETLINK_NETFILTER
 *   socket in a guarded namespace is sent SIGKILL at the socket() call; it dies on the way
 *   back to user space, before it can send anything. Readers (nft list, iptables-nft -L,
 *   conntrack) die too.
 *
 * A refusal is counted (nfguard_counts) and reported (nfguard_events). */
#include "common.h"
#include "nfguard.h"
#include <bpf/bpf_core_read.h>

#define SOL_IP 0
#define SOL_IPV6 41
#define IPT_SO_SET_REPLACE 64  /* also IP6T_SO_SET_REPLACE at SOL_IPV6 */
#define ARPT_SO_SET_REPLACE 96
#define EBT_SO_SET_ENTRIES 128

#define AF_NETLINK 16
#define NETLINK_NETFILTER 12
#define SIGKILL 9

static __always_inline bool in_scope(__u64 netns_cookie)
{
	return bpf_map_lookup_elem(&nfguard_scope, &netns_cookie) != NULL;
}

/* The current process, or one of its nearest ancestors, is Sluice's own. */
static __always_inline bool allowlisted(void)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	__u32 tgid;

	for (int depth = 0; depth <= NFGUARD_ALLOW_DEPTH; depth++) {
		if (!task)
			return false;
		tgid = BPF_CORE_READ(task, tgid);
		if (!tgid)
			return false;
		if (bpf_map_lookup_elem(&nfguard_allow, &tgid))
			return true;
		task = BPF_CORE_READ(task, real_parent);
	}
	return false;
}

static __always_inline struct nfguard_counter *counter(__u32 op)
{
	return bpf_map_lookup_elem(&nfguard_counts, &op);
}

static __always_inline void count_allowed(__u32 op)
{
	struct nfguard_counter *c = counter(op);

	if (c)
		c->allowed++;
}

/* Global, so that it is not inlined: its signature puts struct nfguard_event into the
 * object's BTF, where the agent's layout is checked. */
__noinline int nfguard_describe(struct nfguard_event *event, __u64 netns_cookie, __u32 op,
				int level, int option)
{
	if (!event)
		return 0;
	event->netns_cookie = netns_cookie;
	event->pid = bpf_get_current_pid_tgid() >> 32;
	event->uid = (__u32)bpf_get_current_uid_gid();
	event->op = op;
	event->level = level;
	event->option = option;
	event->pad = 0;
	bpf_get_current_comm(event->comm, sizeof(event->comm));
	return 0;
}

static __always_inline void report_refusal(__u32 op, __u64 netns_cookie, int level, int option)
{
	struct nfguard_counter *c = counter(op);
	struct nfguard_event *event;

	if (c)
		c->refused++;
	event = bpf_ringbuf_reserve(&nfguard_events, sizeof(*event), 0);
	if (!event) {
		if (c)
			c->lost++;
		return;
	}
	nfguard_describe(event, netns_cookie, op, level, option);
	bpf_ringbuf_submit(event, 0);
}

static __always_inline bool replaces_rules(int level, int optname)
{
	if (level == SOL_IP)
		return optname == IPT_SO_SET_REPLACE || optname == ARPT_SO_SET_REPLACE ||
		       optname == EBT_SO_SET_ENTRIES;
	return level == SOL_IPV6 && optname == IPT_SO_SET_REPLACE;
}

SEC("cgroup/setsockopt")
int nfguard_setsockopt(struct bpf_sockopt *ctx)
{
	int level = ctx->level;
	int optname = ctx->optname;
	__u64 cookie;

	/* 0: the kernel takes the caller's own buffer, whatever its size. */
	ctx->optlen = 0;
	if (!replaces_rules(level, optname))
		return 1;
	cookie = bpf_get_netns_cookie(ctx); /* the socket's namespace: where the rules go */
	if (!in_scope(cookie))
		return 1;
	if (allowlisted()) {
		count_allowed(NFGUARD_OP_SETSOCKOPT);
		return 1;
	}
	report_refusal(NFGUARD_OP_SETSOCKOPT, cookie, level, optname);
	return 0; /* EPERM */
}

SEC("tracepoint/syscalls/sys_enter_socket")
int nfguard_netlink_socket(struct trace_event_raw_sys_enter *ctx)
{
	struct task_struct *task;
	int family = (int)ctx->args[0];
	int protocol = (int)ctx->args[2];
	__u64 cookie;

	if (family != AF_NETLINK || protocol != NETLINK_NETFILTER)
		return 0;
	/* 1: under the cgroup in slot 0; 0 or an error (empty slot): leave it alone. */
	if (bpf_current_task_under_cgroup(&nfguard_cgroup, 0) != 1)
		return 0;
	/* A new socket belongs to the caller's current namespace. */
	task = (struct task_struct *)bpf_get_current_task();
	cookie = BPF_CORE_READ(task, nsproxy, net_ns, net_cookie);
	if (!in_scope(cookie))
		return 0;
	if (allowlisted()) {
		count_allowed(NFGUARD_OP_NETLINK_SOCKET);
		return 0;
	}
	bpf_send_signal(SIGKILL);
	report_refusal(NFGUARD_OP_NETLINK_SOCKET, cookie, family, protocol);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
