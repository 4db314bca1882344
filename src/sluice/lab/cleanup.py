"""Removing a lab: everything it made, found from its state and by its names.

Works from any partial state (an interrupted `up`, a missing or unreadable state.json):
processes come from the state (signalled only while their start time still matches),
then anything else left in the lab's own cgroup is killed (only processes the lab or
`lab exec` placed there); namespaces are found by the lab's name patterns; the pin
directory, cgroups and state directory by their fixed names.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sluice import cgroups, netns
from sluice.lab import names, procs
from sluice.lab.state import LabState, load, locked

CGROUP_KILL_TIMEOUT = 5.0
CGROUP_BUSY_WAIT = 0.2  # seconds, times the attempt number
CGROUP_ATTEMPTS = 5


@dataclass
class Removed:
    processes: int = 0
    namespaces: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def anything(self) -> bool:
        return bool(self.processes or self.namespaces or self.paths)


def lab_namespaces(lab: str) -> list[str]:
    """The lab's namespaces that exist: pods first, then nodes, external, underlay."""
    try:
        existing = os.listdir(netns.NETNS_RUN_DIR)
    except FileNotFoundError:
        return []
    ours = [name for name in existing if names.is_lab_netns(lab, name)]
    order = {"p": 0, "n": 1, "e": 2, "u": 3}
    return sorted(ours, key=lambda n: (order[n[len(names.netns_prefix(lab))]], n))


def cgroup_path(lab: str) -> str | None:
    root = cgroups.find_cgroup2_mount()
    return None if root is None else os.path.join(root, names.cgroup_root(lab))


def leftovers(lab: str) -> list[str]:
    """What of lab LAB exists on this host, one description each."""
    found = [f"namespace {ns}" for ns in lab_namespaces(lab)]
    state_dir = names.state_dir(lab)
    pins = names.pin_root(lab)
    cgroup = cgroup_path(lab)
    found += [f"directory {path}" for path in (state_dir, pins) if path.exists()]
    if cgroup is not None and os.path.isdir(cgroup):
        found.append(f"cgroup {cgroup}")
    return found


def _cgroup_pids(path: str) -> list[int]:
    pids: list[int] = []
    for directory, _, _ in os.walk(path):
        with contextlib.suppress(OSError):
            text = Path(directory, "cgroup.procs").read_text(encoding="ascii")
            pids += [int(pid) for pid in text.split()]
    return pids


def kill_cgroup(path: str, timeout: float = CGROUP_KILL_TIMEOUT) -> int:
    """SIGKILL every process in the cgroup tree PATH; returns how many there were."""
    pids = _cgroup_pids(path)
    if not pids:
        return 0
    kill_file = Path(path, "cgroup.kill")
    if kill_file.exists():
        kill_file.write_text("1", encoding="ascii")
    else:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid in pids:
            procs.reap(pid)
        if not _cgroup_pids(path):
            break
        time.sleep(procs.POLL)
    return len(pids)


def _remove_cgroup_tree(path: str, problems: list[str]) -> int:
    """Kill what is in cgroup tree PATH and remove it, deepest first; returns how many
    processes were killed. Processes are never moved out (to a parent or the root): a
    process that joins meanwhile is killed on the next attempt."""
    killed = 0
    for attempt in range(CGROUP_ATTEMPTS):
        killed += kill_cgroup(path)
        try:
            for directory, _subdirs, _files in os.walk(path, topdown=False):
                os.rmdir(directory)
            return killed
        except FileNotFoundError:
            continue
        except OSError as err:
            if err.errno != errno.EBUSY:
                problems.append(f"cgroup {path}: {err}")
                return killed
            # Busy with no process listed: tasks still exiting (a killed process leaves
            # its cgroup only once it is gone). Give them time before the next attempt.
            time.sleep(CGROUP_BUSY_WAIT * (attempt + 1))
    problems.append(f"cgroup {path}: still busy after {CGROUP_ATTEMPTS} attempts")
    return killed


def remove_lab(lab: str, say: Callable[[str], None] = lambda _: None) -> Removed:
    """Remove everything lab LAB made. Idempotent: a second call finds nothing."""
    names.check_lab_name(lab)
    removed = Removed()
    with locked(lab):
        state = _state_if_readable(lab)
        if state is not None:
            records = state.processes()
            alive = [r for r in records if procs.is_running(r)]
            removed.problems += [f"{r.role} (pid {r.pid}) would not exit"
                                 for r in procs.stop(alive)]
            removed.processes += len(alive)
        cgroup = cgroup_path(lab)
        if cgroup is not None and os.path.isdir(cgroup):
            removed.processes += _remove_cgroup_tree(cgroup, removed.problems)
            removed.paths.append(cgroup)
        for ns in lab_namespaces(lab):
            try:
                netns.remove(ns)
                removed.namespaces.append(ns)
            except OSError as err:
                removed.problems.append(f"namespace {ns}: {err}")
        for path in (names.pin_root(lab), names.state_dir(lab)):
            if path.exists():
                _remove_directory(path, removed.problems)
                removed.paths.append(str(path))
    say(_summary(lab, removed))
    return removed


def _remove_directory(path: Path, problems: list[str]) -> None:
    def failed(_function: object, where: str, info: tuple[object, BaseException, object]
               ) -> None:
        problems.append(f"{where}: {info[1]}")

    shutil.rmtree(path, onerror=failed)


def _state_if_readable(lab: str) -> LabState | None:
    try:
        return load(lab)
    except Exception:
        return None


def _summary(lab: str, removed: Removed) -> str:
    if not removed.anything:
        return f"lab {lab}: nothing to remove"
    parts = [f"{removed.processes} process{'es' if removed.processes != 1 else ''}",
             f"{len(removed.namespaces)} namespace{'s' if len(removed.namespaces) != 1 else ''}"]
    parts += removed.paths
    return f"lab {lab}: removed " + ", ".join(parts)
