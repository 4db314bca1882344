"""deploy/: the CRDs match the model's kinds, the DaemonSet runs a command line the agent
accepts with the rights the Kubernetes datastore needs, and its CNI config is valid."""

from __future__ import annotations

import json
import re
import types
from pathlib import Path
from typing import Annotated, Any, Union, get_args, get_origin

import pytest
import yaml
from pydantic import BaseModel

from sluice.agent.config import DEFAULT_CNI_STATE_DIR
from sluice.cli.main import build_parser
from sluice.cni.kubeinstall import conflist
from sluice.cni.kubeinstall import main as kubecni_main
from sluice.cni.spec import parse_config
from sluice.datastore.kubeapi import ApiKind
from sluice.datastore.kubestore import KubeLocation, parse_kubernetes_url
from sluice.datastore.kubetranslate import translate
from sluice.model import RESOURCE_CLASSES, Node, Resource

DEPLOY = Path(__file__).parents[2] / "deploy"
RECORDED = Path(__file__).parent / "k8s"
SLUICE_KINDS = [cls for cls in RESOURCE_CLASSES if cls.API_VERSION.startswith("sluice.io/")]


def documents() -> list[dict[str, Any]]:
    found = []
    for path in sorted(DEPLOY.rglob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            assert isinstance(document, dict), path
            assert document.get("apiVersion") and document.get("kind"), path
            assert document["metadata"]["name"], path
            found.append(document)
    return found


def of_kind(kind: str) -> list[dict[str, Any]]:
    return [document for document in documents() if document["kind"] == kind]


def daemonset() -> dict[str, Any]:
    [found] = of_kind("DaemonSet")
    return found


def model_fields(annotation: Any) -> Any:
    """The wire field names of a model type, nested; None for a scalar."""
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
        elif origin in (Union, types.UnionType):
            members = [arg for arg in get_args(annotation) if arg is not type(None)]
            if len(members) != 1:
                return None
            annotation = members[0]
        elif origin in (tuple, list):
            annotation = get_args(annotation)[0]
        else:
            break
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return {info.alias or name: model_fields(info.annotation)
                for name, info in annotation.model_fields.items()}
    return None


def schema_fields(schema: dict[str, Any]) -> Any:
    if schema.get("type") == "array":
        return schema_fields(schema["items"])
    if schema.get("type") == "object" and "properties" in schema:
        return {name: schema_fields(sub) for name, sub in schema["properties"].items()}
    return None


@pytest.mark.parametrize("cls", SLUICE_KINDS, ids=lambda cls: cls.KIND)
def test_each_sluice_kind_has_a_crd_matching_the_model(cls: type[Resource]) -> None:
    kind = ApiKind(cls)
    [crd] = [crd for crd in of_kind("CustomResourceDefinition")
             if crd["spec"]["names"]["kind"] == cls.KIND]
    spec = crd["spec"]
    group, version = cls.API_VERSION.split("/")
    assert crd["metadata"]["name"] == f"{kind.plural}.{group}"
    assert spec["group"] == group and spec["names"]["plural"] == kind.plural
    assert spec["scope"] == ("Namespaced" if cls.NAMESPACED else "Cluster")
    [served] = spec["versions"]
    assert served["name"] == version and served["served"] and served["storage"]
    schema = served["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert schema_fields(schema) == model_fields(cls.model_fields["spec"].annotation)


def test_crds_are_exactly_the_sluice_kinds() -> None:
    kinds = sorted(crd["spec"]["names"]["kind"] for crd in of_kind("CustomResourceDefinition"))
    assert kinds == sorted(cls.KIND for cls in SLUICE_KINDS)


def test_agent_command_line_parses_with_the_agent_parser() -> None:
    pod = daemonset()["spec"]["template"]["spec"]
    [agent] = pod["containers"]
    env = {entry["name"]: entry["valueFrom"]["fieldRef"]["fieldPath"] for entry in agent["env"]}
    assert env == {"NODE_NAME": "spec.nodeName"}
    argv = [re.sub(r"\$\(NODE_NAME\)", "n1", arg) for arg in agent["command"]]
    assert argv[0] == "sluice"
    args = build_parser().parse_args(argv[1:])
    assert args.command == "agent" and args.node == "n1"
    assert parse_kubernetes_url(args.datastore) == KubeLocation()
    assert args.allow_host_netns and args.cni_state_dir == DEFAULT_CNI_STATE_DIR
    assert pod["hostNetwork"] is True and agent["securityContext"]["privileged"] is True
    mounts = {mount["mountPath"] for mount in agent["volumeMounts"]}
    assert {"/sys/fs/bpf", "/sys/fs/cgroup", "/run/sluice"} <= mounts
    port = int(args.listen.rpartition(":")[2])
    assert agent["livenessProbe"]["httpGet"]["port"] == port


def test_cluster_role_lets_the_datastore_list_and_watch_every_kind() -> None:
    [role] = of_kind("ClusterRole")
    granted = {(group, resource)
               for rule in role["rules"] if {"list", "watch"} <= set(rule["verbs"])
               for group in rule["apiGroups"] for resource in rule["resources"]}
    for cls in RESOURCE_CLASSES:
        group = cls.API_VERSION.rpartition("/")[0]
        assert (group, ApiKind(cls).plural) in granted, cls.KIND
    [binding] = of_kind("ClusterRoleBinding")
    [account] = of_kind("ServiceAccount")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"][0]["name"] == account["metadata"]["name"]
    pod = daemonset()["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == account["metadata"]["name"]


def test_init_container_installs_plugin_and_config_into_host_paths() -> None:
    pod = daemonset()["spec"]["template"]["spec"]
    [init] = pod["initContainers"]
    script = init["command"][-1]
    assert "/host/opt/cni/bin/sluice-cni" in script and "-m sluice.cni.kubeinstall" in script
    host_paths = {volume["name"]: volume["hostPath"]["path"] for volume in pod["volumes"]}
    mounted = {mount["mountPath"]: host_paths[mount["name"]] for mount in init["volumeMounts"]}
    assert mounted["/host/opt/cni/bin"] == "/opt/cni/bin"
    assert mounted["/host/etc/cni/net.d"] == "/etc/cni/net.d"


def test_conflist_from_a_recorded_node_is_a_config_sluice_cni_accepts(tmp_path: Path) -> None:
    raw = json.loads((RECORDED / "nodes.json").read_text())["items"][0]
    node = translate(Node, raw, "nodes/n1").resource
    assert isinstance(node, Node)
    document = conflist(node)
    [plugin] = document["plugins"]
    config = parse_config({"cniVersion": document["cniVersion"], "name": document["name"],
                           **plugin})
    assert config.state_dir == DEFAULT_CNI_STATE_DIR
    assert [str(cidr) for group in config.ranges.families() for cidr in group] == [
        "198.18.16.0/24", "fd00:10:1::/64"]


def test_kubecni_fails_clearly_without_an_apiserver(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    code = kubecni_main(["--node", "n1", "--conf-dir", str(tmp_path),
                         "--datastore", f"kubernetes://?kubeconfig={tmp_path}/missing"])
    assert code == 1 and "kubeconfig" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
