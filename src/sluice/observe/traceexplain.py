"""The steps of a hop, each told from what the run produced: parse (the frame), conntrack
(the private table before and after), service translation (the flow event's frontend ->
backend, the entries created), policy (the entries whose flow counters moved, the flow
recorded, the rule's origin)."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sluice.compile.policytypes import Action, Direction, Tier
from sluice.datapath import conntrack as ct
from sluice.datapath import events as ev
from sluice.datapath import lb
from sluice.datapath import policy as pol
from sluice.datapath.addr import SlAddr
from sluice.observe import tracepacket as tp
from sluice.observe.ctview import KIND_NAMES, PROTOCOL_NAMES
from sluice.observe.traceplace import Cluster
from sluice.observe.traceview import NodeView, PrivateState, RunCounters

if TYPE_CHECKING:
    from sluice.observe.tracehop import Entry

TRACKED = (socket.IPPROTO_TCP, socket.IPPROTO_UDP, tp.IPPROTO_SCTP)
POLICY_REASONS = (ev.DropReason.POLICY_DENIED, ev.DropReason.POLICY_CUT)
SERVICE_REASONS = (ev.DropReason.NO_BACKEND, ev.DropReason.NO_LOCAL_BACKEND,
                   ev.DropReason.SOURCE_RANGE, ev.DropReason.CT_INSERT, ev.DropReason.NAT)


@dataclass(frozen=True)
class Step:
    """One step of a hop: what happened, in lines of text, and as data."""

    name: str
    lines: tuple[str, ...]
    detail: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"step": self.name, "text": list(self.lines), **self.detail}


@dataclass(frozen=True)
class RunRecord:
    """What one run produced: the packet in and out, the tc verdict, the private maps
    before and after, what was counted, the events."""

    frame: tp.Frame
    out: tp.Frame | None
    code: int
    before: PrivateState
    after: PrivateState
    counted: RunCounters
    event: ev.FlowEvent | None
    logged: tuple[pol.PolicyEvent, ...]

    @property
    def reason(self) -> ev.DropReason | None:
        return self.counted.drop_reason()


def _step(name: str, lines: list[str], detail: dict[str, Any]) -> Step:
    return Step(name, tuple(lines), detail)


def tuple_key(frame: tp.Frame) -> ct.CtKey:
    """The tuple policy names the packet's flow by (ICMP echo: its id as both ports)."""
    return ct.CtKey(src=SlAddr.of(frame.src), dst=SlAddr.of(frame.dst),
                    sport=socket.htons(frame.sport), dport=socket.htons(frame.dport),
                    proto=frame.l4_proto)


def flow_key(frame: tp.Frame) -> ct.CtKey | None:
    """The conntrack key of the packet, for the protocols conntrack tracks."""
    return tuple_key(frame) if frame.l4_proto in TRACKED else None


def tuple_text(key: ct.CtKey) -> str:
    proto = PROTOCOL_NAMES.get(key.proto, "ICMP" if key.proto in (1, 58) else str(key.proto))
    return (f"{proto} {tp.endpoint(key.src.to_ip(), socket.ntohs(key.sport))} -> "
            f"{tp.endpoint(key.dst.to_ip(), socket.ntohs(key.dport))}")


def _kind(entry: ct.CtEntry) -> str:
    return KIND_NAMES.get(ct.CtKind(entry.kind), str(entry.kind)) \
        if entry.kind in ct.CtKind._value2member_map_ else str(entry.kind)


def entry_text(entry: ct.CtEntry) -> str:
    address, port = entry.nat
    nat = tp.endpoint(address, port)
    flags = [f.name.lower() for f in ct.CtFlags if f.name and entry.flags & f]
    suffix = f" [{','.join(flags)}]" if flags else ""
    if entry.kind == ct.CtKind.DNAT:
        return f"dnat: the destination becomes {nat} (backend id {entry.backend_id}){suffix}"
    if entry.kind == ct.CtKind.REPLY_SNAT:
        return f"reply-snat: the source becomes {nat} again{suffix}"
    if entry.kind == ct.CtKind.RETURN_TUNNEL:
        return f"return-tunnel: replies go back to {entry.peer.to_ip()} through the tunnel"
    return f"kind {entry.kind}"


