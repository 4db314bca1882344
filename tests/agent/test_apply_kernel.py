"""apply.attachments and apply.kernel in a test node namespace, without an agent."""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Iterator

import pytest
from pyroute2 import IPRoute

from sluice import netlink, netns
from sluice.apply.attachments import Attachment, sync_links
from sluice.apply.kernel import apply_kernel_state
from sluice.apply.links import ifindexes, read_links
from sluice.apply.nodeobject import NodeObject
from sluice.apply.routes import ROUTE_PROTOCOL
from sluice.compile.kernelstate import (
    Device,
    DeviceKind,
    ForwardingEntry,
    KernelRoute,
    KernelState,
    Neighbor,
)
from sluice.loader import Direction, Link, tcx_program_ids
from tests.conftest import unique

pytestmark = pytest.mark.root

IP = ipaddress.ip_address
NET = ipaddress.ip_network
PEER_MAC = "02:aa:bb:cc:dd:02"


@pytest.fixture
def node_ns() -> Iterator[str]:
    name = unique("sl-tak")
    netns.create(name)
    try:
        netlink.set_sysctl(name, "net.ipv6.conf.default.accept_dad", "0")
        netlink.set_sysctl(name, "net.ipv6.conf.all.accept_dad", "0")
        with netns.entered(name), IPRoute() as ipr:
            ipr.link("add", ifname="uplink0", kind="veth", peer={"ifname": "far0"})
        netlink.configure(name, "uplink0", ["198.18.0.11/24", "fd00:ff::11/64"])
        netlink.configure(name, "far0", [])
        yield name
    finally:
        netns.remove(name)


def devices(ns: str) -> dict[str, int]:
    with netns.entered(ns), IPRoute() as ipr:
        return ifindexes(read_links(ipr))


# --- links -----------------------------------------------------------------------------


def test_links_are_pinned_adopted_by_a_new_program_and_removed(node_ns: str,
                                                              pin_dir: str) -> None:
    with netns.entered(node_ns), IPRoute() as ipr:
        ipr.link("add", ifname="sl-host", kind="ifb")
        ipr.link("set", index=ipr.link_lookup(ifname="sl-host")[0], state="up")
    wanted = frozenset({Attachment("from_network", "uplink0"), Attachment("from_host", "sl-host")})
    first = NodeObject.load(pin_dir, tunnel_vni=1)
    try:
        with netns.entered(node_ns):
            result = sync_links(pin_dir, first.programs, wanted, devices(node_ns))
        assert (result.changes.added, result.problems) == (2, [])
        assert sorted(os.listdir(f"{pin_dir}/links")) == ["from_host@sl-host",
                                                          "from_network@uplink0"]
        first_prog = first.programs["from_network"].info().id
    finally:
        first.close()
    link_id = Link.from_pin(f"{pin_dir}/links/from_network@uplink0")
    try:
        before = link_id.info()
    finally:
        link_id.close()

    second = NodeObject.load(pin_dir, tunnel_vni=1)
    try:
        with netns.entered(node_ns):
            adopted = sync_links(pin_dir, second.programs, wanted, devices(node_ns))
            uplink = devices(node_ns)["uplink0"]
            attached = tcx_program_ids(uplink, Direction.INGRESS)
            host_egress = tcx_program_ids(devices(node_ns)["sl-host"], Direction.EGRESS)
        new_prog = second.programs["from_network"].info().id
        assert (adopted.changes.added, adopted.changes.changed) == (0, 2)
        assert attached == [new_prog] and new_prog != first_prog, "swapped, not added"
        assert host_egress == [second.programs["from_host"].info().id]
        link = Link.from_pin(f"{pin_dir}/links/from_network@uplink0")
        try:
            assert link.info().link_id == before.link_id, "the same link, adopted"
        finally:
            link.close()

        with netns.entered(node_ns):
            again = sync_links(pin_dir, second.programs, wanted, devices(node_ns))
        assert (again.changes.any, again.changes.unchanged) == (False, 2)

        # The host device disappears; the uplink link is no longer wanted.
        with netns.entered(node_ns), IPRoute() as ipr:
            ipr.link("del", index=ipr.link_lookup(ifname="sl-host")[0])
        with netns.entered(node_ns):
            gone = sync_links(pin_dir, second.programs, frozenset(), devices(node_ns))
            assert tcx_program_ids(uplink, Direction.INGRESS) == []
        assert gone.changes.removed == 2
        assert os.listdir(f"{pin_dir}/links") == []
    finally:
        second.close()


