"""The service benchmarks' HTTP tools: wrk's summary and the first-request client's output
as they really print them (captured from wrk 4.1.0 and the client against the generated
nginx config), percentiles, and the generated nginx config served for real in a private
network namespace. Nothing here judges a figure."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from sluice.bench import httpload
from sluice.bench.httpload import LoadOutputError, parse_first_request, parse_wrk

WRK_CONNECTION_CLOSE = """\
Running 2s test @ http://198.19.0.10:8080/
  1 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.60ms    1.75ms   9.57ms   84.16%
    Req/Sec     6.28k     1.01k    8.33k    70.00%
  12528 requests in 2.01s, 1.73MB read
Requests/sec:   6230.58
Transfer/sec:      0.86MB
"""

WRK_LATENCY = """\
Running 1s test @ http://127.0.0.1:8080/
  1 threads and 4 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   343.87us    1.16ms  14.37ms   96.56%
    Req/Sec    14.19k     2.01k   15.55k    90.00%
  Latency Distribution
     50%  160.00us
     75%  195.00us
     90%  205.00us
     99%    7.20ms
  14267 requests in 1.01s, 1.97MB read
Requests/sec:  14075.16
Transfer/sec:      1.95MB
"""

WRK_NON_2XX = """\
Running 1s test @ http://127.0.0.1:8080/
  1 threads and 4 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   163.59us  244.13us   5.22ms   98.81%
    Req/Sec    15.71k   720.54    16.60k    81.82%
  17187 requests in 1.11s, 2.85MB read
  Non-2xx or 3xx responses: 17187
Requests/sec:  15427.65
Transfer/sec:      2.56MB
"""

WRK_SOCKET_ERRORS = """\
Running 1s test @ http://127.0.0.1:8080/
  1 threads and 4 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     0.00us    0.00us   0.00us    -nan%
    Req/Sec     0.00      0.00     0.00      -nan%
  0 requests in 1.01s, 0.00B read
  Socket errors: connect 0, read 3584, write 0, timeout 0
Requests/sec:      0.00
Transfer/sec:       0.00B
"""

WRK_REFUSED = "unable to connect to 127.0.0.1:8080 Connection refused\n"

FIRST_REQUEST_OK = ('{"latencies_ns": [79318, 74081, 72217, 79999, 72248, 74381, 71005, '
                    '67561, 66980, 69244, 72488, 65608], "failures": 0}\n')
FIRST_REQUEST_REFUSED = '{"latencies_ns": [], "failures": 5}\n'


def test_wrk_summary_with_connection_close() -> None:
    result = parse_wrk(WRK_CONNECTION_CLOSE)
    assert result.requests == 12528
    assert result.seconds == pytest.approx(2.01)
    assert result.requests_per_second == pytest.approx(6230.58)
    assert result.errors == 0


def test_wrk_summary_with_latency_distribution() -> None:
    result = parse_wrk(WRK_LATENCY)
    assert (result.requests, result.requests_per_second) == (14267, pytest.approx(14075.16))


def test_wrk_counts_non_2xx_and_socket_errors() -> None:
    non_2xx = parse_wrk(WRK_NON_2XX)
    assert non_2xx.non_2xx == 17187 and non_2xx.errors == 17187
    broken = parse_wrk(WRK_SOCKET_ERRORS)
    assert broken.requests == 0
    assert broken.socket_errors == {"connect": 0, "read": 3584, "write": 0, "timeout": 0}
    assert broken.errors == 3584


def test_wrk_without_a_summary_is_an_error_showing_the_output() -> None:
    with pytest.raises(LoadOutputError, match="Connection refused"):
        parse_wrk(WRK_REFUSED)


def test_wrk_argv_closes_every_connection() -> None:
    argv = httpload.wrk_argv("http://198.19.0.10:8080/", seconds=2.4, connections=16)
    assert argv[argv.index("-H") + 1] == "Connection: close"
    assert "-c16" in argv and "-d2s" in argv and argv[-1] == "http://198.19.0.10:8080/"


def test_first_request_percentiles() -> None:
    result = parse_first_request(FIRST_REQUEST_OK)
    assert len(result.latencies_ns) == 12 and result.failures == 0
    ordered = sorted(result.latencies_ns)
    assert result.percentile(0.5) == ordered[5] / 1000  # nearest rank: ceil(0.5 * 12) = 6
    assert result.percentile(0.99) == ordered[-1] / 1000
    assert result.percentile(0.0) == ordered[0] / 1000


def test_p99_of_a_hundred_is_the_99th_not_the_100th() -> None:
    result = httpload.LatencyResult(tuple(range(1000, 101_000, 1000)), 0)
    assert result.percentile(0.99) == 99.0


def test_first_request_failures_and_bad_output() -> None:
    refused = parse_first_request(FIRST_REQUEST_REFUSED)
    assert refused.failures == 5
    with pytest.raises(LoadOutputError, match="no successful requests"):
        refused.percentile(0.5)
    with pytest.raises(LoadOutputError, match="printed nothing"):
        parse_first_request("")
    with pytest.raises(LoadOutputError, match="unreadable"):
        parse_first_request("Traceback (most recent call last):\n")


def test_nginx_config_keeps_every_path_in_the_workdir(tmp_path: Path) -> None:
    config = httpload.write_nginx_config(tmp_path / "w", 8080)
    text = config.read_text()
    assert "listen 8080" in text and "access_log off;" in text
    assert "master_process off;" in text and "daemon off;" in text
    paths = [word.rstrip(";") for word in text.split() if word.startswith("/") and word != "/"]
    assert paths and all(p.startswith(str(tmp_path / "w")) for p in paths)


@pytest.mark.root
def test_generated_config_serves_wrk_and_the_first_request_client(tmp_path: Path) -> None:
    """nginx with the generated config, wrk and the client, in a private network
    namespace (unshare -n: its own loopback, gone when the shell exits)."""
    config = httpload.write_nginx_config(tmp_path, 8080)
    nginx = " ".join(httpload.nginx_argv(config))
    wrk = " ".join(f"'{a}'" for a in httpload.wrk_argv("http://127.0.0.1:8080/", seconds=1,
                                                        connections=4))
    client = httpload.first_request_argv("127.0.0.1", 8080, 50, warmup=2)
    script = (f"ip link set lo up && ({nginx} & echo $! > {tmp_path}/pid) && "
              f"for i in $(seq 50); do ss -Htln 'sport = :8080' | grep -q . && break; "
              f"sleep 0.1; done && {wrk} > {tmp_path}/wrk.txt && "
              f'"$@" > {tmp_path}/first.txt; kill $(cat {tmp_path}/pid)')
    if os.geteuid() != 0:
        pytest.skip("needs root")
    proc = subprocess.run(["unshare", "-n", "sh", "-c", script, "sh", *client],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr + (tmp_path / "nginx-error.log").read_text()
    wrk_result = parse_wrk((tmp_path / "wrk.txt").read_text())
    assert wrk_result.requests > 0 and wrk_result.errors == 0
    first = parse_first_request((tmp_path / "first.txt").read_text())
    assert first.failures == 0 and len(first.latencies_ns) == 50
    assert first.percentile(0.5) > 0
    _wait_gone(int((tmp_path / "pid").read_text()))


def _wait_gone(pid: int) -> None:
    for _ in range(50):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
