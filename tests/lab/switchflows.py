"""Long-running flows for the dataplane switch and mixed-cluster lab tests.

An echo server (TCP lines, UDP datagrams) runs inside a pod via `sluice lab exec` (in the
pod's namespace and cgroup). Clients are sockets this test process makes inside a place's
namespace (`sluice.netns.entered`); this process is in none of the lab's cgroups, so its
connections to services are translated per packet (the datapath's conntrack), not by the
socket hooks: the flows a switch has to carry.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from sluice import netns
from tests.lab.labfixture import SLUICE, Lab

ECHO_TCP = 9000
ECHO_UDP = 9001
ANSWER_TIMEOUT = 15.0

ECHO_SERVER = f"""
import socket, threading
def serve(conn):
    with conn:
        while True:
            data = conn.recv(65536)
            if not data:
                return
            conn.sendall(data)
def tcp():
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", {ECHO_TCP})); s.listen(64)
    while True:
        conn, _ = s.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("0.0.0.0", {ECHO_UDP}))
threading.Thread(target=tcp, daemon=True).start()
while True:
    data, peer = u.recvfrom(2048)
    u.sendto(data, peer)
"""


@contextlib.contextmanager
def echo_servers(lab: Lab, pods: list[str]) -> Iterator[None]:
    """An echo server in each of PODS (NS/NAME) for the body; stopped by PID after."""
    started = [subprocess.Popen([str(SLUICE), "lab", "exec", "--name", lab.name, pod, "--",
                                 "python3", "-c", ECHO_SERVER],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
               for pod in pods]
    try:
        yield
    finally:
        for proc in started:
            proc.terminate()
        for proc in started:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)


def tcp_connect(netns_name: str, address: str, port: int, timeout: float = 3.0
                ) -> socket.socket:
    with netns.entered(netns_name):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.connect((address, port))
    sock.settimeout(ANSWER_TIMEOUT)
    return sock


def wait_tcp(netns_name: str, address: str, port: int, deadline: float = 30.0
             ) -> socket.socket:
    """A connection once something answers (the echo server starting, a node settling)."""
    until = time.monotonic() + deadline
    while True:
        try:
            return tcp_connect(netns_name, address, port)
        except OSError:
            if time.monotonic() > until:
                raise
            time.sleep(0.3)


def echoes(sock: socket.socket, message: bytes) -> bool:
    """Whether SOCK echoes MESSAGE back (the connection is alive both ways)."""
    try:
        sock.sendall(message)
        received = b""
        while len(received) < len(message):
            chunk = sock.recv(len(message) - len(received))
            if not chunk:
                return False
            received += chunk
        return received == message
    except OSError:
        return False


@dataclass
class TcpStream:
    """A TCP stream: CHUNK bytes sent and their echo read back, continuously."""

    sock: socket.socket
    chunk: int = 4096
    echoed: int = 0
    error: str | None = None
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        payload = bytes(range(256)) * (self.chunk // 256)
        try:
            while not self.stop.is_set():
                self.sock.sendall(payload)
                received = 0
                while received < len(payload):
                    data = self.sock.recv(len(payload) - received)
                    if not data:
                        raise ConnectionError("closed by the peer")
                    received += len(data)
                self.echoed += received
                time.sleep(0.005)
        except OSError as err:
            self.error = str(err)

    def progressing(self, within: float = ANSWER_TIMEOUT) -> bool:
        before = self.echoed
        until = time.monotonic() + within
        while time.monotonic() < until and self.error is None:
            if self.echoed > before:
                return True
            time.sleep(0.05)
        return False

    def close(self) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(timeout=ANSWER_TIMEOUT)
        self.sock.close()


@dataclass
class UdpFlow:
    """Numbered datagrams every INTERVAL seconds; which numbers came back."""

    sock: socket.socket
    interval: float = 0.01
    sent: int = 0
    answered: set[int] = field(default_factory=set)
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)

    @classmethod
    def open(cls, netns_name: str, address: str, port: int) -> UdpFlow:
        with netns.entered(netns_name):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.connect((address, port))
        sock.settimeout(0.2)
        return cls(sock)

    def start(self) -> None:
        self.threads = [threading.Thread(target=self._send, daemon=True),
                        threading.Thread(target=self._receive, daemon=True)]
        for thread in self.threads:
            thread.start()

    def _send(self) -> None:
        while not self.stop.is_set():
            with contextlib.suppress(OSError):  # e.g. ICMP unreachable while a node settles
                self.sock.send(self.sent.to_bytes(8, "big"))
            self.sent += 1
            time.sleep(self.interval)

    def _receive(self) -> None:
        while not self.stop.is_set():
            try:
                data = self.sock.recv(64)
            except OSError:
                continue
            if len(data) == 8:
                self.answered.add(int.from_bytes(data, "big"))

    def lost_between(self, first: int, last: int) -> int:
        """Datagrams numbered FIRST..LAST-1 that got no answer."""
        return sum(1 for number in range(first, last) if number not in self.answered)

    def close(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=5)
        self.sock.close()
