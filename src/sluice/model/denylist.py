"""PrefilterDenyList (sluice.io/v1): source CIDRs the XDP prefilter drops on node uplinks."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from pydantic import model_validator

from sluice.model.addresses import IPNetwork
from sluice.model.base import KubeModel
from sluice.model.fieldtypes import CIDR
from sluice.model.meta import LabelSelector
from sluice.model.resource import Resource
from sluice.model.violations import Violations


class PrefilterDenyListSpec(KubeModel):
    cidrs: tuple[CIDR, ...]
    node_selector: LabelSelector | None = None

    @model_validator(mode="after")
    def _has_cidrs(self) -> PrefilterDenyListSpec:
        violations = Violations("PrefilterDenyListSpec")
        if not self.cidrs:
            violations.add(("cidrs",), "at least one CIDR is required", [])
        violations.raise_if_any()
        return self

    def applies_to_node(self, node_labels: Mapping[str, str]) -> bool:
        """Whether a node with these labels drops the listed sources (no selector: every node)."""
        return self.node_selector is None or self.node_selector.matches(node_labels)


class PrefilterDenyList(Resource):
    API_VERSION: ClassVar[str] = "sluice.io/v1"
    KIND: ClassVar[str] = "PrefilterDenyList"
    NAMESPACED: ClassVar[bool] = False

    spec: PrefilterDenyListSpec

    @property
    def cidrs(self) -> tuple[IPNetwork, ...]:
        return self.spec.cidrs
