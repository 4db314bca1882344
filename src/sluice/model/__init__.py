"""Typed Kubernetes-style resources parsed and validated from YAML/JSON manifests."""

from sluice.model.addresses import IPAddress, IPFamily, IPNetwork
from sluice.model.core import (
    Container,
    ContainerPort,
    Namespace,
    Node,
    NodeAddress,
    NodeSpec,
    NodeStatus,
    Pod,
    PodCondition,
    PodSpec,
    PodStatus,
)
from sluice.model.denylist import PrefilterDenyList, PrefilterDenyListSpec
from sluice.model.endpointslice import (
    SERVICE_NAME_LABEL,
    Endpoint,
    EndpointConditions,
    EndpointPort,
    EndpointSlice,
    ObjectReference,
)
from sluice.model.errors import ManifestError, ManifestProblem
from sluice.model.globalpolicy import (
    DEFAULT_ORDER,
    GlobalNetworkPolicy,
    GlobalNetworkPolicySpec,
    GlobalPeer,
    GlobalRule,
    RuleAction,
)
from sluice.model.hostendpoint import HostEndpoint, HostEndpointSpec, interface_name_problem
from sluice.model.loader import (
    ParseResult,
    load_manifests,
    manifest_files,
    parse_file,
    parse_text,
)
from sluice.model.meta import LabelSelector, LabelSelectorRequirement, ObjectMeta
from sluice.model.networkpolicy import (
    IPBlock,
    NetworkPolicy,
    NetworkPolicyEgressRule,
    NetworkPolicyIngressRule,
    NetworkPolicyPeer,
    NetworkPolicyPort,
    NetworkPolicySpec,
    PolicyType,
)
from sluice.model.registry import KINDS, RESOURCE_CLASSES, resource_class
from sluice.model.resource import DEFAULT_NAMESPACE, Resource
from sluice.model.service import (
    LoadBalancerIngress,
    Service,
    ServicePort,
    ServiceSpec,
    ServiceStatus,
)

__all__ = [
    "DEFAULT_NAMESPACE",
    "DEFAULT_ORDER",
    "KINDS",
    "RESOURCE_CLASSES",
    "SERVICE_NAME_LABEL",
    "Container",
    "ContainerPort",
    "Endpoint",
    "EndpointConditions",
    "EndpointPort",
    "EndpointSlice",
    "GlobalNetworkPolicy",
    "GlobalNetworkPolicySpec",
    "GlobalPeer",
    "GlobalRule",
    "HostEndpoint",
    "HostEndpointSpec",
    "IPAddress",
    "IPBlock",
    "IPFamily",
    "IPNetwork",
    "LabelSelector",
    "LabelSelectorRequirement",
    "LoadBalancerIngress",
    "ManifestError",
    "ManifestProblem",
    "Namespace",
    "NetworkPolicy",
    "NetworkPolicyEgressRule",
    "NetworkPolicyIngressRule",
    "NetworkPolicyPeer",
    "NetworkPolicyPort",
    "NetworkPolicySpec",
    "Node",
    "NodeAddress",
    "NodeSpec",
    "NodeStatus",
    "ObjectMeta",
    "ObjectReference",
    "ParseResult",
    "Pod",
    "PodCondition",
    "PodSpec",
    "PodStatus",
    "PolicyType",
    "PrefilterDenyList",
    "PrefilterDenyListSpec",
    "Resource",
    "RuleAction",
    "Service",
    "ServicePort",
    "ServiceSpec",
    "ServiceStatus",
    "interface_name_problem",
    "load_manifests",
    "manifest_files",
    "parse_file",
    "parse_text",
    "resource_class",
]
