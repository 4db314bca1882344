"""sync and agent-mem: what the agent costs at scale, bpf against iptables.

sync: node1's agent syncing 10,000 ClusterIP Services of 10 endpoints each from scratch,
then one endpoint change. The objects reach the lab's (file) datastore as one file
written atomically, so each agent sees them in one datastore batch and compiles and
applies them in one reconcile; its log line "reconciled revision N in X ms" gives the
figure. The changed EndpointSlice lives in a file of its own, rewritten per change. CPU
is the agent's /proc/<pid>/stat delta from the write until the agents settled, children
included: iptables-restore runs as the agent's child, so the iptables figure holds it.

sync also syncs, apart, 1,000 Pods on node2 and 1,000 NetworkPolicies selecting them
(peers by label and by CIDR): identities, the ipcache and per-policy compile, one batch.

agent-mem: node1's agent's RSS while the datastore holds those Services and 1,000 Pods
running on node2 (remote pods to node1: policy identities, no local endpoints). The Pods
are objects only, written into the datastore the way the lab writes a running Pod.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sluice.bench.benchlab import BenchLab, resources
from sluice.bench.benchmark import Benchmark
from sluice.bench.context import DATAPLANES, BenchContext, rounds
from sluice.bench.cpuclock import process_cpu_seconds, process_rss_bytes
from sluice.bench.result import BenchRow, Samples, Target, bpf_at_most, ratio_at_most
from sluice.bench.scaleobjects import endpoint_slice, services
from sluice.datastore import to_manifest
from sluice.lab import objects
from sluice.lab.errors import LabError
from sluice.model import Pod

NODE = "node1"
POD_NODE = "node2"
SERVICES = 10_000
QUICK_SERVICES = 1_000
"""--quick syncs a tenth of the Services: the iptables agent alone needs minutes at 10k."""
ENDPOINTS = 10
PODS = 1_000
CHANGED = 0  # the service whose EndpointSlice the one-change figure rewrites
# ClusterIPs given here, far above the lab's allocator (it takes the lowest free from
# 198.19.0.10): allocating 10k addresses through the lab costs O(n^2).
CLUSTER_IP_BASE = int(ipaddress.IPv4Address("198.19.128.0"))
# Remote pod addresses: outside the lab's nodes, pods, services and scale endpoints.
POD_IP_BASE = int(ipaddress.IPv4Address("198.18.64.0"))
POD_APPS = 50  # distinct app labels, so identities are shared as in a real cluster
BATCH_FILE = "zz-bench-scale.json"
CHANGE_FILE = "zz-bench-scale-changed-slice.json"
PODS_FILE = "zz-bench-scale-pods.json"
POLICIES = 1_000
POLICIES_FILE = "zz-bench-scale-policies.json"
MIB = 1 << 20
RECONCILED = re.compile(r"reconciled revision (\d+) in (\d+) ms")
FAILED = re.compile(r"reconcile failed \((\d+) in a row.*")
GIVE_UP_AFTER = 3  # failed reconciles in a row
SETTLE_POLL = 5.0
SETTLE_TIMEOUT = 600.0
SYNC_TOOL = "agent log + /proc/<pid>/stat"


# --- objects ------------------------------------------------------------------------------


def service_count(ctx: BenchContext) -> int:
    return QUICK_SERVICES if ctx.quick else SERVICES


def scale_documents(count: int) -> list[dict[str, Any]]:
    """The namespace, COUNT Services (with clusterIPs) and every EndpointSlice but
    CHANGED's."""
    docs: list[dict[str, Any]] = []
    index = 0
    for doc in services(count, ENDPOINTS):
        if doc["kind"] == "Service":
            doc["spec"]["clusterIP"] = str(ipaddress.IPv4Address(CLUSTER_IP_BASE + index))
            index += 1
        elif doc["kind"] == "EndpointSlice" and doc["metadata"]["name"] == _changed_name():
            continue
        docs.append(doc)
    return docs


def _changed_name() -> str:
    return str(endpoint_slice(CHANGED, ENDPOINTS)["metadata"]["name"])


def pod_documents(lab: BenchLab) -> list[dict[str, Any]]:
    """PODS Pods running on POD_NODE, as the lab writes a running pod's object."""
    node = lab.node(POD_NODE)
    docs: list[dict[str, Any]] = []
    for index in range(PODS):
        spec = {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": f"p{index:04d}", "namespace": "scale",
                             "labels": {"app": f"app{index % POD_APPS}"}},
                "spec": {"nodeName": POD_NODE, "containers": [{"name": "main"}]}}
        pod = Pod.model_validate(spec)
        address = str(ipaddress.IPv4Address(POD_IP_BASE + index))
        docs.append(to_manifest(objects.running(pod, node, [address])))
    return docs


