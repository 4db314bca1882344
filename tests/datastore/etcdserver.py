"""A real etcd for tests: its own network namespace (only `lo`), its own data directory.

The namespace keeps the server out of the root namespace and makes its ports private, so
every test can use the standard ones. The process is killed by PID and the namespace
removed afterwards, also when the test fails.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from sluice import netlink, netns
from sluice.datastore.etcdclient import EtcdClient, Json, Member, b64

ETCD = "/usr/bin/etcd"
CLIENT_PORT = 2379
PEER_PORT = 2380
READY_TIMEOUT = 30.0

requires_etcd = pytest.mark.skipif(
    not (os.path.exists(ETCD) and os.geteuid() == 0), reason="needs root and /usr/bin/etcd")


@dataclass
class EtcdServer:
    netns: str
    data_dir: Path
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    client: EtcdClient = field(init=False)

    def __post_init__(self) -> None:
        self.client = EtcdClient([Member("127.0.0.1", CLIENT_PORT)], 5.0, self.netns)

    def url(self, port: int = CLIENT_PORT, **options: str) -> str:
        query = "&".join(f"{name}={value}" for name, value in
                         {"netns": self.netns, **options}.items())
        return f"etcd://127.0.0.1:{port}?{query}"

    def start(self) -> None:
        argv = [
            "nsenter", f"--net={netns.netns_path(self.netns)}", "--", ETCD,
            "--name", "test", "--data-dir", str(self.data_dir),
            "--listen-client-urls", f"http://127.0.0.1:{CLIENT_PORT}",
            "--advertise-client-urls", f"http://127.0.0.1:{CLIENT_PORT}",
            "--listen-peer-urls", f"http://127.0.0.1:{PEER_PORT}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{PEER_PORT}",
            "--initial-cluster", f"test=http://127.0.0.1:{PEER_PORT}",
        ]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                            stderr=subprocess.STDOUT)
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            try:
                self.call("/v3/kv/range", {"key": b64("ready-check")})
                return
            except Exception:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"etcd did not start; see {self.log_path}:\n"
                                       f"{self.log_path.read_text()[-2000:]}") from None
                time.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL the server (by its PID) and reap it."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        self.process = None

    def call(self, path: str, body: Json) -> Json:
        """A raw request to the v3 JSON gateway, as another tool would make it."""
        return self.client.call(path, body)

    def put(self, key: str, value: bytes) -> int:
        answer = self.call("/v3/kv/put", {"key": b64(key), "value": b64(value)})
        return int(answer["header"]["revision"])

    def compact(self, revision: int) -> None:
        self.call("/v3/kv/compaction", {"revision": str(revision), "physical": True})


@contextlib.contextmanager
def running_etcd(tmp_path: Path) -> Iterator[EtcdServer]:
    name = f"sluice-etcdtest-{uuid.uuid4().hex[:8]}"
    netns.create(name)
    try:
        netlink.configure(name, "lo", [])
        server = EtcdServer(name, tmp_path / "etcd-data", tmp_path / "etcd.log")
        try:
            server.start()
            yield server
        finally:
            server.kill()
    finally:
        netns.remove(name)
        shutil.rmtree(tmp_path / "etcd-data", ignore_errors=True)


class DroppingProxy:
    """A TCP proxy inside the server's namespace whose connections can all be cut at once
    (a broken network, as the client sees it)."""

    def __init__(self, server: EtcdServer, port: int) -> None:
        self.port = port
        with netns.entered(server.netns):
            self._listener = socket.create_server(("127.0.0.1", port))
            self._make_upstream = lambda: socket.create_connection(
                ("127.0.0.1", CLIENT_PORT))
        self._netns = server.netns
        self._lock = threading.Lock()
        self._open: list[socket.socket] = []
        self._closed = False
        self.accepted = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with netns.entered(self._netns):
                upstream = self._make_upstream()
            with self._lock:
                self.accepted += 1
                self._open += [client, upstream]
            for source, target in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pump, args=(source, target), daemon=True).start()

    def drop(self) -> None:
        """Cut every connection through the proxy (new ones are still accepted)."""
        with self._lock:
            connections, self._open = self._open, []
        for sock in connections:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        self._listener.close()
        self.drop()


def _pump(source: socket.socket, target: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            target.sendall(data)
    with contextlib.suppress(OSError):
        target.shutdown(socket.SHUT_WR)
