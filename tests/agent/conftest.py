"""Fixtures of the agent tests: mini clusters, removed after every test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.agent.harness import MiniCluster
from tests.cni.conftest import PLUGIN, root_link_names

OWNED = {"sl-host", "sl-vxlan"}


def _check_root_untouched() -> None:
    assert not OWNED & root_link_names(), "an agent created devices in the root namespace"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[MiniCluster]:
    """Two node namespaces joined by a veth underlay; no Node objects and no agents yet."""
    assert PLUGIN.exists(), f"{PLUGIN} is missing: run ./setup.sh"
    created = MiniCluster.create(tmp_path)
    try:
        yield created
    finally:
        created.close()
        _check_root_untouched()


@pytest.fixture
def single(tmp_path: Path) -> Iterator[MiniCluster]:
    """One node namespace with an uplink; no Node object and no agent yet."""
    created = MiniCluster.create(tmp_path, node_count=1)
    try:
        yield created
    finally:
        created.close()
        _check_root_untouched()
