"""`sluice lab` end to end, through its command line: up, apply, get, exec, probe, delete,
down; two labs side by side; bad manifests change nothing; an interrupted or failed `up`
leaves nothing behind."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from sluice import netns
from sluice.lab import cleanup, names, procs
from tests.lab.labfixture import (
    SLUICE,
    assert_gone,
    ok,
    pod,
    running_lab,
    sluice,
    unique_lab,
    write_manifest,
)

pytestmark = pytest.mark.root

SERVICE = {
    "apiVersion": "v1", "kind": "Service",
    "metadata": {"name": "web", "namespace": "shop"},
    "spec": {"selector": {"app": "web"}, "ipFamilyPolicy": "PreferDualStack",
             "ports": [{"port": 80, "targetPort": 8080}]},
}


def shop(tmp_path: Path) -> Path:
    return write_manifest(tmp_path / "shop.yaml", [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}},
        pod("web", namespace="shop", node="node1", labels={"app": "web"}),
        pod("client", namespace="shop", node="node2", ports=[(7000, "TCP")]),
        pod("exporter", namespace="shop", node="node2", host_network=True,
            ports=[(9100, "TCP")]),
        SERVICE,
    ])


def test_lifecycle(tmp_path: Path) -> None:
    with running_lab("cli") as lab:
        up = lab.up(files=[shop(tmp_path)])
        for step in ("underlay", "node1: namespace", "node2: namespace", "external",
                     "node1: agent pid", "pod/shop/web created on node1", "up in"):
            assert step in up.stdout, up.stdout

        nodes = {row["name"]: row for row in lab.get("nodes")}
        assert set(nodes) == {"node1", "node2"}
        assert nodes["node1"]["internalIPs"] == ["198.18.0.11", "fd00:ff::11"]
        assert nodes["node2"]["podCIDRs"] == ["198.18.18.0/24", "fd00:10:2::/64"]
        assert nodes["node1"]["agent"]["status"] == "ready"

        pods = {row["name"]: row for row in lab.get("pods")}
        assert pods["web"]["node"] == "node1" and pods["web"]["status"] == "Running"
        assert pods["web"]["ips"][0].startswith("198.18.17.")
        assert pods["web"]["ips"][1].startswith("fd00:10:1::")
        assert pods["web"]["ports"] == ["8080/TCP", "8080/UDP"]
        assert pods["exporter"]["ips"] == ["198.18.0.12", "fd00:ff::12"]
        assert pods["exporter"]["netns"] == names.node_netns(lab.name, "node2")

        services = lab.get("services")
        assert services[0]["clusterIPs"] == ["198.19.0.10", "fd00:96::10"]
        table = ok(lab.run("get")).stdout
        assert "NAMESPACE" in table and "web" in table and "node2" in table

        web_ip = pods["web"]["ips"][0]
        address = ok(lab.run("exec", "shop/web", "--", "ip", "-o", "addr", "show", "eth0"))
        assert web_ip in address.stdout
        assert lab.run("exec", "node/node1", "--", "sh", "-c", "exit 3").returncode == 3
        assert lab.run("exec", "underlay", "--", "ip", "link", "show", "br0").returncode == 0

        doc = lab.probe("shop/client", "shop/web", 8080, "--protocol", "UDP")
        assert doc["result"] == "connected", doc
        assert doc["peer"] == "web"
        assert doc["client_ip"] == pods["client"]["ips"][0]
        assert doc["address"] == web_ip and doc["family"] == 4 and doc["protocol"] == "UDP"
        assert isinstance(doc["latency_ms"], float)
        doc = lab.probe("external", "node/node2", 9100, "--family", "6")
        assert (doc["result"], doc["peer"], doc["client_ip"]) == \
            ("connected", "exporter", "fd00:ff::250")
        doc = lab.probe("shop/client", "shop/web", 9999, "--timeout", "1")
        assert doc["result"] == "refused", doc
        table = lab.run("probe", "node/node1", "shop/web", "8080")
        assert table.returncode == 0 and "peer=web" in table.stdout

        web_ns = pods["web"]["netns"]
        deleted = ok(lab.delete(write_manifest(tmp_path / "web.yaml", [pod("web",
                                                                          namespace="shop")])))
        assert "pod/shop/web deleted" in deleted.stdout
        assert not netns.exists(web_ns)
        assert {row["name"] for row in lab.get("pods")} == {"client", "exporter"}

        started = lab.processes()
        assert len(started) == 4  # 2 agents, 2 pod servers
        down = ok(lab.down())
        assert "removed" in down.stdout
        assert_gone(lab.name, started)
        assert ok(lab.down()).stdout.strip() == f"lab {lab.name}: nothing to remove"


def test_two_labs_side_by_side(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "pods.yaml", [pod("a", node="node1"),
                                                       pod("b", node="node2")])
    with running_lab("one") as first, running_lab("two") as second:
        first.up("--routing", "native", files=[manifest])
        second.up("--nodes", "3", "--ip-family", "ipv4", files=[manifest])
        for lab in (first, second):
            doc = lab.probe("default/a", "default/b", 8080)
            assert (doc["result"], doc["peer"]) == ("connected", "b"), doc
        assert len(second.get("nodes")) == 3
        started = first.processes()
        ok(first.down())
        assert_gone(first.name, started)
        doc = second.probe("default/b", "default/a", 8080, "--protocol", "UDP")
        assert (doc["result"], doc["peer"]) == ("connected", "a"), doc


def test_bad_manifests_change_nothing(tmp_path: Path) -> None:
    with running_lab("bad") as lab:
        lab.up("--nodes", "1", files=[write_manifest(tmp_path / "a.yaml", [pod("a")])])
        before = (lab.get("pods"), sorted(os.listdir(lab.state().paths.datastore)))

        bad_field = write_manifest(tmp_path / "bad.yaml", [
            pod("b"), {**pod("c"), "spec": {"containers": [{"name": "main", "ports": [
                {"containerPort": 70000}]}]}}])
        proc = lab.apply(bad_field)
        assert proc.returncode == 1
        assert (f"{bad_field}: document 2: Pod default/c: "
                "spec.containers[0].ports[0].containerPort:") in proc.stderr
        assert "nothing was changed" in proc.stderr

        bad_node = write_manifest(tmp_path / "node.yaml", [pod("b"), pod("d", node="node9")])
        proc = lab.apply(bad_node)
        assert proc.returncode == 1
        assert "Pod default/d: spec.nodeName: no node 'node9'" in proc.stderr

        missing = lab.delete(write_manifest(tmp_path / "gone.yaml", [pod("a"), pod("zz")]))
        assert missing.returncode == 1 and "Pod default/zz: not found" in missing.stderr

        after = (lab.get("pods"), sorted(os.listdir(lab.state().paths.datastore)))
        assert after == before


def test_failed_up_removes_everything(tmp_path: Path) -> None:
    name = unique_lab("fail")
    clash = write_manifest(tmp_path / "clash.yaml", [
        pod("one", node="node1", host_network=True, ports=[(9300, "TCP")]),
        pod("two", node="node1", host_network=True, ports=[(9300, "TCP")]),
    ])
    try:
        proc = sluice("lab", "up", "--name", name, "--nodes", "1", "-f", str(clash))
        assert proc.returncode == 1, proc.stdout
        assert "server of pod default/two did not bind 9300/TCP" in proc.stderr
        assert "removing what was made" in proc.stdout
        assert_gone(name)
    finally:
        sluice("lab", "down", "--name", name)


@pytest.mark.parametrize(("signum", "after"), [
    (signal.SIGINT, "node2: namespace"),
    (signal.SIGINT, "agents started"),
    (signal.SIGTERM, "pod/default/a created"),
])
def test_interrupted_up_removes_everything(tmp_path: Path, signum: int, after: str) -> None:
    name = unique_lab("intr")
    manifest = write_manifest(tmp_path / "pods.yaml", [pod("a"), pod("b"), pod("c")])
    up = subprocess.Popen([str(SLUICE), "lab", "up", "--name", name, "-f", str(manifest)],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert up.stdout is not None
        seen = []
        for line in up.stdout:
            seen.append(line)
            if after in line:
                up.send_signal(signum)
                break
        rest, _ = up.communicate(timeout=60)
        assert up.returncode == 128 + signum, "".join(seen) + rest
        assert "interrupted; removing what was made" in rest
        assert_gone(name)
        assert not [p for p in _lab_processes(name)], "processes of the lab still run"
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
        sluice("lab", "down", "--name", name)


def _lab_processes(lab: str) -> list[int]:
    """PIDs whose command line names the lab's state directory (agents, pod servers)."""
    marker = str(names.state_dir(lab)).encode()
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                    if marker in cmdline.read():
                        found.append(int(entry))
            except OSError:
                continue
    return found


