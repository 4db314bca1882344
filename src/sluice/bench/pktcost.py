"""pkt-cost: what one packet costs node.bpf.o's from_endpoint program, measured with
BPF_PROG_TEST_RUN on the real object (no lab): a pod's packet to a pod on another node
(through the VXLAN route) as a new flow and as an established one, and an established
flow to a ClusterIP, translated per packet.

The kernel runs the program REPEAT times on one buffer and reports the mean, so whatever
the program writes into the packet stays for the next repeat. Service translation
rewrites the destination; to keep every repeat a translated packet of a known flow, the
service flow is set up with a second conntrack entry that maps the backend back to the
frontend: the repeats alternate between the two legs, each a full per-packet NAT.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from sluice.bench.benchmark import Benchmark
from sluice.bench.context import BenchContext
from sluice.bench.result import BenchRow, Samples, bpf_at_most
from sluice.compile.policytypes import CATCH_ALL_RANK, FIRST_ALLOCATED_IDENTITY
from sluice.datapath import endpoints as ep
from sluice.datapath import lb
from sluice.datapath import policy as pol
from sluice.datapath import routing as rt
from sluice.datapath.addr import LpmKey, SlAddr
from sluice.datapath.conntrack import MAP_NAME as CT_MAP
from sluice.datapath.conntrack import CtEntry, CtFlags, CtKey, CtKind
from sluice.loader import BpfObject, Map, test_run
from sluice.loader.objects import object_path
from sluice.observe.tracepacket import internet_checksum

NAME = "pkt-cost"
PROGRAM = "from_endpoint"
TC_OK, TC_REDIRECT = 0, 7
TCP = socket.IPPROTO_TCP
TCP_SYN, TCP_ACK = 0x02, 0x10

HOST_MAC = "02:00:00:00:00:0a"
CLIENT, CLIENT_IF, CLIENT_MAC, CLIENT_ID = "198.18.16.2", 11, "02:00:00:00:01:01", 300
LOCAL_PODS = "198.18.16.0/24"
REMOTE, REMOTE_ID, REMOTE_PODS = "198.18.17.5", 301, "198.18.17.0/24"
PEER_NODE, TUNNEL_IF = "198.18.0.12", 7
FRONTEND, FRONTEND_PORT, BACKEND_PORT = "198.19.0.10", 80, 8080
SERVICE_ID, BACKEND_ID, FRONTEND_AS_BACKEND_ID = 1, 1, 2
CLIENT_PORT = 40000
SERVICE_CLIENT_PORT = 40001  # the service flow shares its node with the established one
# Peers the policy does not name: the ipcache holds them as it would a cluster's pods.
OTHER_PODS = 256

CASES = ("new flow", "established flow", "service flow")


# --- packets ------------------------------------------------------------------------------


def tcp_frame(src: str, dst: str, sport: int, dport: int, flags: int) -> bytes:
    """An Ethernet/IPv4/TCP frame from a pod to its gateway, checksums correct."""
    saddr, daddr = socket.inet_aton(src), socket.inet_aton(dst)
    tcp = struct.pack("!HHIIBBHHH", sport, dport, 1000, 5001 if flags & TCP_ACK else 0,
                      5 << 4, flags, 65535, 0, 0)
    pseudo = saddr + daddr + struct.pack("!BBH", 0, TCP, len(tcp))
    tcp = tcp[:16] + struct.pack("!H", internet_checksum(pseudo + tcp)) + tcp[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0x1234, 0x4000, 64, TCP, 0,
                     saddr, daddr)
    ip = ip[:10] + struct.pack("!H", internet_checksum(ip)) + ip[12:]
    eth = bytes.fromhex(HOST_MAC.replace(":", "")) + \
        bytes.fromhex(CLIENT_MAC.replace(":", "")) + struct.pack("!H", 0x0800)
    return eth + ip + tcp


# --- a node as the benchmark sets it up ------------------------------------------------


class CostNode:
    """A loaded node.bpf.o holding what a node of a small cluster holds for CLIENT: its
    endpoint, routes to the local and a remote pod CIDR, the ipcache, an egress policy
    isolating CLIENT (it may reach REMOTE on BACKEND_PORT and anyone on FRONTEND_PORT),
    and a ClusterIP FRONTEND whose one backend is REMOTE."""

    def __init__(self, obj: BpfObject) -> None:
        self.obj = obj
        self.policy: Map[pol.PolicyKey, pol.PolicyVerdict] = obj.map(
            pol.POLICY_MAP, pol.PolicyKey, pol.PolicyVerdict)
        self.flows: Map[CtKey, pol.PolicyFlow] = obj.map(pol.FLOWS_MAP, CtKey, pol.PolicyFlow)
        self.conntrack: Map[CtKey, CtEntry] = obj.map(CT_MAP, CtKey, CtEntry)
        self.backends: Map[lb.BackendId, lb.LbBackend] = obj.map(
            lb.BACKENDS_MAP, lb.BackendId, lb.LbBackend)
        self._endpoints()
        self._routes()
        self._ipcache()
        self._policy()
        self._service()

    def _endpoints(self) -> None:
        endpoints: Map[ep.EndpointKey, ep.EndpointInfo] = self.obj.map(
            ep.MAP_NAME, ep.EndpointKey, ep.EndpointInfo)
        endpoints.update(SlAddr.of(CLIENT), ep.EndpointInfo.pod(
            ifindex=CLIENT_IF, mac=CLIENT_MAC, host_mac=HOST_MAC, identity=CLIENT_ID))

    def _routes(self) -> None:
        routes: Map[rt.RouteKey, rt.RouteEntry] = self.obj.map(
            rt.MAP_NAME, rt.RouteKey, rt.RouteEntry)
        routes.update(rt.RouteKey.of(LOCAL_PODS), rt.RouteEntry.of(rt.RouteKind.LOCAL_PODS))
        tunnel = rt.RouteEntry.of(rt.RouteKind.REMOTE_TUNNEL, ifindex=TUNNEL_IF,
                                  next_hop=PEER_NODE)
        routes.update(rt.RouteKey.of(REMOTE_PODS), tunnel)
        # The reverse leg of the service flow (see the module's doc) leaves the same way.
        routes.update(rt.RouteKey.of(f"{FRONTEND}/32"), tunnel)

    def _ipcache(self) -> None:
        ipcache: Map[pol.IpcacheKey, pol.IpcacheEntry] = self.obj.map(
            pol.IPCACHE_MAP, pol.IpcacheKey, pol.IpcacheEntry)
        ipcache.update(LpmKey.of(f"{CLIENT}/32"), pol.IpcacheEntry(CLIENT_ID, CLIENT_ID))
        ipcache.update(LpmKey.of(f"{REMOTE}/32"), pol.IpcacheEntry(REMOTE_ID, REMOTE_ID))
        for index in range(OTHER_PODS):
            identity = FIRST_ALLOCATED_IDENTITY + 1000 + index
            address = f"198.18.{20 + index // 250}.{2 + index % 250}/32"
            ipcache.update(LpmKey.of(address), pol.IpcacheEntry(identity, identity))

    def _egress(self, *, peer: int = pol.Identity.ANY, port: int | None = None
                ) -> pol.PolicyKey:
        return pol.PolicyKey.of(CLIENT_IF, pol.Direction.EGRESS, pol.Tier.KUBERNETES,
                                peer=peer, proto=TCP if port is not None else 0,
                                port=port or 0)

    def _policy(self) -> None:
        self.policy.update(self._egress(), pol.PolicyVerdict.of(pol.Action.DENY,
                                                                CATCH_ALL_RANK))
        self.policy.update(self.remote_allow, pol.PolicyVerdict.of(pol.Action.ALLOW, 0))
        self.policy.update(self._egress(port=FRONTEND_PORT),
                           pol.PolicyVerdict.of(pol.Action.ALLOW, 0))

    @property
    def remote_allow(self) -> pol.PolicyKey:
        return self._egress(peer=REMOTE_ID, port=BACKEND_PORT)

    def _service(self) -> None:
        services: Map[lb.LbKey, lb.LbValue] = self.obj.map(lb.SERVICES_MAP, lb.LbKey,
                                                           lb.LbValue)
        self.backends.update(lb.BackendId(BACKEND_ID),
                             lb.LbBackend.of(REMOTE, BACKEND_PORT, "TCP"))
        services.update(lb.LbKey.of(FRONTEND, FRONTEND_PORT, "TCP", 1),
                        lb.LbValue.slot(BACKEND_ID))
        services.update(lb.LbKey.of(FRONTEND, FRONTEND_PORT, "TCP"),
                        lb.LbValue.service(SERVICE_ID, 1))

    def decided(self, key: pol.PolicyKey) -> int:
        """Flows the policy entry KEY decided."""
        verdict = self.policy.lookup(key)
        return int(verdict.flows) if verdict is not None else 0

    def run(self, data: bytes, expect: int, repeat: int = 1) -> tuple[float, bytes]:
        """Mean ns per packet over REPEAT runs, and the packet as the last run left it."""
        result = test_run(self.obj.program(PROGRAM), data, repeat=repeat)
        if result.retval != expect:
            raise RuntimeError(f"{PROGRAM} returned {result.retval}, expected {expect}")
        return float(result.duration_ns), result.data


@contextlib.contextmanager
def loaded_node(path: Path, *, flows_expire_at_once: bool = False) -> Iterator[CostNode]:
    with BpfObject(path) as obj:
        if flows_expire_at_once:
            obj.set_rodata(ct_timeout_tcp_s=0, ct_timeout_other_s=0)
        obj.load()
        yield CostNode(obj)


# --- the three cases ----------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    repeat: int   # runs per test run; the kernel reports their mean
    samples: int  # test runs per case; the median is reported


def _sampled(node: CostNode, data: bytes, expect: int, plan: Plan) -> list[float]:
    node.run(data, expect, plan.repeat)  # warm caches and map entries
    return [node.run(data, expect, plan.repeat)[0] for _ in range(plan.samples)]


def new_flow(path: Path, plan: Plan) -> list[float]:
    """Flows expire at once, so every repeat is judged by policy and recorded anew."""
    with loaded_node(path, flows_expire_at_once=True) as node:
        data = tcp_frame(CLIENT, REMOTE, CLIENT_PORT, BACKEND_PORT, TCP_SYN)
        values = _sampled(node, data, TC_REDIRECT, plan)
        if node.decided(node.remote_allow) != plan.repeat * (plan.samples + 1):
            raise RuntimeError("new flow: not every repeat was judged as a new flow")
        return values


def established_flow(node: CostNode, plan: Plan) -> list[float]:
    """The flow's verdict is recorded: later packets are looked up, not judged."""
    data = tcp_frame(CLIENT, REMOTE, CLIENT_PORT, BACKEND_PORT, TCP_ACK)
    judged = node.decided(node.remote_allow)
    node.run(data, TC_REDIRECT)
    values = _sampled(node, data, TC_REDIRECT, plan)
    flow = node.flows.lookup(CtKey.of(CLIENT, CLIENT_PORT, REMOTE, BACKEND_PORT, "TCP"))
    if node.decided(node.remote_allow) != judged + 1 or flow is None or \
            flow.packets != 1 + plan.repeat * (plan.samples + 1):
        raise RuntimeError("established flow: the flow was judged more than once")
    return values


