"""NetworkPolicy (networking.k8s.io/v1)."""

from __future__ import annotations

import ipaddress
from typing import ClassVar, Literal, TypeAlias

from pydantic import Field, model_validator

from sluice.model.addresses import IPAddress, IPNetwork, family_of
from sluice.model.base import KubeModel
from sluice.model.fieldtypes import CIDR, PortNumber, PortOrName, Protocol
from sluice.model.meta import LabelSelector
from sluice.model.resource import Resource
from sluice.model.violations import Violations

PolicyType: TypeAlias = Literal["Ingress", "Egress"]


def _strictly_inside(inner: IPNetwork, outer: IPNetwork) -> bool:
    if isinstance(inner, ipaddress.IPv4Network) and isinstance(outer, ipaddress.IPv4Network):
        return inner != outer and inner.subnet_of(outer)
    if isinstance(inner, ipaddress.IPv6Network) and isinstance(outer, ipaddress.IPv6Network):
        return inner != outer and inner.subnet_of(outer)
    return False


class IPBlock(KubeModel):
    cidr: CIDR
    except_: tuple[CIDR, ...] = Field(default=(), alias="except")

    @model_validator(mode="after")
    def _exceptions_inside(self) -> IPBlock:
        violations = Violations("IPBlock")
        for index, excluded in enumerate(self.except_):
            if excluded.version != self.cidr.version:
                message = (
                    f'"{excluded}" is {family_of(excluded)} but cidr "{self.cidr}" '
                    f"is {family_of(self.cidr)}"
                )
            elif not _strictly_inside(excluded, self.cidr):
                message = f'"{excluded}" must be a strict subnet of cidr "{self.cidr}"'
            else:
                continue
            violations.add(("except", index), message, str(excluded))
        violations.raise_if_any()
        return self

    def contains(self, address: IPAddress) -> bool:
        """Whether the block admits the address: inside cidr and in no exception."""
        return address in self.cidr and not any(address in net for net in self.except_)


class NetworkPolicyPeer(KubeModel):
    pod_selector: LabelSelector | None = None
    namespace_selector: LabelSelector | None = None
    ip_block: IPBlock | None = None

    @model_validator(mode="after")
    def _one_kind_of_peer(self) -> NetworkPolicyPeer:
        violations = Violations("NetworkPolicyPeer")
        has_selector = self.pod_selector is not None or self.namespace_selector is not None
        if self.ip_block is not None and has_selector:
            violations.add(
                ("ipBlock",),
                "ipBlock cannot be combined with podSelector or namespaceSelector in one peer; "
                "use separate peers",
            )
        elif self.ip_block is None and not has_selector:
            violations.add((), "a peer needs podSelector, namespaceSelector or ipBlock")
        violations.raise_if_any()
        return self


class NetworkPolicyPort(KubeModel):
    protocol: Protocol = "TCP"
    port: PortOrName | None = None
    end_port: PortNumber | None = None

    @model_validator(mode="after")
    def _range_valid(self) -> NetworkPolicyPort:
        violations = Violations("NetworkPolicyPort")
        if self.end_port is not None:
            if self.port is None:
                violations.add(("endPort",), "requires port to be set", self.end_port)
            elif isinstance(self.port, str):
                violations.add(
                    ("endPort",),
                    f'requires a numeric port, not the named port "{self.port}"',
                    self.end_port,
                )
            elif self.end_port < self.port:
                violations.add(
                    ("endPort",),
                    f"endPort {self.end_port} must not be less than port {self.port}",
                    self.end_port,
                )
        violations.raise_if_any()
        return self

    @property
    def port_range(self) -> tuple[int, int] | None:
        """The numeric (first, last) range; None when all ports or a named port."""
        if not isinstance(self.port, int):
            return None
        return (self.port, self.port if self.end_port is None else self.end_port)


class NetworkPolicyIngressRule(KubeModel):
    from_: tuple[NetworkPolicyPeer, ...] = Field(default=(), alias="from")
    ports: tuple[NetworkPolicyPort, ...] = ()


class NetworkPolicyEgressRule(KubeModel):
    to: tuple[NetworkPolicyPeer, ...] = ()
    ports: tuple[NetworkPolicyPort, ...] = ()


class NetworkPolicySpec(KubeModel):
    pod_selector: LabelSelector
    policy_types: tuple[PolicyType, ...] = ()
    ingress: tuple[NetworkPolicyIngressRule, ...] = ()
    egress: tuple[NetworkPolicyEgressRule, ...] = ()

    @model_validator(mode="after")
    def _policy_types_distinct(self) -> NetworkPolicySpec:
        violations = Violations("NetworkPolicySpec")
        seen: set[str] = set()
        for index, policy_type in enumerate(self.policy_types):
            if policy_type in seen:
                violations.add(
                    ("policyTypes", index), f'duplicate policy type "{policy_type}"', policy_type
                )
            seen.add(policy_type)
        violations.raise_if_any()
        return self

    @property
    def effective_policy_types(self) -> tuple[PolicyType, ...]:
        """policyTypes as Kubernetes defaults them: Ingress always, Egress with egress rules."""
        if self.policy_types:
            return self.policy_types
        return ("Ingress", "Egress") if self.egress else ("Ingress",)

    @property
    def isolates_ingress(self) -> bool:
        return "Ingress" in self.effective_policy_types

    @property
    def isolates_egress(self) -> bool:
        return "Egress" in self.effective_policy_types


class NetworkPolicy(Resource):
    API_VERSION: ClassVar[str] = "networking.k8s.io/v1"
    KIND: ClassVar[str] = "NetworkPolicy"

    spec: NetworkPolicySpec

    @property
    def effective_policy_types(self) -> tuple[PolicyType, ...]:
        return self.spec.effective_policy_types
