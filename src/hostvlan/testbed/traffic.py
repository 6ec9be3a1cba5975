"""Real frames between namespaces: raw AF_PACKET sockets, one process, no tcpdump.

`Probe` opens one packet socket per interface inside each namespace (a socket stays
bound to the namespace it was created in), sends hand-built Ethernet frames carrying a
marker and collects, per receiver, every marked frame that arrived. Python only sends
and watches here; it is never in a switch's forwarding path.
"""

from __future__ import annotations

import select
import socket
import struct
import time
from dataclasses import dataclass

from hostvlan.model.ids import Mac
from hostvlan.testbed.netns import inside

ETH_P_ALL = 0x0003
ETH_P_PROBE = 0x88B5  # IEEE 802 local experimental ethertype
ETH_P_8021Q = 0x8100
PACKET_OUTGOING = 4
MARKER = b"HVPROBE:"
BROADCAST = Mac("ff:ff:ff:ff:ff:ff")
MULTICAST = Mac("01:00:5e:7f:00:01")  # an IPv4 multicast group MAC nobody joined: flooded


def _mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


def frame(dst: str, src: str, tag: str, vlan: int | None = None) -> bytes:
    """An Ethernet frame (optionally 802.1Q-tagged) whose payload carries `tag`."""
    head = _mac_bytes(dst) + _mac_bytes(src)
    if vlan is not None:
        head += struct.pack("!HH", ETH_P_8021Q, vlan & 0x0FFF)
    payload = MARKER + tag.encode() + b"\0"
    payload += b"\0" * max(0, 46 - len(payload))
    return head + struct.pack("!H", ETH_P_PROBE) + payload


def tag_of(data: bytes) -> str | None:
    i = data.find(MARKER)
    if i < 0:
        return None
    j = data.find(b"\0", i)
    return data[i + len(MARKER) : j if j >= 0 else None].decode(errors="replace")


@dataclass(frozen=True)
class Received:
    tag: str
    src: Mac  # the frame's source MAC as it arrived


class Probe:
    """Packet sockets on named endpoints; use as a context manager."""

    def __init__(self) -> None:
        self._socks: dict[str, socket.socket] = {}

    def __enter__(self) -> Probe:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def attach(self, name: str, netns: str, ifname: str = "eth0") -> None:
        with inside(netns):
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        sock.bind((ifname, ETH_P_ALL))
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self._socks[name] = sock

    def send(self, name: str, data: bytes) -> None:
        self._socks[name].send(data)

    def drain(self) -> None:
        """Discard whatever is queued (e.g. before a measurement)."""
        self.collect(settle=0.0)

    def collect(self, settle: float = 0.3, deadline: float = 5.0) -> dict[str, list[Received]]:
        """Marked frames received per endpoint, until `settle` seconds pass with no new frame."""
        got: dict[str, list[Received]] = {n: [] for n in self._socks}
        by_fd = {s.fileno(): (n, s) for n, s in self._socks.items()}
        poller = select.poll()
        for fd in by_fd:
            poller.register(fd, select.POLLIN)
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            events = poller.poll(settle * 1000)
            if not events:
                break
            for fd, _ in events:
                name, sock = by_fd[fd]
                while True:
                    try:
                        data, addr = sock.recvfrom(65535)
                    except BlockingIOError:
                        break
                    if addr[2] == PACKET_OUTGOING:
                        continue
                    tag = tag_of(data)
                    if tag is not None:
                        got[name].append(Received(tag, Mac(data[6:12].hex(":"))))
        return got

    def close(self) -> None:
        for sock in self._socks.values():
            sock.close()
        self._socks.clear()
