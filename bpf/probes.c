/* Minimal programs and maps `sluice doctor` loads and attaches to prove
 * each kernel feature the dataplane relies on. They do nothing. */
#include "common.h"

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct { __u32 prefixlen; __u32 addr; });
	__type(value, __u32);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 4);
} probe_lpm SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, 4);
} probe_lru SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4096);
} probe_ringbuf SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 1);
} probe_percpu SEC(".maps");

/* Counts packets per CPU and reports each packet's length through the ring buffer. */
SEC("tc")
int probe_tc(struct __sk_buff *skb)
{
	__u32 key = 0, *slot;
	__u64 *count = bpf_map_lookup_elem(&probe_percpu, &key);

	if (count)
		*count += 1;
	slot = bpf_ringbuf_reserve(&probe_ringbuf, sizeof(*slot), 0);
	if (slot) {
		*slot = skb->len;
		bpf_ringbuf_submit(slot, 0);
	}
	return TC_ACT_OK;
}

SEC("xdp")
int probe_xdp(struct xdp_md *ctx)
{
	return XDP_PASS;
}

SEC("cgroup/connect4")
int probe_connect4(struct bpf_sock_addr *ctx) { return 1; }
SEC("cgroup/connect6")
int probe_connect6(struct bpf_sock_addr *ctx) { return 1; }
SEC("cgroup/sendmsg4")
int probe_sendmsg4(struct bpf_sock_addr *ctx) { return 1; }
SEC("cgroup/sendmsg6")
int probe_sendmsg6(struct bpf_sock_addr *ctx) { return 1; }
SEC("cgroup/recvmsg4")
int probe_recvmsg4(struct bpf_sock_addr *ctx) { return 1; }
SEC("cgroup/recvmsg6")
int probe_recvmsg6(struct bpf_sock_addr *ctx) { return 1; }
SEC("cgroup/getpeername4")
int probe_getpeername4(struct bpf_sock_addr *ctx) { return 1; }
SEC("cgroup/getpeername6")
int probe_getpeername6(struct bpf_sock_addr *ctx) { return 1; }

char LICENSE[] SEC("license") = "GPL";
