"""Carrying established flows across a dataplane switch: the kernel's conntrack
(nf_conntrack, iptables mode) <-> the BPF conntrack and policy flow table (bpf mode).
Pure: entries in, entries out; apply/ctcarry.py reads and writes them.

What each dataplane keeps of a flow:
- iptables: one nf_conntrack entry, original tuple (as the client sent it) and reply
  tuple (as the answer comes back); a Service's DNAT is reply.src != orig.dst, a
  masquerade (SNAT) reply.dst != orig.src.
- bpf: service flows the socket hooks did not translate have two `conntrack` entries
  (DNAT: the client's tuple -> the backend; REPLY_SNAT: the backend's answer -> the
  frontend). Every flow a policy judged has a `policy_flows` verdict keyed by its
  pod-facing tuple (after DNAT). Sockets that the socket hooks connected straight to a
  backend carry no NAT at all: they need nothing in either direction.

iptables -> bpf: a DNAT entry becomes both legs, on the backend iptables chose (the
backend's id in `lb_backends`; a backend the load balancer no longer has is left to pick
again); every live flow becomes an allowed policy flow, so neither its replies nor its
later packets are judged as new flows (a hook that first sees its forward direction
judges it with the same policy that allowed it). Masqueraded flows cannot be carried:
the bpf service path does not SNAT.
bpf -> iptables: a DNAT leg becomes an nf_conntrack entry with its DNAT (replies are
un-NATed by the kernel), and every allowed policy flow an entry without NAT, so the
policy chains see ESTABLISHED. Both are inserted as ESTABLISHED/ASSURED. Without an
entry nf_conntrack would still pick up a mid-stream TCP flow while
net.netfilter.nf_conntrack_tcp_loose is 1 (the default), but as NEW in whichever
direction it saw first, and without the DNAT: the entries make the handover independent
of tcp_loose.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from sluice.model.addresses import IPAddress

TCP, UDP, SCTP = 6, 17, 132
CARRIED_PROTOCOLS = (TCP, UDP, SCTP)


@dataclass(frozen=True, order=True)
class Tuple5:
    """A direction of a flow as its packets carry it (ports in host byte order)."""

    protocol: int
    src: IPAddress
    sport: int
    dst: IPAddress
    dport: int

    def reversed(self) -> Tuple5:
        return Tuple5(self.protocol, self.dst, self.dport, self.src, self.sport)

    def __str__(self) -> str:
        return f"{self.protocol}:{self.src}:{self.sport}->{self.dst}:{self.dport}"


@dataclass(frozen=True)
class KernelFlow:
    """An nf_conntrack entry: its two tuples and whether it is established (TCP in
    ESTABLISHED, or any flow that saw a reply)."""

    orig: Tuple5
    reply: Tuple5
    established: bool = True

    @property
    def dnat(self) -> bool:
        return (self.reply.src, self.reply.sport) != (self.orig.dst, self.orig.dport)

    @property
    def snat(self) -> bool:
        return (self.reply.dst, self.reply.dport) != (self.orig.src, self.orig.sport)

    @property
    def pod_facing(self) -> Tuple5:
        """The flow after a Service's DNAT: the client toward the backend."""
        return Tuple5(self.orig.protocol, self.orig.src, self.orig.sport, self.reply.src,
                      self.reply.sport)


@dataclass(frozen=True)
class BpfDnat:
    """A BPF service flow's forward leg: KEY was sent to the frontend, goes to BACKEND."""

    key: Tuple5
    backend: IPAddress
    backend_port: int
    backend_id: int
    remote: bool

    @property
    def reply_key(self) -> Tuple5:
        """The reply leg's key: the backend answering the client."""
        return Tuple5(self.key.protocol, self.backend, self.backend_port, self.key.src,
                      self.key.sport)


@dataclass
class IntoBpf:
    dnat: list[BpfDnat] = field(default_factory=list)
    policy_flows: list[Tuple5] = field(default_factory=list)
    not_carried: list[str] = field(default_factory=list)


