"""Manifest snippets and store helpers shared by the datastore tests."""

from __future__ import annotations

import textwrap
from pathlib import Path

from sluice.datastore import Change, FileDatastore, ResourceKey
from sluice.model import Namespace, Pod, Resource, Service, parse_text

MODEL_MANIFESTS = Path(__file__).parent.parent / "model" / "manifests" / "good"
POLL = 0.01


def namespace_yaml(name: str, **labels: str) -> str:
    return textwrap.dedent(
        f"""\
        apiVersion: v1
        kind: Namespace
        metadata:
          name: {name}
          labels: {dict(labels) or {}}
        """
    )


def pod_yaml(name: str, namespace: str = "default", app: str = "web") -> str:
    return textwrap.dedent(
        f"""\
        apiVersion: v1
        kind: Pod
        metadata:
          name: {name}
          namespace: {namespace}
          labels: {{app: {app}}}
        spec:
          containers: [{{name: main, image: nginx}}]
        """
    )


def service_yaml(name: str, namespace: str = "default", port: int = 80) -> str:
    return textwrap.dedent(
        f"""\
        apiVersion: v1
        kind: Service
        metadata:
          name: {name}
          namespace: {namespace}
        spec:
          selector: {{app: web}}
          ports: [{{port: {port}}}]
        """
    )


def documents(*texts: str) -> str:
    return "---\n".join(texts)


def parse_one(text: str) -> Resource:
    result = parse_text(text, "inline.yaml")
    assert not result.problems, result.problems
    [resource] = result.resources
    return resource


def namespace(name: str, **labels: str) -> Namespace:
    resource = parse_one(namespace_yaml(name, **labels))
    assert isinstance(resource, Namespace)
    return resource


def pod(name: str, namespace: str = "default", app: str = "web") -> Pod:
    resource = parse_one(pod_yaml(name, namespace, app))
    assert isinstance(resource, Pod)
    return resource


def service(name: str, namespace: str = "default", port: int = 80) -> Service:
    resource = parse_one(service_yaml(name, namespace, port))
    assert isinstance(resource, Service)
    return resource


def renamed(resource: Service, name: str) -> Service:
    """A copy of `resource` under another name, without parsing (for large states)."""
    return resource.model_copy(
        update={"metadata": resource.metadata.model_copy(update={"name": name})}
    )


def pod_key(name: str, namespace: str = "default") -> ResourceKey:
    return ResourceKey("Pod", namespace, name)


def drain(store: FileDatastore, since: int) -> list[list[Change]]:
    """Every batch after `since`, after reading the directory once; never blocks."""
    store.refresh()
    return list(store.watch(since, timeout=0))


def summary(batches: list[list[Change]]) -> list[list[tuple[str, str]]]:
    return [[(change.kind.value, str(change.key)) for change in batch] for batch in batches]


def flat(batches: list[list[Change]]) -> list[tuple[str, str]]:
    return [item for batch in summary(batches) for item in batch]


def write(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")
