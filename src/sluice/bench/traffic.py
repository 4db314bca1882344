"""Traffic through the dataplanes: TCP request/response rates (sockperf ping-pong) pod to
pod across nodes, on one node, from outside through a NodePort and behind a policy of
10,000 CIDRs; single-stream TCP throughput and CPU per Gbit at a fixed rate (iperf3).

Ping-pong client and server share one core at SCHED_FIFO priority: one message is in
flight at a time, so they never compete, no cross-core wake-up (an IPI, costly in a VM)
is in the round trip, and other load on the machine cannot delay a wake-up by a time
slice (without it a busy 2-core VM turns p99 into milliseconds). Both block between
messages, so they do not hog the core. iperf3 ends run at normal priority, client and
server on different cores. Servers start once per benchmark in both labs and answer
every repeat."""

from __future__ import annotations

import contextlib
import ipaddress
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from sluice.bench import iperf, sockperf
from sluice.bench.benchlab import (
    CLIENT,
    IPERF_PORT,
    LOCAL,
    NAMESPACE,
    NODE_PORTS,
    PODSERVER_PORT,
    REMOTE,
    SOCKPERF_PORT,
    BenchLab,
)
from sluice.bench.benchmark import Benchmark
from sluice.bench.context import DATAPLANES, BenchContext
from sluice.bench.cpuclock import MachineCpu
from sluice.bench.result import BenchRow, Samples, Target, ratio_at_least
from sluice.lab.errors import LabError
from sluice.lab.probe import Probe

RR_CPU = 1
"""Core of both ping-pong ends; iperf3's client runs on CLIENT_CPU, its server on
SERVER_CPU."""
CLIENT_CPU = 0
SERVER_CPU = 1
REALTIME = ("chrt", "--fifo", "50")
RR_SECONDS = (2.0, 10.0)
"""sockperf run length, quick and full; sockperf spends the first 0.4 s warming up."""
STREAM_SECONDS = (3.0, 10.0)
OFFERED_RATE = "2G"
"""iperf3 --bitrate for cpu-per-gbit: well below what either dataplane moves in one
stream on the 2-core lab VM (pod-stream: about 12 Gbit/s each), so both carry all of it,
and high enough that the traffic's CPU stands out of the idle agents' noise."""
BUSY_MACHINE = 0.5
"""Above this share of all cores busy without traffic, CPU per Gbit from /proc/stat
says more about the other load than about the dataplane."""
SUSTAINED = 0.95
POLICY_NAME = "bench-cidr-scale"
POLICY_CIDRS = 10_000
CIDR_RANGE = ipaddress.IPv4Network("100.64.0.0/10")
"""Shared address space (RFC 6598): never routed in the lab; the CIDRs are rules only."""
POLICY_WITHIN = 0.95
PROBE_TIMEOUT = 1.0

Run = TypeVar("Run")


@dataclass
class Runs(Generic[Run]):
    """Every parsed tool result per dataplane, kept for the rows' extra figures."""

    by_dataplane: dict[str, list[Run]] = field(
        default_factory=lambda: {d: [] for d in DATAPLANES})

    def add(self, lab: BenchLab, result: Run) -> None:
        self.by_dataplane[lab.dataplane].append(result)

    def median(self, figure: Callable[[Run], float]) -> dict[str, float]:
        return {d: round(statistics.median(figure(r) for r in runs), 3)
                for d, runs in self.by_dataplane.items() if runs}


@contextlib.contextmanager
def _servers(ctx: BenchContext, place: str, argv: Sequence[str], port: int, cpu: int
             ) -> Iterator[None]:
    """ARGV serving in PLACE of both labs, pinned to CPU, until the end."""
    with contextlib.ExitStack() as stack:
        for dataplane in DATAPLANES:
            stack.enter_context(ctx.lab(dataplane).running(place, argv, cpu=cpu,
                                                           ready_port=port))
        yield


# request/response (sockperf)

Address = Callable[[BenchLab], tuple[str, int]]


