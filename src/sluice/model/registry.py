"""The table of known kinds: (apiVersion, kind) -> model class."""

from __future__ import annotations

from collections.abc import Mapping

from sluice.model.core import Namespace, Node, Pod
from sluice.model.denylist import PrefilterDenyList
from sluice.model.endpointslice import EndpointSlice
from sluice.model.globalpolicy import GlobalNetworkPolicy
from sluice.model.hostendpoint import HostEndpoint
from sluice.model.networkpolicy import NetworkPolicy
from sluice.model.resource import Resource
from sluice.model.service import Service

RESOURCE_CLASSES: tuple[type[Resource], ...] = (
    Namespace,
    Node,
    Pod,
    Service,
    EndpointSlice,
    NetworkPolicy,
    GlobalNetworkPolicy,
    HostEndpoint,
    PrefilterDenyList,
)

KINDS: Mapping[tuple[str, str], type[Resource]] = {
    (cls.API_VERSION, cls.KIND): cls for cls in RESOURCE_CLASSES
}


def resource_class(api_version: str, kind: str) -> type[Resource] | None:
    return KINDS.get((api_version, kind))


def api_versions_of(kind: str) -> list[str]:
    return sorted(api_version for api_version, known in KINDS if known == kind)


def known_kinds() -> list[str]:
    return sorted({kind for _, kind in KINDS})
