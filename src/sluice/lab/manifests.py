"""`lab apply` and `lab delete`: manifests into the lab's datastore, pods into namespaces.

Everything is checked before anything changes: a kind the lab does not take, an object
given twice, a Pod's nodeName that is no node of the lab, a Service whose IP families the
lab lacks. Then the non-Pod objects are written in one datastore batch (Services with the
clusterIPs and LoadBalancer ingress IPs the lab allocates), and Pods are created (or
recreated when their spec changed, or relabelled in place) one by one.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sluice.datastore import ClusterState, Datastore, DatastoreError, ResourceKey, open_datastore
from sluice.lab import objects
from sluice.lab.errors import LabError
from sluice.lab.plan import LabPlan, NodePlan
from sluice.lab.pods import PodOps
from sluice.lab.state import LabState, PodRecord, pod_key
from sluice.model import Node, Pod, Resource, Service

Say = Callable[[str], None]


def _name(key: ResourceKey) -> str:
    scope = f"{key.namespace}/" if key.namespace else ""
    return f"{key.kind.lower()}/{scope}{key.name}"


def _check_common(resources: Sequence[Resource]) -> list[str]:
    problems: list[str] = []
    for resource in resources:
        if isinstance(resource, Node):
            problems.append(f"{resource.ref}: the lab makes its own Nodes "
                            "(sluice lab up --nodes N); remove it from the manifest")
    counts = Counter(ResourceKey.of(resource) for resource in resources)
    problems += [f"{key}: given {count} times" for key, count in counts.items() if count > 1]
    return problems


def check_for_lab(plan: LabPlan, resources: Sequence[Resource]) -> None:
    """Refuse, before anything is made, what no lab of PLAN's shape could take."""
    problems = _check_common(resources)
    for resource in resources:
        if isinstance(resource, Pod):
            problem = _node_problem(plan, resource, resource.spec.node_name)
            if problem:
                problems.append(problem)
        elif isinstance(resource, Service):
            try:
                objects.with_cluster_ips(resource, plan.options.families, set())
            except LabError as err:
                problems.append(str(err))
    _raise("up", problems)


def _node_problem(plan: LabPlan, pod: Pod, node: str | None) -> str | None:
    if node is None or node in {n.name for n in plan.nodes}:
        return None
    known = ", ".join(n.name for n in plan.nodes)
    return f"{pod.ref}: spec.nodeName: no node {node!r} in lab {plan.name} (nodes: {known})"


def _raise(action: str, problems: list[str]) -> None:
    if problems:
        listed = "".join(f"\n  {problem}" for problem in problems)
        raise LabError(f"{action} refused, nothing was changed:{listed}")


@dataclass
class _Taken:
    """Addresses in use while a batch is applied: by stored Services and earlier ones of
    the batch."""

    cluster_ips: set[ipaddress.IPv4Address | ipaddress.IPv6Address]
    load_balancer_ips: set[ipaddress.IPv4Address | ipaddress.IPv6Address]


def _service_addresses(service: Service) -> str:
    """` (clusterIPs; load balancer IPs)` for the line saying a Service was applied."""
    parts = [", ".join(map(str, service.spec.cluster_ip_addresses))]
    lb_ips = [str(ingress.ip) for ingress in service.status.load_balancer.ingress
              if ingress.ip is not None]
    if lb_ips:
        parts.append("load balancer " + ", ".join(lb_ips))
    parts = [part for part in parts if part]
    return f" ({'; '.join(parts)})" if parts else ""


@dataclass
class _PodPlan:
    pod: Pod
    node: NodePlan
    action: str  # "create", "recreate", "relabel" or "unchanged"
    record: PodRecord | None


