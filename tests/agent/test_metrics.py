"""/metrics as Prometheus reads it: a strict parser of the text format, the sync duration
histogram, and the datapath series read from the real node maps loaded and pinned in a
test directory (counters written as the datapath writes them: one value per CPU)."""

from __future__ import annotations

import ctypes
import ipaddress
import itertools
import math
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from sluice.agent import metrics
from sluice.agent.config import AgentConfig
from sluice.agent.status import AgentStatus, trigger_of
from sluice.apply.lbmaps import sync_lb
from sluice.apply.nodeobject import NodeObject
from sluice.compile.lbstate import lb_state
from sluice.compile.serviceendpoints import ServiceEndpoint
from sluice.compile.services import Frontend, FrontendScope, ServicePlan, ServiceTable
from sluice.compile.topology import Dataplane
from sluice.datapath import events as ev
from sluice.datapath import lb
from sluice.datapath import policy as pol
from sluice.datapath import routing as rt
from sluice.datapath.addr import LpmKey
from sluice.loader.libbpf import MapBatchOpts, check, lib, possible_cpus
from sluice.observe.datapathstats import DatapathReader, DatapathStats

IP = ipaddress.ip_address
NET = ipaddress.ip_network

# -- a strict parser of the text exposition format (0.0.4) -------------------------------

NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"')
SAMPLE = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)")
KINDS = {"counter", "gauge", "histogram", "summary", "untyped"}


class ExpositionError(AssertionError):
    pass


Labels = frozenset[tuple[str, str]]


@dataclass
class Family:
    kind: str
    help: str
    samples: dict[tuple[str, Labels], float] = field(default_factory=dict)


@dataclass
class Exposition:
    families: dict[str, Family]

    def series(self, name: str, **match: str) -> dict[Labels, float]:
        """Samples of NAME (a family's name or a histogram's _bucket/_sum/_count) whose
        labels include MATCH."""
        family = self.families.get(re.sub(r"_(bucket|sum|count)$", "", name)) \
            or self.families.get(name)
        if family is None:
            raise KeyError(f"no metric family for {name}")
        return {labels: value for (sample, labels), value in family.samples.items()
                if sample == name and set(match.items()) <= labels}

    def value(self, name: str, **labels: str) -> float:
        """The one sample of NAME whose labels are exactly LABELS."""
        found = self.series(name).get(frozenset(labels.items()))
        if found is None:
            raise KeyError(f"no sample {name}{labels}; have {sorted(self.series(name))}")
        return found

    def total(self, name: str, **match: str) -> float:
        """The sum of NAME's samples whose labels include MATCH (0 when there are none)."""
        return sum(self.series(name, **match).values())


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"n": "\n"}.get(m.group(1), m.group(1)), value)


def _labels(text: str, line: str) -> Labels:
    labels: dict[str, str] = {}
    position = 0
    while position < len(text):
        match = LABEL.match(text, position)
        if match is None:
            raise ExpositionError(f"bad labels at {text[position:]!r} in: {line}")
        name = match.group(1)
        if name in labels or name.startswith("__"):
            raise ExpositionError(f"label {name} repeated or reserved in: {line}")
        labels[name] = _unescape(match.group(2))
        position = match.end()
        if position < len(text):
            if text[position] != "," or position + 1 == len(text):
                raise ExpositionError(f"expected ',' and a label at {text[position:]!r}")
            position += 1
    return frozenset(labels.items())


def _value(text: str, line: str) -> float:
    if text in ("+Inf", "-Inf", "NaN"):
        return float(text.replace("Inf", "inf"))
    if not re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?", text):
        raise ExpositionError(f"bad value {text!r} in: {line}")
    return float(text)


