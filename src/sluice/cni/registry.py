"""Endpoint records: what the plugin wired, for the node agent to read and watch.

One JSON file per attachment, `<stateDir>/endpoints/<containerID>-<ifname>.json`, replaced
atomically (written to a temporary file in the same directory, then renamed)::

    {
      "containerID": "4f1c...", "ifname": "eth0", "netns": "/var/run/netns/cni-1234",
      "podNamespace": "default", "podName": "web-0",       # from CNI_ARGS; may be ""
      "hostIfname": "sl3b8f0c2d9e1", "hostIfindex": 7, "hostMac": "5a:...",
      "podMac": "9e:...",
      "ipv4": "198.18.16.2", "ipv6": "fd00:10:1::2",      # plain addresses, or null
      "mtu": 1450, "createdAt": "2024-05-01T12:00:00Z"
    }

Files whose names start with "." are temporaries and are never records. After a change the
plugin sends `endpoint-changed <containerID>-<ifname>\\n` to `<stateDir>/agent.sock` (a Unix
stream socket) if it exists; the agent must still rescan the directory on start, since the
notification is best-effort.
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ENDPOINTS_DIR = "endpoints"
AGENT_SOCKET = "agent.sock"
NOTIFY_TIMEOUT = 0.2

_FIELDS = {
    "container_id": "containerID",
    "ifname": "ifname",
    "netns": "netns",
    "pod_namespace": "podNamespace",
    "pod_name": "podName",
    "host_ifname": "hostIfname",
    "host_ifindex": "hostIfindex",
    "host_mac": "hostMac",
    "pod_mac": "podMac",
    "ipv4": "ipv4",
    "ipv6": "ipv6",
    "mtu": "mtu",
    "created_at": "createdAt",
}
_INT_FIELDS = frozenset({"host_ifindex", "mtu"})
_ADDRESS_FIELDS = frozenset({"ipv4", "ipv6"})


class ForeignRecordError(ValueError):
    """The file at an attachment's record path holds another attachment's record.

    `<containerID>-<ifname>` is ambiguous when both contain '-' ("a-b"+"c" vs "a"+"b-c").
    """


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class EndpointRecord:
    container_id: str
    ifname: str
    netns: str
    pod_namespace: str
    pod_name: str
    host_ifname: str
    host_ifindex: int
    host_mac: str
    pod_mac: str
    ipv4: ipaddress.IPv4Address | None
    ipv6: ipaddress.IPv6Address | None
    mtu: int
    created_at: str

    @property
    def key(self) -> str:
        return record_key(self.container_id, self.ifname)

    @property
    def addresses(self) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
        return [a for a in (self.ipv4, self.ipv6) if a is not None]

    def to_json(self) -> str:
        doc: dict[str, Any] = {}
        for attr, key in _FIELDS.items():
            value = getattr(self, attr)
            doc[key] = str(value) if attr in _ADDRESS_FIELDS and value is not None else value
        return json.dumps(doc, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> EndpointRecord:
        """Parse a record; ValueError names the first missing or mistyped field."""
        doc = json.loads(text)
        if not isinstance(doc, dict):
            raise ValueError("an endpoint record must be a JSON object")
        values: dict[str, Any] = {}
        for attr, key in _FIELDS.items():
            if key not in doc:
                raise ValueError(f"endpoint record has no {key}")
            values[attr] = _field(attr, key, doc[key])
        return cls(**values)


def _field(attr: str, key: str, value: object) -> object:
    if attr in _INT_FIELDS:
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"endpoint record {key} must be an integer")
        return value
    if attr in _ADDRESS_FIELDS:
        if value is None:
            return None
        if not isinstance(value, str):
            raise ValueError(f"endpoint record {key} must be an address or null")
        parsed = ipaddress.ip_address(value)
        if parsed.version != (4 if attr == "ipv4" else 6):
            raise ValueError(f"endpoint record {key} has the wrong address family")
        return parsed
    if not isinstance(value, str):
        raise ValueError(f"endpoint record {key} must be a string")
    return value


def record_key(container_id: str, ifname: str) -> str:
    return f"{container_id}-{ifname}"


def endpoints_dir(state_dir: str | os.PathLike[str]) -> Path:
    return Path(state_dir) / ENDPOINTS_DIR


def record_path(state_dir: str | os.PathLike[str], container_id: str, ifname: str) -> Path:
    return endpoints_dir(state_dir) / f"{record_key(container_id, ifname)}.json"


def write_record(state_dir: str | os.PathLike[str], record: EndpointRecord) -> Path:
    path = record_path(state_dir, record.container_id, record.ifname)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    try:
        with open(tmp, "w", encoding="utf-8") as out:
            out.write(record.to_json())
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def read_record(state_dir: str | os.PathLike[str], container_id: str,
                ifname: str) -> EndpointRecord | None:
    """The record of this attachment, None if there is none; ValueError if unreadable."""
    path = record_path(state_dir, container_id, ifname)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    record = EndpointRecord.from_json(text)
    if (record.container_id, record.ifname) != (container_id, ifname):
        raise ForeignRecordError(f"{path} belongs to {record.container_id}/{record.ifname}")
    return record


def remove_record(state_dir: str | os.PathLike[str], container_id: str, ifname: str) -> bool:
    path = record_path(state_dir, container_id, ifname)
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


def list_records(state_dir: str | os.PathLike[str]) -> list[EndpointRecord]:
    """Every readable record, sorted by key; unreadable files are skipped."""
    directory = endpoints_dir(state_dir)
    if not directory.is_dir():
        return []
    records: list[EndpointRecord] = []
    for path in sorted(directory.glob("*.json")):
        if path.name.startswith("."):
            continue
        try:
            records.append(EndpointRecord.from_json(path.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            continue
    return records


def notify_agent(state_dir: str | os.PathLike[str], key: str) -> bool:
    """Tell a listening agent that KEY changed; False (and no error) if nobody heard."""
    path = Path(state_dir) / AGENT_SOCKET
    try:
        if not path.exists():
            return False
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(NOTIFY_TIMEOUT)
            sock.connect(str(path))
            sock.sendall(f"endpoint-changed {key}\n".encode())
    except OSError:
        return False
    return True
