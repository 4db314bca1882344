"""What a benchmark measured: repeated samples per dataplane, their median and spread,
the bpf/iptables ratio and whether the issue's target was met."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Samples:
    """Repeated measurements of one figure; the median is what is reported."""

    values: tuple[float, ...]

    @classmethod
    def of(cls, values: Sequence[float]) -> Samples:
        if not values:
            raise ValueError("no samples")
        return cls(tuple(float(v) for v in values))

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def spread(self) -> float:
        """(max - min) / median: how noisy the repeats were, 0.05 meaning 5%."""
        median = self.median
        return (max(self.values) - min(self.values)) / abs(median) if median else 0.0

    def to_json(self) -> dict[str, Any]:
        return {"median": self.median, "spread": round(self.spread, 4),
                "samples": list(self.values)}


@dataclass(frozen=True)
class Target:
    """The issue's target for one row, as text, and how to judge it from the row."""

    text: str
    judge: Callable[[BenchRow], bool | None] | None = None

    def met(self, row: BenchRow) -> bool | None:
        return None if self.judge is None else self.judge(row)


def ratio_at_least(minimum: float) -> Target:
    return Target(f">= {minimum:g}x", lambda row: row.ratio is not None and row.ratio >= minimum)


def ratio_at_most(maximum: float) -> Target:
    """A cost ratio; a zero bpf figure is a failed measurement, not a win."""
    return Target(f"<= {maximum:g}x", lambda row: row.ratio is not None
                  and row.bpf.median > 0 and row.ratio <= maximum)


def bpf_at_most(limit: float, unit: str) -> Target:
    return Target(f"bpf <= {limit:g} {unit}", lambda row: row.bpf.median <= limit)


@dataclass(frozen=True)
class BenchRow:
    """One line of the results table.

    `ratio` is bpf / iptables of the medians, so for rates above 1 is better and for
    costs (ns, CPU seconds, latency) below 1 is better; `better` says which.
    """

    benchmark: str
    case: str
    metric: str
    unit: str
    better: str  # "higher" or "lower"
    bpf: Samples
    iptables: Samples | None
    tool: str
    params: str
    target: Target | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        if self.iptables is None or not self.iptables.median:
            return None
        return self.bpf.median / self.iptables.median

    @property
    def met(self) -> bool | None:
        return None if self.target is None else self.target.met(self)

    def to_json(self) -> dict[str, Any]:
        ratio = self.ratio
        return {
            "benchmark": self.benchmark, "case": self.case, "metric": self.metric,
            "unit": self.unit, "better": self.better, "bpf": self.bpf.to_json(),
            "iptables": self.iptables.to_json() if self.iptables else None,
            "ratio": round(ratio, 4) if ratio is not None else None,
            "target": self.target.text if self.target else None, "met": self.met,
            "tool": self.tool, "params": self.params, "note": self.note, **self.extra}
