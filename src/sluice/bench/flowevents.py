"""flow-events: what flow events cost in throughput, on the bpf lab alone (the iptables
dataplane has none): new TCP connections per second to a ClusterIP service with events
off, at the agent's defaults, and with every event sent (no sampling, no rate limit).

Connections are where events happen: each one sends a socket-LB translation, a SYN and
FINs from two nodes. The measured service is bench/remote's nginx (node2), the client wrk
in bench/client (node1), as in svc-connect. Rounds alternate the settings; the datapath
is told through the pinned events_config map of both nodes, which the agents' defaults
are restored to at the end. Events sent and lost in each run are reported."""

from __future__ import annotations

import contextlib
import ctypes
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass

from sluice.agent.config import DEFAULT_FLOW_EVENT_RATE, FlowEventOptions
from sluice.apply.flowevents import write_events_config
from sluice.bench import httpload
from sluice.bench.benchlab import CLIENT, HTTP_PORT, REMOTE, BenchLab
from sluice.bench.benchmark import Benchmark
from sluice.bench.context import BenchContext
from sluice.bench.result import BenchRow, Samples, Target
from sluice.datapath import events as ev
from sluice.lab.errors import LabError
from sluice.loader.maps import Map
from sluice.observe.datapathstats import read_event_outcomes

NODES = ("node1", "node2")
CLIENT_CPU = 0
SERVER_CPU = 1
WRK_CONNECTIONS = 16
WITHIN = 0.95  # "a few percent": events on keep at least 95% of the rate without


@dataclass(frozen=True)
class Setting:
    name: str
    kinds: ev.EventKinds
    rate_per_cpu: int


OFF = Setting("off", ev.EventKinds(0), 0)
DEFAULTS = Setting("defaults", FlowEventOptions().kinds, DEFAULT_FLOW_EVENT_RATE)
EVERYTHING = Setting("all, no limit", ev.EventKinds.DROPS | ev.EventKinds.FLOWS
                     | ev.EventKinds.SOCK, 0)
SETTINGS = (OFF, DEFAULTS, EVERYTHING)


def _configure(lab: BenchLab, setting: Setting) -> None:
    for node in NODES:
        config: Map[ctypes.c_uint32, ev.EventsConfig] = Map.from_pin(
            os.path.join(lab.pin_dir(node), ev.CONFIG_MAP), ctypes.c_uint32, ev.EventsConfig)
        with contextlib.closing(config):
            write_events_config(config, setting.kinds, sample=1,
                                rate_per_cpu=setting.rate_per_cpu)


def _event_stats(lab: BenchLab) -> dict[str, int]:
    """Flow event outcomes (sent, lost_ring_full, ...) summed over both nodes."""
    totals: dict[str, int] = {}
    for node in NODES:
        stats: Map[ctypes.c_uint32, ctypes.c_uint64] = Map.from_pin(
            os.path.join(lab.pin_dir(node), ev.STATS_MAP), ctypes.c_uint32, ctypes.c_uint64)
        with contextlib.closing(stats):
            for outcome, count in read_event_outcomes(stats):
                totals[outcome] = totals.get(outcome, 0) + count
    return totals


@contextlib.contextmanager
def _nginx(lab: BenchLab) -> Iterator[None]:
    config = httpload.write_nginx_config(lab.workdir / "events-nginx", HTTP_PORT)
    with lab.running(REMOTE, httpload.nginx_argv(config), cpu=SERVER_CPU,
                     ready_port=HTTP_PORT):
        yield


def _wait_for_service(lab: BenchLab, url: str, attempts: int = 30) -> None:
    """A lab just made may not have synced the service yet: refused until it has."""
    for _ in range(attempts):
        proc = lab.run(CLIENT, httpload.wrk_argv(url, seconds=1, connections=1),
                       cpu=CLIENT_CPU, check=False)
        if proc.returncode == 0 and httpload.parse_wrk(proc.stdout).requests:
            return
        time.sleep(1.0)
    raise LabError(f"{url} refused connections for {attempts} s")


