/* Source-CIDR prefilter, attachable as XDP (uplink) and as tc (any device). */
#include "common.h"
#include "prefilter.h"

SEC("xdp")
int prefilter_xdp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;

	return prefilter_decide(data, data_end) == PREFILTER_DROP ? XDP_DROP : XDP_PASS;
}

SEC("tc")
int prefilter_tc(struct __sk_buff *skb)
{
	void *data, *data_end;

	/* Headers may sit in paged data; the parser needs them linear. */
	bpf_skb_pull_data(skb, ETH_HLEN + sizeof(struct ipv6hdr));
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;

	return prefilter_decide(data, data_end) == PREFILTER_DROP ? TC_ACT_SHOT : TC_ACT_OK;
}

char LICENSE[] SEC("license") = "GPL";
