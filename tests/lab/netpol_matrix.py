"""NetworkPolicy conformance in the lab: the topology of examples/lab-netpol.yaml, expected
reachability matrices like upstream's netpol e2e (Reachability, Peer, AllowLoopback), and
the harness that applies a case's policies with `sluice lab apply`, probes every pair of
pods at once and compares.

A matrix is 9x9: rows are the client pods, columns the server pods, True is allowed. A
probe is allowed when it connected (and then the column's pod must be the one that
answered); anything else (refused, timeout, error) counts as denied. Self pairs never
leave the pod, so they are always expected allowed whatever a case says (upstream's
AllowLoopback).
"""

from __future__ import annotations

import contextlib
import copy
import io
import ipaddress
import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

import yaml

from sluice.cli.main import main as cli_main
from sluice.datastore import open_datastore
from sluice.lab import agents
from sluice.lab.probe import Outcome, Probe
from sluice.lab.state import LabState
from sluice.lab.targets import Destination, Place, resolve_destination, resolve_place
from tests.lab.labfixture import Lab, write_manifest

MANIFEST = Path(__file__).resolve().parents[2] / "examples" / "lab-netpol.yaml"
NAMESPACES = ("x", "y", "z")
POD_NAMES = ("a", "b", "c")
PODS = tuple(f"{namespace}/{pod}" for namespace in NAMESPACES for pod in POD_NAMES)
NODE_OF = {"a": "node1", "b": "node2", "c": "node1"}
"""Where examples/lab-netpol.yaml puts each pod name (in every namespace)."""
PROBE_TIMEOUT = 0.6
AGENT_POLL = 0.05
AGENT_HTTP_TIMEOUT = 1.0
AGENT_LOG_LINES = 4
ENFORCEMENT_WAIT = 5.0
"""How long a check probes, round after round, until the matrix is the expected one:
policies reach the datapaths asynchronously, through each node's agent."""

MAX_DETAILS = 20
"""Wrong pairs described one by one in a failure (the grids show them all)."""

Pair: TypeAlias = tuple[str, str]
Manifest: TypeAlias = dict[str, Any]


@dataclass(frozen=True)
class Peer:
    """Pods by namespace and name; an empty field matches every namespace or name."""

    namespace: str = ""
    pod: str = ""

    def matches(self, pod: str) -> bool:
        namespace, name = pod.split("/")
        return self.namespace in ("", namespace) and self.pod in ("", name)


@dataclass(frozen=True)
class Reachability:
    """An expected matrix. Immutable: each expect_* returns a new matrix with the cells
    changed, so cases chain them and share matrices safely."""

    cells: Mapping[Pair, bool]

    @classmethod
    def every_pair(cls, allowed: bool) -> Reachability:
        return cls({(src, dst): allowed for src in PODS for dst in PODS})

    def expect(self, source: str, destination: str, allowed: bool) -> Reachability:
        if (source, destination) not in self.cells:
            raise KeyError(f"no pair {source} -> {destination} in {PODS}")
        return Reachability({**self.cells, (source, destination): allowed})

    def expect_peer(self, source: Peer, destination: Peer, allowed: bool) -> Reachability:
        return Reachability({
            (src, dst): allowed if source.matches(src) and destination.matches(dst) else was
            for (src, dst), was in self.cells.items()})

    def expect_all_ingress(self, pod: str, allowed: bool) -> Reachability:
        return self.expect_peer(Peer(), _exact(pod), allowed)

    def expect_all_egress(self, pod: str, allowed: bool) -> Reachability:
        return self.expect_peer(_exact(pod), Peer(), allowed)

    def allowed(self, pair: Pair) -> bool:
        """The cell, with loopback: a pod always reaches itself."""
        return pair[0] == pair[1] or self.cells[pair]


def _exact(pod: str) -> Peer:
    namespace, name = pod.split("/")
    return Peer(namespace, name)


def all_allowed() -> Reachability:
    return Reachability.every_pair(True)


