"""`sluice bpf ct|nat|routes|endpoints|counters`: a node's maps, read and decoded."""

from __future__ import annotations

import argparse
import ipaddress
import json
import sys
from collections.abc import Callable
from typing import Any

from sluice.cli.pindir import PIN_DIR_HELP, add_node_options, pin_dir_of
from sluice.loader import LibbpfError
from sluice.observe import ctview, mapdumps, masqview

CT_EPILOG = PIN_DIR_HELP + """

Filters keep entries where every given one matches: --address (an IP or CIDR on either
side of the tuple or as the translation), --port (either port or the translated one),
--protocol, --kind (dnat, reply-snat, return-tunnel). `flush` deletes what the filters
keep (all entries without filters); those flows are classified again on their next packet.

examples:
  sluice bpf ct list --lab demo --node node1
  sluice bpf ct list --lab demo --node node1 --address 198.19.0.10 --port 80 -o json
  sluice bpf ct flush --node node1 --address 198.18.16.0/24"""

SIMPLE_EPILOG = PIN_DIR_HELP + """

examples:
  sluice bpf {what} --lab demo --node node1
  sluice bpf {what} --pin-dir /sys/fs/bpf/sluice/n1 -o json"""


def add_parsers(bpf_sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ct = bpf_sub.add_parser("ct", help="the service conntrack table")
    ct_sub = ct.add_subparsers(dest="ct_command", metavar="ACTION")
    for action, helptext in (("list", "conntrack entries, decoded"),
                             ("flush", "delete conntrack entries")):
        parser = ct_sub.add_parser(action, help=helptext, epilog=CT_EPILOG,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
        add_node_options(parser)
        parser.add_argument("--address", type=_network, metavar="IP|CIDR")
        parser.add_argument("--port", type=_port, metavar="PORT")
        parser.add_argument("--protocol", type=str.upper, choices=["TCP", "UDP", "SCTP"])
        parser.add_argument("--kind", choices=sorted(ctview.KIND_NAMES.values()))
        parser.add_argument("-o", "--output", choices=["table", "json"], default="table")
        parser.set_defaults(handler=run_ct_list if action == "list" else run_ct_flush)
    _simple(bpf_sub, "nat", "translations of service flows (the forward legs)", _nat)
    _simple(bpf_sub, "masq", "masqueraded flows: pod, peer, the node address and port", _masq)
    _simple(bpf_sub, "routes", "the route table with per-route hit counters", _routes)
    _simple(bpf_sub, "endpoints", "the local endpoints map", _endpoints)
    counters = bpf_sub.add_parser(
        "counters", help="policy verdict, deny-list and route counters",
        epilog=SIMPLE_EPILOG.format(what="counters"),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_node_options(counters)
    counters.add_argument("-o", "--output", choices=["table", "json"], default="table")
    counters.set_defaults(handler=_runner("counters", _counters))


Reader = Callable[[str, argparse.Namespace], tuple[Any, str]]


def _simple(bpf_sub: argparse._SubParsersAction[argparse.ArgumentParser], what: str,
            helptext: str, read: Reader) -> None:
    group = bpf_sub.add_parser(what, help=helptext)
    sub = group.add_subparsers(dest=f"{what}_command", metavar="ACTION")
    parser = sub.add_parser("list", help=helptext,
                            epilog=SIMPLE_EPILOG.format(what=f"{what} list"),
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    add_node_options(parser)
    parser.add_argument("-o", "--output", choices=["table", "json"], default="table")
    parser.set_defaults(handler=_runner(f"{what} list", read))


def _network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an IP address or CIDR: {text!r}") from None


def _port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"not a port (1-65535): {text!r}")
    return int(text)


def _filter(args: argparse.Namespace) -> ctview.CtFilter:
    return ctview.CtFilter(address=args.address, port=args.port, protocol=args.protocol,
                           kind=args.kind)


def _runner(command: str, read: Reader) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        pin_dir = pin_dir_of(args)
        if pin_dir is None:
            print(f"sluice bpf {command}: say which node: --node NAME [--lab LAB] or "
                  "--pin-dir DIR", file=sys.stderr)
            return 2
        try:
            doc, text = read(pin_dir, args)
        except (FileNotFoundError, LibbpfError) as err:
            print(f"sluice bpf {command}: {err}", file=sys.stderr)
            return 1
        print(json.dumps(doc, indent=2) if args.output == "json" else text)
        return 0
    return run


def _ct_list(pin_dir: str, args: argparse.Namespace) -> tuple[Any, str]:
    rows = ctview.read_conntrack(pin_dir, _filter(args))
    return [r.as_dict() for r in rows], ctview.render_conntrack(rows)


def _ct_flush(pin_dir: str, args: argparse.Namespace) -> tuple[Any, str]:
    deleted = ctview.flush_conntrack(pin_dir, _filter(args))
    return {"deleted": deleted}, f"deleted {deleted} conntrack entries"


def _nat(pin_dir: str, args: argparse.Namespace) -> tuple[Any, str]:
    rows = ctview.read_conntrack(pin_dir, ctview.CtFilter(kind="dnat"))
    return [r.as_dict() for r in rows], ctview.render_nat(rows)


def _masq(pin_dir: str, args: argparse.Namespace) -> tuple[Any, str]:
    rows = masqview.read_mappings(pin_dir)
    return rows, masqview.render_mappings(rows)


def _routes(pin_dir: str, args: argparse.Namespace) -> tuple[Any, str]:
    rows = mapdumps.read_routes(pin_dir)
    return rows, mapdumps.render_routes(rows)


def _endpoints(pin_dir: str, args: argparse.Namespace) -> tuple[Any, str]:
    rows = mapdumps.read_endpoints(pin_dir)
    return rows, mapdumps.render_endpoints(rows)


def _counters(pin_dir: str, args: argparse.Namespace) -> tuple[Any, str]:
    doc = mapdumps.read_counters(pin_dir)
    return doc, mapdumps.render_counters(doc)


run_ct_list = _runner("ct list", _ct_list)
run_ct_flush = _runner("ct flush", _ct_flush)
