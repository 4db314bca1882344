"""trafgen (netsniff-ng): a UDP flood of one fixed frame from one core, and what it said.

trafgen forks one worker per `--cpus`; the command is wrapped in `timeout`, which signals
its whole process group, so stopping the wrapper stops the worker too. `--no-sock-mem`
keeps trafgen from raising the machine-wide net.core socket memory sysctls.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

FRAME_BYTES = 60  # the minimum Ethernet frame without FCS
_HEADERS = 14 + 20 + 8  # Ethernet, IPv4 without options, UDP
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_OUTGOING = re.compile(r"^\s*(\d+) packets outgoing", re.MULTILINE)


@dataclass(frozen=True)
class UdpFlood:
    """One IPv4/UDP frame, sent over and over."""

    src_mac: str
    dst_mac: str
    src_ip: str
    dst_ip: str
    src_port: int = 40000
    dst_port: int = 9  # discard
    frame_bytes: int = FRAME_BYTES

    def __post_init__(self) -> None:
        for name in ("src_mac", "dst_mac"):
            if not _MAC.match(getattr(self, name)):
                raise ValueError(f"trafgen flood: {name} {getattr(self, name)!r} is not a MAC "
                                 "address like 02:00:00:00:00:01")
        for name in ("src_ip", "dst_ip"):
            if ipaddress.ip_address(getattr(self, name)).version != 4:
                raise ValueError(f"trafgen flood: {name} {getattr(self, name)!r} is not IPv4")
        for name in ("src_port", "dst_port"):
            if not 0 < getattr(self, name) < 65536:
                raise ValueError(f"trafgen flood: {name} {getattr(self, name)} out of 1-65535")
        if self.frame_bytes < _HEADERS:
            raise ValueError(f"trafgen flood: frame_bytes {self.frame_bytes} is below the "
                             f"{_HEADERS} bytes of the headers")

    def config(self) -> str:
        """The packet in trafgen's configuration language; it fills in lengths and sums."""
        payload = self.frame_bytes - _HEADERS
        parts = [f"eth(da={self.dst_mac}, sa={self.src_mac})",
                 f"ipv4(sa={self.src_ip}, da={self.dst_ip}, ttl=64)",
                 f"udp(sp={self.src_port}, dp={self.dst_port})"]
        if payload:
            parts.append(f"fill(0x00, {payload})")
        return "{\n  " + ",\n  ".join(parts) + "\n}\n"


def flood_argv(device: str, config_path: str, seconds: float) -> list[str]:
    """trafgen sending CONFIG_PATH's frame out of DEVICE as fast as one worker can, for
    SECONDS (then `timeout` stops the process group; SIGKILL 2 s later if need be)."""
    return ["timeout", "-k", "2", f"{seconds:g}",
            "trafgen", "--dev", device, "--conf", config_path, "--cpus", "1",
            "--no-sock-mem", "--notouch-irq"]


def packets_sent(log: str) -> int | None:
    """The 'N packets outgoing' trafgen prints when it stops (None: it printed none)."""
    found = _OUTGOING.findall(log)
    return sum(int(n) for n in found) if found else None
