"""The lab's state directory and its state.json: what `down`, `get` and `probe` read.

    /run/sluice/labs/<lab>/
      state.json            LabState (below), replaced atomically after every change
      .lock                 flock'ed by commands that change the lab
      datastore/            the file:// datastore every agent of the lab watches
      etcd/, etcd.log       with --datastore etcd: the data directory and log of the lab's
                            etcd (instead of datastore/)
      nodes/<node>/cni/     the CNI stateDir of the node (IPAM, endpoint records)
      nodes/<node>/agent.log
      pods/<ns>_<pod>.log   the pod server's output

The plan (namespaces, addresses, CIDRs, pin dirs, cgroups) is a pure function of the lab
name and options (`sluice.lab.plan`); it is recomputed on load, and written under
"topology" only for people and tools reading the file. What the plan cannot know is the
state proper: the processes started (with their /proc start times, so a reused PID is
never signalled) and the pods.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TypeAlias, cast

from sluice import filelock
from sluice.lab import names
from sluice.lab.errors import LabError
from sluice.lab.plan import LabOptions, LabPlan, etcd_endpoint, plan_lab

STATE_VERSION = 1
LOCK_TIMEOUT = 60.0
Phase: TypeAlias = Literal["creating", "ready"]


@dataclass(frozen=True)
class LabPaths:
    root: Path
    etcd_endpoint: str | None = None
    """HOST:PORT of the lab's etcd (in the underlay namespace); None for a file datastore."""

    @classmethod
    def of(cls, lab: str, etcd_endpoint: str | None = None) -> LabPaths:
        return cls(names.state_dir(lab), etcd_endpoint)

    @property
    def state_file(self) -> Path:
        return self.root / "state.json"

    @property
    def lock_file(self) -> Path:
        return self.root / ".lock"

    @property
    def datastore(self) -> Path:
        return self.root / "datastore"

    @property
    def datastore_url(self) -> str:
        """The lab's datastore as commands on this host open it (an etcd from inside the
        underlay namespace, where it listens)."""
        if self.etcd_endpoint is None:
            return f"file://{self.datastore}"
        return f"{self.agent_datastore_url}?netns={names.underlay_netns(self.root.name)}"

    @property
    def agent_datastore_url(self) -> str:
        """The lab's datastore as the agents open it, from their node namespaces."""
        if self.etcd_endpoint is None:
            return f"file://{self.datastore}"
        return f"etcd://{self.etcd_endpoint}"

    @property
    def etcd_data(self) -> Path:
        return self.root / "etcd"

    @property
    def etcd_log(self) -> Path:
        return self.root / "etcd.log"

    def node_dir(self, node: str) -> Path:
        return self.root / "nodes" / node

    def cni_state_dir(self, node: str) -> Path:
        return self.node_dir(node) / "cni"

    def agent_log(self, node: str) -> Path:
        return self.node_dir(node) / "agent.log"

    def pod_log(self, namespace: str, pod: str) -> Path:
        return self.root / "pods" / f"{names.pod_slug(namespace, pod)}.log"


@dataclass(frozen=True)
class ProcessRecord:
    """A process the lab started: PID plus start time (clock ticks after boot)."""

    pid: int
    start_time: int
    role: str
    log: str


@dataclass(frozen=True)
class PortSpec:
    port: int
    protocol: str

    def __str__(self) -> str:
        return f"{self.port}/{self.protocol}"


@dataclass
class PodRecord:
    namespace: str
    name: str
    node: str
    host_network: bool
    netns: str
    """The namespace the pod's server runs in: its own, or the node's with hostNetwork."""
    container_id: str | None
    """CNI_CONTAINERID; None for hostNetwork pods, which CNI never saw."""
    ips: list[str]
    ports: list[PortSpec]
    cgroup: str
    log: str
    server: ProcessRecord | None = None

    @property
    def key(self) -> str:
        return pod_key(self.namespace, self.name)


def pod_key(namespace: str, name: str) -> str:
    return f"{namespace}/{name}"


