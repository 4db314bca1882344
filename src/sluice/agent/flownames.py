"""The names a node's flows are shown with, from what a reconcile computed: pods (with
their labels and identity), this node's and other nodes' addresses, service frontends,
policy rules and interfaces."""

from __future__ import annotations

from collections.abc import Mapping

from sluice.compile.identities import pod_identity_key
from sluice.compile.policy import rule_origins
from sluice.compile.policytypes import PolicyState
from sluice.compile.services import ServicePlan, ServiceTable
from sluice.compile.topology import NodeView
from sluice.datapath.addr import IPAddress
from sluice.datapath.lb import PROTOCOLS
from sluice.datastore import ClusterState
from sluice.model.core import Pod
from sluice.observe.flows import Names


def flow_names(state: ClusterState, view: NodeView, policy: PolicyState,
               services: ServiceTable, interfaces: Mapping[str, int]) -> Names:
    identity_of = {pod_identity_key(info.namespace, info.labels): identity
                   for identity, info in policy.identities.items() if info.cidr is None}
    pods: dict[IPAddress, tuple[str, str, tuple[str, ...], int]] = {}
    for pod in state.pods():
        named = _pod_name(pod, identity_of)
        for ip in pod.ips:
            pods[ip] = named
    for endpoint in policy.endpoints:  # the CNI's view of local pods wins
        if endpoint.host_endpoint:
            continue
        namespace, _, name = endpoint.name.partition("/")
        known = next((pods[a] for a in endpoint.addresses if a in pods), None)
        labels = known[2] if known else ()
        for address in endpoint.addresses:
            pods[address] = (namespace, name, labels, endpoint.identity)
    node_ips = {ip: node.name for node in view.peers for ip in node.internal_ips}
    frontends = _frontend_names(services)
    return Names(node=view.name, pods=pods, host_ips=frozenset(view.local.internal_ips),
                 node_ips=node_ips, services=frontends, rules=rule_origins(policy),
                 interfaces={index: name for name, index in interfaces.items()})


FrontendKey = tuple[IPAddress, int, int]
_last_frontends: list[tuple[ServiceTable, dict[FrontendKey, str]]] = []
"""The last table's frontend names: the next table changes only its changed Services'."""


def _frontend_key(plan: ServicePlan) -> FrontendKey:
    frontend = plan.frontend
    return frontend.address, frontend.port, PROTOCOLS.get(str(frontend.protocol), 0)


def _frontend_names(table: ServiceTable) -> dict[FrontendKey, str]:
    if _last_frontends and _last_frontends[0][0] is table:
        return _last_frontends[0][1]
    if _last_frontends:
        # Updated in place: readers of the last Names only look names up, and a name
        # one reconcile early is as good.
        earlier, names = _last_frontends[0]
        changed = table.changed_since(earlier)
        for key in changed:
            for plan in earlier.groups.get(key, ()):
                if names.get(_frontend_key(plan)) == plan.service:
                    del names[_frontend_key(plan)]
        for key in changed:
            names.update((_frontend_key(plan), plan.service) for plan in table.groups.get(key, ()))
    else:
        names = {_frontend_key(plan): plan.service for plan in table.plans}
    _last_frontends[:] = [(table, names)]
    return names


def _pod_name(pod: Pod, identity_of: Mapping[str, int]
              ) -> tuple[str, str, tuple[str, ...], int]:
    namespace = pod.metadata.namespace or "default"
    labels = pod.metadata.labels
    return (namespace, pod.metadata.name,
            tuple(f"k8s:{key}={value}" for key, value in sorted(labels.items())),
            identity_of.get(pod_identity_key(namespace, labels), 0))
