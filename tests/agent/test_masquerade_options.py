"""`sluice agent` refuses masquerade options it cannot honour, before it changes anything."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sluice import netlink, netns
from tests.conftest import unique

pytestmark = pytest.mark.root


@pytest.fixture
def node_ns() -> Iterator[str]:
    ns = unique("sl-tmqopt")
    netns.create(ns)
    try:
        yield ns
    finally:
        netns.remove(ns)


def agent(ns: str, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sluice", "agent", "--node", "n1", "--datastore",
         f"file://{tmp_path}", "--netns", ns, "--pin-dir", str(tmp_path / "pins"), *extra],
        capture_output=True, text=True, timeout=60, check=False)


def test_ports_overlapping_the_nodes_ephemeral_range_are_refused(node_ns: str,
                                                                  tmp_path: Path) -> None:
    # The node's own range, not the machine's: this namespace's is changed.
    netlink.set_sysctl(node_ns, "net.ipv4.ip_local_port_range", "50000 63000")
    done = agent(node_ns, tmp_path)
    assert done.returncode == 2, done.stderr
    assert "--masquerade-ports 61000-65535 overlaps the node's ephemeral ports" in done.stderr
    assert "ip_local_port_range 50000-63000" in done.stderr
    assert not (tmp_path / "pins").exists(), "nothing may be made before the refusal"


@pytest.mark.parametrize(("extra", "message"), [
    (("--masquerade-ports", "30000-30100"), "overlaps the NodePort range"),
    (("--masquerade-ports", "5-9"), "1024 <= LO <= HI <= 65535"),
    (("--non-masquerade-cidrs", "10.0.0.0/8,10.1"), "--non-masquerade-cidrs"),
])
def test_bad_masquerade_options_are_named(node_ns: str, tmp_path: Path,
                                          extra: tuple[str, ...], message: str) -> None:
    done = agent(node_ns, tmp_path, *extra)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