def parse_step(frame: tp.Frame, entry: Entry, build: tuple[str, dict[str, object]]) -> Step:
    lines = [f"{frame.describe()} (IPv{frame.src.version}), into {entry.program} on "
             f"{entry.ifname} (ifindex {entry.ifindex})", build[0]]
    return _step("parse", lines, {"protocol": frame.protocol, "source": str(frame.src),
                                  "destination": str(frame.dst), "sourcePort": frame.sport,
                                  "destinationPort": frame.dport,
                                  "family": frame.src.version, "build": build[1]})


def conntrack_step(record: RunRecord) -> Step:
    frame, before, after = record.frame, record.before, record.after
    key = flow_key(frame)
    if key is None:
        return _step("conntrack", [f"{frame.protocol} is not tracked: conntrack holds the "
                                   "TCP, UDP and SCTP flows of services"], {"known": None})
    known = before.conntrack.get(bytes(key))
    lines = [f"known flow: {entry_text(known)} ({known.packets} packets)" if known else
             f"new flow: no entry for {tuple_text(key)}"]
    created = []
    for raw, entry in after.conntrack.items():
        then = before.conntrack.get(raw)
        if then is None:
            tuple_ = tuple_text(ct.CtKey.from_buffer_copy(raw))
            lines.append(f"created {tuple_}: {entry_text(entry)}")
            created.append({"tuple": tuple_, "kind": _kind(entry),
                            "nat": tp.endpoint(*entry.nat), "backendId": int(entry.backend_id)})
        elif entry.packets != then.packets:
            lines.append(f"counted a packet of {tuple_text(ct.CtKey.from_buffer_copy(raw))} "
                         f"({then.packets} -> {entry.packets})")
    if not known and not created:
        lines.append("nothing recorded: conntrack keeps service flows only")
    return _step("conntrack", lines, {"known": _kind(known) if known else None,
                                      "created": created})


def _selection(frontend: lb.LbValue) -> str:
    flags = lb.LbFlags(frontend.flags)
    if flags & lb.LbFlags.AFFINITY:
        how = (f"by ClientIP affinity (kept {frontend.affinity_timeout} s), the first time "
               + ("by Maglev" if flags & lb.LbFlags.MAGLEV else "at random"))
    elif flags & lb.LbFlags.MAGLEV:
        how = "by Maglev (the flow's hash picks a slot of the frontend's table)"
    else:
        how = f"at random among {frontend.count} backend slots (another run may pick another)"
    extra = [name for flag, name in ((lb.LbFlags.LOCAL_ONLY, "traffic policy Local"),
                                     (lb.LbFlags.DSR, "direct server return"),
                                     (lb.LbFlags.SOURCE_RANGES, "source ranges"))
             if flags & flag]
    return how + (f"; {', '.join(extra)}" if extra else "")


def _translation(record: RunRecord) -> tuple[str, int] | None:
    """(backend, backend id) the packet was translated to."""
    frame, out, event = record.frame, record.out, record.event
    if event is not None and event.nat_port:
        _, _, nat = event.addresses()
        if nat is not None:
            return tp.endpoint(nat, socket.ntohs(event.nat_port)), int(event.backend_id)
    key = flow_key(frame)
    entry = record.after.conntrack.get(bytes(key)) if key is not None else None
    if entry is not None and entry.kind == ct.CtKind.DNAT:
        return tp.endpoint(*entry.nat), int(entry.backend_id)
    if out is not None and (out.dst, out.dport) != (frame.dst, frame.dport):
        return tp.endpoint(out.dst, out.dport), 0
    return None


