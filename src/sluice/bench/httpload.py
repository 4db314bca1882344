"""HTTP load for the service benchmarks: an nginx server with a generated minimal config,
wrk for new connections per second, and a small client that times whole new-connection
requests (connect + request + response) one at a time.

wrk measures a request's latency from writing it, after the connection is up, so the
first packet of a connection (the SYN, where a service is translated) is outside its
figures; that is why first-request latency has its own client.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

NGINX = "/usr/sbin/nginx"
WRK = "wrk"
PYTHON = "/usr/bin/python3"
BODY = "ok\n"


def nginx_config(workdir: Path, port: int) -> str:
    """A one-process nginx (no master, no daemon: stopped by its PID) answering every
    request with 200 and a 3-byte body, no access log, all paths inside WORKDIR."""
    temp = workdir / "nginx-temp"
    return f"""\
daemon off;
master_process off;
worker_processes 1;
pid {workdir / "nginx.pid"};
error_log {workdir / "nginx-error.log"} warn;
events {{
    worker_connections 4096;
    multi_accept on;
}}
http {{
    access_log off;
    client_body_temp_path {temp / "body"};
    proxy_temp_path {temp / "proxy"};
    fastcgi_temp_path {temp / "fastcgi"};
    uwsgi_temp_path {temp / "uwsgi"};
    scgi_temp_path {temp / "scgi"};
    keepalive_timeout 65;
    server {{
        listen {port} backlog=4096;
        location / {{
            default_type text/plain;
            return 200 "{BODY.strip()}\\n";
        }}
    }}
}}
"""


def write_nginx_config(workdir: Path, port: int) -> Path:
    """The config file for NGINX_ARGV, written into WORKDIR (made if missing)."""
    (workdir / "nginx-temp").mkdir(parents=True, exist_ok=True)
    path = workdir / "nginx.conf"
    path.write_text(nginx_config(workdir, port), encoding="utf-8")
    return path


def nginx_argv(config: Path) -> list[str]:
    # -p: the prefix for relative paths, so nothing is looked up under /etc or /var.
    return [NGINX, "-p", str(config.parent), "-c", str(config), "-e",
            str(config.parent / "nginx-error.log")]


def nginx_version() -> str:
    """`nginx -v` says "nginx version: nginx/1.22.1" on stderr."""
    return _version([NGINX, "-v"], re.compile(r"nginx/(\S+)"))


def wrk_version() -> str:
    """`wrk -v` says "wrk debian/4.1.0-3+b2 [epoll] ..." (and exits 1)."""
    return _version([WRK, "-v"], re.compile(r"^wrk (\S+)"))


def _version(argv: list[str], pattern: re.Pattern[str]) -> str:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return "?"
    found = pattern.search(proc.stdout + proc.stderr)
    return found.group(1) if found else "?"


# wrk


def wrk_argv(url: str, *, seconds: float, connections: int, threads: int = 1) -> list[str]:
    """wrk closing every connection after its one request: each request is a new TCP
    connection (the server answers `Connection: close` and wrk reconnects)."""
    return [WRK, f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s",
            "--timeout", "2s", "-H", "Connection: close", url]


@dataclass(frozen=True)
class WrkResult:
    requests: int
    seconds: float
    requests_per_second: float
    socket_errors: dict[str, int]
    non_2xx: int

    @property
    def errors(self) -> int:
        return sum(self.socket_errors.values()) + self.non_2xx


_REQUESTS = re.compile(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m),", re.MULTILINE)
_RATE = re.compile(r"^Requests/sec:\s+([\d.]+)", re.MULTILINE)
_SOCKET_ERRORS = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), "
                            r"timeout (\d+)")
_NON_2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")
_UNIT_SECONDS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


class LoadOutputError(ValueError):
    """A load tool printed something this module cannot read."""


def parse_wrk(output: str) -> WrkResult:
    """wrk 4.x's summary (with or without --latency)."""
    requests = _REQUESTS.search(output)
    rate = _RATE.search(output)
    if requests is None or rate is None:
        raise LoadOutputError(f"wrk: no request count or rate in its output: {output[-400:]!r}")
    errors = _SOCKET_ERRORS.search(output)
    socket_errors = dict.fromkeys(("connect", "read", "write", "timeout"), 0)
    if errors:
        socket_errors = dict(zip(socket_errors, (int(v) for v in errors.groups()), strict=True))
    non_2xx = _NON_2XX.search(output)
    return WrkResult(requests=int(requests.group(1)),
                     seconds=float(requests.group(2)) * _UNIT_SECONDS[requests.group(3)],
                     requests_per_second=float(rate.group(1)), socket_errors=socket_errors,
                     non_2xx=int(non_2xx.group(1)) if non_2xx else 0)


# One new connection per request, timed from socket() to the end of the response.
# Runs with the system python in the client pod; prints one JSON line.
FIRST_REQUEST_CLIENT = r"""
import json, socket, sys, time
host, port, count, warmup = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
request = ("GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % host).encode()
clock = time.perf_counter_ns
latencies, failures = [], 0
for i in range(warmup + count):
    start = clock()
    try:
        with socket.create_connection((host, port), timeout=2.0) as conn:
            conn.sendall(request)
            answer = b""
            while True:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                answer += chunk
        ok = answer.startswith(b"HTTP/1.1 200")
    except OSError:
        ok = False
    took = clock() - start
    if i >= warmup:
        if ok:
            latencies.append(took)
        else:
            failures += 1
print(json.dumps({"latencies_ns": latencies, "failures": failures}))
"""


def first_request_argv(host: str, port: int, count: int, warmup: int = 20) -> list[str]:
    return [PYTHON, "-c", FIRST_REQUEST_CLIENT, host, str(port), str(count), str(warmup)]


@dataclass(frozen=True)
class LatencyResult:
    latencies_ns: tuple[int, ...]
    failures: int

    def percentile(self, fraction: float) -> float:
        """Nearest-rank percentile in microseconds (0.5 the median, 0.99 the p99)."""
        if not self.latencies_ns:
            raise LoadOutputError("no successful requests to take a percentile of")
        ordered = sorted(self.latencies_ns)
        rank = math.ceil(round(fraction * len(ordered), 6))  # round: 0.99 * 100 is 99.000..1
        return ordered[min(max(rank, 1), len(ordered)) - 1] / 1000.0


def parse_first_request(output: str) -> LatencyResult:
    lines = [line for line in output.splitlines() if line.strip()]
    if not lines:
        raise LoadOutputError("first-request client printed nothing")
    try:
        doc = json.loads(lines[-1])
        latencies = tuple(int(v) for v in doc["latencies_ns"])
        failures = int(doc["failures"])
    except (ValueError, KeyError, TypeError) as err:
        raise LoadOutputError(f"first-request client: unreadable output {lines[-1][:200]!r}: "
                              f"{err}") from err
    return LatencyResult(latencies, failures)
