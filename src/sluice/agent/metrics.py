"""/metrics: the Prometheus text exposition format (version 0.0.4).

The agent's own state (reconciles, their durations, what it wrote) and, in bpf mode, what
the datapath counted (observe/datapathstats.py reads it from the pinned maps). In iptables
mode the datapath series are absent: there are no maps to read."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable, Mapping
from functools import lru_cache

from sluice import __version__
from sluice.agent.config import AgentConfig
from sluice.agent.reconcile import ReconcileOutcome, RouteHits
from sluice.agent.status import HistogramView, StatusView
from sluice.compile.devices import TUNNEL_DEVICE
from sluice.compile.topology import Dataplane
from sluice.datapath.events import Hook
from sluice.observe.datapathstats import BackendLabel, DatapathReader, DatapathStats

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: Mapping[str, str] | str) -> str:
    """`{name="value",...}`; a str is labels already rendered."""
    if isinstance(labels, str):
        return labels
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items()) + "}"


def _number(value: float) -> str:
    return repr(float(value)) if isinstance(value, float) else str(value)


class _Writer:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def metric(self, name: str, kind: str, help_text: str,
               samples: Iterable[tuple[Mapping[str, str] | str, float]]) -> None:
        self._family(name, kind, help_text)
        for labels, value in samples:
            self._sample(name, labels, value)

    def histogram(self, name: str, help_text: str,
                  series: Iterable[tuple[Mapping[str, str], HistogramView]]) -> None:
        self._family(name, "histogram", help_text)
        for labels, view in series:
            for bound, count in view.buckets:
                self._sample(f"{name}_bucket", {**labels, "le": _number(bound)}, count)
            self._sample(f"{name}_bucket", {**labels, "le": "+Inf"}, view.count)
            self._sample(f"{name}_sum", labels, view.total)
            self._sample(f"{name}_count", labels, view.count)

    def _family(self, name: str, kind: str, help_text: str) -> None:
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")

    def _sample(self, name: str, labels: Mapping[str, str] | str, value: float) -> None:
        self.lines.append(f"{name}{_labels(labels)} {_number(value)}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def _route_kinds(outcome: ReconcileOutcome) -> Counter[str]:
    desired = outcome.desired
    if desired.bpf is not None:
        return Counter(spec.kind.name.lower() for spec in desired.bpf.routes.values())
    kinds: Counter[str] = Counter()
    for route in desired.kernel.routes:
        if route.dev == TUNNEL_DEVICE:
            kinds["remote_tunnel"] += 1
        elif route.gateway is not None:
            kinds["remote_native"] += 1
        else:
            kinds["local_pod"] += 1
    return kinds


def render(config: AgentConfig, view: StatusView, hits: list[RouteHits],
           datapath: DatapathStats | None = None,
           more: Iterable[tuple[str, str, str, list[tuple[Mapping[str, str], float]]]] = ()
           ) -> str:
    """MORE: other parts' metric families (name, type, help, samples), e.g. the netfilter
    monitor's."""
    w = _Writer()
    w.metric("sluice_agent_build_info", "gauge", "Sluice version and how this agent runs.",
             [({"version": __version__, "node": config.node,
                "dataplane": config.dataplane.value, "routing": config.routing.value}, 1)])
    w.metric("sluice_agent_healthy", "gauge", "1 when the last reconcile succeeded.",
             [({}, int(view.health.ok))])
    w.metric("sluice_agent_reconciles_total", "counter", "Reconciles run, by result.",
             [({"result": result}, count) for result, count in sorted(view.reconciles.items())])
    w.metric("sluice_agent_reconcile_failures_consecutive", "gauge",
             "Reconciles failed in a row since the last success.",
             [({}, view.consecutive_failures)])
    w.histogram("sluice_agent_sync_duration_seconds",
                "How long reconciles took, by result and by what triggered them.",
                [({"result": result, "trigger": trigger}, histogram)
                 for (result, trigger), histogram in sorted(view.sync_durations.items())])
    w.metric("sluice_agent_sync_errors_total", "counter",
             "Reconciles that failed (each is retried with backoff; see /healthz).",
             [({}, view.reconciles.get("failure", 0))])
    if view.last_duration is not None:
        w.metric("sluice_agent_reconcile_duration_seconds", "gauge",
                 "How long the last reconcile took.", [({}, view.last_duration)])
    if view.last_success_at is not None:
        w.metric("sluice_agent_last_success_timestamp_seconds", "gauge",
                 "When the last reconcile succeeded (Unix time).", [({}, view.last_success_at)])
    w.metric("sluice_agent_changes_total", "counter",
             "Objects the agent wrote, by object and operation.",
             [({"object": obj, "op": op}, count)
              for (obj, op), count in sorted(view.changes_total.items())])
    outcome = view.outcome
    if outcome is not None:
        desired = outcome.desired
        w.metric("sluice_agent_datastore_revision", "gauge",
                 "The datastore revision the last successful reconcile applied.",
                 [({}, desired.revision)])
        w.metric("sluice_agent_endpoints", "gauge", "Pods wired on this node.",
                 [({}, len(desired.endpoints.endpoints))])
        w.metric("sluice_agent_routes", "gauge", "Pod routes programmed, by kind.",
                 [({"kind": kind}, count) for kind, count in sorted(_route_kinds(outcome).items())])
        if desired.bpf is not None:
            w.metric("sluice_agent_links", "gauge", "tcx links of the node programs.",
                     [({}, len(desired.attachments))])
        w.metric("sluice_agent_problems", "gauge",
                 "Problems found by the last successful reconcile (see /state).",
                 [({}, len(outcome.problems))])
    if hits:
        w.metric("sluice_agent_route_hits_total", "counter",
                 "Packets the datapath routed by each route of the routes map.",
                 [({"cidr": str(h.cidr), "kind": h.kind}, h.hits) for h in hits])
    if datapath is not None:
        _render_datapath(w, datapath)
    for family in more:
        w.metric(*family)
    return w.text()


