"""sockperf ping-pong over TCP: the command lines and what its client output says.

The client runs with `--full-rtt`, so every figure it prints is a whole round trip
(without it sockperf prints half the round trip and calls it latency). One observation
is one request answered; the transaction rate is observations / the valid run time
(the run minus sockperf's warm-up), which agrees with 1e6 / the average round trip in
microseconds when one message is in flight at a time, as in ping-pong.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass

MESSAGE_SIZE = 64
ANSI = re.compile(r"\x1b\[[0-9;]*m")
VALID = re.compile(r"\[Valid Duration\] RunTime=([0-9.]+) sec; SentMessages=(\d+); "
                   r"ReceivedMessages=(\d+)")
AVERAGE = re.compile(r"avg-(rtt|latency)=([0-9.]+)")
OBSERVATIONS = re.compile(r"Total (\d+) observations")
PERCENTILE = re.compile(r"percentile (\d+\.\d+) =\s*([0-9.]+)")


class SockperfError(ValueError):
    """sockperf did not produce the figures asked for; the message says why."""


@dataclass(frozen=True)
class PingPong:
    """What one `sockperf ping-pong --full-rtt` client run measured."""

    seconds: float
    """The valid run time (warm-up excluded) the observations were made in."""
    observations: int
    avg_rtt_us: float
    percentiles_us: dict[float, float]
    """Round trip at each percentile sockperf prints (50.0, 99.0, ...), microseconds."""

    @property
    def rate(self) -> float:
        """Request/response transactions per second."""
        return self.observations / self.seconds

    @property
    def p50_us(self) -> float:
        return self.percentile(50.0)

    @property
    def p99_us(self) -> float:
        return self.percentile(99.0)

    def percentile(self, which: float) -> float:
        if which not in self.percentiles_us:
            raise SockperfError(f"sockperf printed no {which:g}th percentile "
                                f"(has {sorted(self.percentiles_us)})")
        return self.percentiles_us[which]


def version() -> str:
    """sockperf's version as it prints it, e.g. '3.7'."""
    proc = subprocess.run(["sockperf", "--version"], capture_output=True, text=True,
                          check=False, timeout=10)
    found = re.search(r"version\s*#?\s*(\d+(?:\.\d+)*)", proc.stdout + proc.stderr)
    return found.group(1) if found else "?"


def server_argv(port: int) -> list[str]:
    return ["sockperf", "server", "--tcp", "-i", "0.0.0.0", "-p", str(port)]


def ping_pong_argv(address: str, port: int, seconds: float,
                   message_size: int = MESSAGE_SIZE) -> list[str]:
    return ["sockperf", "ping-pong", "--tcp", "-i", address, "-p", str(port),
            "-t", f"{max(1, round(seconds))}", "--mps", "max", "-m", str(message_size),
            "--full-rtt"]


def parse_ping_pong(output: str) -> PingPong:
    """The figures of a ping-pong client's OUTPUT (stdout and stderr together)."""
    text = ANSI.sub("", output)
    if "ERROR" in text:
        errors = [line.strip() for line in text.splitlines() if "ERROR" in line]
        raise SockperfError(f"sockperf failed: {'; '.join(errors)}")
    valid = VALID.search(text)
    average = AVERAGE.search(text)
    observations = OBSERVATIONS.search(text)
    if valid is None or average is None or observations is None:
        raise SockperfError("sockperf output has no statistics (no '[Valid Duration]', "
                            f"'avg-rtt' or 'observations' line): {text.strip()[-300:]!r}")
    if average.group(1) != "rtt":
        raise SockperfError("sockperf printed half round trips (avg-latency): "
                            "run the client with --full-rtt")
    seconds = float(valid.group(1))
    count = int(observations.group(1))
    if seconds <= 0 or count == 0:
        raise SockperfError(f"sockperf observed nothing ({count} observations in "
                            f"{seconds} s)")
    percentiles = {float(p): float(v) for p, v in PERCENTILE.findall(text)}
    return PingPong(seconds, count, float(average.group(2)), percentiles)
