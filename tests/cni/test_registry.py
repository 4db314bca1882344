"""Endpoint records and the agent notification (pure: files and a Unix socket, no root)."""

from __future__ import annotations

import dataclasses
import json
import socket
import threading
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path

import pytest

from sluice.cni import registry
from sluice.cni.registry import EndpointRecord

RECORD = EndpointRecord(
    container_id="4f1c",
    ifname="eth0",
    netns="/var/run/netns/pod-1",
    pod_namespace="default",
    pod_name="web-0",
    host_ifname="sl3b8f0c2d9e1",
    host_ifindex=7,
    host_mac="5a:00:00:00:00:01",
    pod_mac="9e:00:00:00:00:02",
    ipv4=IPv4Address("198.18.16.2"),
    ipv6=IPv6Address("fd00:10:1::2"),
    mtu=1450,
    created_at="2024-05-01T12:00:00Z",
)


def test_json_round_trip_with_the_documented_keys() -> None:
    doc = json.loads(RECORD.to_json())
    assert list(doc) == ["containerID", "ifname", "netns", "podNamespace", "podName",
                         "hostIfname", "hostIfindex", "hostMac", "podMac", "ipv4", "ipv6",
                         "mtu", "createdAt"]
    assert doc["ipv4"] == "198.18.16.2" and doc["hostIfindex"] == 7
    assert EndpointRecord.from_json(RECORD.to_json()) == RECORD
    v4_only = dataclasses.replace(RECORD, ipv6=None)
    assert json.loads(v4_only.to_json())["ipv6"] is None
    assert EndpointRecord.from_json(v4_only.to_json()) == v4_only
    assert v4_only.addresses == [IPv4Address("198.18.16.2")]
    assert RECORD.key == "4f1c-eth0"


@pytest.mark.parametrize(("change", "mentions"), [
    ({"mtu": None}, "mtu"),
    ({"hostIfindex": "7"}, "hostIfindex"),
    ({"podName": 3}, "podName"),
    ({"ipv4": "fd00::1"}, "family"),
    ({"ipv6": 6}, "ipv6"),
])
def test_bad_records_are_refused(change: dict[str, object], mentions: str) -> None:
    doc = json.loads(RECORD.to_json())
    for key, value in change.items():
        if value is None:
            del doc[key]
        else:
            doc[key] = value
    with pytest.raises(ValueError, match=mentions):
        EndpointRecord.from_json(json.dumps(doc))
    with pytest.raises(ValueError):
        EndpointRecord.from_json("[]")


def test_write_read_remove(tmp_path: Path) -> None:
    path = registry.write_record(tmp_path, RECORD)
    assert path == tmp_path / "endpoints" / "4f1c-eth0.json"
    assert registry.read_record(tmp_path, "4f1c", "eth0") == RECORD
    updated = dataclasses.replace(RECORD, mtu=9000)
    registry.write_record(tmp_path, updated)
    assert registry.read_record(tmp_path, "4f1c", "eth0") == updated
    assert [p.name for p in path.parent.iterdir()] == ["4f1c-eth0.json"]
    assert registry.remove_record(tmp_path, "4f1c", "eth0")
    assert not registry.remove_record(tmp_path, "4f1c", "eth0")
    assert registry.read_record(tmp_path, "4f1c", "eth0") is None


def test_a_record_under_another_attachments_name_is_refused(tmp_path: Path) -> None:
    registry.write_record(tmp_path, RECORD)
    (tmp_path / "endpoints" / "4f1c-eth0.json").rename(tmp_path / "endpoints" / "x-eth0.json")
    with pytest.raises(registry.ForeignRecordError, match="belongs to 4f1c/eth0"):
        registry.read_record(tmp_path, "x", "eth0")


def test_list_records_skips_temporaries_and_garbage(tmp_path: Path) -> None:
    assert registry.list_records(tmp_path) == []
    second = dataclasses.replace(RECORD, container_id="0abc")
    registry.write_record(tmp_path, RECORD)
    registry.write_record(tmp_path, second)
    directory = tmp_path / "endpoints"
    (directory / ".4f1c-eth0.json.123.abcd").write_text(RECORD.to_json())
    (directory / "broken-eth0.json").write_text("{")
    (directory / "notes.txt").write_text("x")
    assert registry.list_records(tmp_path) == [second, RECORD]


def test_notify_without_an_agent(tmp_path: Path) -> None:
    assert not registry.notify_agent(tmp_path, "4f1c-eth0")
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(tmp_path / registry.AGENT_SOCKET))
    dead.close()
    assert not registry.notify_agent(tmp_path, "4f1c-eth0")


def test_notify_a_listening_agent(tmp_path: Path) -> None:
    received: list[bytes] = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(tmp_path / registry.AGENT_SOCKET))
        server.listen(1)
        server.settimeout(5)

        def accept() -> None:
            conn, _ = server.accept()
            with conn:
                received.append(conn.recv(256))

        listener = threading.Thread(target=accept)
        listener.start()
        assert registry.notify_agent(tmp_path, "4f1c-eth0")
        listener.join(timeout=5)
    assert received == [b"endpoint-changed 4f1c-eth0\n"]