@dataclass(frozen=True)
class Check:
    """One probe of every pair: PROTOCOL to PORT over IPv FAMILY; the columns named in
    VIA_SERVICE are probed through that target (e.g. {"x/a": "svc/x/s-a"}) instead of the
    pod's own address (the answering pod must still be that column's pod)."""

    expected: Reachability
    port: int = 80
    protocol: str = "TCP"
    family: int = 4
    via_service: Mapping[str, str] = field(default_factory=dict)

    @property
    def label(self) -> str:
        via = "".join(f", column {pod} through {target}"
                      for pod, target in self.via_service.items())
        return f"{self.protocol}/{self.port} IPv{self.family}{via}"


@dataclass(frozen=True)
class PodCIDR:
    """In a policy: the network of PREFIX bits holding POD's address of FAMILY (a /32 or
    /128 by default), filled in when the case is applied."""

    pod: str
    prefix: int | None = None
    family: int = 4


@dataclass(frozen=True)
class Relabel:
    """A topology object of examples/lab-netpol.yaml (kind Namespace or Pod, NAME "z" or
    "x/a") applied with LABELS instead of its own; restored after the case."""

    kind: str
    name: str
    labels: Mapping[str, str]


@dataclass(frozen=True)
class Step:
    """Apply (policies, relabelled objects), delete (policies applied earlier in the case,
    by "namespace/name"), then every check must come out as expected."""

    checks: tuple[Check, ...]
    apply: tuple[Manifest | Relabel, ...] = ()
    delete: tuple[str, ...] = ()
    says: str = ""


@dataclass(frozen=True)
class Case:
    name: str
    source: str
    """Where the expected behaviour is documented (upstream e2e test, Kubernetes docs)."""
    steps: tuple[Step, ...]

    def __repr__(self) -> str:
        return f"Case({self.name!r})"


@dataclass(frozen=True)
class Observation:
    address: str
    outcome: Outcome
    expected_peer: str

    @property
    def allowed(self) -> bool:
        return self.outcome.result == "connected"

    @property
    def wrong_peer(self) -> bool:
        return self.allowed and self.outcome.peer != self.expected_peer

    def describe(self) -> str:
        outcome = self.outcome
        text: str = outcome.result
        if outcome.peer:
            text += f", answered by {outcome.peer}"
        if outcome.error:
            text += f" ({outcome.error})"
        return text


def _cell_ok(check: Check, pair: Pair, seen: Observation) -> bool:
    return seen.allowed == check.expected.allowed(pair) and not seen.wrong_peer


def grid(title: str, cell: Callable[[Pair], str]) -> str:
    """A 9x9 grid: rows from, columns to."""
    corner = "from\\to"
    width = max(len(pod) for pod in PODS) + 1
    lines = [title, corner.ljust(len(corner) + 1)
             + "".join(pod.ljust(width) for pod in PODS).rstrip()]
    lines += [src.ljust(len(corner) + 1) + "".join(cell((src, dst)).ljust(width)
                                                   for dst in PODS).rstrip()
              for src in PODS]
    return "\n".join(lines)


def mismatch_report(check: Check, observed: Mapping[Pair, Observation]) -> str:
    wrong = [pair for pair in observed if not _cell_ok(check, pair, observed[pair])]

    def expected(pair: Pair) -> str:
        return " ." if check.expected.allowed(pair) else " X"

    def seen(pair: Pair) -> str:
        mark = " ." if observed[pair].allowed else " X"
        if observed[pair].wrong_peer:
            return mark + "!"
        return mark + ("*" if pair in wrong else "")

    details = [f"  {src} -> {dst} ({observed[(src, dst)].address}): expected "
               f"{'allowed' if check.expected.allowed((src, dst)) else 'denied'}, got "
               f"{observed[(src, dst)].describe()}" for src, dst in wrong[:MAX_DETAILS]]
    if len(wrong) > MAX_DETAILS:
        details.append(f"  ... and {len(wrong) - MAX_DETAILS} more")
    return "\n".join([
        f"{len(wrong)} of {len(observed)} pairs wrong ('.' allowed, 'X' denied, "
        f"'*' wrong, '!' answered by another pod):",
        grid("expected:", expected), grid("observed:", seen), "wrong pairs:", *details])


