"""Connect-time load balancing: the cgroup socket hooks of sock.c with real sockets.

A client process in a test cgroup and namespace talks to a service address; servers on
backend addresses answer with the address they were reached on. The client sees the
service address throughout (getpeername, recvfrom) and never the backend's.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass

import pytest

from sluice import cgroups, netlink, netns
from sluice.datapath import lb
from sluice.loader import BpfObject, Map, attach_cgroup
from tests.conftest import unique

pytestmark = pytest.mark.root

BACKENDS = ("198.18.16.2", "198.18.16.3", "fd00:10:1::2", "fd00:10:1::3")
CLIENT = r"""
import json, socket, sys
host, port, kind, family = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
af = socket.AF_INET6 if family == 6 else socket.AF_INET
out = {}
try:
    if kind == "TCP":
        s = socket.socket(af, socket.SOCK_STREAM)
        s.settimeout(2)
        s.connect((host, port))
        out["peer"] = s.getpeername()[:2]
        out["reply"] = s.recv(200).decode()
    else:
        s = socket.socket(af, socket.SOCK_DGRAM)
        s.settimeout(2)
        s.sendto(b"hi", (host, port))
        data, addr = s.recvfrom(200)
        out["peer"] = addr[:2]
        out["reply"] = data.decode()
except OSError as err:
    out["errno"] = err.errno
print(json.dumps(out))
"""


@dataclass
class Lab:
    ns: str
    cgroup: str
    services: Map[lb.LbKey, lb.LbValue]
    backends: Map[lb.BackendId, lb.LbBackend]

    def client(self, host: str, port: int, kind: str) -> dict[str, object]:
        family = 6 if ":" in host else 4
        cgroup_procs = f"{self.cgroup}/cgroup.procs"

        def join_cgroup() -> None:
            with open(cgroup_procs, "w", encoding="ascii") as procs:
                procs.write("0")

        out = subprocess.run(
            ["nsenter", f"--net={netns.netns_path(self.ns)}", sys.executable, "-c", CLIENT,
             host, str(port), kind, str(family)],
            capture_output=True, text=True, timeout=10, preexec_fn=join_cgroup, check=True)
        result: dict[str, object] = json.loads(out.stdout)
        return result

    def service(self, address: str, port: int, kind: str, backends: list[tuple[int, str, int]],
                *, flags: int = 0, timeout: int = 0) -> None:
        for backend_id, ip, backend_port in backends:
            self.backends.update(lb.BackendId(backend_id), lb.LbBackend.of(ip, backend_port, kind))
        for slot, (backend_id, _, _) in enumerate(backends, start=1):
            self.services.update(lb.LbKey.of(address, port, kind, slot),
                                 lb.LbValue.slot(backend_id))
        self.services.update(lb.LbKey.of(address, port, kind),
                             lb.LbValue.service(1, len(backends), flags, timeout))


def serve(ns: str, stop: threading.Event) -> list[threading.Thread]:
    """TCP and UDP servers on port 8080 of every backend address; they answer with
    the address they were reached on."""
    threads = []
    for address in BACKENDS:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        with netns.entered(ns):
            tcp = socket.socket(family, socket.SOCK_STREAM)
            udp = socket.socket(family, socket.SOCK_DGRAM)
        for s in (tcp, udp):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((address, 8080))
            s.settimeout(0.1)
        tcp.listen(8)

        def run(tcp: socket.socket = tcp, udp: socket.socket = udp, me: str = address) -> None:
            while not stop.is_set():
                try:
                    conn, _ = tcp.accept()
                    conn.sendall(me.encode())
                    conn.close()
                except TimeoutError:
                    pass
                try:
                    _, peer = udp.recvfrom(100)
                    udp.sendto(me.encode(), peer)
                except TimeoutError:
                    pass
            tcp.close()
            udp.close()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        threads.append(thread)
    return threads


@pytest.fixture
def lab() -> Iterator[Lab]:
    ns = unique("sl-tsock")
    with ExitStack() as cleanup:
        netns.create(ns)
        cleanup.callback(netns.remove, ns)
        netlink.configure(ns, "lo", [f"{a}/{128 if ':' in a else 32}" for a in BACKENDS])
        cgroup = cgroups.create(unique("sluice-test-sock"))
        cleanup.callback(cgroups.remove_tree, cgroup)
        obj = cleanup.enter_context(BpfObject.open("sock"))
        obj.load()
        for prog in obj.programs():
            link = attach_cgroup(prog, cgroup)
            cleanup.callback(link.close)
        stop = threading.Event()
        threads = serve(ns, stop)
        for thread in threads:
            cleanup.callback(thread.join, 2)
        cleanup.callback(stop.set)
        yield Lab(ns, cgroup, obj.map(lb.SERVICES_MAP, lb.LbKey, lb.LbValue),
                  obj.map(lb.BACKENDS_MAP, lb.BackendId, lb.LbBackend))


@pytest.mark.parametrize("kind", ["TCP", "UDP"])
@pytest.mark.parametrize(("service", "backend"), [("198.19.0.10", "198.18.16.2"),
                                                  ("fd00:96::10", "fd00:10:1::2")],
                         ids=["ipv4", "ipv6"])
def test_service_address_reaches_backend_and_client_sees_only_the_service(
        lab: Lab, kind: str, service: str, backend: str) -> None:
    lab.service(service, 80, kind, [(7, backend, 8080)])
    out = lab.client(service, 80, kind)
    assert out.get("reply") == backend, out
    assert out["peer"] == [service, 80], "getpeername/recvfrom must show the service"


def test_every_backend_is_used(lab: Lab) -> None:
    lab.service("198.19.0.10", 80, "TCP", [(1, "198.18.16.2", 8080), (2, "198.18.16.3", 8080)])
    seen = {lab.client("198.19.0.10", 80, "TCP").get("reply") for _ in range(24)}
    assert seen == {"198.18.16.2", "198.18.16.3"}


def test_client_ip_affinity_sticks_to_one_backend(lab: Lab) -> None:
    lab.service("198.19.0.10", 80, "TCP", [(1, "198.18.16.2", 8080), (2, "198.18.16.3", 8080)],
                flags=lb.LbFlags.AFFINITY, timeout=60)
    seen = {lab.client("198.19.0.10", 80, "TCP").get("reply") for _ in range(12)}
    assert len(seen) == 1


def test_service_without_backends_refuses_at_once(lab: Lab) -> None:
    lab.service("198.19.0.10", 80, "TCP", [])
    assert lab.client("198.19.0.10", 80, "TCP").get("errno") == 111  # ECONNREFUSED


def test_addresses_that_are_no_service_are_untouched(lab: Lab) -> None:
    assert lab.client("198.18.16.3", 8080, "TCP").get("reply") == "198.18.16.3"
