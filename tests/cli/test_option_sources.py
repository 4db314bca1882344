"""Agent options from a config file, the environment and flags: precedence and errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sluice.cli.main import build_parser
from sluice.cli.optionsources import effective_options


def parse(argv: list[str]) -> tuple[object, dict[str, tuple[object, str]]]:
    args = build_parser().parse_args(["agent", *argv])
    table = {option: (value, origin) for option, value, origin in
             effective_options(args.parser, args)}
    return args, table


def test_flags_beat_environment_beat_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                          ) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text("node: from-file\nresync-interval: 3\nflow-events: all\n"
                      "netfilter-monitor: true\ndataplane: iptables\n")
    monkeypatch.setenv("SLUICE_RESYNC_INTERVAL", "4.5")
    monkeypatch.setenv("SLUICE_DATAPLANE", "bpf")
    _, table = parse(["--config", str(config), "--dataplane", "iptables"])
    assert table["node"] == ("from-file", f"file {config}")
    assert table["flow-events"] == ("all", f"file {config}")
    assert table["netfilter-monitor"] == (True, f"file {config}")
    assert table["resync-interval"] == (4.5, "env SLUICE_RESYNC_INTERVAL")
    assert table["dataplane"] == ("iptables", "command line")
    assert table["routing"] == ("vxlan", "default")


def test_required_node_may_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLUICE_NODE", "n7")
    _, table = parse([])
    assert table["node"] == ("n7", "env SLUICE_NODE")


def test_booleans_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLUICE_NETFILTER_MONITOR", "no")
    monkeypatch.setenv("SLUICE_ALLOW_HOST_NETNS", "yes")
    _, table = parse(["--node", "n"])
    assert table["netfilter-monitor"][0] is False
    assert table["allow-host-netns"] == (True, "env SLUICE_ALLOW_HOST_NETNS")


def run_agent(argv: list[str], env: dict[str, str] | None = None
              ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sluice", "agent", *argv], text=True,
                          capture_output=True, timeout=60, env=env, check=False)


@pytest.mark.parametrize(("text", "expected"), [
    ("flow-event: all\n", "unknown key 'flow-event'"),
    ("resync-interval: soon\n", "key 'resync-interval': invalid float value 'soon'"),
    ("dataplane: ebpf\n", "key 'dataplane': 'ebpf' is not one of bpf, iptables"),
    ("netfilter-monitor: maybe\n", "key 'netfilter-monitor': expected true or false"),
    ("- node: x\n", "expected a mapping of option names to values"),
    ("node: [a, b]\n", "key 'node': expected a single value"),
    ("node: x\n  bad: indent\n", "not valid YAML"),
])
def test_a_bad_config_file_is_refused_naming_file_and_key(tmp_path: Path, text: str,
                                                          expected: str) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text(text)
    result = run_agent(["--config", str(config), "--node", "n", "--show-config"])
    assert result.returncode == 2
    assert f"config file {config}" in result.stderr
    assert expected in result.stderr
    assert "usage:" not in result.stderr


def test_a_missing_config_file_is_named(tmp_path: Path) -> None:
    result = run_agent(["--config", str(tmp_path / "nope.yaml"), "--node", "n"])
    assert result.returncode == 2
    assert f"config file {tmp_path / 'nope.yaml'}: No such file" in result.stderr


def test_a_value_refused_after_parsing_says_where_it_was_set(tmp_path: Path) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text("flow-events-sample: 0\n")
    result = run_agent(["--config", str(config), "--node", "n", "--datastore", "file:///x",
                        "--netns", "sl-never-created"])
    assert result.returncode == 2
    assert "--flow-events-sample 0: must be at least 1" in result.stderr
    assert f"(set in file {config})" in result.stderr


def test_a_bad_environment_value_is_named() -> None:
    result = run_agent(["--node", "n", "--show-config"],
                       env={"SLUICE_LISTEN_NOPE": "x", "SLUICE_ROUTING": "bgp",
                            "PATH": "/usr/bin:/bin"})
    assert result.returncode == 2
    assert "environment SLUICE_ROUTING: 'bgp' is not one of vxlan, native" in result.stderr


def test_show_config_lists_every_option_with_its_origin() -> None:
    result = run_agent(["--node", "n", "--routing", "native", "--show-config"])
    assert result.returncode == 0, result.stderr
    lines = {line.split()[0]: line for line in result.stdout.splitlines()}
    assert lines["routing"].endswith("command line")
    assert lines["dataplane"].split()[1:] == ["bpf", "default"]
    assert "config" not in lines and "show-config" not in lines


def test_the_example_config_file_is_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    example = Path(__file__).parents[2] / "examples" / "agent.yaml"
    _, table = parse(["--config", str(example)])
    from_file = {option for option, (_, origin) in table.items() if origin.startswith("file")}
    assert {"node", "datastore", "dataplane", "flow-events", "allow-host-netns"} <= from_file
