"""A stand-in for QEMU on a macvtap port: copies frames between /dev/tapN and a VM namespace.

    python -m hostvlan.testbed.vmtap --tap /dev/tapN --netns VMNS [--ifname eth0] [--ip 10.0.0.1/24]

What QEMU does with a macvtap device, reduced to what a test needs: open the macvtap's
character device (from the HOST namespace: the macvtap, and so the tenant filter on its
hooks, stays in the host namespace beside the uplink), and give the guest a NIC whose
frames are exactly the frames of that character device. The guest NIC here is a TAP
device `--ifname` created inside the VM namespace, carrying the vNIC MAC (read from the
macvtap with SIOCGIFHWADDR, i.e. the macvtap's own MAC, unless `--mac` overrides it)
and `--ip`, so that `ip netns exec VMNS ping …` works like in a guest.

    guest stack ─ eth0 (TAP, VM netns) ═ this process ═ /dev/tapN ─ macvtap (host netns)

Direction (verified on Linux 6.18): a frame the guest sends is written to /dev/tapN and
enters the kernel through the macvtap's TRANSMIT path (`dev_queue_xmit` on the macvtap:
its netdev *egress* hook); a frame for the guest arrives on the macvtap's RECEIVE path
(its netdev *ingress* hook), then is queued to /dev/tapN for this process to read.

Both fds are opened without a virtio-net header (TUNSETIFF IFF_TAP|IFF_NO_PI on each), so
the kernel segments GSO packets and resolves partial checksums before handing them over:
every read is one plain Ethernet frame.

The copy loop: `vmtap_relay.c`, a page of C compiled with gcc on first use (cached under
/run/hostvlan by the hash of its source) and exec()ed by this process once the guest NIC
is up (`--relay c`; the default `auto` picks it when gcc works); `--relay python` keeps the
loop in Python (`Pump`, same semantics, the fallback without a compiler). The default
can be set with HOSTVLAN_VMTAP_RELAY (what the testbed and the tests pass down). Either way one poll(2)
wake-up per burst, then one read(2) and one write(2) per frame and direction. A write
that would block (the far socket's buffer holds frames not yet consumed) keeps the frame
and stops reading that direction until the far fd is writable: backpressure, as QEMU
does, rather than a drop that a Python-paced loop never used to hit.

Cost (test scaffolding, never the data path of a real deployment), measured on the
2-vCPU development VM under load (`tests/integration/test_macvtap_standin.py` prints the
numbers on the machine at hand, for both loops): ping RTT VM → VM (two stand-in
crossings each way) ≈ 55 µs with the C loop, ≈ 210 µs with the Python one; VM → wire
≈ 35 µs / ≈ 150 µs; sockperf one-way UDP latency VM → VM ≈ 10 µs instead of 20-50 µs,
and TCP VM → VM ≈ 2.2 Gbit/s instead of ≈ 0.5. The C loop also keeps an interpreter's
wake-up jitter out of latency benchmarks. Frames the far side refuses (a device down, a
full queue beyond the first hop) are dropped and counted, like a congested NIC; the
counts are printed to stderr when the process ends.

Life cycle: prints one line `ready <macvtap> <ifname> <mac>` on stdout once the guest NIC
is up, then copies until SIGTERM/SIGINT (exit 0) or until either side fails (exit 1).
The guest TAP device is not persistent: it disappears with the process.

/dev/tapN names: N is the macvtap's ifindex, which is per network namespace, while
devtmpfs is global: with two namespaces holding a macvtap of the same ifindex, /dev/tapN
is the first one's, the second gets no node, and it loses it too when the first goes
(verified on 6.18). A testbed with several namespaces should pass a private node made with
the (major, minor) from the macvtap's own `/sys/class/net/<dev>/macvtap/tap<N>/dev`
(read inside the host namespace); `ready` names the macvtap the node really opened.
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import hashlib
import os
import select
import signal
import stat
import struct
import subprocess
import sys
from pathlib import Path
from types import FrameType

from hostvlan.model.ids import Mac, parse_mac
from hostvlan.testbed import netns

TUNSETIFF = 0x400454CA
SIOCGIFHWADDR = 0x8927
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFREQ = "16sH22x"  # struct ifreq: name + flags, 40 bytes on 64-bit
TUN_DEVICE = "/dev/net/tun"
BURST = 64  # frames copied per wake-up and direction before polling again
MAX_FRAME = 65536
RELAY_SOURCE = Path(__file__).with_name("vmtap_relay.c")
RELAY_DIR = Path("/run/hostvlan")  # root's: the binary is exec()ed as root


def relay_binary(directory: Path = RELAY_DIR) -> Path | None:
    """The C copy loop, compiled on first use and cached by source hash; None without gcc."""
    source = RELAY_SOURCE.read_bytes()
    binary = directory / f"vmtap-relay-{hashlib.sha256(source).hexdigest()[:16]}"
    if binary.exists():
        return binary
    directory.mkdir(mode=0o755, parents=True, exist_ok=True)
    tmp = directory / f".{binary.name}.{os.getpid()}"
    try:
        subprocess.run(
            ["gcc", "-O2", "-Wall", "-Werror", "-o", str(tmp), str(RELAY_SOURCE)],
            check=True,
            capture_output=True,
            timeout=60,
        )
    except (OSError, subprocess.SubprocessError):
        tmp.unlink(missing_ok=True)
        return None
    os.replace(tmp, binary)  # atomic: stand-ins starting together each compile, one wins
    return binary


def private_tap_node(netns_name: str, port: str, ifindex: int, node: Path) -> Path:
    """Make `node` a character device for the macvtap `port` (ifindex `ifindex`) of namespace
    `netns_name`: /dev/tapN collides across namespaces (module doc). sysfs shows the devices of
    the namespace that mounted it, so the (major, minor) is read through `ip netns exec`."""
    got = subprocess.run(
        ["ip", "netns", "exec", netns_name, "cat", f"/sys/class/net/{port}/macvtap/tap{ifindex}/dev"],
        capture_output=True,
        text=True,
        check=True,
        timeout=10,
    )
    major, minor = (int(x) for x in got.stdout.strip().split(":"))
    node.unlink(missing_ok=True)
    os.mknod(node, stat.S_IFCHR | 0o600, os.makedev(major, minor))
    return node


def open_macvtap(path: str) -> tuple[int, str, Mac]:
    """Open a macvtap character device as QEMU does: (fd, macvtap name, its MAC)."""
    fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack(IFREQ, b"", IFF_TAP | IFF_NO_PI))  # no vnet header
        out = fcntl.ioctl(fd, SIOCGIFHWADDR, bytes(40))
    except BaseException:
        os.close(fd)
        raise
    name = out[:16].split(b"\0", 1)[0].decode()
    mac = Mac(out[18:24].hex(":"))
    return fd, name, mac


def open_guest_tap(ns: str, ifname: str) -> int:
    """Create TAP device `ifname` inside namespace `ns` (it lives as long as the fd)."""
    with netns.inside(ns):  # a tun fd belongs to the namespace it was opened in
        fd = os.open(TUN_DEVICE, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack(IFREQ, ifname.encode(), IFF_TAP | IFF_NO_PI))
    except BaseException:
        os.close(fd)
        raise
    return fd


def configure_guest(ns: str, ifname: str, mac: Mac, ip: str | None) -> None:
    with netns.iproute(ns) as ipr:
        idx = ipr.link_lookup(ifname=ifname)[0]
        ipr.link("set", index=idx, address=mac)
        if ip is not None:
            addr, _, plen = ip.partition("/")
            ipr.addr("add", index=idx, address=addr, prefixlen=int(plen or "24"))
        ipr.link("set", index=idx, state="up")


class Pump:
    """Copies frames between two non-blocking fds until one of them fails (the Python twin
    of vmtap_relay.c: a write that would block holds its direction until the destination
    is writable again, backpressure as in QEMU; other refused writes drop the frame)."""

    def __init__(self, a: int, b: int) -> None:
        self.peer = {a: b, b: a}
        self.copied = {a: 0, b: 0}  # frames read from each fd and written to its peer
        self.dropped = {a: 0, b: 0}
        self.pending: dict[int, bytes] = {}  # src fd -> the frame its peer would not take yet

    def _put(self, src: int, data: bytes) -> bool:
        """Write one frame read from `src` to its peer; False when it is kept for later."""
        try:
            os.write(self.peer[src], data)
            self.copied[src] += 1
        except BlockingIOError:
            self.pending[src] = data
            return False
        except OSError as exc:
            # the far device is down, or a queue beyond it is full: the frame is lost on the wire
            if exc.errno not in (errno.EIO, errno.ENOBUFS, errno.ENETDOWN, errno.EINVAL):
                raise
            self.dropped[src] += 1
        self.pending.pop(src, None)
        return True

    def _move(self, src: int) -> None:
        for _ in range(BURST):
            try:
                data = os.read(src, MAX_FRAME)
            except BlockingIOError:
                return
            if not data:
                raise EOFError(f"fd {src} closed")
            if not self._put(src, data):
                return

    def run(self) -> None:
        poller = select.poll()
        while True:
            for fd in self.peer:  # read a source only while its frame is not held
                mask = (0 if fd in self.pending else select.POLLIN) | (
                    select.POLLOUT if self.peer[fd] in self.pending else 0
                )
                poller.register(fd, mask)
            for fd, events in poller.poll():
                src = self.peer[fd]
                if events & select.POLLOUT and src in self.pending:
                    self._put(src, self.pending[src])
                elif events & select.POLLIN and fd not in self.pending:
                    self._move(fd)
                elif events & (select.POLLERR | select.POLLHUP | select.POLLNVAL):
                    raise EOFError(f"fd {fd} failed (poll events {events:#x})")


def _stop(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hostvlan.testbed.vmtap", description=__doc__.split("\n")[0])
    parser.add_argument("--tap", required=True, help="the macvtap's character device, e.g. /dev/tap7")
    parser.add_argument("--netns", required=True, help="the VM's network namespace")
    parser.add_argument("--ifname", default="eth0", help="the guest NIC to create in the VM namespace")
    parser.add_argument("--mac", default=None, help="guest MAC (default: the macvtap's MAC, the vNIC MAC)")
    parser.add_argument("--ip", default=None, help="guest address with prefix length, e.g. 10.0.0.1/24")
    parser.add_argument(
        "--relay",
        choices=("auto", "c", "python"),
        default=os.environ.get("HOSTVLAN_VMTAP_RELAY", "auto"),
        help="copy loop: the compiled C relay (auto: when gcc works) or the Python one "
        "(default: $HOSTVLAN_VMTAP_RELAY, else auto)",
    )
    args = parser.parse_args(argv)
    relay = None if args.relay == "python" else relay_binary()
    if relay is None and args.relay == "c":
        parser.error("the C relay could not be compiled (gcc)")

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    mvt, name, mac = open_macvtap(args.tap)
    if args.mac is not None:
        mac = parse_mac(args.mac, vm=True)
    guest = open_guest_tap(args.netns, args.ifname)
    configure_guest(args.netns, args.ifname, mac, args.ip)
    print(f"vmtap {name}: copy loop {'C ' + str(relay) if relay else 'Python'}", file=sys.stderr, flush=True)
    print(f"ready {name} {args.ifname} {mac}", flush=True)
    if relay is not None:  # the same process, the same fds, no interpreter in the copy loop
        os.set_inheritable(mvt, True)
        os.set_inheritable(guest, True)
        sys.stderr.flush()
        os.execv(relay, [str(relay), str(mvt), str(guest), name])

    pump = Pump(mvt, guest)
    code = 0
    try:
        pump.run()
    except (EOFError, OSError) as exc:
        print(f"vmtap {name}: {exc}", file=sys.stderr)
        code = 1
    finally:
        print(
            f"vmtap {name}: guest->macvtap {pump.copied[guest]} frames ({pump.dropped[guest]} dropped), "
            f"macvtap->guest {pump.copied[mvt]} frames ({pump.dropped[mvt]} dropped)",
            file=sys.stderr,
            flush=True,
        )
        os.close(guest)
        os.close(mvt)
    return code


if __name__ == "__main__":
    sys.exit(main())