def parse_exposition(text: str) -> Exposition:
    """Every family with its HELP, TYPE and samples; raises ExpositionError on anything a
    Prometheus server would refuse or our naming conventions forbid."""
    if not text.endswith("\n"):
        raise ExpositionError("the exposition must end with a newline")
    families: dict[str, Family] = {}
    current: str | None = None
    for line in text[:-1].split("\n"):
        if line.startswith("# HELP "):
            name, _, help_text = line[7:].partition(" ")
            if not NAME.fullmatch(name) or name in families or not help_text:
                raise ExpositionError(f"bad or repeated HELP: {line}")
            families[name] = Family("", help_text)
            current = name
        elif line.startswith("# TYPE "):
            name, _, kind = line[7:].partition(" ")
            if name != current or kind not in KINDS or families[name].kind:
                raise ExpositionError(f"TYPE must follow its HELP, once: {line}")
            families[name].kind = kind
        elif line.startswith("#") or not line:
            raise ExpositionError(f"unexpected line: {line!r}")
        else:
            match = SAMPLE.fullmatch(line)
            if match is None or current is None or not families[current].kind:
                raise ExpositionError(f"a sample outside a typed family: {line}")
            name, labels = match.group(1), _labels(match.group(2) or "", line)
            family = families[current]
            allowed = {current} if family.kind != "histogram" else \
                {f"{current}_{suffix}" for suffix in ("bucket", "sum", "count")}
            if name not in allowed:
                raise ExpositionError(f"sample {name} does not belong to {current}")
            if (name, labels) in family.samples:
                raise ExpositionError(f"duplicate series: {line}")
            family.samples[(name, labels)] = _value(match.group(3), line)
    for name, family in families.items():
        _check_family(name, family)
    return Exposition(families)


def _check_family(name: str, family: Family) -> None:
    if (family.kind == "counter") != name.endswith("_total"):
        raise ExpositionError(f"{name}: counters, and only counters, end in _total")
    if family.kind == "counter" and any(v < 0 for v in family.samples.values()):
        raise ExpositionError(f"{name}: a negative counter")
    if family.kind != "histogram":
        return
    groups: dict[Labels, list[tuple[float, float]]] = {}
    for (sample, labels), value in family.samples.items():
        if sample.endswith("_bucket"):
            le = dict(labels).get("le")
            if le is None:
                raise ExpositionError(f"{name}: a bucket without le")
            groups.setdefault(labels - {("le", le)}, []).append((_value(le, name), value))
    for labels, buckets in groups.items():
        if [b for b, _ in buckets] != sorted(b for b, _ in buckets) or buckets[-1][0] != math.inf:
            raise ExpositionError(f"{name}{dict(labels)}: buckets out of order or no +Inf")
        if any(a[1] > b[1] for a, b in itertools.pairwise(buckets)):
            raise ExpositionError(f"{name}{dict(labels)}: bucket counts are not cumulative")
        count = family.samples.get((f"{name}_count", labels))
        if count != buckets[-1][1] or (f"{name}_sum", labels) not in family.samples:
            raise ExpositionError(f"{name}{dict(labels)}: _count differs from +Inf or no _sum")


@pytest.mark.parametrize("text", [
    "x_total 1\n",  # no HELP/TYPE
    "# HELP a_total A.\n# TYPE a_total counter\na_total 1\na_total 2\n",  # duplicate
    '# HELP a_total A.\n# TYPE a_total counter\na_total{x="1",} 1\n',  # trailing comma
    '# HELP a_total A.\n# TYPE a_total counter\na_total{x="\\q"} 1\n',  # bad escape
    "# HELP a A.\n# TYPE a counter\na 1\n",  # a counter without _total
    "# HELP a_total A.\n# TYPE a_total gauge\na_total 1\n",  # a gauge with _total
    "# HELP a A.\n# TYPE a gauge\nb 1\n",  # a sample of another family
    "# HELP h A.\n# TYPE h histogram\n"  # not cumulative
    'h_bucket{le="1.0"} 2\nh_bucket{le="+Inf"} 1\nh_sum 1\nh_count 1\n',
    "# HELP a A.\n# TYPE a gauge\na one\n",  # not a number
    "# HELP a A.\n# TYPE a gauge\na 1",  # no final newline
])
def test_the_parser_refuses_what_prometheus_would(text: str) -> None:
    with pytest.raises(ExpositionError):
        parse_exposition(text)


# -- the agent's own series -------------------------------------------------------------

def config_for(pin_dir: str, dataplane: Dataplane = Dataplane.BPF) -> AgentConfig:
    return AgentConfig(node="n1", datastore_url="file:///nonexistent", dataplane=dataplane,
                       pin_dir=pin_dir)


