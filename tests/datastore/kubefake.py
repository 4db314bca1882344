"""A small apiserver speaking the Kubernetes list/watch protocol, for datastore tests.

It serves every model kind at its real path: paged lists (`limit`, `continue`, list
`metadata.resourceVersion`, items without apiVersion/kind for built-in kinds), watches as
a chunked stream of JSON events from a resourceVersion (BOOKMARKs on request, an ERROR
event with code 410 for a version older than the kept history), and create, replace and
delete (with `dryRun=All`) answering Kubernetes Status objects on failure. Tests break
watches (`cut_watches`: the connection is closed mid-stream, without the final chunk),
expire them (`expire_watches`: ERROR 410), and forget history (`compact`).
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from sluice.datastore.kubeapi import ApiKind
from sluice.model import RESOURCE_CLASSES, Resource

JSON = dict[str, Any]
REFUSED_NAME = "refused-by-admission"
"""Objects of this name are refused (422), dry run or not, like a validating webhook would."""


@dataclass
class Route:
    kind: ApiKind
    namespace: str | None
    name: str | None


@dataclass
class Event:
    version: int
    list_path: str
    type: str
    obj: JSON


@dataclass
class FakeApiServer:
    kinds: dict[str, ApiKind] = field(
        default_factory=lambda: {ApiKind(cls).list_path: ApiKind(cls) for cls in RESOURCE_CLASSES})
    version: int = 1000
    oldest: int = 0
    objects: dict[tuple[str, str, str], JSON] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    list_requests: list[str] = field(default_factory=list)
    watch_requests: list[tuple[str, str]] = field(default_factory=list)
    cuts: int = 0
    expiries: int = 0
    bookmarks: int = 0
    held: bool = False
    watching: int = 0
    cond: threading.Condition = field(default_factory=threading.Condition)

    # Test controls.

    def put(self, cls: type[Resource], obj: JSON) -> JSON:
        """Create or modify an object as another client would; the stored object."""
        kind = ApiKind(cls)
        metadata = obj["metadata"]
        with self.cond:
            return self._store(kind, metadata.get("namespace", ""), obj)

    def remove(self, cls: type[Resource], namespace: str, name: str) -> None:
        kind = ApiKind(cls)
        with self.cond:
            self._remove(kind, namespace, name)

    def compact(self) -> None:
        """Forget every event so far: a watch from any older version gets 410 Gone."""
        with self.cond:
            self.oldest = self.version
            self.events.clear()

    def cut_watches(self) -> None:
        with self.cond:
            self.cuts += 1
            self.cond.notify_all()

    def expire_watches(self) -> None:
        with self.cond:
            self.expiries += 1
            self.cond.notify_all()

    def send_bookmarks(self) -> None:
        with self.cond:
            self.bookmarks += 1
            self.cond.notify_all()

    def hold_watches(self, held: bool) -> None:
        """While held, a new watch request waits before it is answered."""
        with self.cond:
            self.held = held
            self.cond.notify_all()

    def open_watches(self) -> int:
        with self.cond:
            return self.watching

    # Storage.

    def _store(self, kind: ApiKind, namespace: str, obj: JSON) -> JSON:
        key = (kind.list_path, namespace if kind.cls.NAMESPACED else "", obj["metadata"]["name"])
        previous = self.objects.get(key)
        self.version += 1
        stored = json.loads(json.dumps(obj))
        metadata = stored["metadata"]
        if kind.cls.NAMESPACED:
            metadata["namespace"] = namespace
        metadata["resourceVersion"] = str(self.version)
        metadata.setdefault("uid", previous["metadata"]["uid"] if previous else str(uuid.uuid4()))
        metadata.setdefault("creationTimestamp", "2024-05-03T10:00:00Z")
        stored["apiVersion"], stored["kind"] = kind.cls.API_VERSION, kind.kind
        self.objects[key] = stored
        self.events.append(Event(self.version, kind.list_path,
                                 "MODIFIED" if previous else "ADDED", stored))
        self.cond.notify_all()
        return stored

    def _remove(self, kind: ApiKind, namespace: str, name: str) -> JSON | None:
        gone = self.objects.pop((kind.list_path, namespace, name), None)
        if gone is not None:
            self.version += 1
            gone = {**gone, "metadata": {**gone["metadata"], "resourceVersion": str(self.version)}}
            self.events.append(Event(self.version, kind.list_path, "DELETED", gone))
            self.cond.notify_all()
        return gone

    def route(self, path: str) -> Route | None:
        for kind in self.kinds.values():
            group = kind.group_path
            if not path.startswith(group + "/"):
                continue
            parts = path[len(group) + 1:].split("/")
            if parts[0] == kind.plural and len(parts) <= 2:
                return Route(kind, None, parts[1] if len(parts) == 2 else None)
            if (kind.cls.NAMESPACED and len(parts) in (3, 4) and parts[0] == "namespaces"
                    and parts[2] == kind.plural):
                return Route(kind, parts[1], parts[3] if len(parts) == 4 else None)
        return None

    @contextmanager
    def serving(self, host: str = "127.0.0.1") -> Iterator[str]:
        """Serve in a thread (in the calling thread's network namespace); the base URL."""
        server = ThreadingHTTPServer((host, 0), _handler_for(self))
        server.daemon_threads = True
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                  daemon=True)
        thread.start()
        try:
            yield f"http://{host}:{server.server_address[1]}"
        finally:
            self.cut_watches()
            server.shutdown()
            server.server_close()
            thread.join(5)


