"""`sluice bench` as a user runs it: the smoke run CI keeps alive (pkt-cost, quick), the
benchmark list, bad names; and the arithmetic of the results table. No figure is judged:
benchmarks are not tests."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sluice.bench.report import Failure, table, to_json
from sluice.bench.result import BenchRow, Samples, bpf_at_most, ratio_at_least

SLUICE = Path(sys.executable).with_name("sluice")
ALL = ("pkt-cost", "pod-rr", "pod-rr-local", "pod-stream", "cpu-per-gbit", "nodeport-rr",
       "policy-scale", "xdp-drop", "svc-connect", "svc-first-packet", "flow-events", "sync",
       "agent-mem")


def sluice(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SLUICE), *args], capture_output=True, text=True,
                          timeout=timeout, check=False)


@pytest.mark.root
def test_quick_pkt_cost_runs_and_reports_json() -> None:
    proc = sluice("bench", "--quick", "--only", "pkt-cost", "-o", "json", "-q")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["quick"] is True and doc["failures"] == []
    assert doc["machine"]["cpus"] >= 1 and doc["machine"]["kernel"]
    rows = doc["results"]
    assert {row["benchmark"] for row in rows} == {"pkt-cost"}
    assert {"new flow", "established flow", "service flow"} <= {row["case"] for row in rows}
    for row in rows:
        assert row["unit"] == "ns" and row["better"] == "lower"
        assert row["bpf"]["median"] > 0 and len(row["bpf"]["samples"]) == 3
        assert row["tool"] and row["params"]
    established = next(row for row in rows if row["case"] == "established flow")
    assert established["target"] and established["met"] in (True, False)


def test_list_names_every_benchmark_of_the_issue() -> None:
    proc = sluice("bench", "--list")
    assert proc.returncode == 0
    listed = [line.split()[0] for line in proc.stdout.splitlines() if line.strip()]
    assert listed == list(ALL)


def test_an_unknown_benchmark_is_refused_with_the_known_names() -> None:
    proc = sluice("bench", "--only", "pkt-cost,pod-rrr")
    assert proc.returncode == 2
    assert "unknown benchmark pod-rrr" in proc.stderr and "pod-rr-local" in proc.stderr


def _row(bpf: list[float], iptables: list[float] | None, **kw: object) -> BenchRow:
    return BenchRow(benchmark="b", case="c", metric="rate", unit="1/s", better="higher",
                    bpf=Samples.of(bpf), iptables=Samples.of(iptables) if iptables else None,
                    tool="t", params="p", **kw)  # type: ignore[arg-type]


def test_medians_spread_ratio_and_targets() -> None:
    row = _row([10, 30, 20], [9, 10, 11], target=ratio_at_least(2))
    assert row.bpf.median == 20 and row.iptables is not None and row.iptables.median == 10
    assert row.bpf.spread == pytest.approx(1.0) and row.ratio == pytest.approx(2.0)
    assert row.met is True
    assert _row([19], [10], target=ratio_at_least(2)).met is False
    assert _row([19], None, target=ratio_at_least(2)).met is False
    assert _row([90], None, target=bpf_at_most(100, "ns")).met is True
    assert _row([1], None).met is None


def test_table_and_json_carry_every_row_and_failure() -> None:
    rows = [_row([200, 210, 190], [100, 100, 100], target=ratio_at_least(1.5))]
    failures = [Failure("xdp-drop", "LabError: boom")]
    text = table(rows, failures, True, "sluice bench --quick", "2 nodes; iptables-legacy")
    assert "2.00x" in text and ">= 1.5x" in text and "yes" in text
    assert "FAILED xdp-drop: LabError: boom" in text and "±5%" in text
    assert "labs: 2 nodes; iptables-legacy" in text
    doc = to_json(rows, failures, True, "sluice bench --quick", "2 nodes; iptables-legacy")
    assert doc["labs"] == "2 nodes; iptables-legacy"
    assert doc["results"][0]["ratio"] == 2.0 and doc["results"][0]["met"] is True
    assert doc["failures"] == [{"benchmark": "xdp-drop", "error": "LabError: boom"}]
