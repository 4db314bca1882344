"""Core v1 kinds: Namespace, Node and Pod."""

from __future__ import annotations

from typing import Any, ClassVar, Literal, TypeAlias

from pydantic import Field, StrictBool, model_validator

from sluice.model.addresses import AddressError, IPAddress, IPNetwork, family_of, parse_ip
from sluice.model.base import KubeModel
from sluice.model.fieldtypes import (
    CIDR,
    DNSLabel,
    DNSSubdomain,
    IPAddr,
    PortName,
    PortNumber,
    Protocol,
)
from sluice.model.names import dns_label_problem
from sluice.model.resource import NameRule, Resource
from sluice.model.violations import Violations

NodeAddressType: TypeAlias = Literal[
    "InternalIP", "ExternalIP", "Hostname", "InternalDNS", "ExternalDNS"
]
PodPhase: TypeAlias = Literal["Pending", "Running", "Succeeded", "Failed", "Unknown"]
ConditionStatus: TypeAlias = Literal["True", "False", "Unknown"]

_IP_ADDRESS_TYPES = ("InternalIP", "ExternalIP")


def _check_one_per_family(
    violations: Violations, field: str, values: tuple[IPAddress, ...] | tuple[IPNetwork, ...]
) -> None:
    if len(values) > 2:
        violations.add((field,), f"at most 2 entries (one IPv4, one IPv6), got {len(values)}")
        return
    if len(values) == 2 and values[0].version == values[1].version:
        violations.add(
            (field, 1),
            f'"{values[1]}" is a second {family_of(values[1])} entry; at most one per family',
            str(values[1]),
        )


def _check_primary(
    violations: Violations,
    single: tuple[str, IPAddress | IPNetwork | None],
    plural: tuple[str, tuple[IPAddress, ...] | tuple[IPNetwork, ...]],
) -> None:
    (single_field, value), (plural_field, values) = single, plural
    if value is not None and values and values[0] != value:
        violations.add(
            (plural_field, 0),
            f'"{values[0]}" must equal {single_field} "{value}"',
            str(values[0]),
        )


class NamespaceSpec(KubeModel):
    finalizers: tuple[str, ...] = ()


class NamespaceStatus(KubeModel):
    phase: Literal["Active", "Terminating"] | None = None
    conditions: Any = None


class Namespace(Resource):
    API_VERSION: ClassVar[str] = "v1"
    KIND: ClassVar[str] = "Namespace"
    NAMESPACED: ClassVar[bool] = False
    NAME_RULES: ClassVar[tuple[NameRule, ...]] = (dns_label_problem,)

    spec: NamespaceSpec = Field(default_factory=NamespaceSpec)
    status: NamespaceStatus = Field(default_factory=NamespaceStatus)


class NodeSpec(KubeModel):
    pod_cidr: CIDR | None = Field(default=None, alias="podCIDR")
    pod_cidrs: tuple[CIDR, ...] = Field(default=(), alias="podCIDRs")

    @model_validator(mode="after")
    def _cidrs_consistent(self) -> NodeSpec:
        violations = Violations("NodeSpec")
        _check_one_per_family(violations, "podCIDRs", self.pod_cidrs)
        _check_primary(violations, ("podCIDR", self.pod_cidr), ("podCIDRs", self.pod_cidrs))
        violations.raise_if_any()
        return self

    @property
    def cidrs(self) -> tuple[IPNetwork, ...]:
        if self.pod_cidrs:
            return self.pod_cidrs
        return () if self.pod_cidr is None else (self.pod_cidr,)


class NodeAddress(KubeModel):
    type: NodeAddressType
    address: str

    @model_validator(mode="after")
    def _ip_types_hold_ips(self) -> NodeAddress:
        if self.type in _IP_ADDRESS_TYPES:
            violations = Violations("NodeAddress")
            try:
                parse_ip(self.address)
            except AddressError as err:
                violations.add(("address",), f"{err} (type is {self.type})", self.address)
            violations.raise_if_any()
        return self

    @property
    def ip(self) -> IPAddress | None:
        return parse_ip(self.address) if self.type in _IP_ADDRESS_TYPES else None


class NodeStatus(KubeModel):
    addresses: tuple[NodeAddress, ...] = ()


