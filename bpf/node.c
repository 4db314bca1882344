/* The node datapath: programs on pod veths, the tunnel device and the uplink.
 * One source for IPv4 and IPv6; behaviour is chosen by map entries and rodata. */
#include "common.h"
#include "parse.h"
#include "endpoints.h"
#include "routing.h"

static __always_inline int parse_skb(struct __sk_buff *skb, struct sl_packet *pkt)
{
	void *data, *data_end;

	bpf_skb_pull_data(skb, ETH_HLEN + sizeof(struct ipv6hdr));
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	return sl_parse(data, data_end, pkt);
}

/* tc ingress of a pod's host-side veth: everything the pod sends. */
SEC("tc")
int from_endpoint(struct __sk_buff *skb)
{
	struct sl_packet pkt = {};
	int parsed = parse_skb(skb, &pkt);

	if (parsed == SL_PARSE_NOT_IP)
		return TC_ACT_OK;
	if (parsed == SL_PARSE_MALFORMED)
		return TC_ACT_SHOT;
	return route_and_deliver(skb, &pkt, HOOK_INGRESS);
}

/* tc egress of the node's host device (sl-host): the host's own packets to pod CIDRs are
 * routed onto it, so the node reaches its pods without a host route per pod. */
SEC("tc")
int from_host(struct __sk_buff *skb)
{
	struct sl_packet pkt = {};

	if (parse_skb(skb, &pkt) != SL_PARSE_OK)
		return TC_ACT_SHOT;
	return route_and_deliver(skb, &pkt, HOOK_EGRESS);
}

/* tc ingress of the tunnel device and the uplink: deliver to local pods directly. */
SEC("tc")
int from_network(struct __sk_buff *skb)
{
	struct sl_packet pkt = {};
	struct endpoint_info *ep;

	if (parse_skb(skb, &pkt) != SL_PARSE_OK)
		return TC_ACT_OK;
	ep = endpoint_lookup(&pkt.daddr);
	if (!ep)
		return TC_ACT_OK;
	return deliver_local(skb, ep, HOOK_INGRESS);
}

char LICENSE[] SEC("license") = "GPL";
