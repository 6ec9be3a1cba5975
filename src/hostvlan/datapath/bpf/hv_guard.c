// SPDX-License-Identifier: GPL-2.0
/* HostVLAN's address guard for a Linux bridge (bridge/guard.py), at the tcx INGRESS of every
 * bound VM port, FIRST in the chain (before closing.py's hv_fwd): the model's
 * `guard.send_frame` after the send check, and the host's ARP/ND answers.
 *
 *   not a VM port (no gports entry), or a source MAC not the bound one -> TCX_NEXT (the send
 *       check of the bridge decides, as without this program)
 *   guarded port: ARP sha/spa, IPv4/IPv6 source, NS/NA options and NA target, RA/redirect,
 *       DHCP/DHCPv6 server ports, headers that do not parse -> TC_ACT_SHOT, counted per
 *       port and reason in gstats
 *   ARP request / NS (any VM port) for an address in ans4/ans6 of this port -> the reply is
 *       written over the request and bpf_redirect()ed out of the same port (its egress
 *       program, the receive filter, sees it like any frame to that port); in reg4/reg6 but
 *       not answered -> dropped (no_shared_lnid) unless the port holds it (src4/src6); else TCX_NEXT
 *
 * The parse follows model/frames.py exactly (same limits: 2 VLAN tags counting one the
 * kernel took into skb->vlan_tci, 3 IPv6 extension headers, 4 NDP options, lengths against
 * skb->len); headers are read with bpf_skb_load_bytes (frames may be non-linear).
 * Maps (bridge/guard.py keeps them equal to model.guardfacts.GuardFacts):
 *   gports  hash  ifindex          -> {mac, flags, up to 4 IPv4 and 4 IPv6 prefixes}
 *   src4    hash  {ifindex, addr}  -> 1    the port's host addresses (/32)
 *   src6    hash  {ifindex, addr}  -> 1    (/128, the EUI-64 link-local included)
 *   ans4    hash  {ifindex, addr}  -> {mac, flags}   answers
 *   ans6    hash  {ifindex, addr}  -> {mac, flags}
 *   reg4    hash  addr             -> 1    registered host addresses
 *   reg6    hash  addr             -> 1
 *   gstats  hash  ifindex          -> {drops per reason, port name}
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define TCX_NEXT -1
#define G_GUARDED 1
#define G_ROUTER 2
#define G_DHCP 4
#define A_ROUTER 1

enum { R_ARP, R_ND, R_IP, R_RA, R_DHCP, R_MALFORMED, R_NOSHARE, R_ANSWERED, R_N };

#define MAX_PFX 4
#define MAX_EXT 3
#define MAX_OPTS 4

struct p4 {
	__u32 addr, mask;
};
struct p6 {
	__u64 addr[2], mask[2];
};
struct gport {
	__u8 mac[6];
	__u8 flags, n4, n6;
	__u8 pad[7];
	struct p4 p4[MAX_PFX];
	struct p6 p6[MAX_PFX];
};
struct k4 {
	__u32 ifindex;
	__u32 addr;
};
struct k6 {
	__u32 ifindex;
	__u32 addr[4];
};
struct ans {
	__u8 mac[6];
	__u16 flags;
};
struct gstat {
	__u64 drops[R_N];
	char name[16];
};

#define HASH(nm, kt, vt, n)                              \
	struct {                                         \
		__uint(type, BPF_MAP_TYPE_HASH);         \
		__uint(max_entries, n);                  \
		__uint(map_flags, BPF_F_NO_PREALLOC);    \
		__type(key, kt);                         \
		__type(value, vt);                       \
	} nm SEC(".maps")

HASH(gports, __u32, struct gport, 1 << 12);
HASH(src4, struct k4, __u8, 1 << 14);
HASH(src6, struct k6, __u8, 1 << 14);
HASH(ans4, struct k4, struct ans, 1 << 16);
HASH(ans6, struct k6, struct ans, 1 << 16);
HASH(reg4, __u32, __u8, 1 << 16);
HASH(reg6, struct k6, __u8, 1 << 16);
HASH(gstats, __u32, struct gstat, 1 << 12);

static __always_inline int drop(__u32 ifindex, int reason)
{
	struct gstat *s = bpf_map_lookup_elem(&gstats, &ifindex);
	if (s && reason >= 0 && reason < R_N)
		__sync_fetch_and_add(&s->drops[reason], 1);
	return TC_ACT_SHOT;
}

static __always_inline int answered(__u32 ifindex)
{
	struct gstat *s = bpf_map_lookup_elem(&gstats, &ifindex);
	if (s)
		__sync_fetch_and_add(&s->drops[R_ANSWERED], 1);
	return bpf_redirect(ifindex, 0);
}

static __always_inline int mac_eq(const __u8 *a, const __u8 *b)
{
	__u32 a4, b4;
	__u16 a2, b2;
	__builtin_memcpy(&a4, a, 4);
	__builtin_memcpy(&b4, b, 4);
	__builtin_memcpy(&a2, a + 4, 2);
	__builtin_memcpy(&b2, b + 4, 2);
	return a4 == b4 && a2 == b2;
}

static __always_inline int holds4(struct gport *g, __u32 ifindex, __u32 addr)
{
	struct k4 k = { .ifindex = ifindex, .addr = addr };
	if (bpf_map_lookup_elem(&src4, &k))
		return 1;
	for (int i = 0; i < MAX_PFX; i++)
		if (i < g->n4 && (addr & g->p4[i].mask) == g->p4[i].addr)
			return 1;
	return 0;
}

static __always_inline int holds6(struct gport *g, __u32 ifindex, const __u32 *addr)
{
	struct k6 k = { .ifindex = ifindex };
	__builtin_memcpy(k.addr, addr, 16);
	if (bpf_map_lookup_elem(&src6, &k))
		return 1;
	__u64 a0, a1;
	__builtin_memcpy(&a0, addr, 8);
	__builtin_memcpy(&a1, addr + 2, 8);
	for (int i = 0; i < MAX_PFX; i++)
		if (i < g->n6 && (a0 & g->p6[i].mask[0]) == g->p6[i].addr[0] &&
		    (a1 & g->p6[i].mask[1]) == g->p6[i].addr[1])
			return 1;
	return 0;
}

struct arp4 {
	__be16 htype, ptype;
	__u8 hlen, plen;
	__be16 op;
	__u8 sha[6];
	__u32 spa;
	__u8 tha[6];
	__u32 tpa;
} __attribute__((packed));

static __always_inline int do_arp(struct __sk_buff *skb, struct gport *g, __u32 ifx, __u32 l3)
{
	struct arp4 a;
	int guarded = g->flags & G_GUARDED;
	if (l3 + 28 > skb->len || bpf_skb_load_bytes(skb, l3, &a, 28) < 0)
		return guarded ? drop(ifx, R_MALFORMED) : TCX_NEXT;
	if (a.htype != bpf_htons(1) || a.ptype != bpf_htons(ETH_P_IP) || a.hlen != 6 || a.plen != 4)
		return guarded ? drop(ifx, R_MALFORMED) : TCX_NEXT;
	if (guarded) {
		if (!mac_eq(a.sha, g->mac))
			return drop(ifx, R_ARP);
		if (a.spa != 0 && !holds4(g, ifx, a.spa))
			return drop(ifx, R_ARP);
	}
	if (a.op != bpf_htons(1) || a.tpa == a.spa || a.tpa == 0)
		return TCX_NEXT;
	struct k4 k = { .ifindex = ifx, .addr = a.tpa };
	struct ans *ans = bpf_map_lookup_elem(&ans4, &k);
	if (!ans) { /* registered, not to this port: dropped, unless the asker holds it itself */
		if (!bpf_map_lookup_elem(&reg4, &a.tpa) || bpf_map_lookup_elem(&src4, &k))
			return TCX_NEXT;
		return drop(ifx, R_NOSHARE);
	}
	struct arp4 r = a;
	r.op = bpf_htons(2);
	__builtin_memcpy(r.sha, ans->mac, 6);
	r.spa = a.tpa;
	__builtin_memcpy(r.tha, a.sha, 6);
	r.tpa = a.spa;
	__u8 eth[12];
	if (bpf_skb_load_bytes(skb, 6, eth, 6) < 0)
		return TC_ACT_SHOT;
	__builtin_memcpy(eth + 6, ans->mac, 6);
	if (bpf_skb_store_bytes(skb, 0, eth, 12, 0) < 0 || bpf_skb_store_bytes(skb, l3, &r, 28, 0) < 0)
		return TC_ACT_SHOT;
	return answered(ifx);
}