def run(ctx: BenchContext) -> list[BenchRow]:
    lab = ctx.lab("bpf")
    url = f"http://{lab.service_ip(REMOTE)}:{HTTP_PORT}/"
    seconds = ctx.seconds(2, 5)
    rates: dict[str, list[float]] = {s.name: [] for s in SETTINGS}
    sent: dict[str, list[int]] = {s.name: [] for s in SETTINGS}
    lost: dict[str, list[int]] = {s.name: [] for s in SETTINGS}
    try:
        with _nginx(lab):
            _wait_for_service(lab, url)
            for round_ in range(ctx.repeats):
                order = SETTINGS if round_ % 2 == 0 else tuple(reversed(SETTINGS))
                for setting in order:
                    _configure(lab, setting)
                    before = _event_stats(lab)
                    proc = lab.run(CLIENT, httpload.wrk_argv(url, seconds=seconds,
                                                             connections=WRK_CONNECTIONS),
                                   cpu=CLIENT_CPU, timeout=seconds + 60)
                    result = httpload.parse_wrk(proc.stdout)
                    if result.requests == 0 or result.errors > 0.01 * result.requests:
                        raise LabError(f"wrk to {url}: {result.requests} requests, "
                                       f"{result.errors} errors")
                    after = _event_stats(lab)
                    rates[setting.name].append(result.requests_per_second)
                    grew = {k: after[k] - before[k] for k in after}
                    sent[setting.name].append(grew["sent"])
                    lost[setting.name].append(grew["lost_ring_full"] + grew["rate_limited"])
                ctx.say("flow-events: round " + str(round_ + 1) + ": " + ", ".join(
                    f"{s.name} {rates[s.name][-1]:.0f}/s" for s in SETTINGS))
    finally:
        _configure(lab, DEFAULTS)
    off = Samples.of(rates[OFF.name])
    return [_row(ctx, setting, Samples.of(rates[setting.name]), off, seconds=seconds,
                 sent=sent[setting.name], lost=lost[setting.name])
            for setting in (DEFAULTS, EVERYTHING)]


def _row(ctx: BenchContext, setting: Setting, on: Samples, off: Samples, *, seconds: float,
         sent: list[int], lost: list[int]) -> BenchRow:
    ratio = on.median / off.median if off.median else 0.0
    events_per_second = sorted(sent)[len(sent) // 2] / seconds
    lost_per_second = sorted(lost)[len(lost) // 2] / seconds
    note = (f"events {setting.name} / off = {ratio:.3f}x; off {off.median:.0f} conn/s "
            f"(spread {off.spread:.0%}); events sent {events_per_second:.0f}/s, "
            f"lost or over the rate limit {lost_per_second:.0f}/s (medians of runs)")
    target = Target(f"events on >= {WITHIN:g}x off",
                    lambda row: bool(row.extra["events_on_over_off"] >= WITHIN))
    return BenchRow(
        "flow-events", f"bpf, events {setting.name} vs off", "new TCP connections/s",
        "conn/s", "higher", on, None,
        f"wrk {httpload.wrk_version()}, one request per connection (Connection: close)",
        f"{WRK_CONNECTIONS} connections, {seconds:g} s per run, {ctx.repeats} runs per "
        f"setting, settings alternating; client {CLIENT} (cpu{CLIENT_CPU}) -> ClusterIP of "
        f"{REMOTE} (nginx, cpu{SERVER_CPU}); events_config written on both nodes",
        target, note,
        {"events_on_over_off": round(ratio, 4), "off": off.to_json(),
         "events_sent_per_second": round(events_per_second, 1),
         "events_lost_per_second": round(lost_per_second, 1)})


BENCHMARKS = [Benchmark("flow-events", "throughput cost of flow events: new connections/s "
                        "with events off, at the defaults, and all of them", run)]
