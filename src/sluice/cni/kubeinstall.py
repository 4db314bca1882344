"""Installing sluice-cni on a Kubernetes node: the network config list from the Node.

Run by the DaemonSet's init container (deploy/daemonset.yaml)::

    python -m sluice.cni.kubeinstall --node NODE --conf-dir /host/etc/cni/net.d

It reads the node's pod CIDRs (`spec.podCIDRs`, set by the controller manager's node IPAM)
through the API and writes `10-sluice.conflist` atomically. Exit 1, with the reason, when
the Node cannot be read or has no pod CIDR yet (the kubelet restarts the init container).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from typing import Any

from sluice.agent.config import DEFAULT_CNI_STATE_DIR
from sluice.datastore.errors import DatastoreError
from sluice.datastore.kubeapi import ApiError, ApiKind, KubeApi
from sluice.datastore.kubestore import api_client_for, parse_kubernetes_url
from sluice.datastore.kubetranslate import translate
from sluice.model import Node

CONFLIST_NAME = "10-sluice.conflist"
NETWORK_NAME = "sluice"
CNI_VERSION = "1.0.0"
PLUGIN_TYPE = "sluice-cni"


def conflist(node: Node, state_dir: str = DEFAULT_CNI_STATE_DIR,
             mtu: int | None = None) -> dict[str, Any]:
    """The CNI network config list for `node` (see sluice.cni.spec for the fields)."""
    cidrs = node.spec.cidrs
    if not cidrs:
        raise ValueError(f"Node {node.name} has no spec.podCIDRs yet")
    plugin: dict[str, Any] = {"type": PLUGIN_TYPE, "stateDir": state_dir,
                              "ipam": {"ranges": [[str(cidr)] for cidr in cidrs]}}
    if mtu is not None:
        plugin["mtu"] = mtu
    return {"cniVersion": CNI_VERSION, "name": NETWORK_NAME, "plugins": [plugin]}


def read_node(url: str, name: str) -> Node:
    api = KubeApi(api_client_for(parse_kubernetes_url(url)))
    kind = ApiKind(Node)
    try:
        raw = api.request("GET", kind.object_path("", name))
    finally:
        api.close()
    translation = translate(Node, raw, kind.object_path("", name))
    if not isinstance(translation.resource, Node):
        raise ValueError("; ".join(str(problem) for problem in translation.problems))
    return translation.resource


def write_atomically(directory: str, name: str, document: dict[str, Any]) -> str:
    os.makedirs(directory, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=directory, prefix=".sluice-", suffix=".tmp")
    with os.fdopen(fd, "w") as handle:
        json.dump(document, handle, indent=2)
        os.fchmod(handle.fileno(), 0o644)
    path = os.path.join(directory, name)
    os.replace(temporary, path)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sluice.cni.kubeinstall",
                                     description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--node", required=True, help="this node's name")
    parser.add_argument("--conf-dir", required=True, help="where the runtime reads CNI configs")
    parser.add_argument("--datastore", default="kubernetes://", metavar="URL")
    parser.add_argument("--state-dir", default=DEFAULT_CNI_STATE_DIR)
    parser.add_argument("--mtu", type=int)
    args = parser.parse_args(argv)
    try:
        node = read_node(args.datastore, args.node)
        path = write_atomically(args.conf_dir, CONFLIST_NAME,
                                conflist(node, args.state_dir, args.mtu))
    except (ApiError, DatastoreError, ValueError, OSError) as err:
        print(f"sluice kubecni: {err}", file=sys.stderr)
        return 1
    print(f"wrote {path} for Node {node.name}: pod CIDRs "
          f"{', '.join(str(cidr) for cidr in node.spec.cidrs)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
