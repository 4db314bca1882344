"""`sluice version`: the package version and the libbpf it binds."""

from __future__ import annotations

import argparse
import platform

from sluice import __version__
from sluice.loader.libbpf import libbpf_version


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("version", help="print the Sluice version")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    print(f"sluice {__version__}")
    try:
        print(f"libbpf {libbpf_version()}")
    except OSError as err:
        print(f"libbpf unavailable: {err}")
    print(f"kernel {platform.release()}")
    return 0
