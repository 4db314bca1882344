"""`lab probe`: one TCP connection or UDP exchange from a place in the lab to an address.

The probe runs in this process, in a thread that enters the source namespace (sockets
keep the namespace they were created in). The pod server at the other end answers with
`<pod> <client IP>`, which becomes `peer` and `client_ip`.

Results: connected (TCP handshake done, or a UDP reply came), refused (TCP RST, or ICMP
port unreachable for UDP), timeout (nothing within the timeout), error (anything else,
e.g. no route; `error` says what).
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

from sluice import netns

Result: TypeAlias = Literal["connected", "refused", "timeout", "error"]
PROTOCOLS = ("TCP", "UDP")
DEFAULT_TIMEOUT = 2.0
PAYLOAD = b"sluice probe\n"
MAX_REPLY = 1024


@dataclass(frozen=True)
class Outcome:
    result: Result
    peer: str | None = None
    client_ip: str | None = None
    latency_ms: float | None = None
    error: str | None = None


@dataclass(frozen=True)
class Probe:
    """What to probe: from namespace NETNS to ADDRESS:PORT over PROTOCOL."""

    netns: str
    address: str
    port: int
    protocol: str = "TCP"
    timeout: float = DEFAULT_TIMEOUT

    @property
    def family(self) -> int:
        return 6 if ":" in self.address else 4

    def run(self) -> Outcome:
        """Probe from a thread in the source namespace; never longer than about TIMEOUT."""
        box: list[Outcome] = []

        def work() -> None:
            try:
                box.append(self._attempt())
            except Exception as err:
                box.append(Outcome("error", error=f"{type(err).__name__}: {err}"))

        thread = threading.Thread(target=work, name="sluice-probe", daemon=True)
        thread.start()
        thread.join(self.timeout + 2.0)
        if not box:
            return Outcome("error", error="the probe did not finish")
        return box[0]

    def _attempt(self) -> Outcome:
        af = socket.AF_INET6 if self.family == 6 else socket.AF_INET
        kind = socket.SOCK_STREAM if self.protocol == "TCP" else socket.SOCK_DGRAM
        with netns.entered(self.netns):
            sock = socket.socket(af, kind)
        with sock:
            began = time.monotonic()
            deadline = began + self.timeout
            try:
                sock.settimeout(self.timeout)
                sock.connect((self.address, self.port))
                if kind == socket.SOCK_DGRAM:
                    sock.send(PAYLOAD)
                line = _read_line(sock, deadline, udp=kind == socket.SOCK_DGRAM)
            except ConnectionRefusedError:
                return Outcome("refused", latency_ms=_ms(began))
            except TimeoutError:
                return Outcome("timeout", error=f"no answer within {self.timeout:g}s")
            except OSError as err:
                return Outcome("error", error=err.strerror or str(err))
            latency = _ms(began)
        if line is None:
            return Outcome("connected", latency_ms=latency,
                           error=f"connected, but no reply line within {self.timeout:g}s")
        peer, _, client = line.partition(" ")
        return Outcome("connected", peer=peer or None, client_ip=client or None,
                       latency_ms=latency)


def _read_line(sock: socket.socket, deadline: float, *, udp: bool) -> str | None:
    """The first reply line; for UDP a timeout is raised (nothing came back at all)."""
    data = b""
    while b"\n" not in data and len(data) < MAX_REPLY:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            if udp:
                raise TimeoutError
            return None
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(MAX_REPLY)
        except TimeoutError:
            if udp:
                raise
            return None
        if not chunk:
            break
        data += chunk
        if udp:
            break
    text = data.decode(errors="replace").split("\n", 1)[0].strip()
    return text or None


def _ms(began: float) -> float:
    return round((time.monotonic() - began) * 1000.0, 3)


def report(outcome: Outcome, **context: Any) -> dict[str, Any]:
    """The JSON form: result, peer, client_ip, latency_ms, error, and CONTEXT."""
    return {
        "result": outcome.result,
        "peer": outcome.peer,
        "client_ip": outcome.client_ip,
        "latency_ms": outcome.latency_ms,
        **context,
        "error": outcome.error,
    }
