"""In-memory reference back end: records every transaction; can fail on demand (tests)."""

from __future__ import annotations

from dataclasses import dataclass, field

from hostvlan.datapath.base import DatapathError, PortCounters, TenantFilter
from hostvlan.model.facts import Facts, FactsDelta


@dataclass
class MemoryKernel:
    """Stands for the kernel: survives the back-end object, like real kernel state."""

    facts: Facts | None = None
    digest: int | None = None
    transactions: list[FactsDelta] = field(default_factory=list)
    fail_next: int = 0


def _applied(facts: Facts | None, delta: FactsDelta) -> Facts:
    def upd(name: str) -> frozenset[object]:
        have: frozenset[object] = getattr(facts, name) if facts is not None else frozenset()
        d = getattr(delta, name)
        out: frozenset[object] = (have - d.remove) | d.add
        return out

    return Facts(**{name: upd(name) for name in Facts.__dataclass_fields__})  # type: ignore[arg-type]


class MemoryFilter(TenantFilter):
    def __init__(self, kernel: MemoryKernel | None = None) -> None:
        super().__init__()
        self.kernel = kernel or MemoryKernel()

    def _transact(self, delta: FactsDelta, digest: int) -> None:
        if self.kernel.fail_next:
            self.kernel.fail_next -= 1
            raise DatapathError("injected failure")
        self.kernel.facts = _applied(self.kernel.facts, delta)
        self.kernel.digest = digest
        self.kernel.transactions.append(delta)

    def read(self) -> Facts | None:
        return self.kernel.facts

    def _kernel_digest(self) -> int | None:
        return self.kernel.digest if self.kernel.facts is not None else None

    def _install(self, delta: FactsDelta, digest: int) -> None:
        self._transact(delta, digest)

    def _commit(self, delta: FactsDelta, digest: int) -> None:
        self._transact(delta, digest)

    def counters(self) -> dict[str, PortCounters]:
        return {}

    def _remove(self) -> None:
        self.kernel.facts = None
        self.kernel.digest = None