def test_down_removes_leftovers_of_only_its_own_lab() -> None:
    """From a partial state (no state.json): namespaces, pins and cgroup by name only; a
    lab whose name extends this one's ("x" and "x-p") is not touched."""
    lab = unique_lab("left")
    other = f"{lab}-p"
    mine = [names.node_netns(lab, "node1"), names.pod_netns(lab, "default", "a")]
    theirs = [names.underlay_netns(other), names.node_netns(other, "node1"),
              names.pod_netns(other, "default", "a")]
    try:
        for ns in mine + theirs:
            netns.create(ns)
        os.makedirs(names.pin_dir(lab, "node1"))
        cgroup = cleanup.cgroup_path(lab)
        assert cgroup is not None
        os.makedirs(f"{cgroup}/node1/pods/x")
        sleeper = subprocess.Popen(procs.in_cgroup(f"{cgroup}/node1/pods/x", ["sleep", "60"]))
        removed = ok(sluice("lab", "down", "--name", lab)).stdout
        assert "1 process" in removed and "2 namespaces" in removed, removed
        assert sleeper.wait(timeout=10) == -signal.SIGKILL
        assert_gone(lab)
        assert all(netns.exists(ns) for ns in theirs)
        assert sorted(cleanup.lab_namespaces(other)) == sorted(theirs)
    finally:
        for ns in mine + theirs:
            netns.remove(ns)
        sluice("lab", "down", "--name", lab)


def test_commands_explain_what_is_wrong() -> None:
    proc = sluice("lab", "up", "--name", "Bad_Name")
    assert proc.returncode == 2 and "invalid lab name 'Bad_Name'" in proc.stderr
    missing = unique_lab("none")
    proc = sluice("lab", "get", "--name", missing)
    assert proc.returncode == 1
    assert f"no lab named '{missing}'" in proc.stderr and "sluice lab up" in proc.stderr
    proc = sluice("lab", "probe", "--name", missing, "a/b", "c/d", "80")
    assert proc.returncode == 1 and "no lab named" in proc.stderr
    help_text = sluice("lab", "--help").stdout
    for word in ("up", "down", "apply", "delete", "get", "exec", "probe", "198.18.0.0/24"):
        assert word in help_text
