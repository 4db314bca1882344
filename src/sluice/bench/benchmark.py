"""A benchmark: a name, what it measures, and the function that measures it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sluice.bench.context import BenchContext
from sluice.bench.result import BenchRow


@dataclass(frozen=True)
class Benchmark:
    name: str
    what: str
    run: Callable[[BenchContext], list[BenchRow]]
