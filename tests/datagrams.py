"""A numbered UDP flow between two namespaces, for tests that count what a change lost."""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass, field

from sluice import netns

DATAGRAM_PORT = 7401
DATAGRAM_INTERVAL = 0.005
DRAIN = 1.0


def socket_in(namespace: str, kind: int, family: int = socket.AF_INET) -> socket.socket:
    with netns.entered(namespace):
        return socket.socket(family, kind)


@dataclass
class UdpFlow:
    """Numbered datagrams from one namespace to another, all along; counts what arrived."""

    client_ns: str
    server_ns: str
    server_ip: str
    port: int = DATAGRAM_PORT
    sent: int = 0
    received: set[int] = field(default_factory=set)
    stop: threading.Event = field(default_factory=threading.Event)

    def __enter__(self) -> UdpFlow:
        self._rx = socket_in(self.server_ns, socket.SOCK_DGRAM)
        self._rx.bind((self.server_ip, self.port))
        self._rx.settimeout(DRAIN)
        self._tx = socket_in(self.client_ns, socket.SOCK_DGRAM)
        self._threads = [threading.Thread(target=self._send, daemon=True),
                         threading.Thread(target=self._receive, daemon=True)]
        for thread in self._threads:
            thread.start()
        return self

    def _send(self) -> None:
        while not self.stop.is_set():
            self._tx.sendto(self.sent.to_bytes(4, "big"), (self.server_ip, self.port))
            self.sent += 1
            time.sleep(DATAGRAM_INTERVAL)

    def _receive(self) -> None:
        while True:
            try:
                data, _ = self._rx.recvfrom(64)
            except TimeoutError:
                if self.stop.is_set():
                    return
                continue
            self.received.add(int.from_bytes(data, "big"))

    @property
    def lost(self) -> int:
        return self.sent - len(self.received)

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(timeout=DRAIN + 5)
        self._tx.close()
        self._rx.close()
