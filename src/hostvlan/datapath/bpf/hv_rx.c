// SPDX-License-Identifier: GPL-2.0
/* HostVLAN's receive filter for a Linux bridge, as tc (tcx) egress programs on its ports.
 *
 * The bridge hands every frame copy it sends out of a port (each copy of a flood too) to
 * that port's egress hook; the program attached there decides the model's
 * `Facts.receive(src, port)` with the port = the device it runs on (skb->ifindex):
 *
 *   hv_rx         (ports in no `global` LNID)       ONE lookup for tenant traffic:
 *       (port, src) in pairs                 -> pass
 *       src in global_src, port bound        -> pass
 *   hv_rx_global  (ports in `global`: the uplink)   ONE lookup:
 *       src known                            -> pass
 *   anything else is dropped and counted: per port in `ports`, or as unbound (stats[0]).
 *
 * Maps (pinned by the agent in its own bpffs; tc_bridge.py keeps them equal to the facts):
 *   pairs  hash  {ifindex, mac} -> 1          Facts.pairs
 *   srcs   hash  {mac}          -> flags      Facts.known (SRC_KNOWN), Facts.global_src (SRC_GLOBAL)
 *   ports  hash  ifindex        -> port       Facts.ports (+ PORT_GLOBAL), its name and drop count
 *   stats  array [0]            -> drops at ports the facts do not bind
 * Build: clang -O2 -g -target bpf -c hv_rx.c (scripts/setup.sh).
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

#define SRC_KNOWN 1
#define SRC_GLOBAL 2
#define PORT_GLOBAL 1

struct pair_key {
	__u32 ifindex;
	__u8 mac[6];
	__u16 pad;
};

struct src_key {
	__u8 mac[6];
	__u16 pad;
};

struct port {
	__u32 flags;
	__u32 pad;
	__u64 drops;
	char name[16];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1 << 22);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct pair_key);
	__type(value, __u8);
} pairs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1 << 21);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct src_key);
	__type(value, __u32);
} srcs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1 << 16);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32);
	__type(value, struct port);
} ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

static __always_inline int drop(__u32 ifindex)
{
	struct port *p = bpf_map_lookup_elem(&ports, &ifindex);
	if (p) {
		__sync_fetch_and_add(&p->drops, 1);
	} else {
		__u32 zero = 0;
		__u64 *n = bpf_map_lookup_elem(&stats, &zero);
		if (n)
			__sync_fetch_and_add(n, 1);
	}
	return TC_ACT_SHOT;
}

static __always_inline struct ethhdr *eth_of(struct __sk_buff *skb)
{
	struct ethhdr *eth = (void *)(long)skb->data;
	if ((void *)(eth + 1) > (void *)(long)skb->data_end)
		return 0;
	return eth;
}

SEC("tc")
int hv_rx(struct __sk_buff *skb)
{
	struct ethhdr *eth = eth_of(skb);
	if (!eth)
		return drop(skb->ifindex);
	struct pair_key k = { .ifindex = skb->ifindex };
	__builtin_memcpy(k.mac, eth->h_source, 6);
	if (bpf_map_lookup_elem(&pairs, &k))
		return TC_ACT_OK;
	struct src_key s = {};
	__builtin_memcpy(s.mac, eth->h_source, 6);
	__u32 *flags = bpf_map_lookup_elem(&srcs, &s);
	if (flags && (*flags & SRC_GLOBAL) && bpf_map_lookup_elem(&ports, &k.ifindex))
		return TC_ACT_OK;
	return drop(skb->ifindex);
}

SEC("tc")
int hv_rx_global(struct __sk_buff *skb)
{
	struct ethhdr *eth = eth_of(skb);
	if (!eth)
		return drop(skb->ifindex);
	struct src_key s = {};
	__builtin_memcpy(s.mac, eth->h_source, 6);
	if (bpf_map_lookup_elem(&srcs, &s)) {
		__u32 ifindex = skb->ifindex;
		struct port *p = bpf_map_lookup_elem(&ports, &ifindex);
		if (p && (p->flags & PORT_GLOBAL))
			return TC_ACT_OK;
	}
	return drop(skb->ifindex);
}

char LICENSE[] SEC("license") = "GPL";
