"""One hop of a trace: which program of a node the packet enters, its run under
BPF_PROG_TEST_RUN in the trace's private instance, and each step explained from what the
run produced (the tc verdict, the frame handed back, the flow event, the private maps
before and after)."""

from __future__ import annotations

import contextlib
import errno
from dataclasses import dataclass
from typing import Any

from sluice import netns
from sluice.compile.devices import TUNNEL_DEVICE
from sluice.datapath import conntrack as ct
from sluice.datapath import events as ev
from sluice.datapath import policy as pol
from sluice.datapath import routing as rt
from sluice.loader import LibbpfError
from sluice.loader.testrun import skb_context
from sluice.model.addresses import IPAddress
from sluice.observe import tracepacket as tp
from sluice.observe.traceexplain import (
    RunRecord,
    Step,
    conntrack_step,
    flow_key,
    parse_step,
    policy_step,
    service_step,
)
from sluice.observe.traceload import TraceInstance
from sluice.observe.traceplace import Cluster, NodeRef
from sluice.observe.traceview import NodeView, PrivateState, RunCounters

TC_OK, TC_SHOT, TC_REDIRECT = 0, 2, 7
TC_NAMES = {TC_OK: "TC_ACT_OK", TC_SHOT: "TC_ACT_SHOT", TC_REDIRECT: "TC_ACT_REDIRECT"}


class TraceHopError(Exception):
    """A hop cannot run: the node has no attachment where the packet would enter, or
    that device is not in the namespace the run happens in."""


@dataclass(frozen=True)
class Entry:
    """Where the packet enters a node's datapath."""

    program: str
    ifname: str
    ifindex: int
    why: str

    @property
    def ingress(self) -> bool:
        return self.program in ("from_endpoint", "from_network")


@dataclass(frozen=True)
class Onward:
    """Where the packet goes after a hop."""

    kind: str  # pod, host, dropped, answered, tunnel, fib, host-stack
    text: str
    final: bool
    next_hop: IPAddress | None = None  # tunnel: the remote node's underlay address
    destination: IPAddress | None = None
    ifindex: int = 0

    def as_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"kind": self.kind, "text": self.text}
        if self.next_hop is not None:
            doc["nextHop"] = str(self.next_hop)
        if self.ifindex:
            doc["ifindex"] = self.ifindex
        return doc


@dataclass(frozen=True)
class Hop:
    node: str
    entry: Entry
    packet: tp.Frame
    steps: tuple[Step, ...]
    code: int
    reason: ev.DropReason | None
    onward: Onward
    data_out: bytes

    def as_dict(self) -> dict[str, Any]:
        out = tp.parse(self.data_out)
        return {"node": self.node, "program": self.entry.program,
                "device": self.entry.ifname, "ifindex": self.entry.ifindex,
                "why": self.entry.why, "packet": self.packet.describe(),
                "steps": [s.as_dict() for s in self.steps],
                "result": {"code": self.code, "name": TC_NAMES.get(self.code, str(self.code)),
                           "reason": self.reason.name.lower() if self.reason else None,
                           "packetOut": out.describe() if out else None},
                "onward": self.onward.as_dict()}


@dataclass
class NodeRun:
    """A node's private instance and views, kept for every hop on that node."""

    node: NodeRef
    instance: TraceInstance
    view: NodeView

    def close(self) -> None:
        self.view.close()
        self.instance.close()


@dataclass(frozen=True)
class Arrival:
    """How the previous hop sent the packet to this node."""

    kind: str  # tunnel, uplink
    from_node: str
    translated: bool  # the previous hop translated it for a client outside the cluster


def choose_entry(run: NodeRun, src: IPAddress, arrival: Arrival | None) -> Entry:
    """The program and device a packet from SRC enters: where SRC lives, or for a packet
    another hop sent here, where that hop sent it (ARRIVAL)."""
    view = run.view
    endpoint = view.endpoints.get(src)
    if arrival is None and endpoint is not None:
        ifname = view.ifname(endpoint.ifindex) or f"ifindex {endpoint.ifindex}"
        return Entry("from_endpoint", ifname, endpoint.ifindex,
                     f"{src} is a local pod: what it sends enters from_endpoint, tc ingress "
                     f"of its host veth {ifname}")
    if arrival is None and view.is_host(src):
        device = view.device("from_host")
        if device is None:
            raise TraceHopError(f"node {run.node.name} has no from_host attachment")
        return Entry("from_host", device.ifname, device.ifindex,
                     f"{src} is the node's own address: the host's packets to pods are "
                     f"routed to {device.ifname}, whose tc egress runs from_host")
    route = lpm_route(PrivateState.read(run.instance), src) if arrival is None else None
    tunnel = (arrival is not None and arrival.kind == "tunnel") or (
        route is not None and route[1].kind == rt.RouteKind.REMOTE_TUNNEL)
    device = view.tunnel() if tunnel else view.uplink()
    if device is None:
        where = TUNNEL_DEVICE if tunnel else "the uplink"
        raise TraceHopError(f"node {run.node.name} has no from_network attachment on {where}")
    sender = arrival.from_node if arrival is not None else \
        f"another node's pod ({src})" if tunnel else str(src)
    if tunnel:
        why = (f"it comes from {sender} through the VXLAN tunnel: decapsulated on "
               f"{device.ifname}, whose tc ingress runs from_network")
        if arrival is not None and arrival.translated:
            why += ("; a test run carries no tunnel metadata, so what this node learns from "
                    "the service VNI (to send replies back through the node that "
                    "translated the flow) is not shown")
    else:
        why = (f"it comes from {sender} over the underlay: it arrives on the uplink "
               f"{device.ifname}, whose tc ingress runs from_network")
    return Entry("from_network", device.ifname, device.ifindex, why)