def test_sync_durations_land_in_their_buckets_by_result_and_trigger() -> None:
    status = AgentStatus()
    for seconds, reasons in ((0.0004, {"resync"}), (0.003, {"cni:web/a", "datastore"}),
                             (0.003, {"cni:web/b"}), (45.0, {"resync"})):
        status.record_failure("boom", seconds, trigger_of(reasons))
    status.record_failure("boom", 0.02)
    exposition = parse_exposition(metrics.render(config_for("/nonexistent"), status.view(),
                                                 []))
    bucket = "sluice_agent_sync_duration_seconds_bucket"
    resync = {"result": "failure", "trigger": "resync"}
    assert exposition.value(bucket, **resync, le="0.001") == 1
    assert exposition.value(bucket, **resync, le="30.0") == 1
    assert exposition.value(bucket, **resync, le="+Inf") == 2
    assert exposition.value("sluice_agent_sync_duration_seconds_sum", **resync) == 45.0004
    endpoint = {"result": "failure", "trigger": "endpoint"}
    assert exposition.value(bucket, **endpoint, le="0.0025") == 0
    assert exposition.value(bucket, **endpoint, le="0.005") == 2
    assert exposition.value("sluice_agent_sync_duration_seconds_count",
                            result="failure", trigger="unknown") == 1
    assert exposition.value("sluice_agent_sync_errors_total") == 5
    assert exposition.value("sluice_agent_reconciles_total", result="failure") == 5
    assert trigger_of({"datastore-resync", "resync"}) == "datastore-resync"
    assert trigger_of(set()) == "unknown"


def test_iptables_mode_and_a_missing_datapath_have_no_datapath_series(pin_dir: str) -> None:
    status = AgentStatus()
    assert metrics.datapath_stats(config_for(pin_dir, Dataplane.IPTABLES), status.view()) \
        is None
    assert metrics.datapath_stats(config_for(pin_dir), status.view()) is None, \
        "an empty pin directory (no reconcile yet) has nothing to read"
    text = metrics.render(config_for(pin_dir), status.view(), [], None)
    parse_exposition(text)
    assert "sluice_datapath" not in text and "sluice_bpf_map" not in text


# -- the datapath's series, from real maps -------------------------------------------------

@pytest.fixture
def node(pin_dir: str) -> Iterator[NodeObject]:
    loaded = NodeObject.load(pin_dir, tunnel_vni=1)
    try:
        yield loaded
    finally:
        loaded.close()


def _fd(pin_dir: str, name: str) -> int:
    return check(lib().bpf_obj_get(os.path.join(pin_dir, name).encode()), f"opening {name}")


def write_percpu(pin_dir: str, name: str, key: bytes, *per_cpu: tuple[int, ...]) -> None:
    """Set a per-CPU entry of u64 counters: PER_CPU[i] on CPU i, zero on the others."""
    words = len(per_cpu[0])
    cpus = possible_cpus()
    values = [*per_cpu, *[(0,) * words] * (cpus - len(per_cpu))]
    raw = b"".join(n.to_bytes(8, "little") for value in values for n in value)
    fd = _fd(pin_dir, name)
    try:
        check(lib().bpf_map_update_elem(fd, key, raw, 0), f"writing {name}")
    finally:
        os.close(fd)


def u32(number: int) -> bytes:
    return number.to_bytes(4, "little")


def fill(pin_dir: str, name: str, key_size: int, value_size: int, count: int, *,
         first: int = 0) -> None:
    """COUNT distinct entries (zero values) in a hash map, in one batch."""
    keys = b"".join((first + i).to_bytes(4, "little") + bytes(key_size - 4) for i in range(count))
    values = bytes(value_size * count)
    written = ctypes.c_uint32(count)
    opts = MapBatchOpts(sz=ctypes.sizeof(MapBatchOpts))
    fd = _fd(pin_dir, name)
    try:
        check(lib().bpf_map_update_batch(fd, keys, values, ctypes.byref(written),
                                         ctypes.byref(opts)), f"filling {name}")
    finally:
        os.close(fd)


def render(pin_dir: str, stats: DatapathStats | None) -> Exposition:
    return parse_exposition(metrics.render(config_for(pin_dir), AgentStatus().view(), [],
                                           stats))