struct ip4h {
	__u8 vihl, tos;
	__be16 len, id, frag;
	__u8 ttl, proto;
	__u16 csum;
	__u32 src, dst;
};

static __always_inline int do_ip4(struct __sk_buff *skb, struct gport *g, __u32 ifx, __u32 l3)
{
	struct ip4h h;
	if (l3 + 20 > skb->len || bpf_skb_load_bytes(skb, l3, &h, 20) < 0)
		return drop(ifx, R_MALFORMED);
	__u32 ihl = (h.vihl & 15) * 4;
	if (h.vihl >> 4 != 4 || ihl < 20 || l3 + ihl > skb->len)
		return drop(ifx, R_MALFORMED);
	int later = (bpf_ntohs(h.frag) & 0x1FFF) != 0;
	__be16 ports[2] = { 0, 0 };
	int udp = !later && h.proto == 17;
	if (udp && (l3 + ihl + 8 > skb->len || bpf_skb_load_bytes(skb, l3 + ihl, ports, 4) < 0))
		return drop(ifx, R_MALFORMED);
	if (!(h.src == 0 && udp && ports[0] == bpf_htons(68) && ports[1] == bpf_htons(67)) && !holds4(g, ifx, h.src))
		return drop(ifx, R_IP);
	if (udp && ports[0] == bpf_htons(67) && !(g->flags & G_DHCP))
		return drop(ifx, R_DHCP);
	return TCX_NEXT;
}