def lpm_route(state: PrivateState, address: IPAddress) -> tuple[rt.RouteKey,
                                                                  rt.RouteEntry] | None:
    """The most specific route holding ADDRESS (what the datapath's LPM lookup finds)."""
    best = None
    for key, entry in state.routes.values():
        network = key.network()
        if network.version == address.version and address in network and \
                (best is None or network.prefixlen > best[0].network().prefixlen):
            best = (key, entry)
    return best


def run_hop(run: NodeRun, entry: Entry, data: bytes, cluster: Cluster) -> Hop:
    instance, view = run.instance, run.view
    frame = tp.parse(data)
    if frame is None:
        raise TraceHopError("the packet to trace is not IPv4 or IPv6 over Ethernet")
    before, counted_before = PrivateState.read(instance), RunCounters.read(instance)
    ctx = skb_context(ifindex=entry.ifindex,
                      ingress_ifindex=entry.ifindex if entry.ingress else 0)
    entered = netns.entered(run.node.netns) if run.node.netns else contextlib.nullcontext()
    try:
        with entered:
            result = instance.run(entry.program, data, ctx)
    except LibbpfError as err:
        if err.errno != errno.ENODEV:
            raise
        where = f"network namespace {run.node.netns}" if run.node.netns else \
            "this network namespace (give the node's with --netns)"
        raise TraceHopError(f"node {run.node.name}: {entry.ifname} (ifindex {entry.ifindex}) "
                            f"is not a device of {where}") from err
    flow_events, logged = instance.events()
    record = RunRecord(frame, tp.parse(result.data), result.retval, before,
                       PrivateState.read(instance),
                       RunCounters.read(instance).minus(counted_before),
                       flow_events[0] if flow_events else None, tuple(logged))
    steps = [parse_step(frame, entry, instance.build(entry.program)), conntrack_step(record),
             service_step(record, view, cluster,
                          local_source=entry.program in ("from_endpoint", "from_host")),
             policy_step(record, view, cluster)]
    route, onward = deliver_step(run, record, cluster)
    steps += [route, verdict_step(record.code, record.reason, onward)]
    return Hop(run.node.name, entry, frame, tuple(steps), record.code, record.reason, onward,
               result.data)


def _moved_route(before: PrivateState, after: PrivateState
                 ) -> tuple[rt.RouteKey, rt.RouteEntry, int] | None:
    for raw, (key, entry) in after.routes.items():
        then = before.routes.get(raw)
        if then is not None and entry.hits > then[1].hits:
            return key, entry, int(entry.hits - then[1].hits)
    return None


def _route_text(key: rt.RouteKey, entry: rt.RouteEntry, run: NodeRun, cluster: Cluster) -> str:
    kind = rt.RouteKind(entry.kind).name.lower().replace("_", "-") \
        if entry.kind in rt.RouteKind._value2member_map_ else str(entry.kind)
    if entry.kind == rt.RouteKind.LOCAL_PODS:
        return f"route {key.network()} ({kind}: this node's pods)"
    hop = entry.next_hop.to_ip()
    node = cluster.node_with_address(hop)
    device = run.view.ifname(entry.ifindex) or f"ifindex {entry.ifindex}"
    via = f"through {device}" if entry.kind == rt.RouteKind.REMOTE_TUNNEL else \
        "by the kernel's FIB"
    return f"route {key.network()} ({kind}): next hop {hop}" + \
        (f" ({node.name})" if node else "") + f", {via}"


