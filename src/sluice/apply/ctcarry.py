"""Carry established flows across a dataplane switch (what is carried and why:
compile/ctcarry.py). Runs in the node's network namespace, like the agent.

iptables -> bpf (`import_into_bpf`): before the programs are attached, the kernel's
conntrack entries become BPF conntrack legs and policy flow verdicts. They replace what
the maps hold for those tuples (left pinned by an earlier bpf-mode agent, idle since):
the kernel knows what the flow is now. Flows a policy change cut (CUT_MARK) are left out.
bpf -> iptables (`export_from_pins`): after the iptables rules are installed and before
the programs are detached, the pinned BPF conntrack and policy flows become
nf_conntrack entries (`conntrack -I`); an entry the kernel already has is kept.
"""

from __future__ import annotations

import ctypes
import logging
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from ipaddress import ip_address

from pyroute2 import Conntrack
from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple

from sluice.apply.errors import ApplyError
from sluice.apply.nodeobject import NodeObject
from sluice.apply.servicerules import family_supported, read_table, run_tool
from sluice.compile.ctcarry import (
    TCP,
    BpfServiceLeg,
    KernelFlow,
    Tuple5,
    conntrack_insert_argv,
    into_bpf,
    into_kernel,
)
from sluice.compile.iptables_policy import CUT_MARK
from sluice.datapath import conntrack as ct
from sluice.datapath import policy as pol
from sluice.datapath.addr import SlAddr
from sluice.loader.maps import Map, UpdateFlag
from sluice.model.addresses import IPAddress

log = logging.getLogger("sluice.agent")

TCP_ESTABLISHED = 3  # enum tcp_conntrack
IPS_SEEN_REPLY = 1 << 1
# As the datapath's defaults (ct_timeout_tcp_s, ct_timeout_other_s).
TIMEOUT_TCP = 3600
TIMEOUT_OTHER = 120
ALLOW = 1  # policy_action POL_ALLOW
CUT = int(CUT_MARK, 16)


@dataclass
class Carried:
    """What a handover carried: entries written, and flows it could not carry."""

    conntrack: int = 0
    policy_flows: int = 0
    not_carried: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        return (f"{self.conntrack} conntrack entries, {self.policy_flows} policy flows "
                f"in {self.seconds * 1000:.0f} ms; {len(self.not_carried)} not carried")


def kernel_flows() -> list[KernelFlow]:
    """The established flows of this network namespace's nf_conntrack."""
    flows = []
    for af in (socket.AF_INET, socket.AF_INET6):
        with Conntrack(nfgen_family=af) as conntrack:
            for entry in conntrack.dump_entries(tuple_orig=NFCTAttrTuple(family=af)):
                orig, reply = entry.tuple_orig, entry.tuple_reply
                if entry.protoinfo is not None:
                    established = entry.protoinfo.state == TCP_ESTABLISHED
                else:
                    established = bool(entry.status & IPS_SEEN_REPLY)
                if (entry.mark or 0) & CUT:
                    continue
                proto = int(orig.proto)
                flows.append(KernelFlow(
                    Tuple5(proto, ip_address(orig.saddr), int(orig.sport or 0),
                           ip_address(orig.daddr), int(orig.dport or 0)),
                    Tuple5(proto, ip_address(reply.saddr), int(reply.sport or 0),
                           ip_address(reply.daddr), int(reply.dport or 0)),
                    established))
    return flows


def _ct_key(flow: Tuple5) -> ct.CtKey:
    return ct.CtKey(src=SlAddr.of(flow.src), dst=SlAddr.of(flow.dst),
                    sport=socket.htons(flow.sport), dport=socket.htons(flow.dport),
                    proto=flow.protocol)


def _tuple(key: ct.CtKey) -> Tuple5:
    return Tuple5(int(key.proto), key.src.to_ip(), socket.ntohs(key.sport), key.dst.to_ip(),
                  socket.ntohs(key.dport))


def _timeout_s(protocol: int) -> int:
    return TIMEOUT_TCP if protocol == TCP else TIMEOUT_OTHER