class Node(Resource):
    API_VERSION: ClassVar[str] = "v1"
    KIND: ClassVar[str] = "Node"
    NAMESPACED: ClassVar[bool] = False

    spec: NodeSpec = Field(default_factory=NodeSpec)
    status: NodeStatus = Field(default_factory=NodeStatus)

    def addresses_of(self, address_type: NodeAddressType) -> tuple[IPAddress, ...]:
        return tuple(
            address.ip
            for address in self.status.addresses
            if address.type == address_type and address.ip is not None
        )

    @property
    def internal_ips(self) -> tuple[IPAddress, ...]:
        return self.addresses_of("InternalIP")


class ContainerPort(KubeModel):
    name: PortName | None = None
    container_port: PortNumber
    protocol: Protocol = "TCP"
    host_port: PortNumber | None = None
    host_ip: IPAddr | None = Field(default=None, alias="hostIP")


class Container(KubeModel):
    name: DNSLabel
    image: str | None = None
    command: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    ports: tuple[ContainerPort, ...] = ()


class PodSpec(KubeModel):
    node_name: DNSSubdomain | None = None
    host_network: StrictBool = False
    containers: tuple[Container, ...]

    @model_validator(mode="after")
    def _names_unique(self) -> PodSpec:
        violations = Violations("PodSpec")
        if not self.containers:
            violations.add(("containers",), "at least one container is required")
        container_names: dict[str, int] = {}
        port_names: dict[str, tuple[int, int]] = {}
        for index, container in enumerate(self.containers):
            if container.name in container_names:
                violations.add(
                    ("containers", index, "name"),
                    f'duplicate container name "{container.name}" '
                    f"(also containers[{container_names[container.name]}])",
                    container.name,
                )
            container_names.setdefault(container.name, index)
            for port_index, port in enumerate(container.ports):
                if port.name is None:
                    continue
                if port.name in port_names:
                    first, first_port = port_names[port.name]
                    violations.add(
                        ("containers", index, "ports", port_index, "name"),
                        f'duplicate port name "{port.name}" '
                        f"(also containers[{first}].ports[{first_port}])",
                        port.name,
                    )
                port_names.setdefault(port.name, (index, port_index))
        violations.raise_if_any()
        return self

    def named_port(self, name: str) -> ContainerPort | None:
        """The container port a Service targetPort or policy port name refers to."""
        for container in self.containers:
            for port in container.ports:
                if port.name == name:
                    return port
        return None


class PodIP(KubeModel):
    ip: IPAddr


class PodCondition(KubeModel):
    type: str
    status: ConditionStatus
    reason: str | None = None
    message: str | None = None
    last_probe_time: Any = None
    last_transition_time: Any = None
    observed_generation: Any = None


class PodStatus(KubeModel):
    phase: PodPhase | None = None
    pod_ip: IPAddr | None = Field(default=None, alias="podIP")
    pod_ips: tuple[PodIP, ...] = Field(default=(), alias="podIPs")
    host_ip: IPAddr | None = Field(default=None, alias="hostIP")
    host_ips: tuple[PodIP, ...] = Field(default=(), alias="hostIPs")
    conditions: tuple[PodCondition, ...] = ()
    reason: str | None = None
    message: str | None = None
    nominated_node_name: str | None = None
    start_time: Any = None
    qos_class: Any = None
    container_statuses: Any = None
    init_container_statuses: Any = None
    ephemeral_container_statuses: Any = None
    observed_generation: Any = None

    @model_validator(mode="after")
    def _ips_consistent(self) -> PodStatus:
        violations = Violations("PodStatus")
        ips = tuple(entry.ip for entry in self.pod_ips)
        _check_one_per_family(violations, "podIPs", ips)
        _check_primary(violations, ("podIP", self.pod_ip), ("podIPs", ips))
        violations.raise_if_any()
        return self

    @property
    def ips(self) -> tuple[IPAddress, ...]:
        if self.pod_ips:
            return tuple(entry.ip for entry in self.pod_ips)
        return () if self.pod_ip is None else (self.pod_ip,)

    def condition(self, condition_type: str) -> PodCondition | None:
        return next((c for c in self.conditions if c.type == condition_type), None)


class Pod(Resource):
    API_VERSION: ClassVar[str] = "v1"
    KIND: ClassVar[str] = "Pod"

    spec: PodSpec
    status: PodStatus = Field(default_factory=PodStatus)

    @property
    def ips(self) -> tuple[IPAddress, ...]:
        return self.status.ips

    @property
    def is_ready(self) -> bool:
        ready = self.status.condition("Ready")
        return ready is not None and ready.status == "True"
