"""kubernetes:// URLs."""

from __future__ import annotations

from pathlib import Path

import pytest

from sluice.datastore import DatastoreError
from sluice.datastore.kubestore import KubeLocation, KubernetesDatastore, parse_kubernetes_url


@pytest.mark.parametrize(("url", "location"), [
    ("kubernetes://", KubeLocation()),
    ("kubernetes:///", KubeLocation()),
    ("kubernetes://?kubeconfig=/etc/k/config", KubeLocation("/etc/k/config")),
    ("kubernetes://?kubeconfig=/k%20c&context=prod", KubeLocation("/k c", "prod")),
    ("KUBERNETES://?context=dev", KubeLocation(None, "dev")),
])
def test_good_urls(url: str, location: KubeLocation) -> None:
    assert parse_kubernetes_url(url) == location


@pytest.mark.parametrize(("url", "part"), [
    ("kubernetes://apiserver:6443", "host 'apiserver:6443'"),
    ("kubernetes:///cluster", "path '/cluster'"),
    ("kubernetes://?kubeconfig=/a&kubeconfig=/b", "option 'kubeconfig' given twice"),
    ("kubernetes://?token=x", "unknown option 'token'"),
    ("kubernetes://?context=", "option 'context' needs a value"),
    ("kubernetes://?kubeconfig", "malformed query"),
    ("kubernetes://#frag", "fragment"),
    ("etcd://127.0.0.1:2379", "not a kubernetes datastore URL"),
])
def test_bad_urls_name_the_url_and_the_part(url: str, part: str) -> None:
    with pytest.raises(ValueError, match=r"kubernetes|datastore URL") as caught:
        parse_kubernetes_url(url)
    assert part in str(caught.value) and repr(url) in str(caught.value)


def test_missing_kubeconfig_is_a_datastore_error(tmp_path: Path) -> None:
    with pytest.raises(DatastoreError, match=f"kubeconfig {tmp_path}/none"):
        KubernetesDatastore.from_url(f"kubernetes://?kubeconfig={tmp_path}/none")


def test_in_cluster_outside_a_pod_is_a_datastore_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(DatastoreError, match="in-cluster configuration"):
        KubernetesDatastore.from_url("kubernetes://")
