"""/metrics: the Prometheus text exposition format (version 0.0.4)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping

from sluice import __version__
from sluice.agent.config import AgentConfig
from sluice.agent.reconcile import ReconcileOutcome, RouteHits
from sluice.agent.status import StatusView
from sluice.compile.devices import TUNNEL_DEVICE

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: Mapping[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items()) + "}"


class _Writer:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def metric(self, name: str, kind: str, help_text: str,
               samples: Iterable[tuple[Mapping[str, str], float]]) -> None:
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            number = repr(float(value)) if isinstance(value, float) else str(value)
            self.lines.append(f"{name}{_labels(labels)} {number}")

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


def render(config: AgentConfig, view: StatusView, hits: list[RouteHits]) -> str:
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
    return w.text()
