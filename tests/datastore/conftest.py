from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sluice.datastore import FileDatastore
from tests.datastore.helpers import POLL

StoreFactory = Callable[..., FileDatastore]


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "manifests"
    directory.mkdir()
    return directory


@pytest.fixture
def make_store(store_dir: Path) -> Iterator[StoreFactory]:
    """Opens FileDatastores on `store_dir` that poll fast; closes them after the test."""
    opened: list[FileDatastore] = []

    def make(history: int = 1000) -> FileDatastore:
        store = FileDatastore(f"file://{store_dir}", poll_interval=POLL, history=history)
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()
