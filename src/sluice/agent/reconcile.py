"""One reconcile: read the datastore and the CNI records, compile, apply."""

from __future__ import annotations

import ctypes
import logging
import os
import time
from dataclasses import dataclass, field

from pyroute2 import IPRoute

from sluice.agent.config import AgentConfig
from sluice.agent.flowlog import FlowLog, FlowReader
from sluice.agent.flownames import flow_names
from sluice.agent.handover import Handover
from sluice.agent.policylog import PolicyLogReader
from sluice.agent.records import live_records
from sluice.apply.attachments import Attachment, desired_attachments, links_dir, sync_links
from sluice.apply.bpfmaps import sync_endpoints, sync_routes
from sluice.apply.cgrouplinks import sync_cgroup_links
from sluice.apply.diff import ChangeLog, Changes
from sluice.apply.errors import ApplyError
from sluice.apply.flowevents import write_events_config
from sluice.apply.kernel import apply_kernel_state
from sluice.apply.lbmaps import sync_lb
from sluice.apply.links import device_holding, ifindexes, read_links
from sluice.apply.masqmaps import sync_masquerade
from sluice.apply.masqrules import sync_masq_rules
from sluice.apply.nodeobject import NodeObject
from sluice.apply.policymaps import sync_policy
from sluice.apply.policyrules import remove_policy_rules, sync_policy_rules
from sluice.apply.servicerules import remove_service_rules, sync_service_rules
from sluice.cni.registry import list_records
from sluice.compile.bpfstate import BpfState, bpf_state
from sluice.compile.devices import SERVICE_VNI, TUNNEL_DEVICE, TUNNEL_VNI
from sluice.compile.endpoints import LocalEndpoints, local_endpoints
from sluice.compile.kernelstate import KernelState, kernel_state
from sluice.compile.lbstate import lb_state
from sluice.compile.masquerade import masquerade_state
from sluice.compile.policy import policy_state, rule_origins
from sluice.compile.policytypes import PolicyState
from sluice.compile.services import ServiceTable, foreign_nodes, service_table
from sluice.compile.topology import Dataplane, NodeView, RoutingMode, node_view
from sluice.datapath import events as ev
from sluice.datapath.policy import EVENTS_MAP
from sluice.datapath.routing import RouteKind
from sluice.datastore import ClusterState, Datastore
from sluice.model.addresses import IPNetwork
from sluice.observe.flows import Names, logged_flow

log = logging.getLogger("sluice.agent")


class ReconcileError(Exception):
    """A reconcile could not complete; the message is what /healthz shows."""


@dataclass(frozen=True)
class DesiredState:
    """What the last successful reconcile computed (and applied)."""

    revision: int
    uplink: str
    endpoints: LocalEndpoints
    kernel: KernelState
    bpf: BpfState | None
    attachments: tuple[Attachment, ...]
    policy: PolicyState
    services: ServiceTable | None = None  # bpf mode: what the load balancer maps hold


@dataclass(frozen=True)
class ReconcileOutcome:
    desired: DesiredState
    changes: ChangeLog
    problems: tuple[str, ...]
    duration: float


@dataclass(frozen=True)
class RouteHits:
    cidr: IPNetwork
    kind: str
    hits: int


