"""Object metadata and label selectors."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, TypeAlias

from pydantic import Field, model_validator

from sluice.model.base import KubeModel
from sluice.model.fieldtypes import (
    AnnotationMap,
    DNSSubdomain,
    LabelKey,
    LabelMap,
    LabelValue,
    NamespaceName,
    StrictInteger,
)
from sluice.model.violations import Violations

SelectorOperator: TypeAlias = Literal["In", "NotIn", "Exists", "DoesNotExist"]


class ObjectMeta(KubeModel):
    name: DNSSubdomain
    namespace: NamespaceName | None = None
    labels: LabelMap = Field(default_factory=dict)
    annotations: AnnotationMap = Field(default_factory=dict)
    uid: str | None = None
    resource_version: str | None = None
    generation: StrictInteger | None = None
    generate_name: str | None = None
    creation_timestamp: Any = None
    deletion_timestamp: Any = None
    deletion_grace_period_seconds: Any = None
    owner_references: Any = None
    finalizers: Any = None
    managed_fields: Any = None


class LabelSelectorRequirement(KubeModel):
    key: LabelKey
    operator: SelectorOperator
    values: tuple[LabelValue, ...] = ()

    @model_validator(mode="after")
    def _values_fit_operator(self) -> LabelSelectorRequirement:
        violations = Violations("LabelSelectorRequirement")
        if self.operator in ("In", "NotIn") and not self.values:
            violations.add(("values",), f"operator {self.operator} needs at least one value")
        if self.operator in ("Exists", "DoesNotExist") and self.values:
            violations.add(
                ("values",), f"must be empty when operator is {self.operator}", list(self.values)
            )
        violations.raise_if_any()
        return self

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.operator == "In":
            return self.key in labels and labels[self.key] in self.values
        if self.operator == "NotIn":
            return self.key not in labels or labels[self.key] not in self.values
        if self.operator == "Exists":
            return self.key in labels
        return self.key not in labels


class LabelSelector(KubeModel):
    """A Kubernetes label selector; the empty selector selects everything."""

    match_labels: LabelMap = Field(default_factory=dict)
    match_expressions: tuple[LabelSelectorRequirement, ...] = ()

    @property
    def is_empty(self) -> bool:
        return not self.match_labels and not self.match_expressions

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(labels.get(key) == value for key, value in self.match_labels.items()) and all(
            requirement.matches(labels) for requirement in self.match_expressions
        )
