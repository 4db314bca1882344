"""`sluice flows`: what the datapath did with recent flows, and why (like `hubble observe`)."""

from __future__ import annotations

import argparse
import json
import socket
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

from sluice import netns
from sluice.agent.config import DEFAULT_LISTEN, parse_listen
from sluice.lab import state as lab_state
from sluice.lab.errors import LabError
from sluice.lab.plan import AGENT_LISTEN
from sluice.observe.flows import FilterError, FlowFilter, flow_line

DESCRIPTION = """\
Show the flows a node's bpf datapath reported: drops with their reason and the policy rule
that decided, the first packet and the end of forwarded flows (with the service and the
backend chosen), and socket-level service translations (with the process). Read from the
agents' /flows; --follow waits for new ones.

Pods, namespaces, addresses and ports match either side of a flow (or its backend); each
filter may be given more than once or as a comma-separated list."""

EPILOG = """\
examples:
  sluice flows --lab demo                                  # the last 20 of every node
  sluice flows --lab demo --verdict dropped --reason policy-denied -o json
  sluice flows --lab demo --node node1 --pod x/a --follow
  sluice flows --agent 127.0.0.1:9962 --service default/web --last 100

drop reasons: policy-denied, policy-cut, no-backend, no-local-backend, source-range,
ct-insert, fib, malformed, nat, prefilter, untracked, no-endpoint, encap, deliver, unknown"""

FILTERS = ("pod", "from-pod", "to-pod", "namespace", "ip", "port", "verdict", "reason",
           "service", "protocol")
CONNECT_TIMEOUT = 5.0
MAX_LINE = 1 << 20


