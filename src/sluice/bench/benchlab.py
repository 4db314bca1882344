"""The lab every traffic benchmark runs on, one per dataplane, built the same way.

Layout (per dataplane, IPv4, VXLAN unless --routing native):
    node1: pod bench/client, pod bench/local      node2: pod bench/remote
    external: outside the cluster, on the underlay
    Service bench/remote (NodePort): the remote pod's benchmark ports
    Service bench/local (ClusterIP): the local pod's benchmark ports
Pods declare only PODSERVER_PORT (the lab's own answering server); benchmark servers
(sockperf, iperf3, nginx) are started on the other ports by the benchmarks themselves.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sluice import cgroups, netns
from sluice.apply import xtables
from sluice.datastore.fastparse import parse_faultless
from sluice.lab import agents, cleanup, lifecycle, names, procs
from sluice.lab.errors import LabError
from sluice.lab.manifests import apply_resources, delete_resources
from sluice.lab.plan import LabOptions, NodePlan
from sluice.lab.state import LabState, ProcessRecord, load_ready, locked, pod_key
from sluice.lab.targets import Place, resolve_destination, resolve_place
from sluice.model import Resource
from sluice.model.loader import parse_text

NAMESPACE = "bench"
CLIENT = "bench/client"
LOCAL = "bench/local"
REMOTE = "bench/remote"
PODSERVER_PORT = 9000
SOCKPERF_PORT = 11111
IPERF_PORT = 5201
HTTP_PORT = 8080
NODE_PORTS = {SOCKPERF_PORT: 31111, IPERF_PORT: 31201, HTTP_PORT: 31080}
BENCH_PORTS = (SOCKPERF_PORT, IPERF_PORT, HTTP_PORT)

SETTLE_TIMEOUT = 300.0
SETTLE_QUIET = 1.0
AGENT_POLL = 0.2
RUN_TIMEOUT = 120.0


def _pod(name: str, node: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"app": name}},
            "spec": {"nodeName": node, "containers": [{
                "name": "main", "ports": [{"containerPort": PODSERVER_PORT,
                                           "protocol": "TCP"}]}]}}


def _service(name: str, node_ports: bool) -> dict[str, Any]:
    ports = []
    for port in BENCH_PORTS:
        entry: dict[str, Any] = {"name": f"p{port}", "port": port, "targetPort": port,
                                 "protocol": "TCP"}
        if node_ports:
            entry["nodePort"] = NODE_PORTS[port]
        ports.append(entry)
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": {"type": "NodePort" if node_ports else "ClusterIP",
                     "selector": {"app": name}, "ports": ports}}


def topology() -> list[dict[str, Any]]:
    return [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
            _pod("client", "node1"), _pod("local", "node1"), _pod("remote", "node2"),
            _service("remote", node_ports=True), _service("local", node_ports=False)]


def resources(docs: Sequence[Mapping[str, Any]], label: str) -> list[Resource]:
    """DOCS validated as a manifest would be; a problem is a bug in the benchmark."""
    fast = parse_faultless(json.dumps({"apiVersion": "v1", "kind": "List",
                                       "items": list(docs)}), f"{label}.json")
    if fast is not None:
        return fast
    parsed = parse_text(yaml.safe_dump_all(list(docs), sort_keys=False), label)
    if not parsed.ok:
        raise LabError(f"{label}: " + "; ".join(str(p) for p in parsed.problems))
    return list(parsed.resources)


def _quiet(_: str) -> None:
    pass


@dataclass
class Background:
    """A process a benchmark started in the lab; stopped by PID when done."""

    record: ProcessRecord

    @property
    def pid(self) -> int:
        return self.record.pid

    def running(self) -> bool:
        return procs.is_running(self.record)

    def log(self) -> str:
        return Path(self.record.log).read_text(encoding="utf-8", errors="replace")

    def stop(self) -> None:
        procs.stop([self.record])


@dataclass
class BenchLab:
    """One running lab of one dataplane, and what benchmarks need from it."""

    name: str
    dataplane: str
    workdir: Path
    state: LabState
    _started: list[Background] = field(default_factory=list)

    @classmethod
    def up(cls, dataplane: str, workdir: Path, *, routing: str = "vxlan",
           iptables_backend: str = "system",
           extra: Sequence[Mapping[str, Any]] = ()) -> BenchLab:
        name = f"bn{dataplane[0]}-{os.getpid() % 1000}{secrets.token_hex(2)}"
        options = LabOptions(nodes=2, dataplane=dataplane,  # type: ignore[arg-type]
                             routing=routing, ip_family="ipv4",  # type: ignore[arg-type]
                             iptables_backend=iptables_backend)
        state = lifecycle.up(name, options, resources([*topology(), *extra], "bench topology"),
                             _quiet)
        lab = cls(name, dataplane, workdir / name, state)
        lab.workdir.mkdir(parents=True, exist_ok=True)
        return lab

    def down(self) -> list[str]:
        for process in self._started:
            with contextlib.suppress(OSError):
                process.stop()
        return cleanup.remove_lab(self.name).problems

    # places and addresses

    def place(self, text: str) -> Place:
        """NS/POD, node/NODE or external (see `sluice lab exec`)."""
        return resolve_place(self.state, text)

    def iptables(self, version: int = 4) -> str:
        """The iptables command this lab's agents use."""
        return xtables.command(xtables.Backend(self.state.options.iptables_backend), version)

    def node(self, name: str) -> NodePlan:
        return self.state.plan.node(name)

    def pod_ip(self, pod: str) -> str:
        record = self.state.pods[pod_key(*pod.split("/", 1))]
        return record.ips[0]

    def node_ip(self, node: str) -> str:
        return self.node(node).addresses[0]

    def service_ip(self, service: str) -> str:
        """The clusterIP the datastore holds for NS/NAME."""
        with self.locked_state() as state:
            return resolve_destination(state, f"svc/{service}", 4, 1).address

    def agent_pid(self, node: str) -> int:
        record = self.state.agents.get(node)
        if record is None or not procs.is_running(record):
            raise LabError(f"lab {self.name} has no running agent on {node}")
        return record.pid

    def pin_dir(self, node: str) -> str:
        return str(names.pin_dir(self.name, node))

    def agent_log(self, node: str) -> Path:
        return self.state.paths.agent_log(node)

    # processes

    def _entered(self, place: str, argv: Sequence[str], cpu: int | None) -> tuple[list[str], str]:
        """(ARGV entering PLACE's namespace, pinned to CPU when given; PLACE's cgroup)."""
        where = self.place(place)
        pinned = ["taskset", "-c", str(cpu), *argv] if cpu is not None else list(argv)
        return (["nsenter", f"--net={netns.netns_path(where.netns)}", "--", *pinned],
                cgroups.create(where.cgroup))

    def command(self, place: str, argv: Sequence[str], cpu: int | None = None) -> list[str]:
        """ARGV run in PLACE's namespace and cgroup, pinned to CPU when given."""
        entered, cgroup = self._entered(place, argv, cpu)
        return procs.in_cgroup(cgroup, entered)

    def run(self, place: str, argv: Sequence[str], *, cpu: int | None = None,
            timeout: float = RUN_TIMEOUT, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ARGV in PLACE to completion and capture its output."""
        proc = subprocess.run(self.command(place, argv, cpu), capture_output=True, text=True,
                              timeout=timeout, check=False)
        if check and proc.returncode != 0:
            raise LabError(f"{' '.join(argv)} in {place} of lab {self.name} exited "
                           f"{proc.returncode}: {proc.stderr.strip() or proc.stdout.strip()}")
        return proc

    def start(self, place: str, argv: Sequence[str], *, cpu: int | None = None,
              role: str | None = None, ready_port: int | None = None) -> Background:
        """Start ARGV in PLACE in the background (stopped by `down` at the latest). With
        READY_PORT, wait until something listens on that TCP port in PLACE."""
        role = role or f"bench {argv[0]} in {place}"
        log = self.workdir / f"{role.replace(' ', '_').replace('/', '_')}.log"
        entered, cgroup = self._entered(place, argv, cpu)
        record = procs.spawn(entered, role=role, log=log, cgroup_path=cgroup)
        process = Background(record)
        self._started.append(process)
        if ready_port is not None:
            self.wait_listening(place, ready_port, process)
        return process

    @contextlib.contextmanager
    def running(self, place: str, argv: Sequence[str], *, cpu: int | None = None,
                ready_port: int | None = None) -> Iterator[Background]:
        process = self.start(place, argv, cpu=cpu, ready_port=ready_port)
        try:
            yield process
        finally:
            process.stop()
            self._started.remove(process)

    def wait_listening(self, place: str, port: int, process: Background,
                       timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            listening = self.run(place, ["ss", "-Htln", f"sport = :{port}"], check=False)
            if listening.stdout.strip():
                return
            if not process.running():
                raise LabError(f"{process.record.role} exited: {process.log()[-500:]}")
            time.sleep(0.05)
        raise LabError(f"nothing listens on port {port} in {place} after {timeout:.0f} s")

    # objects

    def apply(self, docs: Sequence[Mapping[str, Any]], *, settle: bool = True) -> None:
        self._change(docs, "apply", settle)

    def delete(self, docs: Sequence[Mapping[str, Any]], *, settle: bool = True) -> None:
        self._change(docs, "delete", settle)

    def _change(self, docs: Sequence[Mapping[str, Any]], how: str, settle: bool) -> None:
        before = self.agent_revisions()
        objects = resources(docs, f"bench {how}")
        with locked(self.name):
            state = load_ready(self.name)
            if how == "apply":
                apply_resources(state, objects, _quiet)
            else:
                delete_resources(state, objects, _quiet, ignore_not_found=True)
            self.state = state
        if settle:
            self.settle(before)

    @contextlib.contextmanager
    def locked_state(self) -> Iterator[LabState]:
        with locked(self.name):
            yield load_ready(self.name)

    def agent_states(self) -> dict[str, dict[str, Any] | None]:
        docs: dict[str, dict[str, Any] | None] = {}
        for node in self.state.plan.nodes:
            answer = agents.http_get(node, "/state", 5.0)
            docs[node.name] = json.loads(answer[1]) if answer and answer[0] == 200 else None
        return docs

    def agent_revisions(self) -> dict[str, Any]:
        return {node: doc.get("revision") if doc else None
                for node, doc in self.agent_states().items()}

    def settle(self, before: Mapping[str, Any], timeout: float = SETTLE_TIMEOUT) -> None:
        """Wait until every agent has reconciled a revision other than BEFORE's and then
        stayed on it for SETTLE_QUIET seconds (a large apply may land in several polls)."""
        deadline = time.monotonic() + timeout
        last: dict[str, Any] | None = None
        quiet_since = time.monotonic()
        while time.monotonic() < deadline:
            now = self.agent_revisions()
            moved = all(now[n] is not None and now[n] != before.get(n) for n in now)
            if now != last:
                last, quiet_since = now, time.monotonic()
            elif moved and time.monotonic() - quiet_since >= SETTLE_QUIET:
                return
            time.sleep(AGENT_POLL)
        raise LabError(f"lab {self.name}: agents did not settle within {timeout:.0f} s "
                       f"(revisions before {dict(before)}, now {last})")
