"""`sluice doctor`: check this host for what the dataplane needs; prints one line per check."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from types import FrameType

from sluice import doctor
from sluice.doctor import CheckResult, Verdict


def _description() -> str:
    width = max(len(check.name) for check in doctor.CHECKS)
    lines = [
        f"  {check.name:<{width}}  {check.about}{'' if check.required else ' [optional]'}"
        for check in doctor.CHECKS
    ]
    return "\n".join([
        "Check this host for what the Sluice dataplane needs. Must run as root.",
        "",
        "Checks:",
        *lines,
        "",
        "Attach checks run against a veth pair in a temporary network namespace and a",
        f"temporary child cgroup (named {doctor.TEMP_PREFIX}<pid>-<random>), removed",
        "afterwards. Nothing is attached to the root network namespace or the root",
        "cgroup and no sysctl is written; the only host change is mounting bpffs (and",
        "cgroup2) when missing.",
        "",
        "Verdicts: ok, missing (a required check failed), warning (an optional check",
        "failed, or tcx/clsact failed while the other works).",
        "Exit status: 0 if no required check failed (warnings do not fail), 1 otherwise.",
    ])


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "doctor",
        help="check this host for what the dataplane needs",
        description=_description(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-o", "--output", choices=("table", "json"), default="table",
                        help="output format (default: table)")
    parser.set_defaults(handler=run)


def format_table(results: list[CheckResult]) -> str:
    header = ("CHECK", "VERDICT", "DETAIL")
    rows = [header, *((r.name, r.verdict.value, r.detail) for r in results)]
    name_width = max(len(row[0]) for row in rows)
    verdict_width = max(len(row[1]) for row in rows)
    return "\n".join(
        f"{name:<{name_width}}  {verdict:<{verdict_width}}  {detail}".rstrip()
        for name, verdict, detail in rows
    )


def summary(results: list[CheckResult]) -> str:
    failed = [r.name for r in results if r.verdict is Verdict.MISSING]
    warnings = sum(r.verdict is Verdict.WARNING for r in results)
    note = f", {warnings} warning{'s' if warnings != 1 else ''}" if warnings else ""
    if failed:
        return f"NOT READY: {len(failed)} required check(s) failed ({', '.join(failed)}){note}"
    return f"READY: all required checks passed{note}"


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def run(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        print("sluice doctor must run as root: it loads BPF programs, mounts bpffs and "
              "creates a temporary network namespace and cgroup", file=sys.stderr)
        return 1
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)  # so cleanup still runs
    try:
        results = doctor.run_checks()
    finally:
        signal.signal(signal.SIGTERM, previous)
    if args.output == "json":
        print(json.dumps([r.to_json() for r in results], indent=2))
    else:
        print(format_table(results))
        print()
        print(summary(results))
    return 0 if doctor.passed(results) else 1