def test_a_foreign_file_among_the_link_pins_is_reported_and_kept(node_ns: str,
                                                                 pin_dir: str) -> None:
    os.makedirs(f"{pin_dir}/links")
    os.mkdir(f"{pin_dir}/links/not-ours")
    loaded = NodeObject.load(pin_dir, tunnel_vni=1)
    try:
        with netns.entered(node_ns):
            result = sync_links(pin_dir, loaded.programs,
                                frozenset({Attachment("from_network", "uplink0"),
                                           Attachment("from_host", "sl-missing")}),
                                devices(node_ns))
    finally:
        loaded.close()
    assert result.changes.added == 1
    assert any("not-ours" in p for p in result.problems)
    assert any("sl-missing" in p and "no such device" in p for p in result.problems)
    assert os.path.isdir(f"{pin_dir}/links/not-ours")


# --- kernel state ----------------------------------------------------------------------


def iptables_vxlan_state(local: str = "198.18.0.11", peer: str = "198.18.0.12") -> KernelState:
    gateway = IP("198.18.17.0")
    return KernelState(
        devices=(Device("sl-vxlan", DeviceKind.VXLAN, "02:aa:bb:cc:dd:01", IP(local)),),
        routes=frozenset({KernelRoute(NET("198.18.17.0/24"), "sl-vxlan", gateway, onlink=True),
                          KernelRoute(NET("fd00:10:2::/64"), "sl-vxlan", IP("fd00:10:2::"),
                                      onlink=True)}),
        neighbors=frozenset({Neighbor(gateway, PEER_MAC, "sl-vxlan"),
                             Neighbor(IP("fd00:10:2::"), PEER_MAC, "sl-vxlan")}),
        forwarding=frozenset({ForwardingEntry(PEER_MAC, IP(peer), "sl-vxlan")}),
    )


def own_routes(ns: str) -> dict[str, tuple[int, str | None]]:
    with netns.entered(ns), IPRoute() as ipr:
        return {f"{r.get_attr('RTA_DST')}/{r['dst_len']}": (r.get_attr("RTA_OIF"),
                                                             r.get_attr("RTA_GATEWAY"))
                for family in (socket.AF_INET, socket.AF_INET6)
                for r in ipr.get_routes(family=family, table=254)
                if r["proto"] == ROUTE_PROTOCOL}


def test_kernel_state_is_applied_idempotently(node_ns: str) -> None:
    state = iptables_vxlan_state()
    with netns.entered(node_ns), IPRoute() as ipr:
        first = apply_kernel_state(ipr, state, [])
        second = apply_kernel_state(ipr, state, [])
        neighbours = {(n.get_attr("NDA_DST"), n.get_attr("NDA_LLADDR"))
                      for n in ipr.get_neighbours(ifindex=first.ifindexes["sl-vxlan"])
                      if n["state"] & 0x80}
        fdb = {(f.get_attr("NDA_LLADDR"), f.get_attr("NDA_DST")) for f in ipr.fdb("dump")
               if f["ifindex"] == first.ifindexes["sl-vxlan"] and f.get_attr("NDA_DST")}
    assert first.changes.summary() == ("devices +1, neighbours +2, fdb +1, kernel routes +2")
    assert not second.changes.any, second.changes.summary()
    assert first.problems == [] and second.problems == []
    vxlan = first.ifindexes["sl-vxlan"]
    assert own_routes(node_ns) == {"198.18.17.0/24": (vxlan, "198.18.17.0"),
                                   "fd00:10:2::/64": (vxlan, "fd00:10:2::")}
    assert neighbours == {("198.18.17.0", PEER_MAC), ("fd00:10:2::", PEER_MAC)}
    assert fdb == {(PEER_MAC, "198.18.0.12")}

    # The peer leaves: everything toward it goes, the device stays.
    with netns.entered(node_ns), IPRoute() as ipr:
        empty = KernelState(state.devices, frozenset())
        gone = apply_kernel_state(ipr, empty, [])
    assert gone.changes.summary() == "neighbours -2, fdb -1, kernel routes -2"
    assert own_routes(node_ns) == {}


