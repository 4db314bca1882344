"""A NodePort flow from outside to a backend on a node without the bpf datapath (an
iptables node), under BPF_PROG_TEST_RUN, IPv4 and IPv6, masquerade on and off.

That node cannot send the replies back through the tunnel, so this node DNATs to the
backend, SNATs the client to its own address and a masquerade port, and sends the packet
the plain pod-to-pod way (VNI 1). The backend's reply to that address and port gets the
client back (masq.h), then the frontend as its source (the service's reply leg).
"""

from __future__ import annotations

import ctypes
import socket
from collections.abc import Iterator
from contextlib import ExitStack

import pytest

from sluice import netns
from sluice.datapath import lb, masq
from sluice.datapath import routing as rt
from sluice.datapath.conntrack import CtFlags, CtKind
from sluice.loader import BpfObject, Map
from sluice.loader.testrun import TestRunResult
from tests.bpf.test_service_nat import (
    FAMILIES,
    TC_REDIRECT,
    V4,
    V6,
    Family,
    FibNode,
    Node,
    assert_checksums_valid,
    assert_leg,
    fib_node,
    flow,
    frame,
    ip,
    l4,
    rewritten,
    run_in,
)
from tests.conftest import unique

pytestmark = pytest.mark.root

__all__ = ["fib_node"]  # the fixture, used by name

PORTS = (61000, 61999)
NODE_PORT, BACKEND_PORT, CLIENT_PORT = 30080, 8080, 40000


class SnatNode(Node):
    def __init__(self, obj: BpfObject, ns: str) -> None:
        super().__init__(obj)
        self.ns = ns
        self.config: Map[ctypes.c_uint32, masq.MasqConfig] = obj.map(
            masq.CONFIG_MAP, ctypes.c_uint32, masq.MasqConfig)
        self.mappings: Map[masq.MasqKey, masq.MasqEntry] = obj.map(
            masq.MAPPINGS_MAP, masq.MasqKey, masq.MasqEntry)

    def in_ns(self, program: str, data: bytes) -> TestRunResult:
        with netns.entered(self.ns):
            return self.run(program, data)


@pytest.fixture
def scratch_ns() -> Iterator[str]:
    ns = unique("sl-tnps")
    netns.create(ns)
    try:
        yield ns
    finally:
        netns.remove(ns)


def make(stack: ExitStack, ns: str, fam: Family, proto: str, *, masquerade: bool,
         foreign: bool = True, dsr: bool = False) -> SnatNode:
    obj = stack.enter_context(BpfObject.open("node"))
    obj.load()
    node = SnatNode(obj, ns)
    node.config.update(ctypes.c_uint32(0), masq.MasqConfig.of(
        enabled=masquerade, addr4=ip(V4.node), addr6=ip(V6.node), ports=PORTS))
    flags = lb.BackendFlags.FOREIGN if foreign else lb.BackendFlags(0)
    node.backends.update(lb.BackendId(1), lb.LbBackend.of(fam.remote_pod, BACKEND_PORT, proto,
                                                           flags))
    node.services.update(lb.LbKey.of(fam.node, NODE_PORT, proto, 1), lb.LbValue.slot(1))
    node.services.update(lb.LbKey.of(fam.node, NODE_PORT, proto), lb.LbValue.service(
        1, 1, lb.LbFlags.DSR if dsr else 0))
    node.routes.update(rt.RouteKey.of(fam.remote_cidr), rt.RouteEntry.of(
        rt.RouteKind.REMOTE_TUNNEL, ifindex=7, next_hop=V4.peer_node))
    return node


