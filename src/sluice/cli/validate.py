"""`sluice validate -f PATH...`: check manifests against the Sluice resource model."""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

from sluice.model import ParseResult, manifest_files, parse_file

DESCRIPTION = """\
Parse Kubernetes-style manifests (multi-document YAML, JSON, kind: List) and check
every object against the resource model Sluice uses: Namespace, Node, Pod, Service,
EndpointSlice and NetworkPolicy, and Sluice's own GlobalNetworkPolicy, HostEndpoint and
PrefilterDenyList (sluice.io/v1; see examples/policy.yaml).

Files are checked in the order given; a directory stands for its *.yaml, *.yml and
*.json files in name order. At the first file with problems, every problem of that
file is printed to stderr as

  FILE: document N: KIND NAMESPACE/NAME: FIELD.PATH: what is wrong (line L)

and the command exits 1 without checking later files."""

EPILOG = """\
exit status:
  0  every file is valid
  1  a file has problems, or a path cannot be read

examples:
  sluice validate -f policy.yaml
  sluice validate -f cluster/ -f extra-service.json"""


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "validate",
        help="check manifests against the Sluice resource model",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "-f",
        "--filename",
        dest="paths",
        metavar="PATH",
        action="append",
        required=True,
        help="a manifest file, or a directory of them; repeat for more",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    files = _expand(args.paths)
    if files is None:
        return 1
    for position, file in enumerate(files):
        result = parse_file(file)
        if result.problems:
            _report_failure(result, later=len(files) - position - 1)
            return 1
        print(f"ok  {result.file}  ({_summary(result)})")
    return 0


def _expand(paths: list[str]) -> list[Path] | None:
    files: list[Path] = []
    for path in paths:
        found = manifest_files(path)
        if not found:
            print(
                f"sluice validate: {path}: no *.yaml, *.yml or *.json files in directory",
                file=sys.stderr,
            )
            return None
        files.extend(found)
    return files


def _summary(result: ParseResult) -> str:
    counts = Counter(resource.KIND for resource in result.resources)
    total = sum(counts.values())
    noun = "object" if total == 1 else "objects"
    if not counts:
        return f"0 {noun}"
    return f"{total} {noun}: " + ", ".join(f"{count} {kind}" for kind, count in counts.items())


def _report_failure(result: ParseResult, later: int) -> None:
    for problem in result.problems:
        print(problem, file=sys.stderr)
    count = len(result.problems)
    summary = f"sluice validate: {result.file}: {count} problem{'s' if count != 1 else ''}"
    if later:
        summary += f"; {later} later file{'s' if later != 1 else ''} not checked"
    print(summary, file=sys.stderr)
