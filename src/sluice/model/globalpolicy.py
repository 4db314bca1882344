"""GlobalNetworkPolicy (sluice.io/v1): ordered, cluster-wide policy for pods and host endpoints.

Unlike a Kubernetes NetworkPolicy, which only allows, a global policy's rules carry an
action and are evaluated in order: policies by (order, name), rules by position. `Pass`
hands the flow on to the Kubernetes NetworkPolicy tier; `Log` records it and goes on.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, ClassVar, Literal, TypeAlias

from pydantic import Field, PlainValidator, StrictBool, model_validator

from sluice.model.base import KubeModel
from sluice.model.fieldtypes import CIDR
from sluice.model.meta import LabelSelector
from sluice.model.networkpolicy import IPBlock, NetworkPolicyPort, PolicyType
from sluice.model.resource import Resource
from sluice.model.violations import Violations, field_error, show

RuleAction: TypeAlias = Literal["Allow", "Deny", "Log", "Pass"]
Flavour: TypeAlias = Literal["preDNAT", "doNotTrack"]
Labels: TypeAlias = Mapping[str, str]

DEFAULT_ORDER = 1000

# Actions each special flavour admits; a plain policy admits every RuleAction.
_FLAVOUR_ACTIONS: Mapping[Flavour, tuple[RuleAction, ...]] = {
    "preDNAT": ("Allow", "Deny", "Log"),
    "doNotTrack": ("Allow", "Deny"),
}


def _order(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise field_error(f"expected an integer, got {show(value)}")
    if value < 0:
        raise field_error(f"order {value} must not be negative")
    return value


PolicyOrder = Annotated[int, PlainValidator(_order)]


def _selects(
    pod_selector: LabelSelector | None,
    namespace_selector: LabelSelector | None,
    pod_labels: Labels,
    namespace_labels: Labels,
) -> bool:
    """Cluster-wide pod selection: an absent selector leaves its side unrestricted."""
    if pod_selector is None and namespace_selector is None:
        return False
    return (pod_selector is None or pod_selector.matches(pod_labels)) and (
        namespace_selector is None or namespace_selector.matches(namespace_labels)
    )


class GlobalPeer(KubeModel):
    """Who a rule talks to: pods chosen by cluster-wide selectors, or addresses."""

    pod_selector: LabelSelector | None = None
    namespace_selector: LabelSelector | None = None
    ip_block: IPBlock | None = None
    nets: tuple[CIDR, ...] | None = None

    @model_validator(mode="after")
    def _one_kind_of_peer(self) -> GlobalPeer:
        violations = Violations("GlobalPeer")
        has_selector = self.pod_selector is not None or self.namespace_selector is not None
        if self.nets is not None:
            if has_selector or self.ip_block is not None:
                violations.add(
                    ("nets",),
                    "nets cannot be combined with podSelector, namespaceSelector or ipBlock "
                    "in one peer; use separate peers",
                )
            if not self.nets:
                violations.add(("nets",), "must list at least one CIDR when given", [])
        elif self.ip_block is not None and has_selector:
            violations.add(
                ("ipBlock",),
                "ipBlock cannot be combined with podSelector or namespaceSelector in one peer; "
                "use separate peers",
            )
        elif self.ip_block is None and not has_selector:
            violations.add((), "a peer needs podSelector, namespaceSelector, ipBlock or nets")
        violations.raise_if_any()
        return self

    @property
    def is_address_peer(self) -> bool:
        """Whether the peer names addresses (ipBlock or nets) rather than pods."""
        return self.ip_block is not None or self.nets is not None

    def matches_pod(self, pod_labels: Labels, namespace_labels: Labels) -> bool:
        """Whether a pod with these labels, in a namespace with these labels, is this peer."""
        return _selects(self.pod_selector, self.namespace_selector, pod_labels, namespace_labels)


class GlobalRule(KubeModel):
    action: RuleAction
    from_: tuple[GlobalPeer, ...] = Field(default=(), alias="from")
    to: tuple[GlobalPeer, ...] = ()
    ports: tuple[NetworkPolicyPort, ...] = ()


class GlobalNetworkPolicySpec(KubeModel):
    order: PolicyOrder = DEFAULT_ORDER
    pod_selector: LabelSelector | None = None
    namespace_selector: LabelSelector | None = None
    host_endpoint_selector: LabelSelector | None = None
    types: tuple[PolicyType, ...] = ()
    pre_dnat: StrictBool = Field(default=False, alias="preDNAT")
    apply_on_forward: StrictBool = False
    do_not_track: StrictBool = False
    ingress: tuple[GlobalRule, ...] = ()
    egress: tuple[GlobalRule, ...] = ()

    @model_validator(mode="after")
    def _consistent(self) -> GlobalNetworkPolicySpec:
        violations = Violations("GlobalNetworkPolicySpec")
        self._check_types(violations)
        self._check_rule_peers(violations)
        flavour = self.flavour
        if flavour is None:
            self._check_selects_something(violations)
        else:
            self._check_flavour(violations, flavour)
        violations.raise_if_any()
        return self

    def _check_types(self, violations: Violations) -> None:
        seen: set[str] = set()
        for index, policy_type in enumerate(self.types):
            if policy_type in seen:
                violations.add(("types", index), f'duplicate type "{policy_type}"', policy_type)
            seen.add(policy_type)

    def _check_rule_peers(self, violations: Violations) -> None:
        for index, rule in enumerate(self.ingress):
            if "to" in rule.model_fields_set:
                violations.add(
                    ("ingress", index, "to"),
                    'an ingress rule names its peers in "from", not "to"',
                )
        for index, rule in enumerate(self.egress):
            if "from_" in rule.model_fields_set:
                violations.add(
                    ("egress", index, "from"),
                    'an egress rule names its peers in "to", not "from"',
                )

    def _check_selects_something(self, violations: Violations) -> None:
        if not (self.selects_pods or self.selects_host_endpoints):
            violations.add(
                (),
                "selects nothing: set podSelector, namespaceSelector or hostEndpointSelector",
            )
        if self.apply_on_forward and not self.selects_host_endpoints:
            violations.add(
                ("applyOnForward",),
                "applies to host endpoints only; set hostEndpointSelector",
                True,
            )

    def _check_flavour(self, violations: Violations, flavour: Flavour) -> None:
        """preDNAT and doNotTrack policies: host endpoint ingress, forwarded traffic too."""
        if self.pre_dnat and self.do_not_track:
            violations.add(("doNotTrack",), "cannot be combined with preDNAT", True)
        reason = f"{flavour} policies apply to host endpoints only"
        if self.host_endpoint_selector is None:
            violations.add(("hostEndpointSelector",), f"required when {flavour} is true: {reason}")
        for field, selector in (
            ("podSelector", self.pod_selector),
            ("namespaceSelector", self.namespace_selector),
        ):
            if selector is not None:
                violations.add((field,), f"must not be set when {flavour} is true: {reason}")
        if not self.apply_on_forward:
            violations.add(
                ("applyOnForward",),
                f"must be true when {flavour} is true: such policies also see forwarded traffic",
                self.apply_on_forward,
            )
        ingress_only = f"{flavour} policies apply to ingress only"
        if self.egress:
            violations.add(("egress",), f"must be empty: {ingress_only}")
        for index, policy_type in enumerate(self.types):
            if policy_type == "Egress":
                violations.add(
                    ("types", index), f'"Egress" is not allowed: {ingress_only}', policy_type
                )
        allowed = _FLAVOUR_ACTIONS[flavour]
        for index, rule in enumerate(self.ingress):
            if rule.action not in allowed:
                violations.add(
                    ("ingress", index, "action"),
                    f'"{rule.action}" is not allowed in a {flavour} policy: '
                    f"use {', '.join(allowed[:-1])} or {allowed[-1]}",
                    rule.action,
                )

    @property
    def flavour(self) -> Flavour | None:
        """preDNAT or doNotTrack when the policy is one of those (preDNAT wins if both)."""
        if self.pre_dnat:
            return "preDNAT"
        return "doNotTrack" if self.do_not_track else None

    @property
    def effective_types(self) -> tuple[PolicyType, ...]:
        """types as defaulted: Ingress always, plus Egress when there are egress rules."""
        if self.types:
            return self.types
        return ("Ingress", "Egress") if self.egress else ("Ingress",)

    @property
    def isolates_ingress(self) -> bool:
        return "Ingress" in self.effective_types

    @property
    def isolates_egress(self) -> bool:
        return "Egress" in self.effective_types

    @property
    def selects_pods(self) -> bool:
        return self.pod_selector is not None or self.namespace_selector is not None

    @property
    def selects_host_endpoints(self) -> bool:
        return self.host_endpoint_selector is not None

    def matches_pod(self, pod_labels: Labels, namespace_labels: Labels) -> bool:
        """Whether the policy applies to a pod with these labels in a namespace with these."""
        return _selects(self.pod_selector, self.namespace_selector, pod_labels, namespace_labels)

    def matches_host_endpoint(self, labels: Labels) -> bool:
        selector = self.host_endpoint_selector
        return selector is not None and selector.matches(labels)


class GlobalNetworkPolicy(Resource):
    API_VERSION: ClassVar[str] = "sluice.io/v1"
    KIND: ClassVar[str] = "GlobalNetworkPolicy"
    NAMESPACED: ClassVar[bool] = False

    spec: GlobalNetworkPolicySpec

    @property
    def evaluation_key(self) -> tuple[int, str]:
        """Policies are evaluated in ascending (order, name)."""
        return (self.spec.order, self.name)
