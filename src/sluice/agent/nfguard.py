"""The agent's netfilter monitor and blocker (bpf mode, opt-in): one thread that reports
foreign iptables/nftables rules of the node's namespace and what the blocker refused.

Monitor (`--netfilter-monitor`): every `--netfilter-monitor-interval` seconds the rules
are read (`nfrules`); each foreign rule that appears, and each that goes, is one line of
the agent's log (logger `sluice.nfguard`). A tool that fails keeps its last rules.

Blocker (`--netfilter-blocker`): `nfblocker` installs bpf/nfguard.c for this namespace
and the agent's cgroup, with the agent's PID allowlisted; each refusal the datapath
reports in its ring buffer is one log line. Without the flag, a blocker an earlier agent
left is removed.

`metric_families()` gives both as Prometheus families, for /metrics.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Mapping

from sluice.agent.config import AgentConfig
from sluice.agent.nfblocker import Blocker, BlockerError, current_netns_cookie, remove_blocker
from sluice.agent.nfrules import (
    FAMILIES,
    IPTABLES_LEGACY,
    IPTABLES_NFT,
    ForeignRule,
    read_foreign_rules,
)
from sluice.compile.topology import Dataplane
from sluice.datapath import nfguard as nf
from sluice.loader.ringbuf import RingBuffer

log = logging.getLogger("sluice.nfguard")

POLL_MS = 200
# (name, type, help, samples): the arguments of metrics._Writer.metric.
MetricFamily = tuple[str, str, str, list[tuple[Mapping[str, str], float]]]


class NetfilterGuardError(RuntimeError):
    """The monitor or blocker cannot start; the message says why."""


class NetfilterGuard:
    """Create with `install` (in the agent's start-up, before the reconcile loop runs
    tools), then `start` the thread once signals are blocked; `stop` at shutdown."""

    def __init__(self, config: AgentConfig, blocker: Blocker | None) -> None:
        self.config = config
        self.blocker = blocker
        self.monitor = config.netfilter_monitor and config.dataplane is Dataplane.BPF
        self._lock = threading.Lock()
        self._rules: frozenset[ForeignRule] = frozenset()
        self._seen_total = 0
        self._scans: Counter[str] = Counter()
        self._stop = threading.Event()
        self._ring = RingBuffer(blocker.events_fd, self._refusal) if blocker else None
        self._thread = threading.Thread(target=self._run, name="nfguard", daemon=True)

    @classmethod
    def install(cls, config: AgentConfig) -> NetfilterGuard:
        if config.dataplane is not Dataplane.BPF or not config.netfilter_blocker:
            removed = remove_blocker(config.pins)
            if removed.links or removed.maps:
                log.info("netfilter blocker removed (not enabled): %s", removed)
            return cls(config, None)
        if config.cgroup is None:
            raise NetfilterGuardError("--netfilter-blocker needs --cgroup DIR: its hooks "
                                      "attach to the node's cgroup")
        cookie, pid = current_netns_cookie(), os.getpid()
        try:
            blocker = Blocker.install(config.pins, config.cgroup, {cookie}, {pid})
        except BlockerError as err:
            raise NetfilterGuardError(str(err)) from err
        log.info("netfilter blocker on: rule changes refused in this network namespace "
                 "(cookie %d) for processes of cgroup %s, except this agent (pid %d) and "
                 "what it runs", cookie, config.cgroup, pid)
        return cls(config, blocker)

    @property
    def active(self) -> bool:
        return self.monitor or self.blocker is not None

    def start(self) -> None:
        if self.active:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2 * POLL_MS / 1000 + 5)
        with self._lock:
            if self._ring is not None:
                self._ring.close()
                self._ring = None
            if self.blocker is not None:
                self.blocker.release(os.getpid())
                self.blocker.close()
                self.blocker = None

    # --- the thread --------------------------------------------------------------------

    def _run(self) -> None:
        next_scan = time.monotonic()
        while not self._stop.is_set():
            if self.monitor and time.monotonic() >= next_scan:
                self.scan()
                next_scan = time.monotonic() + self.config.netfilter_monitor_interval
            wait = max(0.0, min(next_scan - time.monotonic(), POLL_MS / 1000)) \
                if self.monitor else POLL_MS / 1000
            if self._ring is not None:
                try:
                    self._ring.poll(int(wait * 1000))
                except (OSError, ValueError) as err:
                    log.warning("reading the netfilter blocker's events: %s", err)
                    self._stop.wait(1.0)
            else:
                self._stop.wait(wait)

    def _refusal(self, record: bytes) -> None:
        log.warning("netfilter blocker: %s", nf.NfguardEvent.parse(record).describe())

    def scan(self) -> None:
        """Read the rules once; log what appeared and what went."""
        result = read_foreign_rules()
        for problem in result.problems:
            log.warning("netfilter monitor: %s", problem)
        with self._lock:
            kept = {r for r in self._rules if r.source in result.failed}
            rules = frozenset(result.rules | kept)
            appeared = sorted(rules - self._rules)
            gone = sorted(self._rules - rules)
            self._rules = rules
            self._seen_total += len(appeared)
            self._scans["failed" if result.failed else "ok"] += 1
        for rule in appeared:
            log.warning("foreign netfilter rule appeared: %s", rule.describe())
        for rule in gone:
            log.info("foreign netfilter rule gone: %s", rule.describe())

    # --- what /metrics shows -----------------------------------------------------------

    def foreign_rules(self) -> frozenset[ForeignRule]:
        with self._lock:
            return self._rules

    def metric_families(self) -> list[MetricFamily]:
        families: list[MetricFamily] = []
        with self._lock:
            if self.monitor:
                families += self._monitor_families()
            if self.blocker is not None:
                families += _blocker_families(self.blocker.counters())
        return families

    def _monitor_families(self) -> list[MetricFamily]:
        by_source: Counter[tuple[str, str]] = Counter(
            {(family, backend): 0 for family in FAMILIES
             for backend in (IPTABLES_NFT, IPTABLES_LEGACY)})
        by_source.update((r.family, r.backend) for r in self._rules)
        return [
            ("sluice_netfilter_foreign_rules", "gauge",
             "iptables/nftables rules in the node's namespace that are not Sluice's own, by "
             "family and backend.",
             [({"family": family, "backend": backend}, count)
              for (family, backend), count in sorted(by_source.items())]),
            ("sluice_netfilter_foreign_rules_seen_total", "counter",
             "Foreign rules the monitor has seen appear.", [({}, self._seen_total)]),
            ("sluice_netfilter_monitor_scans_total", "counter",
             "Reads of the node's rules, by result (failed: a tool failed).",
             [({"result": result}, count) for result, count in sorted(self._scans.items())]),
        ]


def _blocker_families(counters: Mapping[nf.Operation, nf.NfguardCounter]
                      ) -> list[MetricFamily]:
    return [
        ("sluice_netfilter_blocked_total", "counter",
         "Netfilter changes the blocker refused, by operation (setsockopt: a legacy table "
         "write; netlink_socket: a netfilter netlink socket, its process killed).",
         [({"operation": op.label}, c.refused) for op, c in counters.items()]),
        ("sluice_netfilter_blocker_allowed_total", "counter",
         "Netfilter changes in the guarded namespace let through for Sluice's own processes.",
         [({"operation": op.label}, c.allowed) for op, c in counters.items()]),
        ("sluice_netfilter_blocker_events_lost_total", "counter",
         "Refusals not reported in the log because the event ring buffer was full.",
         [({}, sum(c.lost for c in counters.values()))]),
    ]


def nfguard_metric_families(guard: NetfilterGuard) -> list[MetricFamily]:
    """For metrics.render: `for family in nfguard_metric_families(guard): w.metric(*family)`."""
    return guard.metric_families()
