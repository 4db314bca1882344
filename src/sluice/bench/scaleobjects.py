"""Many Services for the scale benchmarks: COUNT ClusterIP Services in their own
namespace, each with an EndpointSlice of ENDPOINTS addresses that no pod holds (the
datapath and the rules must carry them; no traffic goes to them)."""

from __future__ import annotations

import ipaddress
from typing import Any

NAMESPACE = "scale"
PORT = 80
TARGET_PORT = 8080
# Endpoint addresses: 198.18.128.0/17 lies outside the lab's pods, nodes and services.
ENDPOINT_BASE = int(ipaddress.IPv4Address("198.18.128.0"))
ENDPOINT_SPACE = 2**15


def namespace() -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}


def service_name(index: int) -> str:
    return f"s{index:05d}"


def endpoint_address(index: int, endpoint: int, endpoints: int) -> str:
    return str(ipaddress.IPv4Address(ENDPOINT_BASE + (index * endpoints + endpoint)
                                     % ENDPOINT_SPACE))


def service(index: int) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": service_name(index), "namespace": NAMESPACE},
            "spec": {"type": "ClusterIP",
                     "ports": [{"name": "http", "port": PORT, "targetPort": TARGET_PORT,
                                "protocol": "TCP"}]}}


def endpoint_slice(index: int, endpoints: int, *, generation: int = 0) -> dict[str, Any]:
    """The slice of service INDEX; a different GENERATION moves its first endpoint."""
    addresses = [endpoint_address(index, e, endpoints) for e in range(endpoints)]
    if generation and addresses:
        addresses[0] = endpoint_address(index + generation * 7919, 0, endpoints)
    name = service_name(index)
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": f"{name}-a", "namespace": NAMESPACE,
                         "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": TARGET_PORT, "protocol": "TCP"}],
            "endpoints": [{"addresses": [a], "conditions": {"ready": True}}
                          for a in addresses]}


def services(count: int, endpoints: int) -> list[dict[str, Any]]:
    """The namespace, COUNT Services and their EndpointSlices."""
    docs = [namespace()]
    for index in range(count):
        docs.append(service(index))
        docs.append(endpoint_slice(index, endpoints))
    return docs
