"""`sluice doctor` on this host: every required check passes and nothing is left behind."""

from __future__ import annotations

import ctypes
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from sluice import bpffs, cgroups, doctor, netns
from sluice.cli.main import main
from sluice.loader import Link, Program, attach_cgroup, objects

_libc = ctypes.CDLL(None, use_errno=True)

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="sluice doctor needs root"),
]

MUST_BE_OK = (
    "kernel BTF",
    "bpffs",
    "cgroup v2",
    "BPF objects",
    "map: LPM trie",
    "map: LRU hash",
    "map: ring buffer",
    "map: per-CPU array",
    "tc: tcx",
    "tc: clsact",
    "XDP native",
    "cgroup socket hooks",
)


def leftovers() -> list[str]:
    """Namespaces and cgroups a doctor run in this process made and did not remove.

    Names carry the pid (sluice-doctor-<pid>-<random>), so a doctor someone else runs
    at the same time on this shared machine does not fail these tests.
    """
    prefix = f"{doctor.TEMP_PREFIX}{os.getpid()}-"
    found: list[str] = []
    if os.path.isdir(netns.NETNS_RUN_DIR):
        found += [f"netns {n}" for n in os.listdir(netns.NETNS_RUN_DIR) if n.startswith(prefix)]
    root = cgroups.find_cgroup2_mount()
    if root is not None:
        found += [f"cgroup {n}" for n in os.listdir(root) if n.startswith(prefix)]
    return found


@pytest.fixture(autouse=True)
def no_leftovers() -> Iterator[None]:
    assert leftovers() == []
    yield
    assert leftovers() == []


def test_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split() == ["CHECK", "VERDICT", "DETAIL"]
    verdicts = {}
    for line in lines[1:]:
        for name in MUST_BE_OK:
            if line.startswith(name + "  "):  # columns are separated by two spaces
                verdicts[name] = line[len(name):].split()[0]
    assert verdicts == dict.fromkeys(MUST_BE_OK, "ok")
    assert "READY: all required checks passed" in out
    assert "NOT READY" not in out


def test_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["doctor", "-o", "json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert isinstance(results, list)
    by_name = {r["name"]: r for r in results}
    assert [r["name"] for r in results] == [c.name for c in doctor.CHECKS]
    for name in MUST_BE_OK:
        assert by_name[name]["verdict"] == "ok", by_name[name]
        assert by_name[name]["required"] is True
    assert all(r["verdict"] in ("ok", "warning") for r in results)
    assert set(results[0]) == {"name", "verdict", "detail", "required"}


def test_missing_objects_fail(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(objects, "OBJECT_DIR", tmp_path)
    assert main(["doctor", "-o", "json"]) == 1
    by_name = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert by_name["BPF objects"]["verdict"] == "missing"
    assert "prefilter.bpf.o" in by_name["BPF objects"]["detail"]
    assert by_name["XDP native"]["verdict"] == "missing"
    assert by_name["kernel BTF"]["verdict"] == "ok"


def test_failed_table_says_not_ready(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(objects, "OBJECT_DIR", tmp_path)
    assert main(["doctor"]) == 1
    out = capsys.readouterr().out
    assert "NOT READY" in out
    assert "BPF objects" in out.split("NOT READY")[1]


def test_optional_failure_is_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(session: doctor.Session) -> doctor.Outcome:
        raise OSError("nope")

    checks = (
        doctor.Check("optional", False, "", broken),
        doctor.Check("required", True, "", doctor.check_btf),
    )
    results = doctor.run_checks(checks)
    assert [(r.name, r.verdict) for r in results] == [
        ("optional", doctor.Verdict.WARNING), ("required", doctor.Verdict.OK)]
    assert doctor.passed(results)


def test_not_root(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert main(["doctor"]) == 1
    captured = capsys.readouterr()
    assert "must run as root" in captured.err
    assert captured.out == ""


def test_help_lists_checks(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["doctor", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for check in doctor.CHECKS:
        assert check.name in out


def test_interrupt_cleans_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C while a namespace, a cgroup and attachments exist still removes them all."""
    attached = 0

    def interrupt_midway(prog: Program, path: str) -> Link:
        nonlocal attached
        attached += 1
        if attached == 3:
            assert leftovers() != []  # the temporary netns and cgroup exist right now
            raise KeyboardInterrupt
        return attach_cgroup(prog, path)

    monkeypatch.setattr(doctor, "attach_cgroup", interrupt_midway)
    assert main(["doctor"]) == 130
    assert attached == 3


def test_bpffs_mounted_when_missing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The bpffs check mounts bpffs where it is missing (here: a scratch directory)."""
    target = tmp_path / "bpf"
    monkeypatch.setattr(bpffs, "DEFAULT_PATH", str(target))
    try:
        with doctor.Session() as session:
            first = doctor.check_bpffs(session)
            second = doctor.check_bpffs(session)
        assert first == doctor.ok(f"mounted by doctor at {target}")
        assert second == doctor.ok(f"mounted at {target}")
        assert bpffs.is_mounted(str(target))
    finally:
        if bpffs.is_mounted(str(target)):
            assert _libc.umount2(str(target).encode(), 0) == 0
