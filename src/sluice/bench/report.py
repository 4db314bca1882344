"""The results of a run as a table for people or JSON for tools, with the machine they
were measured on."""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sluice.bench.result import BenchRow, Samples


@dataclass(frozen=True)
class Failure:
    benchmark: str
    error: str


def machine() -> dict[str, Any]:
    model = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            model = next((line.split(":", 1)[1].strip() for line in cpuinfo
                          if line.startswith("model name")), "")
    except OSError:
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {"kernel": platform.release(), "cpus": len(os.sched_getaffinity(0)),
            "cpuModel": model, "memoryGiB": round(memory / 2**30, 1)}


def to_json(rows: Sequence[BenchRow], failures: Sequence[Failure], quick: bool,
            command: str, setup: str) -> dict[str, Any]:
    return {"command": command, "quick": quick, "machine": machine(), "labs": setup,
            "results": [row.to_json() for row in rows],
            "failures": [{"benchmark": f.benchmark, "error": f.error} for f in failures]}


def _figure(samples: Samples | None) -> str:
    if samples is None:
        return "-"
    median = samples.median
    text = f"{median:.3g}" if abs(median) < 1000 else f"{median:,.0f}"
    return f"{text} ±{samples.spread * 50:.0f}%" if len(samples.values) > 1 else text


def _met(row: BenchRow) -> str:
    return {True: "yes", False: "MISSED", None: "-"}[row.met]


def table(rows: Sequence[BenchRow], failures: Sequence[Failure], quick: bool,
          command: str, setup: str) -> str:
    info = machine()
    header = ("benchmark", "case", "metric", "bpf", "iptables", "bpf/ipt", "target", "met")
    lines = [(row.benchmark, row.case, f"{row.metric} ({row.unit}, {row.better} better)",
              _figure(row.bpf), _figure(row.iptables),
              f"{row.ratio:.2f}x" if row.ratio is not None else "-",
              row.target.text if row.target else "-", _met(row)) for row in rows]
    widths = [max(len(str(r[i])) for r in [header, *lines]) for i in range(len(header))]
    out = [f"sluice bench{' --quick' if quick else ''}: {command}",
           f"machine: {info['cpuModel'] or 'unknown CPU'}, {info['cpus']} CPUs, "
           f"{info['memoryGiB']} GiB, kernel {info['kernel']}",
           f"labs: {setup}",
           "figures are medians of the repeats, ± half their range relative to the median",
           ""]
    for line in [header, *lines]:
        out.append("  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())
    out.append("")
    for row in rows:
        out.append(f"{row.benchmark} [{row.case}]: {row.tool}; {row.params}"
                   + (f" -- {row.note}" if row.note else ""))
    for failure in failures:
        out.append(f"FAILED {failure.benchmark}: {failure.error}")
    return "\n".join(out)