def service_step(record: RunRecord, view: NodeView, cluster: Cluster, *,
                 local_source: bool) -> Step:
    frame, out, before, reason = record.frame, record.out, record.before, record.reason
    if frame.l4_proto not in TRACKED:
        return _step("service", [f"not service traffic: services translate TCP, UDP and "
                                 f"SCTP, not {frame.protocol}"], {"frontend": None})
    frontend_text = tp.endpoint(frame.dst, frame.dport)
    key = flow_key(frame)
    known = before.conntrack.get(bytes(key)) if key is not None else None
    if known is not None and known.kind == ct.CtKind.REPLY_SNAT:
        return _step("service", [f"a reply of a translated flow: its source becomes the "
                                 f"frontend {tp.endpoint(*known.nat)} again"],
                     {"reply": tp.endpoint(*known.nat)})
    if known is not None and known.kind == ct.CtKind.RETURN_TUNNEL:
        return _step("service", [f"a reply of a flow node {known.peer.to_ip()} forwarded: it "
                                 "goes back there through the tunnel"],
                     {"returnTo": str(known.peer.to_ip())})
    frontend = view.frontend(frame.dst, frame.dport, frame.protocol)
    if frontend is None and known is None:
        return _step("service", [f"{frontend_text}/{frame.protocol} is not a service frontend "
                                 "(no lb_services entry)"], {"frontend": None})
    name = cluster.frontends.get((frame.dst, frame.dport, frame.protocol))
    service = f"service {name}" if name else "a service"
    detail: dict[str, Any] = {"frontend": frontend_text, "service": name}
    if reason in SERVICE_REASONS:
        lines = [f"{frontend_text} is the frontend of {service}: not translated, "
                 f"{ev.DROP_REASON_TEXT[reason]}"]
        return _step("service", lines, detail)
    translated = _translation(record)
    if translated is None:
        return _step("service", [f"{frontend_text} is the frontend of {service}: the packet "
                                 "was not translated"], detail)
    backend, backend_id = translated
    address = out.dst if out is not None else None
    pod = cluster.pod_by_ip.get(address) if address is not None else None
    how = "kept from conntrack (known flow)" if known is not None else \
        f"chosen {_selection(frontend)}" if frontend is not None else "chosen"
    lines = [f"{frontend_text} is the frontend of {service}: backend {backend}"
             + (f" (pod {pod}" if pod else " (") + f"{', ' if pod else ''}backend id "
             f"{backend_id}) {how}"]
    if record.counted.selections:
        lines.append("counted in lb_selections as a new flow of backend id "
                     + ", ".join(str(i) for i in sorted(record.counted.selections)))
    if local_source and known is None:
        lines.append("a process's connect() or sendmsg() to this frontend is translated by "
                     "the socket hooks before a packet exists; this is the per-packet "
                     "translation, for what they do not see")
    detail.update(backend=backend, backendId=backend_id, backendPod=pod,
                  selection=how)
    return _step("service", lines, detail)


def _endpoint_name(view: NodeView, cluster: Cluster, ifindex: int) -> str:
    address = view.endpoint_by_ifindex(ifindex)
    if address is not None:
        return cluster.name_of(address) or f"endpoint {address}"
    ifname = view.ifname(ifindex)
    return f"host endpoint {ifname}" if ifname else f"endpoint ifindex {ifindex}"


def _decision_text(key: pol.PolicyKey, verdict: pol.PolicyVerdict, view: NodeView,
                   cluster: Cluster) -> dict[str, Any]:
    direction = Direction(key.direction).name.lower().replace("_", "-") \
        if key.direction in Direction._value2member_map_ else str(key.direction)
    tier = Tier(key.tier).name.lower() if key.tier in Tier._value2member_map_ else str(key.tier)
    action = Action(verdict.action).name.capitalize() \
        if verdict.action in Action._value2member_map_ else str(verdict.action)
    bits = key.prefixlen - pol.POLICY_KEY_FIXED_BITS
    if key.proto == 0:
        port = "any protocol"
    else:
        proto = PROTOCOL_NAMES.get(key.proto, str(key.proto))
        port = f"{proto}/{socket.ntohs(key.dport)}" if bits >= 16 else \
            f"{proto}/{socket.ntohs(key.dport)}/{bits}" if bits else f"{proto}/any port"
    peer = f"identity {key.peer}" if key.peer else "any peer"
    origin = cluster.rule_origins.get(verdict.rule_id, f"rule {verdict.rule_id}")
    endpoint = _endpoint_name(view, cluster, key.endpoint)
    text = (f"{endpoint} {direction} ({tier} tier), {peer}, {port}: {action} by rule "
            f"{verdict.rule_id}: {origin}")
    return {"endpoint": endpoint, "direction": direction, "tier": tier, "peer": int(key.peer),
            "match": port, "action": action, "ruleId": int(verdict.rule_id),
            "origin": origin, "text": text}


