"""What only the bpf dataplane does for Services, end to end in a lab with native routing
(so service traffic for outside clients crosses the service tunnel even without an
overlay): Maglev picks the same backend on every node and predictably, and keeps flows on
their backend when an unrelated one goes; direct server return answers outside clients
from the backend's node with their address intact; `sluice service list` shows it all.
"""

from __future__ import annotations

import ipaddress
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sluice.compile.lbstate import BackendRef
from sluice.compile.maglev import DEFAULT_TABLE_SIZE, backend_table
from sluice.datapath import conntrack as ct
from sluice.datapath.lb import flow_hash
from sluice.lab import names
from sluice.lab.state import LabState
from sluice.loader.maps import Map
from tests.lab.labfixture import Lab, ok, pod, running_lab, sluice, write_manifest

pytestmark = pytest.mark.root

EXTERNAL = {4: "198.18.0.250", 6: "fd00:ff::250"}
NODE_IP = {"node1": {4: "198.18.0.11", 6: "fd00:ff::11"},
           "node2": {4: "198.18.0.12", 6: "fd00:ff::12"}}
WEB_PODS = [("web-1", "node1"), ("web-2", "node2"), ("web-3", "node2"), ("web-4", "node1")]
PORTS = range(41001, 41017)


def service(name: str, annotations: dict[str, str]) -> dict[str, object]:
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "lb", "annotations": annotations},
            "spec": {"type": "NodePort", "selector": {"app": "web"},
                     "ipFamilyPolicy": "PreferDualStack",
                     "ports": [{"name": "http", "port": 80, "targetPort": 8080},
                               {"name": "dns", "port": 53, "targetPort": 8080,
                                "protocol": "UDP"}]}}


def web(name: str, node: str) -> dict[str, object]:
    return pod(name, namespace="lb", node=node, labels={"app": "web"})


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    directory = tmp_path_factory.mktemp("lbbpf")
    manifest = write_manifest(directory / "lb.yaml", [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "lb"}},
        *(web(name, node) for name, node in WEB_PODS),
        service("maglev", {"sluice.io/lb-algorithm": "maglev"}),
        service("dsr", {"sluice.io/lb-mode": "dsr"}),
    ])
    with running_lab("lbbpf") as running:
        running.up("--dataplane", "bpf", "--routing", "native", files=[manifest])
        wait_backends(running, len(WEB_PODS))
        yield running


def wait_backends(lab: Lab, count: int, timeout: float = 15.0) -> None:
    """Until every Maglev frontend on both nodes has COUNT backends (the agents program
    services as they see pods become ready, a moment after `up` returns)."""
    deadline = time.monotonic() + timeout
    while any(len(r["backends"]) != count for n in ("node1", "node2")  # type: ignore[arg-type]
              for r in frontends(lab, n) if "maglev" in r["flags"]):  # type: ignore[operator]
        assert time.monotonic() < deadline, f"the agents did not program {count} backends"
        time.sleep(0.2)


def frontends(lab: Lab, node: str) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = json.loads(ok(sluice(
        "service", "list", "--lab", lab.name, "--node", node, "-o", "json")).stdout)
    return rows


def pod_ips(state: LabState, family: int) -> dict[str, str]:
    return {key.split("/")[1]: next(ip for ip in record.ips
                                    if ipaddress.ip_address(ip).version == family)
            for key, record in state.pods.items() if key.startswith("lb/web-")}


def backend_of(lab: Lab, node: str, port: int, family: int) -> str:
    address, outcomes = lab.probe_many("external", f"nodeport/{node}/lb/maglev", 80, 1,
                                       family=family, source_port=port, timeout=3.0)
    assert outcomes[0].result == "connected" and outcomes[0].peer, (address, port, outcomes[0])
    return outcomes[0].peer


def predicted(ips: dict[str, str], family: int, ports: range = PORTS) -> dict[int, str]:
    """The backend lb.h's Maglev picks for each client port, from compile's table."""
    by_ip = {ip: name for name, ip in ips.items()}
    table = backend_table([BackendRef(ipaddress.ip_address(ip), 8080, "TCP")
                           for ip in ips.values()], DEFAULT_TABLE_SIZE)
    return {port: by_ip[str(table[flow_hash(EXTERNAL[family], port, "TCP")
                                  % DEFAULT_TABLE_SIZE].address)]
            for port in ports}


