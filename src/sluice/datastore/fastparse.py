"""A fast path for reading manifest files that have no problem, which is nearly all.

`parse_text` keeps every YAML node to name the line of each problem; composing those
nodes in Python costs about 2 ms per object, which at 10,000 Services is most of an
agent's sync. Here a file is read with libyaml (or `json`) and validated by the same
model classes; the result is used only when the file is found faultless, the way
`parse_text` would find it. Anything else (a syntax error, a repeated key, an unknown
kind, a failed validation) returns None, and the caller parses the file the slow way
for its exact problems.
"""

from __future__ import annotations

import json
from typing import Any

import yaml
from pydantic import ValidationError

from sluice.model import Resource
from sluice.model.documents import Document
from sluice.model.registry import resource_class

LIST_KIND = "List"
LIST_FIELDS = frozenset(("apiVersion", "kind", "metadata", "items"))
_Loader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _RepeatedKeyError(ValueError):
    pass


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    mapping = dict(pairs)
    if len(mapping) != len(pairs):
        raise _RepeatedKeyError
    return mapping


def _documents(text: str, json_format: bool) -> list[object] | None:
    """Each document's data; None if the text has a syntax problem or a repeated key."""
    if json_format:
        try:
            return [json.loads(text, object_pairs_hook=_unique_pairs)]
        except ValueError:  # JSONDecodeError and _RepeatedKeyError
            return None
    documents: list[object] = []
    loader = _Loader(text)
    try:
        while loader.check_node():
            node = loader.get_node()
            data = loader.construct_document(node)
            if Document(len(documents) + 1, data, node).duplicate_keys():
                return None
            documents.append(data)
    except yaml.YAMLError:
        return None
    finally:
        loader.dispose()
    return documents


def _resource(raw: object) -> Resource | None:
    if not isinstance(raw, dict):
        return None
    kind, api_version = raw.get("kind"), raw.get("apiVersion")
    if not isinstance(kind, str) or not isinstance(api_version, str) or kind == LIST_KIND:
        return None
    cls = resource_class(api_version, kind)
    if cls is None:
        return None
    try:
        return cls.model_validate(raw)
    except ValidationError:
        return None


def parse_faultless(text: str, file: str) -> list[Resource] | None:
    """The resources of TEXT if `parse_text(text, file)` would report no problem; None
    when it would (or might), so that the caller asks it."""
    documents = _documents(text, file.lower().endswith(".json"))
    if documents is None:
        return None
    found: list[Resource] = []
    for data in documents:
        if data is None:
            continue
        if not isinstance(data, dict):
            return None
        items: list[object] = [data]
        if data.get("kind") == LIST_KIND:
            listed = data.get("items")
            if (not data.keys() <= LIST_FIELDS or data.get("apiVersion") != "v1"
                    or not isinstance(listed, list)):
                return None
            items = listed
        for index, item in enumerate(items):
            resource = _resource(item)
            if resource is None:
                return None
            found.append(resource)
            # Drop the decoded object now: a large List then peaks at its decoded form
            # alone, not at that plus every model made from it.
            items[index] = None
            del item
    return found