def policy_documents() -> list[dict[str, Any]]:
    """POLICIES NetworkPolicies over the pods of pod_documents: each admits one other app
    and a /28 (outside the lab's addresses) to one port."""
    docs: list[dict[str, Any]] = []
    for index in range(POLICIES):
        cidr = f"198.19.{64 + index // 16}.{(index % 16) * 16}/28"
        docs.append({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": f"np{index:04d}", "namespace": "scale"},
            "spec": {"podSelector": {"matchLabels": {"app": f"app{index % POD_APPS}"}},
                     "policyTypes": ["Ingress"],
                     "ingress": [{"from": [
                         {"podSelector": {"matchLabels": {"app": f"app{(index + 1) % POD_APPS}"}}},
                         {"ipBlock": {"cidr": cidr}}],
                         "ports": [{"protocol": "TCP", "port": 8000 + index % 100}]}]}})
    return docs


def _check(docs: Sequence[dict[str, Any]], label: str) -> None:
    """Validate one object of each kind as a manifest would be (a problem is a bug here)."""
    firsts: dict[str, dict[str, Any]] = {}
    for doc in docs:
        firsts.setdefault(doc["kind"], doc)
    resources(list(firsts.values()), label)


def _write_list(lab: BenchLab, name: str, docs: Sequence[dict[str, Any]]) -> Path:
    """DOCS as one `List` manifest in the lab's datastore directory, in one rename."""
    path = lab.state.paths.datastore / name
    staging = path.with_name(f".{name}.tmp")  # hidden: the datastore skips it
    staging.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": list(docs)}),
                       encoding="utf-8")
    os.replace(staging, path)
    return path


# --- the agent's log ----------------------------------------------------------------------


@dataclass
class AgentWatch:
    """What node1's agent did since `mark`: its reconciles (from the log) and CPU."""

    lab: BenchLab
    pid: int = 0
    log_offset: int = 0
    cpu: float = 0.0
    children: float = 0.0
    reconciles: list[tuple[int, float]] = field(default_factory=list)

    def mark(self) -> None:
        self.pid = self.lab.agent_pid(NODE)
        self.log_offset = self.lab.agent_log(NODE).stat().st_size
        self.cpu = process_cpu_seconds(self.pid)
        self.children = self.cpu - process_cpu_seconds(self.pid, children=False)

    def log_text(self) -> str:
        with self.lab.agent_log(NODE).open("rb") as log:
            log.seek(self.log_offset)
            return log.read().decode(errors="replace")

    def since(self) -> tuple[list[tuple[int, float]], float, float]:
        """(revision, seconds) of each reconcile that changed something, CPU seconds
        (children included) and the children's share, since the mark."""
        cpu = process_cpu_seconds(self.pid)
        children = cpu - process_cpu_seconds(self.pid, children=False)
        text = self.log_text()
        found = [(int(m[1]), int(m[2]) / 1000) for m in RECONCILED.finditer(text)]
        return found, cpu - self.cpu, children - self.children


def _changed(lab: BenchLab, change: Callable[[], object]) -> tuple[float, float, float, int]:
    """Make CHANGE, wait until the agents settled; (seconds of node1's reconciles, CPU
    seconds, children's CPU seconds, how many reconciles)."""
    watch = AgentWatch(lab)
    watch.mark()
    before = lab.agent_revisions()
    change()
    _settle(lab, before, watch)
    found, cpu, children = watch.since()
    if not found:
        raise RuntimeError(f"lab {lab.name}: no reconcile of {NODE} logged a change")
    return sum(seconds for _, seconds in found), cpu, children, len(found)


def _settle(lab: BenchLab, before: dict[str, Any], watch: AgentWatch) -> None:
    """lab.settle, but fail once node1's agent logged GIVE_UP_AFTER failed reconciles in
    a row (one may be transient, e.g. iptables-restore timing out on a busy machine)."""
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while True:
        try:
            lab.settle(before, timeout=SETTLE_POLL)
            return
        except LabError:
            failed = [m for m in FAILED.finditer(watch.log_text())
                      if int(m[1]) >= GIVE_UP_AFTER][:1]
            if failed:
                raise LabError(f"lab {lab.name}: the agent of {NODE}: {failed[0][0]}") from None
            if time.monotonic() > deadline:
                raise


# --- scale up and down --------------------------------------------------------------------


@dataclass
class Scaled:
    lab: BenchLab
    full_sync: tuple[float, float, float, int]
    generation: int = 0

    def change_one(self) -> tuple[float, float]:
        """Move one endpoint of CHANGED's slice; the reconcile's seconds and the agent's
        CPU seconds until settled."""
        self.generation += 1
        slice_ = endpoint_slice(CHANGED, ENDPOINTS, generation=self.generation)
        seconds, cpu, _, _ = _changed(self.lab, lambda: _write_list(self.lab, CHANGE_FILE,
                                                                     [slice_]))
        return seconds, cpu


