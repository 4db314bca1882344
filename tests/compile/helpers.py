"""Cluster states and endpoint records for the pure compile tests."""

from __future__ import annotations

import ipaddress

from sluice.cni.registry import EndpointRecord
from sluice.datastore import ClusterState
from sluice.model import Node


def node(name: str, internal_ips: tuple[str, ...], pod_cidrs: tuple[str, ...]) -> Node:
    return Node.model_validate({
        "apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
        "spec": {"podCIDRs": list(pod_cidrs)},
        "status": {"addresses": [{"type": "InternalIP", "address": ip} for ip in internal_ips]},
    })


N1 = node("n1", ("198.18.0.11", "fd00:ff::11"), ("198.18.16.0/24", "fd00:10:1::/64"))
N2 = node("n2", ("198.18.0.12", "fd00:ff::12"), ("198.18.17.0/24", "fd00:10:2::/64"))
N3_V6_ONLY = node("n3", ("fd00:ff::13",), ("fd00:10:3::/64",))
CLUSTER = ClusterState([N1, N2])


def record(key: str, ipv4: str | None, ipv6: str | None, *, host_if: str = "",
           ifindex: int = 10, created_at: str = "2026-01-01T00:00:00Z",
           pod: str = "") -> EndpointRecord:
    return EndpointRecord(
        container_id=key, ifname="eth0", netns=f"/run/netns/{key}", pod_namespace="default",
        pod_name=pod, host_ifname=host_if or f"sl{key}", host_ifindex=ifindex,
        host_mac="02:00:00:00:00:01", pod_mac="02:00:00:00:00:02",
        ipv4=ipaddress.IPv4Address(ipv4) if ipv4 else None,
        ipv6=ipaddress.IPv6Address(ipv6) if ipv6 else None,
        mtu=1450, created_at=created_at)
