"""Writing resources back out as Kubernetes-style YAML."""

from __future__ import annotations

from typing import Any

import yaml

from sluice.model import Resource


def to_manifest(resource: Resource) -> dict[str, Any]:
    """The wire form of `resource`: camelCase keys, defaults and unset fields left out."""
    return resource.model_dump(mode="json", by_alias=True, exclude_defaults=True, exclude_none=True)


_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)  # libyaml when present

def to_yaml(resource: Resource) -> str:
    """One YAML document that parses back to a resource equal to `resource`."""
    return yaml.dump(to_manifest(resource), Dumper=_DUMPER, sort_keys=False,
                     default_flow_style=False)
