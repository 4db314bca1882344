"""Masquerade's pure part: the non-masquerade list, the port range, the iptables chain."""

from __future__ import annotations

import ipaddress
import shutil
import subprocess

import pytest

from sluice.compile.iptables_masq import MASQ_CHAIN, masq_rules
from sluice.compile.masquerade import (
    LINK_LOCAL,
    MasqueradeOptions,
    masquerade_state,
    parse_nonmasq_cidrs,
    parse_port_range,
    port_range_problem,
)
from sluice.compile.topology import NodeAddressing, NodeView
from sluice.datapath.addr import SlAddr

net = ipaddress.ip_network
addr = ipaddress.ip_address

VIEW = NodeView(
    NodeAddressing("n1", (addr("198.18.0.11"), addr("fd00:ff::11")),
                   (net("198.18.17.0/24"), net("fd00:10:1::/64"))),
    (NodeAddressing("n2", (addr("198.18.0.12"), addr("fd00:ff::12")),
                    (net("198.18.18.0/24"), net("fd00:10:2::/64"))),))


def test_default_list_is_the_cluster_and_link_local() -> None:
    state = masquerade_state(VIEW, MasqueradeOptions())
    assert set(state.nonmasq) == {
        net("198.18.17.0/24"), net("198.18.18.0/24"), net("198.18.0.11/32"), net("198.18.0.12/32"),
        net("169.254.0.0/16"), net("fd00:10:1::/64"), net("fd00:10:2::/64"),
        net("fd00:ff::11/128"), net("fd00:ff::12/128"), net("fe80::/10")}
    assert (state.addr4, state.addr6) == (addr("198.18.0.11"), addr("fd00:ff::11"))
    config = state.config_entry()
    assert bytes(config.addr4) == bytes(SlAddr.of("198.18.0.11"))
    assert (config.port_min, config.port_max, config.enabled) == (61000, 65535, 1)


def test_the_flag_replaces_the_extra_list_but_never_the_cluster() -> None:
    extra = parse_nonmasq_cidrs("10.0.0.0/8, fd00:abcd::/32")
    state = masquerade_state(VIEW, MasqueradeOptions(extra_nonmasq=extra))
    assert net("10.0.0.0/8") in state.nonmasq
    assert not set(LINK_LOCAL) & set(state.nonmasq)
    assert net("198.18.0.12/32") in state.nonmasq
    none = masquerade_state(VIEW, MasqueradeOptions(extra_nonmasq=parse_nonmasq_cidrs("none")))
    assert len(none.nonmasq) == 8  # the cluster's own


@pytest.mark.parametrize(("text", "message"), [
    ("10.0.0.0", "missing prefix length"),
    ("10.0.0.0/8,bogus/3", '"bogus" is not an IP address'),
])
def test_bad_cidrs_are_named(text: str, message: str) -> None:
    with pytest.raises(ValueError, match="--non-masquerade-cidrs") as raised:
        parse_nonmasq_cidrs(text)
    assert message in str(raised.value)


@pytest.mark.parametrize("text", ["61000", "a-b", "900-1000", "62000-61000", "61000-70000"])
def test_bad_port_ranges_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="--masquerade-ports"):
        parse_port_range(text)


def test_port_range_must_avoid_ephemeral_and_node_ports() -> None:
    assert port_range_problem((61000, 65535), (32768, 60999)) is None
    problem = port_range_problem((60000, 65535), (32768, 60999))
    assert problem is not None and "ip_local_port_range 32768-60999" in problem
    problem = port_range_problem((20000, 30500), (40000, 60999))
    assert problem is not None and "NodePort range 30000-32767" in problem


def test_iptables_chain_returns_for_the_list_and_masquerades_pods() -> None:
    state = masquerade_state(VIEW, MasqueradeOptions())
    rules = masq_rules(state, 4)
    assert rules.rules[-1] == f"-A {MASQ_CHAIN} -s 198.18.17.0/24 -j MASQUERADE --random-fully"
    assert f"-A {MASQ_CHAIN} -d 169.254.0.0/16 -j RETURN" in rules.rules
    assert all("fd00" not in rule for rule in rules.rules)
    off = masquerade_state(VIEW, MasqueradeOptions(enabled=False))
    assert masq_rules(off, 6).text == ""


@pytest.mark.root
@pytest.mark.skipif(shutil.which("iptables-restore") is None, reason="no iptables-restore")
def test_iptables_restore_accepts_the_chain() -> None:
    for version, tool in ((4, "iptables-restore"), (6, "ip6tables-restore")):
        text = masq_rules(masquerade_state(VIEW, MasqueradeOptions()), version).text
        done = subprocess.run([tool, "--test"], input=text, capture_output=True, text=True,
                              check=False, timeout=30)
        assert done.returncode == 0, done.stderr
