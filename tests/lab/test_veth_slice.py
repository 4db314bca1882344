"""The first datapath slice end to end: real packets between two namespaces, forwarded
or dropped by the prefilter according to a map this test writes from Python."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from sluice import netns
from sluice.datapath.prefilter import MAP_NAME, PrefilterAction, PrefilterEntry, PrefilterKey
from sluice.loader import (
    BpfObject,
    ClsactFilter,
    Direction,
    Link,
    Map,
    XdpMode,
    attach_clsact,
    attach_tcx,
    attach_xdp,
)
from tests.conftest import Side, VethPair, tcp_connects, udp_delivered

pytestmark = pytest.mark.root

HOOKS = ["tcx", "clsact", "xdp-native"]


@contextmanager
def prefilter_on(side: Side, hook: str) -> Iterator[Map[PrefilterKey, PrefilterEntry]]:
    """Load the prefilter and attach it to SIDE's interface ingress for the body."""
    with BpfObject.open("prefilter") as obj:
        obj.load()
        attachment: Link | ClsactFilter
        ifindex = side.ifindex()
        with netns.entered(side.ns):
            if hook == "tcx":
                attachment = attach_tcx(obj.program("prefilter_tc"), ifindex, Direction.INGRESS)
            elif hook == "clsact":
                attachment = attach_clsact(obj.program("prefilter_tc"), ifindex,
                                           Direction.INGRESS)
            else:
                attachment = attach_xdp(obj.program("prefilter_xdp"), ifindex, XdpMode.NATIVE)
        try:
            yield obj.map(MAP_NAME, PrefilterKey, PrefilterEntry)
        finally:
            with netns.entered(side.ns):
                attachment.detach()


def deny(cidrs: Map[PrefilterKey, PrefilterEntry], cidr: str) -> PrefilterKey:
    key = PrefilterKey.of(cidr)
    cidrs.update(key, PrefilterEntry(action=PrefilterAction.DROP, rule_id=1))
    return key


@pytest.mark.parametrize("hook", HOOKS)
def test_map_decides_forward_or_drop(veth_pair: VethPair, hook: str) -> None:
    a, b = veth_pair.a, veth_pair.b
    with prefilter_on(b, hook) as cidrs:
        for family in (4, 6):
            assert udp_delivered(a, b, family, timeout=2.0), f"IPv{family} baseline failed"
            assert tcp_connects(a, b, family, timeout=2.0)

        v4_rule = deny(cidrs, f"{a.ipv4}/32")
        assert not udp_delivered(a, b, 4)
        assert not tcp_connects(a, b, 4)
        assert udp_delivered(a, b, 6), "an IPv4 rule must not touch IPv6"
        entry = cidrs.lookup(v4_rule)
        assert entry is not None and entry.packets >= 2

        v6_rule = deny(cidrs, "fd00:5::/64")
        assert not udp_delivered(a, b, 6)

        cidrs.delete(v4_rule)
        cidrs.delete(v6_rule)
        for family in (4, 6):
            assert udp_delivered(a, b, family, timeout=2.0)
            assert tcp_connects(a, b, family, timeout=2.0)


def test_detach_restores_traffic(veth_pair: VethPair) -> None:
    a, b = veth_pair.a, veth_pair.b
    with prefilter_on(b, "tcx") as cidrs:
        deny(cidrs, "0.0.0.0/0")
        assert not udp_delivered(a, b, 4)
    assert udp_delivered(a, b, 4, timeout=2.0)


def test_other_direction_is_untouched(veth_pair: VethPair) -> None:
    """The filter sits on B's ingress: B's own packets to A are not judged by it."""
    a, b = veth_pair.a, veth_pair.b
    with prefilter_on(b, "tcx") as cidrs:
        deny(cidrs, f"{b.ipv4}/32")
        assert udp_delivered(b, a, 4, timeout=2.0)


def test_pinned_link_keeps_filtering_without_its_owner(veth_pair: VethPair, pin_dir: str) -> None:
    """What an agent restart relies on: a pinned link and pinned maps outlive the process
    state that created them, and a new owner adopts both from bpffs."""
    a, b = veth_pair.a, veth_pair.b
    link_pin = f"{pin_dir}/prefilter_link"
    with BpfObject.open("prefilter", pin_dir=pin_dir) as obj:
        obj.load()
        ifindex = b.ifindex()
        with netns.entered(b.ns):
            link = attach_tcx(obj.program("prefilter_tc"), ifindex, Direction.INGRESS)
        link.pin(link_pin)
        link.close()
        deny(obj.map(MAP_NAME, PrefilterKey, PrefilterEntry), f"{a.ipv4}/32")
    assert not udp_delivered(a, b, 4), "the pinned link must still be attached"

    cidrs = Map.from_pin(f"{pin_dir}/{MAP_NAME}", PrefilterKey, PrefilterEntry)
    try:
        cidrs.clear()
        assert udp_delivered(a, b, 4, timeout=2.0), "the adopted map must be the live one"
        deny(cidrs, f"{a.ipv4}/32")
    finally:
        cidrs.close()
    adopted = Link.from_pin(link_pin)
    adopted.detach()
    assert udp_delivered(a, b, 4, timeout=2.0)
