"""The demo's hand-built attack frames (testbed/forge.py) are the frames scapy would build:
valid checksums, so a router would take them if the guard let them through (the demo's
"unchanged" would mean nothing otherwise); and the model drops them from a guarded vNIC."""

from __future__ import annotations

from scapy.layers.inet6 import ICMPv6ND_NA, ICMPv6ND_NS, ICMPv6NDOptDstLLAddr, IPv6
from scapy.layers.l2 import ARP, Ether

from hostvlan.model import frames as fr
from hostvlan.testbed.forge import arp_reply, neighbour_advert, resolutions

ATT, RTR = "52:54:00:00:01:01", "52:54:00:00:ff:01"


def test_arp_reply_is_scapys() -> None:
    got = arp_reply(ATT, "10.200.0.2", RTR, "10.200.0.9")
    want = Ether(src=ATT, dst=RTR) / ARP(op=2, hwsrc=ATT, psrc="10.200.0.2", hwdst=RTR, pdst="10.200.0.9")
    assert got == bytes(want).ljust(60, b"\0")
    p = fr.parse(got)
    assert p.l3 == "arp" and str(p.spa) == "10.200.0.2"


def test_neighbour_advert_is_scapys_with_a_valid_checksum() -> None:
    got = neighbour_advert(ATT, "fd00::1", RTR, "fd00::9", "fd00::2")
    na = ICMPv6ND_NA(tgt="fd00::2", R=0, S=0, O=1) / ICMPv6NDOptDstLLAddr(lladdr=ATT)
    assert got == bytes(Ether(src=ATT, dst=RTR) / IPv6(src="fd00::1", dst="fd00::9") / na)
    p = fr.parse(got)
    assert p.l3 == "ip6" and str(p.target) == "fd00::2"


def test_resolutions_counts_requests_for_the_addresses_only() -> None:
    ask = Ether(src=ATT, dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, hwsrc=ATT, psrc="10.200.0.1", pdst="10.200.0.3")
    other = Ether(src=ATT, dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, hwsrc=ATT, psrc="10.200.0.1", pdst="10.200.0.4")
    reply = arp_reply(ATT, "10.200.0.3", RTR, "10.200.0.9")
    assert resolutions([bytes(ask), bytes(other), reply], ["10.200.0.3"]) == 1
    solicit = IPv6(src="fd00::1", dst="ff02::1:ff00:3") / ICMPv6ND_NS(tgt="fd00::3")
    ns = Ether(src=ATT, dst="33:33:ff:00:00:03") / solicit
    advert = neighbour_advert(ATT, "fd00::1", RTR, "fd00::9", "fd00::3")
    assert resolutions([bytes(ns), advert], ["fd00::3"]) == 1
    assert resolutions([bytes(ns)], ["fd00::4"]) == 0
