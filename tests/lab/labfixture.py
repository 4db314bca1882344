"""Labs for tests: the `sluice lab` CLI run as a user runs it, with unique names and a
`down` that always runs, also when the test fails.

`Lab` wraps the CLI (subprocesses of the venv's `sluice`); `probe_fast` and `probe_many`
call the same probe code from this process, for tests that probe dozens of pairs.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sluice.lab import cleanup, names, procs
from sluice.lab.probe import Outcome, Probe
from sluice.lab.state import LabState, load
from sluice.lab.targets import resolve_destination, resolve_place

SLUICE = Path(sys.executable).with_name("sluice")
CLI_TIMEOUT = 120


def unique_lab(tag: str) -> str:
    """A lab name no other test run uses: `<tag>-<pid><random>`, at most 16 characters."""
    return f"{tag[:5]}-{os.getpid() % 1000}{secrets.token_hex(2)}"


def sluice(*args: str, timeout: float = CLI_TIMEOUT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SLUICE), *args], capture_output=True, text=True,
                          timeout=timeout, check=False)


def ok(proc: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert proc.returncode == 0, (
        f"{' '.join(map(str, proc.args))} exited {proc.returncode}\n"
        f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


def pod(name: str, *, namespace: str = "default", node: str | None = None,
        ports: Sequence[tuple[int, str]] = ((8080, "TCP"), (8080, "UDP")),
        labels: dict[str, str] | None = None, host_network: bool = False) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [{
        "name": "main",
        "ports": [{"containerPort": port, "protocol": protocol} for port, protocol in ports],
    }]}
    if node is not None:
        spec["nodeName"] = node
    if host_network:
        spec["hostNetwork"] = True
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": labels or {"app": name}},
            "spec": spec}


def write_manifest(path: Path, objects: Sequence[dict[str, Any]]) -> Path:
    path.write_text(yaml.safe_dump_all(list(objects), sort_keys=False), encoding="utf-8")
    return path


@dataclass
class Lab:
    name: str
    made: list[str] = field(default_factory=list)
    up_options: tuple[str, ...] = ()
    """Given to every `up` (e.g. --datastore etcd)."""

    def run(self, command: str, *args: str, timeout: float = CLI_TIMEOUT
            ) -> subprocess.CompletedProcess[str]:
        return sluice("lab", command, "--name", self.name, *args, timeout=timeout)

    def up(self, *args: str, files: Sequence[Path] = ()) -> subprocess.CompletedProcess[str]:
        self.made.append("up")
        return ok(self.run("up", *self.up_options, *args,
                           *(arg for f in files for arg in ("-f", str(f)))))

    def apply(self, *files: Path) -> subprocess.CompletedProcess[str]:
        return self.run("apply", *(arg for f in files for arg in ("-f", str(f))))

    def delete(self, *files: Path) -> subprocess.CompletedProcess[str]:
        return self.run("delete", *(arg for f in files for arg in ("-f", str(f))))

    def get(self, kind: str) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = json.loads(ok(self.run("get", kind, "-o", "json")).stdout)
        return rows

    def probe(self, source: str, destination: str, port: int, *extra: str) -> dict[str, Any]:
        proc = self.run("probe", source, destination, str(port), "-o", "json", *extra)
        assert proc.returncode in (0, 1), proc.stderr
        doc: dict[str, Any] = json.loads(proc.stdout)
        assert (proc.returncode == 0) == (doc["result"] == "connected"), doc
        return doc

    def state(self) -> LabState:
        return load(self.name)

    def probe_fast(self, source: str, destination: str, port: int, *, protocol: str = "TCP",
                   family: int | None = None, timeout: float = 1.0,
                   state: LabState | None = None) -> tuple[str, Outcome]:
        """(address probed, outcome), probed from this process like `lab probe` does (a
        forked child in the source's cgroup and namespace)."""
        address, outcomes = self.probe_many(source, destination, port, 1, protocol=protocol,
                                            family=family, timeout=timeout, state=state)
        return address, outcomes[0]

    def probe_many(self, source: str, destination: str, port: int, count: int, *,
                   protocol: str = "TCP", family: int | None = None, timeout: float = 1.0,
                   source_port: int | None = None, state: LabState | None = None
                   ) -> tuple[str, list[Outcome]]:
        """(address probed, COUNT outcomes), like `lab probe --count COUNT`."""
        state = state or self.state()
        place = resolve_place(state, source)
        target = resolve_destination(state, destination, family, port, protocol)
        probe = Probe(place.netns, target.address, target.port, protocol, timeout,
                      cgroup=place.cgroup, source_port=source_port)
        return target.address, probe.repeat(count)

    def nsexec(self, netns_name: str, *argv: str) -> subprocess.CompletedProcess[str]:
        return ok(subprocess.run(["nsenter", f"--net=/run/netns/{netns_name}", "--", *argv],
                                 capture_output=True, text=True, timeout=30, check=False))

    def processes(self) -> list[procs.ProcessRecord]:
        return self.state().processes()

    def down(self) -> subprocess.CompletedProcess[str]:
        return self.run("down")


def leftovers(lab: str, processes: Sequence[procs.ProcessRecord] = ()) -> list[str]:
    """What of LAB still exists: namespaces, directories, cgroup, and live PROCESSES."""
    found = cleanup.leftovers(lab)
    found += [f"process {p.role} pid {p.pid}" for p in processes if procs.is_running(p)]
    return found


def assert_gone(lab: str, processes: Sequence[procs.ProcessRecord] = ()) -> None:
    remaining = leftovers(lab, processes)
    assert not remaining, f"lab {lab} left behind: {remaining}"
    assert not Path(names.pin_root(lab)).exists()


@contextlib.contextmanager
def running_lab(tag: str, *, datastore: str | None = None) -> Iterator[Lab]:
    """A Lab with a fresh name; `lab down` runs afterwards whatever happened, and must
    leave nothing of it behind (namespaces, pins, cgroups, state, processes). DATASTORE
    (file or etcd) is given to `up`."""
    lab = Lab(unique_lab(tag),
              up_options=("--datastore", datastore) if datastore is not None else ())
    try:
        yield lab
    finally:
        started: list[procs.ProcessRecord] = []
        with contextlib.suppress(Exception):
            started = lab.processes()
        down = lab.down()
        assert down.returncode == 0, down.stderr
        assert_gone(lab.name, started)
