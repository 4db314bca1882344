from __future__ import annotations

from pathlib import Path

import pytest

from sluice.datastore import ResyncRequired
from sluice.datastore.changes import Change, ChangeKind
from sluice.datastore.history import ChangeLog
from tests.datastore.conftest import StoreFactory
from tests.datastore.helpers import drain, flat, pod, pod_key, pod_yaml, write


def _change(name: str, revision: int) -> Change:
    return Change(ChangeKind.ADDED, pod_key(name), pod(name), revision)


def test_resume_yields_only_later_changes(store_dir: Path, make_store: StoreFactory) -> None:
    store = make_store()
    start = store.snapshot().revision
    write(store_dir / "a.yaml", pod_yaml("a"))
    first = drain(store, start)
    assert flat(first) == [("ADDED", "Pod default/a")]
    last_seen = first[-1][-1].revision

    write(store_dir / "b.yaml", pod_yaml("b"))
    store.refresh()
    write(store_dir / "c.yaml", pod_yaml("c"))
    store.refresh()
    resumed = drain(store, last_seen)
    assert flat(resumed) == [("ADDED", "Pod default/b"), ("ADDED", "Pod default/c")]
    assert [batch[0].revision for batch in resumed] == [last_seen + 1, last_seen + 2]
    assert len(drain(store, start)) == 3
    assert drain(store, store.revision) == []


def test_stopped_watch_resumes_where_it_left_off(store_dir: Path, make_store: StoreFactory) -> None:
    store = make_store()
    start = store.snapshot().revision
    for name in ("a", "b", "c"):
        write(store_dir / f"{name}.yaml", pod_yaml(name))
        store.refresh()
    watch = store.watch(start, timeout=1)
    first = next(watch)
    del watch
    assert flat([first]) == [("ADDED", "Pod default/a")]
    rest = list(store.watch(first[-1].revision, timeout=0))
    assert flat(rest) == [("ADDED", "Pod default/b"), ("ADDED", "Pod default/c")]


def test_revision_from_the_future_needs_resync(make_store: StoreFactory) -> None:
    store = make_store()
    current = store.snapshot().revision
    with pytest.raises(ResyncRequired, match="newer than the current revision") as info:
        store.watch(current + 1)
    assert info.value.current == current


def test_revision_older_than_history_needs_resync(
    store_dir: Path, make_store: StoreFactory
) -> None:
    store = make_store(history=2)
    start = store.snapshot().revision
    for name in ("a", "b", "c"):
        write(store_dir / f"{name}.yaml", pod_yaml(name))
        store.refresh()
    with pytest.raises(ResyncRequired, match="no longer kept"):
        store.watch(start)
    with pytest.raises(ResyncRequired):
        store.watch(0)
    fresh = store.snapshot()
    assert [p.name for p in fresh.pods()] == ["a", "b", "c"]
    assert flat(drain(store, fresh.revision - 2)) == [
        ("ADDED", "Pod default/b"),
        ("ADDED", "Pod default/c"),
    ]


def test_a_lagging_watch_fails_with_resync_while_iterating(
    store_dir: Path, make_store: StoreFactory
) -> None:
    store = make_store(history=1)
    start = store.snapshot().revision
    write(store_dir / "a.yaml", pod_yaml("a"))
    store.refresh()
    watch = store.watch(start, timeout=1)
    assert flat([next(watch)]) == [("ADDED", "Pod default/a")]
    for name in ("b", "c"):
        write(store_dir / f"{name}.yaml", pod_yaml(name))
        store.refresh()
    with pytest.raises(ResyncRequired):
        next(watch)


def test_change_log_keeps_a_bounded_history() -> None:
    log = ChangeLog(5, limit=2)
    assert (log.oldest, log.current) == (5, 5)
    log.commit([_change("a", 6)])
    log.commit([_change("b", 7)])
    assert log.oldest == 5
    assert [batch[0].key.name for batch in log.since(5)] == ["a", "b"]
    log.commit([_change("c", 8)])
    assert (log.oldest, log.current) == (6, 8)
    assert [batch[0].key.name for batch in log.since(6)] == ["b", "c"]
    assert log.since(8) == []
    with pytest.raises(ResyncRequired):
        log.since(5)
    with pytest.raises(ResyncRequired):
        log.since(9)


def test_change_log_refuses_out_of_order_batches() -> None:
    log = ChangeLog(1)
    with pytest.raises(ValueError, match="revision 2"):
        log.commit([_change("a", 3)])
    with pytest.raises(ValueError, match="at least 1"):
        ChangeLog(1, limit=0)


def test_change_log_keeps_a_bounded_number_of_changes() -> None:
    log = ChangeLog(1, limit=100, max_changes=3)
    log.commit([_change("a", 2), _change("b", 2)])
    log.commit([_change("c", 3)])
    assert [len(batch) for batch in log.since(1)] == [2, 1]
    log.commit([_change("d", 4)])  # 4 changes: the oldest batch goes
    assert log.oldest == 2
    assert [batch[0].key.name for batch in log.since(2)] == ["c", "d"]
    with pytest.raises(ResyncRequired):
        log.since(1)
    log.commit([_change(f"e{i}", 5) for i in range(5)])  # larger than the bound alone
    assert log.oldest == 4 and [len(batch) for batch in log.since(4)] == [5]
