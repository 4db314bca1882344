"""The Kubernetes datastore against an apiserver speaking the list/watch protocol.

The server (kubefake.py) runs in a thread inside a network namespace this test creates;
the test thread enters it first, so the server, the datastore's watch threads and every
socket they open live there (threads inherit their creator's namespace). Nothing listens
in the machine's own namespace.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pyroute2 import IPRoute

from sluice import netns
from sluice.datastore import (
    Change,
    ChangeKind,
    DatastoreError,
    ObjectNotFoundError,
    ResourceKey,
    kubewatch,
)
from sluice.datastore.kubeapi import ApiKind, KubeApi
from sluice.datastore.kubestore import (
    KubernetesDatastore,
    api_client_for,
    parse_kubernetes_url,
)
from sluice.model import (
    EndpointSlice,
    GlobalNetworkPolicy,
    HostEndpoint,
    Namespace,
    NetworkPolicy,
    Node,
    Pod,
    PrefilterDenyList,
    Resource,
    Service,
)
from tests.conftest import unique
from tests.datastore.kubefake import REFUSED_NAME, FakeApiServer, write_kubeconfig

pytestmark = pytest.mark.root

RECORDED = Path(__file__).parent / "k8s"
FILES: dict[type[Resource], str] = {
    Namespace: "namespaces.json", Node: "nodes.json", Pod: "pods.json",
    Service: "services.json", EndpointSlice: "endpointslices.json",
    NetworkPolicy: "networkpolicies.json", GlobalNetworkPolicy: "sluice.json",
    HostEndpoint: "hostendpoints.json", PrefilterDenyList: "prefilterdenylists.json",
}
WAIT = 30.0
PODS = ApiKind(Pod).list_path


def recorded(cls: type[Resource]) -> list[dict[str, Any]]:
    return list(json.loads((RECORDED / FILES[cls]).read_text())["items"])


def pod_object(name: str, namespace: str = "shop", image: str = "nginx:1.27") -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": namespace, "labels": {"app": "web"}},
            "spec": {"containers": [{"name": "main", "image": image}], "nodeName": "n1"}}


@pytest.fixture
def test_netns() -> Iterator[str]:
    """This thread inside a fresh network namespace with lo up; removed afterwards."""
    name = unique("sl-kube")
    netns.create(name)
    try:
        with netns.entered(name):
            with IPRoute() as ipr:
                ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
            yield name
    finally:
        netns.remove(name)


@pytest.fixture
def server() -> FakeApiServer:
    api = FakeApiServer()
    for cls in FILES:
        for obj in recorded(cls):
            api.put(cls, obj)
    return api


@pytest.fixture
def url(test_netns: str, server: FakeApiServer, tmp_path: Path) -> Iterator[str]:
    with server.serving() as base:
        yield f"kubernetes://?kubeconfig={write_kubeconfig(tmp_path / 'kubeconfig', base)}"


@pytest.fixture
def store(url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[KubernetesDatastore]:
    monkeypatch.setattr(kubewatch, "LIST_PAGE", 2)  # every kind takes several pages
    opened = KubernetesDatastore(KubeApi(api_client_for(parse_kubernetes_url(url))),
                                 sync_timeout=WAIT, write_timeout=WAIT)
    yield opened
    opened.close()


def collect(store: KubernetesDatastore, since: int, count: int) -> list[list[Change]]:
    """Batches after `since` until they hold `count` changes; fails after WAIT seconds."""
    batches: list[list[Change]] = []
    for batch in store.watch(since, timeout=WAIT):
        batches.append(batch)
        if sum(len(b) for b in batches) >= count:
            break
    assert sum(len(b) for b in batches) == count, summary(batches)
    return batches


def summary(batches: list[list[Change]]) -> list[list[tuple[str, str]]]:
    return [[(change.kind.value, str(change.key)) for change in batch] for batch in batches]


def settle(store: KubernetesDatastore, seconds: float = 0.5) -> list[list[Change]]:
    """Whatever else arrives within `seconds` (expected: nothing)."""
    return list(store.watch(store.snapshot().revision, timeout=seconds))


def wait_for(predicate: Any, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_first_lists_are_revision_one_and_bad_objects_are_problems(
        store: KubernetesDatastore, server: FakeApiServer) -> None:
    state = store.snapshot()
    assert state.revision == 1
    assert {pod.name for pod in state.pods()} == {
        "web-6d4cf56db6-2lq9x", "node-exporter-hz8vb", "batch-5k9wz"}
    assert len(state.services()) == 5 and len(state.endpoint_slices()) == 3
    assert [node.name for node in state.nodes()] == ["n1", "n2"]
    assert [policy.name for policy in state.global_network_policies()] == ["deny-metadata"]
    assert len(state.host_endpoints()) == 1 and len(state.prefilter_deny_lists()) == 1
    [problem] = store.problems()
    assert problem.object == "GlobalNetworkPolicy selects-nothing"
    assert problem.file == "/apis/sluice.io/v1/globalnetworkpolicies/selects-nothing"
    assert "selects nothing" in problem.message
    assert server.list_requests.count(PODS) == 2  # 3 pods in pages of 2


def test_watch_delivers_each_change_once_in_order(
        store: KubernetesDatastore, server: FakeApiServer) -> None:
    server.put(Pod, pod_object("new"))
    server.put(Pod, pod_object("new", image="nginx:1.28"))
    server.remove(Service, "shop", "db")
    batches = collect(store, 1, 3)
    assert summary(batches) == [[("ADDED", "Pod shop/new")], [("MODIFIED", "Pod shop/new")],
                                [("DELETED", "Service shop/db")]]
    assert [batch[0].revision for batch in batches] == [2, 3, 4]
    deleted = batches[2][0].resource
    assert isinstance(deleted, Service) and deleted.spec.is_headless
    assert ResourceKey("Service", "shop", "db") not in store.snapshot()


def test_broken_watch_resumes_from_last_resource_version(
        store: KubernetesDatastore, server: FakeApiServer) -> None:
    last_seen = str(server.version)
    wait_for(lambda: server.open_watches() == len(FILES), "every kind to watch")
    lists_before = list(server.list_requests)
    server.hold_watches(True)
    server.cut_watches()
    wait_for(lambda: server.open_watches() == 0, "the watches to break")
    server.put(Pod, pod_object("during-outage"))
    server.put(Pod, pod_object("web-6d4cf56db6-2lq9x", image="nginx:1.28"))
    server.remove(Pod, "shop", "batch-5k9wz")
    server.hold_watches(False)

    batches = collect(store, 1, 3)
    assert summary(batches) == [[("ADDED", "Pod shop/during-outage")],
                                [("MODIFIED", "Pod shop/web-6d4cf56db6-2lq9x")],
                                [("DELETED", "Pod shop/batch-5k9wz")]]
    assert settle(store) == []
    resumed = [version for path, version in server.watch_requests if path == PODS][1:]
    assert resumed and resumed[0] == last_seen, server.watch_requests
    assert server.list_requests == lists_before  # resumed, not listed again
    assert {pod.name for pod in store.snapshot().pods()} == {
        "web-6d4cf56db6-2lq9x", "node-exporter-hz8vb", "during-outage"}


def test_gone_on_resume_relists_and_emits_only_the_difference(
        store: KubernetesDatastore, server: FakeApiServer) -> None:
    wait_for(lambda: server.open_watches() == len(FILES), "every kind to watch")
    server.hold_watches(True)
    server.cut_watches()
    wait_for(lambda: server.open_watches() == 0, "the watches to break")
    server.put(Pod, pod_object("while-gone"))
    server.put(Pod, pod_object("web-6d4cf56db6-2lq9x", image="nginx:1.28"))
    server.remove(Pod, "shop", "batch-5k9wz")
    server.compact()
    lists_before = server.list_requests.count(PODS)
    server.hold_watches(False)

    batches = collect(store, 1, 3)
    assert sorted(summary(batches)[0]) == [("ADDED", "Pod shop/while-gone"),
                                           ("DELETED", "Pod shop/batch-5k9wz"),
                                           ("MODIFIED", "Pod shop/web-6d4cf56db6-2lq9x")]
    assert len(batches) == 1  # one relist, one batch, one revision
    assert settle(store) == []
    assert server.list_requests.count(PODS) == lists_before + 2
    pod = store.snapshot().get(ResourceKey("Pod", "shop", "web-6d4cf56db6-2lq9x"))
    assert isinstance(pod, Pod) and pod.spec.containers[0].image == "nginx:1.28"


def test_gone_mid_stream_relists_without_changes_then_follows(
        store: KubernetesDatastore, server: FakeApiServer) -> None:
    wait_for(lambda: server.open_watches() == len(FILES), "every kind to watch")
    lists_before = server.list_requests.count(PODS)
    server.expire_watches()
    wait_for(lambda: server.list_requests.count(PODS) == lists_before + 2, "a relist")
    assert settle(store) == [] and store.snapshot().revision == 1
    server.send_bookmarks()
    server.put(Pod, pod_object("after"))
    assert summary(collect(store, 1, 1)) == [[("ADDED", "Pod shop/after")]]


def test_untranslatable_object_keeps_last_good_form(
        store: KubernetesDatastore, server: FakeApiServer) -> None:
    good = recorded(GlobalNetworkPolicy)[0]
    bad = json.loads(json.dumps(good))
    bad["spec"]["egress"][0]["action"] = "Reject"
    server.put(GlobalNetworkPolicy, bad)
    wait_for(lambda: len(store.problems()) == 2, "the bad object to be reported")
    problem = next(p for p in store.problems() if p.object.endswith("deny-metadata"))
    assert problem.field == "spec.egress[0].action" and "Reject" in problem.message
    kept = store.snapshot().get(ResourceKey("GlobalNetworkPolicy", "", "deny-metadata"))
    assert isinstance(kept, GlobalNetworkPolicy) and kept.spec.egress[0].action == "Deny"
    assert store.snapshot().revision == 1

    fixed = json.loads(json.dumps(good))
    fixed["spec"]["order"] = 11
    server.put(GlobalNetworkPolicy, fixed)
    assert summary(collect(store, 1, 1)) == [
        [("MODIFIED", "GlobalNetworkPolicy deny-metadata")]]
    assert len(store.problems()) == 1
    server.remove(GlobalNetworkPolicy, "", "selects-nothing")
    wait_for(lambda: store.problems() == (), "the problem to go with its object")


def test_apply_and_delete_through_the_api(
        store: KubernetesDatastore, server: FakeApiServer) -> None:
    namespace = Namespace.model_validate(
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "fresh"}})
    pod = Pod.model_validate({"apiVersion": "v1", "kind": "Pod", **pod_object("p", "fresh")})
    revision = store.apply([namespace, pod])
    state = store.snapshot()
    assert revision == state.revision > 1
    assert ResourceKey("Pod", "fresh", "p") in state
    assert ("/api/v1/pods", "fresh", "p") in server.objects
    assert store.apply([pod]) == revision  # unchanged: nothing written

    refused = pod.model_copy(update={"metadata": pod.metadata.model_copy(
        update={"name": REFUSED_NAME})})
    other = Pod.model_validate({"apiVersion": "v1", "kind": "Pod", **pod_object("q", "fresh")})
    before = dict(server.objects)
    with pytest.raises(DatastoreError, match=f"Pod fresh/{REFUSED_NAME}.*refused by admission"):
        store.apply([other, refused])
    assert server.objects == before

    with pytest.raises(ObjectNotFoundError, match="Pod fresh/nope: no such object"):
        store.delete([ResourceKey("Pod", "fresh", "nope"), ResourceKey("Pod", "fresh", "p")])
    assert ("/api/v1/pods", "fresh", "p") in server.objects
    after = store.delete([ResourceKey("Pod", "fresh", "p")])
    assert after > revision and ResourceKey("Pod", "fresh", "p") not in store.snapshot()
    kinds = [change.kind for batch in store.watch(revision, timeout=0) for change in batch]
    assert kinds == [ChangeKind.DELETED]


def test_kinds_the_apiserver_does_not_serve_are_problems(
        test_netns: str, tmp_path: Path) -> None:
    api = FakeApiServer()
    api.kinds = {path: kind for path, kind in api.kinds.items()
                 if kind.cls.API_VERSION != "sluice.io/v1"}
    api.put(Pod, pod_object("only"))
    with api.serving() as base:
        url = f"kubernetes://?kubeconfig={write_kubeconfig(tmp_path / 'config', base)}"
        with KubernetesDatastore.from_url(url) as store:
            assert [pod.name for pod in store.snapshot().pods()] == ["only"]
            files = sorted(problem.file for problem in store.problems())
            assert files == [f"{base}/apis/sluice.io/v1/{plural}" for plural in (
                "globalnetworkpolicies", "hostendpoints", "prefilterdenylists")]
            assert "404" in store.problems()[0].message


def test_unreachable_apiserver_is_a_datastore_error(test_netns: str, tmp_path: Path) -> None:
    config = write_kubeconfig(tmp_path / "config", "http://127.0.0.1:9")
    api = KubeApi(api_client_for(parse_kubernetes_url(f"kubernetes://?kubeconfig={config}")))
    with pytest.raises(DatastoreError, match=r"cannot list .*pods.* from http://127.0.0.1:9"):
        KubernetesDatastore(api, sync_timeout=1.0)
