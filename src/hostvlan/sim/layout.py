"""The paper's Table 1 data center as data: hosts, VMs, tenants (LNIDs), in the worst case.

Pure: no I/O, imports nothing of ours. `Layout(hosts=8192, vms_per_host=128, vms_per_tenant=64)` is Table 1:
1,048,576 VMs in 16,384 tenants. Worst case (SPEC §5): every VM of a host is in a
different tenant, so every host's view holds vms_per_host × vms_per_tenant entries
(8,192), whatever the size of the data center.

Placement: hosts are grouped in *pods* of `vms_per_tenant` hosts; the `vms_per_host`
tenants of a pod each put one VM on every host of the pod. VM slot `s` of host `h` is in
LNID `1 + pod(h) * vms_per_host + s`. This is the worst case for view size, and keeps a
whole tenant inside one batch of pod-aligned hosts when the data center is loaded.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

MAC_BASE = 0x02_00_00_00_00_00  # locally administered, unicast
EXTRA_MAC_BASE = 0x06_00_00_00_00_00  # MACs the benchmark adds on top of the layout


def mac_of(index: int, base: int = MAC_BASE) -> str:
    h = f"{base + index:012x}"
    return f"{h[0:2]}:{h[2:4]}:{h[4:6]}:{h[6:8]}:{h[8:10]}:{h[10:12]}"


@dataclass(frozen=True)
class Layout:
    hosts: int
    vms_per_host: int
    vms_per_tenant: int

    def __post_init__(self) -> None:
        if min(self.hosts, self.vms_per_host, self.vms_per_tenant) < 1:
            raise ValueError("hosts, VMs per host and VMs per tenant must be positive")
        if self.hosts % self.vms_per_tenant:
            raise ValueError(
                f"hosts ({self.hosts}) must be a multiple of VMs per tenant ({self.vms_per_tenant}): "
                "in the worst case every VM of a tenant is on a different host"
            )

    # ----- sizes -----------------------------------------------------------------------------
    @property
    def vms(self) -> int:
        return self.hosts * self.vms_per_host

    @property
    def tenants(self) -> int:
        return self.vms // self.vms_per_tenant

    @property
    def pods(self) -> int:
        return self.hosts // self.vms_per_tenant

    @property
    def view_entries(self) -> int:
        """Entries of every host's view (the paper's worst case: 8,192 for Table 1)."""
        return self.vms_per_host * self.vms_per_tenant

    # ----- names ------------------------------------------------------------------------------
    @staticmethod
    def host_name(h: int) -> str:
        return f"sim{h:05d}"

    def mac(self, h: int, s: int) -> str:
        return mac_of(h * self.vms_per_host + s)

    @staticmethod
    def port(s: int) -> str:
        return f"vp{s}"

    def pod(self, h: int) -> int:
        return h // self.vms_per_tenant

    def lnid(self, h: int, s: int) -> int:
        return 1 + self.pod(h) * self.vms_per_host + s

    def hosts_of_pod(self, pod: int) -> range:
        return range(pod * self.vms_per_tenant, (pod + 1) * self.vms_per_tenant)

    def tenant_hosts(self, lnid: int) -> range:
        """The hosts with a VM of tenant `lnid`."""
        return self.hosts_of_pod((lnid - 1) // self.vms_per_host)

    def tenant_slot(self, lnid: int) -> int:
        return (lnid - 1) % self.vms_per_host

    # ----- commands and expectations ------------------------------------------------------------
    def reg_ops(self, hosts: range, addresses: bool = False) -> Iterator[dict[str, Any]]:
        """`reg` commands (for /v1/batch) placing every VM of `hosts`; `addresses`: each with
        one IPv4 and one IPv6 address (`ips_of`)."""
        for h in hosts:
            name = self.host_name(h)
            for s in range(self.vms_per_host):
                op = {"op": "reg", "lnid": self.lnid(h, s), "mac": self.mac(h, s), "host": name, "port": self.port(s)}
                if addresses:
                    op["ips"] = self.ips_of(h, s)
                yield op

    def ips_of(self, h: int, s: int) -> list[str]:
        """VM `s` of host `h`'s addresses: 10.0.0.0/8 and fd00::/64 counted from 1 (16M VMs)."""
        i = h * self.vms_per_host + s + 1
        return [f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", f"fd00::{i >> 16:x}:{i & 0xFFFF:x}"]

    def pod_entries(self, pod: int) -> dict[str, tuple[int, ...]]:
        """The view entries of every host of `pod` (MAC → its LNIDs, as the feed lists them).

        All hosts of a pod hold the same entries: build this once per pod and compare.
        """
        out: dict[str, tuple[int, ...]] = {}
        for h in self.hosts_of_pod(pod):
            for s in range(self.vms_per_host):
                out[self.mac(h, s)] = (self.lnid(h, s),)
        return out

    def expected_local(self, h: int) -> dict[str, str]:
        return {self.mac(h, s): self.port(s) for s in range(self.vms_per_host)}