struct ip6h {
	__be32 vtcfl;
	__be16 plen;
	__u8 nh, hlim;
	__u32 src[4], dst[4];
};

struct nd {
	__u8 type, code;
	__u16 csum;
	__be32 flags;
	__u32 target[4];
};

struct na_reply {
	struct ip6h ip;
	struct nd nd;
	__u8 opt[8];
};

static __always_inline int any6(const __u32 *a)
{
	return (a[0] | a[1] | a[2] | a[3]) == 0;
}

static __always_inline int do_ns_answer(struct __sk_buff *skb, __u32 ifx, __u32 l3, struct ip6h *h, struct nd *n)
{
	struct k6 k = { .ifindex = ifx };
	__builtin_memcpy(k.addr, n->target, 16);
	struct ans *ans = bpf_map_lookup_elem(&ans6, &k);
	if (!ans) { /* registered, not to this port: dropped, unless the asker holds it itself */
		if (bpf_map_lookup_elem(&src6, &k))
			return TCX_NEXT;
		k.ifindex = 0;
		return bpf_map_lookup_elem(&reg6, &k) ? drop(ifx, R_NOSHARE) : TCX_NEXT;
	}
	struct na_reply r = {};
	__u8 mac[6];
	__builtin_memcpy(mac, ans->mac, 6);
	__u32 rflag = ans->flags & A_ROUTER ? 0x80 : 0;
	r.ip.vtcfl = bpf_htonl(0x60000000);
	r.ip.plen = bpf_htons(32);
	r.ip.nh = 58;
	r.ip.hlim = 255;
	__builtin_memcpy(r.ip.src, n->target, 16);
	__builtin_memcpy(r.ip.dst, h->src, 16);
	r.nd.type = 136;
	r.nd.flags = bpf_htonl((rflag | 0x40 | 0x20) << 24);
	__builtin_memcpy(r.nd.target, n->target, 16);
	r.opt[0] = 2;
	r.opt[1] = 1;
	__builtin_memcpy(r.opt + 2, mac, 6);
	__be32 pseudo[2] = { bpf_htonl(32), bpf_htonl(58) };
	__s64 sum = bpf_csum_diff(0, 0, (__be32 *)r.ip.src, 32, 0);
	sum = bpf_csum_diff(0, 0, pseudo, 8, sum);
	sum = bpf_csum_diff(0, 0, (__be32 *)&r.nd, 32, sum);
	__u32 s = (__u32)sum;
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	r.nd.csum = ~s & 0xffff;
	__u8 eth[12];
	if (bpf_skb_load_bytes(skb, 6, eth, 6) < 0)
		return TC_ACT_SHOT;
	__builtin_memcpy(eth + 6, mac, 6);
	if (bpf_skb_change_tail(skb, l3 + sizeof(r), 0) < 0)
		return TC_ACT_SHOT;
	if (bpf_skb_store_bytes(skb, 0, eth, 12, 0) < 0 || bpf_skb_store_bytes(skb, l3, &r, sizeof(r), 0) < 0)
		return TC_ACT_SHOT;
	return answered(ifx);
}

