from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from pathlib import Path

import pytest

from sluice.datastore import Change, ChangeKind, DatastoreError, ResourceKey
from tests.datastore.conftest import StoreFactory
from tests.datastore.helpers import (
    MODEL_MANIFESTS,
    documents,
    drain,
    flat,
    namespace_yaml,
    pod,
    pod_key,
    pod_yaml,
    service,
    service_yaml,
    summary,
    write,
)


def test_snapshot_reads_every_manifest_file(store_dir: Path, make_store: StoreFactory) -> None:
    for source in MODEL_MANIFESTS.iterdir():
        shutil.copy(source, store_dir / source.name)
    write(store_dir / "extra.yml", pod_yaml("extra", "tools"))
    write(store_dir / "notes.txt", "not a manifest")
    write(store_dir / ".hidden.yaml", "kind: [broken")
    (store_dir / "sub").mkdir()
    write(store_dir / "sub" / "nested.yaml", pod_yaml("nested"))
    state = make_store().snapshot()
    assert state.revision == 1
    assert len(state) == 18
    assert [p.name for p in state.pods()] == ["web-0", "web-1", "extra"]
    assert [ns.name for ns in state.namespaces()] == ["shop", "tools"]
    assert [p.name for p in state.network_policies("tools")] == ["default-deny"]


def test_snapshot_of_an_empty_directory(make_store: StoreFactory) -> None:
    store = make_store()
    assert len(store.snapshot()) == 0
    assert store.snapshot().revision == 1
    assert store.problems() == ()


def test_watch_sees_files_and_documents_come_and_go(
    store_dir: Path, make_store: StoreFactory
) -> None:
    write(store_dir / "ns.yaml", namespace_yaml("default"))
    store = make_store()
    start = store.snapshot().revision
    multi = store_dir / "pods.yaml"
    write(multi, documents(pod_yaml("a"), pod_yaml("b"), pod_yaml("c")))
    added = drain(store, start)
    assert summary(added) == [
        [("ADDED", "Pod default/a"), ("ADDED", "Pod default/b"), ("ADDED", "Pod default/c")]
    ]
    revision = added[-1][-1].revision
    assert revision == start + 1

    write(multi, documents(pod_yaml("a"), pod_yaml("b", app="api"), pod_yaml("c")))
    modified = drain(store, revision)
    assert summary(modified) == [[("MODIFIED", "Pod default/b")]]
    [[change]] = modified
    assert change.resource is not None
    assert change.resource.labels == {"app": "api"}
    revision = change.revision

    write(multi, documents(pod_yaml("a"), pod_yaml("b", app="api")))
    removed = drain(store, revision)
    assert summary(removed) == [[("DELETED", "Pod default/c")]]
    deleted = removed[0][0]
    assert deleted.resource is not None
    assert deleted.resource.name == "c"
    revision = deleted.revision

    multi.unlink()
    gone = drain(store, revision)
    assert summary(gone) == [[("DELETED", "Pod default/a"), ("DELETED", "Pod default/b")]]
    assert [ns.name for ns in store.snapshot().namespaces()] == ["default"]
    assert store.snapshot().pods() == ()


def test_unchanged_rewrites_and_renames_are_not_changes(
    store_dir: Path, make_store: StoreFactory
) -> None:
    write(store_dir / "a.yaml", pod_yaml("a"))
    store = make_store()
    start = store.snapshot().revision
    write(store_dir / "a.yaml", pod_yaml("a"))
    os.rename(store_dir / "a.yaml", store_dir / "b.yaml")
    assert drain(store, start) == []
    assert store.revision == start


def test_same_size_rewrite_is_seen(store_dir: Path, make_store: StoreFactory) -> None:
    path = store_dir / "a.yaml"
    write(path, pod_yaml("a", app="aaa"))
    store = make_store()
    start = store.snapshot().revision
    stat = path.stat()
    write(path, pod_yaml("a", app="bbb"))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert flat(drain(store, start)) == [("MODIFIED", "Pod default/a")]


