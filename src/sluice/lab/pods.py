"""A pod's life in the lab: sandbox (namespace + `sluice-cni` ADD), server, datastore record.

Create: pod namespace -> CNI ADD on the node -> cgroup + server bound to every port ->
the node's agent has programmed the endpoint -> Pod written to the datastore as Running
and Ready. Every step is undone if a later one
fails. hostNetwork pods skip the namespace and CNI: their server runs in the node's
namespace and their IPs are the node's.

Remove: stop the server -> CNI DEL -> remove the namespace and cgroup -> delete the Pod.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

from sluice import cgroups, netns
from sluice.cni.registry import record_key
from sluice.datastore import Datastore, ResourceKey
from sluice.lab import agents, names, objects, procs, servers, topology
from sluice.lab.cni import IFNAME, CniCall
from sluice.lab.errors import LabError
from sluice.lab.interrupts import held_back
from sluice.lab.plan import NodePlan
from sluice.lab.state import LabState, PodRecord, PortSpec, save
from sluice.model import Pod

Say = Callable[[str], None]


@dataclass
class PodOps:
    state: LabState
    datastore: Datastore
    say: Say

    def _cni(self, record: PodRecord, node: NodePlan) -> CniCall:
        assert record.container_id is not None
        return CniCall(node=node, state_dir=self.state.paths.cni_state_dir(node.name),
                       options=self.state.options, container_id=record.container_id,
                       pod_netns=record.netns, pod_namespace=record.namespace,
                       pod_name=record.name)

    def new_record(self, pod: Pod, node: NodePlan) -> PodRecord:
        lab = self.state.name
        host = pod.spec.host_network
        return PodRecord(
            namespace=pod.namespace,
            name=pod.name,
            node=node.name,
            host_network=host,
            netns=node.netns if host else names.pod_netns(lab, pod.namespace, pod.name),
            container_id=None if host else names.container_id(lab, pod.namespace, pod.name),
            ips=list(node.addresses) if host else [],
            ports=declared_ports(pod),
            cgroup=names.pod_cgroup(lab, node.name, pod.namespace, pod.name),
            log=str(self.state.paths.pod_log(pod.namespace, pod.name)),
        )

    def create(self, pod: Pod, node: NodePlan) -> PodRecord:
        record = self.new_record(pod, node)
        self._refuse_hash_clash(record)
        with contextlib.ExitStack() as undo:
            if not record.host_network:
                topology.create_netns(record.netns)
                undo.callback(netns.remove, record.netns)
                cni = self._cni(record, node)
                undo.callback(_quietly, cni.delete)
                record.ips = cni.add()
            undo.callback(_remove_cgroup, record.cgroup)
            with held_back():  # a Ctrl-C now would leave a server nobody recorded
                starting = servers.spawn_server(record)
                record.server = starting.record
                undo.callback(procs.stop, [starting.record])
                self.state.pods[record.key] = record
                undo.callback(self._forget, record.key)
                save(self.state)
            starting.wait(record)
            if record.container_id is not None:
                agents.wait_programmed(node, record_key(record.container_id, IFNAME),
                                       self.state.agents.get(node.name))
            self.datastore.apply([objects.running(pod, node, record.ips)])
            undo.pop_all()
        return record

    def _refuse_hash_clash(self, record: PodRecord) -> None:
        if record.host_network:
            return
        for other in self.state.pods.values():
            if other.netns == record.netns and other.key != record.key:
                raise LabError(f"pod {record.key} would share namespace {record.netns} with "
                               f"pod {other.key}; rename one of them")
        if netns.exists(record.netns):
            raise LabError(f"namespace {record.netns} for pod {record.key} already exists "
                           f"(a leftover?); sluice lab down --name {self.state.name} removes it")

    def _forget(self, key: str) -> None:
        self.state.pods.pop(key, None)
        save(self.state)

    def remove(self, record: PodRecord) -> list[str]:
        """Tear POD down; returns the problems met (every step is still attempted)."""
        problems: list[str] = []
        if record.server is not None:
            stuck = procs.stop([record.server])
            problems += [f"server pid {p.pid} of {record.key} would not exit" for p in stuck]
        if not record.host_network:
            node = self.state.plan.node(record.node)
            try:
                self._cni(record, node).delete()
            except LabError as err:
                problems.append(str(err))
            netns.remove(record.netns)
        _remove_cgroup(record.cgroup)
        key = ResourceKey("Pod", record.namespace, record.name)
        if key in self.datastore.snapshot():
            self.datastore.delete([key])
        self._forget(record.key)
        return problems


SERVED_PROTOCOLS = ("TCP", "UDP")


def declared_ports(pod: Pod) -> list[PortSpec]:
    """Every TCP and UDP containerPort of every container, once each, in declaration
    order (the pod server does not speak SCTP)."""
    found: list[PortSpec] = []
    for container in pod.spec.containers:
        for port in container.ports:
            if port.protocol not in SERVED_PROTOCOLS:
                continue
            spec = PortSpec(port.container_port, port.protocol)
            if spec not in found:
                found.append(spec)
    return found


def _remove_cgroup(relative: str) -> None:
    root = cgroups.find_cgroup2_mount()
    if root is not None:
        with contextlib.suppress(OSError):
            cgroups.remove_tree(f"{root}/{relative}")


def _quietly(step: Callable[[], object]) -> None:
    with contextlib.suppress(LabError, OSError):
        step()
