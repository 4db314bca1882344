from __future__ import annotations

import os
from pathlib import Path

import pytest

from sluice.datastore import DatastoreError, FileDatastore, open_datastore
from sluice.datastore.urls import parse_file_url


def test_absolute_and_relative_file_urls() -> None:
    assert parse_file_url("file:///var/lib/sluice").directory == Path("/var/lib/sluice")
    assert parse_file_url("file://relative/dir").directory == Path("relative/dir")
    assert parse_file_url("file://./here").directory == Path("here")
    assert parse_file_url("FILE:///with%20space").directory == Path("/with space")
    assert parse_file_url("file:///d?poll=0.5").poll_interval == 0.5
    assert parse_file_url("file:///d").poll_interval is None


def test_open_datastore_opens_a_file_store(tmp_path: Path) -> None:
    with open_datastore(f"file://{tmp_path}?poll=0.05") as store:
        assert isinstance(store, FileDatastore)
        assert store.directory == tmp_path
        assert store.poll_interval == 0.05
        assert len(store.snapshot()) == 0


def test_open_datastore_relative_to_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "store").mkdir()
    monkeypatch.chdir(tmp_path)
    with open_datastore("file://store") as store:
        assert isinstance(store, FileDatastore)
        assert os.path.samefile(store.directory, tmp_path / "store")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("", "expected scheme://location"),
        ("/var/lib/sluice", "expected scheme://location"),
        ("http://example.com/x", "unknown scheme 'http'; supported: file:// "),
        ("etcd://127.0.0.1:2379", "etcd datastore is not available yet"),
        ("kubernetes://", "kubernetes datastore is not available yet"),
        ("file://", "no directory"),
        ("file:///d?poll=0", "poll must be a positive number"),
        ("file:///d?poll=soon", "poll must be a positive number"),
        ("file:///d?interval=1", "unknown option 'interval'"),
        ("file:///d#frag", "fragment"),
    ],
)
def test_invalid_urls(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        open_datastore(url)
    if "scheme" in message:
        assert "planned: etcd://, kubernetes://" in str(info.value)


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(DatastoreError, match="does not exist"):
        open_datastore(f"file://{tmp_path}/missing")
