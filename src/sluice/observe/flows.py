"""Flows: datapath flow events decoded and named (pods, services, rules), as Hubble-shaped
JSON or as one line of a table, and the filters `sluice flows` and `/flows` apply."""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sluice.datapath.addr import IPAddress, IPNetwork
from sluice.datapath.events import (
    DROP_REASON_TEXT,
    HOOK_DIRECTION,
    DropReason,
    FlowEvent,
    Hook,
    Verdict,
)
from sluice.datapath.policy import PolicyEvent

PROTOCOLS = {1: "ICMPv4", 6: "TCP", 17: "UDP", 58: "ICMPv6", 132: "SCTP"}
TCP_FLAG_NAMES = (("FIN", 0x01), ("SYN", 0x02), ("RST", 0x04), ("PSH", 0x08), ("ACK", 0x10),
                  ("URG", 0x20), ("ECE", 0x40), ("CWR", 0x80))


@dataclass(frozen=True)
class Peer:
    """One side of a flow as the cluster names it."""

    ip: IPAddress | None
    port: int
    namespace: str = ""
    pod: str = ""
    labels: tuple[str, ...] = ()  # Hubble style: "k8s:app=web", "reserved:world"
    identity: int = 0

    @property
    def name(self) -> str:
        if self.pod:
            return f"{self.namespace}/{self.pod}"
        reserved = [label.removeprefix("reserved:") for label in self.labels
                    if label.startswith("reserved:")]
        return reserved[0] if reserved else ""


@dataclass(frozen=True)
class Names:
    """What the agent knows to name the addresses, services and rules of its flows."""

    node: str = ""
    pods: Mapping[IPAddress, tuple[str, str, tuple[str, ...], int]] = field(default_factory=dict)
    host_ips: frozenset[IPAddress] = frozenset()
    node_ips: Mapping[IPAddress, str] = field(default_factory=dict)  # other nodes
    services: Mapping[tuple[IPAddress, int, int], str] = field(default_factory=dict)
    rules: Mapping[int, str] = field(default_factory=dict)
    interfaces: Mapping[int, str] = field(default_factory=dict)

    def peer(self, ip: IPAddress | None, port: int) -> Peer:
        if ip is None:
            return Peer(None, port)
        pod = self.pods.get(ip)
        if pod is not None:
            namespace, name, labels, identity = pod
            return Peer(ip, port, namespace, name, labels, identity)
        if ip in self.host_ips:
            return Peer(ip, port, labels=("reserved:host",), identity=1)
        if ip in self.node_ips:
            return Peer(ip, port, labels=("reserved:remote-node",), identity=6)
        return Peer(ip, port, labels=("reserved:world",), identity=2)


@dataclass(frozen=True)
class Process:
    pid: int
    command: str
    cgroup_id: int


@dataclass(frozen=True)
class Flow:
    time_ns: int  # Unix time
    node: str
    verdict: Verdict
    reason: DropReason
    hook: Hook
    protocol: int
    ip_version: int
    source: Peer
    destination: Peer
    tcp_flags: int = 0
    service: str = ""  # "namespace/name" of the frontend the client asked for
    backend: Peer | None = None
    rule_id: int = 0
    rule: str = ""  # what the rule came from (its policy)
    interface: tuple[int, str] = (0, "")
    process: Process | None = None
    bytes: int = 0

    @property
    def protocol_name(self) -> str:
        return PROTOCOLS.get(self.protocol, str(self.protocol))

    @property
    def direction(self) -> str:
        return HOOK_DIRECTION.get(self.hook, "TRAFFIC_DIRECTION_UNKNOWN")

    def flags(self) -> list[str]:
        return [name for name, bit in TCP_FLAG_NAMES if self.tcp_flags & bit]

    def summary(self) -> str:
        if self.protocol == 6 and self.tcp_flags:
            return "TCP Flags: " + ", ".join(self.flags())
        return self.protocol_name

    def to_json(self) -> dict[str, Any]:
        """Hubble's flow JSON where a field means the same; Sluice's own under "sluice".
        As in Hubble, a translated flow's destination is the backend and
        destination_service the service; the frontend asked for is sluice.frontend."""
        time = _rfc3339(self.time_ns)
        target = self.backend or self.destination
        doc: dict[str, Any] = {
            "time": time,
            "verdict": self.verdict.name,
            "IP": {"source": _text(self.source.ip), "destination": _text(target.ip),
                   "ipVersion": f"IPv{self.ip_version}"},
            "l4": self._l4(target),
            "source": _endpoint(self.source),
            "destination": _endpoint(target),
            "Type": "L3_L4",
            "node_name": self.node,
            "traffic_direction": self.direction,
            "Summary": self.summary(),
        }
        if self.reason:
            doc["drop_reason"] = int(self.reason)
            doc["drop_reason_desc"] = self.reason.name
        if self.interface[0]:
            doc["interface"] = {"index": self.interface[0], "name": self.interface[1]}
        if self.service:
            namespace, _, name = self.service.partition("/")
            doc["destination_service"] = {"namespace": namespace, "name": name}
        own: dict[str, Any] = {"hook": self.hook.name.lower().replace("_", "-"),
                               "bytes": self.bytes}
        if self.reason:
            own["reason"] = DROP_REASON_TEXT.get(self.reason, "")
        if self.rule_id:
            own["ruleId"] = self.rule_id
            own["rule"] = self.rule
        if self.backend is not None:
            own["frontend"] = {"ip": _text(self.destination.ip),
                               "port": self.destination.port}
        if self.process is not None:
            own["process"] = {"pid": self.process.pid, "command": self.process.command,
                              "cgroupId": self.process.cgroup_id}
        doc["sluice"] = own
        return {"flow": doc, "node_name": self.node, "time": time}

    def _l4(self, target: Peer) -> dict[str, Any]:
        ports = {"source_port": self.source.port, "destination_port": target.port}
        if self.protocol == 6:
            return {"TCP": {**ports, "flags": {name: True for name in self.flags()}}}
        if self.protocol in (17, 132):
            return {self.protocol_name: ports}
        if self.protocol in (1, 58):
            return {self.protocol_name: {}}
        return {}


