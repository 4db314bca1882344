from __future__ import annotations

import pytest

from sluice.datastore import Change, ChangeKind, ClusterState, ResourceKey
from sluice.model import Namespace, Pod, Service, load_manifests
from tests.datastore.helpers import MODEL_MANIFESTS, namespace, pod, pod_key, renamed, service

ADDED, MODIFIED, DELETED = ChangeKind.ADDED, ChangeKind.MODIFIED, ChangeKind.DELETED


def test_resource_key_of_namespaced_and_cluster_scoped() -> None:
    assert ResourceKey.of(pod("web", "shop")) == ResourceKey("Pod", "shop", "web")
    assert ResourceKey.of(namespace("shop")) == ResourceKey("Namespace", "", "shop")
    assert str(ResourceKey("Pod", "shop", "web")) == "Pod shop/web"
    assert str(ResourceKey("Node", "", "a")) == "Node a"
    assert len({ResourceKey("Pod", "a", "b"), ResourceKey("Pod", "a", "b")}) == 1


def test_typed_accessors_sorted_and_filtered_by_namespace() -> None:
    state = ClusterState(load_manifests([MODEL_MANIFESTS]), revision=7)
    assert state.revision == 7
    assert len(state) == 17
    assert [ns.name for ns in state.namespaces()] == ["shop", "tools"]
    assert all(isinstance(ns, Namespace) for ns in state.namespaces())
    assert [node.name for node in state.nodes()] == ["node-a"]
    assert [p.name for p in state.pods()] == ["web-0", "web-1"]
    assert all(isinstance(p, Pod) for p in state.pods())
    assert state.pods("tools") == ()
    assert [s.name for s in state.services("shop")] == [
        "upstream",
        "web",
        "web-headless",
        "web-public",
    ]
    assert all(isinstance(s, Service) for s in state.services())
    assert [e.name for e in state.endpoint_slices()] == ["web-abc12"]
    assert [(p.namespace, p.name) for p in state.network_policies()] == [
        ("shop", "web-policy"),
        ("tools", "default-deny"),
    ]
    assert [p.name for p in state.network_policies("tools")] == ["default-deny"]
    assert state.kinds() == [
        "EndpointSlice",
        "GlobalNetworkPolicy",
        "HostEndpoint",
        "Namespace",
        "NetworkPolicy",
        "Node",
        "Pod",
        "PrefilterDenyList",
        "Service",
    ]
    assert len(state.all()) == 17
    assert state.all()[0].KIND == "EndpointSlice"
    assert state.get(ResourceKey("Pod", "shop", "web-0")) is state.pods()[0]
    assert state.get(ResourceKey("Pod", "shop", "nope")) is None
    assert ResourceKey("Namespace", "", "tools") in state
    assert set(state.keys()) == {ResourceKey.of(resource) for resource in state}


def test_with_changes_is_pure() -> None:
    before = ClusterState([pod("a"), pod("b"), namespace("default")], revision=3)
    listing = before.pods()
    changed = pod("a", app="api")
    after = before.with_changes(
        [
            Change(MODIFIED, pod_key("a"), changed, 4),
            Change(DELETED, pod_key("b"), None, 4),
            Change(ADDED, pod_key("c"), pod("c"), 5),
        ]
    )
    assert before.revision == 3
    assert before.pods() == listing
    assert [p.name for p in before.pods()] == ["a", "b"]
    assert after.revision == 5
    assert [p.name for p in after.pods()] == ["a", "c"]
    assert after.get(pod_key("a")) is changed
    assert len(after) == 3
    assert after.namespaces() == before.namespaces()


def test_with_changes_tolerates_deleting_missing_and_prunes_empty_kinds() -> None:
    before = ClusterState([pod("a", "one"), service("s")], revision=1)
    after = before.with_changes(
        [
            Change(DELETED, pod_key("a", "one"), None, 2),
            Change(DELETED, pod_key("ghost", "two"), None, 2),
        ]
    )
    assert after.kinds() == ["Service"]
    assert len(after) == 1
    assert after.pods() == ()
    assert before.kinds() == ["Pod", "Service"]


def test_with_changes_in_order_within_a_batch() -> None:
    before = ClusterState()
    after = before.with_changes(
        [
            Change(ADDED, pod_key("a"), pod("a"), 1),
            Change(DELETED, pod_key("a"), pod("a"), 1),
            Change(ADDED, pod_key("a"), pod("a", app="x"), 1),
        ]
    )
    assert [p.labels["app"] for p in after.pods()] == ["x"]
    assert len(after) == 1


def test_with_changes_shares_untouched_namespaces() -> None:
    template, changed = service("svc", "big"), service("svc", "big", 81)
    many = [renamed(template, f"svc-{index}") for index in range(10_000)]
    before = ClusterState([*many, pod("a", "small")], revision=1)
    state = before
    for index in range(50):
        name = f"svc-{index}"
        key = ResourceKey("Service", "big", name)
        state = state.with_changes([Change(MODIFIED, key, renamed(changed, name), 2)])
    after = state.with_changes([Change(ADDED, pod_key("b", "small"), pod("b", "small"), 3)])
    assert after._index["Service"] is state._index["Service"]
    assert after._index["Pod"]["small"] is not state._index["Pod"]["small"]
    assert len(after) == 10_002
    assert sum(1 for s in after.services("big") if s.spec.ports[0].port == 81) == 50
    assert before.services("big")[0].spec.ports[0].port == 80


def test_equality_compares_revision_and_content() -> None:
    assert ClusterState([pod("a")], 1) == ClusterState([pod("a")], 1)
    assert ClusterState([pod("a")], 1) != ClusterState([pod("a")], 2)
    assert ClusterState([pod("a")], 1) != ClusterState([pod("b")], 1)


def test_change_checks_its_resource() -> None:
    with pytest.raises(ValueError, match="needs the resource"):
        Change(ADDED, pod_key("a"), None, 1)
    with pytest.raises(ValueError, match="does not match"):
        Change(MODIFIED, pod_key("a"), pod("b"), 1)
    assert Change(DELETED, pod_key("a"), None, 1).resource is None