@pytest.mark.parametrize("family", [4, 6])
def test_maglev_same_backend_on_every_node_and_stable_when_another_goes(
        lab: Lab, family: int, tmp_path: Path) -> None:
    state = lab.state()
    ips = pod_ips(state, family)
    expected = predicted(ips, family)
    assert len(set(expected.values())) >= 3, "the ports should spread over the backends"
    via_node1 = {port: backend_of(lab, "node1", port, family) for port in PORTS}
    via_node2 = {port: backend_of(lab, "node2", port, family) for port in PORTS}
    assert via_node1 == via_node2 == expected

    if family == 6:
        return  # removing a backend once (below, for IPv4) is enough
    gone = "web-4"
    write_manifest(tmp_path / "gone.yaml", [web(gone, "node1")])
    ok(lab.delete(tmp_path / "gone.yaml"))
    try:
        wait_backends(lab, len(WEB_PODS) - 1)
        remaining = {name: ip for name, ip in ips.items() if name != gone}
        after = predicted(remaining, family)
        kept = [p for p in PORTS if expected[p] != gone]
        moved = [p for p in kept if after[p] != expected[p]]
        # Maglev moves almost no flows of backends that stay (none for these ports).
        assert len(moved) <= 1, moved
        # The same client ports again: every flow of a remaining backend stays on it,
        # and the removed backend's flows go where the new table says.
        for port in PORTS:
            assert backend_of(lab, "node1", port, family) == after[port]
        # Fresh client ports on the other node land where the new table says.
        fresh = range(PORTS.start + 1000, PORTS.stop + 1000)
        table = predicted(remaining, family, fresh)
        assert {p: backend_of(lab, "node2", p, family) for p in fresh} == table
    finally:
        ok(lab.apply(tmp_path / "gone.yaml"))
        wait_backends(lab, len(WEB_PODS))


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("protocol", ["TCP", "UDP"])
def test_direct_server_return_keeps_the_client_address(lab: Lab, family: int,
                                                       protocol: str) -> None:
    port = 80 if protocol == "TCP" else 53
    _, outcomes = lab.probe_many("external", "nodeport/node1/lb/dsr", port, 12,
                                 protocol=protocol, family=family)
    assert all(o.result == "connected" for o in outcomes), outcomes
    assert {o.client_ip for o in outcomes} == {EXTERNAL[family]}
    remote = {o.peer for o in outcomes} & {"web-2", "web-3"}
    assert remote, "some connections should have gone to node2's backends"
    # node2 answered those itself, from node1's address: its conntrack says so, and
    # node1 keeps no reply leg for them.
    pins = names.pin_dir(lab.name, "node2")
    conntrack = Map.from_pin(f"{pins}/{ct.MAP_NAME}", ct.CtKey, ct.CtEntry)
    try:
        answers = [entry for key, entry in conntrack.lookup_batch()
                   if entry.kind == ct.CtKind.REPLY_SNAT
                   and str(key.dst.to_ip()) == EXTERNAL[family]
                   and str(entry.nat_addr.to_ip()) == NODE_IP["node1"][family]]
    finally:
        conntrack.close()
    assert answers, "node2 holds no direct-return entry naming node1's frontend"


def test_service_list_shows_frontends_and_backends(lab: Lab) -> None:
    rows = frontends(lab, "node1")
    maglev = [r for r in rows if "maglev" in r["flags"]]  # type: ignore[operator]
    assert maglev and all(r["maglev"]["slots"] == DEFAULT_TABLE_SIZE  # type: ignore[index]
                          for r in maglev)
    dsr = [r for r in rows if "dsr" in r["flags"]  # type: ignore[operator]
           and str(r["frontend"]).startswith("198.18.0.11:")
           and str(r["frontend"]).endswith("/TCP")]
    assert len(dsr) == 1, rows
    assert {b["address"] for b in dsr[0]["backends"]} == \
        set(pod_ips(lab.state(), 4).values())  # type: ignore[union-attr]
    table = ok(sluice("bpf", "lb", "list", "--lab", lab.name, "--node", "node1")).stdout
    assert "FRONTEND" in table and str(dsr[0]["frontend"]) in table
