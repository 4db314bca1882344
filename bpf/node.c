/* The node datapath: programs on pod veths, the tunnel device and the uplink.
 * One source for IPv4 and IPv6; behaviour is chosen by map entries and rodata. */
#include "common.h"
#include "parse.h"
#include "endpoints.h"
#include "routing.h"
#include "services.h"
#include "dsr.h"
#include "policy.h"

/* A program's working memory: the stack (512 bytes, shared with every function it
 * calls) cannot hold the parsed packet, the service result and the policy's state. */
struct node_scratch {
	struct sl_packet pkt;
	struct svc_result res;
	union sl_addr origin; /* from_network: the frontend or node a packet was sent by */
	__be16 origin_port;
	__u16 pad;
	__u32 pad2;
	struct policy_scratch policy;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct node_scratch);
	__uint(max_entries, 1);
} node_scratch SEC(".maps");

#define PULL_LEN (ETH_HLEN + 60 + 8)

/* The scratch, cleared, with the packet parsed into it; NULL when there is none. */
static __always_inline struct node_scratch *begin(struct __sk_buff *skb, int *parsed)
{
	struct node_scratch *s;
	void *data, *data_end;
	__u32 zero = 0;

	s = bpf_map_lookup_elem(&node_scratch, &zero);
	if (!s)
		return NULL;
	__builtin_memset(&s->pkt, 0, sizeof(s->pkt));
	__builtin_memset(&s->res, 0, sizeof(s->res));
	/* The headers parsing may read, in the linear part. A packet shorter than that is
	 * linear anyway (the pull would fail harmlessly); one whose headers already are
	 * needs no helper call (writes make the packet writable themselves). */
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	if (skb->len >= PULL_LEN && data + PULL_LEN > data_end)
		bpf_skb_pull_data(skb, PULL_LEN);
	/* Reload the packet pointers: clang must not reuse what it computed above. */
	asm volatile("" : "+r"(skb));
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	*parsed = sl_parse(data, data_end, &s->pkt);
	return s;
}

/* Service packets already answered, replies and returns: where they go now. */
static __always_inline int deliver_answered(struct __sk_buff *skb, struct sl_packet *pkt,
					    struct svc_result *res, int verdict)
{
	if (verdict == SVC_RETURN)
		return deliver_tunnel(skb, res->ifindex, &res->peer, tunnel_vni);
	if (verdict == SVC_REPLY)
		/* To a client that may be outside the cluster, from a frontend address the
		 * host may own: forward it ourselves rather than have the host judge it. */
		return route_and_deliver(skb, pkt, HOOK_INGRESS, true);
	return res->ret;
}

/* Policy after service translation: a forwarded packet names its flow as it is now
 * (after DNAT), a reply as it came (before the reverse SNAT). Replies conntrack knows
 * but policy does not (flows older than the policy) are not judged as new flows. */
static __always_inline int police(struct node_scratch *s, int verdict)
{
	if (verdict == SVC_FORWARD)
		policy_retuple(&s->policy, &s->pkt);
	return policy_enforce(&s->policy, verdict == SVC_FORWARD || verdict == SVC_NONE,
			      sl_now(&s->pkt.now));
}

/* Put a translated packet back as it arrived, so an answer goes to its sender as the
 * sender addressed it. */
__noinline int untranslate(struct __sk_buff *skb, struct node_scratch *s)
{
	struct ct_key *raw;

	if (!skb || !s)
		return -1;
	raw = &s->policy.raw;
	if ((!sl_addr_eq(&s->pkt.saddr, &raw->src) || s->pkt.sport != raw->sport) &&
	    nat_rewrite(skb, &s->pkt, NAT_SRC, &raw->src, raw->sport) < 0)
		return -1;
	if ((!sl_addr_eq(&s->pkt.daddr, &raw->dst) || s->pkt.dport != raw->dport) &&
	    nat_rewrite(skb, &s->pkt, NAT_DST, &raw->dst, raw->dport) < 0)
		return -1;
	return 0;
}

/* A packet policy refused. A TCP packet of a flow a policy change cut is answered with
 * a reset toward its sender: out of the device it came from (from a pod, from the
 * uplink), into the tunnel toward a sender on another node, or into the host (HOOK). */
