"""The agent's health and counters, shared between the reconcile loop and HTTP threads."""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from sluice.agent.reconcile import ReconcileOutcome

# Upper bounds (seconds) of the sync duration histogram: 1 ms (nothing changed, a small
# node) to 30 s (a large cluster's first sync); slower ones land in +Inf.
SYNC_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0)
UNKNOWN_TRIGGER = "unknown"
# A reconcile's reasons (see agent.triggers) as a few trigger names, most telling first.
_TRIGGER_ORDER = ("endpoint", "datastore", "datastore-resync", "resync")


def trigger_of(reasons: Iterable[str]) -> str:
    """One bounded label for why a reconcile ran: `cni:<key>` reasons are `endpoint`."""
    kinds = {"endpoint" if r.startswith("cni:") else r for r in reasons}
    return next((t for t in _TRIGGER_ORDER if t in kinds), UNKNOWN_TRIGGER)


@dataclass(frozen=True)
class Health:
    ok: bool
    reason: str


@dataclass(frozen=True)
class HistogramView:
    """A histogram as Prometheus exposes it: cumulative counts per upper bound."""

    buckets: tuple[tuple[float, int], ...]  # (le, observations <= le), ascending
    count: int  # all observations (the +Inf bucket)
    total: float  # their sum


@dataclass
class Histogram:
    bounds: tuple[float, ...] = SYNC_BUCKETS
    counts: list[int] = field(default_factory=list)  # per bucket, the last is +Inf
    total: float = 0.0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def view(self) -> HistogramView:
        cumulative, running = [], 0
        for bound, count in zip(self.bounds, self.counts, strict=False):
            running += count
            cumulative.append((bound, running))
        return HistogramView(tuple(cumulative), sum(self.counts), self.total)


@dataclass(frozen=True)
class StatusView:
    """A consistent copy of the status, for one HTTP response."""

    health: Health
    reconciles: dict[str, int]
    last_duration: float | None
    last_success_at: float | None  # wall clock
    last_error: str | None
    consecutive_failures: int
    outcome: ReconcileOutcome | None  # the last successful one
    changes_total: dict[tuple[str, str], int]
    # Reconcile durations by (result, trigger).
    sync_durations: dict[tuple[str, str], HistogramView] = field(default_factory=dict)


@dataclass
class AgentStatus:
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _reconciles: dict[str, int] = field(default_factory=lambda: {"success": 0, "failure": 0})
    _last_duration: float | None = None
    _last_success_at: float | None = None
    _last_error: str | None = "no reconcile has run yet"
    _consecutive_failures: int = 0
    _outcome: ReconcileOutcome | None = None
    _changes_total: dict[tuple[str, str], int] = field(default_factory=dict)
    _durations: dict[tuple[str, str], Histogram] = field(default_factory=dict)

    def record_success(self, outcome: ReconcileOutcome, trigger: str = UNKNOWN_TRIGGER) -> None:
        with self._lock:
            self._reconciles["success"] += 1
            self._observe("success", trigger, outcome.duration)
            self._last_duration = outcome.duration
            self._last_success_at = time.time()
            self._last_error = None
            self._consecutive_failures = 0
            self._outcome = outcome
            for kind, changes in outcome.changes.kinds.items():
                for op, count in (("add", changes.added), ("update", changes.changed),
                                  ("delete", changes.removed)):
                    if count:
                        key = (kind, op)
                        self._changes_total[key] = self._changes_total.get(key, 0) + count

    def record_failure(self, reason: str, duration: float,
                       trigger: str = UNKNOWN_TRIGGER) -> int:
        """Returns how many reconciles in a row have failed."""
        with self._lock:
            self._reconciles["failure"] += 1
            self._observe("failure", trigger, duration)
            self._last_duration = duration
            self._last_error = reason
            self._consecutive_failures += 1
            return self._consecutive_failures

    def _observe(self, result: str, trigger: str, duration: float) -> None:
        self._durations.setdefault((result, trigger), Histogram()).observe(duration)

    def health(self) -> Health:
        with self._lock:
            return self._health()

    def _health(self) -> Health:
        if self._last_error is not None:
            return Health(False, self._last_error)
        return Health(True, "ok")

    def view(self) -> StatusView:
        with self._lock:
            return StatusView(self._health(), dict(self._reconciles), self._last_duration,
                              self._last_success_at, self._last_error,
                              self._consecutive_failures, self._outcome,
                              dict(self._changes_total),
                              {key: h.view() for key, h in self._durations.items()})
