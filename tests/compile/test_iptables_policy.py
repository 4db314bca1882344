"""iptables mode policy: the sets and chains a PolicyState renders to, and that ipset and
iptables-restore accept them."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from ipaddress import ip_address, ip_network

import pytest

from sluice import netns
from sluice.compile.iptables_policy import (
    CUT_MARK,
    FORWARD_DISPATCH,
    INPUT_DISPATCH,
    OUTPUT_DISPATCH,
    PREDNAT_DISPATCH,
    RAW_DISPATCH,
    UNTRACKED_ALLOW,
    PolicyRules,
    endpoint_chains,
    policy_rules,
)
from sluice.compile.policytypes import (
    Action,
    AddressBlock,
    CompiledRule,
    Direction,
    DirectionPolicy,
    EndpointPolicy,
    FailsafePort,
    PeerSet,
    PolicyState,
    PortRange,
)
from tests.conftest import unique

TCP, UDP, SCTP = 6, 17, 132
A4, A6 = ip_address("198.18.60.2"), ip_address("fd00:60::2")
B4, B6 = ip_address("198.18.61.2"), ip_address("fd00:61::2")


def rule(rule_id: int, action: Action = Action.ALLOW, peers: PeerSet | None = None,
         protocol: int | None = None, ports: tuple[PortRange, ...] = (), *,
         origin: str = "") -> CompiledRule:
    return CompiledRule(rule_id, action, peers, protocol, ports, origin)


def ports(*spec: int | tuple[int, int]) -> tuple[PortRange, ...]:
    return tuple(PortRange(p, p) if isinstance(p, int) else PortRange(*p) for p in spec)


def pod(name: str, iface: str, **directions: DirectionPolicy) -> EndpointPolicy:
    return EndpointPolicy(name, 10, 300, (A4, A6), iface,
                          {Direction[d.upper()]: p for d, p in directions.items()})


def host_endpoint(**directions: DirectionPolicy) -> EndpointPolicy:
    return EndpointPolicy("hostendpoint/n1", 2, 1, (ip_address("198.18.0.11"),), "eth0",
                          {Direction[d.upper()]: p for d, p in directions.items()},
                          host_endpoint=True)


def isolated(*allows: CompiledRule) -> DirectionPolicy:
    return DirectionPolicy(kubernetes_rules=allows, kubernetes_isolated=True)


def render(*endpoints: EndpointPolicy, version: int = 4, **more: object) -> PolicyRules:
    return policy_rules(PolicyState(endpoints=endpoints, **more), version)  # type: ignore[arg-type]


def chain_rules(text: str, chain: str) -> list[str]:
    return [line.removeprefix(f"-A {chain} ") for line in text.splitlines()
            if line.startswith(f"-A {chain} ")]


def table_of(text: str, chain: str) -> str:
    table = ""
    for line in text.splitlines():
        if line.startswith("*"):
            table = line[1:]
        elif line == f":{chain} - [0:0]":
            return table
    raise AssertionError(f"{chain} is not declared")


def chain(prefix: str, endpoint: str) -> str:
    found = [c for c in endpoint_chains(endpoint) if c.startswith(prefix + "-")]
    assert len(found) == 1
    return found[0]


def set_named(rules: PolicyRules, name: str) -> tuple[str, tuple[str, ...]]:
    found = next(s for s in rules.sets if s.name == name)
    return found.type, found.entries


def sets_in(line: str) -> list[str]:
    return re.findall(r"--match-set (\S+)", line)


# --- names --------------------------------------------------------------------------------


def test_chain_names_are_short_deterministic_and_per_endpoint() -> None:
    names = endpoint_chains("shop/web-0")
    assert names == endpoint_chains("shop/web-0")
    assert not set(names) & set(endpoint_chains("shop/web-1"))
    assert len(set(names)) == 12  # six directions, two tiers
    assert all(len(n) <= 28 and n.startswith("SLUICE-") for n in names)


def test_set_names_are_short_per_family_and_shared_by_equal_peers() -> None:
    peers = PeerSet(pod_addresses=frozenset({A4, A6}))
    policy = isolated(rule(1, peers=peers))
    four = render(pod("t/b", "vb", ingress=policy), pod("t/c", "vc", ingress=policy))
    six = render(pod("t/b", "vb", ingress=policy), version=6)
    assert len(four.sets) == 1 and len(six.sets) == 1, "one set for equal peers"
    (v4,), (v6,) = four.sets, six.sets
    assert (v4.type, v4.family, v4.entries) == ("hash:ip", "inet", (str(A4),))
    assert (v6.type, v6.family, v6.entries) == ("hash:ip", "inet6", (str(A6),))
    assert v4.name != v6.name and all(len(n) <= 29 for n in (v4.name, v6.name)), \
        "room for the temporary swap suffix within ipset's 31 characters"
    assert v4.name.startswith("sluice-") and render(pod("t/b", "vb", ingress=policy)) \
        .sets[0].name == v4.name
    other = render(pod("t/b", "vb", ingress=isolated(
        rule(1, peers=PeerSet(pod_addresses=frozenset({B4}))))))
    assert other.sets[0].name != v4.name, "named by content"


# --- peers ----------------------------------------------------------------------------------


def test_blocks_with_excepts_are_nomatch_entries_each_in_its_own_set() -> None:
    policy = isolated(rule(1, peers=PeerSet(blocks=(
        AddressBlock(ip_network("198.18.0.0/16"), (ip_network("198.18.60.0/24"),
                                                    ip_network("10.0.0.0/8"))),
        AddressBlock(ip_network("198.18.60.0/26")),
        AddressBlock(ip_network("198.19.0.0/16")),
        AddressBlock(ip_network("0.0.0.0/0"), (ip_network("198.18.61.0/24"),)),
        AddressBlock(ip_network("203.0.113.0/24"), (ip_network("203.0.0.0/16"),)),
        AddressBlock(ip_network("fd00::/8")),
    ))))
    rules = render(pod("t/b", "vb", ingress=policy))
    lines = chain_rules(rules.text, chain("SLUICE-KI", "t/b"))[:-1]
    assert len(lines) == 3, "plain blocks share a set; each excepted block has its own"
    contents = [set_named(rules, sets_in(line)[0]) for line in lines]
    assert contents == [
        ("hash:net", ("198.18.60.0/26", "198.19.0.0/16")),
        # An except outside the block changes nothing and is left out.
        ("hash:net", ("198.18.0.0/16", "198.18.60.0/24 nomatch")),
        # ipset cannot hold a /0: its halves stand in for it.
        ("hash:net", ("0.0.0.0/1", "128.0.0.0/1", "198.18.61.0/24 nomatch")),
    ]
    assert all(" src " in line + " " for line in lines)
    # 203.0.113.0/24 except 203.0.0.0/16 is empty: no rule, rather than any peer.
    assert not any("203.0" in e for s in rules.sets for e in s.entries)
    six = render(pod("t/b", "vb", ingress=policy), version=6)
    assert [s.entries for s in six.sets] == [("fd00::/8",)]


def test_each_part_of_a_peer_set_is_a_rule_and_egress_matches_destinations() -> None:
    peers = PeerSet(identities=frozenset({300}), pod_addresses=frozenset({B4}),
                    blocks=(AddressBlock(ip_network("198.19.0.0/16")),), host=True)
    rules = render(pod("t/a", "va", egress=isolated(rule(1, peers=peers, protocol=TCP,
                                                          ports=ports(80)))))
    lines = chain_rules(rules.text, chain("SLUICE-KO", "t/a"))
    assert len(lines) == 4 and lines[-1].endswith("-j DROP")
    assert [len(sets_in(line)) for line in lines[:3]] == [1, 1, 0]
    assert all(" dst " in line for line in lines[:2])
    assert "-m addrtype --dst-type LOCAL" in lines[2]
    assert all("-p tcp" in line and "--dport 80" in line for line in lines[:3])


def test_peers_of_the_other_family_are_no_rule_not_any_peer() -> None:
    only_v4 = PeerSet(pod_addresses=frozenset({B4}))
    six = render(pod("t/a", "va", ingress=isolated(rule(1, peers=only_v4))), version=6)
    assert chain_rules(six.text, chain("SLUICE-KI", "t/a")) == [
        '-m comment --comment "network policy default" -j DROP']
    assert six.sets == ()
    empty = render(pod("t/a", "va", ingress=isolated(rule(1, peers=PeerSet()))))
    assert len(chain_rules(empty.text, chain("SLUICE-KI", "t/a"))) == 1
    anyone = render(pod("t/a", "va", ingress=isolated(rule(1))), version=6)
    assert chain_rules(anyone.text, chain("SLUICE-KI", "t/a"))[0] == \
        '-m comment --comment "rule 1" -j RETURN'


# --- ports ----------------------------------------------------------------------------------


def test_ports_single_range_and_multiport_split_at_fifteen_slots() -> None:
    def lines_for(spec: tuple[PortRange, ...], protocol: int = TCP) -> list[str]:
        rules = render(pod("t/a", "va", ingress=isolated(rule(1, protocol=protocol,
                                                               ports=spec))))
        return chain_rules(rules.text, chain("SLUICE-KI", "t/a"))[:-1]

    assert lines_for(ports(80)) == ['-p tcp -m tcp --dport 80 -m comment --comment "rule 1" '
                                    "-j RETURN"]
    assert "-p udp -m udp --dport 8000:8100 " in lines_for(ports((8000, 8100)), UDP)[0]
    singles = lines_for(ports(*range(1000, 1020)), SCTP)
    assert [line.split("--dports ")[1].split()[0].count(",") + 1 for line in singles] == [15, 5]
    assert all(line.startswith("-p sctp -m multiport") for line in singles)
    ranges = lines_for(ports(*((p, p + 5) for p in range(2000, 2080, 10))))
    assert [line.split("--dports ")[1].split()[0].count(":") for line in ranges] == [7, 1], \
        "a range takes two of the fifteen slots"
    mixed = lines_for(ports(443, (8000, 8100), 80, 443))
    assert mixed == ['-p tcp -m multiport --dports 80,443,8000:8100 -m comment --comment '
                     '"rule 1" -j RETURN'], "sorted, duplicates dropped"


def test_protocol_without_ports_and_bad_ports_name_the_endpoint_and_rule() -> None:
    icmp = render(pod("t/a", "va", ingress=isolated(rule(1, protocol=1))))
    assert chain_rules(icmp.text, chain("SLUICE-KI", "t/a"))[0].startswith("-p 1 ")
    with pytest.raises(ValueError, match=r"endpoint t/a ingress: rule 7 \(np x\) has ports "
                                         "but no protocol"):
        render(pod("t/a", "va", ingress=isolated(rule(7, ports=ports(80), origin="np x"))))
    with pytest.raises(ValueError, match="protocol 1 has none"):
        render(pod("t/a", "va", ingress=isolated(rule(7, protocol=1, ports=ports(80)))))
    with pytest.raises(ValueError, match="port range 0-80"):
        render(pod("t/a", "va", ingress=isolated(rule(7, protocol=TCP, ports=ports((0, 80))))))
    with pytest.raises(ValueError, match="endpoint t/a: interface ''"):
        render(pod("t/a", "", ingress=isolated()))
    with pytest.raises(ValueError, match="a pod has no PREDNAT direction"):
        render(pod("t/a", "va", prednat=DirectionPolicy(global_selected=True)))


# --- tiers ----------------------------------------------------------------------------------


def test_global_tier_in_order_then_its_default_and_pass_into_the_kubernetes_tier() -> None:
    from_a = PeerSet(pod_addresses=frozenset({A4}))
    policy = DirectionPolicy(
        global_rules=(rule(1, Action.LOG), rule(2, Action.DENY, protocol=TCP, ports=ports(22)),
                      rule(3, Action.ALLOW, protocol=UDP), rule(4, Action.PASS, peers=from_a),
                      rule(5, Action.LOG)),
        global_selected=True,
        kubernetes_rules=(rule(6, peers=from_a, protocol=TCP, ports=ports(80),
                               origin='NetworkPolicy "t/web" ingress[0]'),),
        kubernetes_isolated=True)
    text = render(pod("t/b", "vb", ingress=policy)).text
    tier = chain("SLUICE-KI", "t/b")
    lines = chain_rules(text, chain("SLUICE-PI", "t/b"))
    assert len(lines) == 6
    assert lines[0].endswith('-m comment --comment "rule 1" -j NFLOG --nflog-group 50 '
                             "--nflog-prefix 1")
    assert lines[1].endswith("-j DROP") and "--dport 22" in lines[1]
    assert lines[2].startswith("-p udp") and lines[2].endswith("-j RETURN")
    assert "--match-set" in lines[3] and lines[3].endswith(f"-g {tier}")
    assert lines[4].endswith("--nflog-prefix 5")
    assert lines[5] == '-m comment --comment "global policy default" -j DROP'
    assert chain_rules(text, tier) == [
        f"-p tcp -m set --match-set {sets_in(lines[3])[0]} src -m tcp --dport 80 "
        '-m comment --comment "NetworkPolicy _t/web_ ingress[0]" -j RETURN',
        '-m comment --comment "network policy default" -j DROP']


def test_without_global_selection_the_chain_ends_in_the_kubernetes_tier() -> None:
    policy = DirectionPolicy(global_rules=(rule(1, Action.DENY, protocol=TCP, ports=ports(23)),),
                             kubernetes_rules=(rule(2, protocol=TCP, ports=ports(80)),),
                             kubernetes_isolated=True)
    text = render(pod("t/b", "vb", ingress=policy)).text
    assert chain_rules(text, chain("SLUICE-PI", "t/b"))[-1] == f"-g {chain('SLUICE-KI', 't/b')}"


def test_a_tier_that_does_not_isolate_is_no_chain_and_pass_allows() -> None:
    policy = DirectionPolicy(global_rules=(rule(1, Action.PASS, protocol=TCP),),
                             global_selected=True,
                             kubernetes_rules=(rule(2, protocol=TCP, ports=ports(80)),))
    text = render(pod("t/b", "vb", ingress=policy)).text
    assert f":{chain('SLUICE-KI', 't/b')} - [0:0]" not in text
    assert chain_rules(text, chain("SLUICE-PI", "t/b")) == [
        '-p tcp -m comment --comment "rule 1" -j RETURN',
        '-m comment --comment "global policy default" -j DROP']
    only_log = render(pod("t/b", "vb", ingress=DirectionPolicy(
        global_rules=(rule(1, Action.LOG),)))).text
    assert chain_rules(only_log, chain("SLUICE-PI", "t/b")) == [
        '-m comment --comment "rule 1" -j NFLOG --nflog-group 50 --nflog-prefix 1'], \
        "falling off the end is allowed"


# --- dispatch -------------------------------------------------------------------------------


def test_pods_are_dispatched_by_veth_from_forward_input_and_output() -> None:
    rules = render(pod("t/a", "va", egress=isolated()),
                   pod("t/b", "vb", ingress=isolated(), egress=isolated()),
                   pod("t/c", "vc", ingress=DirectionPolicy()))  # not enforced
    text = rules.text
    pi_b, po_a, po_b = chain("SLUICE-PI", "t/b"), chain("SLUICE-PO", "t/a"), \
        chain("SLUICE-PO", "t/b")
    cut = f"-m connmark --mark {CUT_MARK}/{CUT_MARK}"
    established = "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
    assert chain_rules(text, FORWARD_DISPATCH) == [
        f"{cut} -p tcp -j REJECT --reject-with tcp-reset", f"{cut} -j DROP",
        established, f"-i va -j {po_a}", f"-i vb -j {po_b}", f"-o vb -j {pi_b}"], \
        "egress of the source before ingress of the destination"
    assert chain_rules(text, INPUT_DISPATCH)[2:] == [established, f"-i va -j {po_a}",
                                                 f"-i vb -j {po_b}"]
    assert chain_rules(text, OUTPUT_DISPATCH)[2:] == [established, f"-o vb -j {pi_b}"]
    assert "vc" not in text and "*raw" not in text and "*mangle" not in text
    assert {table_of(text, c) for c in (pi_b, po_a, FORWARD_DISPATCH)} == {"filter"}
    six = render(pod("t/b", "vb", ingress=isolated()), version=6).text
    assert "-A SLUICE-POLICY-OUT -p ipv6-icmp -m icmp6 --icmpv6-type 135 -j ACCEPT" in six, \
        "neighbour discovery between pod and node passes"


def test_no_policy_renders_nothing() -> None:
    assert render(pod("t/a", "va")) == PolicyRules(4, "", ())
    assert policy_rules(PolicyState(), 6) == PolicyRules(6, "", ())


def test_host_endpoint_directions_are_placed_in_their_tables_with_failsafe_first() -> None:
    selected = DirectionPolicy(global_rules=(rule(1, Action.ALLOW, protocol=TCP,
                                                  ports=ports(443)),),
                               global_selected=True)
    untracked = DirectionPolicy(global_rules=(
        rule(2, Action.ALLOW, PeerSet(blocks=(AddressBlock(ip_network("198.18.0.0/24")),))),
        rule(3, Action.DENY)))
    rules = render(host_endpoint(ingress=selected, egress=selected, prednat=selected,
                                 forward_ingress=selected, forward_egress=selected,
                                 untracked=untracked),
                   failsafe=(FailsafePort(True, TCP, 22), FailsafePort(False, UDP, 53),
                             FailsafePort(True, TCP, 22)))
    text = rules.text
    name = "hostendpoint/n1"
    expected = {
        "SLUICE-PI": ("filter", INPUT_DISPATCH, "-i eth0", "-p tcp -m tcp --dport 22"),
        "SLUICE-PO": ("filter", OUTPUT_DISPATCH, "-o eth0", "-p udp -m udp --dport 53"),
        "SLUICE-PP": ("mangle", PREDNAT_DISPATCH, "-i eth0 -m conntrack --ctstate NEW",
                      "-p tcp -m tcp --dport 22"),
        "SLUICE-PFI": ("filter", FORWARD_DISPATCH, "-i eth0", None),
        "SLUICE-PFO": ("filter", FORWARD_DISPATCH, "-o eth0", None),
        "SLUICE-PU": ("raw", RAW_DISPATCH, "-i eth0", "-p tcp -m tcp --dport 22"),
    }
    for prefix, (table, dispatch, match, failsafe) in expected.items():
        endpoint_chain = chain(prefix, name)
        assert table_of(text, endpoint_chain) == table, prefix
        assert f"{match} -j {endpoint_chain}" in chain_rules(text, dispatch), prefix
        lines = chain_rules(text, endpoint_chain)
        if failsafe is None:
            assert not any("failsafe" in line for line in lines), prefix
        else:
            assert lines[0] == f'{failsafe} -m comment --comment "failsafe" -j RETURN', prefix
            assert sum("failsafe" in line for line in lines) == 1, prefix
    untracked_lines = chain_rules(text, chain("SLUICE-PU", name))
    assert untracked_lines[1].endswith(f"-g {UNTRACKED_ALLOW}")
    assert untracked_lines[2] == '-m comment --comment "rule 3" -j DROP'
    assert chain_rules(text, UNTRACKED_ALLOW) == ["-j MARK --set-xmark 0x10000/0x10000",
                                                  "-j NOTRACK"]
    assert "-m mark --mark 0x10000/0x10000 -j RETURN" in chain_rules(text, INPUT_DISPATCH)


def test_prefilter_denies_sources_first_in_raw_with_one_set_per_family() -> None:
    state = PolicyState(endpoints=(host_endpoint(untracked=DirectionPolicy(
        global_rules=(rule(1, Action.DENY),))),),
        prefilter_deny=(ip_network("192.0.2.0/24"), ip_network("198.51.100.7/32"),
                        ip_network("2001:db8::/32")))
    for version, entries in ((4, ("192.0.2.0/24", "198.51.100.7/32")), (6, ("2001:db8::/32",))):
        rules = policy_rules(state, version)
        first = chain_rules(rules.text, RAW_DISPATCH)[0]
        (name,) = sets_in(first)
        assert first.endswith("-j DROP") and " src " in first
        assert name == f"sluice-{version}-prefilter"
        assert set_named(rules, name) == ("hash:net", entries)
    alone = policy_rules(PolicyState(prefilter_deny=(ip_network("192.0.2.0/24"),)), 4)
    assert alone.text.startswith("*raw\n") and "*filter" not in alone.text


# --- the kernel accepts it --------------------------------------------------------------------


@pytest.fixture
def scratch_ns() -> Iterator[str]:
    name = unique("sl-tipp")
    netns.create(name)
    try:
        yield name
    finally:
        netns.remove(name)


def rich_state() -> PolicyState:
    from_a = PeerSet(pod_addresses=frozenset({A4, A6}), host=True,
                     blocks=(AddressBlock(ip_network("0.0.0.0/0"), (ip_network("10.0.0.0/8"),)),
                             AddressBlock(ip_network("::/0"), (ip_network("fd00::/8"),))))
    everything = DirectionPolicy(
        global_rules=(rule(1, Action.LOG), rule(2, Action.DENY, from_a, SCTP, ports(9)),
                      rule(3, Action.PASS, from_a), rule(4, Action.ALLOW, None, 1)),
        global_selected=True,
        kubernetes_rules=(rule(5, peers=from_a, protocol=UDP, ports=ports(*range(1, 40, 2))),),
        kubernetes_isolated=True)
    return PolicyState(
        endpoints=(pod("t/b", "vb", ingress=everything, egress=everything),
                   host_endpoint(**{d.name.lower(): everything for d in Direction})),
        failsafe=(FailsafePort(True, TCP, 22), FailsafePort(False, UDP, 53)),
        prefilter_deny=(ip_network("192.0.2.0/24"), ip_network("2001:db8::/32")))


@pytest.mark.root
@pytest.mark.parametrize("version", [4, 6])
def test_ipset_and_iptables_restore_accept_the_rules(scratch_ns: str, version: int) -> None:
    rules = policy_rules(rich_state(), version)
    commands = [line for s in rules.sets for line in (
        f"create {s.name} {s.type} family {s.family}", *(f"add {s.name} {e}" for e in s.entries))]
    path = f"--net={netns.netns_path(scratch_ns)}"
    done = subprocess.run(["nsenter", path, "ipset", "restore"], input="\n".join(commands) + "\n",
                          capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    tool = "iptables-restore" if version == 4 else "ip6tables-restore"
    done = subprocess.run(["nsenter", path, tool, "--test"], input=rules.text,
                          capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
