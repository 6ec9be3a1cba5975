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
 *   anything else is dropped and counted: per port in `ports` and reason (an unknown source,
 *   no shared LNID, a frame too short for its header), or as unbound (stats[0]).
 *
 * Every drop (never an allowed frame) may also be sampled into `events`, a ring of the last
 * EVENTS drops, at most EVENTS_PER_WINDOW per ~1.07 s window (`evstate`), which the agent polls.
 *
 * Maps (pinned by the agent in its own bpffs; tc_bridge.py keeps them equal to the facts):
 *   pairs  hash  {ifindex, mac} -> 1          Facts.pairs
 *   srcs   hash  {mac}          -> flags      Facts.known (SRC_KNOWN), Facts.global_src (SRC_GLOBAL)
 *   ports  hash  ifindex        -> port       Facts.ports (+ PORT_GLOBAL), its name, drops per reason
 *   stats  array [0]            -> drops at ports the facts do not bind
 *   events array [EVENTS]       -> the last sampled drops (seq 0: an empty slot)
 *   evstate array [1]           -> the ring's last seq and the rate limit's window
 * Build: clang -O2 -g -target bpf -c hv_rx.c (scripts/setup.sh).
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

#define SRC_KNOWN 1
#define SRC_GLOBAL 2
#define PORT_GLOBAL 1

/* drop reasons: indexes into port.drops and drop_event.reason (bridge/tc.py REASONS) */
#define R_UNKNOWN_SOURCE 0
#define R_NO_SHARED_LNID 1
#define R_UNBOUND_PORT 2
#define R_FORGED_SOURCE 3
#define R_MALFORMED 4
#define N_REASONS 5
#define EVENTS 256
#define EVENTS_PER_WINDOW 64

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
	__u64 drops[N_REASONS];
	char name[16];
};

struct drop_event {
	__u64 seq; /* 1, 2, ...; 0: the slot is empty (or being written) */
	__u64 ns; /* bpf_ktime_get_ns: CLOCK_MONOTONIC */
	__u32 ifindex;
	__u16 proto; /* ethertype, network order */
	__u8 reason;
	__u8 pad;
	__u8 src[6];
	__u8 dst[6];
};

struct evstate {
	__u64 seq;
	__u64 window;
	__u64 n;
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

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, EVENTS);
	__type(key, __u32);
	__type(value, struct drop_event);
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct evstate);
} evstate SEC(".maps");

/* Sample one drop into the ring (racy across CPUs by design: a sample may be lost or
 * overwritten, never a frame). Runs on the drop path only. */
static __always_inline void sample(struct __sk_buff *skb, struct ethhdr *eth, __u8 reason)
{
	__u32 zero = 0;
	struct evstate *st = bpf_map_lookup_elem(&evstate, &zero);
	if (!st)
		return;
	__u64 now = bpf_ktime_get_ns();
	__u64 window = now >> 30;
	if (st->window != window) {
		st->window = window;
		st->n = 0;
	}
	if (st->n >= EVENTS_PER_WINDOW)
		return;
	st->n += 1;
	__u64 seq = st->seq + 1;
	st->seq = seq;
	__u32 slot = seq % EVENTS;
	struct drop_event *e = bpf_map_lookup_elem(&events, &slot);
	if (!e)
		return;
	e->seq = 0;
	e->ns = now;
	e->ifindex = skb->ifindex;
	e->reason = reason;
	if (eth) {
		e->proto = eth->h_proto;
		__builtin_memcpy(e->src, eth->h_source, 6);
		__builtin_memcpy(e->dst, eth->h_dest, 6);
	} else {
		e->proto = 0;
		__builtin_memset(e->src, 0, 6);
		__builtin_memset(e->dst, 0, 6);
	}
	e->seq = seq;
}

/* Drop and count: at the port in `ports` under `reason`, else as unbound (stats[0]). */
static __always_inline int drop(struct __sk_buff *skb, struct ethhdr *eth, __u32 reason)
{
	__u32 ifindex = skb->ifindex;
	struct port *p = bpf_map_lookup_elem(&ports, &ifindex);
	if (p && reason < N_REASONS) {
		__sync_fetch_and_add(&p->drops[reason], 1);
	} else {
		__u32 zero = 0;
		__u64 *n = bpf_map_lookup_elem(&stats, &zero);
		if (n)
			__sync_fetch_and_add(n, 1);
		reason = R_UNBOUND_PORT;
	}
	sample(skb, eth, reason);
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
		return drop(skb, 0, R_MALFORMED);
	struct pair_key k = { .ifindex = skb->ifindex };
	__builtin_memcpy(k.mac, eth->h_source, 6);
	if (bpf_map_lookup_elem(&pairs, &k))
		return TC_ACT_OK;
	struct src_key s = {};
	__builtin_memcpy(s.mac, eth->h_source, 6);
	__u32 *flags = bpf_map_lookup_elem(&srcs, &s);
	if (flags && (*flags & SRC_GLOBAL) && bpf_map_lookup_elem(&ports, &k.ifindex))
		return TC_ACT_OK;
	return drop(skb, eth, flags ? R_NO_SHARED_LNID : R_UNKNOWN_SOURCE);
}

SEC("tc")
int hv_rx_global(struct __sk_buff *skb)
{
	struct ethhdr *eth = eth_of(skb);
	if (!eth)
		return drop(skb, 0, R_MALFORMED);
	struct src_key s = {};
	__builtin_memcpy(s.mac, eth->h_source, 6);
	if (!bpf_map_lookup_elem(&srcs, &s))
		return drop(skb, eth, R_UNKNOWN_SOURCE);
	__u32 ifindex = skb->ifindex;
	struct port *p = bpf_map_lookup_elem(&ports, &ifindex);
	if (p && (p->flags & PORT_GLOBAL))
		return TC_ACT_OK;
	return drop(skb, eth, R_NO_SHARED_LNID);
}

char LICENSE[] SEC("license") = "GPL";