@dataclass
class Reconciler:
    """Holds what lives across reconciles: the datastore and, in bpf mode, the loaded
    node object (its maps and links are pinned; the process only holds handles)."""

    config: AgentConfig
    datastore: Datastore
    node_object: NodeObject | None = field(default=None, init=False)
    service_rules_cleared: bool = field(default=False, init=False)  # bpf mode, see _services
    policy_rules_cleared: bool = field(default=False, init=False)  # bpf mode, see _policy
    policy_log: PolicyLogReader | None = field(default=None, init=False)
    rule_origins: dict[int, str] = field(default_factory=dict, init=False)
    flow_log: FlowLog = field(init=False)
    flow_reader: FlowReader | None = field(default=None, init=False)
    names: Names = field(default_factory=Names, init=False)
    handover: Handover = field(init=False)

    def __post_init__(self) -> None:
        self.flow_log = FlowLog(self.config.flow_events.log_size)
        self.handover = Handover(self.config)

    def close(self) -> None:
        if self.flow_reader is not None:
            self.flow_reader.stop()
            self.flow_reader = None
        if self.policy_log is not None:
            self.policy_log.stop()
            self.policy_log = None
        if self.node_object is not None:
            self.node_object.close()
            self.node_object = None

    def run(self) -> ReconcileOutcome:
        started = time.monotonic()
        state = self.datastore.snapshot()
        problems = [f"datastore: {p}" for p in self.datastore.problems()]
        view = node_view(state, self.config.node)
        if self.config.dataplane is Dataplane.BPF:
            # Loaded before the kernel state changes: on a switch from iptables, the
            # host stack stops forwarding pods' traffic when it does.
            self._node_object()
        with IPRoute() as ipr:
            devices = ifindexes(read_links(ipr))
            uplink = self._uplink(ipr, view, devices)
            records, stale = live_records(list_records(self.config.cni_state_dir), devices)
            problems += stale
            endpoints = local_endpoints(records)
            kernel = kernel_state(view, endpoints, self.config.routing, self.config.dataplane,
                                  uplink)
            problems += kernel.problems
            leaving_bpf = self.handover.leaving_bpf()
            if leaving_bpf:
                self.handover.prepare_iptables(state, endpoints, devices)
            synced = apply_kernel_state(ipr, kernel, [e.host_ifname for e in endpoints.endpoints])
            if leaving_bpf:
                # At once: the programs' tunnel device is gone.
                self.handover.detach_bpf(synced.ifindexes)
        changes = synced.changes
        problems += synced.problems
        problems += self.handover.bind_tunnel_rx(synced.ifindexes.get(TUNNEL_DEVICE))
        policy = policy_state(state, self.config.node, endpoints.endpoints, self.config.failsafe,
                              interface_ifindexes=synced.ifindexes | devices)
        problems += policy.problems
        self.rule_origins = rule_origins(policy)
        bpf: BpfState | None = None
        table: ServiceTable | None = None
        attached: tuple[Attachment, ...] = ()
        if self.config.dataplane is Dataplane.BPF:
            identities = {address: endpoint.identity for endpoint in policy.endpoints
                          if not endpoint.host_endpoint for address in endpoint.addresses}
            bpf = bpf_state(view, endpoints, self.config.routing, uplink, identities)
            problems += bpf.problems
            node_object = self._node_object()
            # Policy before endpoints: a new pod's identity and verdicts are in place
            # before the datapath knows the pod.
            changes.kinds.update(sync_policy(node_object.policy, policy).kinds)
            changes["endpoints"] = sync_endpoints(node_object.endpoints, bpf.endpoints)
            changes["routes"] = sync_routes(node_object.routes, bpf.routes,
                                            synced.ifindexes.get(TUNNEL_DEVICE))
            table = service_table(state, self.config.node)
            lbs = lb_state(table, self.config.lb, foreign_nodes(state))
            problems += lbs.problems
            changes.kinds.update(sync_lb(node_object.lb, lbs).kinds)
            masq = masquerade_state(view, self.config.masquerade)
            changes["masquerade"] = sync_masquerade(node_object.masq, masq)
            if masq.enabled and not uplink:
                problems.append("masquerade: no uplink device (pass --uplink), so pod "
                                "traffic leaving the cluster keeps its pod address")
            self.handover.carry_into_bpf(node_object, endpoints)
            links = sync_links(self.config.pins, node_object.programs,
                               desired_attachments(
                                   bpf, prefilter=policy.filters_before_the_stack),
                               synced.ifindexes)
            changes["links"] = links.changes
            problems += links.problems
            attached = tuple(links.attached)
            changes["socket hooks"] = sync_cgroup_links(
                self.config.pins, node_object.sock_programs, self.config.cgroup,
                allow_root=self.config.allow_root_cgroup)
            # Every link runs this process's programs now: finish a map migration.
            node_object.catch_up_migrations()
            self.names = flow_names(state, view, policy, table, synced.ifindexes | devices)
        elif os.path.isdir(links_dir(self.config.pins)):
            # Left by an earlier bpf-mode agent: its programs would still steer pod
            # traffic around the host stack this mode relies on.
            changes["links"] = sync_links(self.config.pins, {}, frozenset(),
                                          synced.ifindexes).changes
            changes["socket hooks"] = sync_cgroup_links(self.config.pins, {}, None)
        problems += self._services(state, changes)
        problems += self._policy(policy, changes)
        self._masquerade(view, changes)
        desired = DesiredState(state.revision, uplink, endpoints, kernel, bpf, attached, policy,
                               table)
        return ReconcileOutcome(desired, changes, tuple(dict.fromkeys(problems)),
                                time.monotonic() - started)

    def _services(self, state: ClusterState, changes: ChangeLog) -> list[str]:
        """iptables mode: the node's Services as kube-proxy-shaped NAT rules. bpf mode:
        remove, once, the rules an iptables-mode agent left (they would NAT service
        traffic before the datapath sees it); returns problems."""
        if self.config.dataplane is not Dataplane.BPF:
            table = service_table(state, self.config.node)
            changes["services"] = sync_service_rules(table)
            return list(table.problems)
        if self.service_rules_cleared:
            return []
        try:
            removed = remove_service_rules()
        except ApplyError as err:
            return [f"stale iptables service rules could not be removed: {err}"]
        self.service_rules_cleared = True
        if removed:
            changes["iptables services"] = Changes(removed=removed)
        return []

    def _masquerade(self, view: NodeView, changes: ChangeLog) -> None:
        """iptables mode: masquerade as a SLUICE-MASQ chain (removed when off). bpf mode:
        the datapath masquerades; the chain an iptables-mode agent left goes with the
        other SLUICE chains (see _services)."""
        if self.config.dataplane is not Dataplane.BPF:
            changes["masquerade rules"] = sync_masq_rules(
                masquerade_state(view, self.config.masquerade))

    def _policy(self, policy: PolicyState, changes: ChangeLog) -> list[str]:
        """iptables mode: policy as per-endpoint chains and ipsets. bpf mode: remove, once,
        what an iptables-mode agent left (its chains would judge traffic twice)."""
        try:
            if self.config.dataplane is not Dataplane.BPF:
                changes["policy rules"] = sync_policy_rules(policy)
            elif not self.policy_rules_cleared:
                removed = remove_policy_rules()
                self.policy_rules_cleared = True
                if removed:
                    changes["iptables policy"] = Changes(removed=removed)
        except ApplyError as err:
            if self.config.dataplane is not Dataplane.BPF:
                raise
            return [f"stale iptables policy rules could not be removed: {err}"]
        return []

    def _uplink(self, ipr: IPRoute, view: NodeView, devices: dict[str, int]) -> str:
        if self.config.uplink is not None:
            return self.config.uplink
        found = device_holding(ipr, view.local.internal_ips)
        if found is not None:
            return found
        if self.config.routing is RoutingMode.NATIVE:
            addresses = ", ".join(map(str, view.local.internal_ips)) or "none"
            raise ReconcileError(f"no device holds an InternalIP of node {view.name} "
                                 f"({addresses}); native routing needs the uplink: pass "
                                 "--uplink")
        return ""  # the overlay does not route through a named uplink

    def _node_object(self) -> NodeObject:
        if self.node_object is None:
            self.node_object = NodeObject.load(
                self.config.pins, tunnel_vni=TUNNEL_VNI, service_vni=SERVICE_VNI,
                maglev_table_size=self.config.lb.maglev_table_size,
                map_sizes=dict(self.config.map_sizes))
            log.info("loaded the node datapath; maps pinned in %s", self.config.pins)
            self.policy_log = PolicyLogReader(
                self.node_object.obj.map_fd(EVENTS_MAP), lambda: self.rule_origins,
                lambda event: self.flow_log.add(logged_flow(event, self.names)))
            self.policy_log.start()
            options = self.config.flow_events
            write_events_config(self.node_object.obj.map(ev.CONFIG_MAP, ctypes.c_uint32,
                                                         ev.EventsConfig),
                                options.kinds, sample=options.sample,
                                rate_per_cpu=options.rate_per_cpu)
            self.flow_reader = FlowReader(self.node_object.obj.map_fd(ev.EVENTS_MAP),
                                          self.flow_log, lambda: self.names)
            self.flow_reader.start()
        return self.node_object

    def route_hits(self) -> list[RouteHits]:
        """Per-route packet counters from the live routes map (bpf mode, once loaded)."""
        node_object = self.node_object
        if node_object is None:
            return []
        hits = []
        for key, entry in node_object.routes.lookup_batch():
            try:
                kind = RouteKind(entry.kind).name.lower()
            except ValueError:
                kind = str(entry.kind)
            hits.append(RouteHits(key.network(), kind, int(entry.hits)))
        return sorted(hits, key=lambda h: (h.cidr.version, h.cidr))