def test_bad_edit_keeps_last_good_objects(
    store_dir: Path, make_store: StoreFactory, caplog: pytest.LogCaptureFixture
) -> None:
    path = store_dir / "pods.yaml"
    write(path, documents(pod_yaml("a"), pod_yaml("b")))
    store = make_store()
    start = store.snapshot().revision
    bad = documents(pod_yaml("a", app="new"), pod_yaml("b").replace("containers", "containerz"))
    with caplog.at_level(logging.WARNING, logger="sluice.datastore"):
        write(path, bad)
        assert drain(store, start) == []
    assert [p.labels["app"] for p in store.snapshot().pods()] == ["web", "web"]
    problems = store.problems()
    assert {(problem.file, problem.object) for problem in problems} == {
        (str(path), "Pod default/b")
    }
    assert any('unknown field "containerz"' in problem.message for problem in problems)
    assert str(path) in caplog.text
    assert "containerz" in caplog.text
    assert "keeping its last good content (2 objects)" in caplog.text

    write(path, documents(pod_yaml("a", app="new"), pod_yaml("b")))
    assert summary(drain(store, start)) == [[("MODIFIED", "Pod default/a")]]
    assert store.problems() == ()


def test_bad_new_file_adds_nothing_until_fixed(store_dir: Path, make_store: StoreFactory) -> None:
    store = make_store()
    start = store.snapshot().revision
    path = store_dir / "broken.yaml"
    write(path, "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec: [unclosed\n")
    assert drain(store, start) == []
    [problem] = store.problems()
    assert problem.file == str(path)
    assert "invalid YAML" in problem.message
    write(path, pod_yaml("a"))
    assert flat(drain(store, start)) == [("ADDED", "Pod default/a")]
    assert store.problems() == ()


def test_deleting_a_bad_file_removes_its_last_good_objects(
    store_dir: Path, make_store: StoreFactory
) -> None:
    path = store_dir / "pod.yaml"
    write(path, pod_yaml("a"))
    store = make_store()
    start = store.snapshot().revision
    write(path, "{not: valid")
    assert drain(store, start) == []
    assert len(store.problems()) == 1
    path.unlink()
    assert flat(drain(store, start)) == [("DELETED", "Pod default/a")]
    assert store.problems() == ()


def test_invalid_utf8_and_duplicates_in_one_file_reject_it(
    store_dir: Path, make_store: StoreFactory
) -> None:
    write(store_dir / "dup.yaml", documents(pod_yaml("a"), pod_yaml("a", app="other")))
    (store_dir / "binary.json").write_bytes(b"\xff\xfe{}")
    store = make_store()
    assert len(store.snapshot()) == 0
    messages = sorted(problem.message for problem in store.problems())
    assert messages == [
        "defined more than once in this file",
        "not UTF-8 text: byte 0 cannot be decoded",
    ]


def test_object_in_two_files_keeps_the_first(store_dir: Path, make_store: StoreFactory) -> None:
    write(store_dir / "a.yaml", pod_yaml("x", app="from-a"))
    store = make_store()
    start = store.snapshot().revision
    write(store_dir / "0-earlier-name.yaml", pod_yaml("x", app="from-0"))
    assert drain(store, start) == []
    assert [p.labels["app"] for p in store.snapshot().pods()] == ["from-a"]
    [problem] = store.problems()
    assert problem.file == str(store_dir / "0-earlier-name.yaml")
    assert problem.object == "Pod default/x"
    assert str(store_dir / "a.yaml") in problem.message

    (store_dir / "a.yaml").unlink()
    batches = drain(store, start)
    assert flat(batches) == [("MODIFIED", "Pod default/x")]
    assert [p.labels["app"] for p in store.snapshot().pods()] == ["from-0"]
    assert store.problems() == ()


def test_conflict_at_startup_goes_to_the_first_file_name(
    store_dir: Path, make_store: StoreFactory
) -> None:
    write(store_dir / "b.yaml", pod_yaml("x", app="from-b"))
    write(store_dir / "a.yaml", pod_yaml("x", app="from-a"))
    store = make_store()
    assert [p.labels["app"] for p in store.snapshot().pods()] == ["from-a"]
    assert [problem.file for problem in store.problems()] == [str(store_dir / "b.yaml")]


