/* The node datapath: programs on pod veths, the tunnel device and the uplink.
 * One source for IPv4 and IPv6; behaviour is chosen by map entries and rodata. */
#include "common.h"
#include "parse.h"
#include "endpoints.h"
#include "routing.h"
#include "services.h"
#include "dsr.h"
#include "policy.h"
#include "events.h"
#include "masq.h"

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
	s->policy.drop_reason = 0;
	s->policy.new_flow = 0;
	s->policy.rule_id = 0;
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

#define TCP_FIN 0x01
#define TCP_SYN 0x02
#define TCP_RST 0x04
#define TCP_ACK 0x10

/* A flow's first packet or its end: what flow events show of forwarded traffic. */
static __always_inline bool flow_edge(const struct node_scratch *s)
{
	__u8 flags = s->pkt.tcp_flags;

	if (s->pkt.l4_proto == IPPROTO_TCP)
		return (flags & (TCP_FIN | TCP_RST)) || (flags & (TCP_SYN | TCP_ACK)) == TCP_SYN;
	return s->pkt.new_flow || s->policy.new_flow;
}

/* Global, so the event's type stays in the object's BTF for the agent to check. */
__noinline int describe(struct sl_flow_event *event, struct __sk_buff *skb,
			const struct node_scratch *s, __u32 hook, __u32 reason)
{
	const struct sl_packet *pkt;

	if (!event || !skb || !s)
		return 0;
	pkt = &s->pkt;

	event->src = pkt->saddr;
	event->sport = pkt->sport;
	if (s->res.frontend_port) {
		/* Translated: the frontend the client asked for, and the backend it got. */
		event->dst = s->res.frontend;
		event->dport = s->res.frontend_port;
		event->nat_addr = pkt->daddr;
		event->nat_port = pkt->dport;
		event->backend_id = s->res.backend_id;
	} else {
		event->dst = pkt->daddr;
		event->dport = pkt->dport;
	}
	event->proto = pkt->l4_proto;
	event->family = pkt->family;
	event->verdict = reason ? SL_VERDICT_DROPPED : SL_VERDICT_FORWARDED;
	event->reason = reason;
	event->hook = hook;
	event->tcp_flags = pkt->tcp_flags;
	event->ifindex = skb->ifindex;
	event->rule_id = s->policy.rule_id;
	event->bytes = skb->len;
	return 0;
}

/* Every packet a hook decided: counted by hook and drop reason; drops and the edges of
 * forwarded flows go to the agent as flow events. Returns RET, the hook's verdict. */
__noinline int observe(struct __sk_buff *skb, struct node_scratch *s, __u32 hook, int ret)
{
	struct sl_flow_event *event;
	__u8 reason;

	if (!skb || !s)
		return ret;
	reason = s->pkt.drop_reason ?: s->res.reason ?: s->policy.drop_reason;
	if (!reason && ret == TC_ACT_SHOT)
		reason = SL_DROP_UNKNOWN;
	datapath_count(hook, reason, skb->len);
	if (!reason && !flow_edge(s))
		return ret;
	if (!events_admit(reason ? SL_EVENTS_DROPS : SL_EVENTS_FLOWS, sl_now(&s->pkt.now)))
		return ret;
	event = events_reserve(s->pkt.now);
	if (!event)
		return ret;
	describe(event, skb, s, hook, reason);
	events_submit(event);
	return ret;
}

