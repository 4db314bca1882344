/* The node datapath: programs on pod veths, the tunnel device and the uplink.
 * One source for IPv4 and IPv6; behaviour is chosen by map entries and rodata. */
#include "common.h"
#include "parse.h"
#include "endpoints.h"
#include "routing.h"
#include "services.h"
#include "dsr.h"

static __always_inline int parse_skb(struct __sk_buff *skb, struct sl_packet *pkt)
{
	void *data, *data_end;

	/* Fails harmlessly on shorter packets, which are linear anyway. */
	bpf_skb_pull_data(skb, ETH_HLEN + 60 + 8);
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	return sl_parse(data, data_end, pkt);
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

/* tc ingress of a pod's host-side veth: everything the pod sends. */
SEC("tc")
int from_endpoint(struct __sk_buff *skb)
{
	struct svc_result res = {};
	struct sl_packet pkt = {};
	int parsed = parse_skb(skb, &pkt);
	int verdict;

	if (parsed == SL_PARSE_NOT_IP)
		return TC_ACT_OK;
	if (parsed == SL_PARSE_MALFORMED)
		return TC_ACT_SHOT;
	verdict = svc_translate(skb, &pkt, &res);
	if (verdict == SVC_FORWARD || verdict == SVC_NONE)
		return route_and_deliver(skb, &pkt, HOOK_INGRESS, false);
	return deliver_answered(skb, &pkt, &res, verdict);
}

/* tc egress of the node's host device (sl-host): the host's own packets to pod CIDRs are
 * routed onto it, so the node reaches its pods without a host route per pod. */
SEC("tc")
int from_host(struct __sk_buff *skb)
{
	struct sl_packet pkt = {};

	if (parse_skb(skb, &pkt) != SL_PARSE_OK)
		return TC_ACT_SHOT;
	return route_and_deliver(skb, &pkt, HOOK_EGRESS, false);
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

/* tc ingress of the tunnel device and the uplink: service traffic from outside and from
 * other nodes, and delivery to local pods. */
SEC("tc")
int from_network(struct __sk_buff *skb)
{
	struct svc_result res = { .dsr_ok = 1 };
	struct sl_packet pkt = {};
	union sl_addr origin = {};
	__be16 origin_port = 0;
	struct endpoint_info *ep;
	int carried, verdict;

	if (parse_skb(skb, &pkt) != SL_PARSE_OK)
		return TC_ACT_OK;
	carried = dsr_take(skb, &pkt, &origin, &origin_port);
	if (carried < 0)
		return TC_ACT_SHOT;
	if (carried > 0) {
		if (endpoint_lookup(&pkt.daddr))
			svc_note_forwarded(&pkt, CT_REPLY_SNAT, &origin, origin_port, NULL, 0);
	} else if (tunnel_source(skb, service_vni, &origin) && endpoint_lookup(&pkt.daddr)) {
		svc_note_forwarded(&pkt, CT_RETURN_TUNNEL, NULL, 0, &origin, skb->ifindex);
	}

	verdict = svc_translate(skb, &pkt, &res);
	if (verdict == SVC_FORWARD) {
		ep = endpoint_lookup(&pkt.daddr);
		if (ep)
			return deliver_local(skb, ep, HOOK_INGRESS);
		return forward_remote(skb, &pkt, &res);
	}
	if (verdict != SVC_NONE)
		return deliver_answered(skb, &pkt, &res, verdict);
	ep = endpoint_lookup(&pkt.daddr);
	if (!ep)
		return TC_ACT_OK;
	return deliver_local(skb, ep, HOOK_INGRESS);
}

char LICENSE[] SEC("license") = "GPL";
