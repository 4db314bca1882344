"""Config, environment and result handling of the CNI protocol (pure, no root)."""

from __future__ import annotations

import copy
import ipaddress
from typing import Any

import pytest

from sluice.cni import spec
from sluice.cni.spec import Attachment, CniError, Code

BASE: dict[str, Any] = {
    "cniVersion": "1.0.0",
    "name": "sluice",
    "type": "sluice-cni",
    "mtu": 1450,
    "stateDir": "/run/sluice/node-a",
    "ipam": {"ranges": [["198.18.16.0/24"], ["fd00:10:1::/64"]]},
}


def config(**changes: Any) -> dict[str, Any]:
    doc = copy.deepcopy(BASE)
    for key, value in changes.items():
        if value is None:
            doc.pop(key, None)
        else:
            doc[key] = value
    return doc


def refused(doc: dict[str, Any]) -> CniError:
    with pytest.raises(CniError) as caught:
        spec.parse_config(doc)
    return caught.value


def test_a_full_config() -> None:
    conf = spec.parse_config(config(runtimeConfig={"portMappings": []}, args={"x": 1},
                                    capabilities={"portMappings": True}))
    assert (conf.cni_version, conf.name, conf.type) == ("1.0.0", "sluice", "sluice-cni")
    assert (conf.mtu, conf.state_dir, conf.host_if_prefix) == (1450, "/run/sluice/node-a", "sl")
    assert conf.ranges.v4 == (ipaddress.IPv4Network("198.18.16.0/24"),)
    assert conf.ranges.v6 == (ipaddress.IPv6Network("fd00:10:1::/64"),)
    assert conf.ranges.families() == (conf.ranges.v4, conf.ranges.v6)
    assert conf.prev_result is None and conf.valid_attachments is None


def test_defaults_and_ordering() -> None:
    conf = spec.parse_config(config(mtu=None, ipam={"ranges": [["fd00:10:1::/64"],
                                                               ["198.18.16.0/24"]]}))
    assert conf.mtu == spec.DEFAULT_MTU
    assert conf.ranges.families()[0] == conf.ranges.v4


def test_several_ranges_of_one_family_keep_their_order() -> None:
    conf = spec.parse_config(config(ipam={"ranges": [["198.18.17.0/24", "198.18.16.0/24"]],
                                          "type": "sluice"}))
    assert [str(n) for n in conf.ranges.v4] == ["198.18.17.0/24", "198.18.16.0/24"]
    assert conf.ranges.v6 == ()


