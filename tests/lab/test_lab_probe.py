"""The probe's process, without a lab: a forked child that joins the source's cgroup and
namespace (so cgroup socket hooks see its sockets), repeats connections, binds a fixed
source port, and is killed when it runs late; the calling process stays where it was."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from sluice import cgroups, netlink, netns
from sluice.lab import probe
from sluice.lab.probe import Outcome, Probe, own_cgroup
from tests.conftest import unique

pytestmark = pytest.mark.root

ADDRESS = "198.18.0.1"


@dataclass
class Place:
    netns: str
    cgroup: str  # relative to the cgroup2 root
    peers: list[tuple[str, int]]  # (client IP, client port) of every TCP connection served


def _serve_tcp(listener: socket.socket, peers: list[tuple[str, int]],
               stop: threading.Event) -> None:
    listener.settimeout(0.05)
    while not stop.is_set():
        try:
            conn, peer = listener.accept()
        except TimeoutError:
            continue
        with conn:
            peers.append((peer[0], peer[1]))
            conn.sendall(f"srv {peer[0]}\n".encode())
            conn.shutdown(socket.SHUT_WR)


@pytest.fixture
def place() -> Iterator[Place]:
    """A namespace with 198.18.0.1 on lo, a TCP server on port 8080 answering like a pod
    server, a silent UDP socket on 5353, and a cgroup; all removed afterwards."""
    ns = unique("sl-tprobe")
    relative = unique("sluice-test-probe")
    stop = threading.Event()
    netns.create(ns)
    try:
        netlink.configure(ns, "lo", [f"{ADDRESS}/32"])
        cgroup_path = cgroups.create(f"{relative}/leaf")
        with netns.entered(ns):
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with listener, silent:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((ADDRESS, 8080))
            listener.listen(16)
            silent.bind((ADDRESS, 5353))
            peers: list[tuple[str, int]] = []
            server = threading.Thread(target=_serve_tcp, args=(listener, peers, stop),
                                      daemon=True)
            server.start()
            try:
                yield Place(ns, f"{relative}/leaf", peers)
            finally:
                stop.set()
                server.join(5)
        cgroups.remove_tree(cgroup_path.rsplit("/", 1)[0])
    finally:
        netns.remove(ns)


def test_probe_runs_in_the_cgroup_and_namespace_of_its_source(place: Place) -> None:
    before = own_cgroup()
    outcome = Probe(place.netns, ADDRESS, 8080, cgroup=place.cgroup, timeout=2).run()
    assert outcome.result == "connected", outcome
    assert (outcome.peer, outcome.client_ip) == ("srv", ADDRESS)
    assert outcome.cgroup == f"/{place.cgroup}"
    assert own_cgroup() == before, "the caller stays in its own cgroup"
    assert Probe(place.netns, ADDRESS, 8080).run().cgroup == before


def test_repeated_probes_from_one_child(place: Place) -> None:
    began = time.monotonic()
    outcomes = Probe(place.netns, ADDRESS, 8080, cgroup=place.cgroup).repeat(50)
    elapsed = time.monotonic() - began
    assert [o.result for o in outcomes] == ["connected"] * 50, outcomes
    assert {o.cgroup for o in outcomes} == {f"/{place.cgroup}"}
    assert len({port for _, port in place.peers}) == 50, "a new source port each time"
    assert elapsed < 5, f"50 connections took {elapsed:.1f}s"


def test_fixed_source_port_is_reused(place: Place) -> None:
    outcomes = Probe(place.netns, ADDRESS, 8080, cgroup=place.cgroup,
                     source_port=40123).repeat(5)
    assert [o.result for o in outcomes] == ["connected"] * 5, outcomes
    assert [port for _, port in place.peers] == [40123] * 5
    udp = Probe(place.netns, ADDRESS, 8080, protocol="UDP", source_port=40124, timeout=0.3)
    assert udp.run().result == "refused"


def test_results_and_time_bounds(place: Place) -> None:
    refused = Probe(place.netns, ADDRESS, 8081, cgroup=place.cgroup).run()
    assert refused.result == "refused" and refused.latency_ms is not None
    began = time.monotonic()
    silent = Probe(place.netns, ADDRESS, 5353, protocol="UDP", timeout=0.3).repeat(3)
    assert [o.result for o in silent] == ["timeout"] * 3
    assert time.monotonic() - began < 3
    unreachable = Probe(place.netns, "198.18.99.1", 80, timeout=0.5).run()
    assert unreachable.result == "error" and unreachable.error
    missing = Probe(unique("sl-tnone"), ADDRESS, 8080).run()
    assert missing.result == "error" and "does not exist" in (missing.error or "")


def test_a_late_child_is_killed(place: Place, monkeypatch: pytest.MonkeyPatch) -> None:
    def hang(self: Probe) -> Outcome:
        time.sleep(60)
        raise AssertionError("not killed")

    monkeypatch.setattr(Probe, "_attempt", hang)  # the forked child inherits it
    monkeypatch.setattr(probe, "GRACE", 0.2)
    began = time.monotonic()
    outcomes = Probe(place.netns, ADDRESS, 8080, cgroup=place.cgroup, timeout=0.3).repeat(2)
    assert time.monotonic() - began < 2
    assert [o.error for o in outcomes] == ["the probe did not finish in time"] * 2
    assert cgroups_pids(place.cgroup) == [], "the child is gone"


def cgroups_pids(relative: str) -> list[int]:
    path = f"{cgroups.find_cgroup2_mount()}/{relative}/cgroup.procs"
    with open(path, encoding="ascii") as procs:
        return [int(pid) for pid in procs.read().split()]