def deliver_step(run: NodeRun, record: RunRecord, cluster: Cluster) -> tuple[Step, Onward]:
    view, frame, out = run.view, record.frame, record.out
    target = out.dst if out is not None else frame.dst
    lines: list[str] = []
    detail: dict[str, Any] = {"destination": str(target)}
    moved = _moved_route(record.before, record.after)
    endpoint = view.endpoints.get(target)
    route = lpm_route(record.after, target)
    if endpoint is not None:
        name = cluster.name_of(target) or str(target)
        ifname = view.ifname(endpoint.ifindex) or "-"
        lines.append(f"{target} is a local endpoint ({name}) on host veth {ifname} "
                     f"(ifindex {endpoint.ifindex}): no route lookup")
        detail["endpoint"] = {"ifindex": int(endpoint.ifindex), "name": name}
    elif moved is not None:
        key, entry, hits = moved
        lines.append(f"{_route_text(key, entry, run, cluster)}; its hit counter moved "
                     f"(+{hits})")
        detail["route"] = {"cidr": str(key.network()), "kind": int(entry.kind),
                           "nextHop": str(entry.next_hop.to_ip()), "hits": hits}
    elif route is not None:
        lines.append(f"{_route_text(route[0], route[1], run, cluster)} (looked up without "
                     "counting: service delivery)")
        detail["route"] = {"cidr": str(route[0].network()), "kind": int(route[1].kind)}
    else:
        lines.append(f"no endpoint and no route for {target}: not a pod of the cluster")
    chosen = (moved[0], moved[1]) if moved is not None else route
    onward = _onward(run, record, chosen, cluster)
    return Step("route", tuple(lines), detail), onward


def _onward(run: NodeRun, record: RunRecord,
            chosen: tuple[rt.RouteKey, rt.RouteEntry] | None, cluster: Cluster) -> Onward:
    """Where the packet goes: CHOSEN is the route the datapath counted (or would find)."""
    code, reason, out = record.code, record.reason, record.out
    view = run.view
    if code == TC_SHOT:
        why = ev.DROP_REASON_TEXT.get(reason or ev.DropReason.UNKNOWN, "")
        name = (reason or ev.DropReason.UNKNOWN).name.lower()
        return Onward("dropped", f"dropped: {name} ({why})", final=True)
    if out is None:
        return Onward("host-stack", "handed on unparsed", final=True)
    if code == TC_REDIRECT and reason is not None:
        return Onward("answered", f"answered instead of forwarded: {out.describe()} goes back "
                      "out toward the sender", final=True)
    if code == TC_REDIRECT:
        endpoint = view.endpoints.get(out.dst)
        if endpoint is not None and out.dst_mac == bytes(endpoint.mac):
            name = cluster.name_of(out.dst) or str(out.dst)
            ifname = view.ifname(endpoint.ifindex) or f"ifindex {endpoint.ifindex}"
            return Onward("pod", f"redirected to {name}: into its veth {ifname} (MACs "
                          f"{tp.mac_text(out.src_mac)} -> {tp.mac_text(out.dst_mac)})",
                          final=True, destination=out.dst, ifindex=int(endpoint.ifindex))
        if chosen is not None and chosen[1].kind == rt.RouteKind.REMOTE_TUNNEL:
            return _tunnel(run, chosen[1].next_hop.to_ip(), int(chosen[1].ifindex), out,
                           cluster)
        returning = _return_tunnel(record.before, record.frame)
        if returning is not None:
            return _tunnel(run, returning[0], returning[1], out, cluster)
        return Onward("fib", f"redirected through the kernel's FIB toward {out.dst} "
                      "(bpf_redirect_neigh)", final=False, destination=out.dst)
    if code == TC_OK:
        if view.is_host(out.dst):
            return Onward("host", f"passed to the host stack: {out.dst} is node "
                          f"{run.node.name}'s own address", final=True, destination=out.dst)
        uplink = view.uplink()
        judged = uplink is not None and view.device("to_network", uplink.ifname) and \
            view.host_interface_flags(uplink.ifindex) & pol.HostInterfaceFlags.ENDPOINT
        after = (f"; if it leaves by {uplink.ifname}, that host endpoint's policy judges it "
                 "there (to_network, not traced)") if judged and uplink else ""
        return Onward("host-stack", f"passed to the host's network stack, which routes it{after}",
                      final=False, destination=out.dst)
    return Onward("other", f"tc verdict {code}", final=True)


def _return_tunnel(before: PrivateState, frame: tp.Frame) -> tuple[IPAddress, int] | None:
    """A reply of a flow another node forwarded: conntrack names that node."""
    key = flow_key(frame)
    entry = before.conntrack.get(bytes(key)) if key is not None else None
    if entry is None or entry.kind != ct.CtKind.RETURN_TUNNEL:
        return None
    return entry.peer.to_ip(), int(entry.ifindex)


def _tunnel(run: NodeRun, next_hop: IPAddress, ifindex: int, out: tp.Frame,
            cluster: Cluster) -> Onward:
    node = cluster.node_with_address(next_hop)
    device = run.view.ifname(ifindex) or f"ifindex {ifindex}"
    to = f"{node.name} ({next_hop})" if node else str(next_hop)
    return Onward("tunnel", f"redirected into {device} (ifindex {ifindex}): VXLAN toward {to}",
                  final=False, next_hop=next_hop, destination=out.dst, ifindex=ifindex)


def verdict_step(code: int, reason: ev.DropReason | None, onward: Onward) -> Step:
    name = TC_NAMES.get(code, str(code))
    detail: dict[str, Any] = {"code": code, "name": name}
    if reason is not None:
        detail["reason"] = reason.name.lower()
        detail["reasonText"] = ev.DROP_REASON_TEXT.get(reason, "")
    return Step("verdict", (f"{name}: {onward.text}",), detail)
