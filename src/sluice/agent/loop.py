"""The reconcile loop: run on triggers (debounced) and every resync interval; back off
after failures; never die of one."""

from __future__ import annotations

import logging
import threading
import time

from sluice.agent.reconcile import ReconcileOutcome, Reconciler
from sluice.agent.status import AgentStatus, trigger_of
from sluice.agent.triggers import Trigger
from sluice.compile.topology import UnknownNodeError

log = logging.getLogger("sluice.agent")

DEBOUNCE_QUIET = 0.05  # a burst ends after this long without a new trigger
DEBOUNCE_LONGEST = 0.5  # ... or this long after it began
BACKOFF_FIRST = 0.5
BACKOFF_MAX = 30.0
MAX_PROBLEMS_IN_REASON = 3


class ReconcileLoop:
    def __init__(self, reconciler: Reconciler, status: AgentStatus, trigger: Trigger,
                 stop: threading.Event, resync_interval: float) -> None:
        self._reconciler = reconciler
        self._status = status
        self._trigger = trigger
        self._stop = stop
        self._resync_interval = resync_interval
        self._problems: tuple[str, ...] = ()
        self._thread = threading.Thread(target=self._run, name="reconcile", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def _run(self) -> None:
        due = time.monotonic()  # the first reconcile runs at once
        while not self._stop.is_set():
            reasons = self._trigger.wait(due - time.monotonic())
            if self._stop.is_set():
                return
            if reasons:
                reasons = self._trigger.settle(reasons, DEBOUNCE_QUIET, DEBOUNCE_LONGEST)
            elif time.monotonic() < due:
                continue
            delay = self.reconcile_once(reasons or {"resync"})
            due = time.monotonic() + delay

    def reconcile_once(self, reasons: set[str]) -> float:
        """One reconcile; returns the seconds until the next one is due."""
        started = time.monotonic()
        try:
            outcome = self._reconciler.run()
        except UnknownNodeError as err:
            return self._failed(f"{err} (yet); waiting for it{self._datastore_hint()}", started,
                                reasons)
        except Exception as err:  # the agent must outlive any bad input
            log.debug("reconcile failed", exc_info=True)
            return self._failed(f"{type(err).__name__}: {err}", started, reasons)
        self._succeeded(outcome, reasons)
        return self._resync_interval

    def _succeeded(self, outcome: ReconcileOutcome, reasons: set[str]) -> None:
        self._status.record_success(outcome, trigger_of(reasons))
        if outcome.changes.any:
            log.info("reconciled revision %d in %.0f ms (%s): %s", outcome.desired.revision,
                     outcome.duration * 1000, _why(reasons), outcome.changes.summary())
        else:
            log.debug("reconciled revision %d in %.0f ms: nothing to change",
                      outcome.desired.revision, outcome.duration * 1000)
        self._log_problems(outcome.problems)

    def _failed(self, reason: str, started: float, reasons: set[str]) -> float:
        failures = self._status.record_failure(reason, time.monotonic() - started,
                                               trigger_of(reasons))
        backoff = min(BACKOFF_FIRST * 2.0 ** min(failures - 1, 16), BACKOFF_MAX)
        log.warning("reconcile failed (%d in a row; retrying in %.1f s): %s", failures, backoff,
                    reason)
        return backoff

    def _datastore_hint(self) -> str:
        problems = self._reconciler.datastore.problems()
        if not problems:
            return ""
        shown = "; ".join(str(p) for p in problems[:MAX_PROBLEMS_IN_REASON])
        more = len(problems) - MAX_PROBLEMS_IN_REASON
        return f"; the datastore has problems: {shown}" + (f" (+{more} more)" if more > 0 else "")

    def _log_problems(self, problems: tuple[str, ...]) -> None:
        for problem in problems:
            if problem not in self._problems:
                log.warning("problem: %s", problem)
        for problem in self._problems:
            if problem not in problems:
                log.info("resolved: %s", problem)
        self._problems = problems


def _why(reasons: set[str]) -> str:
    cni = sorted(r.removeprefix("cni:") for r in reasons if r.startswith("cni:"))
    other = sorted(r for r in reasons if not r.startswith("cni:"))
    parts = other + ([f"endpoint {', '.join(cni)}"] if cni else [])
    return "after " + ", ".join(parts)
