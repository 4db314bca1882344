"""What wakes the reconcile loop: datastore changes, CNI notifications, a stop request."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import stat
import threading
import time

from sluice.cni.registry import AGENT_SOCKET
from sluice.datastore import Datastore, ResyncRequired

log = logging.getLogger("sluice.agent")

SUN_PATH_MAX = 107
NOTIFICATION = "endpoint-changed"


class Trigger:
    """Collects reasons to reconcile; the loop waits for them, then drains a burst."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._reasons: set[str] = set()

    def fire(self, reason: str) -> None:
        with self._cond:
            self._reasons.add(reason)
            self._cond.notify_all()

    def wait(self, timeout: float) -> set[str]:
        """The reasons fired since the last call; empty when TIMEOUT passed without one."""
        with self._cond:
            if not self._reasons:
                self._cond.wait(timeout=max(timeout, 0.0))
            reasons, self._reasons = self._reasons, set()
            return reasons

    def settle(self, first: set[str], quiet: float, longest: float) -> set[str]:
        """Debounce: keep collecting until QUIET seconds pass without a new reason, or
        LONGEST seconds since the burst began."""
        reasons = set(first)
        deadline = time.monotonic() + longest
        while (remaining := deadline - time.monotonic()) > 0:
            more = self.wait(min(quiet, remaining))
            if not more:
                break
            reasons |= more
        return reasons


class DatastoreWatcher:
    """Fires the trigger on every batch of datastore changes; resubscribes as needed."""

    def __init__(self, datastore: Datastore, trigger: Trigger, stop: threading.Event) -> None:
        self._datastore = datastore
        self._trigger = trigger
        self._stop = stop
        self._thread = threading.Thread(target=self._run, name="datastore-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def _run(self) -> None:
        revision: int | None = None
        while not self._stop.is_set():
            try:
                if revision is None:
                    revision = self._datastore.snapshot().revision
                for batch in self._datastore.watch(revision, stop=self._stop, timeout=60):
                    revision = batch[-1].revision
                    self._trigger.fire("datastore")
            except ResyncRequired as err:
                log.info("datastore watch: %s", err)
                revision = None
                self._trigger.fire("datastore-resync")
            except Exception as err:
                log.warning("datastore watch failed: %s; retrying", err)
                revision = None
                self._stop.wait(1.0)


class EndpointSocket:
    """The Unix socket `sluice-cni` notifies after ADD and DEL: `endpoint-changed <key>`."""

    def __init__(self, state_dir: str, trigger: Trigger, stop: threading.Event) -> None:
        self.path = os.path.join(state_dir, AGENT_SOCKET)
        self._trigger = trigger
        self._stop = stop
        self._sock: socket.socket | None = None
        self._identity: tuple[int, int] | None = None
        self._thread = threading.Thread(target=self._run, name="cni-socket", daemon=True)

    def open(self) -> bool:
        """Bind the socket; False (and a warning) when its path cannot hold a socket.

        Raises RuntimeError when another agent already listens there.
        """
        if len(self.path.encode()) > SUN_PATH_MAX:
            log.warning("%s is too long for a Unix socket: CNI notifications are not heard; "
                        "endpoints are picked up by the periodic resync", self.path)
            return False
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        self._remove_stale()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(self.path)
        sock.listen(64)
        sock.settimeout(0.5)
        info = os.stat(self.path)
        self._identity = (info.st_dev, info.st_ino)
        self._sock = sock
        return True

    def _remove_stale(self) -> None:
        try:
            mode = os.stat(self.path).st_mode
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(mode):
            raise RuntimeError(f"{self.path} exists and is not a socket")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(0.5)
            try:
                probe.connect(self.path)
            except OSError as err:
                if err.errno not in (errno.ECONNREFUSED, errno.ENOENT):
                    raise
            else:
                raise RuntimeError(f"another agent listens on {self.path}")
        os.unlink(self.path)

    def start(self) -> None:
        if self._sock is not None:
            self._thread.start()

    def close(self) -> None:
        if self._sock is None:
            return
        self._thread.join(timeout=2)
        self._sock.close()
        self._sock = None
        with contextlib.suppress(FileNotFoundError):
            info = os.stat(self.path)
            if (info.st_dev, info.st_ino) == self._identity:
                os.unlink(self.path)

    def _run(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError as err:
                if self._stop.is_set():
                    return
                log.warning("CNI socket: %s", err)
                self._stop.wait(0.5)
                continue
            with conn:
                self._read(conn)

    def _read(self, conn: socket.socket) -> None:
        conn.settimeout(1.0)
        data = b""
        try:
            while len(data) < 65536:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                data += chunk
        except OSError:
            pass
        for line in data.decode(errors="replace").splitlines():
            word, _, key = line.strip().partition(" ")
            if word == NOTIFICATION:
                log.debug("CNI: endpoint %s changed", key)
                self._trigger.fire(f"cni:{key}")
            elif line.strip():
                log.warning("CNI socket: ignoring %r", line[:200])
