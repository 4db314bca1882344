"""svc-connect and svc-first-packet: how new connections to a ClusterIP service fare as
the number of services grows from 1 to 1,000 and 10,000.

The measured service is bench/remote (its ClusterIP, port 8080): an nginx in the remote
pod on node2, clients in bench/client on node1, so every connection crosses nodes as
real service traffic does, and the client's node translates the service (bpf: at
connect() in the client's cgroup; iptables: the SYN walks the nat table's service chain
on node1, and node2's on arrival). The other services are ClusterIPs with endpoints no
pod holds (scaleobjects): 10 endpoints each, 1 in --quick (10,000 x 10 take minutes to
sync in iptables mode), applied to each lab in turn (the time it took is reported),
measured, then deleted.

svc-connect: wrk, one new TCP connection per request (Connection: close).
svc-first-packet: a python client making one new connection per request, each timed
from socket() to the end of the response (wrk's latency starts after the connect).

Both benchmarks share one run: at each scale both figures are measured before scaling
up, so the 10,000 services are synced once per lab. The run is cached per context.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sluice.bench import httpload, scaleobjects
from sluice.bench.benchlab import CLIENT, HTTP_PORT, REMOTE, BenchLab
from sluice.bench.benchmark import Benchmark
from sluice.bench.context import DATAPLANES, BenchContext
from sluice.bench.result import BenchRow, Samples, Target
from sluice.lab.errors import LabError

SCALES = (1, 1_000, 10_000)
ENDPOINTS_FULL = 10  # per other service
ENDPOINTS_QUICK = 1  # --quick: 10k x 10 endpoints take minutes to sync in iptables mode
CLIENT_CPU = 0
SERVER_CPU = 1
WRK_CONNECTIONS = 16
SYNC_TIMEOUT_QUICK = 300.0
SYNC_TIMEOUT_FULL = 900.0  # 10k x 10 endpoints in iptables mode on a busy 2-core VM
FLAT_RATE = 0.9  # bpf at 10k >= 0.9x bpf at 1 (connections/s)
FLAT_LATENCY = 1.1  # bpf p99 at 10k <= 1.1x bpf p99 at 1
MIN_RATIO_AT_10K = 3.0
MAX_ERROR_SHARE = 0.01

Pair = tuple[Samples, Samples]  # bpf, iptables


@dataclass(frozen=True)
class SyncTime:
    """How long one lab took to take a change: validating and writing the objects to its
    datastore, then until both agents had reconciled it (and stayed quiet for benchlab's
    settle check, which adds about 1 s)."""

    write: float
    settle: float

    def __str__(self) -> str:
        return f"write {self.write:.1f} s + settle {self.settle:.1f} s"


@dataclass(frozen=True)
class ScalePoint:
    """Both benchmarks' figures with SERVICES services in each lab."""

    services: int
    connections_per_second: Pair
    first_p50_us: Pair
    first_p99_us: Pair
    sync: Mapping[str, SyncTime]
    errors: Mapping[str, int]  # dataplane -> failed connections (wrk errors, first requests)


@dataclass(frozen=True)
class ScaleRun:
    points: tuple[ScalePoint, ...]
    endpoints: int
    wrk_seconds: float
    first_requests: int
    cleanup: Mapping[str, SyncTime]
    wrk_version: str
    nginx_version: str

    def at(self, services: int) -> ScalePoint:
        return next(p for p in self.points if p.services == services)


# One run per context, shared by both benchmarks; a failure is kept so the second
# benchmark reports it instead of syncing 10,000 services again.
_RUNS: dict[int, tuple[BenchContext, ScaleRun | Exception]] = {}


class ScaleRunError(RuntimeError):
    pass


