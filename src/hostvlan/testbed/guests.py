"""QEMU guests for the testbed (`guests: libvirt`): image, domain XML, exec channel.

The image (scripts/guest-image.sh, run by `make setup`): a Debian kernel extracted from its
package, busybox-static and the virtio modules in an initramfs whose /init
(`guest-init.sh`) brings up eth0 with the address of the kernel command line and serves
an exec channel on a virtio-serial port.

A domain is what an operator would define: TCG (`<domain type='qemu'>`; nested KVM guests
do not boot on the development VM), one virtio-net NIC with the vNIC's MAC and the
userspace virtio back end (`<driver name='qemu'/>`: no vhost-net here), attached by
switch:

  bridge    <interface type='bridge'>  <source bridge='br0'/>            libvirt makes a tap
            `vnetN` (MAC fe:…) and enslaves it to br0
  ovs       the same + <virtualport type='openvswitch'/>                 libvirt runs ovs-vsctl
            add-port with external_ids attached-mac / iface-id / vm-uuid / iface-status
  macvtap   <interface type='direct'> <source dev='uplink0' mode='bridge'/>   libvirt makes
            `macvtapN` (MAC = the vNIC's) on the uplink, brings it up and opens /dev/tapN

Exec channel: `<channel type='unix'>` bound by QEMU to `<sock>`, guest port
`org.hostvlan.exec`. One command per connection: the host sends `ID BASE64(script)\\n`,
the guest answers `OUT ID`, base64 lines of stdout, `ERR ID`, base64 of stderr,
`END ID STATUS`. The guest reopens its port between connections.
"""

from __future__ import annotations

import base64
import os
import secrets
import shlex
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

from hostvlan.model.ids import Mac

REPO = Path(__file__).resolve().parents[3]
IMAGE_DIR = Path(os.environ.get("HOSTVLAN_GUEST_DIR", REPO / ".cache" / "guest"))  # as scripts/guest-image.sh
CHANNEL = "org.hostvlan.exec"
READY = "hostvlan-guest: ready"
MEMORY_MIB = 160


class GuestError(RuntimeError):
    """A guest did not boot or its exec channel failed."""


@dataclass(frozen=True)
class GuestImage:
    kernel: Path
    initrd: Path

    @staticmethod
    def find(directory: Path = IMAGE_DIR) -> GuestImage:
        img = GuestImage(directory / "vmlinuz", directory / "initrd.img")
        for p in (img.kernel, img.initrd):
            if not p.is_file():
                raise GuestError(f"guest image {p} missing: run `make setup` (scripts/guest-image.sh)")
        return img


@dataclass(frozen=True)
class GuestSpec:
    """Everything a domain needs; `console` and `channel` are paths in the run's work dir."""

    domain: str
    mac: Mac
    ip: str  # ADDR/LEN
    switch: str  # bridge | ovs | macvtap
    source: str  # the bridge (bridge, ovs) or the uplink (macvtap)
    console: Path
    channel: Path
    ip6: str | None = None


def domain_xml(g: GuestSpec, image: GuestImage) -> str:
    # no_timer_check: under TCG on a loaded host the kernel's IO-APIC timer check can miss
    # its ticks and panic ("IO-APIC + timer doesn't work!"), as seen on the 2-vCPU VM
    cmdline = f"console=ttyS0 quiet loglevel=3 panic=-1 no_timer_check hv.ip={g.ip} hv.port={CHANNEL}"
    if g.ip6:
        cmdline += f" hv.ip6={g.ip6}"
    if g.switch == "macvtap":
        nic = f"<interface type='direct'><source dev={quoteattr(g.source)} mode='bridge'/>"
    elif g.switch == "ovs":
        nic = f"<interface type='bridge'><source bridge={quoteattr(g.source)}/><virtualport type='openvswitch'/>"
    elif g.switch == "bridge":
        nic = f"<interface type='bridge'><source bridge={quoteattr(g.source)}/>"
    else:
        raise ValueError(f"no guest NIC for switch {g.switch!r}")
    # OVS's userspace datapath takes frames as AF_PACKET hands them: no offloads on its ports
    driver = "<driver name='qemu'/>"
    if g.switch == "ovs":
        off = "csum='off' tso4='off' tso6='off'"
        driver = f"<driver name='qemu'><host {off} gso='off'/><guest {off}/></driver>"
    nic += f"<mac address='{g.mac}'/><model type='virtio'/>{driver}</interface>"
    return f"""<domain type='qemu'>
  <name>{escape(g.domain)}</name>
  <memory unit='MiB'>{MEMORY_MIB}</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{escape(str(image.kernel))}</kernel>
    <initrd>{escape(str(image.initrd))}</initrd>
    <cmdline>{escape(cmdline)}</cmdline>
  </os>
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    {nic}
    <serial type='file'><source path={quoteattr(str(g.console))}/><target port='0'/></serial>
    <channel type='unix'>
      <source mode='bind' path={quoteattr(str(g.channel))}/>
      <target type='virtio' name='{CHANNEL}'/>
    </channel>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
</domain>
"""


def wait_ready(console: Path, timeout: float) -> str:
    """Wait for the guest's ready line on its serial console; returns it."""
    end = time.monotonic() + timeout
    while True:
        if console.exists():
            text = console.read_text(errors="replace")
            for line in text.splitlines():
                if READY in line:
                    return line.strip()
            if "Kernel panic" in text:
                raise GuestError(f"guest kernel panicked; console:\n{text[-1500:]}")
        if time.monotonic() > end:
            tail = console.read_text(errors="replace")[-1500:] if console.exists() else "(no console output)"
            raise GuestError(f"guest did not boot within {timeout}s; console:\n{tail}")
        time.sleep(0.2)


@dataclass(frozen=True)
class ExecResult:
    status: int
    stdout: bytes
    stderr: bytes


def guest_exec(channel: Path, argv: list[str], timeout: float = 60.0) -> ExecResult:
    """Run `argv` in the guest behind `channel` (its exec socket); wait for its status."""
    token = secrets.token_hex(4)
    script = base64.b64encode(shlex.join(argv).encode()).decode()
    end = time.monotonic() + timeout
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(channel))
        sock.sendall(f"{token} {script}\n".encode())
        buf = b""
        while True:
            lines = buf.split(b"\n")
            done = [ln for ln in lines if ln.startswith(f"END {token} ".encode())]
            if done:
                return _parse_answer(token, lines, int(done[0].split()[2]))
            if time.monotonic() > end:
                raise GuestError(f"no answer from the guest within {timeout}s")
            sock.settimeout(max(0.1, end - time.monotonic()))
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                raise GuestError(f"no answer from the guest within {timeout}s") from None
            if not chunk:
                raise GuestError("the guest's exec channel closed")
            buf += chunk


def _parse_answer(token: str, lines: list[bytes], status: int) -> ExecResult:
    parts: dict[str, list[bytes]] = {"OUT": [], "ERR": []}
    cur: list[bytes] | None = None
    for ln in lines:
        head = ln.split()
        if len(head) >= 2 and head[1] == token.encode() and head[0] in (b"OUT", b"ERR", b"END"):
            cur = parts.get(head[0].decode())
            continue
        if cur is not None:
            cur.append(ln.strip())
    return ExecResult(status, base64.b64decode(b"".join(parts["OUT"])), base64.b64decode(b"".join(parts["ERR"])))