def _hooks(flags: int) -> str:
    return ",".join(h.name.lower() for h in pol.PolicyHook if h.name and flags & h) or "none"


def _identities(frame: tp.Frame, out: tp.Frame | None, view: NodeView) -> str:
    parts = []
    # The destination as policy judged it: after translation, not an answer's.
    forward = out is not None and out.src == frame.src
    for role, address in (("source", frame.src),
                          ("destination", out.dst if out is not None and forward else frame.dst)):
        entry = view.identity(address)
        world = pol.Identity.WORLD_V4 if address.version == 4 else pol.Identity.WORLD_V6
        identity = str(entry.identity) if entry else f"{int(world)} (world)"
        parts.append(f"{role} {address} identity {identity}")
    return "peers: " + ", ".join(parts)


def policy_step(record: RunRecord, view: NodeView, cluster: Cluster) -> Step:
    before, after, reason = record.before, record.after, record.reason
    lines = [_identities(record.frame, record.out, view)]
    decisions = []
    for raw, (key, entry) in sorted(after.policy.items()):
        then = before.policy.get(raw)
        if then is not None and entry.flows > then[1].flows:
            decisions.append(_decision_text(key, entry, view, cluster))
    lines += [f"decided by {d['text']}" for d in decisions]
    recorded = []
    for raw, flow in after.flows.items():
        then_flow = before.flows.get(raw)
        tuple_ = tuple_text(ct.CtKey.from_buffer_copy(raw))
        if then_flow is None:
            recorded.append(tuple_)
            lines.append(f"flow recorded in policy_flows: {tuple_} allowed (judged at "
                         f"{_hooks(flow.hooks)}, policy revision {flow.revision}); its later "
                         "packets and replies pass on that verdict")
        elif flow.packets != then_flow.packets or flow.verdict != then_flow.verdict:
            verdict_name = "allowed" if flow.verdict == Action.ALLOW else "denied"
            lines.append(f"known flow {tuple_}: {verdict_name} (judged at "
                         f"{_hooks(flow.hooks)}, revision {flow.revision})")
    rule_id = int(record.event.rule_id) if record.event is not None else 0
    origin = cluster.rule_origins.get(rule_id) if rule_id else None
    if reason in POLICY_REASONS:
        verdict = "denied"
        lines.append(f"{reason.name.lower()}: {ev.DROP_REASON_TEXT[reason]}"
                     + (f"; rule {rule_id}: {origin or 'unknown origin'}" if rule_id else ""))
    elif decisions or recorded or any(line.startswith("known flow") for line in lines):
        verdict = "allowed"
        if recorded and not decisions:
            lines.insert(1, "no policy entry decided: nothing isolates the endpoints "
                            "involved, and without a matching entry a flow is allowed")
    else:
        verdict = "not judged"
        lines.append("no policy decided: none selects the endpoints it involves here "
                     "(or the packet is exempt), so it is allowed")
    for logged in record.logged:
        log_origin = cluster.rule_origins.get(logged.rule_id, f"rule {logged.rule_id}")
        lines.append(f"Log rule {logged.rule_id} matched ({log_origin}); the flow was "
                     + ("allowed" if logged.verdict == Action.ALLOW else "denied"))
    counters = record.counted.policy
    if counters:
        lines.append("policy counters: " + ", ".join(f"{k} +{v}"
                                                     for k, v in sorted(counters.items())))
    return _step("policy", lines, {"verdict": verdict, "ruleId": rule_id or None,
                                   "origin": origin, "decisions": decisions,
                                   "recorded": recorded})
