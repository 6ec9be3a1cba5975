"""IPv6 on the testbed's endpoints (issue 13): each VM and external endpoint gets its IPv6
address (the run's /64, `plan.subnet6`) beside its IPv4.

IPv6 stays off everywhere else (hosts, switches: `wiring.new_ns`); on an endpoint's eth0 it
is on, with its EUI-64 link-local address and its /64 address, and quiet: no router
solicitations, no autoconfiguration from RAs, no DAD probes (the address is set `nodad`), so
that frame counts of the tests see only what they send (and the MLD reports of the groups
the kernel joins, which no test counts as tenant traffic).
"""

from __future__ import annotations

from hostvlan.testbed import netns

IFA_F_NODAD = 0x02
PREFIXLEN = 64

QUIET = (("accept_ra", "0"), ("router_solicitations", "0"), ("autoconf", "0"), ("dad_transmits", "0"))


def enable(ns: str, ip6: str, ifname: str = "eth0") -> None:
    """IPv6 on `ifname` in `ns` with address `ip6`/64 (quiet, see the module doc); "" does nothing."""
    if not ip6:
        return
    for key, value in (*QUIET, ("disable_ipv6", "0")):
        netns.sysctl(ns, f"net.ipv6.conf.{ifname}.{key}", value)
    with netns.iproute(ns) as ipr:
        idx = ipr.link_lookup(ifname=ifname)[0]
        ipr.addr("add", index=idx, address=ip6, prefixlen=PREFIXLEN, flags=IFA_F_NODAD)
