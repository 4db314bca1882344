"""The agent's health and counters, shared between the reconcile loop and HTTP threads."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from sluice.agent.reconcile import ReconcileOutcome


@dataclass(frozen=True)
class Health:
    ok: bool
    reason: str


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

    def record_success(self, outcome: ReconcileOutcome) -> None:
        with self._lock:
            self._reconciles["success"] += 1
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

    def record_failure(self, reason: str, duration: float) -> int:
        """Returns how many reconciles in a row have failed."""
        with self._lock:
            self._reconciles["failure"] += 1
            self._last_duration = duration
            self._last_error = reason
            self._consecutive_failures += 1
            return self._consecutive_failures

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
                              dict(self._changes_total))
