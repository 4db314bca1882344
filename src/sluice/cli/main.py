"""Entry point of the `sluice` command: builds the parser from the subcommand modules."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from sluice.cli import agent, apply, bench, bpf, doctor, flows, lab, trace, validate, version
from sluice.cli.optionsources import SourcedParser

Handler = Callable[[argparse.Namespace], int]

SUBCOMMANDS = (version, validate, apply, doctor, agent, lab, bpf, flows, trace, bench)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sluice",
        description="Sluice: an eBPF dataplane for Kubernetes and Linux container hosts.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=SourcedParser)
    for module in SUBCOMMANDS:
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    try:
        return handler(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