_readers: dict[str, DatapathReader] = {}  # by pin directory
_readers_lock = threading.Lock()


def datapath_stats(config: AgentConfig, view: StatusView) -> DatapathStats | None:
    """What the datapath counted (bpf mode, once its maps are pinned), else None."""
    if config.dataplane is not Dataplane.BPF:
        return None
    with _readers_lock:
        reader = _readers.setdefault(config.pins, DatapathReader(config.pins))
    services = view.outcome.desired.services if view.outcome is not None else None
    # Moves whenever the agent may have written its maps: a success that changed
    # something, or a failure (it may have written part of a change).
    generation = (sum(view.changes_total.values()), view.reconciles.get("failure", 0))
    return reader.read(services, generation)


@lru_cache(maxsize=1 << 18)  # one per backend: rendered again only when they change
def _selection_labels(label: BackendLabel) -> str:
    return _labels({"service": label.service, "frontend": label.frontend,
                    "backend": label.backend})


SOCKET_HOOKS = {Hook.SOCK_CONNECT.name.lower(), Hook.SOCK_SENDMSG.name.lower()}
BPF_ONLY = "(bpf mode only)"


def _render_datapath(w: _Writer, stats: DatapathStats) -> None:
    def labels(hook: str, direction: str, verdict: str, reason: str) -> dict[str, str]:
        return {"hook": hook, "direction": direction, "verdict": verdict, "reason": reason}

    w.metric("sluice_datapath_packets_total", "counter",
             "Packets each datapath hook forwarded or dropped, by drop reason; the socket "
             f"hooks count connects and sends to services {BPF_ONLY}.",
             [(labels(c.hook, c.direction, c.verdict, c.reason), c.packets)
              for c in stats.packets])
    w.metric("sluice_datapath_bytes_total", "counter",
             "Bytes of the packets in sluice_datapath_packets_total (tc and XDP hooks) "
             f"{BPF_ONLY}.",
             [(labels(c.hook, c.direction, c.verdict, c.reason), c.bytes)
              for c in stats.packets if c.hook not in SOCKET_HOOKS])
    w.metric("sluice_policy_verdicts_total", "counter",
             "Policy decisions: packets denied (new, cut, untracked, prefilter), packets let "
             f"through by a failsafe port, new flows allowed {BPF_ONLY}.",
             [({"verdict": verdict}, count) for verdict, count in stats.policy_verdicts])
    w.metric("sluice_service_backend_selections_total", "counter",
             "New flows and socket connects that chose each service backend, from any of "
             "the service's frontends (labelled with its ClusterIP one) " + BPF_ONLY + ".",
             [(_selection_labels(label), count) for label, count in stats.selections])
    w.metric("sluice_flow_events_total", "counter",
             "Flow events the datapath wanted to send: sent, lost because the ring buffer "
             f"was full, over the rate limit, or not sampled {BPF_ONLY}.",
             [({"outcome": outcome}, count) for outcome, count in stats.events])
    w.metric("sluice_bpf_map_entries", "gauge",
             f"Entries in each pinned hash and LPM map {BPF_ONLY}.",
             [({"map": m.name}, m.entries) for m in stats.maps])
    w.metric("sluice_bpf_map_max_entries", "gauge",
             f"Capacity of each pinned hash and LPM map {BPF_ONLY}.",
             [({"map": m.name}, m.max_entries) for m in stats.maps])
    w.metric("sluice_bpf_map_pressure_ratio", "gauge",
             f"Entries over capacity of each pinned hash and LPM map {BPF_ONLY}.",
             [({"map": m.name}, m.pressure) for m in stats.maps])
    w.metric("sluice_datapath_stats_read_seconds", "gauge",
             f"How long reading the datapath's maps for this scrape took {BPF_ONLY}.",
             [({}, stats.read_seconds)])
