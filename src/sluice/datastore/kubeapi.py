"""The Kubernetes API as the datastore uses it: raw JSON requests and watch streams.

Configuration, authentication (tokens, client certificates, token refresh) and TLS come
from the official client (`kubernetes`); requests are made by path so that every kind,
built-in or custom, is read the same way, and bodies stay the JSON the apiserver sent.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from kubernetes import client as kube_client

from sluice.model import Resource

JSON = dict[str, Any]
AUTH_SETTINGS = ["BearerToken"]
CONNECT_TIMEOUT = 10.0


@dataclass(frozen=True)
class ApiKind:
    """Where the API serves one model kind."""

    cls: type[Resource]

    @property
    def kind(self) -> str:
        return self.cls.KIND

    @property
    def plural(self) -> str:
        lowered = self.cls.KIND.lower()
        return lowered[:-1] + "ies" if lowered.endswith("y") else lowered + "s"

    @property
    def group_path(self) -> str:
        version = self.cls.API_VERSION
        return "/api/v1" if version == "v1" else f"/apis/{version}"

    @property
    def list_path(self) -> str:
        """Every object of the kind, in every namespace."""
        return f"{self.group_path}/{self.plural}"

    def collection_path(self, namespace: str) -> str:
        if self.cls.NAMESPACED:
            return f"{self.group_path}/namespaces/{quote(namespace, safe='')}/{self.plural}"
        return self.list_path

    def object_path(self, namespace: str, name: str) -> str:
        return f"{self.collection_path(namespace)}/{quote(name, safe='')}"


class ApiError(Exception):
    """The apiserver answered with an error status (`status` 0: it could not be reached)."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        self.status = status
        self.reason = reason
        super().__init__(f"HTTP {status} {reason}: {message}" if status else message)


def status_error(status: int, body: bytes) -> ApiError:
    """The error a failed response describes (a Kubernetes Status object, usually)."""
    reason, message = "", body.decode(errors="replace").strip()[:500]
    with contextlib.suppress(ValueError):
        document = json.loads(body)
        if isinstance(document, dict):
            reason = str(document.get("reason") or "")
            message = str(document.get("message") or message)
    return ApiError(status, reason, message)


class KubeApi:
    """Raw JSON access to one apiserver through an official-client ApiClient."""

    def __init__(self, api_client: kube_client.ApiClient) -> None:
        self._client = api_client
        self._lock = threading.Lock()
        self._open_streams: set[Any] = set()

    @property
    def host(self) -> str:
        return str(self._client.configuration.host)

    def request(
        self,
        method: str,
        path: str,
        query: Mapping[str, str] | None = None,
        body: JSON | None = None,
        timeout: float = 30.0,
    ) -> JSON:
        """One request; its JSON answer, or ApiError."""
        response = self._send(method, path, query, body, (CONNECT_TIMEOUT, timeout))
        try:
            data = response.data
        finally:
            response.release_conn()
        if not 200 <= response.status < 300:
            raise status_error(response.status, data)
        try:
            document = json.loads(data)
        except ValueError as err:
            raise ApiError(response.status, "BadResponse", f"{path}: not JSON: {err}") from None
        if not isinstance(document, dict):
            raise ApiError(response.status, "BadResponse", f"{path}: not a JSON object")
        return document

    def stream(self, path: str, query: Mapping[str, str], read_timeout: float) -> Iterator[JSON]:
        """The events of a watch: one JSON object per line, until the server ends it.

        ApiError when the watch is refused; urllib3 or OS errors when the connection
        breaks (the caller resumes from the last resourceVersion it saw).
        """
        response = self._send("GET", path, query, None, (CONNECT_TIMEOUT, read_timeout))
        if response.status != 200:
            try:
                raise status_error(response.status, response.data)
            finally:
                response.release_conn()
        with self._lock:
            self._open_streams.add(response)
        try:
            pending = b""
            for chunk in response.stream(64 * 1024, decode_content=True):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    if line.strip():
                        yield _event(line)
            if pending.strip():
                yield _event(pending)
        finally:
            with self._lock:
                self._open_streams.discard(response)
            response.release_conn()

    def interrupt(self) -> None:
        """Break every open watch stream (their readers see the connection end)."""
        with self._lock:
            streams = list(self._open_streams)
        for response in streams:
            with contextlib.suppress(Exception):
                response.shutdown()

    def close(self) -> None:
        self.interrupt()
        with contextlib.suppress(Exception):
            self._client.close()  # type: ignore[no-untyped-call]

    def _send(
        self,
        method: str,
        path: str,
        query: Mapping[str, str] | None,
        body: JSON | None,
        timeout: tuple[float, float],
    ) -> Any:
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        try:
            serialized = self._client.param_serialize(
                method, path, query_params=list((query or {}).items()),
                header_params=headers, body=body, auth_settings=AUTH_SETTINGS)
            response = self._client.call_api(*serialized, _request_timeout=timeout)
        except kube_client.ApiException as err:
            raise ApiError(int(err.status or 0), str(err.reason or ""),
                           f"{method} {path}: {err.reason}") from None
        return response.response


def _event(line: bytes) -> JSON:
    try:
        event = json.loads(line)
    except ValueError as err:
        raise ApiError(200, "BadWatchEvent", f"a watch event is not JSON: {err}") from None
    if not isinstance(event, dict):
        raise ApiError(200, "BadWatchEvent", "a watch event is not a JSON object")
    return event