def _to_pod(pod: str) -> Address:
    return lambda lab: (lab.pod_ip(pod), SOCKPERF_PORT)


def _to_node_port(node: str) -> Address:
    return lambda lab: (lab.node_ip(node), NODE_PORTS[SOCKPERF_PORT])


def _ping_pong(ctx: BenchContext, source: str, address: Address,
               runs: Runs[sockperf.PingPong]) -> Callable[[BenchLab], float]:
    seconds = ctx.seconds(*RR_SECONDS)

    def measure(lab: BenchLab) -> float:
        ip, port = address(lab)
        proc = lab.run(source, [*REALTIME, *sockperf.ping_pong_argv(ip, port, seconds)],
                       cpu=RR_CPU, timeout=seconds + 30)
        result = sockperf.parse_ping_pong(proc.stdout + proc.stderr)
        runs.add(lab, result)
        return result.rate
    return measure


def _rr_samples(ctx: BenchContext, label: str, source: str, address: Address
                ) -> tuple[Samples, Samples, Runs[sockperf.PingPong]]:
    runs: Runs[sockperf.PingPong] = Runs()
    bpf, iptables = ctx.compare(_ping_pong(ctx, source, address, runs), label=label)
    return bpf, iptables, runs


def _latency(runs: Runs[sockperf.PingPong]) -> tuple[dict[str, Any], str]:
    """The rows' extra latency figures and a short note for the table."""
    p50 = runs.median(lambda r: r.p50_us)
    p99 = runs.median(lambda r: r.p99_us)
    extra = {"rtt_p50_us": p50, "rtt_p99_us": p99,
             "rtt_avg_us": runs.median(lambda r: r.avg_rtt_us)}
    note = "round trip p50/p99 (us, median of runs): " + ", ".join(
        f"{d} {p50[d]:.0f}/{p99[d]:.0f}" for d in p50)
    return extra, note


def _rr_params(ctx: BenchContext, source: str, server: str, to: str) -> str:
    return (f"{sockperf.MESSAGE_SIZE} B, {ctx.seconds(*RR_SECONDS):g} s per run, "
            f"{ctx.repeats} runs per dataplane; client {source} -> {to}, server {server}, "
            f"both on cpu{RR_CPU} at SCHED_FIFO 50; rate = observations / valid run time "
            f"(0.4 s warm-up excluded)")


def _rr_server(ctx: BenchContext, place: str) -> contextlib.AbstractContextManager[None]:
    return _servers(ctx, place, [*REALTIME, *sockperf.server_argv(SOCKPERF_PORT)],
                    SOCKPERF_PORT, RR_CPU)


def _rr_tool() -> str:
    return f"sockperf {sockperf.version()} ping-pong --full-rtt, TCP, --mps max"


def _rr_row(ctx: BenchContext, name: str, case: str, *, source: str, to: str,
            address: Address, target: Target, server: str = REMOTE) -> BenchRow:
    with _rr_server(ctx, server):
        bpf, iptables, runs = _rr_samples(ctx, name, source, address)
    extra, note = _latency(runs)
    return BenchRow(name, case, "TCP request/response rate", "trans/s", "higher", bpf,
                    iptables, _rr_tool(), _rr_params(ctx, source, server, to), target,
                    note, extra)


def pod_rr(ctx: BenchContext) -> list[BenchRow]:
    return [_rr_row(ctx, "pod-rr", "cross-node pod to pod", source=CLIENT,
                    to="remote pod IP (node2)", address=_to_pod(REMOTE),
                    target=ratio_at_least(2))]


def pod_rr_local(ctx: BenchContext) -> list[BenchRow]:
    return [_rr_row(ctx, "pod-rr-local", "same-node pod to pod", source=CLIENT,
                    to="local pod IP (node1)", address=_to_pod(LOCAL),
                    target=ratio_at_least(1.5), server=LOCAL)]


