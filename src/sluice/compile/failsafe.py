"""Failsafe ports: what host endpoint policy can never block, so no policy locks an
operator (or the agent's own datastore and API) out of a node."""

from __future__ import annotations

from sluice.compile.policytypes import FailsafePort

PROTOCOL_NUMBERS = {"tcp": 6, "udp": 17, "sctp": 132}
PROTOCOL_NAMES = {number: name for name, number in PROTOCOL_NUMBERS.items()}
DEFAULT_INBOUND = "tcp:22"
# DNS, etcd and the Kubernetes API: what an agent needs to keep hearing the cluster.
DEFAULT_OUTBOUND = "udp:53,tcp:53,tcp:2379,tcp:6443"


def parse_failsafe(text: str, *, inbound: bool, option: str) -> tuple[FailsafePort, ...]:
    """`tcp:22,udp:53` -> ports; "" or "none" -> none; ValueError naming OPTION."""
    if text.strip().lower() in ("", "none"):
        return ()
    ports: list[FailsafePort] = []
    for item in text.split(","):
        protocol, sep, number = item.strip().lower().partition(":")
        if not sep or protocol not in PROTOCOL_NUMBERS or not number.isdigit() \
                or not 1 <= int(number) <= 65535:
            raise ValueError(f"{option} {text!r}: {item.strip()!r} is not PROTOCOL:PORT "
                             "(PROTOCOL tcp, udp or sctp; PORT 1-65535), e.g. tcp:22,udp:53")
        port = FailsafePort(inbound, PROTOCOL_NUMBERS[protocol], int(number))
        if port not in ports:
            ports.append(port)
    return tuple(ports)


def failsafe_text(port: FailsafePort) -> str:
    return f"{PROTOCOL_NAMES.get(port.protocol, port.protocol)}:{port.port}"
