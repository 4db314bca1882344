"""A "node" network namespace that runs `sluice-cni` exactly as a container runtime would.

The plugin is a subprocess started with `nsenter --net=<node ns>` (which, unlike
`ip netns exec`, leaves /sys alone), with CNI_* variables and the config on stdin. Pod
namespaces are created per test. Every namespace is removed in teardown, also on failure.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pyroute2 import IPRoute

from sluice import netns
from tests.conftest import unique

PLUGIN = Path(sys.executable).with_name("sluice-cni")
V4_RANGE = "198.18.16.0/24"
V6_RANGE = "fd00:10:1::/64"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass
class Outcome:
    rc: int
    stdout: str
    stderr: str

    @property
    def doc(self) -> Any:
        return json.loads(self.stdout) if self.stdout.strip() else None

    def ok(self) -> Any:
        assert self.rc == 0, f"plugin failed ({self.rc}): {self.stdout} {self.stderr}"
        return self.doc

    def error(self, code: int) -> dict[str, Any]:
        assert self.rc != 0, f"plugin succeeded: {self.stdout}"
        doc = self.doc
        assert isinstance(doc, dict), self.stdout
        assert set(doc) <= {"cniVersion", "code", "msg", "details"}, doc
        assert doc["code"] == code, doc
        assert doc["msg"], doc
        return doc


def links_in(ns: str) -> dict[str, Any]:
    with netns.entered(ns), IPRoute() as ipr:
        return {link.get_attr("IFLA_IFNAME"): link for link in ipr.get_links()}


def root_link_names() -> set[str]:
    """Read-only look at the root namespace: the test process itself runs there."""
    with IPRoute() as ipr:
        return {link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}


@dataclass
class Node:
    ns: str
    state_dir: Path
    pods: list[str] = field(default_factory=list)
    host_ifnames: set[str] = field(default_factory=set)

    @property
    def ns_path(self) -> str:
        return netns.netns_path(self.ns)

    def config(self, **overrides: Any) -> dict[str, Any]:
        conf: dict[str, Any] = {
            "cniVersion": "1.0.0",
            "name": "sluice",
            "type": "sluice-cni",
            "mtu": 1450,
            "stateDir": str(self.state_dir),
            "ipam": {"ranges": [[V4_RANGE], [V6_RANGE]]},
        }
        conf.update(overrides)
        return {k: v for k, v in conf.items() if v is not None}

    def pod(self) -> str:
        name = unique("sl-tcp")
        self.pods.append(name)
        return netns.create(name)

    def invoke(self, command: str, config: dict[str, Any] | bytes | None = None, *,
               container_id: str | None = None, pod: str | None = None,
               ifname: str | None = "eth0", cni_args: str | None = None) -> Outcome:
        env = {"PATH": PATH, "CNI_COMMAND": command, "CNI_PATH": "/opt/cni/bin"}
        optional = {"CNI_CONTAINERID": container_id, "CNI_NETNS": pod, "CNI_IFNAME": ifname,
                    "CNI_ARGS": cni_args}
        env.update({k: v for k, v in optional.items() if v is not None})
        if config is None:
            config = self.config()
        stdin = config if isinstance(config, bytes) else json.dumps(config).encode()
        proc = subprocess.run(["nsenter", f"--net={self.ns_path}", str(PLUGIN)], input=stdin,
                              env=env, capture_output=True, timeout=120, check=False)
        outcome = Outcome(proc.returncode, proc.stdout.decode(), proc.stderr.decode())
        if command == "ADD" and outcome.rc == 0:
            self.host_ifnames.add(outcome.doc["interfaces"][0]["name"])
        return outcome

    def add(self, container_id: str, pod: str, config: dict[str, Any] | bytes | None = None,
            ifname: str = "eth0", cni_args: str | None = None) -> Outcome:
        return self.invoke("ADD", config, container_id=container_id, pod=pod, ifname=ifname,
                           cni_args=cni_args)

    def delete(self, container_id: str, pod: str | None,
               config: dict[str, Any] | None = None, ifname: str = "eth0") -> Outcome:
        return self.invoke("DEL", config, container_id=container_id, pod=pod, ifname=ifname)

    def check(self, container_id: str, pod: str, prev_result: dict[str, Any] | None,
              ifname: str = "eth0") -> Outcome:
        config = self.config(prevResult=prev_result)
        return self.invoke("CHECK", config, container_id=container_id, pod=pod, ifname=ifname)

    def links(self) -> dict[str, Any]:
        return links_in(self.ns)

    def veths(self) -> set[str]:
        return {name for name, link in self.links().items()
                if link.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND") == "veth"}

    def allocation_files(self) -> list[Path]:
        ipam = self.state_dir / "ipam"
        return sorted(p for p in ipam.glob("*/*") if p.is_file()) if ipam.exists() else []

    def allocated(self) -> dict[str, str]:
        return {p.name: p.read_text().strip() for p in self.allocation_files()}

    def record_files(self) -> list[Path]:
        return sorted((self.state_dir / "endpoints").glob("*")) \
            if (self.state_dir / "endpoints").exists() else []

    def assert_empty(self) -> None:
        assert self.veths() == set()
        assert self.allocation_files() == []
        assert self.record_files() == []


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    assert PLUGIN.exists(), f"{PLUGIN} is missing: run .venv/bin/pip install -e '.[dev]'"
    created = Node(unique("sl-tcn"), tmp_path / "state")
    try:
        netns.create(created.ns)
        yield created
    finally:
        for pod in created.pods:
            netns.remove(pod)
        netns.remove(created.ns)
        leaked = created.host_ifnames & root_link_names()
        assert not leaked, f"host veths leaked into the root namespace: {leaked}"