def scale_run(ctx: BenchContext) -> ScaleRun:
    cached = _RUNS.get(id(ctx))
    if cached is None or cached[0] is not ctx:
        outcome: ScaleRun | Exception
        try:
            outcome = _measure(ctx)
        except KeyboardInterrupt:
            raise
        except Exception as err:
            outcome = err
        _RUNS.clear()
        _RUNS[id(ctx)] = (ctx, outcome)
        cached = _RUNS[id(ctx)]
    if isinstance(cached[1], Exception):
        failure = cached[1]
        raise ScaleRunError(f"the service-scale run failed: {type(failure).__name__}: "
                            f"{failure}") from failure
    return cached[1]


def _first_requests(ctx: BenchContext) -> int:
    return 1000 if ctx.quick else 3000


def _endpoints(ctx: BenchContext) -> int:
    return ENDPOINTS_QUICK if ctx.quick else ENDPOINTS_FULL


def _measure(ctx: BenchContext) -> ScaleRun:
    endpoints = _endpoints(ctx)
    labs = {dataplane: ctx.lab(dataplane) for dataplane in DATAPLANES}
    service_ips = {d: lab.service_ip(REMOTE) for d, lab in labs.items()}
    wrk_seconds = ctx.seconds(2, 5)
    sync_timeout = ctx.seconds(SYNC_TIMEOUT_QUICK, SYNC_TIMEOUT_FULL)
    points: list[ScalePoint] = []
    applied: list[dict[str, Any]] = []
    cleanup: dict[str, SyncTime] = {}
    with contextlib.ExitStack() as servers:
        for lab in labs.values():
            config = httpload.write_nginx_config(lab.workdir / "svc-nginx", HTTP_PORT)
            servers.enter_context(lab.running(REMOTE, httpload.nginx_argv(config),
                                              cpu=SERVER_CPU, ready_port=HTTP_PORT))
        try:
            for services in SCALES:
                sync: dict[str, SyncTime] = {}
                if services > 1:
                    applied = scaleobjects.services(services - 1, endpoints)
                    ctx.say(f"svc-scale: applying {services - 1:,} services x {endpoints} "
                            "endpoints to both labs")
                    sync = _change(labs, applied, "apply", sync_timeout)
                    ctx.say("svc-scale: " + ", ".join(f"{d} {t}" for d, t in sync.items()))
                points.append(_measure_point(ctx, labs, service_ips=service_ips,
                                             services=services, sync=sync,
                                             wrk_seconds=wrk_seconds))
        except KeyboardInterrupt:
            applied = []  # the labs are removed next: no waiting for a delete to sync
            raise
        finally:
            if applied:
                ctx.say(f"svc-scale: deleting the {len(applied) // 2:,} services")
                cleanup = _change(labs, applied, "delete", sync_timeout)
                ctx.say("svc-scale: deleted: " + ", ".join(f"{d} {t}" for d, t in cleanup.items()))
    return ScaleRun(tuple(points), endpoints, wrk_seconds, _first_requests(ctx), cleanup,
                    httpload.wrk_version(), httpload.nginx_version())


def _change(labs: Mapping[str, BenchLab], docs: Sequence[dict[str, Any]], how: str,
            timeout: float) -> dict[str, SyncTime]:
    """DOCS applied to (or deleted from) each lab in turn, so one lab's sync does not
    slow the other's."""
    took: dict[str, SyncTime] = {}
    for dataplane, lab in labs.items():
        before = lab.agent_revisions()
        start = time.monotonic()
        if how == "apply":
            lab.apply(docs, settle=False)
        else:
            lab.delete(docs, settle=False)
        written = time.monotonic()
        try:
            lab.settle(before, timeout=timeout)
        except LabError as err:
            raise ScaleRunError(f"{how} of {len(docs) // 2:,} services: {err}; "
                                f"{_agent_complaints(lab)}") from err
        took[dataplane] = SyncTime(written - start, time.monotonic() - written)
    return took


def _agent_complaints(lab: BenchLab) -> str:
    """The last warning each agent logged (e.g. a restore that timed out)."""
    said = []
    for node in lab.state.plan.nodes:
        try:
            lines = lab.agent_log(node.name).read_text(errors="replace").splitlines()
        except OSError:
            continue
        last = next((line for line in reversed(lines) if " WARNING " in line
                     or " ERROR " in line), None)
        if last:
            said.append(f"{node.name}: {last}")
    return "; ".join(said) or "the agents logged no warning"


