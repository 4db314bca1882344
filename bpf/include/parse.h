/* Packet parsing shared by tc and XDP: both see a linear [data, data_end). */
#ifndef SLUICE_PARSE_H
#define SLUICE_PARSE_H

#include "common.h"

struct sl_packet {
	union sl_addr saddr;
	union sl_addr daddr;
	__u16 l3_proto; /* ETH_P_IP or ETH_P_IPV6, host order */
	__u8 l4_proto;
	__u8 family;    /* 4 or 6 */
	__u32 l4_off;   /* offset of the L4 header from data */
	__be16 sport;   /* TCP, UDP, SCTP; 0 otherwise */
	__be16 dport;
	__u8 icmp_type; /* ICMP and ICMPv6 */
	__u8 tcp_flags; /* TCP: FIN 0x01, SYN 0x02, RST 0x04, ACK 0x10 */
	__u8 drop_reason; /* enum sl_drop_reason: why the hook drops it (0: it does not) */
	__u8 new_flow;    /* a flow table learned this flow from this packet */
	__u64 now;      /* sl_now()'s cache: 0 until a flow table needs the time */
};

enum sl_parse_result {
	SL_PARSE_OK = 0,
	SL_PARSE_NOT_IP = 1,    /* ARP, LLDP, ...: not ours to judge */
	SL_PARSE_MALFORMED = 2, /* truncated or inconsistent header */
};

/* Ports of TCP, UDP and SCTP all lead their header; ICMP's type does. */
static __always_inline int sl_parse_l4(void *data, void *data_end, struct sl_packet *pkt)
{
	__be16 *ports;
	__u8 *type;

	if (pkt->l4_off > ETH_HLEN + 60)
		return SL_PARSE_MALFORMED;
	switch (pkt->l4_proto) {
	case IPPROTO_TCP:
	case IPPROTO_UDP:
	case IPPROTO_SCTP:
		ports = data + pkt->l4_off;
		if ((void *)(ports + 2) > data_end)
			return SL_PARSE_MALFORMED;
		pkt->sport = ports[0];
		pkt->dport = ports[1];
		if (pkt->l4_proto == IPPROTO_TCP) {
			__u8 *flags = data + pkt->l4_off + 13;

			if ((void *)(flags + 1) > data_end)
				return SL_PARSE_MALFORMED;
			pkt->tcp_flags = *flags;
		}
		break;
	case IPPROTO_ICMP:
	case IPPROTO_ICMPV6:
		type = data + pkt->l4_off;
		if ((void *)(type + 1) > data_end)
			return SL_PARSE_MALFORMED;
		pkt->icmp_type = *type;
		break;
	}
	return SL_PARSE_OK;
}

static __always_inline int sl_parse(void *data, void *data_end, struct sl_packet *pkt)
{
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > data_end)
		return SL_PARSE_MALFORMED;

	pkt->l3_proto = bpf_ntohs(eth->h_proto);
	if (pkt->l3_proto == ETH_P_IP) {
		struct iphdr *ip4 = (void *)(eth + 1);

		if ((void *)(ip4 + 1) > data_end)
			return SL_PARSE_MALFORMED;
		if (ip4->ihl < 5)
			return SL_PARSE_MALFORMED;
		pkt->family = 4;
		pkt->l4_proto = ip4->protocol;
		pkt->l4_off = ETH_HLEN + ip4->ihl * 4;
		sl_addr_from_v4(&pkt->saddr, ip4->saddr);
		sl_addr_from_v4(&pkt->daddr, ip4->daddr);
		/* Later fragments carry no L4 header. */
		if (ip4->frag_off & bpf_htons(0x1fff))
			return SL_PARSE_OK;
		return sl_parse_l4(data, data_end, pkt);
	}
	if (pkt->l3_proto == ETH_P_IPV6) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);

		if ((void *)(ip6 + 1) > data_end)
			return SL_PARSE_MALFORMED;
		pkt->family = 6;
		pkt->l4_proto = ip6->nexthdr;
		pkt->l4_off = ETH_HLEN + sizeof(*ip6);
		__builtin_memcpy(pkt->saddr.b, ip6->saddr.in6_u.u6_addr8, 16);
		__builtin_memcpy(pkt->daddr.b, ip6->daddr.in6_u.u6_addr8, 16);
		return sl_parse_l4(data, data_end, pkt);
	}
	return SL_PARSE_NOT_IP;
}

#endif
