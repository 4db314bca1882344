/* Answer a packet for a frontend without backends at once, like a host without a
 * listener would: a TCP reset, or ICMP port unreachable for everything else. The packet
 * is rewritten in place and sent back out of the device it came from. */
#ifndef SLUICE_REJECT_H
#define SLUICE_REJECT_H

#include "common.h"
#include "csum.h"
#include "parse.h"

#define ICMP_DEST_UNREACH 3
#define ICMP_PORT_UNREACH 3
#define ICMPV6_DEST_UNREACH 1
#define ICMPV6_PORT_UNREACH 4
#define REJECT_TTL 64
/* What an ICMP error quotes: the offending IP header and 8 bytes of its payload. */
#define QUOTE4_LEN (20 + 8)
#define QUOTE6_LEN (40 + 8)

static __always_inline int swap_macs(struct __sk_buff *skb)
{
	__u8 macs[12], swapped[12];

	if (bpf_skb_load_bytes(skb, 0, macs, 12) < 0)
		return -1;
	__builtin_memcpy(swapped, macs + 6, 6);
	__builtin_memcpy(swapped + 6, macs, 6);
	return bpf_skb_store_bytes(skb, 0, swapped, 12, 0);
}

/* Cut the packet to its new length and write the headers built on the stack after the
 * Ethernet header: IP, then L4, then (for ICMP errors) the quoted packet. */
static __always_inline int write_answer(struct __sk_buff *skb, const void *ip, __u32 ip_len,
					const void *l4, __u32 l4_len, const void *quote,
					__u32 quote_len)
{
	__u32 off = ETH_HLEN;

	if (bpf_skb_change_tail(skb, off + ip_len + l4_len + quote_len, 0) < 0 ||
	    bpf_skb_store_bytes(skb, off, ip, ip_len, 0) < 0 ||
	    bpf_skb_store_bytes(skb, off + ip_len, l4, l4_len, 0) < 0)
		return -1;
	if (quote_len && bpf_skb_store_bytes(skb, off + ip_len + l4_len, quote, quote_len, 0) < 0)
		return -1;
	return 0;
}

__noinline int reject_tcp(struct __sk_buff *skb, __u32 family, __u32 l4_off)
{
	struct tcphdr th, rst = {};
	__u32 payload, seq_used, end;
	__be16 ip_len;
	__u64 sum;

	if (!skb || l4_off > ETH_HLEN + 40 || bpf_skb_load_bytes(skb, l4_off, &th, sizeof(th)) < 0)
		return TC_ACT_SHOT;
	if (th.rst)
		return TC_ACT_SHOT;
	/* The segment ends where the IP header says: a short frame from the wire carries
	 * Ethernet padding after it, which the SYN's sequence space does not include. */
	if (bpf_skb_load_bytes(skb, ETH_HLEN + (family == 4 ? 2 : 4), &ip_len, 2) < 0)
		return TC_ACT_SHOT;
	end = ETH_HLEN + bpf_ntohs(ip_len) + (family == 4 ? 0 : sizeof(struct ipv6hdr));
	if (end < l4_off + th.doff * 4 || end > skb->len)
		return TC_ACT_SHOT;
	payload = end - l4_off - th.doff * 4;
	seq_used = payload + th.syn + th.fin;
	rst.source = th.dest;
	rst.dest = th.source;
	rst.doff = 5;
	rst.rst = 1;
	if (th.ack) {
		rst.seq = th.ack_seq;
	} else {
		rst.ack = 1;
		rst.ack_seq = bpf_htonl(bpf_ntohl(th.seq) + seq_used);
	}
	if (family == 4) {
		struct iphdr ip;
		struct pseudo4 ph = { .proto = IPPROTO_TCP, .len = bpf_htons(sizeof(rst)) };

		if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip, sizeof(ip)) < 0 || ip.ihl != 5)
			return TC_ACT_SHOT;
		ph.saddr = ip.daddr;
		ph.daddr = ip.saddr;
		ip.saddr = ph.saddr;
		ip.daddr = ph.daddr;
		ip.tot_len = bpf_htons(sizeof(ip) + sizeof(rst));
		ip.ttl = REJECT_TTL;
		ip.id = 0;
		ip.frag_off = 0;
		ip.check = 0;
		ip.check = csum_fold(csum_add_buf(&ip, sizeof(ip), 0));
		sum = csum_add_buf(&ph, sizeof(ph), 0);
		rst.check = csum_fold(csum_add_buf(&rst, sizeof(rst), sum));
		if (write_answer(skb, &ip, sizeof(ip), &rst, sizeof(rst), NULL, 0) < 0)
			return TC_ACT_SHOT;
	} else {
		struct ipv6hdr ip;
		struct pseudo6 ph = { .proto = IPPROTO_TCP, .len = bpf_htonl(sizeof(rst)) };

		if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip, sizeof(ip)) < 0)
			return TC_ACT_SHOT;
		__builtin_memcpy(ph.saddr, &ip.daddr, 16);
		__builtin_memcpy(ph.daddr, &ip.saddr, 16);
		__builtin_memcpy(&ip.saddr, ph.saddr, 16);
		__builtin_memcpy(&ip.daddr, ph.daddr, 16);
		ip.payload_len = bpf_htons(sizeof(rst));
		ip.nexthdr = IPPROTO_TCP;
		ip.hop_limit = REJECT_TTL;
		sum = csum_add_buf(&ph, sizeof(ph), 0);
		rst.check = csum_fold(csum_add_buf(&rst, sizeof(rst), sum));
		if (write_answer(skb, &ip, sizeof(ip), &rst, sizeof(rst), NULL, 0) < 0)
			return TC_ACT_SHOT;
	}
	if (swap_macs(skb) < 0)
		return TC_ACT_SHOT;
	return bpf_redirect(skb->ifindex, 0);
}

