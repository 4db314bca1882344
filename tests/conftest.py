"""Fixtures shared by the BPF and lab tests: unique, always-removed namespaces and pins."""

from __future__ import annotations

import ipaddress
import os
import secrets
import shutil
import socket
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from sluice import netlink, netns
from sluice.loader.objects import OBJECT_DIR

BPFFS = "/sys/fs/bpf"


def unique(prefix: str) -> str:
    return f"{prefix}-{os.getpid() % 100000}-{secrets.token_hex(3)}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def bpf_objects() -> list[str]:
    objects = sorted(str(p) for p in OBJECT_DIR.glob("*.bpf.o"))
    assert objects, f"no BPF objects in {OBJECT_DIR}: run ./setup.sh"
    return objects


@dataclass(frozen=True)
class Side:
    ns: str
    ifname: str
    ipv4: ipaddress.IPv4Address
    ipv6: ipaddress.IPv6Address

    def ip(self, family: int) -> str:
        return str(self.ipv4 if family == 4 else self.ipv6)

    def ifindex(self) -> int:
        return netlink.ifindex(self.ns, self.ifname)


@dataclass(frozen=True)
class VethPair:
    a: Side
    b: Side


@pytest.fixture
def veth_pair() -> Iterator[VethPair]:
    """Two fresh namespaces joined by a veth pair, dual-stack, removed afterwards."""
    pair = VethPair(
        Side(unique("sl-ta"), "sl-a", ipaddress.IPv4Address("198.18.0.1"),
             ipaddress.IPv6Address("fd00:5::1")),
        Side(unique("sl-tb"), "sl-b", ipaddress.IPv4Address("198.18.0.2"),
             ipaddress.IPv6Address("fd00:5::2")),
    )
    try:
        netns.create(pair.a.ns)
        netns.create(pair.b.ns)
        netlink.create_veth(pair.a.ns, pair.a.ifname, pair.b.ns, pair.b.ifname)
        for side in (pair.a, pair.b):
            netlink.configure(side.ns, side.ifname, [f"{side.ipv4}/24", f"{side.ipv6}/64"])
        yield pair
    finally:
        netns.remove(pair.a.ns)
        netns.remove(pair.b.ns)


@pytest.fixture
def pin_dir() -> Iterator[str]:
    """A private directory in bpffs, removed with everything pinned in it."""
    assert os.path.ismount(BPFFS), "bpffs is not mounted at /sys/fs/bpf: run ./setup.sh"
    path = os.path.join(BPFFS, unique("sluice-test"))
    os.makedirs(path)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def socket_pair(client: Side, server: Side, family: int,
                kind: socket.SocketKind) -> tuple[socket.socket, socket.socket]:
    """(server socket, client socket), each created in its side's namespace."""
    af = socket.AF_INET if family == 4 else socket.AF_INET6
    with netns.entered(server.ns):
        server_sock = socket.socket(af, kind)
    with netns.entered(client.ns):
        client_sock = socket.socket(af, kind)
    return server_sock, client_sock


def udp_delivered(client: Side, server: Side, family: int, *, port: int = 7000,
                  timeout: float = 0.5, payload: bytes = b"sluice") -> bool:
    """Send one datagram from CLIENT's namespace to SERVER's; True if it arrived."""
    rx, tx = socket_pair(client, server, family, socket.SOCK_DGRAM)
    with rx, tx:
        rx.bind((server.ip(family), port))
        rx.settimeout(timeout)
        tx.sendto(payload, (server.ip(family), port))
        try:
            data, _ = rx.recvfrom(2048)
        except TimeoutError:
            return False
        return data == payload


def tcp_connects(client: Side, server: Side, family: int, *, port: int = 7001,
                 timeout: float = 0.5) -> bool:
    listener, conn = socket_pair(client, server, family, socket.SOCK_STREAM)
    with listener, conn:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((server.ip(family), port))
        listener.listen(1)
        conn.settimeout(timeout)
        try:
            conn.connect((server.ip(family), port))
        except (TimeoutError, OSError):
            return False
        return True