@FAMILIES
@pytest.mark.parametrize("proto", ["TCP", "UDP"])
@pytest.mark.parametrize("masquerade", [False, True], ids=["masq-off", "masq-on"])
@pytest.mark.parametrize("dsr", [False, True], ids=["tunnel", "dsr"])
def test_nodeport_to_a_foreign_backend_is_snated_and_the_reply_reversed(
        scratch_ns: str, fib_node: FibNode, fam: Family, proto: str, *, masquerade: bool,
        dsr: bool) -> None:
    with ExitStack() as stack:
        node = make(stack, scratch_ns, fam, proto, masquerade=masquerade, dsr=dsr)
        request = frame(fam.outside, fam.node, l4(proto, CLIENT_PORT, NODE_PORT))
        out = node.in_ns("from_network", request)
        assert out.retval == TC_REDIRECT, "into the tunnel, the pod-to-pod way"
        src, node_port, dst, dport = flow(out.data)
        assert (src, dst, dport) == (ip(fam.node), ip(fam.remote_pod), BACKEND_PORT)
        assert PORTS[0] <= node_port <= PORTS[1]
        assert out.data[14:] == rewritten(request, src=fam.node, sport=node_port,
                                          dst=fam.remote_pod, dport=BACKEND_PORT), \
            "no DSR option: a plain SNATed and DNATed packet"
        assert_checksums_valid(out.data)
        forward = node.ct(fam.outside, CLIENT_PORT, fam.node, NODE_PORT, proto)
        assert_leg(forward, CtKind.DNAT, (fam.remote_pod, BACKEND_PORT))
        assert forward is not None and forward.flags == CtFlags.REMOTE | CtFlags.MASQ
        number = socket.IPPROTO_TCP if proto == "TCP" else socket.IPPROTO_UDP
        inbound = node.mappings.lookup(masq.MasqKey.of(
            masq.MasqDir.IN, addr=fam.node, port=node_port, peer=fam.remote_pod,
            peer_port=BACKEND_PORT, proto=number))
        assert inbound is not None
        assert (inbound.addr.to_ip(), socket.ntohs(inbound.port)) == \
            (ip(fam.outside), CLIENT_PORT)

        again = node.in_ns("from_network", request)
        assert again.data == out.data, "the flow keeps its port"

        reply = frame(fam.remote_pod, fam.node, l4(proto, BACKEND_PORT, node_port, reply=True))
        back = run_in(fib_node, node, "from_network", reply)
        assert back.retval == TC_REDIRECT, "to the client, through the FIB"
        assert back.data[14:] == rewritten(reply, src=fam.node, sport=NODE_PORT,
                                           dst=fam.outside, dport=CLIENT_PORT)
        assert_checksums_valid(back.data)


@FAMILIES
def test_a_backend_on_a_bpf_node_still_goes_through_the_service_tunnel(
        scratch_ns: str, fam: Family) -> None:
    with ExitStack() as stack:
        node = make(stack, scratch_ns, fam, "TCP", masquerade=False, foreign=False)
        request = frame(fam.outside, fam.node, l4("TCP", CLIENT_PORT, NODE_PORT))
        out = node.in_ns("from_network", request)
        assert out.retval == TC_REDIRECT
        assert out.data[14:] == rewritten(request, dst=fam.remote_pod, dport=BACKEND_PORT), \
            "the client's address is kept"
        forward = node.ct(fam.outside, CLIENT_PORT, fam.node, NODE_PORT, "TCP")
        assert forward is not None and forward.flags == CtFlags.REMOTE
        assert not list(node.mappings.keys())


@FAMILIES
def test_a_pod_reaching_the_node_port_keeps_its_address(scratch_ns: str, fam: Family) -> None:
    """Pods' flows to a foreign backend go the pod-to-pod way unchanged: that node's
    replies to a pod address come back as any pod-to-pod packet does."""
    with ExitStack() as stack:
        node = make(stack, scratch_ns, fam, "TCP", masquerade=False)
        node.pod(fam.client)
        request = frame(fam.client, fam.node, l4("TCP", CLIENT_PORT, NODE_PORT))
        out = node.in_ns("from_endpoint", request)
        assert out.retval == TC_REDIRECT
        assert out.data[14:] == rewritten(request, dst=fam.remote_pod, dport=BACKEND_PORT)
        assert not list(node.mappings.keys())


def test_no_free_port_drops_with_the_nat_reason(scratch_ns: str) -> None:
    fam = V4
    with ExitStack() as stack:
        node = make(stack, scratch_ns, fam, "UDP", masquerade=False)
        node.config.update(ctypes.c_uint32(0), masq.MasqConfig.of(
            enabled=False, addr4=ip(V4.node), addr6=ip(V6.node), ports=(61000, 61000)))
        first = node.in_ns("from_network", frame(fam.outside, fam.node,
                                                 l4("UDP", CLIENT_PORT, NODE_PORT)))
        assert first.retval == TC_REDIRECT
        second = node.in_ns("from_network", frame(fam.outside, fam.node,
                                                  l4("UDP", CLIENT_PORT + 1, NODE_PORT)))
        assert second.retval == 2, "the only port is taken by the first flow"
