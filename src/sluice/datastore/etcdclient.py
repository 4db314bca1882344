"""A small client for etcd's v3 JSON gateway: HTTP/1.1 over plain sockets, standard library
only.

Every request opens its own connection (`Connection: close`), so the client is safe to
use from any thread. Members are tried in order, starting with the one that answered
last; a member that refuses or does not accept the connection is skipped. A request that
only reads is also retried on the next member when the connection breaks mid-way; one
that writes is not (it may have been applied), and the error says so.

Sockets can be made inside another network namespace (`netns`): a socket stays in the
namespace it was created in, whichever thread uses it later.
"""

from __future__ import annotations

import base64
import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from sluice import netns as netns_util
from sluice.datastore.errors import DatastoreError

MAX_RESPONSE = 256 << 20
RECEIVE_SIZE = 1 << 16

Json = dict[str, Any]


class EtcdUnavailableError(DatastoreError):
    """No etcd member could be reached, or the one reached stopped answering."""


class EtcdRequestError(DatastoreError):
    """etcd answered a request with an error."""


def b64(data: str | bytes) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.b64encode(raw).decode("ascii")


def unb64(text: str) -> bytes:
    return base64.b64decode(text)


def prefix_end(prefix: bytes) -> bytes:
    """The range end that selects every key starting with `prefix`."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"


@dataclass(frozen=True)
class Member:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass
class ResponseReader:
    """An HTTP/1.1 response read incrementally from a socket: the state lives in buffers,
    so a receive that times out loses nothing and reading can go on later."""

    sock: socket.socket
    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    payload: bytearray = field(default_factory=bytearray)
    done: bool = False
    _raw: bytearray = field(default_factory=bytearray)
    _remaining: int | None = None
    _eof: bool = False

    def receive(self, timeout: float) -> bool:
        """Read what arrives within `timeout` seconds; False if nothing did. Raises
        ConnectionError when the peer closed the connection before the response ended."""
        self.sock.settimeout(max(timeout, 0.001))
        try:
            data = self.sock.recv(RECEIVE_SIZE)
        except TimeoutError:
            return False
        if not data:
            self._eof = True
            self._advance()
            if not self.done:
                raise ConnectionError("the connection closed in the middle of a response")
            return True
        self._raw += data
        if len(self._raw) + len(self.payload) > MAX_RESPONSE:
            raise ConnectionError(f"response larger than {MAX_RESPONSE} bytes")
        self._advance()
        return True

    def _advance(self) -> None:
        if self.status is None and not self._parse_head():
            return
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            self._dechunk()
        elif self._remaining is not None:
            take = bytes(self._raw[: self._remaining])
            del self._raw[: len(take)]
            self.payload += take
            self._remaining -= len(take)
            self.done = self._remaining == 0
        else:
            self.payload += self._raw
            self._raw.clear()
            self.done = self._eof

    def _parse_head(self) -> bool:
        end = self._raw.find(b"\r\n\r\n")
        if end < 0:
            if self._eof:
                raise ConnectionError("the connection closed before a response")
            return False
        lines = bytes(self._raw[:end]).decode("latin-1").split("\r\n")
        del self._raw[: end + 4]
        words = lines[0].split()
        if len(words) < 2 or not words[0].startswith("HTTP/") or not words[1].isdigit():
            raise ConnectionError(f"not an HTTP response: {lines[0][:80]!r}")
        for line in lines[1:]:
            name, _, value = line.partition(":")
            self.headers[name.strip().lower()] = value.strip()
        if "content-length" in self.headers:
            self._remaining = int(self.headers["content-length"])
        self.status = int(words[1])
        return True

    def _dechunk(self) -> None:
        while not self.done:
            line_end = self._raw.find(b"\r\n")
            if line_end < 0:
                return
            size = int(bytes(self._raw[:line_end]).split(b";")[0], 16)
            if len(self._raw) < line_end + 2 + size + 2:
                return
            start = line_end + 2
            self.payload += self._raw[start : start + size]
            del self._raw[: start + size + 2]
            self.done = size == 0

    def next_message(self) -> Json | None:
        """The next whole JSON message of a streamed payload, if one has arrived (the
        gateway ends each with a newline)."""
        while True:
            end = self.payload.find(b"\n")
            if end < 0:
                return None
            line = bytes(self.payload[:end]).strip()
            del self.payload[: end + 1]
            if not line:
                continue
            try:
                message = json.loads(line)
            except ValueError as err:
                raise ConnectionError(f"unreadable message from etcd: {err}") from None
            if not isinstance(message, dict):
                raise ConnectionError(f"unexpected message from etcd: {message!r:.80}")
            return message


class EtcdClient:
    """Requests to the members of one etcd cluster, with failover between them."""

    def __init__(self, members: list[Member], timeout: float, netns: str | None = None) -> None:
        if not members:
            raise ValueError("an etcd client needs at least one member")
        self.members = members
        self.timeout = timeout
        self.netns = netns
        self._preferred = 0
        self._lock = threading.Lock()

    def __str__(self) -> str:
        return ",".join(str(member) for member in self.members)

    def connect(self) -> tuple[socket.socket, Member]:
        """A connection to the first member that accepts one; EtcdUnavailableError if none."""
        with self._lock:
            start = self._preferred
        failures: list[str] = []
        for step in range(len(self.members)):
            index = (start + step) % len(self.members)
            member = self.members[index]
            try:
                sock = self._open(member)
            except OSError as err:
                failures.append(f"{member}: {err.strerror or err}")
                continue
            with self._lock:
                self._preferred = index
            return sock, member
        raise EtcdUnavailableError(f"no etcd member reachable ({'; '.join(failures)})")

    def skip(self, member: Member) -> None:
        """Prefer the member after `member` next time (it failed mid-request)."""
        with self._lock:
            if self.members[self._preferred] == member:
                self._preferred = (self._preferred + 1) % len(self.members)

    def _open(self, member: Member) -> socket.socket:
        address = (member.host, member.port)
        if self.netns is None:
            return socket.create_connection(address, timeout=self.timeout)
        with netns_util.entered(self.netns):
            return socket.create_connection(address, timeout=self.timeout)

    def call(self, path: str, body: Json, *, read_only: bool = False) -> Json:
        """POST `body` to the gateway's `path` (e.g. /v3/kv/range); the decoded answer.

        Raises EtcdRequestError when etcd answers with an error, EtcdUnavailableError
        when no member answers.
        """
        attempts = len(self.members) if read_only else 1
        for attempt in range(attempts):
            sock, member = self.connect()
            try:
                with sock:
                    reader = self._send(sock, member, path, body)
                    deadline = time.monotonic() + self.timeout
                    while not reader.done:
                        remaining = deadline - time.monotonic()
                        if remaining <= 0 or not reader.receive(remaining):
                            raise TimeoutError(f"no answer within {self.timeout:g}s")
            except OSError as err:
                self.skip(member)
                if attempt + 1 < attempts:
                    continue
                maybe = "" if read_only else "; the request may or may not have been applied"
                raise EtcdUnavailableError(f"etcd at {member} stopped answering {path}: "
                                           f"{err}{maybe}") from err
            return _decode(member, path, reader)
        raise AssertionError("unreachable")

    def _send(self, sock: socket.socket, member: Member, path: str, body: Json
              ) -> ResponseReader:
        data = json.dumps(body, separators=(",", ":")).encode()
        head = (f"POST {path} HTTP/1.1\r\nHost: {member}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n")
        sock.settimeout(self.timeout)
        sock.sendall(head.encode("ascii") + data)
        return ResponseReader(sock)

    @contextlib.contextmanager
    def stream(self, path: str, body: Json) -> Iterator[ResponseReader]:
        """A streaming request (the watch): the reader, whose `next_message` gives each
        JSON message as it arrives. OSError (ConnectionError, TimeoutError) when the
        connection fails; the member is then skipped next time."""
        sock, member = self.connect()
        with sock:
            try:
                reader = self._send(sock, member, path, body)
                deadline = time.monotonic() + self.timeout
                while reader.status is None:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or not reader.receive(remaining):
                        raise TimeoutError(f"no answer within {self.timeout:g}s")
                if reader.status != 200:
                    while not reader.done and reader.receive(self.timeout):
                        pass
                    _decode(member, path, reader)
                yield reader
            except OSError:
                self.skip(member)
                raise


def _decode(member: Member, path: str, reader: ResponseReader) -> Json:
    try:
        answer = json.loads(bytes(reader.payload))
    except ValueError:
        answer = None
    if reader.status != 200 or not isinstance(answer, dict) or "error" in answer:
        detail = answer.get("message") or answer.get("error") if isinstance(answer, dict) else (
            bytes(reader.payload[:200]).decode("utf-8", "replace"))
        raise EtcdRequestError(f"etcd at {member} refused {path} (HTTP {reader.status}): "
                               f"{detail}")
    return answer
