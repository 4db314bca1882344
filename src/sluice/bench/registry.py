"""The benchmarks `sluice bench` knows, in the order they run."""

from __future__ import annotations

from sluice.bench import controlplane, flowevents, pktcost, servicescale, traffic, xdpdrop
from sluice.bench.benchmark import Benchmark


def benchmarks() -> list[Benchmark]:
    return [*pktcost.BENCHMARKS, *traffic.BENCHMARKS, *xdpdrop.BENCHMARKS,
            *servicescale.BENCHMARKS, *flowevents.BENCHMARKS, *controlplane.BENCHMARKS]


def by_name() -> dict[str, Benchmark]:
    return {b.name: b for b in benchmarks()}