@dataclass
class Conformance:
    """The harness for one running lab with the examples/lab-netpol.yaml topology."""

    lab: Lab
    workdir: Path
    topology: list[Manifest] = field(default_factory=list, repr=False)
    active: dict[str, Manifest] = field(default_factory=dict, repr=False)
    """Policies applied by the running case, by "namespace/name"."""
    touched: dict[tuple[str, str], Manifest] = field(default_factory=dict, repr=False)
    """Topology objects the running case relabelled: their own manifests, to restore."""
    relabels: dict[tuple[str, str], Mapping[str, str]] = field(default_factory=dict,
                                                                repr=False)
    """The labels the running case gave them."""
    files: int = field(default=0, repr=False)
    dirty: bool = False
    changed_at: float = field(default=0.0, repr=False)
    """When the last `lab apply` or `lab delete` returned (or the harness was made):
    enforcement is waited for from then on."""
    state: LabState = field(init=False, repr=False)

    def __post_init__(self) -> None:
        with MANIFEST.open(encoding="utf-8") as stream:
            self.topology = [doc for doc in yaml.safe_load_all(stream) if doc]
        self.state = self.lab.state()
        self.changed_at = time.monotonic()

    # Running cases.

    def run(self, case: Case) -> None:
        """Run CASE, then remove what it applied and wait for the all-allowed matrix."""
        __tracebackhide__ = True
        if self.dirty:  # the last restore failed: try again, with a fresh wait
            self.changed_at = time.monotonic()
            self.restore_baseline()
        self.dirty = True
        failure: AssertionError | None = None
        try:
            for index, step in enumerate(case.steps, 1):
                self._change(step)
                for check in step.checks:
                    self.expect(check, f"case {case.name} ({case.source}), step {index}/"
                                       f"{len(case.steps)} {step.says}".rstrip())
        except AssertionError as err:
            failure = err
        try:
            self.restore_baseline()
        except AssertionError as err:
            if failure is None:
                raise
            failure.add_note(f"and restoring the all-allowed baseline after it failed: {err}")
        if failure is not None:
            raise failure

    def restore_baseline(self) -> None:
        """Delete every policy of the running case, restore relabelled objects, check no
        NetworkPolicy is left in the datastore, and wait for the all-allowed matrix."""
        if self.active:
            self._lab_change("delete", self._write("delete", self.active.values()),
                             "--ignore-not-found")
            self.active.clear()
        if self.touched:
            self._lab_change("apply", self._write("restore", self.touched.values()))
            self.touched.clear()
            self.relabels.clear()
            self.state = self.lab.state()
        with open_datastore(self.state.paths.datastore_url) as datastore:
            left = [p.ref for p in datastore.snapshot().network_policies()]
        assert not left, f"NetworkPolicies left in lab {self.lab.name}: {left}"
        self.expect(Check(all_allowed()), "back to no policy (all allowed)")
        self.dirty = False

    def _change(self, step: Step) -> None:
        if step.apply:
            docs = [self._resolve(item) for item in step.apply]
            self._lab_change("apply", self._write("apply", docs))
            for item, doc in zip(step.apply, docs, strict=True):
                if isinstance(item, Relabel):
                    key = (item.kind, item.name)
                    self.touched.setdefault(key, self._topology_object(item.kind, item.name))
                    self.relabels[key] = item.labels
                else:
                    self.active[_ref(doc)] = doc
            if any(isinstance(item, Relabel) for item in step.apply):
                self.state = self.lab.state()
        if step.delete:
            unknown = [ref for ref in step.delete if ref not in self.active]
            assert not unknown, f"step deletes policies it did not apply: {unknown}"
            self._lab_change("delete", self._write("delete",
                                                   [self.active.pop(r) for r in step.delete]))

    def _lab_change(self, command: str, manifest: Path, *options: str) -> None:
        """`sluice lab COMMAND --name LAB -f MANIFEST OPTIONS`, then a wait (at most
        ENFORCEMENT_WAIT) until every node's agent has reconciled since: probing starts
        when enforcement can be expected, not before.

        The command goes through the CLI's own entry point, but in this process: the same
        code as on the command line, without an interpreter start (about half a second
        on a busy machine) for each of the ~150 changes a run makes."""
        before = agent_revisions(self.state)
        argv = ["lab", command, "--name", self.lab.name, "-f", str(manifest), *options]
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli_main(argv)
        assert code == 0, (f"sluice {' '.join(argv)} exited {code}\nstdout:\n"
                           f"{out.getvalue()}\nstderr:\n{err.getvalue()}")
        self.changed_at = time.monotonic()
        wait_for_agents(self.state, before, self.changed_at + ENFORCEMENT_WAIT)

    def _write(self, what: str, docs: Iterable[Manifest]) -> Path:
        self.files += 1
        return write_manifest(self.workdir / f"{self.files:03d}-{what}.yaml", list(docs))

    def _resolve(self, item: Manifest | Relabel) -> Manifest:
        if isinstance(item, Relabel):
            doc = copy.deepcopy(self._topology_object(item.kind, item.name))
            doc["metadata"]["labels"] = dict(item.labels)
            return doc
        resolved: Manifest = self._fill(item)
        return resolved

    def _fill(self, value: Any) -> Any:
        """VALUE with every PodCIDR replaced by its network (as text)."""
        if isinstance(value, PodCIDR):
            address = ipaddress.ip_address(self.pod_ip(value.pod, value.family))
            prefix = address.max_prefixlen if value.prefix is None else value.prefix
            return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False))
        if isinstance(value, dict):
            return {key: self._fill(item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return [self._fill(item) for item in value]
        return value

    def _topology_object(self, kind: str, name: str) -> Manifest:
        namespace, _, short = name.rpartition("/")
        for doc in self.topology:
            meta = doc["metadata"]
            if doc["kind"] == kind and meta["name"] == short and \
                    meta.get("namespace", "") == namespace:
                return doc
        raise KeyError(f"no {kind} {name} in {MANIFEST}")

    def pod_ip(self, pod: str, family: int) -> str:
        record = self.state.pods[pod]
        return next(ip for ip in record.ips if ipaddress.ip_address(ip).version == family)

    # Probing.

    def expect(self, check: Check, context: str) -> None:
        """Probe rounds until CHECK's matrix is observed; fail with both grids, the
        policies applied and the agents' status when it is not within ENFORCEMENT_WAIT of
        the last change (at least one round, with its retry, is always made)."""
        __tracebackhide__ = True
        rounds = 0
        while True:
            observed = self.observe(check)
            rounds += 1
            if all(_cell_ok(check, pair, seen) for pair, seen in observed.items()):
                return
            waited = time.monotonic() - self.changed_at
            if waited >= ENFORCEMENT_WAIT:
                break
        policies = yaml.safe_dump_all(list(self.active.values()), sort_keys=False) \
            if self.active else "(none)\n"
        relabelled = "".join(f"\n  {kind} {name}: {dict(labels)}"
                             for (kind, name), labels in self.relabels.items())
        raise AssertionError(
            f"{context}: {check.label} in lab {self.lab.name}, not as expected after "
            f"{waited:.1f}s ({rounds} round{'s' if rounds != 1 else ''})\n"
            f"{mismatch_report(check, observed)}\n"
            f"policies applied:\n{policies}"
            + (f"relabelled:{relabelled}\n" if relabelled else "")
            + f"agents:\n{describe_agents(self.state)}")

    def observe(self, check: Check) -> dict[Pair, Observation]:
        """Every pair probed at once; the pairs that differ from the expected matrix are
        probed once more (one lost packet must not fail a case) and that answer counts."""
        pairs = [(src, dst) for src in PODS for dst in PODS]
        observed = self.probe_pairs(check, pairs)
        again = [pair for pair in pairs if not _cell_ok(check, pair, observed[pair])]
        if again:
            observed.update(self.probe_pairs(check, again))
        return observed

    def probe_pairs(self, check: Check, pairs: Sequence[Pair]) -> dict[Pair, Observation]:
        """One probe per pair, all concurrently: each a forked child in the client pod's
        network namespace and cgroup (as `sluice lab probe` makes them)."""
        places: dict[str, Place] = {}
        targets: dict[str, Destination] = {}
        for src, dst in pairs:
            if src not in places:
                places[src] = resolve_place(self.state, src)
            if dst not in targets:
                targets[dst] = resolve_destination(
                    self.state, check.via_service.get(dst, dst), check.family, check.port,
                    check.protocol)

        def probe(pair: Pair) -> Observation:
            place, target = places[pair[0]], targets[pair[1]]
            outcome = Probe(place.netns, target.address, target.port, check.protocol,
                            PROBE_TIMEOUT, cgroup=place.cgroup).run()
            return Observation(target.address, outcome, pair[1].split("/")[1])

        with ThreadPoolExecutor(max_workers=len(pairs)) as pool:
            return dict(zip(pairs, pool.map(probe, pairs), strict=True))


def agent_states(state: LabState) -> dict[str, dict[str, Any] | None]:
    """Each node's agent's GET /state document; None when it does not answer."""
    docs: dict[str, dict[str, Any] | None] = {}
    for node in state.plan.nodes:
        answer = agents.http_get(node, "/state", AGENT_HTTP_TIMEOUT)
        docs[node.name] = json.loads(answer[1]) if answer and answer[0] == 200 else None
    return docs


def agent_revisions(state: LabState) -> dict[str, Any]:
    return {node: doc.get("revision") if doc else None
            for node, doc in agent_states(state).items()}


def wait_for_agents(state: LabState, before: Mapping[str, Any], deadline: float) -> None:
    """Until DEADLINE at most: wait until every agent's last successful reconcile is of
    another datastore revision than BEFORE (each agent numbers its own revisions)."""
    while time.monotonic() < deadline:
        now = agent_revisions(state)
        if all(now[node] is not None and now[node] != before.get(node) for node in now):
            return
        time.sleep(AGENT_POLL)


def describe_agents(state: LabState) -> str:
    """Each agent's status from /state and the end of its log (how long its reconciles
    took, what failed)."""
    lines = []
    for node, doc in agent_states(state).items():
        if doc is None:
            lines.append(f"  {node}: GET /state did not answer")
        else:
            lines.append(f"  {node}: revision {doc.get('revision')}, healthy "
                         f"{doc.get('healthy')} ({doc.get('reason')}), reconciles "
                         f"{doc.get('reconciles')}, problems {doc.get('problems')}, "
                         f"last changes {doc.get('lastChanges')}")
        log = state.paths.agent_log(node)
        with contextlib.suppress(OSError):
            tail = log.read_text(encoding="utf-8", errors="replace").splitlines()
            lines += [f"  {log}:"] + [f"    {line}" for line in tail[-AGENT_LOG_LINES:]]
    return "\n".join(lines)


def _ref(doc: Manifest) -> str:
    meta = doc["metadata"]
    return f"{meta.get('namespace', 'default')}/{meta['name']}"


def check_topology(state: LabState) -> None:
    """The running lab has the pods of examples/lab-netpol.yaml where the cases expect."""
    where = {key: record.node for key, record in state.pods.items()}
    wanted = {pod: NODE_OF[pod.split("/")[1]] for pod in PODS}
    assert {pod: where.get(pod) for pod in PODS} == wanted, where