def write_kubeconfig(path: Path, server: str, context: str = "fake") -> Path:
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": context,
        "clusters": [{"name": "fake", "cluster": {"server": server}}],
        "users": [{"name": "tester", "user": {"token": "not-a-secret"}}],
        "contexts": [{"name": context, "context": {"cluster": "fake", "user": "tester"}}],
    }))
    return path


def status(code: int, reason: str, message: str) -> JSON:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}


def _handler_for(api: FakeApiServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def handle(self) -> None:
            with contextlib.suppress(OSError):  # a client that went away, or a cut watch
                super().handle()

        def do_GET(self) -> None:
            route, query = self._parse()
            if route is None:
                return
            if route.name is not None:
                self._object(route)
            elif query.get("watch") in ("1", "true"):
                self._watch(route, query)
            else:
                self._list(route, query)

        def do_POST(self) -> None:
            route, query = self._parse()
            if route is None:
                return
            body = self._body()
            name = body["metadata"]["name"]
            namespace = route.namespace or ""
            with api.cond:
                if (route.kind.list_path, namespace, name) in api.objects:
                    return self._send(409, status(409, "AlreadyExists",
                                                  f'{route.kind.plural} "{name}" already exists'))
                if self._refused(name):
                    return None
                if query.get("dryRun") == "All":
                    return self._send(201, body)
                return self._send(201, api._store(route.kind, namespace, body))

        def do_PUT(self) -> None:
            route, query = self._parse()
            if route is None or route.name is None:
                return
            body = self._body()
            namespace = route.namespace or ""
            with api.cond:
                if (route.kind.list_path, namespace, route.name) not in api.objects:
                    return self._send(404, status(404, "NotFound",
                                                  f'{route.kind.plural} "{route.name}" not found'))
                if self._refused(route.name):
                    return None
                if query.get("dryRun") == "All":
                    return self._send(200, body)
                return self._send(200, api._store(route.kind, namespace, body))

        def do_DELETE(self) -> None:
            route, query = self._parse()
            if route is None or route.name is None:
                return
            namespace = route.namespace or ""
            with api.cond:
                key = (route.kind.list_path, namespace, route.name)
                if key not in api.objects:
                    return self._send(404, status(404, "NotFound",
                                                  f'{route.kind.plural} "{route.name}" not found'))
                if query.get("dryRun") == "All":
                    return self._send(200, api.objects[key])
                gone = api._remove(route.kind, namespace, route.name)
                return self._send(200, gone or {})

        def _refused(self, name: str) -> bool:
            if name != REFUSED_NAME:
                return False
            self._send(422, status(422, "Invalid", f'"{name}" is refused by admission'))
            return True

        def _parse(self) -> tuple[Route | None, dict[str, str]]:
            parts = urlsplit(self.path)
            query = {name: values[-1] for name, values in parse_qs(parts.query).items()}
            route = api.route(parts.path)
            if route is None:
                self._send(404, status(404, "NotFound", f"the server could not find {parts.path}"))
            return route, query

        def _body(self) -> JSON:
            length = int(self.headers.get("Content-Length") or 0)
            body: JSON = json.loads(self.rfile.read(length))
            return body

        def _send(self, code: int, document: JSON) -> None:
            data = json.dumps(document).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _object(self, route: Route) -> None:
            with api.cond:
                key = (route.kind.list_path, route.namespace or "", route.name or "")
                obj = api.objects.get(key)
            if obj is None:
                self._send(404, status(404, "NotFound", f'"{route.name}" not found'))
            else:
                self._send(200, obj)

        def _list(self, route: Route, query: dict[str, str]) -> None:
            limit = int(query.get("limit") or 0)
            offset, version = 0, 0
            if query.get("continue"):
                offset_text, _, version_text = query["continue"].partition(":")
                offset, version = int(offset_text), int(version_text)
            with api.cond:
                api.list_requests.append(route.kind.list_path)
                version = version or api.version
                matching = sorted(
                    (key, obj) for key, obj in api.objects.items()
                    if key[0] == route.kind.list_path
                    and (route.namespace is None or key[1] == route.namespace))
            page = [obj for _, obj in matching][offset:offset + limit if limit else None]
            builtin = route.kind.cls.API_VERSION.split("/")[0] != "sluice.io"
            items = [{k: v for k, v in obj.items() if k not in ("apiVersion", "kind")}
                     if builtin else obj for obj in page]
            more = bool(limit) and offset + limit < len(matching)
            self._send(200, {
                "kind": f"{route.kind.kind}List", "apiVersion": route.kind.cls.API_VERSION,
                "metadata": {"resourceVersion": str(version),
                             **({"continue": f"{offset + limit}:{version}"} if more else {})},
                "items": items,
            })

        def _watch(self, route: Route, query: dict[str, str]) -> None:
            since_text = query.get("resourceVersion") or ""
            timeout = float(query.get("timeoutSeconds") or 300)
            with api.cond:
                api.watch_requests.append((route.kind.list_path, since_text))
                while api.held:
                    api.cond.wait(0.1)
                cuts, expiries, bookmarks = api.cuts, api.expiries, api.bookmarks
                since = int(since_text) if since_text else api.version
                gone = since < api.oldest
                api.watching += 1
            try:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                if gone:
                    self._chunk({"type": "ERROR", "object": status(
                        410, "Expired", f"too old resource version: {since} ({api.oldest})")})
                    self._end()
                    return
                self._stream(route, since, timeout, (cuts, expiries, bookmarks))
            except OSError:
                pass
            finally:
                with api.cond:
                    api.watching -= 1

        def _stream(self, route: Route, since: int, timeout: float,
                    marks: tuple[int, int, int]) -> None:
            cuts, expiries, bookmarks = marks
            waited = 0.0
            while waited < timeout:
                with api.cond:
                    pending = [event for event in api.events
                               if event.version > since and event.list_path == route.kind.list_path]
                    if not pending and (api.cuts, api.expiries, api.bookmarks) == marks:
                        api.cond.wait(0.1)
                        waited += 0.1
                        continue
                    cut, expired = api.cuts != cuts, api.expiries != expiries
                    bookmark = api.bookmarks != bookmarks
                    bookmarks = api.bookmarks
                    marks = (cuts, expiries, bookmarks)
                    current = api.version
                if cut:
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                for event in pending:
                    self._chunk({"type": event.type, "object": event.obj})
                    since = event.version
                if expired:
                    self._chunk({"type": "ERROR", "object": status(
                        410, "Expired", "The resourceVersion for the provided watch is too old.")})
                    self._end()
                    return
                if bookmark:
                    self._chunk({"type": "BOOKMARK", "object": {
                        "kind": route.kind.kind, "apiVersion": route.kind.cls.API_VERSION,
                        "metadata": {"resourceVersion": str(current)}}})
                    since = max(since, current)
            self._end()

        def _chunk(self, document: JSON) -> None:
            data = json.dumps(document).encode() + b"\n"
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()

        def _end(self) -> None:
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()

    return Handler
