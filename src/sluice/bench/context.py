"""What every benchmark gets: the run's settings, the two labs (made on first use and
removed at the end, also on Ctrl-C), and repetition with bpf and iptables interleaved so
drift on a shared machine hits both dataplanes alike."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from sluice.apply import xtables
from sluice.bench.benchlab import BenchLab
from sluice.bench.result import Samples

DATAPLANES = ("bpf", "iptables")
DEFAULT_IPTABLES_BACKEND = "legacy"
"""The iptables lab runs its fastest tools: iptables-nft-restore needs minutes for the
10,000-Service ruleset that iptables-legacy-restore writes in seconds (apply/xtables.py)."""


@dataclass
class BenchContext:
    quick: bool
    routing: str = "vxlan"
    iptables_backend: str = DEFAULT_IPTABLES_BACKEND
    verbose: bool = True
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="sluice-bench-")))
    _labs: dict[str, BenchLab] = field(default_factory=dict)

    @property
    def repeats(self) -> int:
        """How often each figure is measured; the median is reported."""
        return 3 if self.quick else 7

    def seconds(self, quick: float, full: float) -> float:
        """A measurement's duration in this run."""
        return quick if self.quick else full

    @property
    def setup(self) -> str:
        """The labs, in one line for the report."""
        return (f"2 nodes, IPv4, {self.routing}; iptables dataplane: "
                f"{xtables.command(xtables.Backend(self.iptables_backend), 4)}")

    @property
    def cpus(self) -> int:
        return len(os.sched_getaffinity(0))

    def say(self, line: str) -> None:
        if self.verbose:
            print(f"bench: {line}", file=sys.stderr, flush=True)

    def lab(self, dataplane: str) -> BenchLab:
        """The running bench lab of DATAPLANE, made on first use."""
        if dataplane not in self._labs:
            self.say(f"creating the {dataplane} lab")
            self._labs[dataplane] = BenchLab.up(dataplane, self.workdir, routing=self.routing,
                                                iptables_backend=self.iptables_backend)
        return self._labs[dataplane]

    def close(self) -> list[str]:
        problems: list[str] = []
        for dataplane in list(self._labs):
            lab = self._labs.pop(dataplane)
            self.say(f"removing lab {lab.name}")
            problems += lab.down()
        return problems

    def compare(self, measure: Callable[[BenchLab], float], *, repeats: int | None = None,
                label: str = "") -> tuple[Samples, Samples]:
        """MEASURE on each dataplane's lab REPEATS times, alternating bpf and iptables."""
        values: dict[str, list[float]] = {d: [] for d in DATAPLANES}
        for round_, dataplane in rounds(repeats or self.repeats):
            values[dataplane].append(measure(self.lab(dataplane)))
            if label and len(values["bpf"]) == len(values["iptables"]):
                self.say(f"{label}: round {round_ + 1}: bpf {values['bpf'][-1]:.4g}, "
                         f"iptables {values['iptables'][-1]:.4g}")
        return Samples.of(values["bpf"]), Samples.of(values["iptables"])


def rounds(repeats: int) -> Iterator[tuple[int, str]]:
    """(round, dataplane) REPEATS times over both dataplanes, alternating which goes
    first, so drift on a shared machine hits both alike."""
    for round_ in range(repeats):
        for dataplane in DATAPLANES if round_ % 2 == 0 else tuple(reversed(DATAPLANES)):
            yield round_, dataplane


@contextlib.contextmanager
def bench_context(quick: bool, routing: str = "vxlan", verbose: bool = True,
                  iptables_backend: str = DEFAULT_IPTABLES_BACKEND) -> Iterator[BenchContext]:
    context = BenchContext(quick=quick, routing=routing, verbose=verbose,
                           iptables_backend=iptables_backend)
    try:
        yield context
    finally:
        for problem in context.close():
            print(f"sluice bench: {problem}", file=sys.stderr)