def import_into_bpf(node: NodeObject, local_addresses: frozenset[IPAddress]) -> Carried:
    """Write the kernel's established flows into NODE's conntrack and policy flows."""
    began = time.monotonic()
    backend_ids = {(int(b.proto), b.addr.to_ip(), socket.ntohs(b.port)): int(i.value)
                   for i, b in node.lb.backends.lookup_batch()}
    plan = into_bpf(kernel_flows(), backend_ids, local_addresses)
    carried = Carried(not_carried=plan.not_carried)
    now = time.monotonic_ns()  # CLOCK_MONOTONIC, as bpf_ktime_get_ns
    conntrack = node.obj.map(ct.MAP_NAME, ct.CtKey, ct.CtEntry)
    flows = node.obj.map(pol.FLOWS_MAP, ct.CtKey, pol.PolicyFlow)
    state = node.policy.states.lookup(ctypes.c_uint32(0))
    revision = int(state.revision) if state is not None else 0
    for leg in plan.dnat:
        frontend = SlAddr.of(leg.key.dst)
        forward = ct.CtEntry(last_seen_ns=now, nat_addr=SlAddr.of(leg.backend),
                             nat_port=socket.htons(leg.backend_port), kind=ct.CtKind.DNAT,
                             flags=ct.CtFlags.REMOTE if leg.remote else 0,
                             backend_id=leg.backend_id, packets=1)
        reply = ct.CtEntry(last_seen_ns=now, nat_addr=frontend,
                           nat_port=socket.htons(leg.key.dport), kind=ct.CtKind.REPLY_SNAT,
                           backend_id=leg.backend_id, packets=1)
        carried.conntrack += _insert(conntrack, _ct_key(leg.key), forward)
        carried.conntrack += _insert(conntrack, _ct_key(leg.reply_key), reply)
    for flow in plan.policy_flows:
        # No hooks yet: the hook that sees the forward direction next adds its view
        # (and judges it, with the policy that allowed it); replies pass.
        verdict = pol.PolicyFlow(last_seen_ns=now, revision=revision, verdict=ALLOW,
                                 packets=1)
        carried.policy_flows += _insert(flows, _ct_key(flow), verdict)
    carried.seconds = time.monotonic() - began
    return carried


def _insert(bpf_map: Map[ct.CtKey, ct.CtEntry] | Map[ct.CtKey, pol.PolicyFlow],
            key: ct.CtKey, value: ct.CtEntry | pol.PolicyFlow) -> int:
    try:
        bpf_map.update(key, value, UpdateFlag.ANY)  # type: ignore[arg-type]
    except OSError as err:
        raise ApplyError(f"writing {_tuple(key)} into {bpf_map.name}: {err}") from err
    return 1


def _live_items(path: str, value_type: type[ct.CtEntry] | type[pol.PolicyFlow]
                ) -> Iterator[tuple[ct.CtKey, ct.CtEntry | pol.PolicyFlow]]:
    if not os.path.exists(path):
        return
    pinned = Map.from_pin(path, ct.CtKey, value_type)
    try:
        now = time.monotonic_ns()
        for key, value in pinned.lookup_batch():
            if now - int(value.last_seen_ns) <= _timeout_s(int(key.proto)) * 1_000_000_000:
                yield key, value
    finally:
        pinned.close()


def export_from_pins(pin_dir: str) -> Carried:
    """Insert the live flows of the BPF maps pinned in PIN_DIR into nf_conntrack."""
    began = time.monotonic()
    legs = [BpfServiceLeg(_tuple(key), entry.nat_addr.to_ip(), socket.ntohs(entry.nat_port),
                          dsr=bool(entry.flags & ct.CtFlags.DSR))
            for key, entry in _live_items(os.path.join(pin_dir, ct.MAP_NAME), ct.CtEntry)
            if isinstance(entry, ct.CtEntry) and entry.kind == ct.CtKind.DNAT]
    allowed = [_tuple(key) for key, flow in
               _live_items(os.path.join(pin_dir, pol.FLOWS_MAP), pol.PolicyFlow)
               if isinstance(flow, pol.PolicyFlow) and flow.verdict == ALLOW]
    inserts, not_carried = into_kernel(legs, allowed)
    carried = Carried(not_carried=not_carried)
    for insert in inserts:
        proc = run_tool(conntrack_insert_argv(insert, _timeout_s(insert.orig.protocol)))
        if proc.returncode == 0:
            if insert.dnat_to is not None:
                carried.conntrack += 1
            else:
                carried.policy_flows += 1
        elif "exists" not in proc.stderr:
            carried.not_carried.append(f"{insert.orig}: conntrack -I: {proc.stderr.strip()}")
    carried.seconds = time.monotonic() - began
    return carried



def iptables_dataplane_present() -> bool:
    """Whether an iptables-mode agent left its service chains in this namespace."""
    return family_supported(4) and bool(read_table(4, "nat").sluice_chains())