def test_replaying_watched_batches_reproduces_the_state(
    store_dir: Path, make_store: StoreFactory
) -> None:
    store = make_store()
    first = store.snapshot()
    write(store_dir / "a.yaml", documents(namespace_yaml("shop"), pod_yaml("p", "shop")))
    store.refresh()
    write(store_dir / "b.yaml", service_yaml("s", "shop"))
    store.refresh()
    write(store_dir / "a.yaml", pod_yaml("p", "shop", app="x"))
    batches = drain(store, first.revision)
    assert len(batches) == 3
    replayed = first
    for batch in batches:
        replayed = replayed.with_changes(batch)
    assert replayed == store.snapshot()


def test_watch_in_a_thread_sees_applies_and_stops(
    store_dir: Path, make_store: StoreFactory
) -> None:
    store = make_store()
    start = store.snapshot().revision
    stop = threading.Event()
    seen: list[tuple[str, str]] = []
    arrived = threading.Event()

    def consume() -> None:
        for batch in store.watch(start, stop=stop, timeout=5):
            seen.extend((change.kind.value, str(change.key)) for change in batch)
            if len(seen) >= 2:
                arrived.set()

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    try:
        write(store_dir / "by-hand.yaml", pod_yaml("a"))
        store.apply([service("s")])
        assert arrived.wait(2)
    finally:
        stop.set()
        thread.join(2)
    assert not thread.is_alive()
    assert sorted(seen) == [("ADDED", "Pod default/a"), ("ADDED", "Service default/s")]


def test_watch_ends_on_timeout_and_on_close(make_store: StoreFactory) -> None:
    store = make_store()
    began = time.monotonic()
    assert list(store.watch(store.snapshot().revision, timeout=0.05)) == []
    assert time.monotonic() - began < 1

    watch = store.watch(store.revision)
    closer = threading.Timer(0.05, store.close)
    closer.start()
    assert list(watch) == []
    closer.join()
    with pytest.raises(DatastoreError, match="closed"):
        store.snapshot()
    store.close()


def test_watch_stop_already_set_yields_nothing(store_dir: Path, make_store: StoreFactory) -> None:
    store = make_store()
    start = store.snapshot().revision
    write(store_dir / "a.yaml", pod_yaml("a"))
    stop = threading.Event()
    stop.set()
    assert list(store.watch(start, stop=stop)) == []
    assert flat(drain(store, start)) == [("ADDED", "Pod default/a")]


def test_change_kinds_and_keys_are_typed(store_dir: Path, make_store: StoreFactory) -> None:
    store = make_store()
    write(store_dir / "a.yaml", pod_yaml("a", "ns1"))
    [[change]] = drain(store, store.revision)
    assert change.kind is ChangeKind.ADDED
    assert change.key == pod_key("a", "ns1")
    assert isinstance(change.key, ResourceKey)


def test_concurrent_applies_while_watching_replay_to_the_snapshot(
    make_store: StoreFactory,
) -> None:
    store = make_store()
    first = store.snapshot()
    stop = threading.Event()
    batches: list[list[Change]] = []

    def consume() -> None:
        batches.extend(store.watch(first.revision, stop=stop, timeout=5))

    def produce(prefix: str) -> None:
        for index in range(15):
            store.apply([pod(f"{prefix}-{index}")])
            if index % 5 == 4:
                store.delete([pod_key(f"{prefix}-{index - 1}")])

    watcher = threading.Thread(target=consume, daemon=True)
    writers = [threading.Thread(target=produce, args=(name,), daemon=True) for name in "xyz"]
    watcher.start()
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(5)
    final = store.snapshot()
    deadline = time.monotonic() + 2
    while (not batches or batches[-1][-1].revision < final.revision) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.01)
    stop.set()
    watcher.join(2)
    assert not watcher.is_alive()
    replayed = first
    for batch in batches:
        replayed = replayed.with_changes(batch)
    assert replayed == final
    assert len(final.pods()) == 3 * (15 - 3)
