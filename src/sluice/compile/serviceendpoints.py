"""The endpoints of every Service: from its EndpointSlices, or derived from its selector
and the pods' readiness the way the Kubernetes EndpointSlice controller derives them."""

from __future__ import annotations

import functools
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address

from sluice.datastore.state import ClusterState
from sluice.model import EndpointSlice, Pod, Service
from sluice.model.addresses import AddressError, IPAddress, parse_ip
from sluice.model.endpointslice import Endpoint
from sluice.model.fieldtypes import Protocol
from sluice.model.service import ServicePort


@dataclass(frozen=True, slots=True, order=True)
class ServiceEndpoint:
    """One address:port that serves one port of a Service."""

    address: IPAddress
    port: int
    node: str | None = None
    pod: str | None = None  # "namespace/name"
    ready: bool = True
    serving: bool = True
    terminating: bool = False


def service_endpoints(state: ClusterState, service: Service, port: ServicePort,
                      slices: tuple[EndpointSlice, ...] | None = None
                      ) -> tuple[ServiceEndpoint, ...]:
    """Every endpoint of PORT of SERVICE, whatever its condition, sorted. SLICES: the
    Service's slices when the caller knows them (else looked up)."""
    if slices is None:
        slices = slices_of(state, service)
    if slices:
        found = {e for s in slices for e in _from_slice(s, port)}
    elif service.spec.selector:
        found = {e for pod in _selected_pods(state, service) for e in _from_pod(service, pod, port)}
    else:
        found = set()
    return tuple(sorted(found, key=_sort_key))


def _sort_key(endpoint: ServiceEndpoint) -> tuple[int, int, int]:
    return (endpoint.address.version, int(endpoint.address), endpoint.port)


def slices_of(state: ClusterState, service: Service) -> tuple[EndpointSlice, ...]:
    """SERVICE's EndpointSlices (FQDN ones left out), in listing order."""
    return state.derived(_slices_by_service).get((service.namespace, service.name), ())


def _slices_by_service(state: ClusterState) -> dict[tuple[str, str], tuple[EndpointSlice, ...]]:
    """Every non-FQDN EndpointSlice by (namespace, service name), in listing order."""
    found: dict[tuple[str, str], list[EndpointSlice]] = {}
    for endpoint_slice in state.endpoint_slices():
        name = endpoint_slice.service_name
        if name is not None and endpoint_slice.address_type != "FQDN":
            found.setdefault((endpoint_slice.namespace, name), []).append(endpoint_slice)
    return {key: tuple(slices) for key, slices in found.items()}


def _from_slice(endpoint_slice: EndpointSlice, port: ServicePort) -> Iterable[ServiceEndpoint]:
    number = next((p.port for p in endpoint_slice.ports
                   if (p.name or None) == port.name and p.protocol == port.protocol
                   and p.port is not None), None)
    if number is None:
        return
    for endpoint in endpoint_slice.endpoints:
        conditions = endpoint.conditions
        pod = None
        if endpoint.target_ref is not None and endpoint.target_ref.kind == "Pod":
            pod = f"{endpoint.target_ref.namespace or endpoint_slice.namespace}/" \
                  f"{endpoint.target_ref.name}"
        for address in _ips(endpoint):
            yield ServiceEndpoint(
                address, number, endpoint.node_name, pod,
                ready=endpoint.is_ready,
                # Kubernetes: serving defaults to ready, terminating to false.
                serving=endpoint.is_ready if conditions.serving is None else conditions.serving,
                terminating=bool(conditions.terminating),
            )


def _ips(endpoint: Endpoint) -> tuple[IPAddress, ...]:
    """`endpoint.ips`, each address parsed once and shared: a large cluster has the same
    endpoint addresses in every state (and in many Services)."""
    try:
        return tuple(_ip(address) for address in endpoint.addresses)
    except AddressError:
        return ()


@functools.lru_cache(maxsize=1 << 17)
def _ip(text: str) -> IPAddress:
    try:  # inet_pton takes exactly what ipaddress takes as IPv4, at a tenth of the cost
        return IPv4Address(socket.inet_pton(socket.AF_INET, text))
    except OSError:
        return parse_ip(text)


def _selected_pods(state: ClusterState, service: Service) -> Iterable[Pod]:
    selector = service.spec.selector
    for pod in state.pods(service.namespace):
        labels = pod.metadata.labels
        if all(labels.get(k) == v for k, v in selector.items()) and pod.ips:
            yield pod


def _from_pod(service: Service, pod: Pod, port: ServicePort) -> Iterable[ServiceEndpoint]:
    number = _target_port(pod, port.target, port.protocol)
    if number is None:
        return
    terminating = pod.metadata.deletion_timestamp is not None
    ready = (pod.is_ready or service.spec.publish_not_ready_addresses) and not terminating
    for address in pod.ips:
        yield ServiceEndpoint(address, number, pod.spec.node_name, f"{pod.namespace}/{pod.name}",
                              ready=ready, serving=ready or (terminating and pod.is_ready),
                              terminating=terminating)


def _target_port(pod: Pod, target: int | str, protocol: Protocol) -> int | None:
    if isinstance(target, int):
        return target
    named = pod.spec.named_port(target)
    if named is None or named.protocol != protocol:
        return None
    return named.container_port
