"""The xdp-drop benchmark's trafgen configuration and the counters it reads back."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from sluice.bench.trafgen import FRAME_BYTES, UdpFlood, flood_argv, packets_sent
from sluice.bench.xdpdrop import (
    deny_list,
    link_address,
    link_tx_packets,
    process_tree,
    raw_drop_packets,
)
from sluice.lab.errors import LabError
from sluice.model.loader import parse_text

FLOOD = UdpFlood(src_mac="7e:f2:49:64:06:19", dst_mac="86:89:c8:07:71:23",
                 src_ip="198.18.0.250", dst_ip="198.18.0.11")


def test_config_names_both_ends_and_pads_to_the_frame_size() -> None:
    config = FLOOD.config()
    assert "eth(da=86:89:c8:07:71:23, sa=7e:f2:49:64:06:19)" in config
    assert "ipv4(sa=198.18.0.250, da=198.18.0.11, ttl=64)" in config
    assert "udp(sp=40000, dp=9)" in config
    assert f"fill(0x00, {FRAME_BYTES - 42})" in config


def test_config_without_payload_has_no_fill() -> None:
    config = UdpFlood(src_mac=FLOOD.src_mac, dst_mac=FLOOD.dst_mac, src_ip=FLOOD.src_ip,
                      dst_ip=FLOOD.dst_ip, frame_bytes=42).config()
    assert "fill" not in config


@pytest.mark.parametrize(("field", "value", "message"), [
    ("src_mac", "7e:f2:49:64:06", "src_mac"),
    ("dst_ip", "fd00:ff::11", "dst_ip"),
    ("dst_port", 0, "dst_port"),
    ("frame_bytes", 30, "frame_bytes"),
])
def test_bad_flood_is_refused_naming_the_field(field: str, value: object,
                                               message: str) -> None:
    values: dict[str, object] = {"src_mac": FLOOD.src_mac, "dst_mac": FLOOD.dst_mac,
                                 "src_ip": FLOOD.src_ip, "dst_ip": FLOOD.dst_ip, field: value}
    with pytest.raises(ValueError, match=message):
        UdpFlood(**values)  # type: ignore[arg-type]


@pytest.mark.skipif(shutil.which("trafgen") is None, reason="trafgen is not installed")
def test_trafgen_compiles_the_config(tmp_path: Path) -> None:
    """trafgen parses the generated config and writes the frame as a pcap, sending
    nothing: the frame is exactly FRAME_BYTES long."""
    config = tmp_path / "flood.cfg"
    config.write_text(FLOOD.config(), encoding="ascii")
    pcap = tmp_path / "flood.pcap"
    done = subprocess.run(["trafgen", "--conf", str(config), "--out", str(pcap), "--num", "1",
                           "--no-sock-mem", "--cpus", "1"], capture_output=True, text=True,
                          timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    data = pcap.read_bytes()
    captured_length = int.from_bytes(data[24 + 8:24 + 12], "little")
    frame = data[24 + 16:24 + 16 + captured_length]
    assert captured_length == FRAME_BYTES
    assert frame[:6] == bytes.fromhex("8689c8077123")
    assert frame[26:30] == bytes([198, 18, 0, 250])
    assert frame[23] == 17  # UDP


def test_flood_argv_is_time_bounded_and_leaves_sysctls_alone() -> None:
    argv = flood_argv("eth0", "/tmp/x.cfg", 7.5)
    assert argv[:4] == ["timeout", "-k", "2", "7.5"]
    assert "--no-sock-mem" in argv
    assert argv[argv.index("--cpus") + 1] == "1"


def test_packets_sent_sums_the_workers_and_knows_silence() -> None:
    log = ("Running! Hang up with ^C!\n\n      123915 packets outgoing\n"
           "     7434900 bytes outgoing\n           1 sec, 964025 usec on CPU0\n")
    assert packets_sent(log) == 123915
    assert packets_sent(log + "  5 packets outgoing\n") == 123920
    assert packets_sent("Running!\n") is None


RAW_LISTING = """\
Chain SLUICE-POLICY-RAW (1 references)
    pkts      bytes target     prot opt in     out     source               destination
  822784 49367040 DROP       0    --  *      *       0.0.0.0/0            0.0.0.0/0            \
match-set sluice-4-prefilter src /* prefilter deny */
       3      180 SLUICE-PU-abc  0    --  eth0   *       0.0.0.0/0            0.0.0.0/0
"""


def test_raw_drop_packets_reads_the_prefilter_rule() -> None:
    assert raw_drop_packets(RAW_LISTING) == 822784


def test_raw_drop_packets_without_the_rule_is_an_error() -> None:
    with pytest.raises(LabError, match="prefilter deny"):
        raw_drop_packets(RAW_LISTING.splitlines()[0])


def test_link_counters_from_ip_json() -> None:
    doc = json.dumps([{"ifname": "eth0", "address": "7e:f2:49:64:06:19",
                       "stats64": {"rx": {"packets": 5}, "tx": {"packets": 1234}}}])
    assert link_tx_packets(doc) == 1234
    assert link_address(doc) == "7e:f2:49:64:06:19"


def test_deny_list_is_a_valid_manifest() -> None:
    parsed = parse_text(yaml.safe_dump(deny_list("198.18.0.250/32")), "test")
    assert parsed.ok, parsed.problems
    assert [str(c) for c in parsed.resources[0].spec.cidrs] == ["198.18.0.250/32"]  # type: ignore[attr-defined]


def test_process_tree_finds_a_grandchild() -> None:
    child = subprocess.Popen(["sh", "-c", "sleep 30 & wait"])
    try:
        for _ in range(100):
            tree = process_tree(child.pid)
            if len(tree) >= 2:
                break
            os.sched_yield()
            subprocess.run(["sleep", "0.02"], check=True)
        assert tree[0] == child.pid
        assert len(tree) == 2
    finally:
        for pid in reversed(process_tree(child.pid)):
            os.kill(pid, 15)
        child.wait(timeout=10)