def into_bpf(flows: Iterable[KernelFlow], backend_ids: Mapping[tuple[int, IPAddress, int], int],
             local_addresses: frozenset[IPAddress]) -> IntoBpf:
    """What the BPF maps need for the kernel's established FLOWS. BACKEND_IDS:
    (protocol, address, port) -> id in `lb_backends`; LOCAL_ADDRESSES: this node's pods."""
    carried = IntoBpf()
    for flow in sorted(flows, key=lambda f: f.orig):
        if flow.orig.protocol not in CARRIED_PROTOCOLS or not flow.established:
            continue
        if flow.snat:
            carried.not_carried.append(f"{flow.orig}: masqueraded (bpf service flows are "
                                       "not SNATed)")
            continue
        if flow.dnat:
            backend = (flow.orig.protocol, flow.reply.src, flow.reply.sport)
            backend_id = backend_ids.get(backend)
            if backend_id is None:
                carried.not_carried.append(f"{flow.orig}: backend {flow.reply.src}:"
                                           f"{flow.reply.sport} is not in the load balancer")
                continue
            carried.dnat.append(BpfDnat(flow.orig, flow.reply.src, flow.reply.sport,
                                        backend_id, flow.reply.src not in local_addresses))
        carried.policy_flows.append(flow.pod_facing)
    return carried


@dataclass(frozen=True)
class BpfServiceLeg:
    """A BPF `conntrack` DNAT entry as read from the map."""

    key: Tuple5
    backend: IPAddress
    backend_port: int
    dsr: bool = False


@dataclass(frozen=True)
class KernelInsert:
    """An nf_conntrack entry to insert: ORIG, with its DNAT target if any."""

    orig: Tuple5
    dnat_to: tuple[IPAddress, int] | None = None

    @property
    def reply(self) -> Tuple5:
        if self.dnat_to is None:
            return self.orig.reversed()
        address, port = self.dnat_to
        return Tuple5(self.orig.protocol, address, port, self.orig.src, self.orig.sport)


def into_kernel(legs: Iterable[BpfServiceLeg], allowed_flows: Iterable[Tuple5]
                ) -> tuple[list[KernelInsert], list[str]]:
    """The nf_conntrack entries for BPF's service LEGS and ALLOWED_FLOWS (policy flows'
    keys, pod-facing); and what cannot be carried. A policy flow that is a service
    flow's pod-facing tuple is covered by the service's entry (its reply tuple)."""
    inserts: list[KernelInsert] = []
    not_carried: list[str] = []
    replies: set[Tuple5] = set()
    for leg in sorted(legs, key=lambda leg: leg.key):
        if leg.key.protocol not in CARRIED_PROTOCOLS:
            continue
        if leg.dsr:
            not_carried.append(f"{leg.key}: direct server return (iptables has no DSR)")
            continue
        insert = KernelInsert(leg.key, (leg.backend, leg.backend_port))
        inserts.append(insert)
        replies.add(insert.reply)
    for flow in sorted(set(allowed_flows)):
        if flow.protocol not in CARRIED_PROTOCOLS or flow.reversed() in replies:
            continue
        inserts.append(KernelInsert(flow))
        replies.add(flow.reversed())
    return inserts, not_carried


def conntrack_insert_argv(insert: KernelInsert, timeout: int) -> list[str]:
    """`conntrack -I` arguments for INSERT: established, assured, seen a reply."""
    orig = insert.orig
    argv = ["conntrack", "-I", "-p", {TCP: "tcp", UDP: "udp", SCTP: "sctp"}[orig.protocol],
            "-s", str(orig.src), "-d", str(orig.dst),
            "--sport", str(orig.sport), "--dport", str(orig.dport),
            "--timeout", str(timeout), "-u", "SEEN_REPLY,ASSURED"]
    if orig.protocol in (TCP, SCTP):
        argv += ["--state", "ESTABLISHED"]
    if insert.dnat_to is not None:
        address, port = insert.dnat_to
        where = f"[{address}]" if address.version == 6 else str(address)
        argv += ["--dst-nat", f"{where}:{port}"]
    return argv
