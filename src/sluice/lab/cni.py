"""Running `sluice-cni` for a pod exactly as a container runtime does.

The plugin runs in the node's namespace (`nsenter --net=`, which unlike `ip netns exec`
leaves /sys and its bpffs pins alone), with CNI_* variables in the environment and the
network config on stdin; it prints a result, or CNI error JSON, on stdout.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sluice import netns
from sluice.lab.errors import LabError
from sluice.lab.plan import LabOptions, NodePlan

PLUGIN_NAME = "sluice-cni"
CNI_VERSION = "1.0.0"
NETWORK_NAME = "sluice"
IFNAME = "eth0"
TIMEOUT = 60.0
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def plugin_path() -> Path:
    """The plugin installed beside the running interpreter (the venv's console script)."""
    return Path(sys.executable).with_name(PLUGIN_NAME)


@dataclass(frozen=True)
class CniCall:
    """One pod's attachment on one node: everything ADD and DEL need."""

    node: NodePlan
    state_dir: Path
    options: LabOptions
    container_id: str
    pod_netns: str
    pod_namespace: str
    pod_name: str

    @property
    def where(self) -> str:
        return f"pod {self.pod_namespace}/{self.pod_name} on {self.node.name}"

    def config(self) -> dict[str, Any]:
        return {
            "cniVersion": CNI_VERSION,
            "name": NETWORK_NAME,
            "type": PLUGIN_NAME,
            "stateDir": str(self.state_dir),
            "mtu": self.options.pod_mtu,
            "ipam": {"ranges": [[cidr] for cidr in self.node.pod_cidrs]},
        }

    def env(self, command: str) -> dict[str, str]:
        return {
            "PATH": PATH,
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": self.container_id,
            "CNI_NETNS": netns.netns_path(self.pod_netns),
            "CNI_IFNAME": IFNAME,
            "CNI_PATH": str(plugin_path().parent),
            "CNI_ARGS": (
                f"IgnoreUnknown=1;K8S_POD_NAMESPACE={self.pod_namespace};"
                f"K8S_POD_NAME={self.pod_name};K8S_POD_INFRA_CONTAINER_ID={self.container_id}"
            ),
        }

    def run(self, command: str) -> dict[str, Any] | None:
        """Run COMMAND; the parsed stdout (None if empty), or LabError with the CNI error."""
        plugin = plugin_path()
        if not plugin.exists():
            raise LabError(f"{plugin} is missing: install sluice (pip install -e .)")
        argv = ["nsenter", f"--net={netns.netns_path(self.node.netns)}", "--", str(plugin)]
        try:
            proc = subprocess.run(argv, input=json.dumps(self.config()).encode(),
                                  env=self.env(command), capture_output=True,
                                  timeout=TIMEOUT, check=False)
        except subprocess.TimeoutExpired:
            raise LabError(f"sluice-cni {command} for {self.where} took over "
                           f"{TIMEOUT:.0f}s") from None
        out = proc.stdout.decode(errors="replace").strip()
        doc = _json(out)
        if proc.returncode != 0:
            raise LabError(f"sluice-cni {command} for {self.where} failed: "
                           f"{_describe_error(doc, out, proc.stderr.decode(errors='replace'))}")
        return doc

    def add(self) -> list[str]:
        """ADD; the pod's addresses (without prefix length), in the order configured."""
        doc = self.run("ADD")
        if doc is None or not isinstance(doc.get("ips"), list):
            raise LabError(f"sluice-cni ADD for {self.where} printed no result with ips")
        return [str(entry["address"]).split("/")[0] for entry in doc["ips"]]

    def delete(self) -> None:
        self.run("DEL")


def _json(text: str) -> dict[str, Any] | None:
    if not text:
        return None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError:
        return None
    return doc if isinstance(doc, dict) else None


def _describe_error(doc: dict[str, Any] | None, stdout: str, stderr: str) -> str:
    if doc is not None and "code" in doc:
        text = f"CNI error {doc['code']}: {doc.get('msg', '')}"
        if doc.get("details"):
            text += f" ({doc['details']})"
        return text
    return (stdout or stderr or "no output").strip().splitlines()[-1]