static __always_inline int refuse(struct __sk_buff *skb, struct node_scratch *s, int outcome,
				  __u32 hook)
{
	struct route_entry *route;
	int ret;

	if (outcome != POLICY_CUT || s->pkt.l4_proto != IPPROTO_TCP)
		return TC_ACT_SHOT;
	if (untranslate(skb, s) < 0)
		return TC_ACT_SHOT;
	ret = reject_tcp(skb, s->pkt.family, s->pkt.l4_off);
	if (ret != TC_ACT_REDIRECT)
		return ret;
	if (hook == POLICY_AT_HOST || hook == POLICY_AT_UPLINK)
		return bpf_redirect(skb->ifindex, BPF_F_INGRESS);
	if (hook == POLICY_AT_NETWORK) {
		route = route_lookup(&s->policy.raw.src);
		if (route && route->kind == ROUTE_REMOTE_TUNNEL)
			return deliver_tunnel(skb, route->ifindex, &route->next_hop, tunnel_vni);
	}
	return ret;
}

/* tc ingress of a pod's host-side veth: everything the pod sends. */
SEC("tc")
int from_endpoint(struct __sk_buff *skb)
{
	struct node_scratch *s;
	int parsed, verdict, outcome;
	bool judged;

	s = begin(skb, &parsed);
	if (!s)
		return TC_ACT_SHOT;
	if (parsed == SL_PARSE_NOT_IP)
		return TC_ACT_OK;
	if (parsed == SL_PARSE_MALFORMED)
		return TC_ACT_SHOT;
	judged = policy_begin(skb, &s->policy, &s->pkt, POLICY_AT_ENDPOINT);
	verdict = svc_translate(skb, &s->pkt, &s->res);
	if (verdict == SVC_DONE)
		return s->res.ret;
	if (judged) {
		outcome = police(s, verdict);
		if (outcome != POLICY_PASS && outcome != POLICY_UNKNOWN)
			return refuse(skb, s, outcome, POLICY_AT_ENDPOINT);
	}
	if (verdict == SVC_FORWARD || verdict == SVC_NONE)
		return route_and_deliver(skb, &s->pkt, HOOK_INGRESS, false);
	return deliver_answered(skb, &s->pkt, &s->res, verdict);
}

/* tc egress of the node's host device (sl-host): the host's own packets to pod CIDRs are
 * routed onto it, so the node reaches its pods without a host route per pod. */
SEC("tc")
int from_host(struct __sk_buff *skb)
{
	struct node_scratch *s;
	int parsed, outcome;

	s = begin(skb, &parsed);
	if (!s || parsed != SL_PARSE_OK)
		return TC_ACT_SHOT;
	if (policy_begin(skb, &s->policy, &s->pkt, POLICY_AT_HOST)) {
		outcome = policy_enforce(&s->policy, 1, sl_now(&s->pkt.now));
		if (outcome != POLICY_PASS)
			return refuse(skb, s, outcome, POLICY_AT_HOST);
	}
	return route_and_deliver(skb, &s->pkt, HOOK_EGRESS, false);
}

/* A backend on another node for a flow from outside: through the tunnel, marked so that
 * node sends the replies back here for reverse translation; or, for direct server return,
 * carrying the frontend so that node answers the client itself. */
static __always_inline int forward_remote(struct __sk_buff *skb, struct sl_packet *pkt,
					  struct svc_result *res)
{
	struct route_entry *route = route_lookup(&pkt->daddr);

	if (!route || route->kind == ROUTE_LOCAL_PODS)
		return TC_ACT_SHOT;
	if (res->flags & CT_F_DSR) {
		if (dsr_add(skb, pkt, &res->frontend, res->frontend_port) < 0)
			return TC_ACT_SHOT;
		return route_and_deliver(skb, pkt, HOOK_INGRESS, false);
	}
	if (!route->ifindex)
		return route_and_deliver(skb, pkt, HOOK_INGRESS, false);
	return deliver_tunnel(skb, route->ifindex, &route->next_hop, service_vni);
}

/* A host interface's view of a packet arriving on it, before service translation: a
 * known flow's verdict, or for a new one its preDNAT policy. POLICY_UNKNOWN: judge the
 * flow after translation. */
