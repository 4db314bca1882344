"""The plugin's dispatch and error reporting, in-process, for paths that touch no netlink."""

from __future__ import annotations

import io
import json
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

import pytest

from sluice.cni import podnet
from sluice.cni.ipam import Ipam
from sluice.cni.plugin import Rollback, run
from sluice.cni.spec import Attachment, CniError, Code

ENV = {"CNI_CONTAINERID": "abc", "CNI_NETNS": "/var/run/netns/nope", "CNI_IFNAME": "eth0"}


def invoke(command: str, stdin: bytes | dict[str, Any], **env: str) -> tuple[int, Any, str]:
    out, err = io.StringIO(), io.StringIO()
    data = stdin if isinstance(stdin, bytes) else json.dumps(stdin).encode()
    rc = run({"CNI_COMMAND": command, **env}, data, out, err)
    text = out.getvalue()
    return rc, json.loads(text) if text else None, err.getvalue()


def config(tmp_path: Path, **changes: Any) -> dict[str, Any]:
    return {"cniVersion": "1.1.0", "name": "sluice", "type": "sluice-cni",
            "stateDir": str(tmp_path / "state"),
            "ipam": {"ranges": [["198.18.16.0/30"]]}} | changes


def test_version_needs_nothing() -> None:
    assert invoke("VERSION", b"") == (
        0, {"cniVersion": "1.1.0", "supportedVersions": ["0.4.0", "1.0.0", "1.1.0"]}, "")


@pytest.mark.parametrize("command", ["", "ADDD", "add"])
def test_unknown_commands(command: str) -> None:
    rc, doc, err = invoke(command, b"{}")
    assert rc == 1 and doc["code"] == Code.INVALID_ENVIRONMENT and "CNI_COMMAND" in doc["msg"]
    assert "error 4" in err


def test_errors_carry_the_requested_version(tmp_path: Path) -> None:
    rc, doc, _ = invoke("ADD", config(tmp_path, cniVersion="1.0.0", mtu=1), **ENV)
    assert (rc, doc["cniVersion"], doc["code"]) == (1, "1.0.0", Code.INVALID_CONFIG)
    rc, doc, _ = invoke("ADD", b"\x00", **ENV)
    assert (rc, doc["cniVersion"], doc["code"]) == (1, "1.1.0", Code.DECODE_FAILURE)


def test_missing_netns_is_an_unknown_container(tmp_path: Path) -> None:
    rc, doc, _ = invoke("ADD", config(tmp_path), **ENV)
    assert (rc, doc["code"]) == (1, Code.UNKNOWN_CONTAINER)
    assert not (tmp_path / "state").exists()


def test_status(tmp_path: Path) -> None:
    assert invoke("STATUS", config(tmp_path)) == (0, None, "")
    Ipam(tmp_path / "state").allocate([IPv4Network("198.18.16.0/30")], Attachment("x", "eth0"))
    rc, doc, _ = invoke("STATUS", config(tmp_path))
    assert (rc, doc["code"]) == (1, Code.NOT_AVAILABLE) and "198.18.16.0/30" in doc["msg"]


def test_status_with_an_unwritable_state_dir(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    rc, doc, _ = invoke("STATUS", config(tmp_path, stateDir=str(tmp_path / "file" / "state")))
    assert (rc, doc["code"]) == (1, Code.NOT_AVAILABLE) and "not writable" in doc["msg"]


def test_check_without_prev_result(tmp_path: Path) -> None:
    rc, doc, _ = invoke("CHECK", config(tmp_path), **ENV)
    assert (rc, doc["code"]) == (1, Code.INVALID_CONFIG) and "prevResult" in doc["msg"]


def test_gc_without_valid_attachments(tmp_path: Path) -> None:
    rc, doc, _ = invoke("GC", config(tmp_path))
    assert (rc, doc["code"]) == (1, Code.INVALID_CONFIG)
    assert "cni.dev/valid-attachments" in doc["msg"]


def test_rollback_runs_newest_first_and_reports_failures() -> None:
    done: list[str] = []
    rollback = Rollback()
    rollback.push("first", lambda: done.append("first"))

    def broken() -> None:
        raise CniError(Code.IO_FAILURE, "disk on fire")

    rollback.push("second", broken)
    rollback.push("third", lambda: done.append("third"))
    assert rollback.run() == ["second: disk on fire"]
    assert done == ["third", "first"]
    assert rollback.run() == []


def test_host_ifname() -> None:
    name = podnet.host_ifname("sl", "abc", "eth0")
    assert len(name) == 13 and name.startswith("sl")
    assert name == podnet.host_ifname("sl", "abc", "eth0")
    assert name != podnet.host_ifname("sl", "abc", "eth1")
    assert len(podnet.host_ifname("abcd", "x" * 64, "y" * 15)) == 15
