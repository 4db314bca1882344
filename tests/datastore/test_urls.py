from __future__ import annotations

import os
from pathlib import Path

import pytest

from sluice.datastore import DatastoreError, FileDatastore, open_datastore
from sluice.datastore.etcdstore import EtcdDatastore
from sluice.datastore.urls import EtcdLocation, parse_etcd_url, parse_file_url


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
        ("http://example.com/x", "unknown scheme 'http'; supported: file://, "),
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
        assert "supported: file://, etcd://, kubernetes://" in str(info.value)


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(DatastoreError, match="does not exist"):
        open_datastore(f"file://{tmp_path}/missing")


def test_etcd_urls() -> None:
    assert parse_etcd_url("etcd://10.0.0.1:2379") == EtcdLocation((("10.0.0.1", 2379),))
    assert parse_etcd_url("etcd://a:1,b,[fd00::2]:2381?prefix=/x/y/&timeout=0.5&netns=n1") == \
        EtcdLocation((("a", 1), ("b", 2379), ("fd00::2", 2381)), "/x/y", 0.5, "n1")
    assert parse_etcd_url("ETCD://h:2379").endpoints == (("h", 2379),)


def test_open_datastore_opens_an_etcd_store_without_connecting() -> None:
    with open_datastore("etcd://192.0.2.1:2379?prefix=/p") as store:
        assert isinstance(store, EtcdDatastore)
        assert store.location.prefix == "/p"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("etcd://", "no etcd member"),
        ("etcd://h:2379/sluice", "a path is not allowed.*prefix=/sluice/v1"),
        ("etcd://h:0", "member 'h:0': port must be 1-65535, got '0'"),
        ("etcd://h:x", "member 'h:x': port must be 1-65535"),
        ("etcd://h:2379,,g:2379", "an empty member"),
        ("etcd://fd00::1:2379", "an IPv6 address goes in brackets"),
        ("etcd://[fd00::1:2379", r"expected \[IPv6\]:PORT"),
        ("etcd://user@h:2379", "credentials are not supported"),
        ("etcd://h:2379?prefix=sluice", "prefix must be an absolute key path"),
        ("etcd://h:2379?prefix=/", "prefix must be an absolute key path"),
        ("etcd://h:2379?timeout=0", "timeout must be a positive number"),
        ("etcd://h:2379?timeout=soon", "timeout must be a positive number"),
        ("etcd://h:2379?poll=1", "unknown option 'poll'; etcd:// takes prefix, timeout, netns"),
        ("etcd://h:2379?timeout=1&timeout=2", "option 'timeout' given twice"),
        ("etcd://h:2379#x", "fragment"),
    ],
)
def test_invalid_etcd_urls(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        open_datastore(url)
    assert repr(url) in str(info.value), "the message names the URL"