def _now_ns() -> int:
    """bpf_ktime_get_ns's clock."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def service_flow(node: CostNode, plan: Plan) -> list[float]:
    """A flow to FRONTEND, picked to REMOTE by its first packet; each measured packet is
    translated. The second leg (REMOTE back to FRONTEND, see the module's doc) is what
    lets the kernel's repeats run on a packet the previous repeat rewrote."""
    if plan.repeat % 2:
        raise ValueError("service flow: REPEAT must be even (the legs alternate)")
    first = tcp_frame(CLIENT, FRONTEND, SERVICE_CLIENT_PORT, FRONTEND_PORT, TCP_SYN)
    node.run(first, TC_REDIRECT)
    forward = CtKey.of(CLIENT, SERVICE_CLIENT_PORT, FRONTEND, FRONTEND_PORT, "TCP")
    entry = node.conntrack.lookup(forward)
    if entry is None or entry.kind != CtKind.DNAT or entry.nat != (
            SlAddr.of(REMOTE).to_ip(), BACKEND_PORT):
        raise RuntimeError("service flow: the first packet was not translated")
    node.backends.update(lb.BackendId(FRONTEND_AS_BACKEND_ID),
                         lb.LbBackend.of(FRONTEND, FRONTEND_PORT, "TCP"))
    back = CtKey.of(CLIENT, SERVICE_CLIENT_PORT, REMOTE, BACKEND_PORT, "TCP")
    node.conntrack.update(back, CtEntry(
        last_seen_ns=_now_ns(), nat_addr=SlAddr.of(FRONTEND),
        nat_port=socket.htons(FRONTEND_PORT), kind=CtKind.DNAT, flags=CtFlags.REMOTE,
        backend_id=FRONTEND_AS_BACKEND_ID))
    data = tcp_frame(CLIENT, FRONTEND, SERVICE_CLIENT_PORT, FRONTEND_PORT, TCP_ACK)
    _, translated = node.run(data, TC_REDIRECT)
    if translated[14:] != tcp_frame(CLIENT, REMOTE, SERVICE_CLIENT_PORT, BACKEND_PORT,
                                    TCP_ACK)[14:]:
        raise RuntimeError("service flow: the packet was not translated correctly")
    node.run(translated, TC_REDIRECT)  # the second leg's policy flow
    before = node.conntrack.lookup(forward)
    values = _sampled(node, data, TC_REDIRECT, plan)
    after = node.conntrack.lookup(forward)
    if before is None or after is None or \
            after.packets - before.packets != plan.repeat // 2 * (plan.samples + 1):
        raise RuntimeError("service flow: not every other repeat took the forward leg")
    return values


def measure(path: Path, plan: Plan) -> dict[str, list[float]]:
    """Every case's samples, on the object at PATH (loaded twice: the verifier takes
    seconds for node.bpf.o)."""
    values = {"new flow": new_flow(path, plan)}
    with loaded_node(path) as node:
        values["established flow"] = established_flow(node, plan)
        values["service flow"] = service_flow(node, plan)
    return values


@contextlib.contextmanager
def pinned(cpu: int) -> Iterator[None]:
    """This process on CPU while measuring: test runs execute on the calling CPU."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu} if cpu in before else before)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


WHAT = {
    "new flow": "pod -> remote pod, TCP SYN, every repeat judged by policy and recorded",
    "established flow": "pod -> remote pod, TCP ACK, policy flow recorded",
    "service flow": "pod -> ClusterIP (remote backend), TCP ACK, DNAT per packet",
}
NOTE = ("no iptables figure: iptables has no per-packet BPF program; its per-packet cost "
        "is covered by the lab benchmarks (pod-rr, cpu-per-gbit)")
NOTES = {
    "established flow": "; the test run's own loop costs ~35 ns of each figure (an empty "
                        "program measures that), the lookups every packet needs (conntrack, "
                        "service frontend, policy flow, endpoint, route) and the clock, "
                        "tunnel key and redirect helpers the rest",
    "service flow": "; repeats alternate between two DNAT legs (frontend->backend, "
                    "backend->frontend): the kernel re-runs the program on the buffer the "
                    "previous repeat rewrote",
}


def run(ctx: BenchContext) -> list[BenchRow]:
    plan = Plan(repeat=20_000 if ctx.quick else 200_000, samples=ctx.repeats)
    cpu = ctx.cpus - 1
    ctx.say(f"{NAME}: {plan.samples} samples of {plan.repeat} test runs per case, cpu{cpu}")
    with pinned(cpu):
        values = measure(object_path("node"), plan)
    rows = []
    for case in CASES:
        samples = Samples.of(values[case])
        ctx.say(f"{NAME}: {case}: {samples.median:.0f} ns (spread {samples.spread:.0%})")
        rows.append(BenchRow(
            benchmark=NAME, case=case, metric="time per packet", unit="ns", better="lower",
            bpf=samples, iptables=None, tool="BPF_PROG_TEST_RUN (from_endpoint, node.bpf.o)",
            params=(f"{WHAT[case]}; IPv4 54 B; VXLAN route; egress NetworkPolicy "
                    f"(isolated, 2 allows), {OTHER_PODS + 2} ipcache entries; mean of "
                    f"{plan.repeat} runs per sample, {plan.samples} samples, cpu{cpu}"),
            target=bpf_at_most(100, "ns") if case == "established flow" else None,
            note=NOTE + NOTES.get(case, "")))
    return rows


BENCHMARKS: list[Benchmark] = [
    Benchmark(NAME, "ns per packet of from_endpoint under BPF_PROG_TEST_RUN: new, "
              "established and service flows", run),
]
