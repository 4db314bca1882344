"""`sluice validate -f FILE...`: placeholder until the model lands."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("validate", help="validate manifests")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    return 1
