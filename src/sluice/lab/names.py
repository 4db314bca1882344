"""Every name a lab uses on the host, derived from the lab's name.

All host-visible names embed the lab name, so several labs live side by side and `down`
finds the leftovers of a lab even when its state file is gone:

    network namespaces  sl-<lab>-underlay, sl-<lab>-external, sl-<lab>-node<i>,
                        sl-<lab>-p-<8 hex>   (one per pod, hashed from namespace/name)
    bpffs pins          /sys/fs/bpf/sluice-lab-<lab>/<node>/
    cgroups             <cgroup2 root>/sluice-lab-<lab>/<node>/ (the agent),
                        .../<node>/host/ (probes and `exec` from the node),
                        .../<node>/pods/<ns>_<pod>/ (a pod's server, probes and `exec`),
                        <cgroup2 root>/sluice-lab-<lab>/{external,underlay}/
    state               /run/sluice/labs/<lab>/

Namespace names of one lab never match another lab's patterns, even when one lab name
is a prefix of another ("a" and "a-p"): `is_lab_netns` matches the whole suffix.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from sluice.lab.errors import LabError

DEFAULT_LAB = "sluice"
LAB_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,15}$")
STATE_ROOT = Path("/run/sluice/labs")
BPFFS_ROOT = Path("/sys/fs/bpf")
NETNS_PREFIX = "sl-"
POD_HASH_LEN = 8
MAX_SLUG = 200

_SUFFIX_RE = re.compile(rf"^(underlay|external|node[0-9]+|p-[0-9a-f]{{{POD_HASH_LEN}}})$")


def check_lab_name(name: str) -> str:
    """NAME if it is a valid lab name; LabError naming the rule otherwise."""
    if not LAB_NAME_RE.match(name):
        raise LabError(
            f"invalid lab name {name!r}: use 1-16 characters, a lowercase letter first, "
            "then lowercase letters, digits or '-'"
        )
    return name


def node_name(index: int) -> str:
    """The Kubernetes name of the lab's node number INDEX (1-based)."""
    return f"node{index}"


def netns_prefix(lab: str) -> str:
    return f"{NETNS_PREFIX}{lab}-"


def underlay_netns(lab: str) -> str:
    return f"{netns_prefix(lab)}underlay"


def external_netns(lab: str) -> str:
    return f"{netns_prefix(lab)}external"


def node_netns(lab: str, node: str) -> str:
    return f"{netns_prefix(lab)}{node}"


def pod_hash(namespace: str, pod: str) -> str:
    return hashlib.sha256(f"{namespace}/{pod}".encode()).hexdigest()[:POD_HASH_LEN]


def pod_netns(lab: str, namespace: str, pod: str) -> str:
    return f"{netns_prefix(lab)}p-{pod_hash(namespace, pod)}"


def container_id(lab: str, namespace: str, pod: str) -> str:
    """The CNI_CONTAINERID of a pod: stable, so a repeated ADD or DEL finds it again."""
    return f"{lab}-{pod_hash(namespace, pod)}"


def is_lab_netns(lab: str, netns_name: str) -> bool:
    """Whether NETNS_NAME is one of the namespaces lab LAB creates (and no other lab's)."""
    prefix = netns_prefix(lab)
    return netns_name.startswith(prefix) and bool(_SUFFIX_RE.match(netns_name[len(prefix):]))


def pod_slug(namespace: str, pod: str) -> str:
    """`<namespace>_<pod>`, shortened with a hash when too long for a file name."""
    slug = f"{namespace}_{pod}"
    if len(slug) <= MAX_SLUG:
        return slug
    return f"{slug[:MAX_SLUG - POD_HASH_LEN - 1]}-{pod_hash(namespace, pod)}"


def state_dir(lab: str) -> Path:
    return STATE_ROOT / lab


def pin_root(lab: str) -> Path:
    return BPFFS_ROOT / f"sluice-lab-{lab}"


def pin_dir(lab: str, node: str) -> Path:
    return pin_root(lab) / node


def cgroup_root(lab: str) -> str:
    """The lab's cgroup, relative to the cgroup2 mount."""
    return f"sluice-lab-{lab}"


def node_cgroup(lab: str, node: str) -> str:
    return f"{cgroup_root(lab)}/{node}"


def node_host_cgroup(lab: str, node: str) -> str:
    """The cgroup of probes and commands run on a node's host (not in a pod): a leaf
    beside `pods/`, below the node's cgroup where the agent runs and its socket hooks
    are attached."""
    return f"{node_cgroup(lab, node)}/host"


def pod_cgroup(lab: str, node: str, namespace: str, pod: str) -> str:
    return f"{node_cgroup(lab, node)}/pods/{pod_slug(namespace, pod)}"


def outside_cgroup(lab: str, place: str) -> str:
    """The cgroup of commands run in the external or underlay namespace."""
    return f"{cgroup_root(lab)}/{place}"
