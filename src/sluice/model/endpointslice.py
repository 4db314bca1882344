"""EndpointSlice (discovery.k8s.io/v1)."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal, TypeAlias

from pydantic import StrictBool, model_validator

from sluice.model.addresses import AddressError, IPAddress, parse_ip
from sluice.model.base import KubeModel, Shared
from sluice.model.fieldtypes import DNSLabel, DNSSubdomain, PortNumber, Protocol
from sluice.model.names import dns_subdomain_problem
from sluice.model.resource import Resource
from sluice.model.violations import Violations

AddressType: TypeAlias = Literal["IPv4", "IPv6", "FQDN"]
SERVICE_NAME_LABEL = "kubernetes.io/service-name"


def address_problem(address: str, address_type: AddressType) -> str | None:
    if address_type == "FQDN":
        problem = dns_subdomain_problem(address)
        return None if problem is None else f'"{address}" is not a valid FQDN: {problem}'
    try:
        ip = parse_ip(address)
    except AddressError as err:
        return f"{err} (addressType is {address_type})"
    if f"IPv{ip.version}" != address_type:
        return f'"{address}" is not an {address_type} address (addressType is {address_type})'
    return None


class EndpointConditions(KubeModel):
    ready: StrictBool | None = None
    serving: StrictBool | None = None
    terminating: StrictBool | None = None


class ObjectReference(KubeModel):
    kind: str | None = None
    name: str | None = None
    namespace: str | None = None
    uid: str | None = None
    api_version: str | None = None
    resource_version: str | None = None
    field_path: str | None = None


class ZoneOrNodeName(KubeModel):
    name: str


class EndpointHints(KubeModel):
    for_zones: tuple[ZoneOrNodeName, ...] = ()
    for_nodes: tuple[ZoneOrNodeName, ...] = ()


class Endpoint(KubeModel):
    addresses: tuple[str, ...]
    conditions: Annotated[EndpointConditions, Shared] = EndpointConditions()
    hostname: DNSLabel | None = None
    node_name: DNSSubdomain | None = None
    target_ref: ObjectReference | None = None
    zone: str | None = None
    hints: EndpointHints | None = None

    @property
    def is_ready(self) -> bool:
        """Kubernetes reads an unset ready condition as ready."""
        return self.conditions.ready is not False

    @property
    def ips(self) -> tuple[IPAddress, ...]:
        """The addresses as IPs (empty for FQDN slices)."""
        ips: list[IPAddress] = []
        for address in self.addresses:
            try:
                ips.append(parse_ip(address))
            except AddressError:
                return ()
        return tuple(ips)


class EndpointPort(KubeModel):
    name: DNSLabel | None = None
    port: PortNumber | None = None
    protocol: Protocol = "TCP"
    app_protocol: str | None = None


class EndpointSlice(Resource):
    API_VERSION: ClassVar[str] = "discovery.k8s.io/v1"
    KIND: ClassVar[str] = "EndpointSlice"

    address_type: AddressType
    endpoints: tuple[Endpoint, ...] = ()
    ports: tuple[Annotated[EndpointPort, Shared], ...] = ()

    @model_validator(mode="after")
    def _consistent(self) -> EndpointSlice:
        violations = Violations("EndpointSlice")
        for index, endpoint in enumerate(self.endpoints):
            if not endpoint.addresses:
                violations.add(
                    ("endpoints", index, "addresses"), "at least one address is required"
                )
            for position, address in enumerate(endpoint.addresses):
                problem = address_problem(address, self.address_type)
                if problem is not None:
                    violations.add(("endpoints", index, "addresses", position), problem, address)
        names: dict[str, int] = {}
        for index, port in enumerate(self.ports):
            key = port.name or ""
            if key in names:
                violations.add(
                    ("ports", index, "name"),
                    f'duplicate port name "{key}" (also ports[{names[key]}])',
                    key,
                )
            names.setdefault(key, index)
        violations.raise_if_any()
        return self

    @property
    def service_name(self) -> str | None:
        return self.metadata.labels.get(SERVICE_NAME_LABEL)
