"""`sluice bpf lb list` (alias `sluice service list`): the load balancer maps of a node;
`sluice bpf policy show NS/POD`: an endpoint's effective policy."""

from __future__ import annotations

import argparse
import json
import os
import sys
from urllib.error import HTTPError
from urllib.parse import urlencode
from urllib.request import urlopen

from sluice.agent.config import DEFAULT_LISTEN, parse_listen
from sluice.cli import bpfdump
from sluice.cli.pindir import PIN_DIR_HELP, add_node_options, pin_dir_of
from sluice.datapath import policy as dp
from sluice.lab import agents as lab_agents
from sluice.lab import state as lab_state
from sluice.loader import LibbpfError
from sluice.observe.lbview import read_frontends, render_table
from sluice.observe.policyview import datapath_counts, render

EPILOG = PIN_DIR_HELP + """

examples:
  sluice bpf lb list --lab demo --node node1
  sluice service list --pin-dir /sys/fs/bpf/sluice/n1 -o json
"""


def _add_list_options(parser: argparse.ArgumentParser) -> None:
    add_node_options(parser)
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
    _add_policy_parser(bpf_sub)
    bpfdump.add_parsers(bpf_sub)
    service = sub.add_parser("service", help="services as the datapath sees them")
    service_sub = service.add_subparsers(dest="service_command", metavar="ACTION")
    _add_list_options(service_sub.add_parser(
        "list", help="alias of `sluice bpf lb list`", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter))


POLICY_EPILOG = """\
Rules are listed per direction in the order the datapath applies them: the global tier
(GlobalNetworkPolicy, by order), then the Kubernetes tier (NetworkPolicy); each with the
identities its peers resolve to and the flows it decided. The rules come from the node's
agent (GET /policy on its --listen address); the entries and counters from its pinned maps.

examples:
  sluice bpf policy show x/a --lab demo
  sluice bpf policy show shop/web-1 --node node1 --agent 127.0.0.1:9962 -o json
"""


def _add_policy_parser(bpf_sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    policy = bpf_sub.add_parser("policy", help="network policy as the datapath enforces it")
    policy_sub = policy.add_subparsers(dest="policy_command", metavar="ACTION")
    show = policy_sub.add_parser(
        "show", help="the effective rules of an endpoint and the identities they resolve to",
        epilog=POLICY_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    show.add_argument("endpoint", metavar="NS/POD",
                      help="a pod, or hostendpoint/NAME for a host endpoint")
    show.add_argument("--lab", metavar="NAME", help="the pod is in this lab (finds its node)")
    show.add_argument("--node", metavar="NAME", help="the node running the endpoint")
    show.add_argument("--agent", metavar="HOST:PORT", default=DEFAULT_LISTEN,
                      help="that node's agent (default: %(default)s; ignored with --lab)")
    show.add_argument("--pin-dir", metavar="DIR", help="the node agent's pin directory")
    show.add_argument("-o", "--output", choices=["table", "json"], default="table")
    show.set_defaults(handler=run_policy_show)


def _fetch_policy_lab(lab: str, endpoint: str) -> tuple[int, bytes, str] | str:
    """(HTTP status, body, pin dir) from the agent of the lab node running ENDPOINT."""
    state = lab_state.load(lab)
    namespace, _, pod = endpoint.partition("/")
    record = next((p for p in state.pods.values()
                   if p.namespace == namespace and p.name == pod), None)
    nodes = [record.node] if record else [n.name for n in state.plan.nodes]
    for node in nodes:
        plan = state.plan.node(node)
        answer = lab_agents.http_get(plan, "/policy?" + urlencode({"endpoint": endpoint}))
        if answer is None:
            return f"the agent of lab node {node} does not answer"
        if answer[0] != 404 or record:
            return answer[0], answer[1], plan.pin_dir
    return 404, f"no endpoint {endpoint} in lab {lab}".encode(), ""


def _fetch_policy(agent: str, endpoint: str) -> tuple[int, bytes] | str:
    host, port = parse_listen(agent)
    url = f"http://{host if ':' not in host else f'[{host}]'}:{port}/policy?" + \
        urlencode({"endpoint": endpoint})
    try:
        with urlopen(url, timeout=5) as reply:
            return int(reply.status), reply.read()
    except HTTPError as err:
        return int(err.code), err.read()
    except OSError as err:
        return f"agent {agent}: {err}"


def run_policy_show(args: argparse.Namespace) -> int:
    if args.lab:
        fetched = _fetch_policy_lab(args.lab, args.endpoint)
        if isinstance(fetched, str):
            print(f"sluice bpf policy show: {fetched}", file=sys.stderr)
            return 1
        status, body, pin_dir = fetched
        pin_dir = args.pin_dir or pin_dir
    else:
        answer = _fetch_policy(args.agent, args.endpoint)
        if isinstance(answer, str):
            print(f"sluice bpf policy show: {answer}", file=sys.stderr)
            return 1
        status, body = answer
        pin_dir = pin_dir_of(args) or ""
    if status != 200:
        print(f"sluice bpf policy show: {body.decode(errors='replace').strip()}",
              file=sys.stderr)
        return 1
    doc = json.loads(body)
    if pin_dir and os.path.exists(os.path.join(pin_dir, dp.POLICY_MAP)):
        try:
            doc["datapath"] = datapath_counts(pin_dir, int(doc["policyId"]))
        except LibbpfError as err:
            print(f"sluice bpf policy show: reading {pin_dir}: {err}", file=sys.stderr)
    print(json.dumps(doc, indent=2) if args.output == "json" else render(doc))
    return 0


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
