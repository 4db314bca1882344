"""The prefilter under BPF_PROG_TEST_RUN: crafted packets in, verdicts and counters out."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Ether

from sluice.datapath.prefilter import (
    MAP_NAME,
    PrefilterAction,
    PrefilterEntry,
    PrefilterKey,
)
from sluice.loader import BpfObject, Map, test_run

pytestmark = pytest.mark.root

TC_OK, TC_SHOT = 0, 2
XDP_DROP, XDP_PASS = 1, 2


def v4(src: str, dst: str = "198.19.0.1", payload: bytes = b"x" * 16) -> bytes:
    return bytes(Ether() / IP(src=src, dst=dst) / UDP(sport=1000, dport=53) / payload)


def v6(src: str, dst: str = "fd00:99::1") -> bytes:
    return bytes(Ether() / IPv6(src=src, dst=dst) / TCP(sport=1000, dport=80, flags="S"))


@pytest.fixture
def prefilter() -> Iterator[BpfObject]:
    with BpfObject.open("prefilter") as obj:
        obj.load()
        yield obj


def table(obj: BpfObject) -> Map[PrefilterKey, PrefilterEntry]:
    return obj.map(MAP_NAME, PrefilterKey, PrefilterEntry)


def deny(obj: BpfObject, cidr: str, rule_id: int = 1) -> None:
    table(obj).update(PrefilterKey.of(cidr), PrefilterEntry(action=PrefilterAction.DROP,
                                                            rule_id=rule_id))


def test_unlisted_source_passes(prefilter: BpfObject) -> None:
    assert test_run(prefilter.program("prefilter_tc"), v4("198.18.0.5")).retval == TC_OK
    assert test_run(prefilter.program("prefilter_xdp"), v4("198.18.0.5")).retval == XDP_PASS


@pytest.mark.parametrize(
    ("cidr", "packet"),
    [("198.18.7.0/24", v4("198.18.7.9")), ("fd00:7::/48", v6("fd00:7:0:1::9"))],
    ids=["ipv4", "ipv6"],
)
def test_denied_cidr_is_dropped_and_counted(prefilter: BpfObject, cidr: str,
                                            packet: bytes) -> None:
    deny(prefilter, cidr, rule_id=42)
    assert test_run(prefilter.program("prefilter_tc"), packet).retval == TC_SHOT
    assert test_run(prefilter.program("prefilter_xdp"), packet).retval == XDP_DROP

    entry = table(prefilter).lookup(PrefilterKey.of(cidr))
    assert entry is not None
    assert (entry.rule_id, entry.packets, entry.bytes) == (42, 2, 2 * len(packet))


def test_ipv4_rule_does_not_match_ipv6(prefilter: BpfObject) -> None:
    deny(prefilter, "0.0.0.0/0")
    assert test_run(prefilter.program("prefilter_tc"), v4("203.0.113.1")).retval == TC_SHOT
    assert test_run(prefilter.program("prefilter_tc"), v6("fd00::1")).retval == TC_OK


def test_longest_prefix_wins(prefilter: BpfObject) -> None:
    deny(prefilter, "198.18.0.0/16")
    table(prefilter).update(PrefilterKey.of("198.18.3.4/32"),
                            PrefilterEntry(action=PrefilterAction.PASS))
    prog = prefilter.program("prefilter_tc")
    assert test_run(prog, v4("198.18.3.4")).retval == TC_OK
    assert test_run(prog, v4("198.18.3.5")).retval == TC_SHOT


def test_output_packet_is_unchanged(prefilter: BpfObject) -> None:
    packet = v4("198.18.0.5")
    result = test_run(prefilter.program("prefilter_tc"), packet)
    assert result.data == packet


def test_non_ip_passes_and_malformed_ip_is_dropped(prefilter: BpfObject) -> None:
    deny(prefilter, "0.0.0.0/0")
    arp = bytes(Ether() / ARP(psrc="198.18.0.1", pdst="198.18.0.2"))
    assert test_run(prefilter.program("prefilter_tc"), arp).retval == TC_OK
    assert test_run(prefilter.program("prefilter_xdp"), arp).retval == XDP_PASS
    # tc's test run refuses a truncated IP header before the program runs; XDP does not.
    truncated = bytes(Ether() / IP(src="198.18.0.1"))[: 14 + 12]
    assert test_run(prefilter.program("prefilter_xdp"), truncated).retval == XDP_DROP
    bad_ihl = bytearray(v4("198.18.0.1"))
    bad_ihl[14] = 0x43  # version 4, header length 3 words
    assert test_run(prefilter.program("prefilter_xdp"), bytes(bad_ihl)).retval == XDP_DROP


def test_rodata_default_action_is_set_before_load() -> None:
    with BpfObject.open("prefilter") as obj:
        obj.set_rodata(prefilter_default_action=int(PrefilterAction.DROP))
        obj.load()
        assert test_run(obj.program("prefilter_tc"), v4("198.18.0.5")).retval == TC_SHOT
        with pytest.raises(RuntimeError, match="after it is loaded"):
            obj.set_rodata(prefilter_default_action=0)


def test_unknown_rodata_name_is_an_error() -> None:
    with BpfObject.open("prefilter") as obj, pytest.raises(KeyError, match="no_such_knob"):
        obj.set_rodata(no_such_knob=1)


def test_repeat_reports_per_packet_time(prefilter: BpfObject) -> None:
    deny(prefilter, "198.18.0.0/16")
    result = test_run(prefilter.program("prefilter_tc"), v4("198.18.0.5"), repeat=2000)
    assert result.retval == TC_SHOT
    assert 0 < result.duration_ns < 1_000_000
    entry = table(prefilter).lookup(PrefilterKey.of("198.18.0.0/16"))
    assert entry is not None and entry.packets == 2000
