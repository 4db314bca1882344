"""compile/ctcarry.py: conntrack entries translated between the dataplanes."""

from __future__ import annotations

from ipaddress import ip_address

from sluice.compile.ctcarry import (
    TCP,
    UDP,
    BpfServiceLeg,
    KernelFlow,
    KernelInsert,
    Tuple5,
    conntrack_insert_argv,
    into_bpf,
    into_kernel,
)

CLIENT, FRONTEND = ip_address("198.18.17.2"), ip_address("198.19.0.10")
BACKEND, NODE = ip_address("198.18.18.5"), ip_address("198.18.0.11")
LOCAL_POD = ip_address("198.18.17.3")


def tcp(src: object, sport: int, dst: object, dport: int, protocol: int = TCP) -> Tuple5:
    return Tuple5(protocol, ip_address(str(src)), sport, ip_address(str(dst)), dport)


def test_a_dnat_entry_becomes_both_legs_on_the_backend_iptables_chose() -> None:
    flow = KernelFlow(tcp(CLIENT, 40000, FRONTEND, 80), tcp(BACKEND, 8080, CLIENT, 40000))
    carried = into_bpf([flow], {(TCP, BACKEND, 8080): 7}, frozenset({LOCAL_POD}))
    [leg] = carried.dnat
    assert (leg.key, leg.backend, leg.backend_port, leg.backend_id, leg.remote) == \
        (flow.orig, BACKEND, 8080, 7, True)
    assert leg.reply_key == tcp(BACKEND, 8080, CLIENT, 40000)
    assert carried.policy_flows == [tcp(CLIENT, 40000, BACKEND, 8080)]
    assert carried.not_carried == []


def test_a_local_backend_is_not_remote_and_plain_flows_get_only_a_verdict() -> None:
    service = KernelFlow(tcp(CLIENT, 1, FRONTEND, 80), tcp(LOCAL_POD, 8080, CLIENT, 1))
    plain = KernelFlow(tcp(CLIENT, 2, BACKEND, 9000, UDP), tcp(BACKEND, 9000, CLIENT, 2, UDP))
    carried = into_bpf([plain, service], {(TCP, LOCAL_POD, 8080): 3}, frozenset({LOCAL_POD}))
    assert [leg.remote for leg in carried.dnat] == [False]
    assert set(carried.policy_flows) == {plain.orig, tcp(CLIENT, 1, LOCAL_POD, 8080)}


def test_what_bpf_cannot_hold_is_reported_and_not_written() -> None:
    masqueraded = KernelFlow(tcp(CLIENT, 1, NODE, 30080), tcp(BACKEND, 8080, NODE, 61000))
    unknown_backend = KernelFlow(tcp(CLIENT, 2, FRONTEND, 80), tcp(BACKEND, 8081, CLIENT, 2))
    half_open = KernelFlow(tcp(CLIENT, 3, BACKEND, 80), tcp(BACKEND, 80, CLIENT, 3),
                           established=False)
    icmp = KernelFlow(tcp(CLIENT, 4, BACKEND, 4, 1), tcp(BACKEND, 4, CLIENT, 4, 1))
    carried = into_bpf([masqueraded, unknown_backend, half_open, icmp],
                       {(TCP, BACKEND, 8080): 1}, frozenset())
    assert carried.dnat == [] and carried.policy_flows == []
    assert len(carried.not_carried) == 2
    assert "masqueraded" in carried.not_carried[0]
    assert "not in the load balancer" in carried.not_carried[1]


def test_bpf_legs_and_verdicts_become_kernel_entries_without_duplicates() -> None:
    leg = BpfServiceLeg(tcp(CLIENT, 40000, FRONTEND, 80), BACKEND, 8080)
    dsr = BpfServiceLeg(tcp(CLIENT, 40001, FRONTEND, 80), BACKEND, 8080, dsr=True)
    covered = tcp(CLIENT, 40000, BACKEND, 8080)  # the service flow's pod-facing tuple
    plain = tcp(CLIENT, 5, BACKEND, 9000, UDP)
    inserts, not_carried = into_kernel([leg, dsr], [covered, plain, plain])
    assert inserts == [KernelInsert(leg.key, (BACKEND, 8080)), KernelInsert(plain)]
    assert inserts[0].reply == tcp(BACKEND, 8080, CLIENT, 40000)
    assert len(not_carried) == 1 and "direct server return" in not_carried[0]


def test_conntrack_arguments() -> None:
    insert = KernelInsert(tcp(CLIENT, 40000, FRONTEND, 80), (BACKEND, 8080))
    assert conntrack_insert_argv(insert, 3600) == [
        "conntrack", "-I", "-p", "tcp", "-s", str(CLIENT), "-d", str(FRONTEND),
        "--sport", "40000", "--dport", "80", "--timeout", "3600", "-u", "SEEN_REPLY,ASSURED",
        "--state", "ESTABLISHED", "--dst-nat", f"{BACKEND}:8080"]
    v6 = KernelInsert(Tuple5(UDP, ip_address("fd00:10:1::2"), 5, ip_address("fd00:96::a"), 53),
                      (ip_address("fd00:10:2::3"), 5353))
    argv = conntrack_insert_argv(v6, 120)
    assert "--state" not in argv and argv[-2:] == ["--dst-nat", "[fd00:10:2::3]:5353"]
