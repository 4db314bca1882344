"""A mini cluster for agent tests: node namespaces on a veth underlay, a file:// datastore
with their Node objects, pods wired by `sluice-cni` run as a runtime runs it, and real
`sluice agent` processes, each started with --netns of its node's namespace.

Everything has a unique name and is removed by `MiniCluster.close`, also after a failure;
only the agent processes started here are ever signalled.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sluice import netlink, netns
from sluice.datapath import endpoints as ep
from sluice.datapath import routing as rt
from sluice.loader import Direction, Map, tcx_program_ids
from tests.cni.conftest import PATH, PLUGIN, Outcome
from tests.conftest import BPFFS, Side, unique

AGENT_PORT = 9962
POD_MTU = 1450
NODE_PLAN = (
    # name, uplink, InternalIPs, pod CIDRs
    ("n1", "uplink0", ("198.18.0.11", "fd00:ff::11"), ("198.18.16.0/24", "fd00:10:1::/64")),
    ("n2", "uplink1", ("198.18.0.12", "fd00:ff::12"), ("198.18.17.0/24", "fd00:10:2::/64")),
)
STOP_TIMEOUT = 15.0


def wait_for(condition: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05,
             what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


@dataclass
class Agent:
    node: ClusterNode
    proc: subprocess.Popen[bytes]
    log: Path

    def get(self, path: str, timeout: float = 2.0) -> tuple[int, str]:
        with netns.entered(self.node.ns):
            conn = http.client.HTTPConnection("127.0.0.1", AGENT_PORT, timeout=timeout)
            try:
                conn.request("GET", path)
                response = conn.getresponse()
                return response.status, response.read().decode()
            finally:
                conn.close()

    def try_get(self, path: str) -> tuple[int, str] | None:
        try:
            return self.get(path)
        except OSError:
            return None

    def state(self) -> dict[str, Any]:
        status, body = self.get("/state")
        assert status == 200, body
        doc: dict[str, Any] = json.loads(body)
        return doc

    def metrics(self) -> str:
        status, body = self.get("/metrics")
        assert status == 200, body
        return body

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_healthy(self, timeout: float = 20.0) -> None:
        def healthy() -> bool:
            assert self.alive(), f"agent exited ({self.proc.returncode}):\n{self.log_text()}"
            reply = self.try_get("/healthz")
            return reply is not None and reply[0] == 200
        try:
            wait_for(healthy, timeout, 0.1, f"{self.node.name}'s agent to be healthy")
        except AssertionError as err:
            raise AssertionError(f"{err}\n{self.log_text()}") from None

    def wait_reconciled(self, check: Callable[[dict[str, Any]], bool], timeout: float = 10.0,
                        what: str = "the agent's state") -> dict[str, Any]:
        """Wait until /state satisfies CHECK; returns that state."""
        found: dict[str, Any] = {}

        def matched() -> bool:
            nonlocal found
            found = self.state()
            return check(found)
        try:
            wait_for(matched, timeout, 0.1, what)
        except AssertionError as err:
            raise AssertionError(f"{err}; last state: {json.dumps(found)[:3000]}\n"
                                 f"{self.log_text()[-3000:]}") from None
        return found

    def stop(self) -> int:
        """SIGTERM, then wait; returns the exit status."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
            raise AssertionError(f"agent ignored SIGTERM:\n{self.log_text()}") from None


@dataclass
class Pod:
    node: ClusterNode
    container_id: str
    ns: str
    host_ifname: str
    side: Side


@dataclass
class ClusterNode:
    name: str
    ns: str
    uplink: str
    internal_ips: tuple[str, str]
    pod_cidrs: tuple[str, str]
    state_dir: Path
    pin_dir: str
    pods: list[Pod] = field(default_factory=list)

    @property
    def ns_path(self) -> str:
        return netns.netns_path(self.ns)

    def node_object(self) -> dict[str, Any]:
        return {
            "apiVersion": "v1", "kind": "Node", "metadata": {"name": self.name},
            "spec": {"podCIDRs": list(self.pod_cidrs)},
            "status": {"addresses": [{"type": "InternalIP", "address": ip}
                                     for ip in self.internal_ips]},
        }

    # --- the CNI plugin, run as a runtime runs it -------------------------------------

    def cni_config(self) -> dict[str, Any]:
        return {"cniVersion": "1.0.0", "name": "sluice", "type": "sluice-cni", "mtu": POD_MTU,
                "stateDir": str(self.state_dir),
                "ipam": {"ranges": [[self.pod_cidrs[0]], [self.pod_cidrs[1]]]}}

    def cni(self, command: str, container_id: str, pod_ns: str | None) -> Outcome:
        env = {"PATH": PATH, "CNI_COMMAND": command, "CNI_PATH": "/opt/cni/bin",
               "CNI_CONTAINERID": container_id, "CNI_IFNAME": "eth0",
               "CNI_ARGS": f"K8S_POD_NAMESPACE=default;K8S_POD_NAME={container_id}"}
        if pod_ns is not None:
            env["CNI_NETNS"] = netns.netns_path(pod_ns)
        proc = subprocess.run(["nsenter", f"--net={self.ns_path}", str(PLUGIN)],
                              input=json.dumps(self.cni_config()).encode(), env=env,
                              capture_output=True, timeout=60, check=False)
        return Outcome(proc.returncode, proc.stdout.decode(), proc.stderr.decode())

    def add_pod(self, name: str) -> Pod:
        pod_ns = unique(f"sl-tap{name}")
        netns.create(pod_ns)
        container_id = unique(f"c{name}")
        try:
            result = self.cni("ADD", container_id, pod_ns).ok()
        except BaseException:
            netns.remove(pod_ns)
            raise
        ips = {ipaddress.ip_interface(ip["address"]).version: ipaddress.ip_interface(ip["address"])
               for ip in result["ips"]}
        pod = Pod(self, container_id, pod_ns, result["interfaces"][0]["name"],
                  Side(pod_ns, "eth0", ipaddress.IPv4Address(ips[4].ip),
                       ipaddress.IPv6Address(ips[6].ip)))
        self.pods.append(pod)
        return pod

    def delete_pod(self, pod: Pod) -> None:
        self.cni("DEL", pod.container_id, pod.ns).ok()
        netns.remove(pod.ns)
        self.pods.remove(pod)

    # --- what the agent made -----------------------------------------------------------

    def endpoints_map(self) -> dict[str, ep.EndpointInfo]:
        found = Map.from_pin(f"{self.pin_dir}/{ep.MAP_NAME}", ep.EndpointKey, ep.EndpointInfo)
        try:
            return {str(key.to_ip()): value for key, value in found.items()}
        finally:
            found.close()

    def routes_map(self) -> dict[str, rt.RouteEntry]:
        found = Map.from_pin(f"{self.pin_dir}/{rt.MAP_NAME}", rt.RouteKey, rt.RouteEntry)
        try:
            return {str(key.network()): value for key, value in found.items()}
        finally:
            found.close()

    def link_pins(self) -> set[str]:
        directory = Path(self.pin_dir) / "links"
        return {p.name for p in directory.iterdir()} if directory.is_dir() else set()

    def tcx_programs(self, ifname: str, direction: Direction = Direction.INGRESS) -> list[int]:
        index = netlink.ifindex(self.ns, ifname)
        with netns.entered(self.ns):
            return tcx_program_ids(index, direction)


