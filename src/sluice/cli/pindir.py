"""Which node's pinned maps a `sluice bpf` command reads: --pin-dir, or --lab and --node
(a lab node), or --node (the agent's default /sys/fs/bpf/sluice/NODE)."""

from __future__ import annotations

import argparse

from sluice.agent.config import default_pin_dir
from sluice.lab import names as lab_names

PIN_DIR_HELP = """\
The pin directory is found from --pin-dir, else from --lab and --node (a lab node), else
from --node (the agent's default, /sys/fs/bpf/sluice/NODE)."""


def add_node_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--node", metavar="NAME", help="the node whose maps to read")
    parser.add_argument("--lab", metavar="NAME", help="a lab's node (with --node)")
    parser.add_argument("--pin-dir", metavar="DIR", help="the node agent's pin directory")


def pin_dir_of(args: argparse.Namespace) -> str | None:
    if args.pin_dir:
        return str(args.pin_dir)
    if args.node and args.lab:
        return str(lab_names.pin_dir(args.lab, args.node))
    if args.node:
        return default_pin_dir(args.node)
    return None