def nodeport_rr(ctx: BenchContext) -> list[BenchRow]:
    return [_rr_row(ctx, "nodeport-rr", "external -> node1 NodePort -> pod on node2",
                    source="external", to=f"node1 InternalIP:{NODE_PORTS[SOCKPERF_PORT]}",
                    address=_to_node_port("node1"), target=ratio_at_least(1.5))]


# throughput and CPU (iperf3)

@dataclass(frozen=True)
class StreamRun:
    stream: iperf.Stream
    cpu_seconds: float
    """Busy CPU seconds of the whole machine during the run."""
    idle_cpu_seconds: float
    """Busy CPU seconds of the whole machine over as long a time without traffic just
    before (the labs' agents and whatever else runs), 0 when not measured."""

    @property
    def traffic_cpu_seconds(self) -> float:
        return max(0.0, self.cpu_seconds - self.idle_cpu_seconds)


def _busy_over(action: Callable[[], Any]) -> tuple[Any, float, float]:
    """ACTION's result, the machine's busy CPU seconds during it, and its wall time."""
    before, began = MachineCpu.now(), time.monotonic()
    result = action()
    return result, MachineCpu.now().since(before), time.monotonic() - began


def _stream(ctx: BenchContext, runs: Runs[StreamRun], figure: Callable[[StreamRun], float],
            bitrate: str | None, *, baseline: bool = False) -> Callable[[BenchLab], float]:
    seconds = ctx.seconds(*STREAM_SECONDS)

    def measure(lab: BenchLab) -> float:
        idle = 0.0
        if baseline:
            _, idle_cpu, idle_wall = _busy_over(lambda: time.sleep(seconds))
            idle = idle_cpu / idle_wall
        argv = iperf.client_argv(lab.pod_ip(REMOTE), IPERF_PORT, seconds, bitrate=bitrate)
        proc, cpu, wall = _busy_over(lambda: lab.run(CLIENT, argv, cpu=CLIENT_CPU,
                                                     timeout=seconds + 30, check=False))
        run = StreamRun(iperf.parse_stream(proc.stdout), cpu, idle * wall)
        runs.add(lab, run)
        return figure(run)
    return measure


def _stream_params(ctx: BenchContext, extra: str = "") -> str:
    return (f"1 TCP stream, {ctx.seconds(*STREAM_SECONDS):g} s per run, {ctx.repeats} runs "
            f"per dataplane{extra}; client {CLIENT} cpu{CLIENT_CPU} -> remote pod IP "
            f"(node2), server {REMOTE} cpu{SERVER_CPU}; receiver's bytes")


def pod_stream(ctx: BenchContext) -> list[BenchRow]:
    runs: Runs[StreamRun] = Runs()
    with _servers(ctx, REMOTE, iperf.server_argv(IPERF_PORT), IPERF_PORT, SERVER_CPU):
        bpf, iptables = ctx.compare(
            _stream(ctx, runs, lambda r: r.stream.bits_per_second / 1e9, None), label="pod-stream")
    extra = {"retransmits": runs.median(lambda r: r.stream.retransmits)}
    return [BenchRow("pod-stream", "cross-node pod to pod, 1 stream", "TCP throughput",
                     "Gbit/s", "higher", bpf, iptables, f"iperf3 {iperf.version()}",
                     _stream_params(ctx), ratio_at_least(1.5),
                     "retransmits (median): " + ", ".join(
                         f"{d} {v:.0f}" for d, v in extra["retransmits"].items()), extra)]