class Applier:
    def __init__(self, state: LabState, datastore: Datastore, say: Say) -> None:
        self.state = state
        self.datastore = datastore
        self.say = say
        self.pods = PodOps(state, datastore, say)

    def apply(self, resources: Sequence[Resource]) -> None:
        snapshot = self.datastore.snapshot()
        problems = _check_common(resources)
        prepared: list[Resource] = []
        taken = _Taken(objects.cluster_ips_in_use(snapshot.services()),
                       objects.load_balancer_ips_in_use(snapshot.services()))
        for resource in resources:
            if isinstance(resource, Service):
                try:
                    prepared.append(self._service(resource, snapshot, taken))
                except LabError as err:
                    problems.append(str(err))
            elif not isinstance(resource, Pod | Node):
                prepared.append(resource)
        pod_plans = self._plan_pods([r for r in resources if isinstance(r, Pod)], snapshot,
                                    problems)
        _raise("apply", problems)
        self._write(prepared, snapshot)
        for plan in pod_plans:
            self._apply_pod(plan)

    def _service(self, service: Service, snapshot: ClusterState, taken: _Taken) -> Service:
        """SERVICE with the clusterIPs and load balancer IPs the lab allocates; a Service
        applied again keeps its own (they are not taken from it)."""
        previous = snapshot.get(ResourceKey.of(service))
        assert previous is None or isinstance(previous, Service)
        cluster_ips, lb_ips = taken.cluster_ips, taken.load_balancer_ips
        if previous is not None:
            cluster_ips = cluster_ips - set(previous.spec.cluster_ip_addresses)
            lb_ips = lb_ips - objects.load_balancer_ips_in_use([previous])
        service = objects.with_cluster_ips(service, self.state.options.families, cluster_ips,
                                           previous)
        service = objects.with_load_balancer_ips(service, lb_ips, previous)
        taken.cluster_ips |= set(service.spec.cluster_ip_addresses)
        taken.load_balancer_ips |= objects.load_balancer_ips_in_use([service])
        return service

    def _write(self, prepared: list[Resource], snapshot: ClusterState) -> None:
        if not prepared:
            return
        try:
            self.datastore.apply(prepared)
        except DatastoreError as err:
            raise LabError(str(err)) from None
        for resource in prepared:
            key = ResourceKey.of(resource)
            before = snapshot.get(key)
            verb = "created" if before is None else (
                "unchanged" if before == resource else "configured")
            extra = ""
            if isinstance(resource, Service):
                extra = _service_addresses(resource)
            self.say(f"{_name(key)} {verb}{extra}")

    def _plan_pods(self, pods: list[Pod], snapshot: ClusterState,
                   problems: list[str]) -> list[_PodPlan]:
        plan = self.state.plan
        load = Counter(record.node for record in self.state.pods.values())
        plans: list[_PodPlan] = []
        for pod in pods:
            record = self.state.pods.get(pod_key(pod.namespace, pod.name))
            stored = snapshot.get(ResourceKey.of(pod))
            wanted = pod.spec.node_name or (record.node if record else None)
            problem = _node_problem(plan, pod, wanted)
            if problem:
                problems.append(problem)
                continue
            if wanted is None:
                wanted = min(plan.nodes, key=lambda n: (load[n.name], n.index)).name
            load[wanted] += 1
            node = plan.node(wanted)
            if record is None:
                action = "create"
            elif not isinstance(stored, Pod) or not objects.same_pod_spec(stored, pod):
                action = "recreate"
            elif stored.metadata != pod.metadata:
                action = "relabel"
            else:
                action = "unchanged"
            plans.append(_PodPlan(pod, node, action, record))
        return plans

    def _apply_pod(self, plan: _PodPlan) -> None:
        pod, node, record = plan.pod, plan.node, plan.record
        label = f"pod/{pod.namespace}/{pod.name}"
        if plan.action == "unchanged" and record is not None:
            self.say(f"{label} unchanged")
            return
        if plan.action == "relabel" and record is not None:
            self.datastore.apply([objects.running(pod, node, record.ips)])
            self.say(f"{label} configured")
            return
        if plan.action == "recreate" and record is not None:
            self._remove_pod(record)
        created = self.pods.create(pod, node)
        where = "hostNetwork, " if created.host_network else ""
        ports = " ".join(str(port) for port in created.ports) or "no ports"
        self.say(f"{label} {plan.action}d on {node.name} ({where}{' '.join(created.ips)}; "
                 f"serving {ports})")

    def _remove_pod(self, record: PodRecord) -> None:
        problems = self.pods.remove(record)
        for problem in problems:
            self.say(f"warning: {problem}")

    def delete(self, resources: Sequence[Resource], ignore_not_found: bool) -> None:
        snapshot = self.datastore.snapshot()
        problems = _check_common(resources)
        records: list[PodRecord] = []
        keys: list[ResourceKey] = []
        missing: list[str] = []
        for resource in resources:
            key = ResourceKey.of(resource)
            record = (self.state.pods.get(pod_key(key.namespace, key.name))
                      if isinstance(resource, Pod) else None)
            if record is not None:
                records.append(record)
            elif key in snapshot:
                keys.append(key)
            elif not isinstance(resource, Node):
                missing.append(f"{key}: not found")
        if not ignore_not_found:
            problems += missing
        _raise("delete", problems)
        for record in records:
            self._remove_pod(record)
            self.say(f"pod/{record.namespace}/{record.name} deleted")
        if keys:
            try:
                self.datastore.delete(keys)
            except DatastoreError as err:
                raise LabError(str(err)) from None
            for key in keys:
                self.say(f"{_name(key)} deleted")


def apply_resources(state: LabState, resources: Sequence[Resource], say: Say) -> None:
    with open_datastore(state.paths.datastore_url) as datastore:
        Applier(state, datastore, say).apply(resources)


def delete_resources(state: LabState, resources: Sequence[Resource], say: Say,
                     ignore_not_found: bool = False) -> None:
    with open_datastore(state.paths.datastore_url) as datastore:
        Applier(state, datastore, say).delete(resources, ignore_not_found)
