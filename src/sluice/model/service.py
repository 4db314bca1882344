"""Service (v1)."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal, TypeAlias

from pydantic import Field, PlainSerializer, PlainValidator, StrictBool, model_validator

from sluice.model.addresses import AddressError, IPAddress, IPFamily, family_of, parse_ip
from sluice.model.base import KubeModel, Shared
from sluice.model.fieldtypes import (
    CIDR,
    DNSLabel,
    DNSSubdomain,
    IPAddr,
    LabelMap,
    PortNumber,
    PortOrName,
    Protocol,
    int_in_range,
)
from sluice.model.names import dns1035_label_problem
from sluice.model.resource import NameRule, Resource
from sluice.model.violations import Violations, field_error, show

ServiceType: TypeAlias = Literal["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"]
TrafficPolicy: TypeAlias = Literal["Cluster", "Local"]
IPFamilyPolicy: TypeAlias = Literal["SingleStack", "PreferDualStack", "RequireDualStack"]
HEADLESS: Literal["None"] = "None"

DEFAULT_AFFINITY_TIMEOUT = 10800
MAX_AFFINITY_TIMEOUT = 86400
_EXTERNAL_TYPES = ("NodePort", "LoadBalancer")


def _cluster_ip(value: object) -> IPAddress | Literal["None"]:
    if value == HEADLESS:
        return HEADLESS
    if not isinstance(value, str):
        raise field_error(f'expected an IP address or "None", got {show(value)}')
    try:
        return parse_ip(value)
    except AddressError as err:
        raise field_error(f'{err}, or "None" for a headless service') from None


def _optional_cluster_ip(value: object) -> IPAddress | Literal["None"] | None:
    return None if value in ("", None) else _cluster_ip(value)


ClusterIP = Annotated[
    IPAddress | Literal["None"], PlainValidator(_cluster_ip), PlainSerializer(str)
]
OptionalClusterIP = Annotated[
    IPAddress | Literal["None"] | None,
    PlainValidator(_optional_cluster_ip),
    PlainSerializer(lambda value: None if value is None else str(value)),
]
AffinityTimeout = Annotated[
    int, PlainValidator(int_in_range(1, MAX_AFFINITY_TIMEOUT, "timeoutSeconds"))
]


class ServicePort(KubeModel):
    name: DNSLabel | None = None
    protocol: Protocol = "TCP"
    port: PortNumber
    target_port: PortOrName | None = None
    node_port: PortNumber | None = None
    app_protocol: str | None = None

    @property
    def target(self) -> int | str:
        """targetPort as Kubernetes defaults it: the service port when unset."""
        return self.port if self.target_port is None else self.target_port


class ClientIPConfig(KubeModel):
    timeout_seconds: AffinityTimeout | None = None


class SessionAffinityConfig(KubeModel):
    client_ip: ClientIPConfig | None = Field(default=None, alias="clientIP")


class LoadBalancerIngress(KubeModel):
    ip: IPAddr | None = None
    hostname: DNSSubdomain | None = None
    ip_mode: Literal["VIP", "Proxy"] | None = None
    ports: Any = None


class LoadBalancerStatus(KubeModel):
    ingress: tuple[LoadBalancerIngress, ...] = ()


class ServiceStatus(KubeModel):
    load_balancer: LoadBalancerStatus = Field(default_factory=LoadBalancerStatus)
    conditions: Any = None


class ServiceSpec(KubeModel):
    type: ServiceType = "ClusterIP"
    cluster_ip: OptionalClusterIP = Field(default=None, alias="clusterIP")
    cluster_ips: tuple[ClusterIP, ...] = Field(default=(), alias="clusterIPs")
    selector: LabelMap = Field(default_factory=dict)
    ports: tuple[Annotated[ServicePort, Shared], ...] = ()
    external_ips: tuple[IPAddr, ...] = Field(default=(), alias="externalIPs")
    external_name: DNSSubdomain | None = None
    load_balancer_ip: IPAddr | None = Field(default=None, alias="loadBalancerIP")
    load_balancer_source_ranges: tuple[CIDR, ...] = ()
    load_balancer_class: str | None = None
    session_affinity: Literal["None", "ClientIP"] = "None"
    session_affinity_config: SessionAffinityConfig | None = None
    external_traffic_policy: TrafficPolicy | None = None
    internal_traffic_policy: TrafficPolicy | None = None
    health_check_node_port: PortNumber | None = None
    ip_families: tuple[IPFamily, ...] = ()
    ip_family_policy: IPFamilyPolicy | None = None
    publish_not_ready_addresses: StrictBool = False
    allocate_load_balancer_node_ports: StrictBool | None = None

    @model_validator(mode="after")
    def _consistent(self) -> ServiceSpec:
        violations = Violations("ServiceSpec")
        self._check_type_fields(violations)
        self._check_ports(violations)
        self._check_cluster_ips(violations)
        self._check_families(violations)
        if self.session_affinity == "None" and self.session_affinity_config is not None:
            violations.add(
                ("sessionAffinityConfig",), "must not be set when sessionAffinity is None"
            )
        violations.raise_if_any()
        return self

    def _check_type_fields(self, violations: Violations) -> None:
        if self.type == "ExternalName" and self.external_name is None:
            violations.add(("externalName",), "required when type is ExternalName")
        if self.type in _EXTERNAL_TYPES and self.cluster_ip == HEADLESS:
            violations.add(
                ("clusterIP",), f'"None" (headless) is not allowed when type is {self.type}', "None"
            )
        if self.external_traffic_policy is not None and not self.is_externally_reachable:
            violations.add(
                ("externalTrafficPolicy",),
                "may only be set when type is NodePort or LoadBalancer or externalIPs are set",
                self.external_traffic_policy,
            )
        if self.health_check_node_port is not None and not (
            self.type == "LoadBalancer" and self.external_traffic_policy == "Local"
        ):
            violations.add(
                ("healthCheckNodePort",),
                "may only be set when type is LoadBalancer and externalTrafficPolicy is Local",
                self.health_check_node_port,
            )

    def _check_ports(self, violations: Violations) -> None:
        if not self.ports and self.type != "ExternalName" and not self.is_headless:
            violations.add(("ports",), "at least one port is required")
        names: dict[str, int] = {}
        endpoints: dict[tuple[int, str], int] = {}
        for index, port in enumerate(self.ports):
            if port.name is None and len(self.ports) > 1:
                violations.add(
                    ("ports", index, "name"), "required when the service has more than one port"
                )
            if port.name is not None and port.name in names:
                violations.add(
                    ("ports", index, "name"),
                    f'duplicate port name "{port.name}" (also ports[{names[port.name]}])',
                    port.name,
                )
            if port.name is not None:
                names.setdefault(port.name, index)
            key = (port.port, port.protocol)
            if key in endpoints:
                violations.add(
                    ("ports", index, "port"),
                    f"duplicate port {port.port}/{port.protocol} (also ports[{endpoints[key]}])",
                    port.port,
                )
            endpoints.setdefault(key, index)
            if port.node_port is not None and self.type not in _EXTERNAL_TYPES:
                violations.add(
                    ("ports", index, "nodePort"),
                    f"may only be set when type is NodePort or LoadBalancer, not {self.type}",
                    port.node_port,
                )

    def _check_cluster_ips(self, violations: Violations) -> None:
        ips = self.cluster_ips
        if not ips:
            return
        if self.cluster_ip is not None and ips[0] != self.cluster_ip:
            violations.add(
                ("clusterIPs", 0),
                f'"{ips[0]}" must equal clusterIP "{self.cluster_ip}"',
                str(ips[0]),
            )
        if HEADLESS in ips and len(ips) > 1:
            violations.add(("clusterIPs",), '"None" must be the only entry of a headless service')
            return
        if len(ips) > 2:
            violations.add(("clusterIPs",), f"at most 2 addresses (one per family), got {len(ips)}")
            return
        addresses = [ip for ip in ips if ip != HEADLESS]
        if len(addresses) == 2 and addresses[0].version == addresses[1].version:
            violations.add(
                ("clusterIPs", 1),
                f'"{addresses[1]}" is a second {family_of(addresses[1])} address; '
                "dual-stack needs one IPv4 and one IPv6",
                str(addresses[1]),
            )
        for index, address in enumerate(addresses[: len(self.ip_families)]):
            if family_of(address) != self.ip_families[index]:
                violations.add(
                    ("clusterIPs", index),
                    f'"{address}" is {family_of(address)} but ipFamilies[{index}] '
                    f"is {self.ip_families[index]}",
                    str(address),
                )

    def _check_families(self, violations: Violations) -> None:
        families = self.ip_families
        if len(families) > 2:
            violations.add(("ipFamilies",), f"at most 2 families, got {len(families)}")
        elif len(families) == 2 and families[0] == families[1]:
            violations.add(("ipFamilies", 1), f'duplicate family "{families[1]}"', families[1])
        elif len(families) == 2 and self.ip_family_policy in (None, "SingleStack"):
            violations.add(
                ("ipFamilies",),
                "2 families need ipFamilyPolicy PreferDualStack or RequireDualStack",
                list(families),
            )

    @property
    def is_headless(self) -> bool:
        return HEADLESS in (self.cluster_ip, *self.cluster_ips)

    @property
    def is_externally_reachable(self) -> bool:
        return self.type in _EXTERNAL_TYPES or bool(self.external_ips)

    @property
    def cluster_ip_addresses(self) -> tuple[IPAddress, ...]:
        """The allocated cluster IPs, primary first; empty for headless services."""
        candidates = self.cluster_ips or (() if self.cluster_ip is None else (self.cluster_ip,))
        return tuple(ip for ip in candidates if ip is not None and ip != HEADLESS)

    @property
    def affinity_timeout(self) -> int | None:
        """Seconds of ClientIP affinity, or None without session affinity."""
        if self.session_affinity != "ClientIP":
            return None
        config = self.session_affinity_config
        if config is None or config.client_ip is None or config.client_ip.timeout_seconds is None:
            return DEFAULT_AFFINITY_TIMEOUT
        return config.client_ip.timeout_seconds


class Service(Resource):
    API_VERSION: ClassVar[str] = "v1"
    KIND: ClassVar[str] = "Service"
    NAME_RULES: ClassVar[tuple[NameRule, ...]] = (dns1035_label_problem,)

    spec: ServiceSpec
    status: ServiceStatus = Field(default_factory=ServiceStatus)
