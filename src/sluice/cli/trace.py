"""`sluice trace`: run a flow's first packet through a node's datapath and explain it."""

from __future__ import annotations

import argparse
import json
import os
import sys

from sluice.cli.pindir import add_node_options, pin_dir_of
from sluice.datastore import ClusterState, DatastoreError, open_datastore
from sluice.lab import state as lab_state
from sluice.lab.errors import LabError
from sluice.loader import LibbpfError
from sluice.observe.trace import TraceError, TraceRequest, start_node, trace
from sluice.observe.traceload import TraceLoadError
from sluice.observe.traceplace import (
    DESTINATION_FORMS,
    SOURCE_FORMS,
    Cluster,
    NodeRef,
    TraceInputError,
    lab_nodes,
    resolve,
    service_port,
)

EPILOG = f"""\
FROM: {SOURCE_FORMS}
TO:   {DESTINATION_FORMS}

The packet (a TCP SYN, UDP datagram, SCTP INIT or ICMP echo request) enters the node where
its source lives: a local pod's packets enter from_endpoint on its veth, the node's own
from_host, packets from other nodes' pods from_network on the tunnel device, anything else
from_network on the uplink. It runs under BPF_PROG_TEST_RUN through the node's programs,
over the node's pinned maps where the datapath only reads and over private copies where
it writes: no packet is sent, no map of the node changes. In a lab (--lab) the trace
follows the packet to the next node when it is sent there.

The node is --lab's (all its nodes, names resolved through the lab's datastore), or one
node by --pin-dir / --node (its devices in this network namespace, or --netns); name pods
and Services with --datastore URL, or give IPs.

examples:
  sluice trace --lab demo --from shop/web-1 --to svc:shop/api --port 80
  sluice trace --lab demo --from shop/web-1 --to shop/db-0 --port 5432 -o json
  sluice trace --lab demo --node node1 --from world:198.18.0.250 --to 198.18.17.4 --port 80
  sluice trace --node n1 --from 10.0.1.5 --to 10.0.2.7 --port 53 --protocol udp"""


def _port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"not a port (1-65535): {text!r}")
    return int(text)


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "trace", help="explain what the datapath does with a packet (nothing is sent)",
        description="Run a flow's first packet through the node's real eBPF programs and "
                    "maps (BPF_PROG_TEST_RUN, private copies of what they write) and "
                    "explain each step.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from", dest="source", required=True, metavar="FROM")
    parser.add_argument("--to", dest="destination", required=True, metavar="TO")
    parser.add_argument("--port", type=_port, help="destination port (a Service's: its port; "
                        "default: the Service's first)")
    parser.add_argument("--protocol", type=str.upper, default="TCP",
                        choices=["TCP", "UDP", "SCTP", "ICMP"],
                        help="default TCP (case does not matter)")
    parser.add_argument("--sport", type=_port, metavar="PORT",
                        help="source port (ICMP: the echo id); default: a random one")
    parser.add_argument("--family", type=int, choices=[4, 6],
                        help="the address family of names with both")
    add_node_options(parser)
    parser.add_argument("--netns", metavar="NAME|PATH",
                        help="the network namespace of the node's devices (without --lab)")
    parser.add_argument("--datastore", metavar="URL",
                        help="resolve names through this datastore (without --lab)")
    parser.add_argument("-o", "--output", choices=["table", "json"], default="table")
    parser.set_defaults(handler=run)


def _cluster(args: argparse.Namespace) -> Cluster:
    if args.lab:
        state = lab_state.load(args.lab)
        return Cluster.from_state(_snapshot(state.paths.datastore_url), lab_nodes(state))
    pin_dir = pin_dir_of(args)
    if pin_dir is None:
        raise TraceInputError("say which node: --lab LAB [--node NAME], --node NAME or "
                              "--pin-dir DIR")
    name = args.node or os.path.basename(pin_dir.rstrip("/")) or "node"
    snapshot = _snapshot(args.datastore) if args.datastore else None
    return Cluster.from_state(snapshot, {name: NodeRef(name, pin_dir, args.netns)})


def _snapshot(url: str) -> ClusterState:
    with open_datastore(url) as datastore:
        return datastore.snapshot()


def run(args: argparse.Namespace) -> int:
    try:
        cluster = _cluster(args)
        if args.node and args.node not in cluster.nodes:
            raise TraceInputError(f"no node {args.node} (nodes: {', '.join(cluster.nodes)})")
        single = None if args.lab else next(iter(cluster.nodes))
        source = resolve(args.source, cluster, family=args.family, node=args.node or single,
                         destination=False)
        family = args.family or source.address.version
        destination = resolve(args.destination, cluster, family=family,
                              node=args.node or single, destination=True)
        dport = service_port(destination, cluster, args.port, args.protocol)
        start = start_node(source, destination, cluster, args.node or single)
        request = TraceRequest.of(source, destination, protocol=args.protocol, dport=dport,
                                  sport=args.sport, start=start)
    except (TraceInputError, LabError, DatastoreError, ValueError) as err:
        print(f"sluice trace: {err}", file=sys.stderr)
        return 2
    try:
        result = trace(request, cluster)
    except (TraceError, TraceLoadError, LibbpfError, OSError) as err:
        print(f"sluice trace: {err}", file=sys.stderr)
        return 1
    print(json.dumps(result.as_dict(), indent=2) if args.output == "json" else result.render())
    return 0