@contextlib.contextmanager
def scaled(lab: BenchLab, ctx: BenchContext, *, pods: bool = False,
           policies: bool = False, services: bool = True) -> Iterator[Scaled]:
    """The lab with the run's Services (and PODS remote pods, and POLICIES policies over
    them) in its datastore; removed after."""
    datastore = lab.state.paths.datastore
    written = [datastore / name
               for name in (CHANGE_FILE, BATCH_FILE, PODS_FILE, POLICIES_FILE)]
    count = service_count(ctx) if services else 0
    docs = scale_documents(count)
    _check(docs, "bench scale objects")
    pod_docs = pod_documents(lab) if pods else []
    if pod_docs:
        _check(pod_docs, "bench scale pods")
    policy_docs = policy_documents() if policies else []
    if policy_docs:
        _check(policy_docs, "bench scale policies")
    interrupted = False
    try:
        before = lab.agent_revisions()
        _write_list(lab, CHANGE_FILE, [endpoint_slice(CHANGED, ENDPOINTS)])
        lab.settle(before)  # a slice without its Service: nothing to program yet
        ctx.say(f"sync {lab.dataplane}: writing {count} services"
                + (f", {PODS} pods" if pods else "")
                + (f", {POLICIES} policies" if policies else ""))

        def write() -> None:
            _write_list(lab, BATCH_FILE, docs)
            if pod_docs:
                _write_list(lab, PODS_FILE, pod_docs)
            if policy_docs:
                _write_list(lab, POLICIES_FILE, policy_docs)

        yield Scaled(lab, _changed(lab, write))
    except KeyboardInterrupt:
        interrupted = True  # the lab is removed next: no waiting for the removal to sync
        raise
    finally:
        before = lab.agent_revisions()
        removed = False
        for path in written:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed = True
        if removed and not interrupted:
            lab.settle(before)


# --- the benchmarks -----------------------------------------------------------------------


@contextlib.contextmanager
def _failure_noted(ctx: BenchContext, dataplane: str, failures: dict[str, str]
                   ) -> Iterator[None]:
    """A dataplane whose agent cannot sync at this scale is a result, not a crash."""
    try:
        yield
    except (LabError, RuntimeError) as err:  # RuntimeError: nothing to program, no reconcile
        failures[dataplane] = str(err)
        ctx.say(f"{dataplane}: {err}")


def _maybe(values: list[float]) -> Samples | None:
    return Samples.of(values) if values else None