@pytest.mark.root
def test_packets_bytes_verdicts_and_events_summed_over_cpus(pin_dir: str, node: NodeObject
                                                            ) -> None:
    counters = ev.COUNTERS_MAP
    write_percpu(pin_dir, counters, u32(ev.counter_index(ev.Hook.FROM_ENDPOINT, 0)),
                 (3, 300), (2, 200))
    write_percpu(pin_dir, counters, u32(ev.counter_index(ev.Hook.FROM_NETWORK,
                                                         ev.DropReason.POLICY_DENIED)), (4, 240))
    write_percpu(pin_dir, counters, u32(ev.counter_index(ev.Hook.SOCK_CONNECT,
                                                         ev.DropReason.NO_BACKEND)), (1, 0))
    write_percpu(pin_dir, pol.COUNTERS_MAP, u32(pol.CounterReason.DROP_DENIED), (7, 700))
    write_percpu(pin_dir, ev.STATS_MAP, u32(ev.EventStat.SENT), (10,), (5,))
    write_percpu(pin_dir, ev.STATS_MAP, u32(ev.EventStat.LOST_FULL), (1,))

    stats = metrics.datapath_stats(config_for(pin_dir), AgentStatus().view())
    assert stats is not None and stats.problems == ()
    exposition = render(pin_dir, stats)
    packets, nbytes = "sluice_datapath_packets_total", "sluice_datapath_bytes_total"
    forwarded = {"hook": "from_endpoint", "direction": "egress", "verdict": "forwarded",
                 "reason": "none"}
    assert exposition.value(packets, **forwarded) == 5
    assert exposition.value(nbytes, **forwarded) == 500
    denied = {"hook": "from_network", "direction": "ingress", "verdict": "dropped",
              "reason": "policy_denied"}
    assert exposition.value(packets, **denied) == 4
    assert exposition.value(nbytes, **denied) == 240
    assert exposition.value(packets, hook="sock_connect", direction="egress",
                            verdict="dropped", reason="no_backend") == 1
    assert not exposition.series(nbytes, hook="sock_connect"), "sockets have no bytes"
    assert {dict(labels)["hook"] for labels in exposition.series(packets, verdict="forwarded")} \
        == {hook.name.lower() for hook in ev.Hook}, "every hook forwards, from zero"
    assert len(exposition.series(packets, verdict="dropped")) == 2, "drops only when seen"
    assert exposition.value("sluice_policy_verdicts_total", verdict="drop_denied") == 7
    assert exposition.value("sluice_policy_verdicts_total", verdict="pass_new_flow") == 0
    assert exposition.value("sluice_flow_events_total", outcome="sent") == 15
    assert exposition.value("sluice_flow_events_total", outcome="lost_ring_full") == 1
    assert exposition.value("sluice_flow_events_total", outcome="rate_limited") == 0
    assert exposition.value("sluice_flow_events_total", outcome="sampled_out") == 0
    assert exposition.families["sluice_datapath_packets_total"].kind == "counter"
    assert "bpf mode only" in exposition.families["sluice_bpf_map_entries"].help


def plan(service: str, address: str, port: int, scope: FrontendScope,
         *backends: tuple[str, int]) -> ServicePlan:
    return ServicePlan(service, None, Frontend(IP(address), port, "TCP"), scope,
                       tuple(ServiceEndpoint(IP(a), p) for a, p in backends))