@pytest.mark.parametrize(("changes", "code", "mentions"), [
    ({"cniVersion": None}, Code.INVALID_CONFIG, "cniVersion"),
    ({"cniVersion": "0.3.1"}, Code.INCOMPATIBLE_VERSION, "0.3.1"),
    ({"cniVersion": "2.0.0"}, Code.INCOMPATIBLE_VERSION, "2.0.0"),
    ({"name": None}, Code.INVALID_CONFIG, "name"),
    ({"name": "-bad"}, Code.INVALID_CONFIG, "name"),
    ({"type": 3}, Code.INVALID_CONFIG, "type"),
    ({"stateDir": None}, Code.INVALID_CONFIG, "stateDir"),
    ({"stateDir": "relative/dir"}, Code.INVALID_CONFIG, "stateDir"),
    ({"hostIfPrefix": "abcde"}, Code.INVALID_CONFIG, "hostIfPrefix"),
    ({"hostIfPrefix": "a/b"}, Code.INVALID_CONFIG, "hostIfPrefix"),
    ({"mtu": 575}, Code.INVALID_CONFIG, "mtu"),
    ({"mtu": 65536}, Code.INVALID_CONFIG, "mtu"),
    ({"mtu": True}, Code.INVALID_CONFIG, "mtu"),
    ({"mtu": 1200}, Code.INVALID_CONFIG, "minimum for IPv6"),
    ({"ipam": None}, Code.INVALID_CONFIG, "ipam"),
    ({"ipam": []}, Code.INVALID_CONFIG, "ipam"),
    ({"ipam": {}}, Code.INVALID_CONFIG, "ipam.ranges"),
    ({"ipam": {"ranges": []}}, Code.INVALID_CONFIG, "ipam.ranges"),
    ({"ipam": {"ranges": "198.18.16.0/24"}}, Code.INVALID_CONFIG, "ipam.ranges"),
    ({"ipam": {"ranges": [[]]}}, Code.INVALID_CONFIG, "ipam.ranges[0]"),
    ({"ipam": {"ranges": [["198.18.16.0/24"], ["198.18.17.0/24"]]}}, Code.INVALID_CONFIG,
     "ipam.ranges[1]"),
    ({"ipam": {"ranges": [["198.18.16.0/24", "fd00::/64"]]}}, Code.INVALID_CONFIG, "mixes"),
    ({"ipam": {"ranges": [["198.18.16.0/24", "198.18.16.128/25"]]}}, Code.INVALID_CONFIG,
     "overlaps"),
    ({"ipam": {"ranges": [["198.18.16.1/24"]]}}, Code.INVALID_CONFIG, "host bits"),
    ({"ipam": {"ranges": [["198.18.16.0"]]}}, Code.INVALID_CONFIG, "no prefix length"),
    ({"ipam": {"ranges": [["198.18.16.0/31"]]}}, Code.INVALID_CONFIG, "too small"),
    ({"ipam": {"ranges": [["fd00::/127"]]}}, Code.INVALID_CONFIG, "too small"),
    ({"ipam": {"ranges": [[17]]}}, Code.INVALID_CONFIG, "ipam.ranges[0][0]"),
    ({"ipam": {"ranges": [["a"], ["b"], ["c"]]}}, Code.INVALID_CONFIG, "at most two"),
    ({"ipam": {"ranges": [["198.18.16.0/24"]], "subnet": "x"}}, Code.UNSUPPORTED_FIELD,
     "ipam.subnet"),
    ({"prevResult": []}, Code.INVALID_CONFIG, "prevResult"),
    ({spec.VALID_ATTACHMENTS_KEY: {}}, Code.INVALID_CONFIG, spec.VALID_ATTACHMENTS_KEY),
    ({spec.VALID_ATTACHMENTS_KEY: [{"containerID": "a"}]}, Code.INVALID_CONFIG,
     f"{spec.VALID_ATTACHMENTS_KEY}[0]"),
])
def test_bad_configs_name_the_field(changes: dict[str, Any], code: Code, mentions: str) -> None:
    error = refused(config(**changes))
    assert error.code == code
    assert mentions in error.msg


def test_small_but_usable_ranges_and_ipv4_only_small_mtu() -> None:
    conf = spec.parse_config(config(mtu=576, ipam={"ranges": [["198.18.16.0/30"]]}))
    assert conf.mtu == 576
    assert spec.parse_config(config(ipam={"ranges": [["fd00::/126"]]})).ranges.v6


def test_valid_attachments() -> None:
    conf = spec.parse_config(config(**{spec.VALID_ATTACHMENTS_KEY: [
        {"containerID": "a", "ifname": "eth0"}, {"containerID": "b", "ifname": "net1"}]}))
    assert conf.valid_attachments == frozenset({Attachment("a", "eth0"), Attachment("b", "net1")})


def test_decode() -> None:
    assert spec.decode(b'{"a": 1}') == {"a": 1}
    for bad in (b"", b"{", b"[]", b"\xff"):
        with pytest.raises(CniError) as caught:
            spec.decode(bad)
        assert caught.value.code == Code.DECODE_FAILURE


def test_version_info() -> None:
    assert spec.version_info(b'{"cniVersion": "0.4.0"}') == {
        "cniVersion": "0.4.0", "supportedVersions": ["0.4.0", "1.0.0", "1.1.0"]}
    assert spec.version_info(b"")["cniVersion"] == spec.LATEST_VERSION
    assert spec.requested_version(b'{"cniVersion": "9.9.9"}') == spec.LATEST_VERSION


def test_cni_args() -> None:
    assert spec.parse_cni_args("") == {}
    assert spec.parse_cni_args("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;"
                               "K8S_POD_INFRA_CONTAINER_ID=abc;EMPTY=") == {
        "IgnoreUnknown": "1", "K8S_POD_NAMESPACE": "default", "K8S_POD_NAME": "web",
        "K8S_POD_INFRA_CONTAINER_ID": "abc", "EMPTY": ""}
    for bad in ("K8S_POD_NAME", "=x"):
        with pytest.raises(CniError) as caught:
            spec.parse_cni_args(bad)
        assert caught.value.code == Code.INVALID_ENVIRONMENT


