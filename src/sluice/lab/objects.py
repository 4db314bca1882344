"""The objects the lab writes to its datastore on behalf of Kubernetes' control plane:
Nodes (kubelet), a Pod's node and status (scheduler, kubelet), Service clusterIPs (API
server) and LoadBalancer ingress IPs (a cloud's load balancer controller). Each is built
as a manifest and validated by the model like any other."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any

from sluice.compile.topology import DATAPLANE_ANNOTATION
from sluice.datastore import to_manifest
from sluice.lab.errors import LabError
from sluice.lab.plan import SERVICE_V4, SERVICE_V6, NodePlan, load_balancer_pool
from sluice.model import Node, Pod, Service
from sluice.model.service import HEADLESS

HOSTNAME_LABEL = "kubernetes.io/hostname"
FIRST_SERVICE_HOST = {4: 10, 6: 0x10}
"""The first address allocated: 198.19.0.10 and fd00:96::10."""
FIRST_LOAD_BALANCER_HOST = {4: 10, 6: 0x10}
"""The first load balancer IP allocated: 198.18.200.10 and fd00:97::10."""

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def node_resource(node: NodePlan, dataplane: str) -> Node:
    """NODE as the datastore holds it; its dataplane annotation tells bpf peers whether
    it can return replies of flows they forwarded to it (see compile/services.py)."""
    return Node.model_validate({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": node.name, "labels": {HOSTNAME_LABEL: node.name},
                     "annotations": {DATAPLANE_ANNOTATION: dataplane}},
        "spec": {"podCIDR": node.pod_cidrs[0], "podCIDRs": list(node.pod_cidrs)},
        "status": {"addresses": [
            *({"type": "InternalIP", "address": address} for address in node.addresses),
            {"type": "Hostname", "address": node.name},
        ]},
    })


def scheduled(pod: Pod, node: str) -> Pod:
    """POD with spec.nodeName set."""
    doc = to_manifest(pod)
    doc["spec"]["nodeName"] = node
    return Pod.model_validate(doc)


def running(pod: Pod, node: NodePlan, ips: list[str]) -> Pod:
    """POD as the kubelet reports it once its server answers: Running and Ready."""
    doc = to_manifest(scheduled(pod, node.name))
    doc["status"] = {
        "phase": "Running",
        "podIP": ips[0],
        "podIPs": [{"ip": ip} for ip in ips],
        "hostIP": node.addresses[0],
        "hostIPs": [{"ip": ip} for ip in node.addresses],
        "conditions": [
            {"type": "PodScheduled", "status": "True"},
            {"type": "Initialized", "status": "True"},
            {"type": "ContainersReady", "status": "True"},
            {"type": "Ready", "status": "True"},
        ],
    }
    return Pod.model_validate(doc)


def same_pod_spec(stored: Pod, wanted: Pod) -> bool:
    """Whether WANTED needs no new sandbox: its spec equals the stored one, where a
    missing nodeName means "wherever it already runs"."""
    if wanted.spec.node_name is None and stored.spec.node_name is not None:
        wanted = scheduled(wanted, stored.spec.node_name)
    return stored.spec == wanted.spec


def _family_name(version: int) -> str:
    return f"IPv{version}"


def _wanted_families(service: Service, lab_families: tuple[int, ...]) -> list[int]:
    """The families to allocate, primary first, following ipFamilies and ipFamilyPolicy."""
    spec = service.spec
    policy = spec.ip_family_policy or "SingleStack"
    lab = "/".join(_family_name(f) for f in lab_families)
    wanted = [4 if family == "IPv4" else 6 for family in spec.ip_families] or [lab_families[0]]
    if policy != "SingleStack":
        wanted += [family for family in lab_families if family not in wanted]
    if policy == "PreferDualStack":
        wanted = [family for family in wanted if family in lab_families] or wanted
    missing = [family for family in wanted if family not in lab_families]
    if missing:
        raise LabError(f"{service.ref}: needs {_family_name(missing[0])} (ipFamilyPolicy "
                       f"{policy}) but the lab is {lab} only")
    if policy == "RequireDualStack" and len(wanted) < 2:
        raise LabError(f"{service.ref}: ipFamilyPolicy RequireDualStack needs a dual-stack "
                       f"lab; this one is {lab} only")
    return wanted[:2] if policy != "SingleStack" else wanted[:1]


def with_cluster_ips(service: Service, lab_families: tuple[int, ...],
                     taken: set[ipaddress.IPv4Address | ipaddress.IPv6Address],
                     previous: Service | None = None) -> Service:
    """SERVICE with clusterIP(s) allocated when it has none, as the API server would.

    A Service that keeps its name keeps its addresses (PREVIOUS, the stored object).
    New addresses are the lowest free ones from 198.19.0.10 and fd00:96::10 up; TAKEN
    holds every address in use and receives the new ones.
    """
    spec = service.spec
    if spec.type == "ExternalName" or spec.cluster_ip_addresses or spec.cluster_ip == HEADLESS:
        return service
    families = _wanted_families(service, lab_families)
    reuse: dict[int, ipaddress.IPv4Address | ipaddress.IPv6Address] = {
        ip.version: ip for ip in (previous.spec.cluster_ip_addresses if previous else ())}
    addresses = [reuse.get(family) or _allocate(family, taken) for family in families]
    taken.update(addresses)
    doc: dict[str, Any] = to_manifest(service)
    doc["spec"]["clusterIP"] = str(addresses[0])
    doc["spec"]["clusterIPs"] = [str(address) for address in addresses]
    doc["spec"]["ipFamilies"] = [_family_name(family) for family in families]
    doc["spec"].setdefault("ipFamilyPolicy", "SingleStack")
    return Service.model_validate(doc)


def _allocate(family: int, taken: set[ipaddress.IPv4Address | ipaddress.IPv6Address]
              ) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    network = SERVICE_V4 if family == 4 else SERVICE_V6
    return _lowest_free(network, FIRST_SERVICE_HOST[family], taken, "service address")


def _lowest_free(network: ipaddress.IPv4Network | ipaddress.IPv6Network, first: int,
                 taken: set[Address], what: str) -> Address:
    for offset in range(first, network.num_addresses - 1):
        candidate = network.network_address + offset
        if candidate not in taken:
            return candidate
    raise LabError(f"no free {what} left in {network}")


def with_load_balancer_ips(service: Service, taken: set[Address],
                           previous: Service | None = None) -> Service:
    """SERVICE with status.loadBalancer.ingress set, as a cloud's load balancer controller
    would, when it is of type LoadBalancer and has none: one IP per family of its
    clusterIPs (primary first), spec.loadBalancerIP when it has that family, else the one
    PREVIOUS (the stored object) had, else the lowest free one of the pool
    (198.18.200.0/24 from .10, fd00:97::/112 from ::10). TAKEN holds the ingress IPs in use
    by other Services and receives the new ones.
    """
    if service.spec.type != "LoadBalancer" or service.status.load_balancer.ingress:
        return service
    families = [ip.version for ip in service.spec.cluster_ip_addresses] or [
        4 if family == "IPv4" else 6 for family in service.spec.ip_families] or [4]
    previous_ips = [] if previous is None else [
        ingress.ip for ingress in previous.status.load_balancer.ingress
        if ingress.ip is not None]
    wanted = service.spec.load_balancer_ip
    addresses: list[Address] = []
    for family in families:
        chosen = next((ip for ip in [wanted, *previous_ips]
                       if ip is not None and ip.version == family), None)
        if chosen is None:
            chosen = _lowest_free(load_balancer_pool(family), FIRST_LOAD_BALANCER_HOST[family],
                                  taken, "load balancer IP")
        elif chosen == wanted and chosen in taken:
            raise LabError(f"{service.ref}: spec.loadBalancerIP {chosen} is the load balancer "
                           "IP of another Service")
        taken.add(chosen)
        addresses.append(chosen)
    doc: dict[str, Any] = to_manifest(service)
    doc["status"] = {**doc.get("status", {}),
                     "loadBalancer": {"ingress": [{"ip": str(ip)} for ip in addresses]}}
    return Service.model_validate(doc)


def load_balancer_ips_in_use(services: Iterable[Service]) -> set[Address]:
    return {ingress.ip for service in services for ingress in
            service.status.load_balancer.ingress if ingress.ip is not None}


def cluster_ips_in_use(services: Iterable[Service]
                       ) -> set[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    return {ip for service in services for ip in service.spec.cluster_ip_addresses}
