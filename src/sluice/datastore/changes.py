"""Keys that name stored objects, and the changes a datastore reports."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from sluice.model import Resource


@dataclass(frozen=True, order=True)
class ResourceKey:
    """What identifies a stored object: its kind (`Resource.KIND`), namespace and name.

    `namespace` is "" for cluster-scoped kinds.
    """

    kind: str
    namespace: str
    name: str

    @classmethod
    def of(cls, resource: Resource) -> ResourceKey:
        return cls(resource.KIND, resource.namespace, resource.name)

    def __str__(self) -> str:
        if self.namespace:
            return f"{self.kind} {self.namespace}/{self.name}"
        return f"{self.kind} {self.name}"


class ChangeKind(enum.StrEnum):
    ADDED = "ADDED"
    MODIFIED = "MODIFIED"
    DELETED = "DELETED"


@dataclass(frozen=True)
class Change:
    """One object changing at `revision`.

    `resource` is the object as it now is for ADDED and MODIFIED. For DELETED it is the
    object as it was last seen, or None when the datastore does not know it.
    """

    kind: ChangeKind
    key: ResourceKey
    resource: Resource | None
    revision: int

    def __post_init__(self) -> None:
        if self.resource is None:
            if self.kind is not ChangeKind.DELETED:
                raise ValueError(f"a {self.kind} change of {self.key} needs the resource")
        elif ResourceKey.of(self.resource) != self.key:
            raise ValueError(
                f"change key {self.key} does not match its resource {self.resource.ref}"
            )
