"""`sluice doctor`: placeholder until the probes land."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("doctor", help="check this host for what the dataplane needs")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    return 1