FULL_ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "abc.1_2-3", "CNI_NETNS": "/run/netns/x",
            "CNI_IFNAME": "eth0", "CNI_ARGS": "K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p"}
ALL = ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME")


def test_env() -> None:
    env = spec.parse_env(FULL_ENV, need=ALL)
    assert env.attachment == Attachment("abc.1_2-3", "eth0")
    assert (env.netns, env.pod_namespace, env.pod_name) == ("/run/netns/x", "ns", "p")
    assert spec.parse_env({"CNI_COMMAND": "STATUS"}, need=()).container_id == ""


@pytest.mark.parametrize(("changes", "mentions"), [
    ({"CNI_CONTAINERID": ""}, "CNI_CONTAINERID is required"),
    ({"CNI_NETNS": ""}, "CNI_NETNS is required"),
    ({"CNI_IFNAME": ""}, "CNI_IFNAME is required"),
    ({"CNI_CONTAINERID": "_x"}, "CNI_CONTAINERID"),
    ({"CNI_CONTAINERID": "a/b"}, "CNI_CONTAINERID"),
    ({"CNI_NETNS": "relative"}, "CNI_NETNS"),
    ({"CNI_IFNAME": "x" * 16}, "CNI_IFNAME"),
    ({"CNI_IFNAME": "."}, "CNI_IFNAME"),
    ({"CNI_IFNAME": "a:b"}, "CNI_IFNAME"),
    ({"CNI_IFNAME": "a\tb"}, "CNI_IFNAME"),
    ({"CNI_ARGS": "nope"}, "CNI_ARGS"),
])
def test_bad_env(changes: dict[str, str], mentions: str) -> None:
    with pytest.raises(CniError) as caught:
        spec.parse_env(FULL_ENV | changes, need=ALL)
    assert caught.value.code == Code.INVALID_ENVIRONMENT
    assert mentions in caught.value.msg


def sample_result(version: str) -> dict[str, Any]:
    return spec.result(version, [
        spec.Interface("sl0123456789a", "aa:aa:aa:aa:aa:aa", 1450),
        spec.Interface("eth0", "bb:bb:bb:bb:bb:bb", 1450, sandbox="/run/netns/x"),
    ], [
        spec.IPConfig(ipaddress.ip_interface("198.18.16.2/32"),
                      ipaddress.ip_address("169.254.1.1"), 1),
        spec.IPConfig(ipaddress.ip_interface("fd00:10:1::2/128"),
                      ipaddress.ip_address("fe80::1"), 1),
    ])


def test_result_1_0() -> None:
    assert sample_result("1.0.0") == {
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "sl0123456789a", "mac": "aa:aa:aa:aa:aa:aa"},
                       {"name": "eth0", "mac": "bb:bb:bb:bb:bb:bb", "sandbox": "/run/netns/x"}],
        "ips": [{"address": "198.18.16.2/32", "gateway": "169.254.1.1", "interface": 1},
                {"address": "fd00:10:1::2/128", "gateway": "fe80::1", "interface": 1}],
        "routes": [{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}, {"dst": "::/0", "gw": "fe80::1"}],
        "dns": {},
    }


def test_result_0_4_and_1_1_differences() -> None:
    old, new = sample_result("0.4.0"), sample_result("1.1.0")
    assert [ip["version"] for ip in old["ips"]] == ["4", "6"]
    assert all("mtu" not in i for i in old["interfaces"])
    assert all(i["mtu"] == 1450 for i in new["interfaces"])
    assert all("version" not in ip for ip in new["ips"])


def test_result_addresses() -> None:
    assert spec.result_addresses(sample_result("1.0.0")) == {
        ipaddress.ip_address("198.18.16.2"), ipaddress.ip_address("fd00:10:1::2")}
    for bad in ({}, {"ips": [{"address": 1}]}, {"ips": [{"address": "x/1"}]}):
        with pytest.raises(CniError) as caught:
            spec.result_addresses(bad)
        assert caught.value.code == Code.INVALID_CONFIG


def test_error_json() -> None:
    assert CniError(Code.IPAM_EXHAUSTED, "full").to_json("1.0.0") == {
        "cniVersion": "1.0.0", "code": 100, "msg": "full"}
    assert CniError(Code.IO_FAILURE, "m", "d").to_json("1.1.0")["details"] == "d"
