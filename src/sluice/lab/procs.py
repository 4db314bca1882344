"""Processes the lab starts (agents, pod servers) and how they are stopped.

A process is started detached (own session, stdio to its log file) and placed in its
cgroup before it runs any of its own code. It is remembered as (PID, start time): the
start time from /proc/<pid>/stat must still match before the lab signals a PID, so a
PID the kernel has reused for someone else's process is never touched.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from sluice.lab.state import ProcessRecord

TERM_TIMEOUT = 5.0
KILL_TIMEOUT = 3.0
POLL = 0.02
LOG_TAIL_LINES = 20


def start_time(pid: int) -> int | None:
    """Field 22 of /proc/<pid>/stat (start time in clock ticks), None if PID is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            text = stat.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) may hold spaces and ')': split after its last ')'.
    fields = text[text.rindex(")") + 2:].split()
    if fields[0] == "Z":
        return None
    return int(fields[19])


def is_running(record: ProcessRecord) -> bool:
    started = start_time(record.pid)
    return started is not None and started == record.start_time


JOIN_CGROUP = 'echo 0 > "$1/cgroup.procs" && shift && exec "$@"'


def in_cgroup(cgroup_path: str | None, argv: Sequence[str]) -> list[str]:
    """ARGV run so that it is in CGROUP_PATH before it starts: a shell moves itself there
    (writing 0 to cgroup.procs) and then execs ARGV, which keeps its PID and cgroup. No
    preexec_fn, so this is safe in a threaded process."""
    if cgroup_path is None:
        return list(argv)
    return ["/bin/sh", "-c", JOIN_CGROUP, "sh", cgroup_path, *argv]


def spawn(argv: Sequence[str], *, role: str, log: Path, cgroup_path: str | None,
          pass_fds: Sequence[int] = (), env: dict[str, str] | None = None) -> ProcessRecord:
    """Start ARGV detached from this process, in CGROUP_PATH, output appended to LOG."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            in_cgroup(cgroup_path, argv), stdin=subprocess.DEVNULL, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True, pass_fds=tuple(pass_fds),
            env=env, close_fds=True,
        )
    started = start_time(proc.pid)
    if started is None:
        proc.wait(timeout=TERM_TIMEOUT)
        raise OSError(f"{role} exited at once (status {proc.returncode}); see {log}")
    _children[proc.pid] = proc
    return ProcessRecord(pid=proc.pid, start_time=started, role=role, log=str(log))


_children: dict[int, subprocess.Popen[bytes]] = {}
"""Processes this command started; they outlive it, but while it runs it reaps them."""


def reap(pid: int) -> None:
    """Collect PID's exit status if it is a child of this process (no zombie remains)."""
    child = _children.get(pid)
    if child is not None and child.poll() is not None:
        del _children[pid]


def exited(record: ProcessRecord) -> bool:
    reap(record.pid)
    return not is_running(record)


def signal_process(record: ProcessRecord, signum: int) -> bool:
    """Send SIGNUM to the recorded process if it is still that process; True if sent."""
    if not is_running(record):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(record.pid, signum)
        return True
    return False


def stop(records: Iterable[ProcessRecord], timeout: float = TERM_TIMEOUT) -> list[ProcessRecord]:
    """SIGTERM every recorded process, SIGKILL those still there after TIMEOUT.

    Returns the processes that would not die (none, normally).
    """
    pending = [r for r in records if signal_process(r, signal.SIGTERM)]
    pending = _wait_for_exit(pending, timeout)
    for record in pending:
        signal_process(record, signal.SIGKILL)
    return _wait_for_exit(pending, KILL_TIMEOUT)


def _wait_for_exit(records: list[ProcessRecord], timeout: float) -> list[ProcessRecord]:
    deadline = time.monotonic() + timeout
    while records and time.monotonic() < deadline:
        records = [r for r in records if not exited(r)]
        if records:
            time.sleep(POLL)
    return [r for r in records if not exited(r)]


def log_tail(path: str | Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last LINES lines of a log file, indented for an error message."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError as err:
        return f"    (cannot read {path}: {err.strerror})"
    tail = text.rstrip("\n").splitlines()[-lines:]
    if not tail:
        return f"    ({path} is empty)"
    return "\n".join(f"    {line}" for line in tail)
