"""`sluice bench`: bpf against iptables on the same lab, in one run."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import sys
import traceback
from types import FrameType

from sluice.apply import xtables
from sluice.bench import registry, report
from sluice.bench.benchmark import Benchmark
from sluice.bench.context import DEFAULT_IPTABLES_BACKEND, bench_context
from sluice.bench.result import BenchRow
from sluice.lab.plan import ROUTINGS

DESCRIPTION = """\
Measure the bpf dataplane against the iptables dataplane, side by side in one run.
Two labs (`sluice lab`) are made, one per dataplane, with the same topology; each
figure is measured on both, repeats alternate between them, and the median is
reported with the spread of the repeats and the bpf/iptables ratio. Per-packet costs
come from BPF_PROG_TEST_RUN on the real programs. Traffic stays inside the labs'
namespaces; the labs are removed at the end, also on Ctrl-C. Must run as root."""

EPILOG = """\
examples:
  sluice bench --quick                       every benchmark, short runs (< 10 min)
  sluice bench --only pod-rr,pod-stream      two benchmarks, full length
  sluice bench --quick --only pkt-cost -o json
  sluice bench --list"""


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("bench", help="benchmark bpf against iptables on the lab",
                            description=DESCRIPTION, epilog=EPILOG,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="fewer repeats (3 instead of 7) and shorter measurements")
    parser.add_argument("--only", action="append", default=[], metavar="NAME[,NAME]",
                        help="run only these benchmarks (repeatable; see --list)")
    parser.add_argument("-o", "--output", choices=("table", "json"), default="table")
    parser.add_argument("--routing", choices=ROUTINGS, default="vxlan",
                        help="how the labs carry cross-node pod traffic (default: vxlan)")
    parser.add_argument("--iptables-backend", choices=[b.value for b in xtables.Backend],
                        default=DEFAULT_IPTABLES_BACKEND,
                        help="the iptables lab's --iptables-backend (default: %(default)s, the "
                             "fastest iptables-restore at 10,000 Services; nft takes minutes)")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="no progress lines on stderr")
    parser.set_defaults(handler=run)


def _selected(only: list[str]) -> list[Benchmark] | str:
    known = registry.by_name()
    names = [n.strip() for item in only for n in item.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown:
        return (f"sluice bench: unknown benchmark {', '.join(unknown)}; "
                f"known: {', '.join(known)}")
    return [b for b in known.values() if not names or b.name in names]


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    if args.list:
        for benchmark in registry.benchmarks():
            print(f"{benchmark.name:18} {benchmark.what}")
        return 0
    selected = _selected(args.only)
    if isinstance(selected, str):
        print(selected, file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        print("sluice bench: must run as root (it builds labs of namespaces)", file=sys.stderr)
        return 1
    signal.signal(signal.SIGTERM, _terminate)
    command = "sluice " + shlex.join(sys.argv[1:]) if sys.argv[1:2] == ["bench"] else \
        "sluice bench"
    rows: list[BenchRow] = []
    failures: list[report.Failure] = []
    with bench_context(quick=args.quick, routing=args.routing, verbose=not args.quiet,
                       iptables_backend=args.iptables_backend) as context:
        for benchmark in selected:
            context.say(f"{benchmark.name}: {benchmark.what}")
            try:
                rows += benchmark.run(context)
            except KeyboardInterrupt:
                raise
            except Exception as err:  # one broken benchmark must not lose the others
                context.say(traceback.format_exc().rstrip())
                failures.append(report.Failure(benchmark.name, f"{type(err).__name__}: {err}"))
    if args.output == "json":
        print(json.dumps(report.to_json(rows, failures, args.quick, command, context.setup),
                         indent=2))
    else:
        print(report.table(rows, failures, args.quick, command, context.setup))
    return 1 if failures else 0
