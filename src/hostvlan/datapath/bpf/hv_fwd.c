// SPDX-License-Identifier: GPL-2.0
/* HostVLAN's closed Linux bridge (bridge/closing.py): hv_rx.c's receive filter plus a fast
 * path at each bridge port's tcx INGRESS hook, so the bridge's netfilter hooks (which close
 * every port no binding names, by construction) see no frame of the common path.
 *
 *   hv_fwd (tcx ingress of every bridge port)
 *       from a VM port (vmports[ifindex]) whose source fails the send check ((port, src) not in
 *       bound): a forged source, dropped and counted here (ports[ifindex].drops, sampled into
 *       events) rather than uncounted by the bridge's locked port (which would drop it too)
 *       unicast, destination a bound vNIC MAC on another port (fdb), and the frame passes the
 *       send check of its input port ((port, src) in bound)   -> bpf_redirect to that port;
 *       its egress program (hv_rx / hv_rx_global) then does the receive check, as for every
 *       copy the bridge itself sends
 *       anything else (groups, the host, the wire, a miss)    -> TC_ACT_OK: the bridge and its
 *       hooks decide, exactly as without this program
 *
 * The fast path only ever delivers what the bridge would have delivered with its sticky FDB
 * entries and locked ports; it drops only what the locked port would drop (a forged source):
 * any other miss goes the slow, exact way. Cost per allowed frame: one array read (inlined)
 * for every frame; frames of VM ports do the `bound` lookup first (the fast path needed it
 * anyway); frames of other ports (the uplink, unbound ports) do nothing more.
 * Maps added to hv_rx.c's (bridge/tc.py keeps those):
 *   fdb    hash  {mac}          -> ifindex    each bound vNIC MAC of a VM port, its port
 *   bound  hash  {ifindex, mac} -> 1          Facts.bound of VM ports (the send check)
 *   vmports array ifindex       -> 1          the bound VM ports (uplinks not): their send check
 *                                             is enforced here; an ifindex past the array's end
 *                                             takes the slow path (the lock drops, uncounted)
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

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1 << 16);
	__type(key, __u32);
	__type(value, __u8);
} vmports SEC(".maps");

SEC("tc")
int hv_fwd(struct __sk_buff *skb)
{
	struct ethhdr *eth = eth_of(skb);
	if (!eth)
		return TC_ACT_OK;
	__u32 ifindex = skb->ifindex;
	__u8 *vm = bpf_map_lookup_elem(&vmports, &ifindex);
	if (!vm || !*vm)
		return TC_ACT_OK; /* the uplink, an unbound port: the bridge and its hooks decide */
	struct pair_key k = { .ifindex = ifindex };
	__builtin_memcpy(k.mac, eth->h_source, 6);
	if (!bpf_map_lookup_elem(&bound, &k))
		return drop(skb, eth, R_FORGED_SOURCE);
	if (eth->h_dest[0] & 1)
		return TC_ACT_OK;
	struct src_key d = {};
	__builtin_memcpy(d.mac, eth->h_dest, 6);
	__u32 *out = bpf_map_lookup_elem(&fdb, &d);
	if (!out || *out == ifindex)
		return TC_ACT_OK;
	return bpf_redirect(*out, 0);
}
