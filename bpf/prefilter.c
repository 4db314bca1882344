/* The prefilter (source CIDRs, failsafe ports, doNotTrack policy), attachable as XDP
 * (the uplink) and as tc (any device). */
#include "common.h"
#include "prefilter.h"

SEC("xdp")
int prefilter_xdp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;

	if (prefilter_decide(data, data_end, ctx->ingress_ifindex) == PREFILTER_DROP)
		return XDP_DROP;
	return XDP_PASS;
}

SEC("tc")
int prefilter_tc(struct __sk_buff *skb)
{
	void *data, *data_end;

	/* Headers may sit in paged data; the parser needs them (and the ports) linear. */
	bpf_skb_pull_data(skb, ETH_HLEN + 60 + 8);
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;

	if (prefilter_decide(data, data_end, skb->ingress_ifindex ?: skb->ifindex) == PREFILTER_DROP)
		return TC_ACT_SHOT;
	return TC_ACT_OK;
}

char LICENSE[] SEC("license") = "GPL";
