"""The pydantic base every Kubernetes-shaped model derives from."""

from __future__ import annotations

from typing import TypeVar, cast

from pydantic import AfterValidator, BaseModel, ConfigDict, model_validator
from pydantic.alias_generators import to_camel

SHARED_LIMIT = 4096
"""Distinct values kept for sharing, per kind of value: enough for the handful a cluster
has, bounded against one that has many."""

# A 10,000-Service cluster holds ~1,000,000 model instances; most have one of a few
# field sets, and those of a Shared field one of a few values. Sharing them roughly
# halves an EndpointSlice's memory. Safe because models are frozen and pydantic copies
# the field set before it changes one (model_copy).
_field_sets: dict[frozenset[str], set[str]] = {}
_instances: dict[tuple[type, frozenset[str], KubeModel], KubeModel] = {}
M = TypeVar("M", bound="KubeModel")


class KubeModel(BaseModel):
    """Strict, immutable, camelCase on the wire and snake_case in Python."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        populate_by_name=True,
        alias_generator=to_camel,
    )

    @model_validator(mode="after")
    def _share_field_set(self) -> KubeModel:
        fields = frozenset(self.__pydantic_fields_set__)
        shared = _field_sets.get(fields)
        if shared is None and len(_field_sets) < SHARED_LIMIT:
            shared = _field_sets[fields] = set(fields)
        if shared is not None:
            object.__setattr__(self, "__pydantic_fields_set__", shared)
        return self


def _shared(value: M) -> M:
    key = (type(value), frozenset(value.__pydantic_fields_set__), value)
    try:
        found = _instances.get(key)
    except TypeError:  # an unhashable value (a free-form field): not shared
        return value
    if found is None:
        if len(_instances) < SHARED_LIMIT:
            _instances[key] = value
        return value
    return cast(M, found)


Shared = AfterValidator(_shared)
"""Annotate a field of a small value-like model (endpoint conditions, ports) with this:
equal values validated anywhere become one shared instance."""
