"""The pods wired on this node, from the CNI plugin's endpoint records."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sluice.cni.registry import EndpointRecord
from sluice.model.addresses import IPAddress


@dataclass(frozen=True)
class LocalEndpoint:
    key: str
    pod: str  # "namespace/name", or the record key when the runtime gave no pod name
    addresses: tuple[IPAddress, ...]
    host_ifname: str
    host_ifindex: int
    host_mac: str
    pod_mac: str


@dataclass(frozen=True)
class LocalEndpoints:
    endpoints: tuple[LocalEndpoint, ...]
    problems: tuple[str, ...] = ()


def local_endpoints(records: Iterable[EndpointRecord]) -> LocalEndpoints:
    """One endpoint per record; an address claimed twice goes to the newest record."""
    ordered = sorted(records, key=lambda r: (r.created_at, r.key), reverse=True)
    owner: dict[IPAddress, str] = {}
    problems: list[str] = []
    endpoints: list[LocalEndpoint] = []
    for record in ordered:
        addresses: list[IPAddress] = []
        for address in record.addresses:
            if address in owner:
                problems.append(f"address {address} of endpoint {record.key} is also claimed by "
                                f"the newer endpoint {owner[address]}; ignored here")
                continue
            owner[address] = record.key
            addresses.append(address)
        pod = (f"{record.pod_namespace}/{record.pod_name}" if record.pod_name else record.key)
        endpoints.append(LocalEndpoint(record.key, pod, tuple(addresses), record.host_ifname,
                                       record.host_ifindex, record.host_mac, record.pod_mac))
    endpoints.sort(key=lambda e: e.key)
    return LocalEndpoints(tuple(endpoints), tuple(problems))
