"""The etcd datastore against a real etcd (3.4, Debian's) in a namespace of its own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sluice.datastore import (
    Change,
    ChangeKind,
    ClusterState,
    DatastoreError,
    ObjectNotFoundError,
    ResourceKey,
    ResyncRequired,
    open_datastore,
)
from sluice.datastore.etcdclient import b64, unb64
from sluice.datastore.etcdstore import EtcdDatastore, encode, object_key
from tests.datastore.etcdserver import DroppingProxy, EtcdServer, requires_etcd, running_etcd
from tests.datastore.helpers import (
    documents,
    namespace,
    namespace_yaml,
    pod,
    pod_yaml,
    service,
)

pytestmark = requires_etcd

WAIT = 30.0
SLUICE = Path(sys.executable).with_name("sluice")


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[EtcdServer]:
    with running_etcd(tmp_path) as server:
        yield server


@pytest.fixture
def store(etcd: EtcdServer) -> Iterator[EtcdDatastore]:
    with EtcdDatastore(etcd.url()) as opened:
        yield opened


class Collector:
    """Consumes a watch in a thread, keeping every batch."""

    def __init__(self, store: EtcdDatastore, since: int) -> None:
        self.batches: list[list[Change]] = []
        self.error: BaseException | None = None
        self.stop = threading.Event()
        self._store, self._since = store, since
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for batch in self._store.watch(self._since, stop=self.stop):
                self.batches.append(batch)
        except BaseException as err:
            self.error = err

    def wait_for(self, revision: int) -> None:
        deadline = time.monotonic() + WAIT
        while not self.batches or self.batches[-1][-1].revision < revision:
            assert self.error is None, self.error
            assert time.monotonic() < deadline, f"no batch at revision {revision}: {self}"
            time.sleep(0.02)

    def close(self) -> None:
        self.stop.set()
        self._thread.join(WAIT)
        assert not self._thread.is_alive()

    def __repr__(self) -> str:
        return repr([[(c.kind.value, str(c.key), c.revision) for c in b] for b in self.batches])


def keys_of(state: ClusterState) -> list[str]:
    return [str(resource.ref) for resource in state.all()]


def test_snapshot_apply_delete_round_trip(store: EtcdDatastore, etcd: EtcdServer) -> None:
    empty = store.snapshot()
    assert len(empty) == 0
    revision = store.apply([namespace("team", env="prod"), pod("web-1", "team"),
                            service("web", "team")])
    assert revision > empty.revision
    state = store.snapshot()
    assert state.revision == revision
    assert keys_of(state) == ["Namespace team", "Pod team/web-1", "Service team/web"]
    assert state.get(ResourceKey("Pod", "team", "web-1")) == pod("web-1", "team")

    # keys and values as documented
    stored = etcd.call("/v3/kv/range", {"key": b64("/sluice/v1/Namespace/_cluster/team")})
    value = json.loads(unb64(stored["kvs"][0]["value"]))
    assert value["kind"] == "Namespace" and value["metadata"]["labels"] == {"env": "prod"}
    assert object_key("/sluice/v1", ResourceKey("Pod", "team", "web-1")) == \
        "/sluice/v1/Pod/team/web-1"

    assert store.apply([pod("web-1", "team")]) == revision, "unchanged: no new revision"
    after = store.delete([ResourceKey("Pod", "team", "web-1")])
    assert after > revision
    assert keys_of(store.snapshot()) == ["Namespace team", "Service team/web"]


def test_apply_is_one_revision_and_all_or_nothing(store: EtcdDatastore) -> None:
    revision = store.apply([pod(f"p{i}") for i in range(20)])
    state = store.snapshot()
    assert len(state) == 20 and state.revision == revision
    with pytest.raises(DatastoreError, match=r"given more than once") as info:
        store.apply([pod("new"), pod("p1", app="other"), pod("p1")])
    assert "nothing was changed" in str(info.value)
    with pytest.raises(DatastoreError, match="not a resource of a known kind"):
        store.apply([pod("new2"), "not a resource"])  # type: ignore[list-item]
    assert store.snapshot().revision == revision
    assert ResourceKey("Pod", "default", "new") not in store.snapshot()


def test_delete_refuses_unknown_keys_and_deletes_nothing(store: EtcdDatastore) -> None:
    revision = store.apply([pod("a"), pod("b")])
    with pytest.raises(ObjectNotFoundError, match=r"Pod default/ghost: no such object"):
        store.delete([ResourceKey("Pod", "default", "a"), ResourceKey("Pod", "default", "ghost")])
    state = store.snapshot()
    assert state.revision == revision and len(state) == 2
    deleted = store.delete([ResourceKey("Pod", "default", "a"), ResourceKey("Pod", "default", "b")])
    assert deleted == revision + 1, "both keys go in one transaction"
    assert len(store.snapshot()) == 0


def test_watch_delivers_batches_in_order(store: EtcdDatastore) -> None:
    start = store.snapshot().revision
    collector = Collector(store, start)
    try:
        first = store.apply([pod("a"), pod("b"), service("s")])
        second = store.apply([pod("a", app="changed")])
        third = store.delete([ResourceKey("Pod", "default", "b")])
        collector.wait_for(third)
    finally:
        collector.close()
    assert [[(c.kind, c.key.name) for c in batch] for batch in collector.batches] == [
        [(ChangeKind.ADDED, "a"), (ChangeKind.ADDED, "b"), (ChangeKind.ADDED, "s")],
        [(ChangeKind.MODIFIED, "a")],
        [(ChangeKind.DELETED, "b")],
    ]
    assert [batch[0].revision for batch in collector.batches] == [first, second, third]
    assert collector.batches[2][0].resource == pod("b"), "a deletion carries the last object"
    replayed = ClusterState(revision=start)
    for batch in collector.batches:
        replayed = replayed.with_changes(batch)
    assert replayed == store.snapshot()


def test_watch_from_an_older_revision_replays_and_a_timeout_ends_it(
        store: EtcdDatastore) -> None:
    start = store.snapshot().revision
    store.apply([pod("a")])
    end = store.apply([pod("b")])
    batches = list(store.watch(start, timeout=1.0))
    assert [batch[0].key.name for batch in batches] == ["a", "b"]
    assert batches[-1][-1].revision == end
    assert list(store.watch(end, timeout=0.3)) == []


def test_watch_resumes_across_an_etcd_restart(store: EtcdDatastore, etcd: EtcdServer) -> None:
    collector = Collector(store, store.snapshot().revision)
    try:
        store.apply([pod("before")])
        etcd.kill()
        etcd.start()  # same data directory: same revisions
        after = store.apply([pod("after-1")])
        after = store.apply([pod("after-2")])
        collector.wait_for(after)
    finally:
        collector.close()
    assert [c.key.name for batch in collector.batches for c in batch] == [
        "before", "after-1", "after-2"]


def test_watch_resumes_across_a_dropped_connection(store: EtcdDatastore,
                                                    etcd: EtcdServer) -> None:
    proxy = DroppingProxy(etcd, 12379)
    try:
        with EtcdDatastore(etcd.url(port=12379)) as through_proxy:
            collector = Collector(through_proxy, through_proxy.snapshot().revision)
            try:
                collector.wait_for(store.apply([pod("one")]))
                connections = proxy.accepted
                proxy.drop()
                # written while the watch is cut off: delivered once it is back
                store.apply([pod("two")])
                last = store.apply([pod("three")])
                collector.wait_for(last)
                assert proxy.accepted > connections, "the watch reconnected"
            finally:
                collector.close()
    finally:
        proxy.close()
    assert [c.key.name for batch in collector.batches for c in batch] == ["one", "two",
                                                                          "three"]


def test_compacted_revision_requires_a_resync(store: EtcdDatastore, etcd: EtcdServer) -> None:
    old = store.snapshot().revision
    store.apply([pod("a")])
    current = store.apply([pod("b")])
    etcd.compact(current)
    with pytest.raises(ResyncRequired, match="take a fresh snapshot") as info:
        for _batch in store.watch(old, timeout=WAIT):
            pass
    assert info.value.oldest == current
    with pytest.raises(ResyncRequired, match="newer than the current revision"):
        store.watch(current + 100)
    assert list(store.watch(current, timeout=0.3)) == []


def test_a_bad_value_is_reported_and_the_last_good_object_kept(
        store: EtcdDatastore, etcd: EtcdServer) -> None:
    store.apply([pod("web")])
    key = "/sluice/v1/Pod/default/web"
    collector = Collector(store, store.snapshot().revision)
    try:
        bad = json.loads(encode(pod("web")))
        bad["spec"]["containers"] = "not a list"
        etcd.put(key, json.dumps(bad).encode())
        etcd.put("/sluice/v1/Pod/default/elsewhere", encode(pod("web")))  # name mismatch
        etcd.put("/sluice/v1/garbage", b"{}")
        marker = store.apply([pod("marker")])
        collector.wait_for(marker)
    finally:
        collector.close()
    assert [c.key.name for batch in collector.batches for c in batch] == ["marker"]
    state = store.snapshot()
    assert state.get(ResourceKey("Pod", "default", "web")) == pod("web"), "last good kept"
    assert ResourceKey("Pod", "default", "elsewhere") not in state
    problems = {(p.file, p.field): p.message for p in store.problems()}
    assert ("etcd key /sluice/v1/Pod/default/web", "spec.containers") in problems, problems
    assert problems[("etcd key /sluice/v1/Pod/default/elsewhere", "metadata.name")] == \
        "the key says name elsewhere, the value web"
    assert "does not follow" in problems[("etcd key /sluice/v1/garbage", "")]

    store.apply([pod("web", app="fixed")])  # a good value again clears the problem
    store.snapshot()
    assert ("etcd key /sluice/v1/Pod/default/web", "spec.containers") not in {
        (p.file, p.field) for p in store.problems()}


def test_the_next_member_is_used_when_the_first_is_down(etcd: EtcdServer) -> None:
    # nothing listens on 2399; 198.18.255.1 is unreachable from a namespace with only lo
    url = f"etcd://127.0.0.1:2399,198.18.255.1:2379,127.0.0.1:2379?netns={etcd.netns}&timeout=2"
    with open_datastore(url) as store:
        assert isinstance(store, EtcdDatastore)
        revision = store.apply([pod("x")])
        assert store.snapshot().revision == revision
        batches = list(store.watch(revision - 1, timeout=1.0))
        assert [c.key.name for batch in batches for c in batch] == ["x"]
    dead = open_datastore(f"etcd://127.0.0.1:2399?netns={etcd.netns}&timeout=1")
    with dead, pytest.raises(DatastoreError, match=r"no etcd member reachable \(127.0.0.1:2399: "):
        dead.snapshot()


def test_prefixes_keep_stores_apart(etcd: EtcdServer) -> None:
    with EtcdDatastore(etcd.url(prefix="/a")) as first, \
            EtcdDatastore(etcd.url(prefix="/ab")) as second:
        first.apply([pod("only-in-a")])
        assert len(second.snapshot()) == 0
        assert keys_of(first.snapshot()) == ["Pod default/only-in-a"]


def _sluice(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SLUICE), *args], capture_output=True, text=True, timeout=60,
                          check=False, env=env)


def test_sluice_apply_and_delete_cli(etcd: EtcdServer, store: EtcdDatastore,
                                     tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(documents(namespace_yaml("team"), pod_yaml("web-1", "team")))
    bad = tmp_path / "bad.yaml"
    bad.write_text(pod_yaml("web-2", "team").replace("containers: [", "containers: 3 #["))
    before = store.snapshot().revision

    refused = _sluice("apply", "-f", str(good), "-f", str(bad), "--datastore", etcd.url())
    assert refused.returncode == 2, refused
    assert f"{bad}: document 1: Pod team/web-2: spec.containers: " in refused.stderr
    assert "nothing was changed" in refused.stderr
    assert store.snapshot().revision == before, "nothing written"

    nowhere = _sluice("apply", "-f", str(good), env={"PATH": os.environ["PATH"]})
    assert nowhere.returncode == 2 and "SLUICE_DATASTORE" in nowhere.stderr

    # the lab's way: a plain URL, connected from inside the server's namespace
    plain = ["--datastore", "etcd://127.0.0.1:2379", "--netns", etcd.netns]
    applied = _sluice("apply", "-f", str(good), *plain)
    assert applied.returncode == 0, applied.stderr
    assert applied.stdout.splitlines()[:2] == ["namespace/team created", "pod/team/web-1 created"]
    assert keys_of(store.snapshot()) == ["Namespace team", "Pod team/web-1"]
    again = _sluice("apply", "-f", str(good), *plain)
    assert "pod/team/web-1 unchanged" in again.stdout

    gone = tmp_path / "gone.yaml"
    gone.write_text(documents(pod_yaml("web-1", "team"), pod_yaml("ghost", "team")))
    missing = _sluice("delete", "-f", str(gone), *plain)
    assert missing.returncode == 1 and "Pod team/ghost: no such object" in missing.stderr
    assert ResourceKey("Pod", "team", "web-1") in store.snapshot()
    deleted = _sluice("delete", "-f", str(gone), "--ignore-not-found", *plain,
                      env={**os.environ, "SLUICE_DATASTORE": "file:///nonexistent"})
    assert deleted.returncode == 0, deleted.stderr
    assert "pod/team/ghost not found (ignored)" in deleted.stdout
    assert keys_of(store.snapshot()) == ["Namespace team"]
