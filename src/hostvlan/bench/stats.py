"""The bench's statistics (median/min/max, paired ratios filtered/unfiltered) and its progress
lines on stderr (pure but for the clock and the stream)."""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from hostvlan.bench.options import LOWER_IS_BETTER, PAIRS


# ----- progress -----------------------------------------------------------------------------
@dataclass
class Progress:
    """One line per step on stderr: elapsed time, what was done, and an ETA from the plan."""

    plan: list[float]  # estimated seconds of every step
    t0: float = field(default_factory=time.monotonic)
    done: int = 0
    done_est: float = 0.0
    stream: Any = sys.stderr

    def step(self, label: str, took: float) -> None:
        est = self.plan[self.done] if self.done < len(self.plan) else took
        self.done += 1
        self.done_est += est
        elapsed = time.monotonic() - self.t0
        left = sum(self.plan[self.done :])
        scale = min(3.0, max(0.8, elapsed / self.done_est)) if self.done_est > 0 else 1.0
        print(
            f"[{mmss(elapsed)}] {self.done}/{len(self.plan)} {label} ({took:.1f} s); ETA {mmss(left * scale)}",
            file=self.stream,
            flush=True,
        )


def mmss(s: float) -> str:
    return f"{int(s) // 60:d}:{int(s) % 60:02d}"


# ----- statistics ---------------------------------------------------------------------------
def stats(values: list[float]) -> dict[str, Any]:
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "samples": [round(v, 4) for v in values],
    }


def summarize(samples: dict[str, list[float]], workload: str) -> dict[str, Any]:
    """Per config median/min/max; per pair present the paired ratios (same round) and the
    overhead in percent (positive: the filtered configuration is worse)."""
    out: dict[str, Any] = {"configs": {c: stats(v) for c, v in samples.items() if v}, "ratios": {}}
    for f, u in PAIRS.items():
        if samples.get(f) and samples.get(u):
            ratios = [a / b for a, b in zip(samples[f], samples[u], strict=True) if b > 0]
            if not ratios:
                continue
            r = stats(ratios)
            med = r["median"]
            r["overhead_pct"] = (med - 1) * 100 if workload in LOWER_IS_BETTER else (1 - med) * 100
            out["ratios"][f"{f}/{u}"] = r
    return out


def pct(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))]