@pytest.mark.root
def test_one_selection_series_per_live_backend_named_by_its_service(pin_dir: str,
                                                                    node: NodeObject) -> None:
    api = (("198.18.16.5", 8080), ("198.18.16.6", 8080))
    table = ServiceTable((
        plan("web/api", "198.18.0.11", 30080, FrontendScope.NODE_PORT, *api),
        plan("web/api", "198.18.100.10", 80, FrontendScope.CLUSTER_IP, *api),
        plan("web/db", "fd00:100::10", 5432, FrontendScope.CLUSTER_IP, ("fd00:10:1::7", 5432)),
    ))
    sync_lb(node.lb, lb_state(table))
    ids = {str(backend.addr.to_ip()): int(key.value)
           for key, backend in node.lb.backends.lookup_batch()}
    write_percpu(pin_dir, lb.SELECTIONS_MAP, u32(ids["198.18.16.5"]), (3,), (4,))
    write_percpu(pin_dir, lb.SELECTIONS_MAP, u32(ids["fd00:10:1::7"]), (2,))
    write_percpu(pin_dir, lb.SELECTIONS_MAP, u32(9999), (5,))  # a backend gone: no series

    stats = DatapathReader(pin_dir).read(table)
    assert stats is not None and stats.problems == ()
    selections = render(pin_dir, stats).series("sluice_service_backend_selections_total")
    assert selections == {
        frozenset({"service": "web/api", "frontend": "198.18.100.10:80/TCP",
                   "backend": "198.18.16.5:8080"}.items()): 7,
        frozenset({"service": "web/api", "frontend": "198.18.100.10:80/TCP",
                   "backend": "198.18.16.6:8080"}.items()): 0,
        frozenset({"service": "web/db", "frontend": "[fd00:100::10]:5432/TCP",
                   "backend": "[fd00:10:1::7]:5432"}.items()): 2,
    }
    unnamed = DatapathReader(pin_dir).read(None)
    assert unnamed is not None
    assert {(label.service, label.frontend) for label, _ in unnamed.selections} == {
        ("", "198.18.0.11:30080/TCP"), ("", "[fd00:100::10]:5432/TCP")}, \
        "without the agent's plan: no names, and the lowest frontend"

    reader = DatapathReader(pin_dir)
    assert reader.read(table, generation=1) is not None
    smaller = ServiceTable((plan("web/db", "fd00:100::10", 5432, FrontendScope.CLUSTER_IP,
                                 ("fd00:10:1::7", 5432)),))
    sync_lb(node.lb, lb_state(smaller))
    moved = reader.read(smaller, generation=2)
    assert moved is not None
    assert [(label.backend, count) for label, count in moved.selections] == \
        [("[fd00:10:1::7]:5432", 2)], "the agent wrote: labels made again"



def walk(pin_dir: str, name: str, key_size: int) -> int:
    fd = _fd(pin_dir, name)
    try:
        key, following = ctypes.create_string_buffer(key_size), \
            ctypes.create_string_buffer(key_size)
        count, ret = 0, lib().bpf_map_get_next_key(fd, None, following)
        while ret == 0:
            count += 1
            ctypes.memmove(key, following, key_size)
            ret = lib().bpf_map_get_next_key(fd, key, following)
        return count
    finally:
        os.close(fd)


@pytest.mark.root
def test_map_entries_match_a_walk_of_every_map(pin_dir: str, node: NodeObject) -> None:
    fill(pin_dir, "conntrack", 40, 64, 1000)
    fill(pin_dir, pol.FLOWS_MAP, 40, 40, 300)
    fill(pin_dir, lb.SELECTIONS_MAP, 4, 8 * possible_cpus(), 50, first=1)
    routes = ["198.18.16.0/24", "198.18.17.0/24", "198.18.0.0/15", "198.18.16.128/25",
              "fd00:10:1::/64", "fd00:10:2::/64", "0.0.0.0/0"]
    for cidr in routes:
        node.routes.update(LpmKey.of(NET(cidr)), rt.RouteEntry.of(rt.RouteKind.LOCAL_PODS))
    node.routes.delete(LpmKey.of(NET("198.18.0.0/15")))  # leaves an intermediate node
    for i in range(200):  # prefixes that branch, so the trie holds intermediate nodes
        node.policy.ipcache.update(LpmKey.of(NET(f"10.{i}.{i % 7}.0/24")), pol.IpcacheEntry())

    stats = DatapathReader(pin_dir).read()
    assert stats is not None and stats.problems == ()
    fills = {m.name: m for m in stats.maps}
    assert fills["conntrack"].entries == 1000 and fills["conntrack"].max_entries == 262144
    assert fills[pol.FLOWS_MAP].entries == 300
    assert fills[lb.SELECTIONS_MAP].entries == 50
    assert fills[rt.MAP_NAME].entries == len(routes) - 1
    assert fills[pol.IPCACHE_MAP].entries == 200
    for name, key_size in (("conntrack", 40), (pol.FLOWS_MAP, 40), (rt.MAP_NAME, 20),
                           (pol.IPCACHE_MAP, 20), (lb.SELECTIONS_MAP, 4),
                           (lb.SERVICES_MAP, 24), (pol.POLICY_MAP, 20)):
        assert fills[name].entries == walk(pin_dir, name, key_size), name
    assert ev.COUNTERS_MAP not in fills and ev.EVENTS_MAP not in fills, \
        "arrays are always full and ring buffers hold no entries"
    exposition = render(pin_dir, stats)
    assert exposition.value("sluice_bpf_map_entries", map="conntrack") == 1000
    assert exposition.value("sluice_bpf_map_max_entries", map="conntrack") == 262144
    assert exposition.value("sluice_bpf_map_pressure_ratio", map="conntrack") == \
        pytest.approx(1000 / 262144)
    assert {dict(labels)["map"] for labels in exposition.series("sluice_bpf_map_entries")} \
        >= {"conntrack", "policy_flows", "lb_services", "lb_backends", "lb_maglev", "endpoints",
            "ipcache", "policy", "routes", "lb_affinity", "lb_sock_rev", "lb_selections"}


