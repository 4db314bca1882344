"""`sluice trace`: why a packet goes where it goes, or is dropped.

The tracer builds a flow's first packet and runs it, under BPF_PROG_TEST_RUN, through the
node's own programs and maps (a private instance: see traceload), hop by hop: the program
the packet enters on its first node, then, when the packet is redirected into the tunnel
or toward another node and that node is traceable (a lab's nodes), the program it enters
there. Each hop explains its steps (tracehop, traceexplain); the trace ends with where the
packet ends up: delivered to a pod or a node, dropped (with the reason and the rule),
answered in its place, or handed to the host stack. Nothing is sent and nothing the nodes
hold changes.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from sluice.datapath import events as ev
from sluice.observe import tracepacket as tp
from sluice.observe.tracehop import (
    Arrival,
    Hop,
    NodeRun,
    TraceHopError,
    choose_entry,
    run_hop,
)
from sluice.observe.traceload import FlowSeed, TraceInstance
from sluice.observe.traceplace import Cluster, NodeRef, Party, TraceInputError
from sluice.observe.traceview import NodeView

MAX_HOPS = 6
EPHEMERAL_PORTS = (32768, 60999)
STEP_WIDTH = 10


class TraceError(Exception):
    """The trace cannot run: which node, or what it lacks, is in the message."""


@dataclass(frozen=True)
class TraceRequest:
    source: Party
    destination: Party
    protocol: str  # TCP, UDP, SCTP, ICMP
    dport: int
    sport: int  # ICMP: the echo id
    start: str  # the node the packet enters first

    @classmethod
    def of(cls, source: Party, destination: Party, *, protocol: str, dport: int,
           sport: int | None, start: str) -> TraceRequest:
        low, high = EPHEMERAL_PORTS
        return cls(source, destination, protocol, dport,
                   sport if sport is not None else low + secrets.randbelow(high - low + 1),
                   start)


def start_node(source: Party, destination: Party, cluster: Cluster, given: str | None) -> str:
    """The node the packet enters first: --node, else the source's, else the destination's."""
    if given:
        return given
    for party in (source, destination):
        if party.node and party.node in cluster.nodes:
            return party.node
    raise TraceInputError("say which node the packet enters with --node (neither "
                          f"{source.text} nor {destination.text} is on a known node)")


@dataclass(frozen=True)
class TraceResult:
    request: TraceRequest
    hops: tuple[Hop, ...]
    verdict: str  # delivered, dropped, answered, forwarded, host-stack
    reason: ev.DropReason | None
    summary: str

    def as_dict(self) -> dict[str, Any]:
        request = self.request
        return {"from": request.source.as_dict(), "to": request.destination.as_dict(),
                "protocol": request.protocol, "sourcePort": request.sport,
                "destinationPort": request.dport,
                "hops": [hop.as_dict() for hop in self.hops], "verdict": self.verdict,
                "reason": self.reason.name.lower() if self.reason else None,
                "summary": self.summary}

    def render(self) -> str:
        request = self.request
        lines = [f"trace {request.protocol} "
                 f"{_end(request.source, request.sport, request.protocol)} -> "
                 f"{_end(request.destination, request.dport, request.protocol)}"
                 " (BPF_PROG_TEST_RUN on private maps: nothing sent, nothing changed)"]
        for hop in self.hops:
            lines += ["", f"{hop.node}: {hop.entry.program} on {hop.entry.ifname} "
                      f"(ifindex {hop.entry.ifindex})", f"  {hop.entry.why}"]
            for step in hop.steps:
                for index, text in enumerate(step.lines):
                    label = step.name if index == 0 else ""
                    lines.append(f"  {label:<{STEP_WIDTH}} {text}")
        lines += ["", f"verdict: {self.summary}"]
        return "\n".join(lines)


def _end(party: Party, port: int, protocol: str) -> str:
    where = tp.endpoint(party.address, port) if protocol != "ICMP" else str(party.address)
    return f"{where} ({party.label()})" if party.kind != "ip" else where


def trace(request: TraceRequest, cluster: Cluster) -> TraceResult:
    runs: dict[str, NodeRun] = {}
    try:
        return _trace(request, cluster, runs)
    finally:
        for run in runs.values():
            run.close()


def _node_run(name: str, cluster: Cluster, runs: dict[str, NodeRun],
              request: TraceRequest) -> NodeRun:
    if name in runs:
        return runs[name]
    ref = cluster.nodes.get(name)
    if ref is None or not ref.pin_dir:
        raise TraceError(f"node {name} is not traceable from here: give its pin directory "
                         "(--pin-dir, --node) or a lab (--lab)")
    instance = TraceInstance.load(ref.pin_dir, FlowSeed(_l4_proto(request), request.sport))
    try:
        view = NodeView.open(ref.pin_dir)
    except BaseException:
        instance.close()
        raise
    runs[name] = NodeRun(ref, instance, view)
    return runs[name]


def _l4_proto(request: TraceRequest) -> int:
    if request.protocol == "ICMP" and request.source.address.version == 6:
        return tp.IPPROTO_ICMPV6
    return tp.PROTOCOL_NUMBERS[request.protocol]


def _trace(request: TraceRequest, cluster: Cluster, runs: dict[str, NodeRun]) -> TraceResult:
    hops: list[Hop] = []
    node: str = request.start
    arrival: Arrival | None = None
    data: bytes | None = None
    for _ in range(MAX_HOPS):
        run = _node_run(node, cluster, runs, request)
        frame = tp.parse(data) if data is not None else None
        source = frame.src if frame is not None else request.source.address
        try:
            entry = choose_entry(run, source, arrival)
        except TraceHopError as err:
            raise TraceError(str(err)) from err
        if data is None:
            data = tp.build(_first_packet(request, run, entry.program))
        try:
            hop = run_hop(run, entry, data, cluster)
        except TraceHopError as err:
            raise TraceError(str(err)) from err
        hops.append(hop)
        following = _next_node(hop, cluster)
        if hop.onward.final or following is None:
            break
        node, arrival = following
        data = hop.data_out
    return _result(request, tuple(hops), cluster)


def _first_packet(request: TraceRequest, run: NodeRun, program: str) -> tp.PacketSpec:
    macs: dict[str, bytes] = {}
    endpoint = run.view.endpoints.get(request.source.address)
    if program == "from_endpoint" and endpoint is not None:
        macs = {"src_mac": bytes(endpoint.mac), "dst_mac": bytes(endpoint.host_mac)}
    return tp.PacketSpec(request.source.address, request.destination.address,
                         request.protocol, request.sport, request.dport, **macs)


def _next_node(hop: Hop, cluster: Cluster) -> tuple[str, Arrival] | None:
    """The node the hop sends the packet to, when it is traceable, and how it arrives."""
    onward = hop.onward
    target: NodeRef | None = None
    kind = "uplink"
    if onward.kind == "tunnel" and onward.next_hop is not None:
        target, kind = cluster.node_with_address(onward.next_hop), "tunnel"
    elif onward.kind in ("fib", "host-stack") and onward.destination is not None:
        target = cluster.node_with_address(onward.destination) or \
            cluster.node_with_pod_cidr(onward.destination)
    if target is None or not target.pin_dir or target.name == hop.node:
        return None
    translated = hop.entry.program == "from_network" and any(
        step.name == "service" and step.detail.get("backend") for step in hop.steps)
    return target.name, Arrival(kind, hop.node, translated)


def _result(request: TraceRequest, hops: tuple[Hop, ...], cluster: Cluster) -> TraceResult:
    last = hops[-1]
    onward = last.onward
    where = f"on {last.node} ({last.entry.program} on {last.entry.ifname})"
    if onward.kind == "pod" and onward.destination is not None:
        out = tp.parse(last.data_out)
        port = f":{out.dport}" if out is not None and request.protocol != "ICMP" else ""
        name = cluster.name_of(onward.destination) or str(onward.destination)
        return TraceResult(request, hops, "delivered", None,
                           f"delivered to {name} ({onward.destination}{port}) {where}")
    if onward.kind == "host":
        return TraceResult(request, hops, "delivered", None,
                           f"delivered to node {last.node}'s own stack ({onward.destination})")
    if onward.kind == "dropped":
        rule = next((s.detail.get("origin") for s in last.steps
                     if s.name == "policy" and s.detail.get("verdict") == "denied"), None)
        return TraceResult(request, hops, "dropped", last.reason,
                           f"{onward.text} {where}" + (f"; rule: {rule}" if rule else ""))
    if onward.kind == "answered":
        return TraceResult(request, hops, "answered", last.reason, f"{onward.text} {where}")
    if onward.kind in ("tunnel", "fib"):
        return TraceResult(request, hops, "forwarded", None,
                           f"forwarded: {onward.text} {where}; not traced further from "
                           "here (trace the next node with --node, or a lab's with --lab)")
    return TraceResult(request, hops, "host-stack", None, f"{onward.text} {where}")