def cpu_per_gbit(ctx: BenchContext) -> list[BenchRow]:
    runs: Runs[StreamRun] = Runs()
    with _servers(ctx, REMOTE, iperf.server_argv(IPERF_PORT), IPERF_PORT, SERVER_CPU):
        bpf, iptables = ctx.compare(
            _stream(ctx, runs, lambda r: r.traffic_cpu_seconds / r.stream.gbit, OFFERED_RATE,
                    baseline=True), label="cpu-per-gbit")
    achieved = runs.median(lambda r: r.stream.bits_per_second / 1e9)
    offered = _gbit(OFFERED_RATE)
    short = [d for d, rate in achieved.items() if rate < SUSTAINED * offered]
    seconds = ctx.seconds(*STREAM_SECONDS)
    busy = max(runs.median(lambda r: r.idle_cpu_seconds / seconds / ctx.cpus).values())
    note = ("achieved Gbit/s: " + ", ".join(f"{d} {v:.2f}" for d, v in achieved.items())
            + (f"; {', '.join(short)} did NOT sustain the offered rate" if short else "")
            + (f"; UNRELIABLE: {busy:.0%} of the machine was busy without traffic"
               if busy > BUSY_MACHINE else ""))
    extra = {"achieved_gbit_per_s": achieved,
             "cpu_seconds_during_run": runs.median(lambda r: r.cpu_seconds),
             "cpu_seconds_idle_baseline": runs.median(lambda r: r.idle_cpu_seconds),
             "raw_cpu_per_gbit": runs.median(lambda r: r.cpu_seconds / r.stream.gbit),
             "offered_gbit_per_s": offered, "busy_without_traffic": round(busy, 3)}
    return [BenchRow("cpu-per-gbit", f"pod to pod across nodes at {OFFERED_RATE}bit/s",
                     "CPU per Gbit", "CPU s/Gbit", "lower", bpf, iptables,
                     f"iperf3 {iperf.version()} --bitrate {OFFERED_RATE}; /proc/stat",
                     _stream_params(ctx, f", offered {OFFERED_RATE}bit/s") +
                     "; CPU = busy time of all cores (softirq included, /proc/stat) during "
                     "the run minus the same machine's busy time over as long just before "
                     "without traffic (agents of both labs, anything else running)",
                     _credible_at_most(0.7), note, extra)]


PLAUSIBLE_CPU_PER_GBIT = 0.05
"""CPU s per Gbit below which the accounting failed: moving a Gbit through veths and a
tunnel in software costs more. Under some hypervisors /proc/stat misses softirq time."""


def _credible_at_most(maximum: float) -> Target:
    def judge(row: BenchRow) -> bool | None:
        if row.iptables is None or min(row.bpf.median, row.iptables.median) \
                < PLAUSIBLE_CPU_PER_GBIT:
            return None
        return row.bpf.median / row.iptables.median <= maximum
    return Target(f"<= {maximum:g}x (judged when both >= {PLAUSIBLE_CPU_PER_GBIT} CPU s/Gbit)",
                  judge)


def _gbit(rate: str) -> float:
    scale = {"K": 1e-6, "M": 1e-3, "G": 1.0}
    return float(rate[:-1]) * scale[rate[-1].upper()]


# policy scale

def cidr_policy(count: int) -> dict[str, Any]:
    """A NetworkPolicy isolating bench/remote: ingress from bench/client, and from COUNT
    distinct /24s of 100.64.0.0/10 (rules only: nothing sends from there)."""
    base = int(CIDR_RANGE.network_address)
    if count * 256 > CIDR_RANGE.num_addresses:
        raise ValueError(f"{count} /24s do not fit in {CIDR_RANGE}")
    peers: list[dict[str, Any]] = [{"podSelector": {"matchLabels": {"app": "client"}}}]
    peers += [{"ipBlock": {"cidr": f"{ipaddress.IPv4Address(base + i * 256)}/24"}}
              for i in range(count)]
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": POLICY_NAME, "namespace": NAMESPACE},
            "spec": {"podSelector": {"matchLabels": {"app": "remote"}},
                     "policyTypes": ["Ingress"], "ingress": [{"from": peers}]}}


def _reaches(lab: BenchLab, source: str, pod: str) -> bool:
    where = lab.place(source)
    outcome = Probe(where.netns, lab.pod_ip(pod), PODSERVER_PORT, timeout=PROBE_TIMEOUT,
                    cgroup=where.cgroup).run()
    return outcome.result == "connected"