def _text(ip: IPAddress | None) -> str:
    return "" if ip is None else str(ip)


def _rfc3339(time_ns: int) -> str:
    stamp = datetime.fromtimestamp(time_ns // 1_000_000_000, UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S") + f".{time_ns % 1_000_000_000:09d}Z"


def _endpoint(peer: Peer) -> dict[str, Any]:
    doc: dict[str, Any] = {"identity": peer.identity, "labels": list(peer.labels)}
    if peer.pod:
        doc["namespace"] = peer.namespace
        doc["pod_name"] = peer.pod
    return doc


def decode(event: FlowEvent, names: Names, monotonic_to_unix_ns: int) -> Flow:
    """A flow event as the cluster names it; MONOTONIC_TO_UNIX_NS turns its clock to Unix."""
    src, dst, nat = event.addresses()
    sport, dport, nat_port = event.ports()
    verdict = _enum(Verdict, event.verdict, Verdict.FORWARDED)
    reason = _enum(DropReason, event.reason, DropReason.UNKNOWN)
    hook = _enum(Hook, event.hook, Hook.FROM_ENDPOINT)
    service = names.services.get((dst, dport, event.proto), "") if nat is not None else ""
    process = None
    if event.pid:
        process = Process(int(event.pid), event.comm.decode(errors="replace"),
                          int(event.cgroup_id))
    return Flow(
        time_ns=int(event.time_ns) + monotonic_to_unix_ns,
        node=names.node, verdict=verdict, reason=reason, hook=hook, protocol=int(event.proto),
        ip_version=int(event.family) or (4 if dst.version == 4 else 6),
        source=names.peer(src, sport), destination=names.peer(dst, dport),
        tcp_flags=int(event.tcp_flags), service=service,
        backend=names.peer(nat, nat_port) if nat is not None else None,
        rule_id=int(event.rule_id), rule=names.rules.get(int(event.rule_id), "")
        if event.rule_id else "",
        interface=(int(event.ifindex), names.interfaces.get(int(event.ifindex), "")),
        process=process, bytes=int(event.bytes))


def _enum(kind: Any, value: int, default: Any) -> Any:
    try:
        return kind(value)
    except ValueError:
        return default


class FilterError(ValueError):
    """A filter that names nothing valid; the message names the filter and the value."""


@dataclass(frozen=True)
class FlowFilter:
    """What a flow must match: every given field, any of its values. Pods, namespaces,
    addresses and ports match either side of the flow (or its backend), as in Hubble."""

    pods: frozenset[str] = frozenset()
    from_pods: frozenset[str] = frozenset()
    to_pods: frozenset[str] = frozenset()
    namespaces: frozenset[str] = frozenset()
    networks: tuple[IPNetwork, ...] = ()
    ports: frozenset[int] = frozenset()
    verdicts: frozenset[Verdict] = frozenset()
    reasons: frozenset[DropReason] = frozenset()
    services: frozenset[str] = frozenset()
    protocols: frozenset[int] = frozenset()

    @classmethod
    def from_query(cls, query: Mapping[str, list[str]]) -> FlowFilter:
        """From query parameters (`/flows?pod=x/a&verdict=DROPPED`); FilterError if bad."""
        known = {"pod", "from-pod", "to-pod", "namespace", "ip", "port", "verdict", "reason",
                 "service", "protocol", "last", "follow"}
        unknown = sorted(set(query) - known)
        if unknown:
            raise FilterError(f"unknown filter {unknown[0]!r}; filters are "
                              f"{', '.join(sorted(known - {'last', 'follow'}))}")

        def values(name: str) -> list[str]:
            return [v for item in query.get(name, []) for v in item.split(",") if v]

        return cls(
            pods=frozenset(_pod(v, "pod") for v in values("pod")),
            from_pods=frozenset(_pod(v, "from-pod") for v in values("from-pod")),
            to_pods=frozenset(_pod(v, "to-pod") for v in values("to-pod")),
            namespaces=frozenset(values("namespace")),
            networks=tuple(_network(v) for v in values("ip")),
            ports=frozenset(_port(v) for v in values("port")),
            verdicts=frozenset(_named(Verdict, v, "verdict") for v in values("verdict")),
            reasons=frozenset(_named(DropReason, v, "reason") for v in values("reason")),
            services=frozenset(values("service")),
            protocols=frozenset(_protocol(v) for v in values("protocol")),
        )

    def matches(self, flow: Flow) -> bool:
        sides = [flow.source, flow.destination] + ([flow.backend] if flow.backend else [])
        names = {p.name for p in sides if p.pod}
        if self.pods and not self.pods & names:
            return False
        if self.from_pods and flow.source.name not in self.from_pods:
            return False
        if self.to_pods and not self.to_pods & {p.name for p in sides[1:] if p.pod}:
            return False
        if self.namespaces and not self.namespaces & {p.namespace for p in sides if p.pod}:
            return False
        if self.networks and not any(p.ip is not None and p.ip.version == n.version and
                                     p.ip in n for p in sides for n in self.networks):
            return False
        if self.ports and not self.ports & {p.port for p in sides}:
            return False
        if self.verdicts and flow.verdict not in self.verdicts:
            return False
        if self.reasons and flow.reason not in self.reasons:
            return False
        if self.services and flow.service not in self.services:
            return False
        return not self.protocols or flow.protocol in self.protocols


def _pod(text: str, name: str) -> str:
    namespace, slash, pod = text.partition("/")
    if not slash or not namespace or not pod:
        raise FilterError(f"{name} {text!r}: expected NAMESPACE/POD")
    return text


def _network(text: str) -> IPNetwork:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError as err:
        raise FilterError(f"ip {text!r}: not an address or CIDR ({err})") from None


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise FilterError(f"port {text!r}: expected a number from 1 to 65535")
    return int(text)


def _named(kind: Any, text: str, name: str) -> Any:
    key = text.upper().replace("-", "_")
    try:
        return kind[key]
    except KeyError:
        choices = ", ".join(m.name.lower().replace("_", "-") for m in kind if m.value)
        raise FilterError(f"{name} {text!r}: expected one of {choices}") from None


def _protocol(text: str) -> int:
    numbers = {name.lower(): number for number, name in PROTOCOLS.items()}
    numbers |= {"icmp": 1}
    if text.lower() not in numbers:
        raise FilterError(f"protocol {text!r}: expected one of {', '.join(sorted(numbers))}")
    return numbers[text.lower()]


_POLICY_HOOKS = {1: Hook.FROM_ENDPOINT, 2: Hook.FROM_NETWORK, 4: Hook.FROM_HOST,
                 8: Hook.TO_NETWORK}


def logged_flow(event: PolicyEvent, names: Names) -> Flow:
    """A Log rule's record (policy_events) as a LOGGED flow, stamped now."""
    src, sport, dst, dport, proto = event.flow
    hook = next((h for bit, h in _POLICY_HOOKS.items() if event.hook & bit), Hook.FROM_ENDPOINT)
    return Flow(time_ns=time.time_ns(), node=names.node, verdict=Verdict.LOGGED,
                reason=DropReason.NONE, hook=hook, protocol=proto, ip_version=src.version,
                source=names.peer(src, sport), destination=names.peer(dst, dport),
                rule_id=int(event.rule_id), rule=names.rules.get(int(event.rule_id), ""))


def flow_line(doc: dict[str, Any]) -> str:
    """One line of `sluice flows`' table, from a flow's JSON (as /flows sends it)."""
    flow = doc.get("flow", doc)
    own = flow.get("sluice", {})
    ports: dict[str, Any] = next(iter(flow.get("l4", {}).values()), {})
    when = str(flow.get("time", ""))[11:23]
    src = _side(flow.get("source", {}), flow["IP"]["source"], ports.get("source_port"))
    if not flow["IP"]["source"] and "process" in own:
        src = f"pid {own['process']['pid']} ({own['process']['command']})"
    dst = _side(flow.get("destination", {}), flow["IP"]["destination"],
                ports.get("destination_port"))
    service = flow.get("destination_service")
    frontend = own.get("frontend")
    if service and frontend:
        dst += (f" (service {service['namespace']}/{service['name']} "
                f"{_address(frontend['ip'], frontend['port'])})")
    what = str(flow.get("verdict", ""))
    if flow.get("drop_reason_desc"):
        what += " " + str(flow["drop_reason_desc"]).lower().replace("_", "-")
    if own.get("rule"):
        what += f" by {own['rule']}"
    return (f"{when} {flow.get('node_name', '')} {src} -> {dst} {flow.get('Summary', '')} "
            f"{what} ({own.get('hook', '')})")


def _side(endpoint: dict[str, Any], ip: str, port: int | None) -> str:
    if endpoint.get("pod_name"):
        name = f"{endpoint.get('namespace', '')}/{endpoint['pod_name']}"
    else:
        reserved = [label.removeprefix("reserved:") for label in endpoint.get("labels", [])
                    if label.startswith("reserved:")]
        name = reserved[0] if reserved else ""
    where = _address(ip, port)
    return f"{name} {where}" if name else where


def _address(ip: str, port: int | None) -> str:
    if not port:
        return ip
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
