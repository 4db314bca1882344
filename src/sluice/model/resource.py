"""The base of every top-level resource: apiVersion, kind, metadata and scope rules."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from pydantic import field_validator, model_validator

from sluice.model.base import KubeModel
from sluice.model.meta import ObjectMeta
from sluice.model.violations import Violations, field_error

DEFAULT_NAMESPACE = "default"

NameRule = Callable[[str], str | None]


class Resource(KubeModel):
    """A top-level object. Subclasses set API_VERSION, KIND, their scope and any name
    rule stricter than the DNS-1123 subdomain that ObjectMeta enforces.
    """

    API_VERSION: ClassVar[str]
    KIND: ClassVar[str]
    NAMESPACED: ClassVar[bool] = True
    NAME_RULES: ClassVar[tuple[NameRule, ...]] = ()

    api_version: str
    kind: str
    metadata: ObjectMeta

    @model_validator(mode="before")
    @classmethod
    def _default_namespace(cls, data: Any) -> Any:
        if not cls.NAMESPACED or not isinstance(data, dict):
            return data
        metadata = data.get("metadata")
        if isinstance(metadata, dict) and metadata.get("namespace") is None:
            return {**data, "metadata": {**metadata, "namespace": DEFAULT_NAMESPACE}}
        return data

    @field_validator("api_version")
    @classmethod
    def _known_api_version(cls, value: str) -> str:
        if value != cls.API_VERSION:
            raise field_error(
                f'kind {cls.KIND} needs apiVersion "{cls.API_VERSION}", got "{value}"'
            )
        return value

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, value: str) -> str:
        if value != cls.KIND:
            raise field_error(f'expected kind "{cls.KIND}", got "{value}"')
        return value

    @model_validator(mode="after")
    def _scope_and_name(self) -> Resource:
        violations = Violations(self.KIND)
        if not self.NAMESPACED and self.metadata.namespace is not None:
            violations.add(
                ("metadata", "namespace"),
                f"{self.KIND} is cluster-scoped; namespace must not be set",
                self.metadata.namespace,
            )
        for rule in self.NAME_RULES:
            problem = rule(self.metadata.name)
            if problem is not None:
                violations.add(
                    ("metadata", "name"),
                    f'invalid name "{self.metadata.name}": {problem}',
                    self.metadata.name,
                )
        violations.raise_if_any()
        return self

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def namespace(self) -> str:
        """The object's namespace, or "" for cluster-scoped kinds."""
        return self.metadata.namespace or ""

    @property
    def labels(self) -> dict[str, str]:
        return self.metadata.labels

    @property
    def ref(self) -> str:
        """`Kind namespace/name` or `Kind name`, as problems and logs name objects."""
        if self.NAMESPACED:
            return f"{self.KIND} {self.namespace}/{self.name}"
        return f"{self.KIND} {self.name}"