def test_a_changed_tunnel_endpoint_recreates_the_device(node_ns: str) -> None:
    with netns.entered(node_ns), IPRoute() as ipr:
        apply_kernel_state(ipr, iptables_vxlan_state(), [])
        moved = apply_kernel_state(ipr, iptables_vxlan_state("fd00:ff::11", "fd00:ff::12"), [])
        info = read_links(ipr)["sl-vxlan"].info
        fdb = {(f.get_attr("NDA_LLADDR"), f.get_attr("NDA_DST")) for f in ipr.fdb("dump")
               if f["ifindex"] == moved.ifindexes["sl-vxlan"] and f.get_attr("NDA_DST")}
    assert moved.changes["devices"].changed == 1 and moved.problems == []
    assert fdb == {(PEER_MAC, "fd00:ff::12")}
    assert info["IFLA_VXLAN_LOCAL6"] == "fd00:ff::11"
    # Recreating the device took its routes and entries with it; they were put back.
    assert set(own_routes(node_ns)) == {"198.18.17.0/24", "fd00:10:2::/64"}


def test_routes_sluice_did_not_make_are_left_alone(node_ns: str) -> None:
    netlink.add_route(node_ns, "198.18.40.0/24", via="198.18.0.1")  # somebody else's
    netlink.add_route(node_ns, "198.18.17.0/24", via="198.18.0.2")  # ... in our way
    state = KernelState(devices=(), routes=frozenset({
        KernelRoute(NET("198.18.17.0/24"), "uplink0", IP("198.18.0.12")),
        KernelRoute(NET("198.18.18.0/24"), "uplink0", IP("198.18.0.13")),
    }))
    with netns.entered(node_ns), IPRoute() as ipr:
        result = apply_kernel_state(ipr, state, [])
        routes = {f"{r.get_attr('RTA_DST')}/{r['dst_len']}": (r["proto"],
                                                              r.get_attr("RTA_GATEWAY"))
                  for r in ipr.get_routes(family=socket.AF_INET, table=254)
                  if r.get_attr("RTA_DST")}
        cleared = apply_kernel_state(ipr, KernelState((), frozenset()), [])
        remaining = {f"{r.get_attr('RTA_DST')}/{r['dst_len']}"
                     for r in ipr.get_routes(family=socket.AF_INET, table=254)
                     if r.get_attr("RTA_DST")}
    assert result.changes["kernel routes"].added == 1
    assert result.problems == ["a route to 198.18.17.0/24 that Sluice did not make exists; "
                               "left alone"]
    assert routes["198.18.17.0/24"][1] == "198.18.0.2"
    assert routes["198.18.18.0/24"] == (ROUTE_PROTOCOL, "198.18.0.13")
    assert cleared.changes["kernel routes"].removed == 1
    assert {"198.18.40.0/24", "198.18.17.0/24"} <= remaining
    assert "198.18.18.0/24" not in remaining


def test_host_device_and_metadata_tunnel(node_ns: str) -> None:
    state = KernelState(devices=(Device("sl-host", DeviceKind.DUMMY),
                                 Device("sl-vxlan", DeviceKind.VXLAN_METADATA)),
                        routes=frozenset({KernelRoute(NET("198.18.16.0/24"), "sl-host"),
                                          KernelRoute(NET("fd00:10:1::/64"), "sl-host")}))
    with netns.entered(node_ns), IPRoute() as ipr:
        first = apply_kernel_state(ipr, state, [])
        again = apply_kernel_state(ipr, state, [])
        links = read_links(ipr)
        # The devices go when the desired state no longer has them.
        dropped = apply_kernel_state(ipr, KernelState((), frozenset()), [])
        after = read_links(ipr)
    assert first.changes["devices"].added == 2 and not again.changes.any
    assert links["sl-host"].kind in ("dummy", "ifb") and links["sl-host"].up
    assert links["sl-vxlan"].info["IFLA_VXLAN_COLLECT_METADATA"] == 1
    assert dropped.changes["devices"].removed == 2
    assert "sl-host" not in after and "sl-vxlan" not in after and "uplink0" in after
