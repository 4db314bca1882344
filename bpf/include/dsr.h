/* Direct server return: the node that load-balances an outside client's flow to a
 * backend on another node tells that node the frontend, in an IPv4 option or an IPv6
 * destination option; the backend's node strips it, remembers the frontend and answers
 * the client directly from it. Option numbers are RFC 4727's experimental ones. */
#ifndef SLUICE_DSR_H
#define SLUICE_DSR_H

#include "common.h"
#include "csum.h"
#include "parse.h"

#define DSR_OPT4_TYPE 0x9e /* copied on fragmentation, class 0, number 30 */
#define DSR_OPT6_TYPE 0x1e /* unknown to a receiver: skip it */
#define IPPROTO_DSTOPTS 60

struct dsr_opt4 {
	__u8 type;
	__u8 len;
	__be16 port;
	__be32 addr;
};

/* A whole destination options header: our option, then PadN to a multiple of 8. */
struct dsr_ext6 {
	__u8 nexthdr;
	__u8 hdrlen; /* in 8 bytes, not counting the first 8 */
	__u8 type;
	__u8 len;
	__be16 port;
	__u8 addr[16];
	__u8 pad_type; /* PadN */
	__u8 pad_len;
};

/* Carry FRONTEND:PORT in the packet (after the IP header). */
static __always_inline int dsr_add(struct __sk_buff *skb, struct sl_packet *pkt,
				   const union sl_addr *frontend, __be16 port)
{
	if (pkt->family == 4) {
		struct dsr_opt4 opt = { .type = DSR_OPT4_TYPE, .len = sizeof(opt), .port = port,
					.addr = frontend->w[3] };
		struct { struct iphdr ip; struct dsr_opt4 opt; } hdr;

		if (bpf_skb_load_bytes(skb, ETH_HLEN, &hdr.ip, sizeof(hdr.ip)) < 0 ||
		    hdr.ip.ihl != 5)
			return -1;
		hdr.opt = opt;
		hdr.ip.ihl = 5 + sizeof(opt) / 4;
		hdr.ip.tot_len = bpf_htons(bpf_ntohs(hdr.ip.tot_len) + sizeof(opt));
		hdr.ip.check = 0;
		hdr.ip.check = csum_fold(csum_add_buf(&hdr, sizeof(hdr), 0));
		if (bpf_skb_adjust_room(skb, sizeof(opt), BPF_ADJ_ROOM_NET, 0) < 0)
			return -1;
		if (bpf_skb_store_bytes(skb, ETH_HLEN, &hdr, sizeof(hdr), 0) < 0)
			return -1;
		pkt->l4_off += sizeof(opt);
		return 0;
	} else {
		struct dsr_ext6 ext = { .hdrlen = sizeof(ext) / 8 - 1, .type = DSR_OPT6_TYPE,
					.len = 2 + 16, .port = port, .pad_type = 1 };
		struct ipv6hdr ip;

		if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip, sizeof(ip)) < 0)
			return -1;
		__builtin_memcpy(ext.addr, frontend->b, 16);
		ext.nexthdr = ip.nexthdr;
		ip.nexthdr = IPPROTO_DSTOPTS;
		ip.payload_len = bpf_htons(bpf_ntohs(ip.payload_len) + sizeof(ext));
		if (bpf_skb_adjust_room(skb, sizeof(ext), BPF_ADJ_ROOM_NET, 0) < 0)
			return -1;
		if (bpf_skb_store_bytes(skb, ETH_HLEN, &ip, sizeof(ip), 0) < 0 ||
		    bpf_skb_store_bytes(skb, ETH_HLEN + sizeof(ip), &ext, sizeof(ext), 0) < 0)
			return -1;
		pkt->l4_off += sizeof(ext);
		return 0;
	}
}

/* If the packet carries a frontend, take it out: 1 and FRONTEND:PORT filled in, 0 when
 * there is none, -1 when the packet could not be restored. PKT is parsed again. */
static __always_inline int dsr_take(struct __sk_buff *skb, struct sl_packet *pkt,
				    union sl_addr *frontend, __be16 *port)
{
	void *data, *data_end;

	if (pkt->family == 4) {
		struct { struct iphdr ip; struct dsr_opt4 opt; } hdr;

		if (pkt->l4_off != ETH_HLEN + sizeof(hdr))
			return 0;
		if (bpf_skb_load_bytes(skb, ETH_HLEN, &hdr, sizeof(hdr)) < 0 ||
		    hdr.opt.type != DSR_OPT4_TYPE || hdr.opt.len != sizeof(hdr.opt))
			return 0;
		sl_addr_from_v4(frontend, hdr.opt.addr);
		*port = hdr.opt.port;
		hdr.ip.ihl = 5;
		hdr.ip.tot_len = bpf_htons(bpf_ntohs(hdr.ip.tot_len) - sizeof(hdr.opt));
		hdr.ip.check = 0;
		hdr.ip.check = csum_fold(csum_add_buf(&hdr.ip, sizeof(hdr.ip), 0));
		if (bpf_skb_adjust_room(skb, -(__s32)sizeof(hdr.opt), BPF_ADJ_ROOM_NET, 0) < 0)
			return -1;
		if (bpf_skb_store_bytes(skb, ETH_HLEN, &hdr.ip, sizeof(hdr.ip), 0) < 0)
			return -1;
	} else {
		struct ipv6hdr ip;
		struct dsr_ext6 ext;

		if (pkt->l4_proto != IPPROTO_DSTOPTS)
			return 0;
		if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip, sizeof(ip)) < 0 ||
		    bpf_skb_load_bytes(skb, ETH_HLEN + sizeof(ip), &ext, sizeof(ext)) < 0 ||
		    ext.type != DSR_OPT6_TYPE || ext.hdrlen != sizeof(ext) / 8 - 1)
			return 0;
		__builtin_memcpy(frontend->b, ext.addr, 16);
		*port = ext.port;
		ip.nexthdr = ext.nexthdr;
		ip.payload_len = bpf_htons(bpf_ntohs(ip.payload_len) - sizeof(ext));
		if (bpf_skb_adjust_room(skb, -(__s32)sizeof(ext), BPF_ADJ_ROOM_NET, 0) < 0)
			return -1;
		if (bpf_skb_store_bytes(skb, ETH_HLEN, &ip, sizeof(ip), 0) < 0)
			return -1;
	}
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	if (sl_parse(data, data_end, pkt) != SL_PARSE_OK)
		return -1;
	return 1;
}

#endif
