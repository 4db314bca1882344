"""`sluice bpf lb list` (alias `sluice service list`): the load balancer maps of a node."""

from __future__ import annotations

import argparse
import json
import sys

from sluice.agent.config import default_pin_dir
from sluice.lab import names as lab_names
from sluice.loader import LibbpfError
from sluice.observe.lbview import read_frontends, render_table

EPILOG = """\
The pin directory is found from --pin-dir, else from --lab and --node (a lab node), else
from --node (the agent's default, /sys/fs/bpf/sluice/NODE).

examples:
  sluice bpf lb list --lab demo --node node1
  sluice service list --pin-dir /sys/fs/bpf/sluice/n1 -o json
"""


def _add_list_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--node", metavar="NAME", help="the node whose maps to read")
    parser.add_argument("--lab", metavar="NAME", help="a lab's node (with --node)")
    parser.add_argument("--pin-dir", metavar="DIR", help="the node agent's pin directory")
    parser.add_argument("-o", "--output", choices=["table", "json"], default="table")
    parser.set_defaults(handler=run_list)


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    bpf = sub.add_parser("bpf", help="read what the eBPF datapath holds")
    bpf_sub = bpf.add_subparsers(dest="bpf_command", metavar="WHAT")
    lb = bpf_sub.add_parser("lb", help="the service load balancer")
    lb_sub = lb.add_subparsers(dest="lb_command", metavar="ACTION")
    _add_list_options(lb_sub.add_parser(
        "list", help="frontends and their backends as the datapath sees them",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter))
    service = sub.add_parser("service", help="services as the datapath sees them")
    service_sub = service.add_subparsers(dest="service_command", metavar="ACTION")
    _add_list_options(service_sub.add_parser(
        "list", help="alias of `sluice bpf lb list`", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter))


def pin_dir_of(args: argparse.Namespace) -> str | None:
    if args.pin_dir:
        return str(args.pin_dir)
    if args.node and args.lab:
        return str(lab_names.pin_dir(args.lab, args.node))
    if args.node:
        return default_pin_dir(args.node)
    return None


def run_list(args: argparse.Namespace) -> int:
    pin_dir = pin_dir_of(args)
    if pin_dir is None:
        print("sluice service list: say which node: --node NAME [--lab LAB] or --pin-dir DIR",
              file=sys.stderr)
        return 2
    try:
        views = read_frontends(pin_dir)
    except (FileNotFoundError, LibbpfError) as err:
        print(f"sluice service list: {err}", file=sys.stderr)
        return 1
    if args.output == "json":
        print(json.dumps([v.as_dict() for v in views], indent=2))
    else:
        print(render_table(views))
    return 0