def _measure_point(ctx: BenchContext, labs: Mapping[str, BenchLab], *,
                   service_ips: Mapping[str, str], services: int, sync: Mapping[str, SyncTime],
                   wrk_seconds: float) -> ScalePoint:
    errors = dict.fromkeys(labs, 0)
    first_requests = _first_requests(ctx)

    def connections_per_second(lab: BenchLab) -> float:
        url = f"http://{service_ips[lab.dataplane]}:{HTTP_PORT}/"
        proc = lab.run(CLIENT, httpload.wrk_argv(url, seconds=wrk_seconds,
                                                 connections=WRK_CONNECTIONS),
                       cpu=CLIENT_CPU, timeout=wrk_seconds + 60)
        result = httpload.parse_wrk(proc.stdout)
        errors[lab.dataplane] += result.errors
        if result.requests == 0 or result.errors > MAX_ERROR_SHARE * result.requests:
            raise ScaleRunError(f"wrk to {url} in lab {lab.name}: {result.requests} requests, "
                                f"{result.errors} errors ({result.socket_errors}, "
                                f"{result.non_2xx} not 2xx)")
        return result.requests_per_second

    p99s: dict[str, list[float]] = {d: [] for d in labs}

    def first_request_p50(lab: BenchLab) -> float:
        argv = httpload.first_request_argv(service_ips[lab.dataplane], HTTP_PORT,
                                           first_requests)
        proc = lab.run(CLIENT, argv, cpu=CLIENT_CPU, timeout=120)
        result = httpload.parse_first_request(proc.stdout)
        errors[lab.dataplane] += result.failures
        if result.failures > MAX_ERROR_SHARE * first_requests:
            raise ScaleRunError(f"first requests in lab {lab.name}: {result.failures} of "
                                f"{first_requests} failed")
        p99s[lab.dataplane].append(result.percentile(0.99))
        return result.percentile(0.5)

    label = f"{services:,} service{'s' if services > 1 else ''}"
    connect = ctx.compare(connections_per_second, label=f"svc-connect {label}")
    p50 = ctx.compare(first_request_p50, label=f"svc-first-packet p50 {label}")
    p99 = (Samples.of(p99s["bpf"]), Samples.of(p99s["iptables"]))
    ctx.say(f"svc-first-packet p99 {label}: bpf {p99[0].median:.4g} us, "
            f"iptables {p99[1].median:.4g} us")
    return ScalePoint(services, connect, p50, p99, dict(sync), errors)


# rows


def _case(services: int) -> str:
    return f"{services:,} service{'s' if services > 1 else ''}"


def _others(run: ScaleRun, point: ScalePoint) -> str:
    if point.services == 1:
        return "no other services"
    synced = "; ".join(f"{d} {t}" for d, t in point.sync.items())
    return (f"+{point.services - 1:,} ClusterIP services x {run.endpoints} endpoints "
            f"(applied: {synced})")


def _where(run: ScaleRun) -> str:
    return (f"ClusterIP of bench/remote:{HTTP_PORT} (backend on node2, client on node1), "
            f"client cpu{CLIENT_CPU}, nginx {run.nginx_version} (1 process, return 200, "
            f"3 B body, no access log) on cpu{SERVER_CPU}")


def _flatness(first: Samples, last: Samples) -> float:
    return last.median / first.median if first.median else float("nan")


def _flatness_note(services: int, flatness: float, figure: str) -> str:
    if services == SCALES[0]:
        return "the baseline of bpf flatness"
    return f"bpf flatness {flatness:.2f} (bpf {figure} at {services:,} / at 1)"


