"""Kubernetes API objects (JSON as the apiserver returns it) into model resources.

The model is strict: it refuses fields it does not know. An apiserver object carries many
(Pod volumes, Node capacity, `managedFields`, fields of newer API versions), so every
object is first pruned to the fields the model declares, walking the model's own field
types. Values the apiserver writes for "unset" (`null`, and `""` in optional fields such
as an EndpointSlice port's name) are dropped so that the model's defaults apply. List
items come without `apiVersion` and `kind`: both are set from the kind being read. What
still fails validation is returned as problems naming the object and the field.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, get_args, get_origin

from pydantic import BaseModel, ValidationError

from sluice.model import ManifestProblem, Resource
from sluice.model.problems import field_issues, unwrap_annotation

DROPPED_METADATA = frozenset(("managedFields",))
"""Metadata the dataplane never reads and that costs memory on every object."""


@dataclass(frozen=True)
class Translation:
    """One API object as a model resource, or the problems that keep it out."""

    resource: Resource | None
    problems: tuple[ManifestProblem, ...] = ()


def api_object_name(cls: type[Resource], raw: Mapping[str, Any]) -> str:
    """`Kind namespace/name` or `Kind name`, as problems name an API object."""
    metadata = raw.get("metadata")
    metadata = metadata if isinstance(metadata, Mapping) else {}
    name = metadata.get("name") or "<unnamed>"
    if cls.NAMESPACED:
        return f"{cls.KIND} {metadata.get('namespace') or '<no namespace>'}/{name}"
    return f"{cls.KIND} {name}"


def translate(cls: type[Resource], raw: object, source: str) -> Translation:
    """`raw` (an object of kind `cls` from the API) as a model resource.

    `source` names where the object came from (its API path) in problems.
    """
    if not isinstance(raw, Mapping):
        problem = ManifestProblem(source, None, cls.KIND, "", "expected a JSON object")
        return Translation(None, (problem,))
    obj = api_object_name(cls, raw)
    data = prune(cls, raw)
    data["apiVersion"], data["kind"] = cls.API_VERSION, cls.KIND
    metadata = data.get("metadata")
    if isinstance(metadata, dict):
        data["metadata"] = {
            key: value for key, value in metadata.items() if key not in DROPPED_METADATA
        }
    try:
        return Translation(cls.model_validate(data))
    except ValidationError as error:
        problems = tuple(
            ManifestProblem(source, None, obj, issue.path, issue.message)
            for issue in field_issues(cls, error)
        )
        return Translation(None, problems)


def prune(model: type[BaseModel], raw: Mapping[str, Any]) -> dict[str, Any]:
    """`raw` with only the fields `model` declares, recursively; unset values dropped."""
    pruned: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        wire = info.alias or name
        if wire not in raw:
            continue
        value = raw[wire]
        if value is None or (value == "" and not info.is_required()):
            continue
        pruned[wire] = _prune_value(info.annotation, value)
    return pruned


def _prune_value(annotation: Any, value: Any) -> Any:
    annotation = unwrap_annotation(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return prune(annotation, value) if isinstance(value, Mapping) else value
    if get_origin(annotation) in (tuple, list) and isinstance(value, list):
        element = get_args(annotation)[0]
        return [_prune_value(element, item) for item in value]
    return value