static __always_inline int do_ip6(struct __sk_buff *skb, struct gport *g, __u32 ifx, __u32 l3)
{
	struct ip6h h;
	int guarded = g->flags & G_GUARDED;
	if (l3 + 40 > skb->len || bpf_skb_load_bytes(skb, l3, &h, 40) < 0)
		return guarded ? drop(ifx, R_MALFORMED) : TCX_NEXT;
	__u32 end = l3 + 40 + bpf_ntohs(h.plen);
	if ((bpf_ntohl(h.vtcfl) >> 28) != 6 || end > skb->len)
		return guarded ? drop(ifx, R_MALFORMED) : TCX_NEXT;
	__u8 nh = h.nh;
	__u32 off = l3 + 40;
	int later = 0, upper = 0;
	for (int i = 0; i < MAX_EXT + 1; i++) {
		__u8 eh[4];
		if (nh == 0 || nh == 43 || nh == 60) {
			if (off + 8 > end || bpf_skb_load_bytes(skb, off, eh, 2) < 0)
				return guarded ? drop(ifx, R_MALFORMED) : TCX_NEXT;
			nh = eh[0];
			off += (eh[1] + 1) * 8;
		} else if (nh == 44) {
			if (off + 8 > end || bpf_skb_load_bytes(skb, off, eh, 4) < 0)
				return guarded ? drop(ifx, R_MALFORMED) : TCX_NEXT;
			if (((eh[2] << 8) | eh[3]) & 0xFFF8) {
				later = 1;
				upper = 1;
				break;
			}
			nh = eh[0];
			off += 8;
		} else {
			upper = 1;
			break;
		}
		if (off > 0xffff)
			return guarded ? drop(ifx, R_MALFORMED) : TCX_NEXT;
	}
	if (!upper)
		return guarded ? drop(ifx, R_MALFORMED) : TCX_NEXT;
	__be16 ports[2] = { 0, 0 };
	struct nd n = {};
	int icmp = -1;
	if (!later && nh == 17) {
		if (off + 8 > end || bpf_skb_load_bytes(skb, off, ports, 4) < 0)
			return guarded ? drop(ifx, R_MALFORMED) : TCX_NEXT;
	} else if (!later && nh == 58) {
		if (off + 4 > end || bpf_skb_load_bytes(skb, off, &n, 4) < 0)
			return guarded ? drop(ifx, R_MALFORMED) : TCX_NEXT;
		icmp = n.type;
		if (icmp == 135 || icmp == 136) {
			if (off + 24 > end || bpf_skb_load_bytes(skb, off, &n, 24) < 0)
				return guarded ? drop(ifx, R_MALFORMED) : TCX_NEXT;
		}
	}
	if (guarded) {
		int dad_mld = nh == 58 && !later && (icmp == 135 || icmp == 131 || icmp == 143);
		if (!(any6(h.src) && dad_mld) && !holds6(g, ifx, h.src))
			return drop(ifx, R_IP);
		if (!later && nh == 17 && ports[0] == bpf_htons(547) && !(g->flags & G_DHCP))
			return drop(ifx, R_DHCP);
		if ((icmp == 134 || icmp == 137) && !(g->flags & G_ROUTER))
			return drop(ifx, R_RA);
	}
	if (icmp != 135 && icmp != 136)
		return TCX_NEXT;
	/* the options, as model/frames.py reads them */
	__u32 o = off + 24;
	int spoof = 0, done = 0;
	for (int i = 0; i < MAX_OPTS; i++) {
		if (o == end) {
			done = 1;
			break;
		}
		__u8 opt[8];
		if (o + 2 > end || bpf_skb_load_bytes(skb, o, opt, 2) < 0 || opt[1] == 0 || o + opt[1] * 8 > end)
			return guarded ? drop(ifx, R_MALFORMED) : TCX_NEXT;
		if (opt[0] == 1 || opt[0] == 2) {
			if (opt[1] != 1 || bpf_skb_load_bytes(skb, o, opt, 8) < 0)
				return guarded ? drop(ifx, R_MALFORMED) : TCX_NEXT;
			if (!mac_eq(opt + 2, g->mac))
				spoof = 1;
		}
		o += opt[1] * 8;
	}
	if (!done && o != end)
		return guarded ? drop(ifx, R_MALFORMED) : TCX_NEXT;
	if (guarded && spoof)
		return drop(ifx, R_ND);
	if (guarded && icmp == 136 && !holds6(g, ifx, n.target))
		return drop(ifx, R_ND);
	if (icmp == 135 && !any6(h.src))
		return do_ns_answer(skb, ifx, l3, &h, &n);
	return TCX_NEXT;
}