class AgentUnreachableError(Exception):
    """An agent did not answer or refused the request; the message says which and why."""


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("flows", help="observe flows: verdicts, drop reasons, services",
                            description=DESCRIPTION, epilog=EPILOG,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    where = parser.add_argument_group("which agents")
    where.add_argument("--lab", metavar="NAME", help="every node of this lab (or --node)")
    where.add_argument("--node", metavar="NAME", help="with --lab: only this node")
    where.add_argument("--agent", metavar="HOST:PORT",
                       help=f"one agent, from this namespace (default without --lab: "
                            f"{DEFAULT_LISTEN})")
    parser.add_argument("--last", type=int, default=20, metavar="N",
                        help="the last N matching flows of each node (default: %(default)s)")
    parser.add_argument("-f", "--follow", action="store_true", help="then wait for new ones")
    parser.add_argument("--duration", type=float, metavar="SECONDS",
                        help="with --follow: stop after this long")
    parser.add_argument("-o", "--output", choices=["table", "json"], default="table",
                        help="one line per flow, or Hubble-shaped JSON lines")
    for name in FILTERS:
        parser.add_argument(f"--{name}", action="append", default=[], metavar="VALUE",
                            help=_FILTER_HELP[name])
    parser.set_defaults(handler=run)


_FILTER_HELP = {
    "pod": "NAMESPACE/POD on either side",
    "from-pod": "NAMESPACE/POD as the source",
    "to-pod": "NAMESPACE/POD as the destination or backend",
    "namespace": "a pod namespace on either side",
    "ip": "an address or CIDR on either side",
    "port": "a port on either side",
    "verdict": "forwarded, dropped, translated or logged",
    "reason": "a drop reason (listed below)",
    "service": "NAMESPACE/NAME of the service the client asked for",
    "protocol": "tcp, udp, sctp, icmp or icmpv6",
}


def _query(args: argparse.Namespace) -> dict[str, list[str]]:
    query = {name: getattr(args, name.replace("-", "_")) for name in FILTERS}
    return {name: values for name, values in query.items() if values}


def run(args: argparse.Namespace) -> int:
    query = _query(args)
    try:
        FlowFilter.from_query(query)
    except FilterError as err:
        return _fail(f"--{err}", 2)
    if args.last < 0:
        return _fail(f"--last {args.last}: must be 0 or more", 2)
    if args.node and not args.lab:
        return _fail("--node needs --lab (or use --agent HOST:PORT)", 2)
    try:
        agents = _agents(args)
    except (LabError, ValueError, KeyError) as err:
        return _fail(str(err), 2)
    path = "/flows?" + urlencode({**query, "last": [str(args.last)],
                                  "follow": ["1" if args.follow else "0"]}, doseq=True)
    deadline = time.monotonic() + args.duration if args.duration else None
    if not args.follow:
        return _print_last(agents, path, args.output)
    return _follow(agents, path, args.output, deadline)


def _agents(args: argparse.Namespace) -> list[tuple[str, str | None, tuple[str, int]]]:
    """(label, netns, address) of each agent to ask."""
    if args.lab:
        state = lab_state.load(args.lab)
        nodes = [state.plan.node(args.node)] if args.node else list(state.plan.nodes)
        address = parse_listen(AGENT_LISTEN)
        return [(f"lab node {n.name}", n.netns, address) for n in nodes]
    agent = args.agent or DEFAULT_LISTEN
    return [(f"agent {agent}", None, parse_listen(agent))]


def _print_last(agents: list[tuple[str, str | None, tuple[str, int]]], path: str,
                output: str) -> int:
    docs: list[dict[str, Any]] = []
    failed = 0
    for label, namespace, address in agents:
        try:
            docs += list(_stream(namespace, address, path, label, None))
        except AgentUnreachableError as err:
            print(f"sluice flows: {err}", file=sys.stderr)
            failed += 1
    docs.sort(key=lambda d: str(d.get("time", "")))
    for doc in docs:
        print(json.dumps(doc) if output == "json" else flow_line(doc))
    return 1 if failed else 0


def _follow(agents: list[tuple[str, str | None, tuple[str, int]]], path: str, output: str,
            deadline: float | None) -> int:
    printing = threading.Lock()
    failures: list[str] = []

    def read(label: str, namespace: str | None, address: tuple[str, int]) -> None:
        try:
            for doc in _stream(namespace, address, path, label, deadline):
                with printing:
                    print(json.dumps(doc) if output == "json" else flow_line(doc), flush=True)
        except AgentUnreachableError as err:
            failures.append(str(err))

    threads = [threading.Thread(target=read, args=agent, daemon=True) for agent in agents]
    for thread in threads:
        thread.start()
    try:
        for thread in threads:
            thread.join()
    except KeyboardInterrupt:
        return 130
    for failure in failures:
        print(f"sluice flows: {failure}", file=sys.stderr)
    return 1 if failures else 0


def _connect(namespace: str | None, address: tuple[str, int], label: str) -> socket.socket:
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    if namespace is not None:
        with netns.entered(namespace):
            sock = socket.socket(family, socket.SOCK_STREAM)
    else:
        sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(CONNECT_TIMEOUT)
    try:
        sock.connect(address)
    except OSError as err:
        sock.close()
        raise AgentUnreachableError(f"{label} does not answer: {err}") from None
    return sock


def _stream(namespace: str | None, address: tuple[str, int], path: str, label: str,
            deadline: float | None) -> Iterator[dict[str, Any]]:
    """The JSON lines an agent sends for PATH, until it closes or DEADLINE passes."""
    with _connect(namespace, address, label) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {address[0]}\r\n"
                     "Connection: close\r\n\r\n".encode())
        lines = _lines(sock, deadline)
        status = next(lines, b"").split()
        while next(lines, b"").strip():
            pass  # headers: the body is JSON lines until the agent closes
        if len(status) < 2 or status[1] != b"200":
            body = b"".join(lines).decode(errors="replace").strip()
            raise AgentUnreachableError(f"{label}: {body or b' '.join(status).decode()}")
        for line in lines:
            if line.strip():
                yield json.loads(line)


def _lines(sock: socket.socket, deadline: float | None) -> Iterator[bytes]:
    """Lines from SOCK until it closes, or until DEADLINE (monotonic) passes."""
    pending = b""
    while True:
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            yield line
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            sock.settimeout(min(left, 1.0))
        else:
            sock.settimeout(None)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        if not chunk:
            if pending:
                yield pending
            return
        pending += chunk
        if len(pending) > MAX_LINE:
            raise AgentUnreachableError("the agent sent a line over 1 MiB")


def _fail(message: str, code: int = 1) -> int:
    print(f"sluice flows: {message}", file=sys.stderr)
    return code
