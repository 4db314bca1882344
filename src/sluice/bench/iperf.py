"""iperf3 over TCP: the command lines and what its client's JSON report (-J) says.

Throughput is what the receiver got (`end.sum_received`), not what the sender wrote
into its socket buffer."""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass
from typing import Any


class IperfError(ValueError):
    """iperf3 did not produce the figures asked for; the message says why."""


@dataclass(frozen=True)
class Stream:
    """What one iperf3 TCP client run measured, as the receiver saw it."""

    seconds: float
    bytes_received: int
    retransmits: int
    sender_cpu_percent: float
    receiver_cpu_percent: float

    @property
    def bits_per_second(self) -> float:
        return self.bytes_received * 8 / self.seconds

    @property
    def gbit(self) -> float:
        """Gigabits received (10^9 bits)."""
        return self.bytes_received * 8 / 1e9


def version() -> str:
    proc = subprocess.run(["iperf3", "--version"], capture_output=True, text=True,
                          check=False, timeout=10)
    found = re.search(r"iperf (\d+(?:\.\d+)*)", proc.stdout)
    return found.group(1) if found else "?"


def server_argv(port: int) -> list[str]:
    return ["iperf3", "--server", "--port", str(port)]


def client_argv(address: str, port: int, seconds: float, *,
                bitrate: str | None = None) -> list[str]:
    """One TCP stream to ADDRESS:PORT for SECONDS; BITRATE (e.g. '2G') caps the offered
    rate, None: as fast as it goes."""
    argv = ["iperf3", "--client", address, "--port", str(port),
            "--time", f"{max(1, round(seconds))}", "--json"]
    if bitrate is not None:
        argv += ["--bitrate", bitrate]
    return argv


def _number(doc: dict[str, Any], *path: str) -> float:
    value: Any = doc
    for key in path:
        if not isinstance(value, dict) or key not in value:
            raise IperfError(f"iperf3 report has no {'.'.join(path)}")
        value = value[key]
    if not isinstance(value, int | float):
        raise IperfError(f"iperf3 report: {'.'.join(path)} is {value!r}, not a number")
    return float(value)


def parse_stream(output: str) -> Stream:
    """The figures of an iperf3 client's JSON OUTPUT."""
    try:
        doc = json.loads(output)
    except json.JSONDecodeError as err:
        raise IperfError(f"iperf3 output is not JSON ({err}): {output.strip()[:300]!r}"
                         ) from None
    if not isinstance(doc, dict):
        raise IperfError(f"iperf3 output is not a JSON object: {output.strip()[:300]!r}")
    if doc.get("error"):
        raise IperfError(f"iperf3 failed: {doc['error']}")
    seconds = _number(doc, "end", "sum_received", "seconds")
    received = int(_number(doc, "end", "sum_received", "bytes"))
    if seconds <= 0 or received == 0:
        raise IperfError(f"iperf3 moved nothing ({received} bytes in {seconds} s)")
    retransmits = doc["end"].get("sum_sent", {}).get("retransmits", 0)
    return Stream(seconds, received, int(retransmits),
                  _number(doc, "end", "cpu_utilization_percent", "host_total"),
                  _number(doc, "end", "cpu_utilization_percent", "remote_total"))