SEC("tc")
int hv_guard(struct __sk_buff *skb)
{
	__u32 ifx = skb->ifindex;
	struct gport *g = bpf_map_lookup_elem(&gports, &ifx);
	if (!g)
		return TCX_NEXT;
	int guarded = g->flags & G_GUARDED;
	void *data = (void *)(long)skb->data, *data_end = (void *)(long)skb->data_end;
	if (guarded && data + 38 <= data_end) { /* the common case in place: untagged IPv4, ihl 5 */
		__u8 *e = data;
		struct ip4h *h = data + 14;
		if (e[12] == 0x08 && e[13] == 0x00 && h->vihl == 0x45) {
			if (!mac_eq(e + 6, g->mac))
				return TCX_NEXT; /* the send check's: forged_source */
			int udp = !(bpf_ntohs(h->frag) & 0x1FFF) && h->proto == 17;
			__be16 *ports = data + 34;
			if (udp && skb->len < 42)
				return drop(ifx, R_MALFORMED);
			if (!(h->src == 0 && udp && ports[0] == bpf_htons(68) && ports[1] == bpf_htons(67)) &&
			    !holds4(g, ifx, h->src))
				return drop(ifx, R_IP);
			if (udp && ports[0] == bpf_htons(67) && !(g->flags & G_DHCP))
				return drop(ifx, R_DHCP);
			return TCX_NEXT;
		}
	}
	__u8 eth[14];
	if (bpf_skb_load_bytes(skb, 0, eth, 14) < 0)
		return guarded ? drop(ifx, R_MALFORMED) : TCX_NEXT;
	if (!mac_eq(eth + 6, g->mac))
		return TCX_NEXT; /* the send check's: forged_source */
	__u16 proto = (eth[12] << 8) | eth[13];
	__u32 off = 14;
	int tags = skb->vlan_present ? 1 : 0;
	for (int i = 0; i < 3; i++) {
		if (proto != ETH_P_8021Q && proto != ETH_P_8021AD)
			break;
		if (tags == 2 || off + 4 > skb->len)
			return guarded ? drop(ifx, R_MALFORMED) : TCX_NEXT;
		__u8 t[2];
		if (bpf_skb_load_bytes(skb, off + 2, t, 2) < 0)
			return guarded ? drop(ifx, R_MALFORMED) : TCX_NEXT;
		proto = (t[0] << 8) | t[1];
		off += 4;
		tags++;
	}
	if (proto == ETH_P_ARP)
		return do_arp(skb, g, ifx, off);
	if (proto == ETH_P_IP)
		return guarded ? do_ip4(skb, g, ifx, off) : TCX_NEXT;
	if (proto == ETH_P_IPV6)
		return do_ip6(skb, g, ifx, off);
	return TCX_NEXT;
}

char LICENSE[] SEC("license") = "GPL";
