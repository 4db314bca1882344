"""Persistent IP allocation (pure: files in a temporary directory, no root)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from ipaddress import IPv4Network, IPv6Network, ip_address, ip_network
from pathlib import Path

import pytest

from sluice.cni.ipam import Ipam, range_dirname, usable_bounds
from sluice.cni.spec import Attachment, CniError, Code

V4 = IPv4Network("198.18.16.0/24")
V6 = IPv6Network("fd00:10:1::/64")
A, B, C = Attachment("a", "eth0"), Attachment("b", "eth0"), Attachment("c", "net1")


@pytest.fixture
def ipam(tmp_path: Path) -> Ipam:
    return Ipam(tmp_path)


def test_usable_bounds_skip_network_first_host_and_broadcast() -> None:
    assert usable_bounds(V4) == (int(ip_address("198.18.16.2")), int(ip_address("198.18.16.254")))
    first, last = usable_bounds(IPv4Network("198.18.16.0/30"))
    assert first == last == int(ip_address("198.18.16.2"))
    assert usable_bounds(IPv6Network("fd00::/126")) == (int(ip_address("fd00::2")),
                                                       int(ip_address("fd00::3")))


def test_lowest_free_address_first(ipam: Ipam) -> None:
    assert str(ipam.allocate([V4], A)) == "198.18.16.2"
    assert str(ipam.allocate([V4], B)) == "198.18.16.3"
    assert str(ipam.allocate([V6], A)) == "fd00:10:1::2"
    path = ipam.root / range_dirname(V4) / "198.18.16.2"
    assert path.read_text() == "a eth0\n"
    assert (ipam.root / "fd00:10:1::_64" / "fd00:10:1::2").read_text() == "a eth0\n"


def test_exhaustion_names_the_range(ipam: Ipam) -> None:
    net = IPv4Network("198.18.16.0/29")
    got = [str(ipam.allocate([net], Attachment(f"c{i}", "eth0"))) for i in range(5)]
    assert got == [f"198.18.16.{i}" for i in range(2, 7)]
    with pytest.raises(CniError) as caught:
        ipam.allocate([net], C)
    assert caught.value.code == Code.IPAM_EXHAUSTED
    assert "198.18.16.0/29" in caught.value.msg
    assert ipam.owned_by(C) == []


def test_spills_into_the_next_range(ipam: Ipam) -> None:
    small, other = IPv4Network("198.18.16.0/30"), IPv4Network("198.18.17.0/30")
    assert str(ipam.allocate([small, other], A)) == "198.18.16.2"
    assert str(ipam.allocate([small, other], B)) == "198.18.17.2"
    assert ipam.free_count(small) == ipam.free_count(other) == 0


def test_release_frees_every_family_and_the_lowest_is_reused(ipam: Ipam) -> None:
    ipam.allocate([V4], A)
    ipam.allocate([V6], A)
    ipam.allocate([V4], B)
    released = ipam.release(A)
    assert sorted(str(a.address) for a in released) == ["198.18.16.2", "fd00:10:1::2"]
    assert ipam.release(A) == []
    assert str(ipam.allocate([V4], C)) == "198.18.16.2"
    assert {str(a.address): a.owner for a in ipam.allocations()} == {
        "198.18.16.2": C, "198.18.16.3": B}


def test_allocations_survive_a_new_instance(tmp_path: Path) -> None:
    Ipam(tmp_path).allocate([V4], A)
    again = Ipam(tmp_path)
    assert [(str(a.address), a.owner) for a in again.owned_by(A)] == [("198.18.16.2", A)]
    assert str(again.allocate([V4], B)) == "198.18.16.3"


def test_a_file_created_by_someone_else_is_skipped(ipam: Ipam) -> None:
    directory = ipam.root / range_dirname(V4)
    directory.mkdir(parents=True)
    (directory / "198.18.16.2").write_text("other eth0\n")
    assert str(ipam.allocate([V4], A)) == "198.18.16.3"


def test_junk_is_ignored_and_unowned_files_can_be_released(ipam: Ipam) -> None:
    ipam.allocate([V4], A)
    directory = ipam.root / range_dirname(V4)
    (directory / "198.18.16.9").write_text("")
    (directory / "198.18.99.1").write_text("a eth0\n")
    (directory / "not-an-ip").write_text("a eth0\n")
    (ipam.root / "junk").mkdir()
    assert [str(a.address) for a in ipam.allocations()] == ["198.18.16.2", "198.18.16.9"]
    assert [str(a.address) for a in ipam.release_unowned()] == ["198.18.16.9"]
    assert [a.owner for a in ipam.allocations()] == [A]


def test_free_count(ipam: Ipam) -> None:
    assert ipam.free_count(V4) == 253
    ipam.allocate([V4], A)
    assert ipam.free_count(V4) == 252
    assert ipam.free_count(ip_network("fd00::/126")) == 2


def test_a_held_lock_makes_others_try_again_later(ipam: Ipam) -> None:
    with ipam.locked():
        with pytest.raises(CniError) as caught, Ipam(ipam.root.parent).locked(timeout=0.1):
            pass
        assert caught.value.code == Code.TRY_AGAIN_LATER
    with Ipam(ipam.root.parent).locked(timeout=0.1):
        pass


def test_the_lock_serializes_threads(ipam: Ipam) -> None:
    inside = 0
    most = 0
    guard = threading.Lock()

    def one(i: int) -> str:
        nonlocal inside, most
        with Ipam(ipam.root.parent).locked():
            with guard:
                inside += 1
                most = max(most, inside)
            address = str(Ipam(ipam.root.parent).allocate([V4], Attachment(f"t{i}", "eth0")))
            with guard:
                inside -= 1
        return address

    with ThreadPoolExecutor(max_workers=16) as pool:
        addresses = list(pool.map(one, range(32)))
    assert len(set(addresses)) == 32
    assert most == 1


def test_exclusive_creation_without_the_lock(ipam: Ipam) -> None:
    with ThreadPoolExecutor(max_workers=16) as pool:
        addresses = list(pool.map(lambda i: str(ipam.allocate([V4], Attachment(f"u{i}", "e"))),
                                  range(40)))
    assert len(set(addresses)) == 40
