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
from sluice.model.endpointslice import (
    SERVICE_NAME_LABEL,
    Endpoint,
    EndpointConditions,
    EndpointPort,
    EndpointSlice,
    ObjectReference,
)
from sluice.model.errors import ManifestError, ManifestProblem
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
    "KINDS",
    "RESOURCE_CLASSES",
    "SERVICE_NAME_LABEL",
    "Container",
    "ContainerPort",
    "Endpoint",
    "EndpointConditions",
    "EndpointPort",
    "EndpointSlice",
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
    "Resource",
    "Service",
    "ServicePort",
    "ServiceSpec",
    "ServiceStatus",
    "load_manifests",
    "manifest_files",
    "parse_file",
    "parse_text",
    "resource_class",
]
