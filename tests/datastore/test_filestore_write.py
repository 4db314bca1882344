from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from sluice.datastore import (
    DatastoreError,
    ObjectNotFoundError,
    ResourceKey,
    object_file_name,
    to_yaml,
)
from sluice.model import KINDS, Resource, load_manifests, parse_file
from tests.datastore.conftest import StoreFactory
from tests.datastore.helpers import (
    MODEL_MANIFESTS,
    documents,
    drain,
    flat,
    namespace,
    pod,
    pod_key,
    pod_yaml,
    service,
    write,
)

EVERY_KIND = load_manifests([MODEL_MANIFESTS])


def test_fixtures_cover_every_kind() -> None:
    assert {resource.KIND for resource in EVERY_KIND} == {kind for _, kind in KINDS}


@pytest.mark.parametrize("resource", EVERY_KIND, ids=lambda resource: resource.ref)
def test_yaml_round_trip(resource: Resource, tmp_path: Path) -> None:
    path = tmp_path / "object.yaml"
    path.write_text(to_yaml(resource), encoding="utf-8")
    result = parse_file(path)
    assert result.problems == ()
    assert result.resources == (resource,)


def test_yaml_uses_kubernetes_names_and_leaves_defaults_out() -> None:
    manifest = yaml.safe_load(to_yaml(service("web", "shop")))
    assert list(manifest) == ["apiVersion", "kind", "metadata", "spec"]
    assert manifest["metadata"] == {"name": "web", "namespace": "shop"}
    assert manifest["spec"] == {"selector": {"app": "web"}, "ports": [{"port": 80}]}


@pytest.mark.parametrize("resource", EVERY_KIND, ids=lambda resource: resource.ref)
def test_apply_and_delete_round_trip(
    resource: Resource, store_dir: Path, make_store: StoreFactory
) -> None:
    store = make_store()
    start = store.snapshot().revision
    key = ResourceKey.of(resource)
    revision = store.apply([resource])
    assert revision == start + 1
    path = store_dir / object_file_name(key)
    assert path.is_file()
    assert parse_file(path).resources == (resource,)
    assert store.snapshot().get(key) == resource
    assert flat(drain(store, start)) == [("ADDED", str(key))]

    assert store.delete([key]) == revision + 1
    assert not path.exists()
    assert store.snapshot().get(key) is None
    assert flat(drain(store, revision)) == [("DELETED", str(key))]
    assert list(store_dir.iterdir()) == []


def test_object_file_names() -> None:
    assert object_file_name(ResourceKey("Pod", "shop", "web-0")) == "pod.shop.web-0.yaml"
    assert object_file_name(ResourceKey("Namespace", "", "shop")) == "namespace.shop.yaml"
    assert (
        object_file_name(ResourceKey("EndpointSlice", "shop", "web.abc"))
        == "endpointslice.shop.web.abc.yaml"
    )


def test_apply_replaces_and_skips_unchanged(store_dir: Path, make_store: StoreFactory) -> None:
    store = make_store()
    first = store.apply([pod("a"), namespace("default")])
    inode = (store_dir / "pod.default.a.yaml").stat().st_ino
    assert store.apply([pod("a")]) == first
    assert (store_dir / "pod.default.a.yaml").stat().st_ino == inode
    second = store.apply([pod("a", app="api")])
    assert second == first + 1
    assert flat(drain(store, first)) == [("MODIFIED", "Pod default/a")]
    assert sorted(path.name for path in store_dir.iterdir()) == [
        "namespace.default.yaml",
        "pod.default.a.yaml",
    ]


def test_apply_several_is_one_batch(make_store: StoreFactory) -> None:
    store = make_store()
    start = store.revision
    store.apply([pod("a"), pod("b"), service("s")])
    batches = drain(store, start)
    assert len(batches) == 1
    assert {change.revision for change in batches[0]} == {start + 1}


def test_apply_refuses_an_object_from_a_hand_written_file(
    store_dir: Path, make_store: StoreFactory
) -> None:
    hand = store_dir / "hand.yaml"
    write(hand, documents(pod_yaml("a"), pod_yaml("b")))
    store = make_store()
    before = store.snapshot()
    with pytest.raises(DatastoreError) as info:
        store.apply([pod("new"), pod("a", app="api")])
    message = str(info.value)
    assert "nothing was changed" in message
    assert "Pod default/a" in message
    assert str(hand) in message
    assert "Pod default/new" not in message
    assert store.snapshot() == before
    assert [path.name for path in store_dir.iterdir()] == ["hand.yaml"]


def test_apply_refuses_to_overwrite_a_multi_object_file_of_that_name(
    store_dir: Path, make_store: StoreFactory
) -> None:
    target = store_dir / "pod.default.a.yaml"
    write(target, documents(pod_yaml("a"), pod_yaml("b")))
    store = make_store()
    with pytest.raises(DatastoreError, match="also holds Pod default/b"):
        store.apply([pod("a", app="api")])
    assert [p.labels["app"] for p in store.snapshot().pods()] == ["web", "web"]


def test_apply_overwrites_its_own_file_even_if_broken(
    store_dir: Path, make_store: StoreFactory
) -> None:
    store = make_store()
    store.apply([pod("a")])
    write(store_dir / "pod.default.a.yaml", "kind: [")
    start = store.refresh()
    assert store.problems() != ()
    store.apply([pod("a", app="fixed")])
    assert store.problems() == ()
    assert flat(drain(store, start)) == [("MODIFIED", "Pod default/a")]


def test_apply_refuses_duplicates_and_non_resources(make_store: StoreFactory) -> None:
    store = make_store()
    with pytest.raises(DatastoreError, match="given more than once"):
        store.apply([pod("a"), pod("a", app="x")])
    with pytest.raises(DatastoreError, match="not a resource of a known kind"):
        store.apply(["not a resource"])  # type: ignore[list-item]
    assert len(store.snapshot()) == 0


def test_delete_refuses_missing_objects_and_changes_nothing(make_store: StoreFactory) -> None:
    store = make_store()
    revision = store.apply([pod("a")])
    with pytest.raises(ObjectNotFoundError, match="Pod default/ghost: no such object"):
        store.delete([pod_key("a"), pod_key("ghost")])
    assert store.revision == revision
    assert [p.name for p in store.snapshot().pods()] == ["a"]


def test_delete_refuses_objects_of_hand_written_files(
    store_dir: Path, make_store: StoreFactory
) -> None:
    write(store_dir / "hand.yaml", pod_yaml("a"))
    store = make_store()
    store.apply([pod("b")])
    with pytest.raises(
        DatastoreError, match=re.escape("hand.yaml, a file this datastore did not write")
    ):
        store.delete([pod_key("b"), pod_key("a")])
    assert [p.name for p in store.snapshot().pods()] == ["a", "b"]


def test_delete_refuses_an_object_also_defined_elsewhere(
    store_dir: Path, make_store: StoreFactory
) -> None:
    store = make_store()
    store.apply([pod("a")])
    write(store_dir / "z-copy.yaml", pod_yaml("a", app="copy"))
    store.refresh()
    with pytest.raises(DatastoreError, match=re.escape("z-copy.yaml")):
        store.delete([pod_key("a")])
    assert (store_dir / "pod.default.a.yaml").exists()


def test_write_methods_refuse_after_close(make_store: StoreFactory) -> None:
    store = make_store()
    store.close()
    with pytest.raises(DatastoreError, match="closed"):
        store.apply([pod("a")])
    with pytest.raises(DatastoreError, match="closed"):
        store.delete([pod_key("a")])
    with pytest.raises(DatastoreError, match="closed"):
        store.watch(1)