@pytest.mark.root
def test_maps_only_the_agent_writes_are_counted_again_when_the_generation_moves(
        pin_dir: str, node: NodeObject) -> None:
    reader = DatapathReader(pin_dir)

    def entries(generation: object) -> dict[str, int]:
        stats = reader.read(None, generation)
        assert stats is not None
        return {m.name: m.entries for m in stats.maps}

    assert entries(1)["endpoints"] == 0
    fill(pin_dir, "endpoints", 16, 28, 10)
    fill(pin_dir, "conntrack", 40, 64, 5)
    counted = entries(1)
    assert counted["endpoints"] == 0, "the agent wrote nothing as far as the reader knows"
    assert counted["conntrack"] == 5, "the datapath's own maps are counted every time"
    assert entries(2)["endpoints"] == 10
    assert reader.read(None, None) is not None and entries(None)["endpoints"] == 10


@pytest.mark.root
def test_a_scrape_of_full_maps_stays_well_under_a_second(pin_dir: str, node: NodeObject
                                                        ) -> None:
    """The datapath's own maps full (conntrack, policy flows, affinity, socket reverse
    NAT, 65536 selected backends) and 10000 services x 10 backends: every scrape reads
    the LRU maps and the selections; the services only after the agent wrote them."""
    for name, key_size, value_size, entries in (
            ("conntrack", 40, 64, 262144), (pol.FLOWS_MAP, 40, 40, 262144),
            (lb.AFFINITY_MAP, 16, 16, 65536), (lb.SOCK_REV_MAP, 32, 20, 65536)):
        fill(pin_dir, name, key_size, value_size, entries)
    fill(pin_dir, lb.SELECTIONS_MAP, 4, 8 * possible_cpus(), 65536, first=1)
    services = 10000
    node.lb.backends.update_batch(
        (lb.BackendId(i + 1), lb.LbBackend.of(IP(0xC6120000 + i), 8080, "TCP"))
        for i in range(services * 10))
    frontends = []
    for s in range(services):
        address = IP(0xC6140000 + s)
        frontends.append((lb.LbKey.of(address, 80, "TCP"), lb.LbValue.service(s + 1, 10)))
        frontends += [(lb.LbKey.of(address, 80, "TCP", slot), lb.LbValue.slot(s * 10 + slot))
                      for slot in range(1, 11)]
    node.lb.services.update_batch(frontends)
    reader = DatapathReader(pin_dir)
    config, view = config_for(pin_dir), AgentStatus().view()

    def scrape(generation: object) -> tuple[float, DatapathStats]:
        started = time.monotonic()
        stats = reader.read(None, generation)
        assert stats is not None
        metrics.render(config, view, [], stats)
        return time.monotonic() - started, stats

    first, stats = scrape(1)
    assert stats.problems == () and len(stats.selections) == services * 10
    assert {m.name: m.entries for m in stats.maps}["conntrack"] == 262144
    steady = sorted(scrape(1)[0] for _ in range(3))[1]
    other_write = sorted(scrape(generation)[0] for generation in (2, 3, 4))[1]
    print(f"scrape with full maps: first {first:.3f} s, {steady:.3f} s while the agent "
          f"writes nothing, {other_write:.3f} s after it wrote (not the services)")
    assert steady < 1.0 and other_write < 1.0
    assert first < 3.0