@dataclass
class LabState:
    name: str
    options: LabOptions
    created_at: str
    phase: Phase = "creating"
    agents: dict[str, ProcessRecord] = field(default_factory=dict)
    pods: dict[str, PodRecord] = field(default_factory=dict)
    etcd: ProcessRecord | None = None

    @property
    def plan(self) -> LabPlan:
        return plan_lab(self.name, self.options)

    @property
    def paths(self) -> LabPaths:
        if self.options.datastore == "etcd":
            return LabPaths.of(self.name, etcd_endpoint(self.options))
        return LabPaths.of(self.name)

    def processes(self) -> list[ProcessRecord]:
        """Every process the lab started: pod servers first, then agents."""
        servers = [pod.server for pod in self.pods.values() if pod.server is not None]
        etcd = [self.etcd] if self.etcd is not None else []
        return servers + list(self.agents.values()) + etcd

    def to_json(self) -> str:
        """The state, plus the plan it implies under "topology" (for people and tools
        reading the file; `from_json` recomputes the plan from the options)."""
        doc = {"version": STATE_VERSION, **asdict(self), "topology": _topology(self.plan)}
        return json.dumps(doc, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> LabState:
        doc = json.loads(text)
        if not isinstance(doc, dict) or doc.get("version") != STATE_VERSION:
            raise ValueError(f"not a version {STATE_VERSION} lab state")
        pods = {
            key: PodRecord(
                **{**raw, "ports": [PortSpec(**p) for p in raw["ports"]],
                   "server": _process(raw.get("server"))}
            )
            for key, raw in doc["pods"].items()
        }
        agents = {node: _process(raw) for node, raw in doc["agents"].items()}
        return cls(
            name=doc["name"],
            options=LabOptions(**doc["options"]),
            created_at=doc["created_at"],
            phase=doc["phase"],
            agents={node: record for node, record in agents.items() if record is not None},
            pods=pods,
            etcd=_process(doc.get("etcd")),
        )


def _topology(plan: LabPlan) -> dict[str, Any]:
    return {
        "underlay": {"netns": plan.underlay_netns},
        "external": {"netns": plan.external.netns, "addresses": list(plan.external.addresses),
                     "routes": [{"dst": cidr, "via": via} for cidr, via in plan.external.routes]},
        "nodes": [
            {"name": node.name, "netns": node.netns, "internalIPs": list(node.addresses),
             "podCIDRs": list(node.pod_cidrs), "pinDir": node.pin_dir, "cgroup": node.cgroup,
             "uplinkRoutes": list(node.uplink_routes)}
            for node in plan.nodes
        ],
    }


def _process(raw: Any) -> ProcessRecord | None:
    return None if raw is None else ProcessRecord(**cast("dict[str, Any]", raw))


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def new_state(name: str, options: LabOptions) -> LabState:
    return LabState(name=name, options=options, created_at=now())


def save(state: LabState) -> None:
    """Write state.json atomically (temporary file in the same directory, then rename)."""
    path = state.paths.state_file
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".state-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(state.to_json())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def load(lab: str) -> LabState:
    """The state of lab LAB; LabError when there is no such lab or its state is unreadable."""
    names.check_lab_name(lab)
    path = LabPaths.of(lab).state_file
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LabError(
            f"no lab named {lab!r} ({path} does not exist); "
            f"start one with: sluice lab up --name {lab}"
        ) from None
    try:
        return LabState.from_json(text)
    except (ValueError, KeyError, TypeError) as err:
        raise LabError(
            f"{path} is unreadable ({err}); remove the lab with: sluice lab down --name {lab}"
        ) from None


def load_ready(lab: str) -> LabState:
    state = load(lab)
    if state.phase != "ready":
        raise LabError(
            f"lab {lab!r} is still being created (or its creation was interrupted); "
            f"wait, or remove it with: sluice lab down --name {lab}"
        )
    return state


@contextlib.contextmanager
def locked(lab: str, timeout: float = LOCK_TIMEOUT) -> Iterator[None]:
    """Hold the lab's lock (an flock on <state dir>/.lock) for the body.

    Commands that change a lab take it, so two `apply`s never interleave. Without a state
    directory there is nothing to lock and the body runs unlocked.
    """
    path = LabPaths.of(lab).lock_file
    if not path.parent.is_dir():
        yield
        return
    try:
        with filelock.exclusive(path, timeout):
            yield
    except filelock.LockBusyError:
        raise LabError(f"lab {lab!r} is busy: another sluice command held {path} "
                       f"for {timeout:.0f}s") from None
