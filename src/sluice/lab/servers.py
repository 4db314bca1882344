"""Starting a pod's server process and waiting until every one of its ports is bound."""

from __future__ import annotations

import os
import select
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from sluice import cgroups, netns
from sluice.lab import procs
from sluice.lab.errors import LabError
from sluice.lab.state import PodRecord, ProcessRecord

READY_TIMEOUT = 10.0


def server_argv(pod: PodRecord, ready_fd: int) -> list[str]:
    argv = [sys.executable, "-m", "sluice.lab.podserver", "--pod", pod.name,
            "--netns", netns.netns_path(pod.netns), "--ready-fd", str(ready_fd)]
    for port in pod.ports:
        argv += ["--port", str(port)]
    return argv


@dataclass
class StartingServer:
    """A server process that was spawned and is binding its ports."""

    record: ProcessRecord
    ready_fd: int

    def wait(self, pod: PodRecord, timeout: float = READY_TIMEOUT) -> None:
        """Return once every port is bound; LabError (server stopped) otherwise."""
        try:
            if not _wait_ready(self.ready_fd, timeout):
                procs.stop([self.record])
                raise LabError(
                    f"the server of pod {pod.key} did not bind {_ports(pod)} within "
                    f"{timeout:.0f}s; the end of {pod.log}:\n{procs.log_tail(pod.log)}")
        finally:
            os.close(self.ready_fd)


def spawn_server(pod: PodRecord) -> StartingServer:
    """Start POD's server in its cgroup; `wait` on the result for its ports."""
    cgroup_path = cgroups.create(pod.cgroup)
    read_end, write_end = os.pipe()
    try:
        record = procs.spawn(server_argv(pod, write_end), role=f"server {pod.key}",
                             log=Path(pod.log), cgroup_path=cgroup_path, pass_fds=(write_end,))
    except BaseException:
        os.close(read_end)
        raise
    finally:
        os.close(write_end)
    return StartingServer(record, read_end)


def _wait_ready(fd: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    received = b""
    while (remaining := deadline - time.monotonic()) > 0:
        readable, _, _ = select.select([fd], [], [], remaining)
        if not readable:
            return False
        chunk = os.read(fd, 64)
        if not chunk:
            return False
        received += chunk
        if b"ready" in received:
            return True
    return False


def _ports(pod: PodRecord) -> str:
    return " ".join(str(port) for port in pod.ports) or "(no ports)"