static __always_inline int police_arrival(struct __sk_buff *skb, struct node_scratch *s)
{
	int outcome;

	s->policy.here.in_ifindex = skb->ifindex;
	s->policy.here.orig_dport = policy_port(&s->policy.key);
	outcome = policy_enforce(&s->policy, 0, sl_now(&s->pkt.now));
	if (outcome != POLICY_UNKNOWN)
		return outcome;
	/* A service flow's later packets name it only after translation. */
	if (bpf_map_lookup_elem(&conntrack, &s->policy.key))
		return POLICY_UNKNOWN;
	outcome = policy_prednat(&s->policy);
	return outcome == POLICY_PASS ? POLICY_UNKNOWN : outcome;
}

/* tc ingress of the tunnel device and the uplink: service traffic from outside and from
 * other nodes, and delivery to local pods. */
SEC("tc")
int from_network(struct __sk_buff *skb)
{
	struct endpoint_info *ep;
	struct node_scratch *s;
	int parsed, carried, verdict, outcome = POLICY_UNKNOWN;
	bool judged;

	s = begin(skb, &parsed);
	if (!s || parsed != SL_PARSE_OK)
		return TC_ACT_OK;
	s->res.dsr_ok = 1;
	__builtin_memset(&s->origin, 0, sizeof(s->origin));
	s->origin_port = 0;
	carried = dsr_take(skb, &s->pkt, &s->origin, &s->origin_port);
	if (carried < 0)
		return TC_ACT_SHOT;
	if (carried > 0) {
		if (endpoint_lookup(&s->pkt.daddr))
			svc_note_forwarded(&s->pkt, CT_REPLY_SNAT, &s->origin, s->origin_port, NULL, 0);
	} else if (tunnel_source(skb, service_vni, &s->origin) && endpoint_lookup(&s->pkt.daddr)) {
		svc_note_forwarded(&s->pkt, CT_RETURN_TUNNEL, NULL, 0, &s->origin, skb->ifindex);
	}

	judged = policy_begin(skb, &s->policy, &s->pkt, POLICY_AT_NETWORK);
	if (judged && host_interface_flags(skb->ifindex) & HOST_IF_ENDPOINT) {
		if (policy_is_overlay(&s->pkt, &s->pkt.saddr)) {
			judged = false;
		} else {
			outcome = police_arrival(skb, s);
			if (outcome != POLICY_UNKNOWN) {
				if (outcome != POLICY_PASS)
					return refuse(skb, s, outcome, POLICY_AT_NETWORK);
				judged = false;
			}
		}
	}

	verdict = svc_translate(skb, &s->pkt, &s->res);
	if (verdict == SVC_DONE)
		return s->res.ret;
	if (judged) {
		outcome = police(s, verdict);
		if (outcome != POLICY_PASS && outcome != POLICY_UNKNOWN)
			return refuse(skb, s, outcome, POLICY_AT_NETWORK);
	}
	if (verdict == SVC_FORWARD) {
		ep = endpoint_lookup(&s->pkt.daddr);
		if (ep)
			return deliver_local(skb, ep, HOOK_INGRESS);
		return forward_remote(skb, &s->pkt, &s->res);
	}
	if (verdict != SVC_NONE)
		return deliver_answered(skb, &s->pkt, &s->res, verdict);
	ep = endpoint_lookup(&s->pkt.daddr);
	if (!ep)
		return TC_ACT_OK;
	return deliver_local(skb, ep, HOOK_INGRESS);
}

/* tc egress of the uplink: what leaves a host interface, the host's own packets
 * (POL_EGRESS) and what it forwards (POL_FORWARD_EGRESS). Flows are recorded, so their
 * replies arriving on from_network pass. */
SEC("tc")
int to_network(struct __sk_buff *skb)
{
	struct node_scratch *s;
	int parsed, outcome;

	if (!(host_interface_flags(skb->ifindex) & HOST_IF_ENDPOINT))
		return TC_ACT_OK;
	s = begin(skb, &parsed);
	if (!s || parsed != SL_PARSE_OK)
		return TC_ACT_OK;
	if (!policy_begin(skb, &s->policy, &s->pkt, POLICY_AT_UPLINK))
		return TC_ACT_OK;
	if (policy_is_overlay(&s->pkt, &s->pkt.daddr))
		return TC_ACT_OK;
	s->policy.here.out_ifindex = skb->ifindex;
	outcome = policy_enforce(&s->policy, 1, sl_now(&s->pkt.now));
	if (outcome != POLICY_PASS)
		return refuse(skb, s, outcome, POLICY_AT_UPLINK);
	return TC_ACT_OK;
}

char LICENSE[] SEC("license") = "GPL";
