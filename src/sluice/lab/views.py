"""`lab get`: the lab's nodes, pods and services as rows (JSON) or a table."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sluice.compile.services import node_port_allocation
from sluice.datastore import open_datastore
from sluice.lab import agents, procs
from sluice.lab.state import LabState
from sluice.lab.targets import load_balancer_ips
from sluice.model import Service
from sluice.model.service import ServicePort

KINDS = ("nodes", "pods", "services")


def node_rows(state: LabState) -> list[dict[str, Any]]:
    rows = []
    for node in state.plan.nodes:
        record = state.agents.get(node.name)
        running = record is not None and procs.is_running(record)
        status = "stopped"
        if running:
            status = "ready" if agents.healthz(node, timeout=0.5) == 200 else "unhealthy"
        rows.append({
            "name": node.name,
            "netns": node.netns,
            "internalIPs": list(node.addresses),
            "podCIDRs": list(node.pod_cidrs),
            "agent": {"pid": record.pid if record else None, "status": status,
                      "log": record.log if record else None},
            "pods": sum(1 for pod in state.pods.values() if pod.node == node.name),
        })
    return rows


def pod_rows(state: LabState) -> list[dict[str, Any]]:
    rows = []
    for key in sorted(state.pods):
        pod = state.pods[key]
        running = pod.server is not None and procs.is_running(pod.server)
        rows.append({
            "namespace": pod.namespace,
            "name": pod.name,
            "node": pod.node,
            "hostNetwork": pod.host_network,
            "ips": list(pod.ips),
            "ports": [str(port) for port in pod.ports],
            "netns": pod.netns,
            "status": "Running" if running else "ServerExited",
            "serverPid": pod.server.pid if pod.server else None,
        })
    return rows


def service_rows(state: LabState) -> list[dict[str, Any]]:
    with open_datastore(state.paths.datastore_url) as datastore:
        services = datastore.snapshot().of_kind(Service)
    node_ports = node_port_allocation(services)
    return [
        {
            "namespace": service.namespace,
            "name": service.name,
            "type": service.spec.type,
            "clusterIPs": [str(ip) for ip in service.spec.cluster_ip_addresses],
            "loadBalancerIPs": load_balancer_ips(service),
            "ports": [_port(p, node_ports.get((service.namespace, service.name, index)))
                      for index, p in enumerate(service.spec.ports)],
            "selector": dict(service.spec.selector),
        }
        for service in services
    ]


def _port(port: ServicePort, node_port: int | None) -> str:
    """`80/TCP`, with the node port `80:31234/TCP` and a targetPort `80/TCP->http`."""
    text = f"{port.port}" + (f":{node_port}" if node_port is not None else "")
    text += f"/{port.protocol}"
    return text + (f"->{port.target_port}" if port.target_port is not None else "")


ROWS = {"nodes": node_rows, "pods": pod_rows, "services": service_rows}


def _cell(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(str(item) for item in value) or "-"
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items()) or "-"
    if value is None or value == "":
        return "-"
    return str(value)


COLUMNS: dict[str, Sequence[tuple[str, str]]] = {
    "nodes": (("NAME", "name"), ("AGENT", "agent"), ("INTERNAL-IPS", "internalIPs"),
              ("POD-CIDRS", "podCIDRs"), ("PODS", "pods"), ("NETNS", "netns")),
    "pods": (("NAMESPACE", "namespace"), ("NAME", "name"), ("STATUS", "status"),
             ("NODE", "node"), ("IPS", "ips"), ("PORTS", "ports"), ("NETNS", "netns")),
    "services": (("NAMESPACE", "namespace"), ("NAME", "name"), ("TYPE", "type"),
                 ("CLUSTER-IPS", "clusterIPs"), ("LOAD-BALANCER-IPS", "loadBalancerIPs"),
                 ("PORTS", "ports"), ("SELECTOR", "selector")),
}


def table(kind: str, rows: list[dict[str, Any]]) -> str:
    columns = COLUMNS[kind]
    cells = [[title for title, _ in columns]]
    for row in rows:
        line = []
        for _, field in columns:
            value = row[field]
            if field == "agent":
                value = f"{value['status']} (pid {value['pid']})" if value["pid"] else "-"
            line.append(_cell(value))
        cells.append(line)
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
                     for line in cells)