def run_sync(ctx: BenchContext) -> list[BenchRow]:
    full: dict[str, list[float]] = {d: [] for d in DATAPLANES}
    cpu: dict[str, list[float]] = {d: [] for d in DATAPLANES}
    children: dict[str, list[float]] = {d: [] for d in DATAPLANES}
    reconciles: dict[str, list[int]] = {d: [] for d in DATAPLANES}
    change: dict[str, list[float]] = {d: [] for d in DATAPLANES}
    change_cpu: dict[str, list[float]] = {d: [] for d in DATAPLANES}
    policy_sync: dict[str, list[float]] = {d: [] for d in DATAPLANES}
    policy_failures: dict[str, str] = {}  # iptables: remote pods leave node1 nothing to do
    full_rounds = 1 if ctx.quick else 3
    changes = ctx.repeats
    started = time.monotonic()
    failures: dict[str, str] = {}
    for round_, dataplane in rounds(full_rounds):
        lab = ctx.lab(dataplane)
        if dataplane in failures:
            continue
        with _failure_noted(ctx, dataplane, failures), scaled(lab, ctx) as scale:
            seconds, spent, child, count = scale.full_sync
            full[dataplane].append(seconds)
            cpu[dataplane].append(spent)
            children[dataplane].append(child)
            reconciles[dataplane].append(count)
            for _ in range(changes):
                one, spent_one = scale.change_one()
                change[dataplane].append(one * 1000)
                change_cpu[dataplane].append(spent_one)
        if dataplane in failures:
            continue
        with _failure_noted(ctx, dataplane, policy_failures), \
                scaled(lab, ctx, pods=True, policies=True, services=False) as with_policies:
            policy_sync[dataplane].append(with_policies.full_sync[0])
            ctx.say(f"sync: round {round_ + 1} {dataplane}: {PODS} pods x {POLICIES} "
                    f"policies full sync {policy_sync[dataplane][-1]:.2f} s")
        ctx.say(f"sync: round {round_ + 1} {dataplane}: full sync {seconds:.2f} s "
                f"({count} reconciles), CPU {spent:.2f} s (children {child:.2f} s), one "
                f"change {', '.join(f'{v:.0f}' for v in change[dataplane][-changes:])} ms (CPU "
                f"{', '.join(f'{v:.2f}' for v in change_cpu[dataplane][-changes:])} s)")
    ctx.say(f"sync: done in {time.monotonic() - started:.0f} s")
    count = service_count(ctx)
    objects_text = (f"{count} ClusterIP Services x {ENDPOINTS} endpoints, node {NODE}, "
                    "one datastore batch")
    extra = {"reconciles": reconciles, "childrenCpuSeconds": children}
    note = "; ".join(f"{d} did not sync: {why}" for d, why in failures.items())
    if "bpf" in failures:
        raise LabError(note)
    return [
        BenchRow("sync", f"full sync, {count} services", "time", "s", "lower",
                 Samples.of(full["bpf"]),
                 _maybe(full["iptables"]), SYNC_TOOL,
                 f"{objects_text}; duration of the agent's reconcile(s) (compile + apply); "
                 f"{full_rounds} round(s)",
                 bpf_at_most(1, "s"), note=note, extra=extra),
        BenchRow("sync", f"one endpoint change, {count} services", "time", "ms", "lower",
                 Samples.of(change["bpf"]), _maybe(change["iptables"]), SYNC_TOOL,
                 f"one EndpointSlice's first endpoint moved, {changes} changes per round, "
                 f"at {count} Services", bpf_at_most(10, "ms"), note=note,
                 extra={"cpuSeconds": change_cpu}),
        BenchRow("sync", f"full sync, {PODS} pods x {POLICIES} policies", "time", "s", "lower",
                 Samples.of(policy_sync["bpf"]) if policy_sync["bpf"] else Samples.of([0.0]),
                 _maybe(policy_sync["iptables"]), SYNC_TOOL,
                 f"{PODS} Pods on {POD_NODE} ({POD_APPS} label sets) and {POLICIES} "
                 "NetworkPolicies (a pod selector and a /28 each) in one datastore batch; "
                 f"duration of {NODE}'s reconcile(s); no pod is local to {NODE}, so this is "
                 "identities, ipcache and policy compile, not per-endpoint verdicts", None,
                 note="; ".join(f"{d}: {why}" for d, why in policy_failures.items())),
        BenchRow("sync", f"full sync CPU, {count} services", "CPU", "s", "lower",
                 Samples.of(cpu["bpf"]),
                 _maybe(cpu["iptables"]), SYNC_TOOL,
                 f"{objects_text}; agent CPU (user+system) from the write until settled, "
                 "children (iptables-restore) included; datastore parsing included",
                 ratio_at_most(0.2), note=note, extra={"childrenCpuSeconds": children}),
    ]


def run_agent_mem(ctx: BenchContext) -> list[BenchRow]:
    rss: dict[str, list[float]] = {d: [] for d in DATAPLANES}
    idle: dict[str, float] = {}
    failures: dict[str, str] = {}
    for _, dataplane in rounds(1):
        lab = ctx.lab(dataplane)
        pid = lab.agent_pid(NODE)
        idle[dataplane] = process_rss_bytes(pid) / MIB
        with _failure_noted(ctx, dataplane, failures), scaled(lab, ctx, pods=True):
            for sample in range(ctx.repeats):
                if sample:
                    time.sleep(0.5)
                rss[dataplane].append(process_rss_bytes(pid) / MIB)
        if dataplane in failures:
            continue
        ctx.say(f"agent-mem: {dataplane}: RSS {idle[dataplane]:.0f} MiB before, "
                f"{rss[dataplane][-1]:.0f} MiB at {service_count(ctx)} services and {PODS} "
                "pods")
    note = "; ".join(f"{d} did not sync: {why}" for d, why in failures.items())
    if "bpf" in failures:
        raise LabError(note)
    return [BenchRow(
        "agent-mem", f"{service_count(ctx)} services, {PODS} pods", "RSS", "MiB", "lower",
        Samples.of(rss["bpf"]), _maybe(rss["iptables"]), "/proc/<pid>/status VmRSS",
        f"agent of {NODE} after syncing {service_count(ctx)} ClusterIP Services x {ENDPOINTS} "
        f"endpoints and {PODS} Pods on {POD_NODE} ({POD_APPS} label sets); "
        f"{ctx.repeats} samples 0.5 s apart",
        Target("bpf <= 150 MiB", lambda row: row.bpf.median <= 150), note=note,
        extra={"idleRssMiB": idle})]


BENCHMARKS = [
    Benchmark("sync", "agent full sync of 10k services, one endpoint change, agent CPU",
              run_sync),
    Benchmark("agent-mem", "agent RSS at 10k services and 1k pods", run_agent_mem),
]
