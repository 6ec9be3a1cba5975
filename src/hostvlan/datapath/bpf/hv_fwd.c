// SPDX-License-Identifier: GPL-2.0
/* HostVLAN's closed Linux bridge (bridge/closing.py): hv_rx.c's receive filter plus a fast
 * path at each bridge port's tcx INGRESS hook, so the bridge's netfilter hooks (which close
 * every port no binding names, by construction) see no frame of the common path.
 *
 *   hv_fwd (tcx ingress of every bridge port)
 *       unicast, destination a bound vNIC MAC on another port (fdb), and the frame passes the
 *       send check of its input port ((port, src) in bound)   -> bpf_redirect to that port;
 *       its egress program (hv_rx / hv_rx_global) then does the receive check, as for every
 *       copy the bridge itself sends
 *       anything else (groups, the host, the wire, a miss)    -> TC_ACT_OK: the bridge and its
 *       hooks decide, exactly as without this program
 *
 * The fast path only ever delivers what the bridge would have delivered with its sticky FDB
 * entries and locked ports; it never drops: a miss goes the slow, exact way.
 * Maps added to hv_rx.c's (bridge/tc.py keeps those):
 *   fdb    hash  {mac}          -> ifindex    each bound vNIC MAC of a VM port, its port
 *   bound  hash  {ifindex, mac} -> 1          Facts.bound of VM ports (the send check)
 */
#include "hv_rx.c"

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1 << 16);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct src_key);
	__type(value, __u32);
} fdb SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1 << 16);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct pair_key);
	__type(value, __u8);
} bound SEC(".maps");

SEC("tc")
int hv_fwd(struct __sk_buff *skb)
{
	struct ethhdr *eth = eth_of(skb);
	if (!eth || (eth->h_dest[0] & 1))
		return TC_ACT_OK;
	struct src_key d = {};
	__builtin_memcpy(d.mac, eth->h_dest, 6);
	__u32 *out = bpf_map_lookup_elem(&fdb, &d);
	if (!out || *out == skb->ifindex)
		return TC_ACT_OK;
	struct pair_key k = { .ifindex = skb->ifindex };
	__builtin_memcpy(k.mac, eth->h_source, 6);
	if (!bpf_map_lookup_elem(&bound, &k))
		return TC_ACT_OK;
	return bpf_redirect(*out, 0);
}