struct icmp_head {
	__u8 type;
	__u8 code;
	__sum16 check;
	__be32 unused;
};

__noinline int reject_icmp(struct __sk_buff *skb, __u32 family)
{
	struct icmp_head icmp = {};
	__u64 sum;

	if (!skb)
		return TC_ACT_SHOT;
	if (family == 4) {
		struct { struct iphdr ip; __u8 l4[8]; } quote;
		struct iphdr ip = {};

		if (bpf_skb_load_bytes(skb, ETH_HLEN, &quote, QUOTE4_LEN) < 0 || quote.ip.ihl != 5)
			return TC_ACT_SHOT;
		ip.version = 4;
		ip.ihl = 5;
		ip.ttl = REJECT_TTL;
		ip.protocol = IPPROTO_ICMP;
		ip.tot_len = bpf_htons(sizeof(ip) + sizeof(icmp) + QUOTE4_LEN);
		ip.saddr = quote.ip.daddr;
		ip.daddr = quote.ip.saddr;
		ip.check = csum_fold(csum_add_buf(&ip, sizeof(ip), 0));
		icmp.type = ICMP_DEST_UNREACH;
		icmp.code = ICMP_PORT_UNREACH;
		sum = csum_add_buf(&icmp, sizeof(icmp), 0);
		icmp.check = csum_fold(csum_add_buf(&quote, QUOTE4_LEN, sum));
		if (write_answer(skb, &ip, sizeof(ip), &icmp, sizeof(icmp), &quote, QUOTE4_LEN) < 0)
			return TC_ACT_SHOT;
	} else {
		struct { struct ipv6hdr ip; __u8 l4[8]; } quote;
		struct ipv6hdr ip = {};
		struct { __be32 len; __u8 zero[3]; __u8 proto; } tail = {
			.len = bpf_htonl(sizeof(icmp) + QUOTE6_LEN), .proto = IPPROTO_ICMPV6 };

		if (bpf_skb_load_bytes(skb, ETH_HLEN, &quote, QUOTE6_LEN) < 0)
			return TC_ACT_SHOT;
		ip.version = 6;
		ip.nexthdr = IPPROTO_ICMPV6;
		ip.hop_limit = REJECT_TTL;
		ip.payload_len = bpf_htons(sizeof(icmp) + QUOTE6_LEN);
		__builtin_memcpy(&ip.saddr, &quote.ip.daddr, 16);
		__builtin_memcpy(&ip.daddr, &quote.ip.saddr, 16);
		icmp.type = ICMPV6_DEST_UNREACH;
		icmp.code = ICMPV6_PORT_UNREACH;
		/* The pseudo-header: both addresses (their order does not change the sum). */
		sum = csum_add_buf(&quote.ip.saddr, 32, 0);
		sum = csum_add_buf(&tail, sizeof(tail), sum);
		sum = csum_add_buf(&icmp, sizeof(icmp), sum);
		icmp.check = csum_fold(csum_add_buf(&quote, QUOTE6_LEN, sum));
		if (write_answer(skb, &ip, sizeof(ip), &icmp, sizeof(icmp), &quote, QUOTE6_LEN) < 0)
			return TC_ACT_SHOT;
	}
	if (swap_macs(skb) < 0)
		return TC_ACT_SHOT;
	return bpf_redirect(skb->ifindex, 0);
}

static __always_inline int reject(struct __sk_buff *skb, struct sl_packet *pkt)
{
	if (pkt->l4_proto == IPPROTO_TCP)
		return reject_tcp(skb, pkt->family, pkt->l4_off);
	if (pkt->l4_proto == IPPROTO_UDP)
		return reject_icmp(skb, pkt->family);
	return TC_ACT_SHOT;
}

#endif
