/* Connect-time load balancing: cgroup socket hooks rewrite a local socket's service
 * address to a backend once, at connect/sendmsg, so its packets need no NAT at all.
 * recvmsg and getpeername turn the backend back into the service for the application. */
#include "common.h"
#include "lb.h"
#include "events.h"

#define ECONNREFUSED 111

/* What a socket talked to, so replies and getpeername show the service, not the backend. */
struct sock_rev_key {
	__u64 cookie;
	union sl_addr backend;
	__be16 port;
	__u16 pad;
	__u32 pad2;
};

struct sock_rev_value {
	union sl_addr frontend;
	__be16 port;
	__u16 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct sock_rev_key);
	__type(value, struct sock_rev_value);
	__uint(max_entries, 65536);
} lb_sock_rev SEC(".maps");

static __always_inline void ctx_addr(struct bpf_sock_addr *ctx, int family, union sl_addr *a)
{
	if (family == 4) {
		sl_addr_from_v4(a, ctx->user_ip4);
		return;
	}
	a->w[0] = ctx->user_ip6[0];
	a->w[1] = ctx->user_ip6[1];
	a->w[2] = ctx->user_ip6[2];
	a->w[3] = ctx->user_ip6[3];
}

static __always_inline void set_ctx_addr(struct bpf_sock_addr *ctx, int family,
					 const union sl_addr *a, __be16 port)
{
	if (family == 4) {
		ctx->user_ip4 = a->w[3];
	} else {
		ctx->user_ip6[0] = a->w[0];
		ctx->user_ip6[1] = a->w[1];
		ctx->user_ip6[2] = a->w[2];
		ctx->user_ip6[3] = a->w[3];
	}
	ctx->user_port = port;
}

/* A service connect or send, translated to BACKEND (or refused without one), with the
 * process that made it. */
static __always_inline void sock_event(struct bpf_sock_addr *ctx, int family, __u8 hook,
				       const union sl_addr *frontend, __be16 port, __u8 proto,
				       const struct lb_backend *backend, __u32 backend_id)
{
	__u8 reason = backend ? 0 : SL_DROP_NO_BACKEND;
	struct sl_flow_event *event;
	__u64 now = bpf_ktime_get_ns();

	datapath_count(hook, reason, 0);
	if (!events_admit(backend ? SL_EVENTS_SOCK : SL_EVENTS_DROPS, now))
		return;
	event = events_reserve(now);
	if (!event)
		return;
	event->dst = *frontend;
	event->dport = port;
	if (backend) {
		event->nat_addr = backend->addr;
		event->nat_port = backend->port;
		event->backend_id = backend_id;
	}
	event->proto = proto;
	event->family = family;
	event->verdict = backend ? SL_VERDICT_TRANSLATED : SL_VERDICT_DROPPED;
	event->reason = reason;
	event->hook = hook;
	event->pid = bpf_get_current_pid_tgid() >> 32;
	event->cgroup_id = bpf_get_current_cgroup_id();
	bpf_get_current_comm(event->comm, sizeof(event->comm));
	events_submit(event);
}

/* 1: let the call proceed (translated or not); 0: refuse it. */
static __always_inline int translate_to_backend(struct bpf_sock_addr *ctx, int family,
						__u8 hook)
{
	struct sock_rev_value frontend = {};
	struct sock_rev_key rev = {};
	struct lb_backend *backend;
	struct lb_value *svc;
	union sl_addr addr;
	__be16 port = (__be16)ctx->user_port;
	__u8 proto = (__u8)ctx->protocol;
	__u32 backend_id = 0;

	ctx_addr(ctx, family, &addr);
	svc = lb_lookup_service(&addr, port, proto);
	/* Source ranges need the client's address: the tc programs judge those packets. */
	if (!svc || svc->flags & LB_F_SOURCE_RANGES)
		return 1;
	backend = lb_select(&addr, port, proto, svc, bpf_get_netns_cookie(ctx),
			    (__u32)bpf_get_socket_cookie(ctx), &backend_id);
	sock_event(ctx, family, hook, &addr, port, proto, backend, backend_id);
	if (!backend) {
		/* No endpoints: fail at once instead of letting the client time out. */
		bpf_set_retval(-ECONNREFUSED);
		return 0;
	}
	rev.cookie = bpf_get_socket_cookie(ctx);
	rev.backend = backend->addr;
	rev.port = backend->port;
	frontend.frontend = addr;
	frontend.port = port;
	bpf_map_update_elem(&lb_sock_rev, &rev, &frontend, BPF_ANY);
	set_ctx_addr(ctx, family, &backend->addr, backend->port);
	return 1;
}

static __always_inline int translate_to_frontend(struct bpf_sock_addr *ctx, int family)
{
	struct sock_rev_key rev = { .cookie = bpf_get_socket_cookie(ctx) };
	struct sock_rev_value *frontend;

	ctx_addr(ctx, family, &rev.backend);
	rev.port = (__be16)ctx->user_port;
	frontend = bpf_map_lookup_elem(&lb_sock_rev, &rev);
	if (frontend)
		set_ctx_addr(ctx, family, &frontend->frontend, frontend->port);
	return 1;
}

SEC("cgroup/connect4")
int sock_connect4(struct bpf_sock_addr *ctx)
{
	return translate_to_backend(ctx, 4, SL_HOOK_SOCK_CONNECT);
}

SEC("cgroup/connect6")
int sock_connect6(struct bpf_sock_addr *ctx)
{
	return translate_to_backend(ctx, 6, SL_HOOK_SOCK_CONNECT);
}

SEC("cgroup/sendmsg4")
int sock_sendmsg4(struct bpf_sock_addr *ctx)
{
	return translate_to_backend(ctx, 4, SL_HOOK_SOCK_SENDMSG);
}

SEC("cgroup/sendmsg6")
int sock_sendmsg6(struct bpf_sock_addr *ctx)
{
	return translate_to_backend(ctx, 6, SL_HOOK_SOCK_SENDMSG);
}

SEC("cgroup/recvmsg4")
int sock_recvmsg4(struct bpf_sock_addr *ctx) { return translate_to_frontend(ctx, 4); }

SEC("cgroup/recvmsg6")
int sock_recvmsg6(struct bpf_sock_addr *ctx) { return translate_to_frontend(ctx, 6); }

SEC("cgroup/getpeername4")
int sock_getpeername4(struct bpf_sock_addr *ctx) { return translate_to_frontend(ctx, 4); }

SEC("cgroup/getpeername6")
int sock_getpeername6(struct bpf_sock_addr *ctx) { return translate_to_frontend(ctx, 6); }

char LICENSE[] SEC("license") = "GPL";