@dataclass
class MiniCluster:
    root: Path
    datastore: Path
    nodes: list[ClusterNode]
    agents: list[Agent] = field(default_factory=list)
    extra_namespaces: list[str] = field(default_factory=list)

    @classmethod
    def create(cls, root: Path, node_count: int = 2) -> MiniCluster:
        cluster = cls(root, root / "datastore", [])
        cluster.datastore.mkdir(parents=True)
        try:
            for name, uplink, ips, cidrs in NODE_PLAN[:node_count]:
                node = ClusterNode(name, unique(f"sl-tan{name[-1]}"), uplink, ips, cidrs,
                                root / f"cni-{name}", os.path.join(BPFFS, unique("sluice-test")))
                cluster.nodes.append(node)
                netns.create(node.ns)
                # IPv6 addresses must be usable at once (neighbour solicitations of the
                # underlay are sent from link-local addresses).
                netlink.set_sysctl(node.ns, "net.ipv6.conf.default.accept_dad", "0")
                netlink.set_sysctl(node.ns, "net.ipv6.conf.all.accept_dad", "0")
            cluster._underlay()
        except BaseException:
            cluster.close()
            raise
        return cluster

    def _underlay(self) -> None:
        first = self.nodes[0]
        if len(self.nodes) == 1:
            # A lone node still has an uplink holding its InternalIPs; the far end
            # stays in a namespace of its own.
            far = unique("sl-tanx")
            self.extra_namespaces.append(far)
            netns.create(far)
            netlink.create_veth(first.ns, first.uplink, far, "far0")
            netlink.configure(far, "far0", [])
        else:
            second = self.nodes[1]
            netlink.create_veth(first.ns, first.uplink, second.ns, second.uplink)
        for node in self.nodes:
            netlink.configure(node.ns, node.uplink,
                              [f"{node.internal_ips[0]}/24", f"{node.internal_ips[1]}/64"])

    def node(self, name: str) -> ClusterNode:
        return next(n for n in self.nodes if n.name == name)

    def publish(self, *nodes: ClusterNode) -> None:
        """Write the Node objects of NODES (all when none given) to the datastore."""
        for node in nodes or tuple(self.nodes):
            self.write(f"node.{node.name}.yaml", node.node_object())

    def write(self, file_name: str, doc: dict[str, Any] | str) -> None:
        text = doc if isinstance(doc, str) else yaml.safe_dump(doc)
        tmp = self.datastore / f".{file_name}.tmp"
        tmp.write_text(text)
        tmp.rename(self.datastore / file_name)

    def start_agent(self, node: ClusterNode, *, dataplane: str = "bpf", routing: str = "vxlan",
                    wait: bool = True, extra: tuple[str, ...] = ()) -> Agent:
        log = self.root / f"agent-{node.name}-{len(self.agents)}.log"
        argv = [sys.executable, "-m", "sluice", "agent", "--node", node.name,
                "--datastore", f"file://{self.datastore}", "--dataplane", dataplane,
                "--routing", routing, "--netns", node.ns, "--cni-state-dir", str(node.state_dir),
                "--pin-dir", node.pin_dir, "--listen", f"127.0.0.1:{AGENT_PORT}",
                "--uplink", node.uplink, "--resync-interval", "2", "--log-level", "debug",
                *extra]
        with open(log, "wb") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL)
        agent = Agent(node, proc, log)
        self.agents.append(agent)
        if wait:
            agent.wait_healthy()
        return agent

    def close(self) -> None:
        for agent in self.agents:
            if agent.alive():
                agent.proc.send_signal(signal.SIGTERM)
        for agent in self.agents:
            try:
                agent.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                agent.proc.kill()
                agent.proc.wait(timeout=5)
        for node in self.nodes:
            for pod in node.pods:
                netns.remove(pod.ns)
            netns.remove(node.ns)
            shutil.rmtree(node.pin_dir, ignore_errors=True)
        for name in self.extra_namespaces:
            netns.remove(name)