def _check_enforced(lab: BenchLab, enforced: bool) -> None:
    """The policy is in the path: bench/local (not allowed) is cut off from the remote
    pod's port PODSERVER_PORT exactly while it is applied; bench/client always reaches."""
    if not _reaches(lab, CLIENT, REMOTE):
        raise LabError(f"{lab.dataplane} lab: {CLIENT} cannot reach {REMOTE}:"
                       f"{PODSERVER_PORT} (policy {'on' if enforced else 'off'})")
    if _reaches(lab, LOCAL, REMOTE) == enforced:
        raise LabError(f"{lab.dataplane} lab: {LOCAL} -> {REMOTE}:{PODSERVER_PORT} "
                       + ("connects although the policy denies it" if enforced
                          else "fails without any policy"))


def policy_scale(ctx: BenchContext) -> list[BenchRow]:
    policy = cidr_policy(POLICY_CIDRS)
    labs = [ctx.lab(d) for d in DATAPLANES]
    apply_seconds: dict[str, float] = {}
    to = _to_pod(REMOTE)
    with _rr_server(ctx, REMOTE):
        for lab in labs:
            _check_enforced(lab, enforced=False)
        zero = _rr_samples(ctx, "policy-scale 0 rules", CLIENT, to)
        try:
            for lab in labs:
                ctx.say(f"policy-scale: applying {POLICY_CIDRS} CIDRs to the "
                        f"{lab.dataplane} lab")
                began = time.monotonic()
                lab.apply([policy])
                apply_seconds[lab.dataplane] = round(time.monotonic() - began, 1)
                _check_enforced(lab, enforced=True)
            scaled = _rr_samples(ctx, f"policy-scale {POLICY_CIDRS} CIDRs", CLIENT, to)
        finally:
            for lab in labs:
                lab.delete([policy])
    params = (_rr_params(ctx, CLIENT, REMOTE, "remote pod IP (node2)")
              + f"; policy: NetworkPolicy on {REMOTE} allowing {CLIENT} by podSelector and "
              f"{POLICY_CIDRS} /24 ipBlocks of {CIDR_RANGE}, checked enforced ({LOCAL} "
              f"cut off from port {PODSERVER_PORT})")
    within = scaled[0].median / zero[0].median
    target = Target(f"bpf 10k >= {POLICY_WITHIN:g}x bpf 0 rules",
                    lambda _row: within >= POLICY_WITHIN)
    rows = []
    for case, (bpf, iptables, runs), row_target in (
            ("0 rules", zero, None), ("10k CIDR rules", scaled, target)):
        extra, note = _latency(runs)
        if row_target is not None:
            extra |= {"bpf_10k_over_bpf_0": round(within, 4),
                      "iptables_10k_over_iptables_0":
                          round(iptables.median / zero[1].median, 4),
                      "apply_and_settle_seconds": apply_seconds}
            note = (f"bpf 10k / bpf 0 rules = {within:.3f}, iptables 10k / 0 = "
                    f"{iptables.median / zero[1].median:.3f}; {note}")
        rows.append(BenchRow("policy-scale", case, "TCP request/response rate", "trans/s",
                             "higher", bpf, iptables, _rr_tool(), params, row_target, note,
                             extra))
    return rows


BENCHMARKS: list[Benchmark] = [
    Benchmark("pod-rr", "cross-node pod-to-pod TCP request/response rate (sockperf)", pod_rr),
    Benchmark("pod-rr-local", "same-node pod-to-pod TCP request/response rate (sockperf)",
              pod_rr_local),
    Benchmark("pod-stream", "cross-node pod-to-pod TCP throughput, 1 stream (iperf3)",
              pod_stream),
    Benchmark("cpu-per-gbit", "CPU seconds per Gbit pod to pod across nodes at a fixed "
              "offered rate (iperf3, /proc/stat)", cpu_per_gbit),
    Benchmark("nodeport-rr", "TCP request/response rate from external through a NodePort "
              "to a pod on another node (sockperf)", nodeport_rr),
    Benchmark("policy-scale", "pod-to-pod TCP request/response rate with 0 and 10,000 "
              "policy CIDRs (sockperf)", policy_scale),
]