def _extra(run: ScaleRun, point: ScalePoint, flatness: float) -> dict[str, Any]:
    return {"services": point.services, "endpointsPerService": run.endpoints,
            "bpfFlatness": round(flatness, 4),
            "syncSeconds": {d: _seconds(t) for d, t in point.sync.items()},
            "cleanupSeconds": {d: _seconds(t) for d, t in run.cleanup.items()},
            "failedConnections": dict(point.errors)}


def _seconds(sync: SyncTime) -> dict[str, float]:
    return {"write": round(sync.write, 2), "settle": round(sync.settle, 2)}


def svc_connect_rows(run: ScaleRun) -> list[BenchRow]:
    base = run.at(SCALES[0]).connections_per_second[0]
    flat_at_top = _flatness(base, run.at(SCALES[-1]).connections_per_second[0])
    target = Target(f"bpf {SCALES[-1]:,} >= {FLAT_RATE:g}x bpf 1; >= {MIN_RATIO_AT_10K:g}x",
                    lambda row: (flat_at_top >= FLAT_RATE and row.ratio is not None
                                 and row.ratio >= MIN_RATIO_AT_10K))
    tool = f"wrk {run.wrk_version}"
    rows = []
    for point in run.points:
        bpf, iptables = point.connections_per_second
        flatness = _flatness(base, bpf)
        rows.append(BenchRow(
            "svc-connect", _case(point.services), "new connections", "conn/s", "higher",
            bpf, iptables, tool,
            f"1 thread, {WRK_CONNECTIONS} connections, header Connection: close (one new "
            f"TCP connection per request), {run.wrk_seconds:g} s per repeat; "
            + _where(run) + "; " + _others(run, point),
            target if point.services == SCALES[-1] else None,
            _flatness_note(point.services, flatness, "conn/s"),
            _extra(run, point, flatness)))
    return rows


def svc_first_packet_rows(run: ScaleRun) -> list[BenchRow]:
    rows = []
    tool = "python3 client in bench/client (socket, connect, GET, read to close)"
    for name, pick in (("p50", _p50), ("p99", _p99)):
        base = pick(run.at(SCALES[0]))[0]
        flat_at_top = _flatness(base, pick(run.at(SCALES[-1]))[0])
        target = _flat_latency_target(flat_at_top)
        for point in run.points:
            bpf, iptables = pick(point)
            flatness = _flatness(base, bpf)
            rows.append(BenchRow(
                "svc-first-packet", f"{_case(point.services)}, {name}",
                "first request on a new connection", "us", "lower", bpf, iptables, tool,
                f"{run.first_requests} sequential new connections per repeat (after 20 "
                "warm-up), each timed from socket() through connect, request and response "
                f"to close, {name} of them; " + _where(run)
                + "; " + _others(run, point),
                target if name == "p99" and point.services == SCALES[-1] else None,
                _flatness_note(point.services, flatness, name),
                _extra(run, point, flatness)))
    return rows


def _flat_latency_target(flatness: float) -> Target:
    def judge(row: BenchRow) -> bool:
        return flatness <= FLAT_LATENCY
    return Target(f"bpf {SCALES[-1]:,} <= {FLAT_LATENCY:g}x bpf 1", judge)


def _p50(point: ScalePoint) -> Pair:
    return point.first_p50_us


def _p99(point: ScalePoint) -> Pair:
    return point.first_p99_us


def _run_with(rows: Callable[[ScaleRun], list[BenchRow]]
              ) -> Callable[[BenchContext], list[BenchRow]]:
    def run(ctx: BenchContext) -> list[BenchRow]:
        return rows(scale_run(ctx))
    return run


BENCHMARKS: list[Benchmark] = [
    Benchmark("svc-connect", "new TCP connections/s to a ClusterIP service at 1, 1,000 and "
              "10,000 services (wrk, Connection: close)", _run_with(svc_connect_rows)),
    Benchmark("svc-first-packet", "latency of the first request on new connections to a "
              "ClusterIP service at 1, 1,000 and 10,000 services (p50, p99)",
              _run_with(svc_first_packet_rows)),
]