/* What from_endpoint does with a parsed packet. */
static __always_inline int endpoint_sends(struct __sk_buff *skb, struct node_scratch *s,
					  int parsed)
{
	int verdict, outcome;
	bool judged;

	if (parsed == SL_PARSE_MALFORMED) {
		s->pkt.drop_reason = SL_DROP_MALFORMED;
		return TC_ACT_SHOT;
	}
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

/* tc ingress of a pod's host-side veth: everything the pod sends. */
SEC("tc")
int from_endpoint(struct __sk_buff *skb)
{
	struct node_scratch *s;
	int parsed;

	s = begin(skb, &parsed);
	if (!s)
		return TC_ACT_SHOT;
	if (parsed == SL_PARSE_NOT_IP)
		return TC_ACT_OK;
	return observe(skb, s, SL_HOOK_FROM_ENDPOINT, endpoint_sends(skb, s, parsed));
}

/* tc egress of the node's host device (sl-host): the host's own packets to pod CIDRs are
 * routed onto it, so the node reaches its pods without a host route per pod. */
SEC("tc")
int from_host(struct __sk_buff *skb)
{
	struct node_scratch *s;
	int parsed, outcome;

	s = begin(skb, &parsed);
	if (!s)
		return TC_ACT_SHOT;
	if (parsed != SL_PARSE_OK) {
		s->pkt.drop_reason = SL_DROP_MALFORMED;
		return observe(skb, s, SL_HOOK_FROM_HOST, TC_ACT_SHOT);
	}
	if (policy_begin(skb, &s->policy, &s->pkt, POLICY_AT_HOST)) {
		outcome = policy_enforce(&s->policy, 1, sl_now(&s->pkt.now));
		if (outcome != POLICY_PASS)
			return observe(skb, s, SL_HOOK_FROM_HOST,
				       refuse(skb, s, outcome, POLICY_AT_HOST));
	}
	return observe(skb, s, SL_HOOK_FROM_HOST,
		       route_and_deliver(skb, &s->pkt, HOOK_EGRESS, false));
}

/* A backend on another node for a flow from outside: through the tunnel, marked so that
 * node sends the replies back here for reverse translation; or, for direct server return,
 * carrying the frontend so that node answers the client itself; or, on a node without
 * this datapath, from this node's address (replies come back to it as to any peer). */
static __always_inline int forward_remote(struct __sk_buff *skb, struct sl_packet *pkt,
					  struct svc_result *res)
{
	struct route_entry *route = route_lookup(&pkt->daddr);

	if (!route || route->kind == ROUTE_LOCAL_PODS)
		return sl_dropping(pkt, TC_ACT_SHOT, SL_DROP_NO_ENDPOINT);
	if (res->flags & CT_F_MASQ) {
		/* That node routes its replies to our address, where masq_reverse takes them. */
		if (masq_service_snat(skb, pkt) < 0)
			return TC_ACT_SHOT;
		return route_and_deliver(skb, pkt, HOOK_INGRESS, false);
	}
	if (res->flags & CT_F_DSR) {
		if (dsr_add(skb, pkt, &res->frontend, res->frontend_port) < 0)
			return sl_dropping(pkt, TC_ACT_SHOT, SL_DROP_ENCAP);
		return route_and_deliver(skb, pkt, HOOK_INGRESS, false);
	}
	if (!route->ifindex)
		return route_and_deliver(skb, pkt, HOOK_INGRESS, false);
	return sl_dropping(pkt, deliver_tunnel(skb, route->ifindex, &route->next_hop, service_vni),
			   SL_DROP_ENCAP);
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

/* What from_network does with a parsed packet. */
static __always_inline int network_sends(struct __sk_buff *skb, struct node_scratch *s)
{
	struct endpoint_info *ep;
	int carried, verdict, outcome = POLICY_UNKNOWN, masq;
	bool judged;

	/* A reply to a masqueraded flow: from here on it is the pod's flow again. */
	masq = masq_reverse(skb, &s->pkt);
	if (masq < 0)
		return TC_ACT_SHOT;
	s->res.dsr_ok = 1;
	__builtin_memset(&s->origin, 0, sizeof(s->origin));
	s->origin_port = 0;
	carried = dsr_take(skb, &s->pkt, &s->origin, &s->origin_port);
	if (carried < 0)
		return sl_dropping(&s->pkt, TC_ACT_SHOT, SL_DROP_MALFORMED);
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
			return sl_dropping(&s->pkt, deliver_local(skb, ep, HOOK_INGRESS),
					   SL_DROP_DELIVER);
		return forward_remote(skb, &s->pkt, &s->res);
	}
	if (verdict != SVC_NONE)
		return deliver_answered(skb, &s->pkt, &s->res, verdict);
	ep = endpoint_lookup(&s->pkt.daddr);
	if (!ep)
		return TC_ACT_OK;
	if (!masq)
		masq_note_inbound(skb, &s->pkt);
	return sl_dropping(&s->pkt, deliver_local(skb, ep, HOOK_INGRESS), SL_DROP_DELIVER);
}

/* tc ingress of the tunnel device and the uplink: service traffic from outside and from
 * other nodes, and delivery to local pods. */
SEC("tc")
int from_network(struct __sk_buff *skb)
{
	struct node_scratch *s;
	int parsed;

	s = begin(skb, &parsed);
	if (!s || parsed != SL_PARSE_OK)
		return TC_ACT_OK;
	return observe(skb, s, SL_HOOK_FROM_NETWORK, network_sends(skb, s));
}

/* tc egress of the uplink: what leaves a host interface, the host's own packets
 * (POL_EGRESS) and what it forwards (POL_FORWARD_EGRESS). Flows are recorded, so their
 * replies arriving on from_network pass. Then masquerade: pod traffic leaving the cluster
 * takes the node's address (every path out of the node passes here: the host stack's
 * forwarding and the datapath's FIB redirects alike). */
SEC("tc")
int to_network(struct __sk_buff *skb)
{
	struct node_scratch *s;
	int parsed, outcome, masq;
	bool judged;

	judged = host_interface_flags(skb->ifindex) & HOST_IF_ENDPOINT;
	if (!judged && !masq_active())
		return TC_ACT_OK;
	s = begin(skb, &parsed);
	if (!s || parsed != SL_PARSE_OK)
		return TC_ACT_OK;
	judged = judged && policy_begin(skb, &s->policy, &s->pkt, POLICY_AT_UPLINK) &&
		 !policy_is_overlay(&s->pkt, &s->pkt.daddr);
	if (judged) {
		s->policy.here.out_ifindex = skb->ifindex;
		outcome = policy_enforce(&s->policy, 1, sl_now(&s->pkt.now));
		if (outcome != POLICY_PASS)
			return observe(skb, s, SL_HOOK_TO_NETWORK,
				       refuse(skb, s, outcome, POLICY_AT_UPLINK));
	}
	masq = masq_snat(skb, &s->pkt);
	if (masq < 0)
		return observe(skb, s, SL_HOOK_TO_NETWORK, TC_ACT_SHOT);
	if (!judged && !masq)
		return TC_ACT_OK;
	return observe(skb, s, SL_HOOK_TO_NETWORK, TC_ACT_OK);
}

char LICENSE[] SEC("license") = "GPL";
